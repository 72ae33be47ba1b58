#!/usr/bin/env bash
# The main job: builds the release binaries and runs `sam up` (a local node on this
# machine; its ticket is the last line printed). Arguments go to `sam up`, e.g. --detach.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir

section "Build: cargo build --release --bins"
cargo build --release --bins

section "sam up $*"
# `sam up` looks for sam-node next to itself, so both come from the same build.
exec "$CARGO_TARGET_DIR/release/sam" up "$@"
