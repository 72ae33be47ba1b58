//! The user-data shell script.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::firewall::{METADATA_BLOCK_PATH, METADATA_BLOCK_SCRIPT, METADATA_UNIT_NAME};
use crate::{
    Advertise, BootstrapError, BootstrapSpec, NodeConfigFile, SYSTEMD_UNIT_NAME, check_path,
    check_url, node_config_toml, systemd_unit_requiring,
};

/// Single-quotes `s` for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub(crate) const PRELUDE: &str = r#"set -eu
umask 077
log() { printf 'sam-bootstrap: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  have apt-get || return 1
  DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "$@" >/dev/null
}
fetch() {
  if have curl; then curl -fsSL --retry 5 --retry-delay 2 --connect-timeout 15 -o "$2" "$1"
  elif have wget; then wget -q -O "$2" "$1"
  else apt_install curl ca-certificates && curl -fsSL --retry 5 --retry-delay 2 -o "$2" "$1"
  fi
}
fetch_text() {
  if have curl; then curl -fsS --max-time 3 "$1"
  elif have wget; then wget -q -T 3 -O - "$1"
  else return 1
  fi
}
is_ipv4() {
  case "$1" in ''|*[!0-9.]*|.*|*.|*..*) return 1 ;; esac
  [ "$(printf '%s' "$1" | tr -cd . | wc -c)" -eq 3 ]
}
sha_of() {
  if have sha256sum; then sha256sum "$1" | cut -d' ' -f1
  else openssl dgst -sha256 -r "$1" | cut -d' ' -f1
  fi
}
# Progress for the owner: sam-node serves this file on its enrollment port until the
# bootstrap is done (step names and fixed messages only: nothing secret goes in it).
STEP=begin
STATE=running
status() {
  STATE=$1
  [ -d "$SAM_HOME/node" ] || return 0
  printf 'state=%s\nstep=%s\nmessage=%s\n' "$1" "$STEP" "$2" >"$SAM_HOME/node/bootstrap.status.tmp" &&
    mv -f "$SAM_HOME/node/bootstrap.status.tmp" "$SAM_HOME/node/bootstrap.status"
}
step() { STEP=$1; log "[$1] $2"; status running "$2"; }
fail() { log "failed at step $STEP: $*"; status failed "$*"; exit 1; }
on_exit() {
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$STATE" = running ]; then
    status failed "a command failed (exit $rc); the VM's cloud-init output log says which"
  fi
}
trap on_exit EXIT
"#;

pub(crate) const INSTALL_NODE: &str = r#"mkdir -p "$SAM_HOME/node"
chmod 0700 "$SAM_HOME" "$SAM_HOME/node"
step sam-node 'downloading sam-node and checking its sha256'
# install_bin NAME URL SHA256 DEST: downloads, checks, installs (skipped when DEST has it).
install_bin() {
  if [ -x "$4" ] && [ "$(sha_of "$4")" = "$3" ]; then
    log "$1: the pinned release is installed already"
    return 0
  fi
  log "installing $1 from $2"
  tmp=$(mktemp)
  fetch "$2" "$tmp" || { rm -f "$tmp"; fail "cannot download $1 from the release URL"; }
  got=$(sha_of "$tmp")
  if [ "$got" != "$3" ]; then
    rm -f "$tmp"
    log "$1 checksum mismatch: expected $3, got $got; refusing to install it"
    fail "$1 checksum mismatch: expected $3, got $got"
  fi
  mkdir -p "$(dirname "$4")"
  install -m 0755 "$tmp" "$4.new"
  mv -f "$4.new" "$4"
  rm -f "$tmp"
}
install_bin sam-node "$NODE_URL" "$NODE_SHA256" "$NODE_BIN"
if [ -n "$HOLD_URL" ]; then
  install_bin sam-pty-hold "$HOLD_URL" "$HOLD_SHA256" "$(dirname "$NODE_BIN")/sam-pty-hold"
else
  log 'no sam-pty-hold in the release: terminals will not outlive a node restart'
fi
step config 'writing the node config and the one-time enrollment'
"#;

const DETECT: &str = r#"PUBLIC_IP=''
for u in $METADATA_URLS; do
  ip=$(fetch_text "$u" 2>/dev/null || true)
  if is_ipv4 "$ip"; then PUBLIC_IP=$ip; break; fi
