#!/usr/bin/env bash
# THE test command (README and CI): installs what the tests need when it is missing,
# then builds every binary and runs every test of the workspace.
#
#   scripts/test.sh            # extra arguments go to `cargo test`, e.g. -- --nocapture
#
# CARGO_TARGET_DIR is respected; it defaults to target/ in the repository.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir

# The tests make network namespaces, veth pairs and firewall rules, mount small tmpfs
# volumes and run dockerd: they need root. A normal user's run goes again through sudo
# with this user's toolchain (CARGO_HOME, RUSTUP_HOME, PATH), and what it wrote (the target
# dir, cargo's registry, the agent caches) is given back to the user at the end.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
        die "the tests need root (network namespaces, mounts, firewall rules, dockerd): run this as root, or install sudo"
    echo "the tests need root (network namespaces, mounts, firewall rules): running again through sudo, with $(id -un)'s toolchain"
    exec sudo env \
        "PATH=$PATH" "HOME=$HOME" \
        "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
        "CARGO_TARGET_DIR=$CARGO_TARGET_DIR" \
        "SAM_GIVE_BACK=$(id -u):$(id -g)" \
        ${CARGO_INCREMENTAL+"CARGO_INCREMENTAL=$CARGO_INCREMENTAL"} \
        ${CARGO_PROFILE_DEV_DEBUG+"CARGO_PROFILE_DEV_DEBUG=$CARGO_PROFILE_DEV_DEBUG"} \
        ${CARGO_PROFILE_DEV_STRIP+"CARGO_PROFILE_DEV_STRIP=$CARGO_PROFILE_DEV_STRIP"} \
        bash "$0" "$@"
fi
if [ -n "${SAM_GIVE_BACK:-}" ]; then
    give_back() {
        local p
        for p in "$CARGO_TARGET_DIR" "${CARGO_HOME:-}" "$HOME/.cache/sam" "$HOME/.npm" "$SAM_ROOT"; do
            [ -n "$p" ] && [ -e "$p" ] && chown -R "$SAM_GIVE_BACK" "$p" 2>/dev/null || true
        done
    }
    trap give_back EXIT
fi

section "Toolchain"
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
cargo --version
rustc --version
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
disk_report

section "System packages"
# Build dependencies of the workspace: a C compiler and linker for -sys crates, git for tests.
ensure_apt ca-certificates gcc libc6-dev git
# `sam gui` (glow + winit load these at run time) and its Xvfb smoke test with a screenshot.
ensure_apt xvfb imagemagick libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6
# GUI snapshot images (client/tests/gui_snapshots.rs): wgpu on the CPU via Mesa's lavapipe.
ensure_apt mesa-vulkan-drivers
# Voice: cpal/rodio link ALSA; the voice tests speak with espeak-ng and measure the audio with sox.
ensure_apt libasound2-dev pkg-config espeak-ng sox
echo "ok"

section "Docker engine and the workspace base image"
# Workspace tests need a running dockerd (they fail, never skip, without one) and
# the lightweight base image; both steps are skipped when already done.
ensure_docker
ensure_apt mmdebstrap
"$SAM_ROOT/bootstrap/images/build-base.sh"

section "Agent adapters for the real-agent tests (host)"
# node/tests/real_agents.rs runs Claude Code, Codex, Gemini and Vibe as host processes
# against a fake LLM on 127.0.0.1. They need Node.js >= 20 (npm), Python >= 3.12 (Vibe) and
# bubblewrap (Codex's shell tool). Pinned in bootstrap/agents/versions.env, installed into
# SAM_AGENTS_DIR (a cache, skipped in milliseconds when present). A missing adapter fails
# its test. SAM_CA_BUNDLE / HTTPS_PROXY / SAM_NPM_REGISTRY / SAM_PIP_INDEX are honoured.
command -v npm >/dev/null 2>&1 || ensure_apt nodejs npm
ensure_apt bubblewrap
export SAM_AGENTS_DIR="${SAM_AGENTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sam/agents}"
"$SAM_ROOT/bootstrap/agents/install-agents.sh" || {
    ensure_apt python3 python3-venv
    "$SAM_ROOT/bootstrap/agents/install-agents.sh"
}

section "A second Automerge implementation (JavaScript) for the trust tests"
# node/tests/guard.rs edits conversation replicas with @automerge/automerge, as a peer using
# another implementation would, and checks the node refuses what the peer may not change.
export SAM_AUTOMERGE_JS="${SAM_AUTOMERGE_JS:-${XDG_CACHE_HOME:-$HOME/.cache}/sam/automerge-js}"
SAM_AUTOMERGE_JS_VERSION=3.5.0
if [ ! -f "$SAM_AUTOMERGE_JS/node_modules/@automerge/automerge/package.json" ] \
    || ! grep -q "\"version\": \"$SAM_AUTOMERGE_JS_VERSION\"" "$SAM_AUTOMERGE_JS/node_modules/@automerge/automerge/package.json"; then
    mkdir -p "$SAM_AUTOMERGE_JS"
    [ -z "${SAM_CA_BUNDLE:-}" ] || export NODE_EXTRA_CA_CERTS="$SAM_CA_BUNDLE" npm_config_cafile="$SAM_CA_BUNDLE"
    [ -z "${SAM_NPM_REGISTRY:-}" ] || export npm_config_registry="$SAM_NPM_REGISTRY"
    npm install --prefix "$SAM_AUTOMERGE_JS" --no-save --no-fund --no-audit --loglevel=error \
        "@automerge/automerge@$SAM_AUTOMERGE_JS_VERSION"
fi
echo "@automerge/automerge $SAM_AUTOMERGE_JS_VERSION in $SAM_AUTOMERGE_JS"

section "Build: cargo build --workspace --bins"
cargo build --workspace --bins
# iroh's relay server for the relay tests (client/tests/relay_paths.rs): its own small
# workspace, so its `server` feature does not change how the main workspace builds iroh;
# into the same target dir, next to `sam`. The test makes network namespaces with iproute2.
cargo build --locked --manifest-path "$SAM_ROOT/tools/sam-relay/Cargo.toml" \
    --target-dir "${CARGO_TARGET_DIR:-$SAM_ROOT/target}"
# iroh's pkarr relay + DNS server for the discovery tests (client/tests/discovery.rs), built
# the same way from tools/sam-dns.
cargo build --locked --manifest-path "$SAM_ROOT/tools/sam-dns/Cargo.toml" \
    --target-dir "${CARGO_TARGET_DIR:-$SAM_ROOT/target}"
command -v dpkg-query >/dev/null 2>&1 && ensure_apt iproute2

section "Test: cargo test --workspace"
cargo test --workspace "$@"

disk_report
section "All tests passed"
