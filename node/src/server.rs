//! The running node: endpoint, router, live connections and the hello/auth step
//! shared by every ALPN handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::Router;
use sam_protocol::auth::{AuthPolicy, Grant, authorize};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Hello, HelloReply, Welcome, check_version};
use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{NodeConfig, NodePaths};
use crate::shares::ShareStore;
use sam_protocol::wire::{read_frame, write_frame};

/// Largest hello accepted (a capability chain fits easily).
pub const MAX_HELLO: usize = 64 * 1024;
/// Time a peer has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC close codes the node uses.
pub mod close {
    pub const REFUSED: u32 = 1;
    pub const REVOKED: u32 = 2;
    pub const EXPIRED: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
    pub const PROTOCOL: u32 = 5;
}

/// A cheap, clonable handle to the node's shared state.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).finish()
    }
}

struct Inner {
    id: NodeId,
    owner: NodeId,
    paths: NodePaths,
    started: Instant,
    shares: ShareStore,
    /// Serialises share-file updates inside this process.
    shares_lock: Mutex<()>,
    conns: Mutex<HashMap<u64, LiveConn>>,
    next_conn: AtomicU64,
    workspaces: crate::workspace::Workspaces,
    docs: crate::docs::DocHost,
    agents: crate::agent::Agents,
    prs: crate::pr::Prs,
}

struct LiveConn {
    grant: Grant,
    cancel: CancellationToken,
}

/// A running node. Drop or [`NodeHandle::shutdown`] to stop it.
pub struct NodeHandle {
    pub node: Node,
    pub router: Router,
    pub addr: NodeAddr,
}

impl NodeHandle {
    /// A ticket for the owner (no capability).
    pub fn ticket(&self) -> Ticket {
        Ticket::new(self.addr.clone())
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(self) -> Result<()> {
        self.node.cancel_all();
        self.node.inner.agents.shutdown();
        self.node.inner.prs.shutdown();
        self.router.shutdown().await.context("router shutdown")?;
        let _ = std::fs::remove_file(self.node.inner.paths.addr());
        Ok(())
    }
}

impl Node {
    /// Loads config and key from `paths` and starts serving.
    pub async fn start(paths: NodePaths) -> Result<NodeHandle> {
        let cfg = NodeConfig::load(&paths.config())?;
        let key = SecretKey::load(&paths.key())
            .with_context(|| format!("load node key from {}", paths.dir.display()))?;
        Self::start_with(paths, cfg, key).await
    }

    /// Starts serving with an explicit config and key.
    pub async fn start_with(
        paths: NodePaths,
        cfg: NodeConfig,
        key: SecretKey,
    ) -> Result<NodeHandle> {
        Self::start_with_agents(paths, cfg, key, crate::agent::AgentsConfig::from_env()).await
    }

