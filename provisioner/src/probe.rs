//! Reaching a node over iroh: is it up, at the address its ticket says? And enrolling a new
//! one (as its owner).

use std::net::SocketAddr;

use iroh::endpoint::presets;
use iroh::{Endpoint, EndpointAddr, TransportAddr};
use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};

use crate::pool::Probe;

/// Probes by completing a QUIC handshake on `sam/ctl/1` (which proves the node holds the
/// ticket's key), then closing. No request is sent. Enrolls new nodes on `sam/enroll/1`,
/// which only works when the endpoint's key is the nodes' owner ([`IrohProbe::bind_as`]).
#[derive(Debug, Clone)]
pub struct IrohProbe {
    ep: Endpoint,
}

impl IrohProbe {
    /// An endpoint with a throwaway key on `bind` (`127.0.0.1:0` in tests), relays off. It
    /// probes, but a node refuses its enrollment (it is not the owner): use [`Self::bind_as`]
    /// for a pool that creates nodes.
    pub async fn bind(bind: SocketAddr) -> Result<Self, String> {
        Self::bind_as(&SecretKey::generate(), bind).await
    }

    /// An endpoint with the owner's `key` on `bind`, relays off: probes and enrolls.
    pub async fn bind_as(key: &SecretKey, bind: SocketAddr) -> Result<Self, String> {
        let key = iroh::SecretKey::from_bytes(&key.to_bytes());
        let ep = Endpoint::builder(presets::Minimal)
            .secret_key(key)
            .clear_ip_transports()
            .bind_addr(bind)
            .map_err(|e| format!("bad bind address {bind}: {e}"))?
            .bind()
            .await
            .map_err(|e| format!("cannot bind a probe endpoint on {bind}: {e}"))?;
        Ok(Self { ep })
    }

    /// Uses an endpoint that exists already.
    pub fn with_endpoint(ep: Endpoint) -> Self {
        Self { ep }
    }

    pub async fn close(self) {
        self.ep.close().await;
    }
}

/// The iroh address of a ticket's node (direct addresses only).
pub fn endpoint_addr(ticket: &Ticket) -> Option<EndpointAddr> {
    let id = iroh::EndpointId::from_bytes(ticket.addr.id.as_bytes()).ok()?;
    let addrs: Vec<TransportAddr> = ticket
        .addr
        .direct
        .iter()
        .map(|a| TransportAddr::Ip(*a))
        .collect();
    Some(EndpointAddr::from_parts(id, addrs))
}

impl Probe for IrohProbe {
    async fn reachable(&self, ticket: &Ticket) -> bool {
        let Some(addr) = endpoint_addr(ticket) else {
            return false;
        };
        match self.ep.connect(addr, sam_protocol::alpn::CTL).await {
            Ok(conn) => {
                conn.close(0u32.into(), b"probe");
                true
            }
            Err(e) => {
                tracing::debug!("probe {}: {e}", ticket.addr.id.short());
                false
            }
        }
    }

    async fn enroll(
        &self,
        enrollment: &NodeId,
        owner: &NodeId,
        addrs: &[SocketAddr],
    ) -> Result<NodeAddr, crate::enroll::EnrollFailure> {
        crate::enroll::enroll(&self.ep, enrollment, owner, addrs).await
    }
}