done
if [ -z "$PUBLIC_IP" ] && have ip; then
  ip=$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1)
  if is_ipv4 "$ip"; then PUBLIC_IP=$ip; fi
fi
if [ -n "$PUBLIC_IP" ]; then
  printf 'advertise = ["%s:%s"]\n' "$PUBLIC_IP" "$PORT" >>"$SAM_HOME/node/config.toml"
  log "advertising $PUBLIC_IP:$PORT"
else
  log 'no public IPv4 found: the node advertises no address'
fi
"#;

/// Starts the node early (before Docker and the images): it serves the bootstrap's status to
/// its owner on the enrollment port, and enrolls only once the status says `done`.
const EARLY_NODE: &str = r#"step node 'starting sam-node (it reports this bootstrap to its owner)'
PIDFILE="$SAM_HOME/node/bootstrap-node.pid"
if [ -d /run/systemd/system ] && have systemctl && systemctl is-active --quiet "$UNIT_NAME"; then
  log "$UNIT_NAME runs already"
elif [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log 'sam-node runs already'
else
  SAM_HOME="$SAM_HOME" nohup "$NODE_BIN" run >>/var/log/sam-node.log 2>&1 &
  echo $! >"$PIDFILE"
fi
"#;

const DOCKER: &str = r#"step docker 'installing and starting Docker'
if ! have docker; then
  log 'installing Docker (docker.io)'
  apt_install docker.io ca-certificates || fail 'cannot install Docker (apt-get install docker.io failed)'
fi
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl enable --now docker >/dev/null 2>&1 || log 'could not start docker.service'
elif [ ! -S /var/run/docker.sock ] && have dockerd; then
  nohup dockerd >>/var/log/dockerd.log 2>&1 &
fi
i=0
until docker info >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 60 ] || fail 'Docker does not answer (docker info) 60 s after it was started'
  sleep 1
done
"#;

/// Installs and runs the metadata block (after Docker, before enrollment); fails closed.
const METADATA: &str = r#"have iptables || apt_install iptables || log 'cannot install iptables'
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl daemon-reload
  systemctl enable "$METADATA_UNIT" >/dev/null 2>&1 || true
  if ! systemctl restart "$METADATA_UNIT"; then
    fail 'cannot block containers from the metadata service (169.254.0.0/16)'
  fi
elif ! "$METADATA_BLOCK" install; then
  fail 'cannot block containers from the metadata service (169.254.0.0/16)'
fi
"#;

/// The workspace image and the agent CLIs, with the scripts `scripts/up.sh` runs on a local
/// machine (embedded below, byte for byte).
const IMAGE: &str = r#"step base-image "building the workspace image $BASE_IMAGE"
(umask 022; SAM_BASE_IMAGE="$BASE_IMAGE" bash "$SAM_LIB/images/build-base.sh") ||
  fail 'building the workspace image failed (bootstrap/images/build-base.sh; its output is in the cloud-init log)'
step agents 'installing the pinned agent CLIs into the workspace image'
(umask 022; bash "$SAM_LIB/agents/install-agents.sh" --into-image "$BASE_IMAGE") ||
  fail 'installing the agent CLIs into the workspace image failed (bootstrap/agents/install-agents.sh; its output is in the cloud-init log)'
"#;

