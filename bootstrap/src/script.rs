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

const PRELUDE: &str = r#"set -eu
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
"#;

const DOCKER: &str = r#"if ! have docker; then
  log 'installing Docker (docker.io)'
  apt_install docker.io ca-certificates || { log 'cannot install Docker: install it, then run this script again'; exit 1; }
fi
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl enable --now docker >/dev/null 2>&1 || log 'could not start docker.service'
elif [ ! -S /var/run/docker.sock ] && have dockerd; then
  nohup dockerd >>/var/log/dockerd.log 2>&1 &
fi
"#;

const INSTALL_NODE: &str = r#"log "installing sam-node from $NODE_URL"
tmp=$(mktemp)
fetch "$NODE_URL" "$tmp" || { rm -f "$tmp"; log "cannot download sam-node from $NODE_URL"; exit 1; }
if have sha256sum; then got=$(sha256sum "$tmp" | cut -d' ' -f1)
else got=$(openssl dgst -sha256 -r "$tmp" | cut -d' ' -f1)
fi
if [ "$got" != "$NODE_SHA256" ]; then
  rm -f "$tmp"
  log "sam-node checksum mismatch: expected $NODE_SHA256, got $got; refusing to install it"
  exit 1
fi
mkdir -p "$(dirname "$NODE_BIN")"
install -m 0755 "$tmp" "$NODE_BIN"
rm -f "$tmp"
mkdir -p "$SAM_HOME/node"
chmod 0700 "$SAM_HOME" "$SAM_HOME/node"
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

/// Installs and runs the metadata block (after Docker, before the node); fails closed.
const METADATA: &str = r#"have iptables || apt_install iptables || log 'cannot install iptables'
if [ -d /run/systemd/system ] && have systemctl; then
  systemctl daemon-reload
  systemctl enable "$METADATA_UNIT" >/dev/null 2>&1 || true
  if ! systemctl restart "$METADATA_UNIT"; then
    log "cannot block containers from the metadata service (169.254.0.0/16): sam-node not started"
    exit 1
  fi
elif ! "$METADATA_BLOCK" install; then
  log "cannot block containers from the metadata service (169.254.0.0/16): sam-node not started"
  exit 1
fi
"#;

const START: &str = r#"if [ -d /run/systemd/system ] && have systemctl; then
  systemctl daemon-reload
  systemctl enable "$UNIT_NAME" >/dev/null 2>&1
  systemctl restart "$UNIT_NAME"
else
  SAM_HOME="$SAM_HOME" nohup "$NODE_BIN" run >>/var/log/sam-node.log 2>&1 &
fi
log 'sam-node started'
"#;

/// Renders the script. Size is checked by the caller.
pub(crate) fn render(spec: &BootstrapSpec) -> Result<String, BootstrapError> {
    let sha = spec.release.sha256.to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BootstrapError::BadSha256(spec.release.sha256.clone()));
    }
    check_url(&spec.release.url)?;
    check_path(&spec.sam_home)?;
    check_path(&spec.node_bin)?;
    if spec.port == 0 {
        return Err(BootstrapError::ZeroPort);
    }
    if spec.enroll_port == 0 || spec.enroll_port == spec.port {
        return Err(BootstrapError::BadEnrollPort(spec.port));
    }
    if let Some(relay) = &spec.relay
        && relay != crate::DEFAULT_CLOUD_RELAY
    {
        check_url(relay)?;
        // What sam-node accepts as a relay (no `file://`), so the node starts.
        sam_protocol::relay::check_url(relay).map_err(|_| BootstrapError::BadUrl {
            url: relay.clone(),
            reason: "a relay is an http:// or https:// URL with a host, or `n0`",
        })?;
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
        relay: spec.relay.clone(),
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

    let mut s = String::with_capacity(8 * 1024);
    s.push_str("#!/bin/sh\n");
    s.push_str(
        "# SAM node bootstrap (rendered by sam-bootstrap): Docker, sam-node, enrollment, config, start.\n",
    );
    s.push_str(
        "# Holds no node key (sam-node makes its own); the one-time enrollment key expires.\n",
    );
    s.push_str(PRELUDE);
    // Every interpolated value is single-quoted.
    let vars = [
        ("SAM_HOME", spec.sam_home.as_str()),
        ("NODE_BIN", spec.node_bin.as_str()),
        ("NODE_URL", spec.release.url.as_str()),
        ("NODE_SHA256", sha.as_str()),
        ("UNIT_NAME", SYSTEMD_UNIT_NAME),
        ("METADATA_UNIT", METADATA_UNIT_NAME),
        ("METADATA_BLOCK", METADATA_BLOCK_PATH),
    ];
    for (name, value) in vars {
        let _ = writeln!(s, "{name}={}", sh_quote(value));
    }
    let _ = writeln!(s, "PORT={}", spec.port);
    if spec.install_docker {
        s.push_str(DOCKER);
    }
    if spec.block_metadata {
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
    s.push_str(INSTALL_NODE);
    s.push_str("cat >\"$SAM_HOME/node/enroll.toml\" <<'SAM_NODE_ENROLL'\n");
    s.push_str(&enroll);
    if !enroll.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("SAM_NODE_ENROLL\nchmod 0600 \"$SAM_HOME/node/enroll.toml\"\n");
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
