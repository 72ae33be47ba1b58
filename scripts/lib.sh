# shellcheck shell=bash
# Helpers shared by SAM's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
#
# Every helper is idempotent: it checks first and only installs or starts what is
# missing, so scripts can call them on every run, on a dev box or a fresh CI machine.

# The repository root (the parent of scripts/).
SAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SAM_ROOT

# The script that sourced this file and its arguments, to run it again under the docker
# group (ensure_docker) when this user was just added to it.
SAM_SCRIPT="$0"
SAM_SCRIPT_ARGS=("$@")

# A clear header between the steps of a script.
section() {
    printf '\n==> %s\n' "$*"
}

# Says what went wrong and stops.
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Cargo's target dir: an existing CARGO_TARGET_DIR is kept, else target/ in the repo.
use_target_dir() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SAM_ROOT/target}"
}

# disk_report: free space where the build and Docker write, and the target dir's size.
# A full disk shows up as a linker killed by SIGBUS or a failed image build, so the
# numbers are printed before and after the build, and a low reading is said out loud.
disk_report() {
    local dir free_kb
    mkdir -p "$CARGO_TARGET_DIR"
    for dir in "$CARGO_TARGET_DIR" /var/lib/docker "${TMPDIR:-/tmp}"; do
        [ -d "$dir" ] || continue
        free_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
        echo "free under $dir: $((free_kb / 1024 / 1024)) GiB"
        if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
            echo "warning: less than 8 GiB free under $dir; the build and the images need about 6 GiB"
        fi
    done
    echo "target dir: $(du -sh "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1)"
}

_SAM_APT_UPDATED=0

# ensure_apt PKG...: installs the Debian packages that are not installed yet.
# Runs `apt-get update` at most once per script run, and only when something is missing.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    echo "installing with apt: ${missing[*]}"
    if [ "$_SAM_APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _SAM_APT_UPDATED=1
    fi
    # Packages must not start their daemons (sshd, dockerd) on their own: the scripts
    # start what they need, how they need it. policy-rc.d exit 101 = "not allowed".
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy"
        own_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    [ "$own_policy" -eq 1 ] && as_root rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# ensure_docker: a working Docker engine. Installs docker.io when there is no dockerd,
# and when `docker info` fails starts dockerd in the background (no systemd needed),
# logging to $SAM_DOCKERD_LOG (default /tmp/sam-dockerd.log), then waits until it answers.
#
# As a user other than root, Docker's socket is for the `docker` group: a user outside it is
# added (through sudo) and the script runs again under `sg docker`, so this run, the tests
# and the node it starts all reach Docker without a new login (later logins have the group).
ensure_docker() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    # dockerd lives in /usr/sbin, which is not on a normal user's PATH
    has_dockerd() { PATH="$PATH:/usr/sbin:/sbin" command -v dockerd >/dev/null 2>&1; }
    if ! has_dockerd; then
        ensure_apt docker.io
    fi
    has_dockerd || die "docker.io is installed but there is no dockerd"
    if ! as_root docker info >/dev/null 2>&1; then
        local log="${SAM_DOCKERD_LOG:-/tmp/sam-dockerd.log}"
        echo "starting dockerd in the background (log: $log)"
        as_root sh -c "nohup dockerd >'$log' 2>&1 &"
        local i ready=0
        for i in $(seq 1 60); do
            if as_root docker info >/dev/null 2>&1; then
                ready=1
                break
            fi
            sleep 1
        done
        if [ "$ready" -eq 0 ]; then
            tail -n 30 "$log" >&2 || true
            die "dockerd did not answer within 60 s (log above, full log in $log)"
        fi
        echo "dockerd is ready"
    fi
    docker info >/dev/null 2>&1 && return 0
    # dockerd runs, but this user may not use its socket
    local me
    me="$(id -un)"
    getent group docker >/dev/null 2>&1 || as_root groupadd --system docker
    if ! id -nG "$me" | tr ' ' '\n' | grep -qx docker; then
        echo "adding $me to the docker group (Docker's socket is for that group)"
        as_root usermod -aG docker "$me"
    fi
    if [ -z "${SAM_UNDER_DOCKER_GROUP:-}" ] && command -v sg >/dev/null 2>&1; then
        echo "running $(basename "$SAM_SCRIPT") again under the docker group (sg docker); new logins have it already"
        local cmd
        cmd="$(printf '%q ' env SAM_UNDER_DOCKER_GROUP=1 bash "$SAM_SCRIPT" "${SAM_SCRIPT_ARGS[@]}")"
        exec sg docker -c "$cmd"
    fi
    die "$me cannot use Docker's socket ($(docker info 2>&1 | grep -i -m1 denied || echo 'docker info fails')): log in again so the docker group applies, then run this again"
}
