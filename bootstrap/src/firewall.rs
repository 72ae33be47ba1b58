//! Containers must not reach the cloud's metadata service.
//!
//! On Hetzner (`169.254.169.254`) and Scaleway (`169.254.42.42`) the metadata service answers
//! any process on the VM without authentication, and it hands out the user-data and the
//! server's identity. A workspace container runs code from a repository and from an agent:
//! it must not read it. [`METADATA_BLOCK_SCRIPT`] drops traffic from containers to the whole
//! link-local range `169.254.0.0/16`:
//!
//! - `DOCKER-USER`: the chain Docker jumps to first for every forwarded packet and never
//!   flushes (made for rules like this one). On a cloud the metadata service is off-host, so a
//!   container's packets to it are forwarded, from any Docker network (the default bridge,
//!   `br-<id>` user networks, others).
//! - `INPUT` from `docker0` and `br-+`: a metadata address answered on the host itself (a
//!   local metadata proxy) is reached through INPUT, not FORWARD.
//!
//! The host's own processes (cloud-init, the bootstrap's address detection) still reach it.
//! The script is idempotent (`-C` before `-I`), and `remove` takes the rules out again.
//! Persistence: the user-data installs it as `/usr/local/lib/sam/block-metadata.sh`, run by
//! the oneshot unit [`METADATA_UNIT_NAME`] after `docker.service` (and again whenever Docker
//! restarts, `PartOf=docker.service`); `sam-node.service` requires that unit, so a host where
//! the rules cannot be installed runs no node (fail closed).

/// Where the user-data installs [`METADATA_BLOCK_SCRIPT`].
pub const METADATA_BLOCK_PATH: &str = "/usr/local/lib/sam/block-metadata.sh";
/// The oneshot systemd unit that runs it at boot.
pub const METADATA_UNIT_NAME: &str = "sam-metadata-block.service";
/// The blocked range: every link-local IPv4 address (both clouds' metadata services).
pub const METADATA_NET: &str = "169.254.0.0/16";

/// `block-metadata.sh [install|remove]`: POSIX `sh`, run as root; exits non-zero when a rule
/// could not be installed.
pub const METADATA_BLOCK_SCRIPT: &str = r#"#!/bin/sh
# SAM: containers may not reach the cloud metadata service (rendered by sam-bootstrap).
# `block-metadata.sh` (or `install`) adds the rules, idempotently; `remove` takes them out.
set -eu
NET='169.254.0.0/16'
action=${1:-install}
case $action in install|remove) ;; *) echo "usage: $0 [install|remove]" >&2; exit 2 ;; esac
if ! command -v iptables >/dev/null 2>&1; then
  echo 'sam: iptables is missing: cannot block containers from the metadata service' >&2
  exit 1
fi
ipt() { iptables -w 10 "$@"; }
rule() {
  chain=$1; shift
  if [ "$action" = install ]; then
    ipt -C "$chain" "$@" 2>/dev/null || ipt -I "$chain" 1 "$@"
  else
    while ipt -C "$chain" "$@" 2>/dev/null; do ipt -D "$chain" "$@"; done
  fi
}
if [ "$action" = install ]; then
  # Docker creates it too (and jumps to it first from FORWARD); made here when Docker is not
  # up yet, Docker then keeps it and its rules.
  ipt -n -L DOCKER-USER >/dev/null 2>&1 || ipt -N DOCKER-USER
  # Docker's iptables backend jumps there first from FORWARD; its nftables backend does not,
  # but packets still pass this table's FORWARD hook, so the jump is made when missing.
  ipt -C FORWARD -j DOCKER-USER 2>/dev/null || ipt -I FORWARD 1 -j DOCKER-USER
fi
if ipt -n -L DOCKER-USER >/dev/null 2>&1; then
  # forwarded: a container's packets to an off-host metadata service, from any Docker network
  rule DOCKER-USER -d "$NET" -j DROP
fi
# on the host: a metadata address answered locally, from the default bridge and user networks
rule INPUT -i docker0 -d "$NET" -j DROP
rule INPUT -i br-+ -d "$NET" -j DROP
if [ "$action" = install ]; then
  echo "sam: containers cannot reach $NET (DOCKER-USER, INPUT)" >&2
fi
"#;

/// The oneshot unit running [`METADATA_BLOCK_SCRIPT`] after Docker (and on each Docker restart).
pub fn metadata_unit() -> String {
    format!(
        "[Unit]
Description=SAM: block containers from the cloud metadata service ({METADATA_NET})
After=docker.service
Before=sam-node.service
PartOf=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={METADATA_BLOCK_PATH} install
ExecStop={METADATA_BLOCK_PATH} remove

[Install]
WantedBy=multi-user.target docker.service
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_valid_sh_and_blocks_the_whole_range() {
        assert!(METADATA_BLOCK_SCRIPT.contains("NET='169.254.0.0/16'"));
        assert!(METADATA_BLOCK_SCRIPT.contains("rule DOCKER-USER -d \"$NET\" -j DROP"));
        assert!(METADATA_BLOCK_SCRIPT.contains("rule INPUT -i docker0"));
        assert!(METADATA_BLOCK_SCRIPT.contains("rule INPUT -i br-+"));
        if let Ok(out) = std::process::Command::new("sh")
            .args(["-n", "-c", METADATA_BLOCK_SCRIPT])
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let unit = metadata_unit();
        assert!(unit.contains(&format!("ExecStart={METADATA_BLOCK_PATH} install")));
        assert!(unit.contains("PartOf=docker.service"));
    }
}
