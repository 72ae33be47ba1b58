//! The client's iroh endpoint, its relays, and the path a connection takes.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};
use iroh::endpoint::{Connection, presets};
use iroh::{Endpoint, EndpointAddr, RelayMap, RelayMode, RelayUrl, SecretKey, TransportAddr};
use sam_protocol::NodeAddr;
use sam_protocol::discovery::Discovery;
use sam_protocol::relay::Relays;
use serde::{Deserialize, Serialize};

/// `$SAM_HOME/config.toml`: the client's own settings (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// This client's home relays (`n0`, URLs of iroh relays). Without any, the client still
    /// dials a node through the relay its ticket names; a home relay lets peers reach this
    /// client (`sam serve`) through it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// The single relay of older configs (still read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Where this client looks a node up by its NodeId when the addresses it holds do not
    /// answer (`n0`: n0's public DNS; the URL of a self-hosted pkarr relay; `dns:ORIGIN`;
    /// `local`: mDNS). Empty: none, the client only dials the addresses it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<String>,
}

impl ClientConfig {
    /// The config at `path`; the default when the file does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("client config {} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// The relays named by this config.
    pub fn relay_setting(&self) -> Result<Relays> {
        let mut items = self.relays.clone();
        items.extend(self.relay.clone());
        sam_protocol::relay::parse(&items).context("relays in the client config")
    }

    /// The discovery services named by this config.
    pub fn discovery_setting(&self) -> Result<Discovery> {
        sam_protocol::discovery::parse(&self.discovery).context("discovery in the client config")
    }
}

/// The client's discovery services: `SAM_DISCOVERY` (comma-separated `n0`, `local`, `none`,
/// pkarr URLs, `dns:ORIGIN`) when set, else `discovery` in `$SAM_HOME/config.toml`, else none.
pub fn discovery_from_env() -> Result<Discovery> {
    if let Ok(s) = std::env::var("SAM_DISCOVERY")
        && !s.trim().is_empty()
    {
        return sam_protocol::discovery::parse(&[s.as_str()]).context("SAM_DISCOVERY");
    }
    match crate::paths::ClientPaths::from_env() {
        Ok(p) => ClientConfig::load(&p.config())?.discovery_setting(),
        Err(_) => Ok(Discovery::default()),
    }
}

/// The mDNS service name SAM's endpoints browse (`<id>._sam._udp.local`), as the node
/// announces it.
pub const MDNS_SERVICE: &str = "sam";

/// Adds the lookups of `d` to a client endpoint builder: a NodeId is then also resolved
/// through them when the addresses the client holds do not answer. The client resolves only;
/// it publishes nothing. iroh accepts a pkarr answer only when the NodeId's own key signed
/// it; DNS (`dns:ORIGIN`) and mDNS answers are not signed, and the connection's handshake is
/// what proves the node (docs/security/discovery.md).
pub fn with_discovery(
    mut b: iroh::endpoint::Builder,
    key: &SecretKey,
    d: &Discovery,
) -> Result<iroh::endpoint::Builder> {
    use iroh::address_lookup::{DnsAddressLookup, PkarrResolver};
    // n0 through its pkarr relay over HTTPS rather than plain DNS: pkarr answers are signed
    // packets iroh verifies against the NodeId; DNS TXT answers carry no signature.
    if d.n0 {
        b = b.address_lookup(PkarrResolver::n0_dns());
    }
    for u in &d.pkarr {
        let url: url::Url = u
            .parse()
            .with_context(|| format!("bad discovery url {u}"))?;
        b = b.address_lookup(PkarrResolver::builder(url));
    }
    for origin in &d.dns {
        b = b.address_lookup(DnsAddressLookup::builder(origin.clone()));
    }
    if d.local {
        match iroh_mdns_address_lookup::MdnsAddressLookup::builder()
            .service_name(MDNS_SERVICE)
            .advertise(false)
            .build(key.public())
        {
            Ok(m) => b = b.address_lookup(m),
            Err(e) => tracing::warn!(
                error = %e,
                "local-network discovery (mDNS) is not available here; nodes are not looked up on the LAN"
            ),
        }
    }
    Ok(b)
}

/// The client's relays: `SAM_RELAY` (comma-separated `n0`, `none`, URLs) when set, else
/// `relays` in `$SAM_HOME/config.toml`, else none of its own.
pub fn relays_from_env() -> Result<Relays> {
    if let Ok(s) = std::env::var("SAM_RELAY")
        && !s.trim().is_empty()
    {
        return sam_protocol::relay::parse(&[s.as_str()]).context("SAM_RELAY");
    }
    match crate::paths::ClientPaths::from_env() {
        Ok(p) => ClientConfig::load(&p.config())?.relay_setting(),
        Err(_) => Ok(Relays::default()),
    }
}