/// Hands the node over to systemd (where it runs) and reports `done`: only then does the node
/// enroll.
const START: &str = r#"step service 'starting sam-node for good'
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl daemon-reload
  systemctl enable "$UNIT_NAME" >/dev/null 2>&1
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    i=0
    while kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [ "$i" -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
    rm -f "$PIDFILE"
  fi
  systemctl is-active --quiet "$UNIT_NAME" || systemctl restart "$UNIT_NAME" || fail "$UNIT_NAME did not start"
fi
STEP=done
status done 'the node is ready'
log 'sam-node started; bootstrap done'
"#;

/// The shared install scripts, as `scripts/up.sh` runs them from the repository.
const BUILD_BASE_SH: &str = include_str!("../images/build-base.sh");
const INSTALL_AGENTS_SH: &str = include_str!("../agents/install-agents.sh");
const VERSIONS_ENV: &str = include_str!("../agents/versions.env");

/// Where the user-data installs the shared scripts (`images/`, `agents/` below it).
pub const SAM_LIB: &str = "/usr/local/lib/sam";

/// `(path under SAM_LIB, heredoc delimiter, text)` of each embedded script.
pub(crate) const SHARED_SCRIPTS: [(&str, &str, &str); 3] = [
    ("images/build-base.sh", "SAM_BUILD_BASE_SH", BUILD_BASE_SH),
    (
        "agents/install-agents.sh",
        "SAM_INSTALL_AGENTS_SH",
        INSTALL_AGENTS_SH,
    ),
    ("agents/versions.env", "SAM_VERSIONS_ENV", VERSIONS_ENV),
];

/// Renders the script. Size is checked by the caller.
pub(crate) fn render(spec: &BootstrapSpec) -> Result<String, BootstrapError> {
    let sha = spec.release.sha256.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BootstrapError::BadSha256(spec.release.sha256.clone()));
    }
    check_url(&spec.release.url)?;
    let (hold_url, hold_sha) = match &spec.release.pty_hold {
        Some(a) => {
            let sha = a.sha256.to_ascii_lowercase();
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BootstrapError::BadSha256(a.sha256.clone()));
            }
            check_url(&a.url)?;
            (a.url.clone(), sha)
        }
        None => (String::new(), String::new()),
    };
    check_path(&spec.sam_home)?;
    check_path(&spec.node_bin)?;
    if spec.port == 0 {
        return Err(BootstrapError::ZeroPort);
    }
    if spec.enroll_port == 0 || spec.enroll_port == spec.port {
        return Err(BootstrapError::BadEnrollPort(spec.port));
    }
    // What sam-node accepts (`n0`, `none`, http(s) URLs with a host; no `file://`), so the
    // node starts.
    sam_protocol::relay::parse(&spec.relays)
        .map_err(|e| BootstrapError::BadRelay(e.to_string()))?;
    if !spec
        .base_image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":._/-".contains(&b))
        || spec.base_image.is_empty()
        || spec.base_image.len() > 128
        || spec.base_image.starts_with('-')
    {
        return Err(BootstrapError::BadImage(spec.base_image.clone()));
    }
    let discovery =
        sam_protocol::discovery::parse(&spec.discovery).map_err(|_| BootstrapError::BadUrl {
            url: spec.discovery.join(","),
            reason: "discovery is `n0`, `local`, `none`, a pkarr relay URL or dns:ORIGIN",
        })?;
    for url in &discovery.pkarr {
        check_url(url)?;
    }
    for (index, cmd) in spec.extra_commands.iter().enumerate() {
        if cmd.chars().any(|c| c.is_control() && c != '\t') {
            return Err(BootstrapError::BadCommand { index });
        }
    }
    let (advertise, metadata_urls) = match &spec.advertise {
        Advertise::Fixed(addrs) => (addrs.clone(), None),
        Advertise::Detect { metadata_urls } => {
            for u in metadata_urls {
                check_url(u)?;
            }
            (Vec::new(), Some(metadata_urls))
        }
    };
    let config = node_config_toml(&NodeConfigFile {
        owner: spec.owner.to_string(),
        bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), spec.port),
        advertise,
        relays: spec.relays.clone(),
        discovery: discovery.items(),
    })?;
    let requires: &[&str] = if spec.block_metadata {
        &[METADATA_UNIT_NAME]
    } else {
        &[]
    };
    let unit = systemd_unit_requiring(&spec.node_bin, &spec.sam_home, requires)?;
    let enroll = toml::to_string(&sam_protocol::enroll::EnrollFile::new(
        &spec.enrollment,
        spec.enroll_expires_unix,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), spec.enroll_port),
    ))
    .map_err(|e| BootstrapError::Config(e.to_string()))?;

    let mut s = String::with_capacity(32 * 1024);
    s.push_str("#!/bin/sh\n");
    s.push_str(
        "# SAM node bootstrap (rendered by sam-bootstrap): sam-node, enrollment, config, Docker,\n\
         # workspace image, agent CLIs, start. Idempotent: run again, it skips what is done.\n",
    );
    s.push_str(
        "# Holds no node key (sam-node makes its own); the one-time enrollment key expires.\n",
    );
    s.push_str(PRELUDE);
    // Every interpolated value is single-quoted.
    let vars = [
        ("SAM_HOME", spec.sam_home.as_str()),
        ("SAM_LIB", SAM_LIB),
        ("NODE_BIN", spec.node_bin.as_str()),
        ("NODE_URL", spec.release.url.as_str()),
        ("NODE_SHA256", sha.as_str()),
        ("HOLD_URL", hold_url.as_str()),
        ("HOLD_SHA256", hold_sha.as_str()),
        ("UNIT_NAME", SYSTEMD_UNIT_NAME),
        ("METADATA_UNIT", METADATA_UNIT_NAME),
        ("METADATA_BLOCK", METADATA_BLOCK_PATH),
        ("BASE_IMAGE", spec.base_image.as_str()),
    ];
    for (name, value) in vars {
        let _ = writeln!(s, "{name}={}", sh_quote(value));
    }
    let _ = writeln!(s, "PORT={}", spec.port);
    s.push_str(INSTALL_NODE);
    s.push_str("if [ -e \"$SAM_HOME/node/enrolled.json\" ]; then\n");
    s.push_str("  log 'enrolled already: the one-time enrollment is not written again'\nelse\n");
    s.push_str("cat >\"$SAM_HOME/node/enroll.toml\" <<'SAM_NODE_ENROLL'\n");
    s.push_str(&enroll);
    if !enroll.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("SAM_NODE_ENROLL\nchmod 0600 \"$SAM_HOME/node/enroll.toml\"\nfi\n");
    s.push_str("cat >\"$SAM_HOME/node/config.toml\" <<'SAM_NODE_CONFIG'\n");
    s.push_str(&config);
    if !config.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("SAM_NODE_CONFIG\n");
    if let Some(urls) = metadata_urls {
        let quoted: Vec<String> = urls.iter().map(|u| sh_quote(u)).collect();
        s.push_str(&DETECT.replace("$METADATA_URLS", &quoted.join(" ")));
    }
    s.push_str(EARLY_NODE);
    if spec.install_docker || spec.workspace_image {
        s.push_str(&DOCKER.replace(
            "if ! have docker; then",
            if spec.install_docker {
                "if ! have docker; then"
            } else {
                "if false; then"
            },
        ));
    }
    if spec.block_metadata {
        s.push_str("step metadata-block 'blocking containers from the cloud metadata service'\n");
        s.push_str("mkdir -p \"$(dirname \"$METADATA_BLOCK\")\"\n");
        s.push_str("cat >\"$METADATA_BLOCK\" <<'SAM_METADATA_BLOCK'\n");
        s.push_str(METADATA_BLOCK_SCRIPT);
        s.push_str("SAM_METADATA_BLOCK\nchmod 0755 \"$METADATA_BLOCK\"\n");
        s.push_str("if [ -d /run/systemd/system ]; then\n");
        s.push_str("cat >\"/etc/systemd/system/$METADATA_UNIT\" <<'SAM_METADATA_UNIT'\n");
        s.push_str(&crate::firewall::metadata_unit());
        s.push_str("SAM_METADATA_UNIT\nfi\n");
        s.push_str(METADATA);
    }
    if spec.workspace_image {
        s.push_str("mkdir -p \"$SAM_LIB/images\" \"$SAM_LIB/agents\"\n");
        for (path, delim, text) in SHARED_SCRIPTS {
            let _ = writeln!(s, "cat >\"$SAM_LIB/{path}\" <<'{delim}'");
            s.push_str(text);
            if !text.ends_with('\n') {
                s.push('\n');
            }
            let _ = writeln!(s, "{delim}");
        }
        s.push_str(
            "chmod 0755 \"$SAM_LIB\" \"$SAM_LIB/images\" \"$SAM_LIB/agents\" \"$SAM_LIB\"/*/*\n",
        );
        s.push_str(IMAGE);
    }
    if !spec.extra_commands.is_empty() {
        s.push_str("step extra 'running the extra commands'\n");
    }
    for cmd in &spec.extra_commands {
        s.push_str(cmd);
        s.push('\n');
    }
    s.push_str("if [ -d /run/systemd/system ]; then\n");
    s.push_str("cat >\"/etc/systemd/system/$UNIT_NAME\" <<'SAM_NODE_UNIT'\n");
    s.push_str(&unit);
    s.push_str("SAM_NODE_UNIT\nfi\n");
    s.push_str(START);
    Ok(s)
}
