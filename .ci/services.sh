#!/usr/bin/env bash
# Installs and starts what the tests need, on a fresh Debian machine or on
# one where it already runs (then it changes nothing):
#
#   bash .ci/services.sh
#
# - PostgreSQL, from Debian's `postgresql` package, on 127.0.0.1:5432, with
#   trust authentication for loopback connections (user `postgres`) and
#   enough connections for the suites running in parallel;
# - Redis, from Debian's `redis-server` package, on 127.0.0.1:6379, keeping
#   nothing on disk.
#
# Apache Kafka is started separately (scripts/kafka.sh): the README's test
# command does not need it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Connections the suites need at once: each test platform has a pool of 8,
# tests run two at a time, the fault suite runs six processes.
MAX_CONNECTIONS=${SHOP_PG_MAX_CONNECTIONS:-400}

apt_updated=false
apt_update() {
  if ! $apt_updated; then
    apt-get update -qq >/dev/null
    apt_updated=true
  fi
}

postgres_binary() {
  compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1
}

# ---------------------------------------------------------------- PostgreSQL

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if [[ -z $(postgres_binary) ]] || ! command -v pg_ctlcluster >/dev/null; then
    echo "installing postgresql (Debian package)"
    apt_update
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  version=$(basename "$(dirname "$(dirname "$(postgres_binary)")")")
  if [[ ! -d /etc/postgresql/$version/main ]]; then
    pg_createcluster "$version" main >/dev/null
  fi
  conf=/etc/postgresql/$version/main
  cat >"$conf/conf.d/shop-tests.conf" <<EOF
# Written by shop's .ci/services.sh.
listen_addresses = '127.0.0.1'
port = 5432
max_connections = $MAX_CONNECTIONS
EOF
  # Trust loopback connections, ahead of Debian's password rules.
  if ! grep -q '^# shop: trust loopback' "$conf/pg_hba.conf"; then
    {
      echo '# shop: trust loopback (written by .ci/services.sh)'
      echo 'host all all 127.0.0.1/32 trust'
      echo 'host all all ::1/128 trust'
      cat "$conf/pg_hba.conf"
    } >"$conf/pg_hba.conf.new"
    mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
    chown postgres:postgres "$conf/pg_hba.conf"
  fi
  # Installing the package may have started it with the old settings.
  pg_ctlcluster --skip-systemctl-redirect "$version" main stop >/dev/null 2>&1 || true
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
fi
pg_isready -h 127.0.0.1 -p 5432
psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SHOW max_connections' |
  sed 's/^/postgres max_connections: /'

# ---------------------------------------------------------------- Redis

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (Debian package)"
    apt_update
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
  # The package's own service, if it started one, already answers.
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  fi
  for _ in $(seq 30); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 1
  done
fi
echo "redis: $(redis-cli -h 127.0.0.1 -p 6379 ping)"