/// iroh's relay mode for the client. Unlike the node, relay dialling stays on even with no
/// relay of its own (an empty map): a ticket's relay is then used to reach its node.
pub fn relay_mode(relays: &Relays) -> Result<RelayMode> {
    let map = if relays.n0 {
        RelayMode::Default.relay_map()
    } else {
        RelayMap::empty()
    };
    for url in &relays.urls {
        let url = RelayUrl::from_str(url).with_context(|| format!("bad relay url {url}"))?;
        map.insert(url.clone(), std::sync::Arc::new(url.into()));
    }
    Ok(RelayMode::Custom(map))
}

/// Binds the client's endpoint on `bind` (default `0.0.0.0:0`; `SAM_BIND` overrides,
/// tests use `127.0.0.1:0`), with the relays of [`relays_from_env`] and the discovery of
/// [`discovery_from_env`].
pub async fn bind(key: &sam_protocol::SecretKey, bind: Option<SocketAddr>) -> Result<Endpoint> {
    bind_full(key, bind, &relays_from_env()?, &discovery_from_env()?).await
}

/// [`bind`] with explicit relays and no discovery.
pub async fn bind_with(
    key: &sam_protocol::SecretKey,
    bind: Option<SocketAddr>,
    relays: &Relays,
) -> Result<Endpoint> {
    bind_full(key, bind, relays, &Discovery::default()).await
}

/// [`bind`] with explicit relays and discovery.
pub async fn bind_full(
    key: &sam_protocol::SecretKey,
    bind: Option<SocketAddr>,
    relays: &Relays,
    discovery: &Discovery,
) -> Result<Endpoint> {
    let bind = match bind {
        Some(b) => b,
        None => match std::env::var("SAM_BIND") {
            Ok(s) if !s.is_empty() => s
                .parse()
                .with_context(|| format!("SAM_BIND={s:?} is not an address like 127.0.0.1:0"))?,
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        },
    };
    let secret = SecretKey::from_bytes(&key.to_bytes());
    let b = Endpoint::builder(presets::Minimal)
        .secret_key(secret.clone())
        .relay_mode(relay_mode(relays)?)
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("bad bind address {bind}"))?;
    with_discovery(b, &secret, discovery)?
        .bind()
        .await
        .with_context(|| format!("cannot bind the client endpoint on {bind}"))
}

/// The iroh address of a ticket's node.
pub fn endpoint_addr(addr: &NodeAddr) -> Result<EndpointAddr> {
    let id = iroh::EndpointId::from_bytes(addr.id.as_bytes()).context("bad node id in ticket")?;
    let mut addrs: Vec<TransportAddr> = addr.direct.iter().map(|a| TransportAddr::Ip(*a)).collect();
    if let Some(r) = &addr.relay {
        addrs.push(TransportAddr::Relay(
            r.parse::<RelayUrl>().context("bad relay url in ticket")?,
        ));
    }
    Ok(EndpointAddr::from_parts(id, addrs))
}

/// How a connection reaches its node right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    /// `direct`, `relay`, or `none` (no open path: the connection is dying).
    pub path: String,
    /// The relay carrying the selected path, or the one the ticket names.
    pub relay_url: Option<String>,
    /// The selected path's remote address (`ip:port`, or the relay URL).
    pub remote: Option<String>,
    /// Round-trip time of the selected path as QUIC measures it.
    pub rtt_ms: Option<f64>,
    /// Why the path is not direct, when known.
    pub why_not_direct: Option<String>,
    /// Where the selected path's address came from: `ticket` (the ticket named it; `sam
    /// status` says `book` for an address the node book learnt since), `lookup` (not in the ticket, which names no relay either: only address
    /// lookup by NodeId can have given it), `learnt` (not in the ticket: from address lookup,
    /// or from the node through the ticket's relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_by: Option<String>,
}

/// Where an address of the selected path came from, as far as the client can tell (iroh does
/// not say per path): see [`PathReport::found_by`].
pub fn found_by(remote: &TransportAddr, addr: &NodeAddr) -> &'static str {
    match remote {
        TransportAddr::Ip(a) => {
            let canon = |s: &SocketAddr| (s.ip().to_canonical(), s.port());
            if addr.direct.iter().any(|d| canon(d) == canon(a)) {
                "ticket"
            } else if addr.relay.is_none() {
                "lookup"
            } else {
                "learnt"
            }
        }
        TransportAddr::Relay(url) => {
            let named = addr
                .relay
                .as_deref()
                .and_then(|r| r.parse::<RelayUrl>().ok())
                .is_some_and(|r| &r == url);
            if named { "ticket" } else { "lookup" }
        }
        _ => "learnt",
    }
}

