#!/usr/bin/env bash
# Apache Kafka for shop's tests, CI and benchmarks: the version pinned in
# tests/kafka/pom.xml, in KRaft mode (every node a broker and a controller),
# on loopback ports, as processes of this machine's Java 17.
#
#   scripts/kafka.sh start [--nodes 1|3]   format and start; prints the bootstrap servers last
#   scripts/kafka.sh stop [--keep]         stop the nodes this script started; --keep keeps their data
#   scripts/kafka.sh kill N...             SIGKILL nodes N... (a crash)
#   scripts/kafka.sh stop-node N           SIGTERM node N and wait for it to exit (a clean stop)
#   scripts/kafka.sh restart N...          start nodes N... again on their data and wait until
#                                          they are ready (together: a node alone has no quorum)
#   scripts/kafka.sh status                each node: pid, alive or not, ports (exit 1 if one is down)
#   scripts/kafka.sh bootstrap             print the bootstrap servers
#
# The jars are fetched once, with Maven from Maven Central, into a cache
# outside the work tree. One node: broker 127.0.0.1:9092, controller 9093,
# replication 1. Three nodes: brokers 127.0.0.1:9192-9194, controllers
# 9292-9294, replication 3 and min.insync.replicas 2 for every topic,
# Kafka's internal ones included. Node N has node (broker) id N.
#
# Environment:
#   SHOP_KAFKA_DIR     state: per node its config, data, log and pid (default /tmp/shop-kafka)
#   SHOP_KAFKA_CACHE   where the jars go (default ~/.cache/shop/kafka/<version>)
#   SHOP_KAFKA_PORT    first broker port (default 9092 for one node, 9192 for three);
#                      controllers listen 1 above (one node) or 100 above (three)
#   SHOP_KAFKA_HEAP    heap of each node (default 512m for one node, 320m for three)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pom=$here/tests/kafka/pom.xml
log4j=$here/tests/kafka/log4j2.properties
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
cache=${SHOP_KAFKA_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shop/kafka/$version}
state=${SHOP_KAFKA_DIR:-/tmp/shop-kafka}
ready_timeout=${SHOP_KAFKA_READY_TIMEOUT:-90}

say() { echo "kafka.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# ---------------------------------------------------------------- jars

fetch_jars() {
  [[ -f $cache/.complete ]] && return
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka's jars from Maven Central"
  command -v java >/dev/null || die "Java 17 or later is needed to run Kafka $version"
  say "fetching Apache Kafka $version and its logging jars into $cache (once)"
  rm -rf "$cache.tmp"
  mkdir -p "$cache.tmp"
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$cache.tmp" >&2
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
  touch "$cache/.complete"
}

# ---------------------------------------------------------------- layout

nodes() { cat "$state/nodes" 2>/dev/null || echo 0; }

broker_port() { # node count
  local base=${SHOP_KAFKA_PORT:-$([[ $2 == 1 ]] && echo 9092 || echo 9192)}
  echo $((base + $1 - 1))
}

controller_port() { # node count
  local base=${SHOP_KAFKA_PORT:-$([[ $2 == 1 ]] && echo 9092 || echo 9192)}
  if [[ $2 == 1 ]]; then echo $((base + 1)); else echo $((base + 100 + $1 - 1)); fi
}

bootstrap_servers() {
  local count=$1 n out=()
  for ((n = 1; n <= count; n++)); do out+=("127.0.0.1:$(broker_port "$n" "$count")"); done
  local IFS=,
  echo "${out[*]}"
}

write_config() { # node count
  local n=$1 count=$2 voters=() i replication=1 min_isr=1
  for ((i = 1; i <= count; i++)); do voters+=("$i@127.0.0.1:$(controller_port "$i" "$count")"); done
  if ((count >= 3)); then replication=3 min_isr=2; fi
  mkdir -p "$state/node-$n/data"
  local IFS=,
  cat >"$state/node-$n/server.properties" <<EOF
# Written by scripts/kafka.sh: node $n of $count.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=${voters[*]}
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n" "$count"),CONTROLLER://127.0.0.1:$(controller_port "$n" "$count")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n" "$count")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/node-$n/data
# Durability as the prod overlay has it.
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
unclean.leader.election.enable=false
auto.create.topics.enable=false
num.partitions=1
# Small: two cores and small heaps for up to three nodes.
offsets.topic.num.partitions=10
log.cleaner.dedupe.buffer.size=4194304
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
# Tests: a group's first member starts at once.
group.initial.rebalance.delay.ms=0
EOF
}

pid_of() { cat "$state/node-$1/pid" 2>/dev/null || true; }

# True if node N's recorded pid is a running Kafka of this state dir.
alive() {
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "kafka.Kafka $state/node-$1/"
}

