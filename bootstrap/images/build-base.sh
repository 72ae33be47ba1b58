#!/usr/bin/env bash
# Builds SAM's lightweight workspace base image (Debian trixie with git, bash, curl,
# Node.js, Python and a non-root user `sam`, uid 1000, with passwordless sudo).
#
#   bootstrap/images/build-base.sh            # builds $SAM_BASE_IMAGE unless it exists
#   SAM_BASE_FORCE=1 bootstrap/images/build-base.sh   # rebuild even when it exists
#
# Settings (environment):
#   SAM_BASE_IMAGE   image name          (default sam-base:1; the node's default too)
#   SAM_BASE_METHOD  mmdebstrap | docker (default: docker when a registry answers, else
#                    mmdebstrap). `docker` builds `FROM debian:trixie` with a Dockerfile
#                    (a real VM with a normal network); `mmdebstrap` builds the root file
#                    system from Debian's package mirror and `docker import`s it (no
#                    registry needed: CI and closed networks).
#   SAM_BASE_MIRROR  Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
#   SAM_BASE_AGENT_HOOK  a script run inside the image (as root) after the base is
#                    built, to install agent CLIs; its output becomes a new image layer.
set -euo pipefail

IMAGE="${SAM_BASE_IMAGE:-sam-base:1}"
MIRROR="${SAM_BASE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="git,bash,curl,ca-certificates,nodejs,npm,python3,python3-venv,python3-pip,procps,iproute2,sudo,less,openssh-client,tini,locales,unzip,xz-utils"

if [ "${SAM_BASE_FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists (SAM_BASE_FORCE=1 rebuilds it)"
    exit 0
fi

method="${SAM_BASE_METHOD:-}"
if [ -z "$method" ]; then
    if timeout 10 docker pull -q debian:trixie >/dev/null 2>&1; then method=docker; else method=mmdebstrap; fi
fi

# Shared by both methods: the `sam` user and its sudo rule.
SETUP_USER='
set -e
id -u sam >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/bash sam
echo "sam ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/sam
chmod 0440 /etc/sudoers.d/sam
mkdir -p /workspaces && chown sam:sam /workspaces
'

echo "building $IMAGE with $method"
start=$(date +%s)
case "$method" in
mmdebstrap)
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        # As root with apt (a fresh cloud node): installed here; else say how.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing mmdebstrap"
            DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends mmdebstrap >/dev/null ||
                { echo "error: mmdebstrap is missing and could not be installed" >&2; exit 1; }
        else
            echo "error: mmdebstrap is missing: apt-get install -y mmdebstrap" >&2
            exit 1
        fi
    fi
    # Its chroot hook needs root: a normal user runs it through sudo (the tarball it
    # writes is imported by this user, a member of the docker group).
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: building the base image needs root (mmdebstrap): install sudo or run as root" >&2; exit 1; }
        as_root=(sudo)
    fi
    "${as_root[@]}" mmdebstrap --variant=apt --quiet \
        --include="$PACKAGES" \
        --customize-hook="chroot \"\$1\" sh -c '$SETUP_USER'" \
        --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
        trixie - "$MIRROR" |
        docker import \
            --change 'CMD ["/bin/bash"]' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'WORKDIR /workspaces' \
            - "$IMAGE"
    ;;
docker)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '%s\n' "$SETUP_USER" >"$tmp/setup-user.sh"
    cat >"$tmp/Dockerfile" <<DOCKERFILE
FROM debian:trixie
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(echo "$PACKAGES" | tr ',' ' ') && rm -rf /var/lib/apt/lists/*
COPY setup-user.sh /tmp/setup-user.sh
RUN sh /tmp/setup-user.sh && rm /tmp/setup-user.sh
ENV LANG=C.UTF-8
WORKDIR /workspaces
DOCKERFILE
    docker build -q -t "$IMAGE" "$tmp"
    ;;
*)
    echo "error: SAM_BASE_METHOD must be mmdebstrap or docker, not '$method'" >&2
    exit 1
    ;;
esac

# Hook for the agents work: install agent CLIs on top of the base.
if [ -n "${SAM_BASE_AGENT_HOOK:-}" ]; then
    echo "running agent hook $SAM_BASE_AGENT_HOOK"
    cid=$(docker create -v "$(realpath "$SAM_BASE_AGENT_HOOK"):/tmp/sam-agent-hook:ro" "$IMAGE" sh /tmp/sam-agent-hook)
    docker start -a "$cid"
    docker commit "$cid" "$IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
fi
echo "built $IMAGE in $(($(date +%s) - start)) s"
