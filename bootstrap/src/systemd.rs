//! The systemd unit that keeps `sam-node run` up.

use crate::{BootstrapError, check_path};

/// File name of the unit under `/etc/systemd/system/`.
pub const SYSTEMD_UNIT_NAME: &str = "sam-node.service";

/// The unit text for `node_bin` with `SAM_HOME=sam_home`. Both must be plain absolute paths.
pub fn systemd_unit(node_bin: &str, sam_home: &str) -> Result<String, BootstrapError> {
    systemd_unit_requiring(node_bin, sam_home, &[])
}

/// [`systemd_unit`] that also starts only after, and only when, each unit of `requires`
/// (plain unit names) succeeded: the node runs no workspace on a host left unprotected.
pub fn systemd_unit_requiring(
    node_bin: &str,
    sam_home: &str,
    requires: &[&str],
) -> Result<String, BootstrapError> {
    check_path(node_bin)?;
    check_path(sam_home)?;
    let mut after = String::new();
    let mut required = String::new();
    for unit in requires {
        check_path(&format!("/{unit}"))?;
        after.push(' ');
        after.push_str(unit);
        required.push_str(&format!("Requires={unit}\n"));
    }
    Ok(format!(
        "[Unit]
Description=SAM node (sam-node)
Wants=network-online.target
After=network-online.target docker.service{after}
{required}
[Service]
Type=simple
Environment=SAM_HOME={sam_home}
ExecStart={node_bin} run
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_node_with_its_home() {
        let unit = systemd_unit("/usr/local/bin/sam-node", "/var/lib/sam").expect("unit");
        assert!(unit.contains("ExecStart=/usr/local/bin/sam-node run\n"));
        assert!(unit.contains("Environment=SAM_HOME=/var/lib/sam\n"));
        assert!(unit.contains("Restart=always"));
        assert!(unit.contains("WantedBy=multi-user.target"));
    }

    #[test]
    fn odd_paths_are_refused() {
        for bad in [
            "relative/bin",
            "/a b",
            "/x\nExecStartPre=/bin/evil",
            "/a/../b",
            "",
        ] {
            assert!(
                matches!(
                    systemd_unit(bad, "/var/lib/sam"),
                    Err(BootstrapError::BadPath(_))
                ),
                "{bad:?}"
            );
        }
    }
}
