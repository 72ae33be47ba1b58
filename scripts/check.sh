#!/usr/bin/env bash
# Everything CI checks and a bit more: format, lints, all tests, docs.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir

section "Format: cargo fmt --all -- --check"
cargo fmt --all -- --check

section "Lints: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "Tests: scripts/test.sh"
bash "$SAM_ROOT/scripts/test.sh"

section "Docs: cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -Dwarnings" cargo doc --workspace --no-deps

section "All checks passed"
