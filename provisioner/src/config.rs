//! Unified sizes and per-provider settings (`[hetzner]`, `[scaleway]` in TOML).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node size, the same words on every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::Small, Size::Medium, Size::Large];

    pub fn as_str(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(Size::Small),
            "medium" => Ok(Size::Medium),
            "large" => Ok(Size::Large),
            other => Err(format!(
                "unknown size {other:?}: use small, medium or large"
            )),
        }
    }
}

/// The provider's machine type for each size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeMap {
    pub small: String,
    pub medium: String,
    pub large: String,
}

impl SizeMap {
    pub fn get(&self, size: Size) -> &str {
        match size {
            Size::Small => &self.small,
            Size::Medium => &self.medium,
            Size::Large => &self.large,
        }
    }

    /// The size whose type is `kind`, if any.
    pub fn size_of(&self, kind: &str) -> Option<Size> {
        Size::ALL
            .into_iter()
            .find(|s| self.get(*s).eq_ignore_ascii_case(kind))
    }
}

/// How long to wait for a cloud, and how often to retry a rate-limited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Time between two polls of an action or a server's state (ms).
    pub poll_interval_ms: u64,
    /// Give up on a create after this long (s); the half-made server is deleted.
    pub create_timeout_secs: u64,
    /// Retries of a call answered `429`.
    pub max_rate_limit_retries: u32,
    /// Longest wait for one rate-limit reset (s); waits asked for beyond it are cut to it.
    pub max_rate_limit_wait_secs: u64,
    /// Timeout of one HTTP request (s).
    pub request_timeout_secs: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_interval_ms: 2000,
            create_timeout_secs: 300,
            max_rate_limit_retries: 5,
            max_rate_limit_wait_secs: 60,
            request_timeout_secs: 30,
        }
    }
}

impl Timing {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn create_timeout(&self) -> Duration {
        Duration::from_secs(self.create_timeout_secs)
    }
}

/// `[hetzner]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HetznerConfig {
    /// API base; `SAM_HETZNER_API` overrides the default.
    pub api: String,
    /// Tried in this order; a location without capacity falls through to the next.
    pub locations: Vec<String>,
    pub image: String,
    pub sizes: SizeMap,
    /// Relays the nodes made here use (`n0` = n0's public relays, or URLs of self-hosted
    /// `iroh-relay`s; `[]` or `["none"]` = no relay). Default `["n0"]`: a cloud node stays
    /// reachable when its direct address is not. Written into each node's config.
    /// (Address lookup settings, `discovery`, will sit next to it.)
    #[serde(deserialize_with = "relays_checked")]
    pub relays: Vec<String>,
    pub timing: Timing,
}

/// Cloud nodes use n0's public relays unless the provider's config says otherwise.
pub fn default_relays() -> Vec<String> {
    vec![sam_bootstrap::DEFAULT_CLOUD_RELAY.to_owned()]
}

/// `relays` as the node reads them (`n0`, `none`, http(s) URLs without credentials, at most
/// 8), refused at load time otherwise.
fn relays_checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    sam_protocol::relay::parse(&items).map_err(serde::de::Error::custom)?;
    Ok(items)
}

pub const HETZNER_API: &str = "https://api.hetzner.cloud/v1";
pub const SCALEWAY_API: &str = "https://api.scaleway.com";

impl Default for HetznerConfig {
    fn default() -> Self {
        Self {
            api: std::env::var("SAM_HETZNER_API")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| HETZNER_API.to_owned()),
            locations: vec!["fsn1".into(), "nbg1".into(), "hel1".into()],
            image: "debian-13".into(),
            sizes: SizeMap {
                small: "cx23".into(),
                medium: "cx33".into(),
                large: "cx43".into(),
            },
            relays: default_relays(),
            timing: Timing::default(),
        }
    }
}

/// `[scaleway]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalewayConfig {
    /// API base; `SAM_SCALEWAY_API` overrides the default.
    pub api: String,
    /// Project the servers belong to (`SCW_DEFAULT_PROJECT_ID`).
    pub project_id: Option<String>,
    /// Tried in this order.
    pub zones: Vec<String>,
    /// Marketplace image label, resolved to a local image per zone.
    pub image_label: String,
    /// Marketplace local image type.
    pub image_type: String,
    pub arch: String,
    pub sizes: SizeMap,
    /// Relays the nodes made here use (`n0` = n0's public relays, or URLs of self-hosted
    /// `iroh-relay`s; `[]` or `["none"]` = no relay). Default `["n0"]`: a cloud node stays
    /// reachable when its direct address is not. Written into each node's config.
    /// (Address lookup settings, `discovery`, will sit next to it.)
    #[serde(deserialize_with = "relays_checked")]
    pub relays: Vec<String>,
    pub timing: Timing,
}

