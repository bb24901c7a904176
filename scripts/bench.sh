#!/usr/bin/env bash
# Thin wrapper around `lookout-ingester bench` (README "Benchmark"): installs
# what is missing, builds the release binaries (the proxy pulsar-lite needs
# is found next to the ingester) and passes its arguments on, e.g.
#   scripts/bench.sh --events 1000000
#   scripts/bench.sh --events 200000 --no-live --no-failure-info
# Database settings as for every command (--config, ARMADA_*, --database-url,
# LOOKOUT_DATABASE_URL); the databases it creates are dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release -q -p lookout-ingester -p pulsar-proxy
exec target/release/lookout-ingester bench "$@"
