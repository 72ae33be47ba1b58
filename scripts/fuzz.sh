#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for N inputs each, and prints
# one line per target: inputs run, seconds, crashes. Not part of CI (too slow).
#
#   scripts/fuzz.sh                 # every target, 1,000,000 inputs each
#   scripts/fuzz.sh 50000           # every target, 50,000 inputs each
#   scripts/fuzz.sh 1000000 hello   # one target
#
# Only a stable toolchain is needed: cargo-fuzz's nightly-only flags are let through with
# RUSTC_BOOTSTRAP=1. SAM_FUZZ_SANITIZER=address runs under AddressSanitizer (slower);
# the default is none (libFuzzer's coverage, crash, timeout and memory checks only).
# A crash stops its target; the input is kept in fuzz/artifacts/TARGET/ and replayed
# with `scripts/fuzz.sh --replay TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
SAN="${SAM_FUZZ_SANITIZER:-none}"
ALL=(frame ctl_request ticket capability hello doc_frame sync_message acp_line)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [[ "${1:-}" == "--replay" ]]; then
    cargo fuzz run -s "$SAN" --fuzz-dir fuzz "$2" "$3"
    exit $?
fi

RUNS="${1:-1000000}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")

cargo fuzz build -s "$SAN" --fuzz-dir fuzz
BIN="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=0
printf '%-14s %12s %10s %8s\n' target inputs seconds crashes
for t in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    # Seeds: well-formed messages written by the target itself (see fuzz/src/lib.rs).
    SAM_FUZZ_SEEDS="$corpus" "$BIN/$t" >/dev/null 2>&1
    log="fuzz/artifacts/$t/last-run.log"
    start=$(date +%s.%N)
    set +e
    "$BIN/$t" "$corpus" -runs="$RUNS" -max_len=65536 -rss_limit_mb=2048 \
        -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=0
    if [[ $rc -ne 0 ]]; then
        crashes=1
        failed=1
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -5 >&2 || true
    fi
    printf '%-14s %12s %10.1f %8s\n' "$t" "${inputs:-?}" "$secs" "$crashes"
done
exit $failed