/// The path `conn` uses now (iroh's `Connection::paths`, the selected one).
pub fn path_report(conn: &Connection, addr: &NodeAddr) -> PathReport {
    let paths = conn.paths();
    let selected = paths.iter().find(|p| p.is_selected());
    let ip_open = paths.iter().any(|p| p.is_ip());
    let Some(sel) = selected else {
        return PathReport {
            path: "none".into(),
            relay_url: addr.relay.clone(),
            remote: None,
            rtt_ms: None,
            why_not_direct: Some("no open path to the node".into()),
            found_by: None,
        };
    };
    let remote = sel.remote_addr().clone();
    let found = Some(found_by(&remote, addr).to_string());
    let rtt_ms = Some(sel.rtt().as_secs_f64() * 1e3);
    match remote {
        TransportAddr::Relay(url) => {
            let why = if ip_open {
                "a direct path is open but not chosen yet (iroh switches once it proves better)"
                    .to_string()
            } else if addr.direct.is_empty() {
                "the ticket has no direct address and holepunching has not succeeded (yet)"
                    .to_string()
            } else {
                format!(
                    "no direct path: the node's addresses {} did not answer and holepunching has not succeeded (NAT or firewall; iroh keeps trying)",
                    addr.direct
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            PathReport {
                path: "relay".into(),
                relay_url: Some(url.to_string()),
                remote: Some(url.to_string()),
                rtt_ms,
                why_not_direct: Some(why),
                found_by: found,
            }
        }
        TransportAddr::Ip(a) => PathReport {
            path: "direct".into(),
            relay_url: addr.relay.clone(),
            remote: Some(a.to_string()),
            rtt_ms,
            why_not_direct: None,
            found_by: found,
        },
        other => PathReport {
            path: "other".into(),
            relay_url: addr.relay.clone(),
            remote: Some(other.to_string()),
            rtt_ms,
            why_not_direct: None,
            found_by: found,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_relays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        assert_eq!(
            ClientConfig::load(&path).expect("missing is default"),
            ClientConfig::default()
        );
        std::fs::write(&path, "relays = [\"n0\", \"http://10.0.0.1:3340/\"]\n").expect("write");
        let r = ClientConfig::load(&path)
            .expect("load")
            .relay_setting()
            .expect("relays");
        assert!(r.n0);
        assert_eq!(r.urls, vec!["http://10.0.0.1:3340/"]);
        std::fs::write(&path, "relay = \"https://old.example/\"\n").expect("write");
        let r = ClientConfig::load(&path)
            .expect("old key")
            .relay_setting()
            .expect("relays");
        assert_eq!(r.urls, vec!["https://old.example/"]);
        std::fs::write(&path, "relays = [\"gopher://x\"]\n").expect("write");
        assert!(
            ClientConfig::load(&path)
                .expect("load")
                .relay_setting()
                .is_err()
        );
        std::fs::write(&path, "relais = []\n").expect("write");
        assert!(
            ClientConfig::load(&path).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn client_config_discovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "discovery = [\"n0\", \"https://dns.example.org/pkarr\", \"dns:dns.example.org\"]\n",
        )
        .expect("write");
        let d = ClientConfig::load(&path)
            .expect("load")
            .discovery_setting()
            .expect("discovery");
        assert!(d.n0 && !d.local);
        assert_eq!(d.pkarr, vec!["https://dns.example.org/pkarr"]);
        assert_eq!(d.dns, vec!["dns.example.org"]);
        std::fs::write(&path, "discovery = [\"dns.example.org\"]\n").expect("write");
        let err = ClientConfig::load(&path)
            .expect("load")
            .discovery_setting()
            .expect_err("a bare host is not a discovery service");
        assert!(format!("{err:#}").contains("discovery"), "{err:#}");
    }

    #[test]
    fn relay_modes() {
        let none = relay_mode(&Relays::default()).expect("none");
        assert!(
            matches!(&none, RelayMode::Custom(m) if m.is_empty()),
            "relay dialling stays on"
        );
        let own = relay_mode(&sam_protocol::relay::parse(&["http://10.0.0.1:3340/"]).expect("p"))
            .expect("own");
        assert!(matches!(&own, RelayMode::Custom(m) if m.len() == 1));
    }
}