    /// [`Self::start_with`] with explicit agent settings (tests: host launcher, timeouts).
    pub async fn start_with_agents(
        paths: NodePaths,
        cfg: NodeConfig,
        key: SecretKey,
        agents_config: crate::agent::AgentsConfig,
    ) -> Result<NodeHandle> {
        let owner = cfg.owner_id()?;
        let (endpoint, bound) = crate::endpoint::bind(&key, &cfg).await?;
        let addr = crate::endpoint::ticket_addr(&endpoint, &cfg, &bound);
        let docs = crate::docs::DocHost::start(&paths.docs())?;
        let workspaces = crate::workspace::Workspaces::new(
            crate::workspace::WorkspaceConfig::new(
                key.node_id().to_string(),
                // Unix socket paths hold at most 107 bytes: a node whose home is deep (the
                // local provider's) gets a shorter run folder through SAM_RUN_DIR.
                std::env::var_os("SAM_RUN_DIR")
                    .filter(|d| !d.is_empty())
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| paths.dir.join("run")),
            )
            .with_node_config(&cfg),
        );
        let agents = crate::agent::Agents::start(
            key.node_id().to_string(),
            docs.clone(),
            workspaces.clone(),
            agents_config,
        );
        let prs = crate::pr::Prs::start(
            key.node_id().to_string(),
            docs.clone(),
            workspaces.clone(),
            agents.clone(),
        );
        let node = Node {
            inner: Arc::new(Inner {
                id: key.node_id(),
                owner,
                shares: ShareStore::new(paths.shares()),
                paths: paths.clone(),
                started: Instant::now(),
                shares_lock: Mutex::new(()),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                // No IO here: Docker is reached on first use, so the node serves
                // everything else when dockerd is missing.
                workspaces,
                docs,
                agents,
                prs,
            }),
        };
        // Fail early on a damaged share file rather than at the first hello.
        node.inner.shares.load()?;
        let router = Router::builder(endpoint)
            .accept(
                sam_protocol::alpn::CTL,
                crate::ctl::CtlHandler::new(node.clone()),
            )
            .accept(
                sam_protocol::alpn::DOC,
                crate::docs::stream::DocHandler::new(node.clone()),
            )
            .accept(
                sam_protocol::alpn::PTY,
                crate::pty::PtyHandler::new(node.clone()),
            )
            .accept(
                sam_protocol::alpn::PORT,
                crate::ports::PortHandler::new(node.clone()),
            )
            .accept(
                sam_protocol::alpn::FILE,
                crate::files::transfer::FileHandler::new(node.clone()),
            )
            .spawn();
        let json = serde_json::to_vec(&addr).context("serialise address")?;
        crate::config::write_private(&paths.addr(), &json)?;
        info!(node = %node.inner.id, owner = %owner, addrs = ?addr.direct, "node listening");
        Ok(NodeHandle { node, router, addr })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn owner(&self) -> NodeId {
        self.inner.owner
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn docs(&self) -> &crate::docs::DocHost {
        &self.inner.docs
    }

    pub fn agents(&self) -> &crate::agent::Agents {
        &self.inner.agents
    }

    pub fn prs(&self) -> &crate::pr::Prs {
        &self.inner.prs
    }

    pub fn workspaces(&self) -> &crate::workspace::Workspaces {
        &self.inner.workspaces
    }

    pub fn shares(&self) -> &ShareStore {
        &self.inner.shares
    }

    /// Runs a load-modify-save on the share file, serialised within this process.
    pub fn update_shares<R>(
        &self,
        f: impl FnOnce(&mut crate::shares::ShareFile) -> R,
    ) -> Result<R> {
        let _guard = self
            .inner
            .shares_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.inner.shares.update(f)
    }

    /// Number of live authorised connections.
    pub fn peer_count(&self) -> usize {
        self.lock_conns().len()
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConn>> {
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cancel_all(&self) {
        for c in self.lock_conns().values() {
            c.cancel.cancel();
        }
    }

    /// Revokes a capability: recorded first, then every live connection that rests
    /// on it is closed.
    pub fn revoke(&self, id: [u8; 16]) -> Result<usize> {
        self.update_shares(|f| f.revoke(id))?;
        let conns = self.lock_conns();
        let mut closed = 0;
        for c in conns.values() {
            if c.grant.capability_ids.contains(&id) {
                c.cancel.cancel();
                closed += 1;
            }
        }
        info!(id = %sam_protocol::capability::id_hex(&id), closed, "capability revoked");
        Ok(closed)
    }

    /// Reads the peer's hello, decides, answers. `None` when the peer was refused
    /// (the connection is then closed with the reason).
    pub async fn accept_peer(&self, conn: &Connection) -> Option<Session> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        let result = tokio::time::timeout(HELLO_TIMEOUT, self.hello(conn, peer)).await;
        match result {
            Ok(Ok(session)) => Some(session),
            Ok(Err(reason)) => {
                warn!(peer = %peer.short(), %reason, "peer refused");
                conn.close(VarInt::from_u32(close::REFUSED), reason.as_bytes());
                None
            }
            Err(_) => {
                warn!(peer = %peer.short(), "no hello in time");
                conn.close(VarInt::from_u32(close::REFUSED), b"no hello in time");
                None
            }
        }
    }

    async fn hello(&self, conn: &Connection, peer: NodeId) -> Result<Session, String> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let decision = match read_frame::<Hello>(&mut recv, MAX_HELLO).await {
            Ok(hello) => self.decide(peer, &hello),
            Err(e) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("bad hello: {e}"),
            )),
        };
        let reply = match &decision {
            Ok(grant) => HelloReply::Welcome(Welcome {
                node: self.inner.id,
                owner: self.inner.owner,
                role: grant.role,
                scope: grant.scope.clone(),
                protocol_version: sam_protocol::PROTOCOL_VERSION,
                node_version: crate::NODE_VERSION.to_string(),
            }),
            Err(e) => HelloReply::Refused(e.clone()),
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        match decision {
            Ok(grant) => Ok(self.register(grant)),
            Err(e) => {
                // Let the refusal reach the peer before the connection closes.
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                Err(e.message)
            }
        }
    }

