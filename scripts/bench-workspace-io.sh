#!/usr/bin/env bash
# Workspace IO benchmark: terminal, port forward and file download through SAM against
# OpenSSH (ssh -tt, ssh -L, scp), both on loopback, in the same run.
#
#   scripts/bench-workspace-io.sh [-- bench_workspace_io args, e.g. --term-mib 256 --mib 1024]
#
# Starts a private sshd on 127.0.0.1:2224 (own config and keys in a tempdir, killed on
# exit), runs the bench_workspace_io example in release against a throwaway container,
# and rewrites the "Workspaces: terminal, ports, files" section of BENCHMARKS.md.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir
[ "${1:-}" = "--" ] && shift
BENCH_ARGS=("$@")
COMMAND="scripts/bench-workspace-io.sh${BENCH_ARGS[*]:+ -- ${BENCH_ARGS[*]}}"
SSH_PORT=2224

section "System packages and Docker"
ensure_apt openssh-server openssh-client
ensure_docker
[ "$(id -u)" -eq 0 ] || die "the ssh anchor logs in as root: run as root"

WORK="$(mktemp -d /tmp/sam-bench-io.XXXXXX)"
SSHD_PID=""
cleanup() {
    if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

section "Private sshd on 127.0.0.1:$SSH_PORT"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
chmod 600 "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile $WORK/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
AllowTcpForwarding yes
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv SHLVL=1
CONF
SSHD="$(command -v sshd || echo /usr/sbin/sshd)"
"$SSHD" -D -e -f "$WORK/sshd_config" 2>"$WORK/sshd.log" &
SSHD_PID=$!
export SAM_BENCH_SSH="-p $SSH_PORT -i $WORK/client_key root@127.0.0.1"
for _ in $(seq 1 50); do
    ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $SAM_BENCH_SSH true 2>/dev/null && break
    sleep 0.1
done

section "bench_workspace_io (release)"
[ -n "${SAM_BENCH_NO_BUILD:-}" ] || cargo build --release -p sam-node --example bench_workspace_io
"$CARGO_TARGET_DIR/release/examples/bench_workspace_io" "${BENCH_ARGS[@]}" >"$WORK/table.md"
cat "$WORK/table.md"

section "BENCHMARKS.md"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$WORK/table.md" "$SAM_ROOT/BENCHMARKS.md" "$(nproc)" "${CPU:-unknown}" "$(uname -sr)" \
    "$(date -u +%Y-%m-%d)" "$COMMAND" "$(ssh -V 2>&1)" <<'PY'
import re, sys
table_file, md_file, nproc, cpu, kernel, date, command, ssh_version = sys.argv[1:]
table = open(table_file).read().strip()
section = f"""## Workspaces: terminal, ports, files

Bulk and latency through `sam/pty/1`, `sam/port/1` and `sam/file/1` to a workspace
container, against OpenSSH doing the same on this host, measured in the same run on
loopback (relays off, release build). Goal: SAM ≥ ssh throughput, ≤ ssh echo latency.

{table}

- Machine: {nproc} cores, {cpu}, {kernel}; {ssh_version}.
- Date: {date}. Command: `{command}`.
- SAM's side runs in a Docker container (terminal: a Docker tty exec; port: the node
  dials inside the container's network namespace; download: Docker's archive API tar
  stream); ssh's side runs on the host. The client is the library (`sam_client::streams`),
  output discarded; ssh's output goes to a pipe.
"""
try:
    text = open(md_file).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
pat = re.compile(r"^## Workspaces: terminal, ports, files\n.*?(?=^## |\Z)", re.S | re.M)
if pat.search(text):
    text = pat.sub(lambda _: section + "\n", text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(md_file, "w").write(text.rstrip("\n") + "\n")
print(section)
PY
