#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/, one after another, for
# SECONDS each (default 600), then prints each one's final libFuzzer figures
# (executions, exec/s, cov, ft, corpus). Long, so not part of scripts/test.sh
# or CI.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Targets: decode_convert (one payload: decode + convert + column
# invariants), replay_file (a recorded-event file: record reader, then
# decode + convert of every record), quantity (Kubernetes quantities).
#
# Environment:
#   FUZZ_SANITIZER  address (default), none (faster, but rebuilds everything; the code
#                   under test is safe Rust), leak, ...
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-max_len=65536"
#   FUZZ_NO_SAMPLE  set to skip generating extra seeds with `lookout-ingester
#                   sample` (samples/sample-events.bin.gz is always used)
#
# cargo-fuzz passes nightly-only rustc flags (-Zsanitizer, sancov passes);
# only a stable toolchain is installed here, so RUSTC_BOOTSTRAP=1 lets it
# use them. Corpora grow in fuzz/corpus/TARGET (kept between runs, not
# committed), crashes land in fuzz/artifacts/TARGET, logs in fuzz/logs/.
# Reproduce a crash with:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# and shrink it with `cargo fuzz tmin TARGET fuzz/artifacts/TARGET/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(decode_convert replay_file quantity)
fi
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! command -v python3 >/dev/null; then
    echo "python3 is needed to write the seed corpus" >&2
    exit 1
fi

echo "== building fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
cargo fuzz build -s "$sanitizer"
echo "build took $(( $(date +%s) - start ))s"

echo "== writing seeds"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
inputs=(samples/sample-events.bin.gz)
if [ -z "${FUZZ_NO_SAMPLE:-}" ]; then
    # `sample` encodes sample::generate(seed, jobs), one record per sequence.
    for seed in 2 3; do
        if cargo run --quiet --bin lookout-ingester -- \
            sample --out "$tmp/generated-$seed.bin" --jobs 40 --seed "$seed" >/dev/null; then
            inputs+=("$tmp/generated-$seed.bin")
        else
            echo "warning: could not generate seeds with 'lookout-ingester sample'; using the sample file only" >&2
            break
        fi
    done
fi
rm -rf fuzz/seeds
python3 fuzz/seeds.py fuzz/seeds "${inputs[@]}"

mkdir -p fuzz/logs
summary=()
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    echo "== fuzzing $t for ${secs}s (log: $log)"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    set +e
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    cargo fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    status=$?
    set -e
    # The last status line ("#N DONE cov: ... ft: ... corp: ... exec/s: ...").
    last=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
    files=$(find "fuzz/corpus/$t" -type f | wc -l)
    line="$t: ${secs}s, ${execs:-?} execs, ${rate:-?} exec/s, cov ${cov:-?}, ft ${ft:-?}, corp ${corp:-?} (${files} files in fuzz/corpus/$t)"
    if [ "$status" -ne 0 ]; then
        line="$line, FAILED (exit $status): see $log and fuzz/artifacts/$t"
        failed+=("$t")
        grep -E -m 5 "panicked at|^==[0-9]+==ERROR|SUMMARY|Test unit written" "$log" || true
    fi
    echo "$line"
    echo "   last: $last"
    summary+=("$line")
done

echo "== fuzzing summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
