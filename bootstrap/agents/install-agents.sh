#!/usr/bin/env bash
# Installs the ACP adapters of the four real agents, at the pinned versions of
# versions.env, into one prefix directory:
#
#   PREFIX/bin/claude-agent-acp   npm  @agentclientprotocol/claude-agent-acp
#   PREFIX/bin/codex-acp          npm  @zed-industries/codex-acp
#   PREFIX/bin/gemini             npm  @google/gemini-cli        (run as `gemini --acp`)
#   PREFIX/bin/vibe-acp           PyPI mistral-vibe (a venv; Python >= 3.12, uv when present)
#
#   bootstrap/agents/install-agents.sh [--prefix DIR] [--link-dir DIR] [claude|codex|gemini|vibe ...]
#   bootstrap/agents/install-agents.sh --into-image sam-base:1 [AGENT...]   # a workspace image
#
# With no agent names it installs all four. Idempotent: an agent whose pinned version is
# already in PREFIX (a stamp file next to its files) is skipped in milliseconds, so test
# setup can call it on every run. Each agent lives in its own folder, so one failing
# registry does not undo the others; the script exits non-zero when any agent failed.
#
# Used by scripts/test.sh (on the host, PREFIX = the test cache) and for workspace images
# (--into-image: PREFIX=/opt/sam/agents inside, commands linked into /usr/local/bin so
# `docker exec` finds them on the default PATH).
#
# Settings (environment; nothing about the network is hard-coded):
#   SAM_AGENTS_DIR   the prefix when --prefix is not given
#                    (default ${XDG_CACHE_HOME:-~/.cache}/sam/agents)
#   SAM_CA_BUNDLE    a CA bundle (PEM) for a TLS-intercepting proxy: exported to npm
#                    (cafile), Node (NODE_EXTRA_CA_CERTS), pip (PIP_CERT) and uv (SSL_CERT_FILE)
#   SAM_NPM_REGISTRY npm registry URL (npm's default when unset)
#   SAM_PIP_INDEX    PyPI index URL (pip's/uv's default when unset)
#   SAM_UV           a uv binary to use (default: uv on PATH, else a pinned uv bootstrapped
#                    from PyPI into PREFIX/.uv; SAM_NO_UV=1 uses plain pip, ~15x slower)
#   SAM_PYTHON       the Python (>= 3.12) for Vibe's venv; else the first of python3.13,
#                    python3.12, python3 (and pyenv's versions) that is new enough
#   HTTPS_PROXY / HTTP_PROXY / NO_PROXY   honoured by npm, pip and uv as usual
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$HERE/versions.env"

PREFIX="${SAM_AGENTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sam/agents}"
agents=()
link_dir=""
into_image=""
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --link-dir) link_dir="$2"; shift 2 ;;
    --into-image) into_image="$2"; shift 2 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    claude | codex | gemini | vibe) agents+=("$1"); shift ;;
    *) echo "error: unknown argument '$1' (agents: claude codex gemini vibe)" >&2; exit 2 ;;
    esac
done
[ "${#agents[@]}" -gt 0 ] || agents=(claude codex gemini vibe)

# --into-image IMAGE: run this script as root inside a container of IMAGE (prefix
# /opt/sam/agents, commands linked into /usr/local/bin, plus bubblewrap for Codex's shell
# tool) and commit the result under the same tag. Network settings are passed along.
if [ -n "$into_image" ]; then
    t0=$(date +%s)
    # Done already: every asked agent's stamp in the image names its pinned version (checked
    # in a throwaway container without network), so a second run commits no new layer.
    wants=()
    for a in "${agents[@]}"; do
        case "$a" in
        claude) wants+=("claude=$SAM_CLAUDE_PKG@$SAM_CLAUDE_VERSION") ;;
        codex) wants+=("codex=$SAM_CODEX_PKG@$SAM_CODEX_VERSION") ;;
        gemini) wants+=("gemini=$SAM_GEMINI_PKG@$SAM_GEMINI_VERSION") ;;
        vibe) wants+=("vibe=$SAM_VIBE_PKG==$SAM_VIBE_VERSION") ;;
        esac
    done
    check='for w in "$@"; do [ "$(cat "/opt/sam/agents/${w%%=*}/.sam-installed" 2>/dev/null)" = "${w#*=}" ] || exit 1; done'
    if [ "${SAM_AGENTS_FORCE:-0}" != 1 ] &&
        docker run --rm --network none -u root --entrypoint sh "$into_image" -c "$check" sam-check "${wants[@]}" >/dev/null 2>&1; then
        echo "agents in $into_image are the pinned versions already (SAM_AGENTS_FORCE=1 reinstalls)"
        exit 0
    fi
    envs=()
    for v in SAM_CA_BUNDLE SAM_NPM_REGISTRY SAM_PIP_INDEX SAM_UV SAM_NO_UV HTTPS_PROXY HTTP_PROXY NO_PROXY https_proxy http_proxy no_proxy; do
        [ -z "${!v:-}" ] || envs+=(-e "$v")
    done
    mounts=(-v "$HERE:/tmp/sam-agents:ro")
    if [ -n "${SAM_CA_BUNDLE:-}" ]; then
        mounts+=(-v "$(realpath "$SAM_CA_BUNDLE"):/tmp/sam-ca.pem:ro")
        envs+=(-e SAM_CA_BUNDLE=/tmp/sam-ca.pem)
    fi
    inner='set -e
