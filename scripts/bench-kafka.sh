#!/usr/bin/env bash
# The side-by-side load runs of BENCHMARKS.md, "On Apache Kafka": the same
# `shop loadgen` commands against the embedded broker and a single Apache
# Kafka node, with the platform all-in-one (`shop all`) and as four separate
# processes, the harness always in a process of its own. For every run it
# keeps the harness's JSON and a line of CPU seconds (each shop process,
# every postgres process, the broker) and RSS (each shop process, the broker).
#
#   scripts/bench-kafka.sh [OUT]      default OUT: target/bench-kafka/<UTC time>
#
# Needs a release build (`cargo build --release`), Postgres and Redis
# (`.ci/services.sh`) and a single Kafka node (`scripts/kafka.sh start`) on
# 127.0.0.1:9092 (BENCH_KAFKA overrides). BENCH_SETUPS picks setups
# (default "aio-embedded aio-kafka four-embedded four-kafka"), BENCH_RATES the
# open-loop rates of every setup (default "500 1000"), BENCH_MAX_<setup> (its
# name with _ for -, e.g. BENCH_MAX_aio_kafka) more rates for that setup only,
# tried towards its maximum, and BENCH_DURATION each run's length in seconds
# (default 30s). Every run uses the confirm-only mix. BENCH_WARMUP is the
# unrecorded warm-up at 200/s before a setup's first run (default 10s: too
# short for the JVM's compiler; 60s warms it). BENCH_PERF=1 also samples
# the platform's processes and Postgres's (`perf record`, 499 Hz) through the
# second quarter of every run and writes, beside its JSON, where their CPU
# goes: by thread and library (<run>.<shop|postgres>.perf-dso.txt) and the
# hottest symbols (<run>.<shop|postgres>.perf-symbols.txt).
set -euo pipefail

cd "$(dirname "$0")/.."
shop=./target/release/shop
out=${1:-target/bench-kafka/$(date -u +%Y%m%dT%H%M%SZ)}
kafka=${BENCH_KAFKA:-127.0.0.1:9092}
setups=${BENCH_SETUPS:-aio-embedded aio-kafka four-embedded four-kafka}
rates=${BENCH_RATES:-500 1000}
duration=${BENCH_DURATION:-30s}
warmup=${BENCH_WARMUP:-10s}
perf_on=${BENCH_PERF:-0}
[[ $duration =~ ^[0-9]+s$ ]] || { echo "BENCH_DURATION must be whole seconds, e.g. 30s" >&2; exit 2; }
[[ $warmup =~ ^[0-9]+s$ ]] || { echo "BENCH_WARMUP must be whole seconds, e.g. 60s" >&2; exit 2; }
if [[ $perf_on == 1 ]] && ! command -v perf > /dev/null; then
  echo "BENCH_PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 2
fi
pg=postgres://postgres@127.0.0.1:5432
hz=$(getconf CLK_TCK)
mkdir -p "$out"
[[ -x $shop ]] || { echo "no $shop: cargo build --release first" >&2; exit 1; }

