#!/usr/bin/env bash
# Throughput benchmark: prints figures and a JSON line; never fails on speed.
#   replay: a generated recording applied to a fresh database
#   live:   the same messages published to pulsar-lite and consumed by `run`,
#           with redelivery skipping on and off (separate subscriptions)
# Usage: scripts/bench.sh [JOBS]   (default 10000 jobs, about 56k events)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-10000}
bash scripts/setup.sh >/dev/null
cargo build --release -q -p lookout-ingester -p pulsar-proxy
BIN=$PWD/target/release/lookout-ingester
work=$(mktemp -d /tmp/lookout-bench.XXXXXX)
pids=()
dbs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
now() { python3 -c 'import time; print(time.time())'; }
newdb() {
  local name="lookout_bench_$1_$$"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  dbs+=("$name")
  $BIN migrate --database-url "postgres://postgres@127.0.0.1:5432/$name" >/dev/null 2>&1
  echo "postgres://postgres@127.0.0.1:5432/$name"
}

$BIN sample --out "$work/events.bin" --jobs "$JOBS" --seed 42 >/dev/null
messages=$($BIN sample --out "$work/count.bin" --jobs "$JOBS" --seed 42 | awk '{print $2}')
echo "== ${JOBS} jobs, ${messages} messages (one event each)"

# Replay.
url=$(newdb replay)
t0=$(now)
$BIN replay --database-url "$url" "$work/events.bin" >"$work/replay.txt" 2>/dev/null
t1=$(now)
replay_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
replay_rate=$(python3 -c "print(int($messages / ($t1 - $t0)))")
echo "replay: ${replay_s}s, ${replay_rate} events/s"

# Live.
bport=$(free_port); pport=$(free_port)
printf '[metrics]\nenabled = false\n' >"$work/pulsar-lite.toml"
(cd "$work" && exec pulsar-lite --config "$work/pulsar-lite.toml" --addr "127.0.0.1:$bport" --db-path "$work/broker") >"$work/broker.log" 2>&1 &
pids+=($!)
wait_port "$bport"
target/release/pulsar-proxy --listen "127.0.0.1:$pport" --broker "127.0.0.1:$bport" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$pport"
t0=$(now)
$BIN publish --pulsar-url "pulsar://127.0.0.1:$pport" "$work/events.bin" >/dev/null 2>&1
t1=$(now)
publish_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
echo "publish: ${publish_s}s"

live() { # $1 = label, $2 = skip redeliveries (true/false)
  local url mport ing t0 t1 received skipped inflight
  url=$(newdb "live_$1")
  mport=$(free_port)
  t0=$(now)
  ARMADA_SKIPREDELIVEREDMESSAGES=$2 RUST_LOG=warn $BIN run --database-url "$url" --pulsar-url "pulsar://127.0.0.1:$pport" \
    --subscription "bench-$1" --metrics-port "$mport" >"$work/live_$1.log" 2>&1 &
  ing=$!
  pids+=($ing)
  wait_port "$mport"
  for _ in $(seq 1 3000); do
    m=$(curl -s "http://127.0.0.1:$mport/metrics")
    received=$(awk '$1=="lookout_ingester_messages_received_total"{print $2}' <<<"$m"); received=${received:-0}
    skipped=$(awk '$1=="lookout_ingester_duplicates_skipped_total"{print $2}' <<<"$m"); skipped=${skipped:-0}
    inflight=$(awk '$1=="lookout_ingester_messages_in_flight"{print $2}' <<<"$m"); inflight=${inflight:-1}
    jobs_now=$(psql "$url" -Atc "select count(*) from job")
    if [ "$jobs_now" -ge "$JOBS" ] && [ "$(( ${received%.*} + ${skipped%.*} ))" -ge "$messages" ] && [ "${inflight%.*}" = 0 ]; then break; fi
    sleep 0.1
  done
  t1=$(now)
  kill -TERM "$ing"; wait "$ing" || true
  local secs rate
  secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  rate=$(python3 -c "print(int($messages / ($t1 - $t0)))")
  echo "live (skip redeliveries=$2): caught up in ${secs}s, ${rate} messages/s, processed ${received%.*}, redeliveries skipped ${skipped%.*}" >&2
  echo "{\"skip\":$2,\"seconds\":$secs,\"messages_per_s\":$rate,\"processed\":${received%.*},\"skipped\":${skipped%.*}}"
}
on=$(live on true)
off=$(live off false)
echo "{\"bench\":\"lookout-ingester\",\"jobs\":$JOBS,\"messages\":$messages,\"replay_seconds\":$replay_s,\"replay_events_per_s\":$replay_rate,\"publish_seconds\":$publish_s,\"live_skip_on\":$on,\"live_skip_off\":$off}"