impl Default for ScalewayConfig {
    fn default() -> Self {
        Self {
            api: std::env::var("SAM_SCALEWAY_API")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| SCALEWAY_API.to_owned()),
            project_id: None,
            zones: vec!["fr-par-1".into(), "fr-par-2".into(), "nl-ams-1".into()],
            image_label: "debian_trixie".into(),
            image_type: "instance_sbs".into(),
            arch: "x86_64".into(),
            sizes: SizeMap {
                small: "DEV1-M".into(),
                medium: "DEV1-XL".into(),
                large: "GP1-S".into(),
            },
            relays: default_relays(),
            timing: Timing::default(),
        }
    }
}

/// All providers' settings, as in the provisioner's TOML config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub hetzner: HetznerConfig,
    pub scaleway: ScalewayConfig,
}

impl ProvidersConfig {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let cfg = ProvidersConfig::from_toml(
            r#"
[hetzner]
locations = ["hel1"]
sizes = { small = "cpx22", medium = "cx33", large = "cx53" }
[scaleway]
project_id = "p"
zones = ["nl-ams-1"]
"#,
        )
        .expect("parse");
        assert_eq!(cfg.hetzner.locations, ["hel1"]);
        assert_eq!(cfg.hetzner.sizes.get(Size::Small), "cpx22");
        assert_eq!(cfg.hetzner.image, "debian-13");
        assert_eq!(cfg.scaleway.zones, ["nl-ams-1"]);
        assert_eq!(cfg.scaleway.sizes.get(Size::Large), "GP1-S");
        let d = ProvidersConfig::default();
        assert_eq!(d.hetzner.locations, ["fsn1", "nbg1", "hel1"]);
        assert_eq!(d.hetzner.sizes.size_of("CX33"), Some(Size::Medium));
        assert_eq!(d.scaleway.sizes.get(Size::Medium), "DEV1-XL");
        assert!(ProvidersConfig::from_toml("[hetzner]\nbogus = 1\n").is_err());
    }

    #[test]
    fn relays_are_chosen_per_provider_and_checked() {
        let d = ProvidersConfig::default();
        assert_eq!(d.hetzner.relays, ["n0"]);
        assert_eq!(d.scaleway.relays, ["n0"]);
        let cfg = ProvidersConfig::from_toml(
            "[hetzner]\nrelays = [\"https://relay.example.org/\"]\n[scaleway]\nrelays = []\n",
        )
        .expect("parse");
        assert_eq!(cfg.hetzner.relays, ["https://relay.example.org/"]);
        assert!(cfg.scaleway.relays.is_empty());
        for bad in [
            "relays = [\"relay.example.org\"]",
            "relays = [\"https://user:secret@relay.example/\"]",
            "relays = [\"none\", \"n0\"]",
        ] {
            let err = ProvidersConfig::from_toml(&format!("[hetzner]\n{bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("relay"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_parse() {
        for s in Size::ALL {
            assert_eq!(s.to_string().parse::<Size>(), Ok(s));
        }
        assert!("huge".parse::<Size>().is_err());
    }
}

#[cfg(test)]
mod user_data_tests {
    use super::*;
    use crate::provider::{Enrollment, Provider};

    #[test]
    fn the_providers_relays_go_into_the_nodes_config() {
        let release = sam_bootstrap::NodeRelease {
            url: "https://releases.example/sam-node".into(),
            sha256: "ab".repeat(32),
            pty_hold: None,
        };
        let owner = sam_protocol::SecretKey::generate().node_id();
        let e = Enrollment::new(1_900_000_000, 3600);
        let mut cfg = HetznerConfig::default();
        let h = crate::Hetzner::new("t".into(), cfg.clone()).expect("hetzner");
        let ud = h.user_data(&e, &owner, Some(&release)).expect("user-data");
        assert!(ud.contains("relays = [\"n0\"]"), "the default is n0");
        cfg.relays = vec!["https://relay.example.org/".into()];
        let h = crate::Hetzner::new("t".into(), cfg).expect("hetzner");
        let ud = h.user_data(&e, &owner, Some(&release)).expect("user-data");
        assert!(ud.contains("relays = [\"https://relay.example.org/\"]"));
        let mut s = ScalewayConfig {
            project_id: Some("p".into()),
            ..ScalewayConfig::default()
        };
        s.relays = vec![];
        let sc = crate::Scaleway::new("t".into(), s).expect("scaleway");
        let ud = sc.user_data(&e, &owner, Some(&release)).expect("user-data");
        assert!(
            !ud.contains("relays ="),
            "no relay when the provider says none"
        );
    }
}
