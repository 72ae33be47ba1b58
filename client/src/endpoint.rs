//! The client's iroh endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use iroh::endpoint::presets;
use iroh::{Endpoint, EndpointAddr, RelayUrl, SecretKey, TransportAddr};
use sam_protocol::NodeAddr;

/// Binds the client's endpoint on `bind` (default `0.0.0.0:0`; `SAM_BIND` overrides,
/// tests use `127.0.0.1:0`). Relays off.
pub async fn bind(key: &sam_protocol::SecretKey, bind: Option<SocketAddr>) -> Result<Endpoint> {
    let bind = match bind {
        Some(b) => b,
        None => match std::env::var("SAM_BIND") {
            Ok(s) if !s.is_empty() => s
                .parse()
                .with_context(|| format!("SAM_BIND={s:?} is not an address like 127.0.0.1:0"))?,
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        },
    };
    Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(&key.to_bytes()))
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("bad bind address {bind}"))?
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
