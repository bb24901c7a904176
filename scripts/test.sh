#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against
# the local PostgreSQL and a local pulsar-lite broker. Installs and starts
# what is missing first. Ends with one line totalling every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "Total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
