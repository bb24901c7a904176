#!/usr/bin/env bash
# Throughput benchmark: prints figures and a JSON line; never fails on speed.
#   replay: a generated recording applied to a fresh database
#   live:   the same messages published to pulsar-lite and consumed by `run`,
#           with redelivery skipping on and off (separate subscriptions)
# Every database it creates is dropped on exit.
# Usage: scripts/bench.sh [JOBS]   (default 10000 jobs, about 56k events)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-10000}
bash scripts/setup.sh >/dev/null
source scripts/lib/broker.sh
cargo build --release -q -p lookout-ingester -p pulsar-proxy
BIN=$PWD/target/release/lookout-ingester
start_work bench

# Filled in this shell (never in a $(...) subshell), so the exit trap sees
# every database.
dbs=()
cleanup_extra() {
  for d in "${dbs[@]}"; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" 2>/dev/null || true
  done
}
# newdb NAME: a fresh migrated database; its URL in $db_url.
newdb() {
  local name="lookout_bench_$1_$$"
  dbs+=("$name")
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  db_url="postgres://postgres@127.0.0.1:5432/$name"
  $BIN migrate --database-url "$db_url" >/dev/null 2>&1
}

# `sample` prints "wrote N messages …".
messages=$($BIN sample --out "$work/events.bin" --jobs "$JOBS" --seed 42 | awk '{print $2}')
echo "== ${JOBS} jobs, ${messages} messages (one event each)"

# Replay.
newdb replay
t0=$(now)
$BIN replay --database-url "$db_url" "$work/events.bin" >"$work/replay.txt" 2>/dev/null
replay_s=$(seconds_since "$t0")
replay_rate=$(awk -v n="$messages" -v s="$replay_s" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
echo "replay: ${replay_s}s, ${replay_rate} events/s"

# Live.
start_broker "$(free_port)" "$(free_port)"
t0=$(now)
$BIN publish --pulsar-url "$PULSAR_URL" "$work/events.bin" >/dev/null 2>&1
publish_s=$(seconds_since "$t0")
echo "publish: ${publish_s}s"

# jobs_stored: the live database holds every job.
jobs_stored() { [ "$(psql "$db_url" -Atc "select count(*) from job")" -ge "$JOBS" ]; }

# live LABEL SKIP: `run` on a fresh database and its own subscription, with
# redelivery skipping SKIP (true/false), until it has caught up; its JSON
# figures in $live_json.
live() {
  local mport ing t0 secs rate
  newdb "live_$1"
  mport=$(free_port)
  t0=$(now)
  ARMADA_SKIPREDELIVEREDMESSAGES=$2 RUST_LOG=warn $BIN run --database-url "$db_url" --pulsar-url "$PULSAR_URL" \
    --subscription "bench-$1" --metrics-port "$mport" >"$work/live_$1.log" 2>&1 &
  ing=$!
  pids+=($ing)
  wait_port "$mport"
  wait_caught_up "$mport" "$messages" 3000 0.1 jobs_stored || echo "live ($1): not caught up after 5 minutes" >&2
  secs=$(seconds_since "$t0")
  kill -TERM "$ing"; wait "$ing" || true
  rate=$(awk -v n="$messages" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  echo "live (skip redeliveries=$2): caught up in ${secs}s, ${rate} messages/s, processed ${received}, redeliveries skipped ${skipped}"
  live_json="{\"skip\":$2,\"seconds\":$secs,\"messages_per_s\":$rate,\"processed\":${received},\"skipped\":${skipped}}"
}
live on true
on=$live_json
live off false
off=$live_json
echo "{\"bench\":\"lookout-ingester\",\"jobs\":$JOBS,\"messages\":$messages,\"replay_seconds\":$replay_s,\"replay_events_per_s\":$replay_rate,\"publish_seconds\":$publish_s,\"live_skip_on\":$on,\"live_skip_off\":$off}"