launch() { # node count
  local n=$1 count=$2 heap=${SHOP_KAFKA_HEAP:-$([[ $2 == 1 ]] && echo 512m || echo 320m)}
  local log=$state/node-$n/kafka.log
  # Readiness is a line printed after this point of the log.
  if [[ -f $log ]]; then wc -l <"$log"; else echo 0; fi >"$state/node-$n/log-mark"
  nohup java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$log4j" \
    -cp "$cache/*" kafka.Kafka "$state/node-$n/server.properties" \
    >>"$log" 2>&1 </dev/null &
  echo $! >"$state/node-$n/pid"
}

wait_ready() { # node count
  local n=$1 count=$2 deadline=$((SECONDS + ready_timeout)) mark
  mark=$(cat "$state/node-$n/log-mark" 2>/dev/null || echo 0)
  while :; do
    # awk reads the whole log (no pipe: under pipefail a reader that stops
    # early would fail its writer, and so the check).
    if awk -v mark="$mark" 'NR > mark && /Kafka Server started/ { found = 1 } END { exit !found }' \
      "$state/node-$n/kafka.log" 2>/dev/null &&
      (exec 3<>"/dev/tcp/127.0.0.1/$(broker_port "$n" "$count")") 2>/dev/null; then
      return 0
    fi
    if ! alive "$n"; then
      tail -n 30 "$state/node-$n/kafka.log" >&2 || true
      die "node $n exited while starting (log: $state/node-$n/kafka.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$state/node-$n/kafka.log" >&2 || true
      die "node $n not ready after ${ready_timeout}s (log: $state/node-$n/kafka.log)"
    fi
    sleep 0.2
  done
}

stop_one() { # node signal
  local n=$1 pid i
  pid=$(pid_of "$n")
  alive "$n" || return 0
  kill "-$2" "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    alive "$n" || return 0
    sleep 0.1
  done
  say "node $n did not exit after SIG$2 within 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$n"; do sleep 0.1; done
}

node_arg() {
  if ! [[ ${1:-} =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > $(nodes))); then
    die "no node '${1:-}': nodes are 1 to $(nodes) (is the cluster started?)"
  fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local count=1
  while (($#)); do
    case $1 in
      --nodes)
        count=${2:-}
        shift 2 || die "--nodes needs 1 or 3"
        ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ $count == 1 || $count == 3 ]] || die "--nodes must be 1 or 3"
  local running=0 n
  for ((n = 1; n <= $(nodes); n++)); do alive "$n" && running=$((running + 1)); done
  if ((running > 0)); then
    [[ $(nodes) == "$count" ]] ||
      die "a $(nodes)-node cluster is running in $state; 'scripts/kafka.sh stop' it first"
    for ((n = 1; n <= count; n++)); do
      alive "$n" || { launch "$n" "$count" && wait_ready "$n" "$count"; }
    done
    say "already running"
    bootstrap_servers "$count"
    return
  fi
  fetch_jars
  rm -rf "$state"
  mkdir -p "$state"
  echo "$count" >"$state/nodes"
  local id started=$SECONDS
  id=$(java -cp "$cache/*" "-Dlog4j2.configurationFile=$log4j" -Dshop.kafka.target=SYSTEM_ERR \
    kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  [[ -n $id ]] || die "kafka.tools.StorageTool random-uuid printed nothing"
  for ((n = 1; n <= count; n++)); do
    write_config "$n" "$count"
    java -cp "$cache/*" "-Dlog4j2.configurationFile=$log4j" -Dshop.kafka.target=SYSTEM_ERR \
      kafka.tools.StorageTool format -t "$id" -c "$state/node-$n/server.properties" \
      >"$state/node-$n/format.log" 2>&1 ||
      { cat "$state/node-$n/format.log" >&2; die "formatting node $n failed"; }
  done
  for ((n = 1; n <= count; n++)); do launch "$n" "$count"; done
  for ((n = 1; n <= count; n++)); do wait_ready "$n" "$count"; done
  say "$count node(s) of Apache Kafka $version ready in $((SECONDS - started)) s (state: $state)"
  bootstrap_servers "$count"
}

cmd_stop() {
  local keep=false n
  [[ ${1:-} == --keep ]] && keep=true
  [[ -f $state/nodes ]] || return 0
  for ((n = 1; n <= $(nodes); n++)); do stop_one "$n" TERM & done
  wait
  if $keep; then
    say "stopped; data kept in $state"
  else
    rm -rf "$state"
    say "stopped"
  fi
}

cmd_status() {
  local n count down=0
  count=$(nodes)
  ((count > 0)) || die "no cluster in $state"
  for ((n = 1; n <= count; n++)); do
    if alive "$n"; then
      echo "node $n: running (pid $(pid_of "$n")), broker 127.0.0.1:$(broker_port "$n" "$count"), controller 127.0.0.1:$(controller_port "$n" "$count")"
    else
      echo "node $n: down, broker 127.0.0.1:$(broker_port "$n" "$count")"
      down=$((down + 1))
    fi
  done
  ((down == 0))
}

case ${1:-} in
  start) shift && cmd_start "$@" ;;
  stop) shift && cmd_stop "$@" ;;
  kill)
    shift
    (($#)) || die "kill which node?"
    for n in "$@"; do node_arg "$n"; done
    for n in "$@"; do stop_one "$n" KILL; done
    ;;
  stop-node) node_arg "${2:-}" && stop_one "$2" TERM ;;
  restart)
    shift
    (($#)) || die "restart which node?"
    for n in "$@"; do
      node_arg "$n"
      ! alive "$n" || die "node $n is running"
    done
    fetch_jars
    for n in "$@"; do launch "$n" "$(nodes)"; done
    for n in "$@"; do wait_ready "$n" "$(nodes)"; done
    say "node(s) $* ready"
    ;;
  status) cmd_status ;;
  bootstrap)
    (($(nodes) > 0)) || die "no cluster in $state"
    bootstrap_servers "$(nodes)"
    ;;
  *)
    sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
