#!/usr/bin/env bash
# The main job on local defaults, end to end:
#   start PostgreSQL and a local Pulsar broker (pulsar-lite, behind the
#   fix-up proxy pulsar-rs needs), migrate the local `lookout` database,
#   publish the bundled sample recording to the `events` topic, run the
#   ingester until it has caught up, stop it with SIGTERM, and print what it
#   wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DB_NAME=${LOOKOUT_DEMO_DB:-lookout}
BROKER_PORT=${LOOKOUT_DEMO_BROKER_PORT:-6650}
PROXY_PORT=${LOOKOUT_DEMO_PROXY_PORT:-6651}
METRICS_PORT=${LOOKOUT_DEMO_METRICS_PORT:-9002}
SAMPLE=samples/sample-events.bin.gz
export LOOKOUT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${DB_NAME}"
PULSAR_URL="pulsar://127.0.0.1:${PROXY_PORT}"

echo "== building (release)"
cargo build --release -q -p lookout-ingester -p pulsar-proxy
BIN=target/release/lookout-ingester

work=$(mktemp -d /tmp/lookout-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

echo "== starting pulsar-lite on 127.0.0.1:${BROKER_PORT} and the proxy on 127.0.0.1:${PROXY_PORT}"
# Its metrics endpoint would bind 0.0.0.0:8080; keep everything on loopback.
printf '[metrics]\nenabled = false\n' >"$work/pulsar-lite.toml"
(cd "$work" && exec pulsar-lite --config "$work/pulsar-lite.toml" --addr "127.0.0.1:${BROKER_PORT}" --db-path "$work/broker") >"$work/broker.log" 2>&1 &
pids+=($!)
wait_port "$BROKER_PORT"
target/release/pulsar-proxy --listen "127.0.0.1:${PROXY_PORT}" --broker "127.0.0.1:${BROKER_PORT}" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$PROXY_PORT"

echo "== database ${DB_NAME}"
psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '${DB_NAME}'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"${DB_NAME}\""
$BIN migrate 2>/dev/null

echo "== publishing ${SAMPLE}"
$BIN publish --pulsar-url "$PULSAR_URL" "$SAMPLE" 2>/dev/null
published=$(python3 - "$SAMPLE" <<'PY'
import gzip, sys
data = gzip.open(sys.argv[1]).read()
i = n = 0
while i < len(data):
    length = shift = 0
    while True:
        b = data[i]; i += 1
        length |= (b & 0x7f) << shift; shift += 7
        if b < 0x80: break
    i += length; n += 1
print(n)
PY
)

echo "== running the ingester until it has caught up (${published} messages)"
started=$(date +%s.%N)
RUST_LOG=${RUST_LOG:-warn} $BIN run --pulsar-url "$PULSAR_URL" --metrics-port "$METRICS_PORT" >"$work/ingester.log" 2>&1 &
ing=$!
pids+=($ing)
metric() {
  curl -s "http://127.0.0.1:${METRICS_PORT}/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}
for _ in $(seq 1 600); do
  received=$(metric lookout_ingester_messages_received_total); received=${received:-0}
  skipped=$(metric lookout_ingester_duplicates_skipped_total); skipped=${skipped:-0}
  inflight=$(metric lookout_ingester_messages_in_flight); inflight=${inflight:-1}
  if [ "$(( ${received%.*} + ${skipped%.*} ))" -ge "$published" ] && [ "${inflight%.*}" = 0 ]; then break; fi
  sleep 0.2
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
echo "caught up in ${elapsed}s: received ${received}, redeliveries skipped ${skipped}"
curl -s "http://127.0.0.1:${METRICS_PORT}/readyz"
kill -TERM "$ing"
wait "$ing" && echo "ingester stopped cleanly (SIGTERM, exit 0)"

bash scripts/show.sh "$LOOKOUT_DATABASE_URL"
