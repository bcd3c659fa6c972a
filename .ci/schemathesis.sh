#!/usr/bin/env bash
# Fuzzes every service's HTTP API with schemathesis, a schema-driven fuzzer
# nobody here wrote, against `target/debug/shop all` on free ports with a
# fresh database:
#
#   bash .ci/schemathesis.sh
#
# Each service is tested from its own GET /openapi.json, with an admin
# token and then a customer token, for: no 5xx (not_a_server_error), bodies
# that match the documented schemas, only documented status codes, and
# documented content types. Afterwards the database is checked for
# half-written data (an order without items or history, a total that is not
# the sum of its lines, an idempotency key left claimed).
#
# Installs schemathesis (pinned) into a virtualenv under ~/.cache if it is
# not there yet. Needs python3 and a built debug binary: run it after
# `cargo test --workspace --all-targets --locked`, which builds it.
# SCHEMATHESIS_MAX_EXAMPLES (default 100 per operation; about a minute in
# all) and SCHEMATHESIS_SEED (default: a new one each run, printed) tune it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/shop/schemathesis-$VERSION}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}
POSTGRES=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
SHOP=${CARGO_TARGET_DIR:-target}/debug/shop

if [[ ! -x $VENV/bin/st ]]; then
  echo "installing schemathesis $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi
if [[ ! -x $SHOP ]]; then
  echo "no $SHOP: build it first (cargo build, or the README's test command)" >&2
  exit 1
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

suffix=$(python3 -c 'import secrets; print(secrets.token_hex(6))')
database=shop_schemathesis_$suffix
dir=$(mktemp -d -t shop-schemathesis-XXXXXX)
declare -A port
for service in order product payment gateway; do
  port[$service]=$(free_port)
done

# Development mode (so POST /dev/token exists and is fuzzed too), with its
# secret in the temporary directory, and nothing pointing elsewhere.
unset JWT_SECRET JWT_PUBLIC_KEY_FILE KAFKA_BROKERS PRODUCT_URL ORDER_URL PUBLIC_PRODUCT_URL PUBLIC_ORDER_URL
export DATABASE_URL=$POSTGRES/$database
export REDIS_PREFIX=$database
export JWT_DEV_SECRET_FILE=$dir/dev-jwt-secret
export HTTP_HOST=127.0.0.1
export ORDER_PORT=${port[order]} PRODUCT_PORT=${port[product]}
export PAYMENT_PORT=${port[payment]} GATEWAY_PORT=${port[gateway]}
export KAFKA_PARTITIONS=3 SHUTDOWN_GRACE_SECONDS=5
export RUST_LOG=${RUST_LOG:-warn}

"$SHOP" all >"$dir/shop.log" 2>&1 &
pid=$!

stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  psql "$POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
    echo "could not drop database $database" >&2
  rm -rf "$dir"
}
trap stop EXIT

echo "starting $SHOP all (database $database)"
for service in order product payment gateway; do
  for attempt in $(seq 240); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "shop exited early:" >&2; tail -40 "$dir/shop.log" >&2; exit 1
    fi
    curl -fs "http://127.0.0.1:${port[$service]}/readyz" >/dev/null && break
    if (( attempt == 240 )); then
      echo "$service not ready after 120 s:" >&2; tail -40 "$dir/shop.log" >&2; exit 1
    fi
    sleep 0.5
  done
done
echo "platform ready: order :${port[order]}, product :${port[product]}, payment :${port[payment]}, gateway :${port[gateway]}"

admin=$("$SHOP" token --customer schemathesis-ops --admin)
customer=$("$SHOP" token --customer schemathesis-customer)

# One worker: the engine's Python 3.11 lambda-source parsing is not
# thread-safe (it fails with "AST constructor recursion depth mismatch").
failed=()
for who in admin customer; do
  token=${!who}
  for service in product order payment gateway; do
    echo "== schemathesis: $service service, $who token (seed $SEED, $MAX_EXAMPLES examples)"
    # A hung run must not eat CI's time: ten minutes per service at most.
    # Run from the temporary directory: schemathesis keeps its replay files
    # (.schemathesis/) in the working directory.
    if ! (cd "$dir" && timeout 600 "$VENV/bin/st" run "http://127.0.0.1:${port[$service]}/openapi.json" \
      --header "Authorization: Bearer $token" \
      --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
      --max-examples "$MAX_EXAMPLES" \
      --seed "$SEED" \
      --workers 1 \
      --request-timeout 20 \
      --warnings off \
      --generation-database none \
      --no-color); then
      failed+=("$service/$who")
    fi
  done
done

echo "== data written by the fuzzed requests is whole"
problems=$(psql "$DATABASE_URL" -Atq -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'order without items: ' || o.id FROM orders.orders o
  WHERE NOT EXISTS (SELECT 1 FROM orders.order_items i WHERE i.order_id = o.id)
UNION ALL
SELECT 'order whose history does not end at its status: ' || o.id FROM orders.orders o
  WHERE NOT EXISTS (SELECT 1 FROM orders.status_history h
                    WHERE h.order_id = o.id AND h.seq = o.seq AND h.status = o.status)
UNION ALL
SELECT 'order whose total is not the sum of its lines: ' || o.id FROM orders.orders o
  WHERE o.total_cents <> (SELECT coalesce(sum(i.quantity * i.unit_price_cents), 0)
                          FROM orders.order_items i WHERE i.order_id = o.id)
UNION ALL
SELECT 'idempotency key left claimed: ' || k.key FROM orders.idempotency_keys k
  WHERE k.status <> 'DONE'
UNION ALL
SELECT 'idempotency key answered with an order that does not exist: ' || k.key
  FROM orders.idempotency_keys k
  WHERE k.response_status = 202 AND NOT EXISTS
    (SELECT 1 FROM orders.orders o WHERE o.id::text = k.response_body->>'order_id')
UNION ALL
SELECT 'product outside its documented bounds: ' || p.id FROM product.products p
  WHERE p.stock < 0 OR p.price_cents < 0 OR length(p.sku) NOT BETWEEN 1 AND 64
SQL
)
orders=$(psql "$DATABASE_URL" -Atqc "SELECT count(*) FROM orders.orders")
products=$(psql "$DATABASE_URL" -Atqc "SELECT count(*) FROM product.products")
echo "$orders orders and $products products in the database after fuzzing"
if [[ -n $problems ]]; then
  echo "half-written data:" >&2
  echo "$problems" >&2
  failed+=("data")
fi

if ((${#failed[@]})); then
  echo "schemathesis failed: ${failed[*]} (seed $SEED; rerun with SCHEMATHESIS_SEED=$SEED)" >&2
  echo "last lines of the platform's log:" >&2
  tail -40 "$dir/shop.log" >&2
  exit 1
fi
echo "schemathesis: every service passed (seed $SEED)"
