#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against
# the local PostgreSQL (and, for broker tests, pulsar-lite). Installs and
# starts what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
