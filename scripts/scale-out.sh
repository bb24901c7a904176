#!/usr/bin/env bash
# Scale-out figures: the combined catch-up rate of `run` replicas on a
# 2-partition topic backlog, each setup into a fresh database, timed until
# the tables' aggregates equal those of a replay of the same file.
#   one:               1 replica on the topic (both partitions)
#   two-by-partition:  2 replicas, each given one partition as its topic
# (Not 2 replicas in one Failover subscription: pulsar-lite then delivers a
# partition's backlog to both, out of order; see README, scaling out.)
# Prints figures; never fails on speed. Databases are dropped on exit.
# Usage: scripts/scale-out.sh [JOBS]   (default 20000 jobs, about 112k messages)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-20000}
bash scripts/setup.sh >/dev/null
source scripts/lib/broker.sh
cargo build --release -q -p lookout-ingester -p pulsar-proxy
BIN=$PWD/target/release/lookout-ingester
start_work scale

dbs=()
cleanup_extra() {
  for d in "${dbs[@]}"; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" 2>/dev/null || true
  done
}
newdb() {
  local name="lookout_scale_$1_$$"
  dbs+=("$name")
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  db_url="postgres://postgres@127.0.0.1:5432/$name"
  $BIN migrate --database-url "$db_url" >/dev/null 2>&1
}
# Aggregates of the final tables (equal to the replay's once caught up).
agg() {
  psql "$1" -Atc "SELECT (SELECT count(*)||'/'||sum(state)||'/'||coalesce(max(last_transition_time)::text,'') FROM job)
    ||'|'||(SELECT count(*)||'/'||count(finished)||'/'||coalesce(sum(exit_code),0) FROM job_run)"
}

messages=$($BIN sample --out "$work/events.bin" --jobs "$JOBS" --seed 42 | awk '{print $2}')
echo "== ${JOBS} jobs, ${messages} messages"

# pulsar-lite creating every topic with 2 partitions, behind the proxy.
bport=$(free_port); pport=$(free_port)
printf 'default_partitions = 2\n[metrics]\nenabled = false\n' >"$work/pulsar-lite.toml"
(cd "$work" && exec pulsar-lite --config "$work/pulsar-lite.toml" --addr "127.0.0.1:$bport" --db-path "$work/broker") >"$work/broker.log" 2>&1 &
pids+=($!)
wait_port "$bport"
target/release/pulsar-proxy --listen "127.0.0.1:$pport" --broker "127.0.0.1:$bport" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$pport"
url="pulsar://127.0.0.1:$pport"
# `publish` keys each message by its job set, as Armada does.
$BIN publish --pulsar-url "$url" --topic scale "$work/events.bin" >/dev/null 2>&1

newdb ref
t0=$(now)
$BIN replay --database-url "$db_url" "$work/events.bin" >/dev/null 2>&1
echo "replay: $(seconds_since "$t0")s"
ref=$(agg "$db_url")

# measure NAME TOPIC...: one replica per TOPIC, subscription NAME.
measure() {
  local name=$1 t0 secs rate running=() n=0
  shift
  newdb "$name"
  t0=$(now)
  for t in "$@"; do
    RUST_LOG=warn $BIN run --database-url "$db_url" --pulsar-url "$url" --topic "$t" \
      --subscription "scale-$name" --metrics-port 0 >>"$work/$name.log" 2>&1 &
    running+=($!); pids+=($!)
  done
  while [ "$(agg "$db_url")" != "$ref" ] && [ $n -lt 2400 ]; do sleep 0.25; n=$((n + 1)); done
  secs=$(seconds_since "$t0")
  [ "$(agg "$db_url")" = "$ref" ] || echo "$name: not caught up after 10 minutes" >&2
  for p in "${running[@]}"; do kill -TERM "$p"; done
  wait "${running[@]}" 2>/dev/null || true
  rate=$(awk -v n="$messages" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  echo "$name: ${secs}s, ${rate} messages/s"
}
measure one scale
measure two-by-partition scale-partition-0 scale-partition-1
