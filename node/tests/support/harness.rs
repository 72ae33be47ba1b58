//! A real node on 127.0.0.1 and real clients, shared by the loopback tests.
#![allow(dead_code)]

use iroh::Endpoint;
use sam_client::conn::{ConnectError, NodeClient};
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::{Role, Scope, SecretKey, SignedCapability, Ticket};

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub owner: SecretKey,
    pub node_key: SecretKey,
    pub handle: NodeHandle,
}

impl TestNode {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = SecretKey::generate();
        let node_key = SecretKey::generate();
        let handle = start_in(dir.path(), &owner, &node_key, "127.0.0.1:0").await;
        Self {
            dir,
            owner,
            node_key,
            handle,
        }
    }

    pub fn cap(&self, grantee: Grantee, role: Role, ttl: Option<u64>) -> SignedCapability {
        self.scoped_cap(grantee, role, None, ttl)
    }

    pub fn scoped_cap(
        &self,
        grantee: Grantee,
        role: Role,
        scope: Option<Scope>,
        ttl: Option<u64>,
    ) -> SignedCapability {
        Capability::new(
            self.owner.node_id(),
            self.node_key.node_id(),
            grantee,
            role,
            scope,
            now(),
            ttl,
        )
        .sign(&self.owner, None)
    }

    pub fn ticket_with(&self, cap: Option<SignedCapability>, secret: Option<[u8; 32]>) -> Ticket {
        let mut t = self.handle.ticket();
        t.capability = cap;
        t.invite_secret = secret;
        t
    }

    /// A ticket for a new key holding `role` on the whole node.
    pub fn member(&self, role: Role) -> (SecretKey, Ticket) {
        let key = SecretKey::generate();
        let cap = self.cap(Grantee::Key(key.node_id()), role, None);
        (key, self.ticket_with(Some(cap), None))
    }
}

/// Starts a node with the given keys in `dir` bound to `bind`.
pub async fn start_in(
    dir: &std::path::Path,
    owner: &SecretKey,
    node_key: &SecretKey,
    bind: &str,
) -> NodeHandle {
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = bind.parse().expect("addr");
    Node::start_with(NodePaths::new(dir), cfg, node_key.clone())
        .await
        .expect("node starts")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub async fn endpoint(key: &SecretKey) -> Endpoint {
    sam_client::endpoint::bind(key, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind client")
}

pub async fn client(
    key: &SecretKey,
    ticket: &Ticket,
) -> Result<(Endpoint, NodeClient), ConnectError> {
    let ep = endpoint(key).await;
    let c = NodeClient::connect(&ep, ticket).await?;
    Ok((ep, c))
}

/// Every file below `dir` (unreadable folders are skipped).
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
