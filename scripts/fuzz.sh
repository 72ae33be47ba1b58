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
#
# SAM_FUZZ_JOBS=J (default 1) runs each target as J libFuzzer processes (`-jobs=J
# -workers=J`, each with N/J inputs, sharing one corpus directory so each picks up what the
# others found); the inputs reported are the sum of theirs. It only uses more cores: each
# process runs the same target on the same flags, so N inputs over J processes check what N
# inputs in one do. `sync_message` runs a few hundred inputs/s (each one applies Automerge
# changes to two conversation copies and an empty replica), so on this 2-core machine its
# million runs as 2 jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
SAN="${SAM_FUZZ_SANITIZER:-none}"
JOBS="${SAM_FUZZ_JOBS:-1}"
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

if [[ ${#TARGETS[@]} -eq 1 ]]; then
    cargo fuzz build -s "$SAN" --fuzz-dir fuzz "${TARGETS[0]}"
else
    cargo fuzz build -s "$SAN" --fuzz-dir fuzz
fi
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
    flags=(-max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10
        -print_final_stats=1)
    if [[ "$JOBS" -gt 1 ]]; then
        # libFuzzer writes each job's output to fuzz-K.log in its working directory.
        root=$PWD
        rm -f "fuzz/artifacts/$t"/fuzz-*.log
        (cd "fuzz/artifacts/$t" && "$root/$BIN/$t" "$root/$corpus" -runs=$((RUNS / JOBS)) \
            -jobs="$JOBS" -workers="$JOBS" "${flags[@]}" \
            -artifact_prefix="$root/fuzz/artifacts/$t/") >"$log" 2>&1
        rc=$?
        # A job that crashed makes the whole run fail even if the parent exited 0.
        if grep -qE "ERROR: libFuzzer|panicked" "fuzz/artifacts/$t"/fuzz-*.log; then rc=1; fi
        cat "fuzz/artifacts/$t"/fuzz-*.log >>"$log"
        inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/artifacts/$t"/fuzz-*.log |
            awk '{ s += $1 } END { print s }')
    else
        "$BIN/$t" "$corpus" -runs="$RUNS" "${flags[@]}" \
            -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
        rc=$?
        inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    fi
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    crashes=0
    if [[ $rc -ne 0 ]]; then
        crashes=1
        failed=1
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -5 >&2 || true
    fi
    printf '%-14s %12s %10.1f %8s\n' "$t" "${inputs:-?}" "$secs" "$crashes"
done
exit $failed