if ! command -v bwrap >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
    rm -rf /var/lib/apt/lists/*
fi
HOME=/root bash /tmp/sam-agents/install-agents.sh --prefix /opt/sam/agents --link-dir /usr/local/bin "$@"
rm -rf /root/.npm /root/.cache'
    cid=$(docker create -u root "${envs[@]}" "${mounts[@]}" "$into_image" sh -c "$inner" sam-agents "${agents[@]}")
    trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
    docker start -a "$cid"
    [ "$(docker inspect -f '{{.State.ExitCode}}' "$cid")" = 0 ] || { echo "error: installing agents into $into_image failed" >&2; exit 1; }
    # Keep the image's user, working dir and command (docker commit keeps its config).
    docker commit "$cid" "$into_image" >/dev/null
    echo "agents installed into $into_image in $(($(date +%s) - t0)) s"
    exit 0
fi

if [ -n "${SAM_CA_BUNDLE:-}" ]; then
    [ -r "$SAM_CA_BUNDLE" ] || { echo "error: SAM_CA_BUNDLE=$SAM_CA_BUNDLE is not readable" >&2; exit 2; }
    export NODE_EXTRA_CA_CERTS="$SAM_CA_BUNDLE" npm_config_cafile="$SAM_CA_BUNDLE"
    export PIP_CERT="$SAM_CA_BUNDLE" SSL_CERT_FILE="$SAM_CA_BUNDLE" REQUESTS_CA_BUNDLE="$SAM_CA_BUNDLE"
fi
[ -z "${SAM_NPM_REGISTRY:-}" ] || export npm_config_registry="$SAM_NPM_REGISTRY"
[ -z "${SAM_PIP_INDEX:-}" ] || export PIP_INDEX_URL="$SAM_PIP_INDEX" UV_INDEX_URL="$SAM_PIP_INDEX"
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$PREFIX/bin"
PREFIX="$(cd "$PREFIX" && pwd)"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# install_npm NAME PACKAGE VERSION BIN...: `npm install` into PREFIX/NAME, links the bins.
install_npm() {
    local name="$1" pkg="$2" version="$3"
    shift 3
    local dir="$PREFIX/$name" stamp="$PREFIX/$name/.sam-installed" bin
    if [ "$(cat "$stamp" 2>/dev/null)" = "$pkg@$version" ]; then
        echo "$name: $pkg@$version already installed"
    else
        command -v npm >/dev/null 2>&1 || { echo "error: $name needs npm (Node.js >= 20)" >&2; return 1; }
        local t0
        t0=$(now)
        rm -rf "$dir"
        mkdir -p "$dir"
        echo "$name: npm install $pkg@$version"
        # --ignore-scripts would break codex-acp's optional native binary selection: keep scripts.
        npm install --prefix "$dir" --no-save --loglevel=error --no-fund --no-audit \
            "$pkg@$version" >"$dir/.npm-install.log" 2>&1 || {
            tail -n 30 "$dir/.npm-install.log" >&2
            echo "error: npm install $pkg@$version failed (log: $dir/.npm-install.log)" >&2
            return 1
        }
        echo "$pkg@$version" >"$stamp"
        echo "$name: installed in $(elapsed "$t0") s ($(du -sm "$dir" | cut -f1) MB)"
    fi
    for bin in "$@"; do
        [ -x "$dir/node_modules/.bin/$bin" ] || { echo "error: $name: no $bin after install" >&2; return 1; }
        ln -sfn "../$name/node_modules/.bin/$bin" "$PREFIX/bin/$bin"
    done
}

# A Python >= 3.12 for Vibe.
find_python() {
    local c candidates=()
    [ -z "${SAM_PYTHON:-}" ] || candidates+=("$SAM_PYTHON")
    candidates+=(python3.13 python3.12 python3 /usr/bin/python3.13 /usr/bin/python3.12)
    for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do [ -x "$c" ] && candidates+=("$c"); done
    for c in "${candidates[@]}"; do
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
            "$c" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

install_vibe() {
    local dir="$PREFIX/vibe" stamp="$PREFIX/vibe/.sam-installed" want="$SAM_VIBE_PKG==$SAM_VIBE_VERSION"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "vibe: $want already installed"
    else
        local py t0
        t0=$(now)
        py=$(find_python) || {
            echo "error: vibe needs Python >= 3.12 (set SAM_PYTHON, or install python3.12+)" >&2
            return 1
        }
        rm -rf "$dir"
        # uv resolves and installs Vibe's ~100 wheels in seconds where pip takes over a
        # minute; when it is not on PATH, a pinned uv is bootstrapped from PyPI with pip.
        local uv="${SAM_UV:-$(command -v uv || true)}"
        if [ -z "$uv" ] && [ "${SAM_NO_UV:-0}" != 1 ]; then
            if [ "$(cat "$PREFIX/.uv/.sam-installed" 2>/dev/null)" != "uv==$SAM_UV_VERSION" ]; then
                rm -rf "$PREFIX/.uv"
                { "$py" -m venv "$PREFIX/.uv" && "$PREFIX/.uv/bin/pip" install -q --no-input "uv==$SAM_UV_VERSION" &&
                    echo "uv==$SAM_UV_VERSION" >"$PREFIX/.uv/.sam-installed"; } >"$PREFIX/.uv-install.log" 2>&1 ||
                    echo "vibe: could not bootstrap uv (log: $PREFIX/.uv-install.log); using pip"
            fi
            [ -x "$PREFIX/.uv/bin/uv" ] && uv="$PREFIX/.uv/bin/uv"
        fi
        if [ -n "$uv" ]; then
            echo "vibe: uv pip install $want (python $py)"
            "$uv" venv -q --python "$py" "$dir" >"$PREFIX/.vibe-install.log" 2>&1 &&
                "$uv" pip install -q --python "$dir/bin/python" "$want" >>"$PREFIX/.vibe-install.log" 2>&1
        else
            echo "vibe: pip install $want (python $py)"
            "$py" -m venv "$dir" >"$PREFIX/.vibe-install.log" 2>&1 &&
                "$dir/bin/pip" install -q --no-input "$want" >>"$PREFIX/.vibe-install.log" 2>&1
        fi || {
            tail -n 30 "$PREFIX/.vibe-install.log" >&2
            echo "error: installing $want failed (log: $PREFIX/.vibe-install.log)" >&2
            return 1
        }
        mv "$PREFIX/.vibe-install.log" "$dir/.install.log"
        echo "$want" >"$stamp"
        echo "vibe: installed in $(elapsed "$t0") s ($(du -sm "$dir" | cut -f1) MB)"
    fi
    [ -x "$dir/bin/vibe-acp" ] || { echo "error: vibe: no vibe-acp after install" >&2; return 1; }
    ln -sfn ../vibe/bin/vibe-acp "$PREFIX/bin/vibe-acp"
}

failed=()
for agent in "${agents[@]}"; do
    case "$agent" in
    claude) install_npm claude "$SAM_CLAUDE_PKG" "$SAM_CLAUDE_VERSION" claude-agent-acp || failed+=(claude) ;;
    codex) install_npm codex "$SAM_CODEX_PKG" "$SAM_CODEX_VERSION" codex-acp || failed+=(codex) ;;
    gemini) install_npm gemini "$SAM_GEMINI_PKG" "$SAM_GEMINI_VERSION" gemini || failed+=(gemini) ;;
    vibe) install_vibe || failed+=(vibe) ;;
    esac
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: could not install: ${failed[*]} (see the messages above)" >&2
    exit 1
fi
if [ -n "$link_dir" ]; then
    mkdir -p "$link_dir"
    for b in "$PREFIX"/bin/*; do ln -sfn "$(readlink -f "$b")" "$link_dir/$(basename "$b")"; done
    echo "linked into $link_dir"
fi
echo "agents ready in $PREFIX/bin"