# utime+stime, plus what reaped children left (postgres backends that
# exited are charged to the postmaster), of the given pids, in ticks.
ticks() {
  local t=0 p v
  for p in "$@"; do
    [[ -n $p ]] || continue # /proc//stat would be the system's /proc/stat
    v=$(awk '{print $14+$15+$16+$17}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
secs() { echo "scale=2; $1/$hz" | bc; }

# The shop processes of the setup in hand (and `shop broker`, when the
# setup started one: own_broker); broker_pid is the broker's,
# which for Apache Kafka is not ours to stop.
pids=() names=() broker_pid=""
stop_all() {
  local p
  for p in "${pids[@]}" $own_broker; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $own_broker; do wait "$p" 2>/dev/null || true; done
  pids=() names=() broker_pid="" own_broker=""
}
own_broker=""
trap stop_all EXIT

wait_ready() {
  local port deadline=$((SECONDS + 60))
  for port in 18080 18081 18082 18083; do
    until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do
      ((SECONDS < deadline)) || { echo "port $port not ready in 60 s" >&2; return 1; }
      sleep 0.1
    done
  done
}

# One setup: start the platform, warm it up, then run each rate.
run_setup() {
  local setup=$1 db name log extra_rates var
  db=shop_bench_${setup//-/_}
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db" postgres
  export DATABASE_URL=$pg/$db REDIS_PREFIX=bench-$setup-$RANDOM RUST_LOG=warn \
    ORDER_PORT=18080 PRODUCT_PORT=18081 PAYMENT_PORT=18082 GATEWAY_PORT=18083 \
    JWT_SECRET=bench-only-secret-bench-only-secret-0123456789
  unset KAFKA_BROKERS KAFKA_FETCH_WAIT_MS KAFKA_REPLICATION KAFKA_TOPIC_PREFIX
  log=$out/$setup.log
  case $setup in
    *-kafka)
      export KAFKA_BROKERS=$kafka KAFKA_REPLICATION=1 KAFKA_TOPIC_PREFIX=bench-$setup-$RANDOM.
      broker_pid=$(pgrep -f kafka.Kafka | head -1)
      [[ -n $broker_pid ]] || { echo "no Kafka running: scripts/kafka.sh start" >&2; exit 1; } ;;
    four-embedded)
      "$shop" broker > "$out/broker.addr" 2>> "$log" & broker_pid=$! own_broker=$!
      until grep -q . "$out/broker.addr" 2>/dev/null; do sleep 0.1; done
      KAFKA_BROKERS=$(grep -Eo '127\.0\.0\.1:[0-9]+' "$out/broker.addr" | head -1)
      export KAFKA_BROKERS KAFKA_FETCH_WAIT_MS=1 KAFKA_REPLICATION=1 ;;
  esac
  case $setup in
    aio-*)
      "$shop" all >> "$log" 2>&1 & pids+=($!) names+=(all) ;;
    four-*)
      "$shop" migrate >> "$log" 2>&1
      for name in product payment order gateway; do
        "$shop" "$name" >> "$log" 2>&1 & pids+=($!) names+=("$name")
      done ;;
  esac
  wait_ready
  local client=(--order-url http://127.0.0.1:18080 --product-url http://127.0.0.1:18081
    --gateway-url ws://127.0.0.1:18083 --mix confirm=100 --quiet)
  # Warm-up (the JVM's compiler, the pools, the caches); not recorded.
  "$shop" loadgen "${client[@]}" --rate 200 --duration "$warmup" > "$out/$setup-warmup.txt" 2>&1
  var=BENCH_MAX_${setup//-/_}
  extra_rates=${!var:-}
  for rate in $rates $extra_rates; do
    run_one "$setup" "$rate" "${client[@]}"
  done
  stop_all
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db" postgres
}

run_one() {
  local setup=$1 rate=$2; shift 2
  local label=$setup-$rate before_shop before_pg before_broker after_shop after_pg after_broker
  local rss=() i
  before_shop=$(ticks "${pids[@]}")
  before_pg=$(ticks $(pgrep -x postgres))
  before_broker=$(ticks "$broker_pid")
  "$shop" loadgen "$@" --rate "$rate" --duration "$duration" --out "$out/$label.json" \
    > "$out/$label.txt" 2>&1 &
  local harness=$!
  # RSS mid-run, when the pools and queues are at their working size; the
  # profile over the second quarter, once the run is in its stride.
  local quarter=$(( ${duration%s} / 4 ))
  if [[ $perf_on == 1 ]] && ((quarter > 0)); then
    sleep "$quarter"
    perf record -q -F 499 -p "$(IFS=,; echo "${pids[*]}")" -o "$out/$label.shop.perf.data" \
      -- sleep "$quarter" 2> /dev/null &
    local perf_shop=$!
    perf record -q -F 499 -p "$(pgrep -d, -x postgres)" -o "$out/$label.postgres.perf.data" \
      -- sleep "$quarter" 2> /dev/null
    wait "$perf_shop" || true
    sleep "$(( ${duration%s} / 2 - 2 * quarter ))"
  else
    sleep "$(( ${duration%s} / 2 ))"
  fi
  for i in "${!pids[@]}"; do rss+=("${names[$i]}=$(rss_mib "${pids[$i]}")"); done
  [[ -n $broker_pid ]] && rss+=("broker=$(rss_mib "$broker_pid")")
  wait "$harness" || echo "$label: the harness exited with $?" >&2
  after_shop=$(ticks "${pids[@]}")
  after_pg=$(ticks $(pgrep -x postgres))
  after_broker=$(ticks "$broker_pid")
  echo "$label cpu_s shop=$(secs $((after_shop - before_shop))) postgres=$(secs $((after_pg - before_pg))) broker=$(secs $((after_broker - before_broker))) rss_mib ${rss[*]}" \
    | tee -a "$out/summary.txt"
  grep -E 'throughput|latency|errors|orders' "$out/$label.txt" | sed "s/^/  /" | tee -a "$out/summary.txt"
  local who data
  for who in shop postgres; do
    data=$out/$label.$who.perf.data
    [[ -f $data ]] || continue
    # sed, not head: under pipefail a reader that stops early fails the
    # writer with SIGPIPE.
    perf report -i "$data" --sort comm,dso --stdio 2> /dev/null \
      | sed -e '/^#/d' -e '/^$/d' -e 's/ *$//' | sed -n '1,40p' > "$out/$label.$who.perf-dso.txt"
    perf report -i "$data" --sort symbol --stdio 2> /dev/null \
      | sed -e '/^#/d' -e '/^$/d' -e 's/[ -]*$//' | cut -c1-160 | sed -n '1,80p' \
      > "$out/$label.$who.perf-symbols.txt"
    rm -f "$data"
  done
}

pgbench_run() {
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists shop_bench_pgb" -c "create database shop_bench_pgb" postgres
  psql -q -h 127.0.0.1 -U postgres -c 'create table t (id bigserial primary key, v text)' shop_bench_pgb
  echo "insert into t (v) values ('x');" > "$out/ins.sql"
  echo "pgbench $1: $(pgbench -h 127.0.0.1 -U postgres -n -f "$out/ins.sql" -c 16 -j 2 -T 20 shop_bench_pgb 2>&1 | grep -E '^tps')" \
    | tee -a "$out/summary.txt"
  psql -q -h 127.0.0.1 -U postgres -c "drop database shop_bench_pgb" postgres
}

{ date -u; nproc; free -m | head -2; uptime; git log -1 --oneline; } | tee "$out/machine.txt"
pgbench_run before
for setup in $setups; do run_setup "$setup"; done
pgbench_run after
echo "results in $out"
