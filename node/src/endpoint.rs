//! Building the node's iroh endpoint from its config.

use std::str::FromStr;

use anyhow::{Context, Result};
use iroh::endpoint::{QuicTransportConfig, VarInt, presets};
use iroh::{Endpoint, RelayMode, RelayUrl, SecretKey};
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

/// Binds an endpoint: direct UDP on `cfg.bind`, a relay only when configured.
pub async fn bind(key: &sam_protocol::SecretKey, cfg: &NodeConfig) -> Result<Endpoint> {
    let mut b = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&key.to_bytes()))
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
    b = match &cfg.relay {
        Some(url) => b.relay_mode(RelayMode::custom([
            RelayUrl::from_str(url).with_context(|| format!("bad relay url {url}"))?
        ])),
        None => b.relay_mode(RelayMode::Disabled),
    };
    b.bind()
        .await
        .with_context(|| format!("cannot bind the node endpoint on {}", cfg.bind))
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
        relay: cfg.relay.clone(),
    }
}
