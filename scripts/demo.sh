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
source scripts/lib/broker.sh

DB_NAME=${LOOKOUT_DEMO_DB:-lookout}
BROKER_PORT=${LOOKOUT_DEMO_BROKER_PORT:-6650}
PROXY_PORT=${LOOKOUT_DEMO_PROXY_PORT:-6651}
METRICS_PORT=${LOOKOUT_DEMO_METRICS_PORT:-9002}
SAMPLE=samples/sample-events.bin.gz
export LOOKOUT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${DB_NAME}"

echo "== building (release)"
cargo build --release -q -p lookout-ingester -p pulsar-proxy
BIN=target/release/lookout-ingester
start_work demo

echo "== starting pulsar-lite on 127.0.0.1:${BROKER_PORT} and the proxy on 127.0.0.1:${PROXY_PORT}"
start_broker "$BROKER_PORT" "$PROXY_PORT"

echo "== database ${DB_NAME}"
psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '${DB_NAME}'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"${DB_NAME}\""
$BIN migrate 2>/dev/null

echo "== publishing ${SAMPLE}"
# It prints "published N messages to TOPIC".
out=$($BIN publish --pulsar-url "$PULSAR_URL" "$SAMPLE" 2>/dev/null)
echo "$out"
published=$(sed -n 's/^published \([0-9][0-9]*\) messages to .*/\1/p' <<<"$out")
if [ -z "$published" ]; then
  echo "publish did not say how many messages it sent" >&2
  exit 1
fi

echo "== running the ingester until it has caught up (${published} messages)"
started=$(now)
RUST_LOG=${RUST_LOG:-warn} $BIN run --pulsar-url "$PULSAR_URL" --metrics-port "$METRICS_PORT" >"$work/ingester.log" 2>&1 &
ing=$!
pids+=($ing)
wait_caught_up "$METRICS_PORT" "$published" 600 0.2 || echo "not caught up after 2 minutes" >&2
echo "caught up in $(seconds_since "$started")s: received ${received}, redeliveries skipped ${skipped}"
curl -s "http://127.0.0.1:${METRICS_PORT}/readyz"
kill -TERM "$ing"
wait "$ing" && echo "ingester stopped cleanly (SIGTERM, exit 0)"

bash scripts/show.sh "$LOOKOUT_DATABASE_URL"
