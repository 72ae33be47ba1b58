//! `sam-node ticket`: tickets signed by the node key, registered in the share file.

use anyhow::{Context, Result};
use sam_protocol::capability::{Capability, Grantee, invite_hash};
use sam_protocol::{NodeAddr, NodeId, Role, SecretKey, Ticket};

use crate::config::{NodeConfig, NodePaths};
use crate::shares::ShareStore;

/// The node's last known address: from the running node's `node.addr`, else from
/// the config's bind and advertise addresses.
pub fn known_addr(paths: &NodePaths, key: &SecretKey) -> Result<NodeAddr> {
    if let Ok(bytes) = std::fs::read(paths.addr())
        && let Ok(addr) = serde_json::from_slice::<NodeAddr>(&bytes)
        && addr.id == key.node_id()
    {
        return Ok(addr);
    }
    let cfg = NodeConfig::load(&paths.config())?;
    let mut direct = cfg.advertise.clone();
    if cfg.bind.port() != 0 && !cfg.bind.ip().is_unspecified() {
        direct.push(cfg.bind);
    } else if cfg.bind.port() != 0 {
        direct.push(std::net::SocketAddr::new(
            std::net::Ipv4Addr::LOCALHOST.into(),
            cfg.bind.port(),
        ));
    }
    Ok(NodeAddr {
        id: key.node_id(),
        direct,
        relay: cfg.relay_setting()?.urls.first().cloned(),
    })
}

/// Issues a ticket; with a role, a capability signed by the node key.
pub fn issue(
    paths: &NodePaths,
    role: Option<Role>,
    to: Option<NodeId>,
    invite: bool,
    ttl_secs: Option<u64>,
) -> Result<Ticket> {
    let key = SecretKey::load(&paths.key())
        .context("no node key: run `sam-node init --owner <NodeId>` first")?;
    let mut ticket = Ticket::new(known_addr(paths, &key)?);
    let Some(role) = role else {
        return Ok(ticket);
    };
    let (grantee, secret) = match to {
        Some(k) => (Grantee::Key(k), None),
        None => {
            let _ = invite; // without --to a ticket is always an invite
            let secret: [u8; 32] = rand::random();
            (Grantee::Invite(invite_hash(&secret)), Some(secret))
        }
    };
    let cap = Capability::new(
        key.node_id(),
        key.node_id(),
        grantee,
        role,
        None,
        crate::now_secs(),
        ttl_secs,
    )
    .sign(&key, None);
    ShareStore::new(paths.shares()).update(|f| f.register(cap.clone()))?;
    ticket.capability = Some(cap);
    ticket.invite_secret = secret;
    Ok(ticket)
}
