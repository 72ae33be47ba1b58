//! Building the node's iroh endpoint from its config.

use std::str::FromStr;

use anyhow::{Context, Result};
use iroh::endpoint::{QuicTransportConfig, VarInt, presets};
use iroh::{Endpoint, RelayMap, RelayMode, RelayUrl, SecretKey};
use sam_protocol::NodeAddr;

use crate::config::NodeConfig;

/// Most bidirectional streams a peer may have open at once on one connection (QUIC
/// flow control: the peer cannot open more until one ends). Every SAM protocol uses one
/// stream per request, terminal, forwarded port, transfer or document.
pub const MAX_STREAMS_PER_CONN: u32 = 64;

/// The node's QUIC transport settings: bounded streams per connection, and no
/// unidirectional streams (no SAM protocol uses them).
pub fn transport_config() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONN))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .build()
}

/// iroh's relay mode for a relay setting: none disables relays; else a map of n0's public
/// relays (`n0`) and the configured ones, among which iroh picks a home relay.
pub fn relay_mode(relays: &sam_protocol::relay::Relays) -> Result<RelayMode> {
    if relays.is_none() {
        return Ok(RelayMode::Disabled);
    }
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

/// The mDNS service name SAM's endpoints announce and browse (`<id>._sam._udp.local`): SAM
/// nodes only, not every iroh application on the network.
pub const MDNS_SERVICE: &str = "sam";

/// Adds the discovery services of `d` to the node's endpoint builder: the node publishes its
/// current addresses (direct ones and its home relay) under its NodeId, signed with its key,
/// to n0's pkarr relay, to self-hosted pkarr relays, and/or on the local network. `dns:ORIGIN`
/// entries only resolve (a client's business) and are ignored here with a warning.
pub fn with_discovery(
    mut b: iroh::endpoint::Builder,
    key: &SecretKey,
    d: &sam_protocol::discovery::Discovery,
) -> Result<iroh::endpoint::Builder> {
    use iroh::address_lookup::{AddrFilter, PkarrPublisher};
    // iroh's publishers send only the relay by default (to keep IPs off a public server);
    // a node reached without a relay needs its direct addresses found too.
    if d.n0 {
        b = b.address_lookup(PkarrPublisher::n0_dns().addr_filter(AddrFilter::unfiltered()));
    }
    for u in &d.pkarr {
        let url: url::Url = u
            .parse()
            .with_context(|| format!("bad discovery url {u}"))?;
        b = b.address_lookup(PkarrPublisher::builder(url).addr_filter(AddrFilter::unfiltered()));
    }
    if !d.dns.is_empty() {
        tracing::warn!(
            origins = ?d.dns,
            "dns:ORIGIN only resolves; to publish this node there, add the pkarr URL of that server (https://ORIGIN-SERVER/pkarr) to `discovery`"
        );
    }
    if d.local {
        match iroh_mdns_address_lookup::MdnsAddressLookup::builder()
            .service_name(MDNS_SERVICE)
            .addr_filter(AddrFilter::unfiltered())
            .build(key.public())
        {
            Ok(m) => b = b.address_lookup(m),
            Err(e) => tracing::warn!(
                error = %e,
                "local-network discovery (mDNS) is not available here; the node is not announced on the LAN"
            ),
        }
    }
    Ok(b)
}

/// How long a starting node waits for its home relay before writing its address (a ticket
/// then carries the first configured relay, or none for `n0` alone).
pub const HOME_RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds an endpoint: direct UDP on `cfg.bind`, relays only when configured.
pub async fn bind(key: &sam_protocol::SecretKey, cfg: &NodeConfig) -> Result<Endpoint> {
    let secret = SecretKey::from_bytes(&key.to_bytes());
    let mut b = Endpoint::builder(presets::Minimal)
        .secret_key(secret.clone())
        .transport_config(transport_config())
        .alpns(
            sam_protocol::alpn::NODE_ALPNS
                .iter()
                .map(|a| a.to_vec())
                .collect(),
        )
        .clear_ip_transports()
        .bind_addr(cfg.bind)
        .with_context(|| format!("bad bind address {}", cfg.bind))?;
    let relays = cfg.relay_setting()?;
    b = b.relay_mode(relay_mode(&relays)?);
    // The configured public addresses are published (and offered to peers) with the ones
    // iroh finds itself.
    for a in &cfg.advertise {
        b = b.external_addr(*a);
    }
    b = with_discovery(b, &secret, &cfg.discovery_setting()?)?;
    let ep = b
        .bind()
        .await
        .with_context(|| format!("cannot bind the node endpoint on {}", cfg.bind))?;
    if !relays.is_none()
        && tokio::time::timeout(HOME_RELAY_WAIT, ep.online())
            .await
            .is_err()
    {
        tracing::warn!(
            relays = ?relays,
            "no relay reached yet; the node is reachable at its direct addresses and keeps trying"
        );
    }
    Ok(ep)
}

/// The relay to put in tickets: the node's home relay once iroh picked one, else the first
/// configured relay URL.
pub fn ticket_relay(ep: &Endpoint, cfg: &NodeConfig) -> Option<String> {
    if let Some(url) = ep.addr().relay_urls().next() {
        return Some(url.to_string());
    }
    cfg.relay_setting().ok()?.urls.first().cloned()
}

/// The address to put in tickets: bound sockets (unspecified ones expanded to
/// loopback), plus the configured `advertise` addresses and relay.
pub fn ticket_addr(ep: &Endpoint, cfg: &NodeConfig) -> NodeAddr {
    let mut direct: Vec<_> = cfg.advertise.clone();
    for a in ep.bound_sockets() {
        let a = if a.ip().is_unspecified() {
            let ip = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port())
        } else {
            a
        };
        if !direct.contains(&a) {
            direct.push(a);
        }
    }
    for t in ep.addr().addrs {
        if let iroh::TransportAddr::Ip(a) = t
            && !direct.contains(&a)
            && direct.len() < sam_protocol::ticket::MAX_DIRECT_ADDRS
        {
            direct.push(a);
        }
    }
    direct.truncate(sam_protocol::ticket::MAX_DIRECT_ADDRS);
    NodeAddr {
        id: sam_protocol::NodeId(*ep.id().as_bytes()),
        direct,
        relay: ticket_relay(ep, cfg),
    }
}
