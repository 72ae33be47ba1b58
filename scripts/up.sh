#!/usr/bin/env bash
# The main job: builds the release binaries and runs `sam up` (a local node on this
# machine; its ticket is the last line printed). Arguments go to `sam up`, e.g. --detach.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir

section "Docker engine, workspace image and agent CLIs"
# Workspaces are Docker containers: start dockerd if needed, build the base image once,
# and install the pinned agent CLIs into it (each step is skipped when already done).
# A cloud node's user-data runs these same two scripts (embedded byte for byte by
# bootstrap/src/script.rs), so a local and a cloud node get the same image and agents.
ensure_docker
ensure_apt mmdebstrap
"$SAM_ROOT/bootstrap/images/build-base.sh"
# A TLS-intercepting proxy needs its CA inside the image too; the host's bundle is the
# default (override with SAM_CA_BUNDLE, or set it empty to skip).
if [ -z "${SAM_CA_BUNDLE+x}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export SAM_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
"$SAM_ROOT/bootstrap/agents/install-agents.sh" --into-image "${SAM_BASE_IMAGE:-sam-base:1}" ||
    echo "warning: some agent CLIs could not be installed into the workspace image (see above)" >&2

section "Build: cargo build --release --bins"
cargo build --release --bins

section "sam up $*"
# `sam up` looks for sam-node next to itself, so both come from the same build.
exec "$CARGO_TARGET_DIR/release/sam" up "$@"