    fn decide(&self, peer: NodeId, hello: &Hello) -> Result<Grant, ErrorBody> {
        check_version(hello.protocol_version)?;
        let file = self
            .inner
            .shares
            .load()
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        let revoked = file.revoked_set();
        let redeemed = file.redeemed_map();
        let policy = AuthPolicy {
            node: self.inner.id,
            owner: self.inner.owner,
            revoked: &revoked,
            redeemed: &redeemed,
            now: crate::now_secs(),
        };
        let grant = authorize(
            &policy,
            peer,
            hello.capability.as_ref(),
            hello.invite_secret.as_ref(),
        )
        .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
        if let (Some(_), Some(cap)) = (grant.redeems_invite, &hello.capability) {
            // Two peers racing with one invite: the file decides who was first.
            let winner = self
                .update_shares(|f| {
                    let current = f.redeemed_map().get(&cap.cap.id).copied();
                    match current {
                        Some(k) => k,
                        None => {
                            f.redeem(cap, peer);
                            peer
                        }
                    }
                })
                .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
            if winner != peer {
                return Err(ErrorBody::new(
                    ErrorCode::Unauthorized,
                    sam_protocol::AuthError::InviteUsed {
                        id: cap.cap.id_hex(),
                    }
                    .to_string(),
                ));
            }
            info!(peer = %peer.short(), invite = %cap.cap.id_hex(), "invite redeemed");
        }
        Ok(grant)
    }

    fn register(&self, grant: Grant) -> Session {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        if let Some(exp) = grant.expires_at {
            let token = cancel.clone();
            let wait = exp.saturating_sub(crate::now_secs());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(wait)) => token.cancel(),
                    _ = token.cancelled() => {}
                }
            });
        }
        self.lock_conns().insert(
            id,
            LiveConn {
                grant: grant.clone(),
                cancel: cancel.clone(),
            },
        );
        Session {
            grant,
            cancel,
            id,
            node: self.clone(),
        }
    }

    /// Checks that a live grant is still good (not revoked, not expired).
    pub fn recheck(&self, grant: &Grant) -> Result<(), ErrorBody> {
        if grant.capability_ids.is_empty() {
            return Ok(());
        }
        let file = self
            .inner
            .shares
            .load()
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        grant
            .still_valid(&file.revoked_set(), crate::now_secs())
            .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))
    }
}

/// One authorised connection. Dropping it unregisters the connection.
pub struct Session {
    pub grant: Grant,
    /// Cancelled on revocation, expiry or shutdown.
    pub cancel: CancellationToken,
    id: u64,
    node: Node,
}

impl Session {
    /// Waits for cancellation and closes `conn` with the matching reason.
    pub async fn close_when_cancelled(&self, conn: &Connection) {
        self.cancel.cancelled().await;
        let (code, reason): (u32, &[u8]) = match self.node.recheck(&self.grant) {
            Err(e) if e.message.contains("revoked") => (close::REVOKED, b"capability revoked"),
            Err(_) => (close::EXPIRED, b"capability expired"),
            Ok(()) => (close::SHUTDOWN, b"node shutting down"),
        };
        conn.close(VarInt::from_u32(code), reason);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.node.lock_conns().remove(&self.id);
        self.cancel.cancel();
    }
}
