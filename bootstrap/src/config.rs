//! `$SAM_HOME/node/config.toml`, as `sam-node` reads it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::BootstrapError;

/// The node's config file. Field for field what `sam-node` accepts (it denies unknown fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigFile {
    /// The owner's NodeId (64 hex digits).
    pub owner: String,
    /// UDP address to bind, `0.0.0.0:7447` on a VM.
    pub bind: SocketAddr,
    /// Addresses to put in tickets. Left out when empty (the script may append a detected one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertise: Vec<SocketAddr>,
    /// Relays (`n0` or iroh relay URLs); no relay when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// Discovery services the node publishes its address to (`n0`, pkarr URLs, `local`);
    /// none when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<String>,
}

/// Renders the config as TOML. Only top-level keys, so a line appended later stays valid.
pub fn node_config_toml(config: &NodeConfigFile) -> Result<String, BootstrapError> {
    toml::to_string(config).map_err(|e| BootstrapError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_omits_empty_fields() {
        let cfg = NodeConfigFile {
            owner: "ab".repeat(32),
            bind: "0.0.0.0:7447".parse().expect("addr"),
            advertise: vec![],
            relays: vec![],
            discovery: vec![],
        };
        let text = node_config_toml(&cfg).expect("toml");
        assert!(!text.contains("advertise"));
        assert!(!text.contains("relay"));
        assert!(text.contains("bind = \"0.0.0.0:7447\""));
        let back: NodeConfigFile = toml::from_str(&text).expect("parse");
        assert_eq!(back, cfg);

        let with = NodeConfigFile {
            advertise: vec!["1.2.3.4:7447".parse().expect("addr")],
            relays: vec!["https://relay.example".into()],
            ..cfg
        };
        let text = node_config_toml(&with).expect("toml");
        assert!(text.contains("advertise = [\"1.2.3.4:7447\"]"), "{text}");
        let back: NodeConfigFile = toml::from_str(&text).expect("parse");
        assert_eq!(back, with);
    }

    #[test]
    fn an_appended_advertise_line_parses() {
        let cfg = NodeConfigFile {
            owner: "cd".repeat(32),
            bind: "0.0.0.0:7447".parse().expect("addr"),
            advertise: vec![],
            relays: vec!["https://r".into()],
            discovery: vec!["n0".into()],
        };
        let mut text = node_config_toml(&cfg).expect("toml");
        text.push_str("advertise = [\"5.6.7.8:7447\"]\n");
        let back: NodeConfigFile = toml::from_str(&text).expect("parse");
        assert_eq!(back.advertise, vec!["5.6.7.8:7447".parse().expect("addr")]);
    }
}
