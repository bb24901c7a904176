#!/usr/bin/env bash
# The main job on local defaults: migrate a local Lookout database and apply
# the bundled sample recording, then show what was written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DB_NAME=${LOOKOUT_DEMO_DB:-lookout}
export LOOKOUT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${DB_NAME}"
psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT 1 FROM pg_database WHERE datname = '${DB_NAME}'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"${DB_NAME}\""
cargo build --release -q
BIN=target/release/lookout-ingester
$BIN migrate
$BIN replay samples/sample-events.bin.gz
bash scripts/show.sh "$LOOKOUT_DATABASE_URL"
