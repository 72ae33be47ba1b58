#!/usr/bin/env bash
# Foundation benchmark: connect by ticket (SAM) against an OpenSSH login, both on loopback.
#
#   scripts/bench.sh [--runs 100] [-- bench_connect args, e.g. --n 1000]
#
# Starts a private sshd on 127.0.0.1:2222 and :2223 (own config, host key and client key
# in a tempdir, killed on exit), times `ssh ... true` logins on both, runs the bench_connect example
# in release, and rewrites the "Foundation: connect by ticket" section of BENCHMARKS.md.
# All traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SAM_ROOT"
use_target_dir

RUNS=100
SSH_PORT=2222        # a login as it is on this machine
CLEAN_PORT=2223      # the same login without root's ~/.bashrc (see below)
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --) shift; break ;;
        *) die "unknown argument $1 (usage: scripts/bench.sh [--runs N] [-- bench_connect args])" ;;
    esac
done
BENCH_ARGS=("$@")
COMMAND="scripts/bench.sh${RUNS:+ --runs $RUNS}${BENCH_ARGS[*]:+ -- ${BENCH_ARGS[*]}}"

section "System packages"
ensure_apt openssh-server openssh-client
command -v python3 >/dev/null 2>&1 || ensure_apt python3

WORK="$(mktemp -d /tmp/sam-bench.XXXXXX)"
SSHD_PID=""
cleanup() {
    if [ -n "$SSHD_PID" ]; then
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

section "Private sshd on 127.0.0.1:$SSH_PORT and :$CLEAN_PORT"
[ "$(id -u)" -eq 0 ] || die "the ssh anchor logs in as root: run scripts/bench.sh as root"
mkdir -p /run/sshd   # sshd's privilege-separation directory
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
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
PrintLastLog no
UseDNS no
Port $CLEAN_PORT
# Debian's bash sources ~/.bashrc for an ssh command when SHLVL < 2; a dev box's root
# .bashrc (pyenv init, …) can cost more than ssh itself. On this port the shell skips
# it, so the anchor measures ssh, not the machine's shell start-up.
Match LocalPort $CLEAN_PORT
    SetEnv SHLVL=1
CONF
SSHD="$(command -v sshd || echo /usr/sbin/sshd)"
"$SSHD" -t -f "$WORK/sshd_config" || die "sshd rejected the config in $WORK/sshd_config"
"$SSHD" -D -e -f "$WORK/sshd_config" 2>"$WORK/sshd.log" &
SSHD_PID=$!
ssh_cmd() { # PORT
    SSH=(ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
         -o LogLevel=ERROR -p "$1" -i "$WORK/client_key" root@127.0.0.1 true)
}
ssh_cmd "$SSH_PORT"
for _ in $(seq 1 50); do
    "${SSH[@]}" 2>/dev/null && break
    sleep 0.1
done
"${SSH[@]}" || { cat "$WORK/sshd.log" >&2; die "cannot log in to the private sshd"; }
echo "sshd $SSHD_PID is up; ${SSH[*]}"

time_ssh() { # PORT OUTFILE
    ssh_cmd "$1"
    : >"$2"
    for _ in $(seq 1 5); do "${SSH[@]}"; done   # warm up
    for _ in $(seq 1 "$RUNS"); do
        t0=$(date +%s%N)
        "${SSH[@]}"
        t1=$(date +%s%N)
        echo $((t1 - t0)) >>"$2"
    done
    sort -n "$2" | awk '{a[NR]=$1} END {printf "p50 %.1f ms over %d logins\n", a[int((NR+1)/2)]/1e6, NR}'
}
section "OpenSSH login time, as is ($RUNS runs, port $SSH_PORT)"
time_ssh "$SSH_PORT" "$WORK/ssh_ns"
section "OpenSSH login time, shell without ~/.bashrc ($RUNS runs, port $CLEAN_PORT)"
time_ssh "$CLEAN_PORT" "$WORK/ssh_clean_ns"

section "SAM bench_connect (release)"
cargo build --release -p sam-node --bins
cargo build --release -p sam-node --example bench_connect
"$CARGO_TARGET_DIR/release/examples/bench_connect" --json "${BENCH_ARGS[@]}" >"$WORK/sam.json"
cat "$WORK/sam.json"

section "BENCHMARKS.md"
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$WORK/ssh_ns" "$WORK/ssh_clean_ns" "$WORK/sam.json" "$SAM_ROOT/BENCHMARKS.md" \
    "$(nproc)" "${CPU:-unknown}" "$(uname -sr)" "$(date -u +%Y-%m-%d)" "$COMMAND" \
    "$(ssh -V 2>&1)" "$LOAD" <<'PY'
import json, math, re, sys

ssh_file, clean_file, sam_file, md_file, nproc, cpu, kernel, date, command, ssh_version, load = sys.argv[1:]
def pct(xs, p):
    return xs[max(1, min(len(xs), math.ceil(len(xs) * p))) - 1]
def load(f):
    ns = sorted(int(l) for l in open(f) if l.strip())
    return {"count": len(ns), "p50_ms": pct(ns, .5) / 1e6, "p99_ms": pct(ns, .99) / 1e6,
            "mean_ms": sum(ns) / len(ns) / 1e6}
ssh_raw, ssh = load(ssh_file), load(clean_file)
sam = json.load(open(sam_file))
a, b, c = sam["connect"], sam["connect_fresh_endpoint"], sam["warm_rtt"]
rss = sam.get("node_idle_rss_kib")

def row(name, s):
    return f"| {name} | {s['count']} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms | {s['mean_ms']:.2f} ms |"
def ratio(s):
    return f"{ssh['p50_ms'] / s['p50_ms']:.0f}×"

rss_txt = f"{rss / 1024:.1f} MB" if rss else "not measured"
section = f"""## Foundation: connect by ticket

How long a client takes from a ticket to the node's first answer on `sam/ctl/1`
(QUIC handshake, hello with auth, one `Ping`), against the classic way to reach a
machine: an OpenSSH key login that runs `true`. Both on loopback (127.0.0.1), relays
off, release build. Targets: connect → first response ≤ 20 ms p50 and ≥ 10× faster
than the ssh login; node idle RSS ≤ 30 MB.

| measurement | n | p50 | p99 | mean |
|---|---:|---:|---:|---:|
{row("SAM: connect by ticket → first ctl response (one client endpoint)", a)}
{row("SAM: same, plus binding a fresh client endpoint (one CLI run)", b)}
{row("SAM: warm ctl round trip (Ping on an open connection)", c)}
{row("OpenSSH: `ssh -o BatchMode=yes root@127.0.0.1 true` (key login, shell without ~/.bashrc)", ssh)}
{row("OpenSSH: the same login as is (root's ~/.bashrc sourced)", ssh_raw)}

| comparison | value |
|---|---:|
| ssh login p50 (without ~/.bashrc) ÷ SAM connect p50 (one endpoint) | {ratio(a)} |
| ssh login p50 (without ~/.bashrc) ÷ SAM connect p50 (fresh endpoint) | {ratio(b)} |
| `sam-node` idle RSS (real binary, after one connection, 2 s idle) | {rss_txt} |

- Machine: {nproc} cores, {cpu}, {kernel}; {ssh_version}.
- Date: {date}. Load average when the run ended (1/5/15 min): {load} — other work on the
  machine makes p99 worse first.
- Command: `{command}` (runs `cargo run --release -p sam-node --example bench_connect`
  for SAM and a private sshd on 127.0.0.1:2222/2223 for the anchor).
- (a) reuses one client endpoint for every new QUIC connection; (b) also binds a new
  endpoint each time, as one `sam` invocation does (process start-up not included).
  The node runs in the benchmark's process for (a)–(c); RSS is read from
  `/proc/PID/status` (VmRSS) of a separate `sam-node run`.
- The ssh anchor that the ratios use skips root's `~/.bashrc`: Debian's bash sources
  it for ssh commands, and on this machine it runs `pyenv init`, which costs more than
  the ssh handshake. The as-is login is listed too.
"""

head = """# Benchmarks

Numbers measured by the scripts in `scripts/`, one section per capability; each
section names its machine, date and the exact command, so anyone can re-run it.
Tests never assert on these numbers.
"""
try:
    text = open(md_file).read()
except FileNotFoundError:
    text = head
pat = re.compile(r"^## Foundation: connect by ticket\n.*?(?=^## |\Z)", re.S | re.M)
if pat.search(text):
    text = pat.sub(lambda _: section + "\n", text, count=1)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(md_file, "w").write(text.rstrip("\n") + "\n")
print(section)
PY
echo "updated $SAM_ROOT/BENCHMARKS.md"
