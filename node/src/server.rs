//! The running node: endpoint, router, live connections and the hello/auth step
//! shared by every ALPN handler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::Router;
use sam_protocol::auth::{AuthPolicy, Grant, authorize};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Hello, HelloReply, Welcome, check_version};
use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{NodeConfig, NodePaths};
use crate::shares::{LoadError, ShareFile, ShareStore};
use sam_protocol::wire::{read_frame, write_frame};

/// Largest hello accepted (the widest capability chain fits).
pub const MAX_HELLO: usize = sam_protocol::ctl::MAX_HELLO;
/// Time a peer has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one peer key may hold open at once (all ALPNs together, counted
/// from the QUIC handshake, before its hello). One more is closed with
/// [`close::TOO_MANY`] and a reason.
pub const MAX_CONNS_PER_PEER: usize = 64;
/// Most connections from keys other than the owner's that may wait for their hello at once,
/// all keys together. Keys cost nothing to make, so the per-key limit alone does not bound
/// a stranger who opens connections under fresh keys and never says hello; one more is
/// closed at once with [`close::BUSY`]. The owner is never counted nor refused for this.
pub const MAX_PENDING_HELLOS: usize = 128;
/// First wait before saving a revocation again that could not be saved; it doubles up
/// to [`SAVE_RETRY_MAX`].
pub const SAVE_RETRY_FIRST: Duration = Duration::from_millis(500);
pub const SAVE_RETRY_MAX: Duration = Duration::from_secs(5);

/// QUIC close codes the node uses.
pub mod close {
    pub const REFUSED: u32 = 1;
    pub const REVOKED: u32 = 2;
    pub const EXPIRED: u32 = 3;
    pub const SHUTDOWN: u32 = sam_protocol::stream::CLOSE_NODE_SHUTDOWN;
    pub const PROTOCOL: u32 = 5;
    /// The peer already holds [`super::MAX_CONNS_PER_PEER`] connections.
    pub const TOO_MANY: u32 = 6;
    /// The node's share file is damaged: only the owner is served until it is repaired.
    pub const SHARES_DAMAGED: u32 = 7;
    /// [`super::MAX_PENDING_HELLOS`] connections already wait for their hello.
    pub const BUSY: u32 = 8;
}

/// What a peer is told when the node refuses it because the share file is damaged.
const DAMAGED_REFUSAL: &str = "this node's share records are damaged; until its owner repairs them, only the owner is admitted";

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
    /// Serialises share-file updates inside this process (other processes: the
    /// file lock of [`ShareStore::update`]).
    shares_lock: Mutex<()>,
    /// Revocations in force in this process, saved or not.
    revocations: Mutex<Revocations>,
    /// Set while `shares.json` does not parse: every non-owner is refused.
    damaged: Mutex<Option<Damage>>,
    /// A background task is saving unsaved revocations.
    retrying: AtomicBool,
    /// Cancelled by [`NodeHandle::shutdown`]: background tasks end.
    stopping: CancellationToken,
    conns: Mutex<HashMap<u64, LiveConn>>,
    /// Open connections per peer key (from the handshake on, hello or not).
    peer_conns: Mutex<HashMap<NodeId, usize>>,
    /// Hello slots for keys other than the owner's ([`MAX_PENDING_HELLOS`]).
    pending_hellos: Arc<tokio::sync::Semaphore>,
    next_conn: AtomicU64,
    workspaces: crate::workspace::Workspaces,
    docs: crate::docs::DocHost,
    agents: crate::agent::Agents,
    prs: crate::pr::Prs,
}

struct LiveConn {
    grant: Grant,
    cancel: CancellationToken,
    cut: Arc<OnceLock<Cut>>,
    conn: Connection,
}

impl LiveConn {
    /// Ends the connection at once with `why` (first reason wins).
    fn cut(&self, why: Cut) {
        let _ = self.cut.set(why);
        let (code, reason) = self.cut.get().copied().unwrap_or(why).close();
        self.cancel.cancel();
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// Why the node ended a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Revoked,
    Expired,
    Damaged,
    Shutdown,
}

impl Cut {
    fn close(self) -> (u32, &'static str) {
        match self {
            Cut::Revoked => (close::REVOKED, "capability revoked"),
            Cut::Expired => (close::EXPIRED, "capability expired"),
            Cut::Damaged => (close::SHARES_DAMAGED, DAMAGED_REFUSAL),
            Cut::Shutdown => (close::SHUTDOWN, "node shutting down"),
        }
    }
}

/// Revocations the node enforces from memory.
#[derive(Debug, Default)]
struct Revocations {
    /// Every capability revoked through this process: refused even when the file
    /// does not (yet) say so.
    in_force: BTreeSet<[u8; 16]>,
    /// Those not yet written to `shares.json`.
    unsaved: BTreeSet<[u8; 16]>,
}

/// The share file did not parse.
#[derive(Debug, Clone)]
struct Damage {
    reason: String,
    kept: Option<PathBuf>,
}

/// A revocation that is in force but could not be saved.
#[derive(Debug, Clone)]
pub struct NotSaved {
    /// Live connections it closed.
    pub closed: usize,
    pub error: String,
}

impl std::fmt::Display for NotSaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the revocation is in force now ({} live connection(s) closed, new ones refused) but it is NOT saved on disk yet: {}. The node keeps trying to save it; if the node restarts before it is saved, the revocation is lost and must be made again",
            self.closed, self.error
        )
    }
}

/// One of a peer's [`MAX_CONNS_PER_PEER`] connection slots; freed on drop.
struct PeerSlot {
    node: Weak<Inner>,
    peer: NodeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some(inner) = self.node.upgrade() {
            let mut map = inner.peer_conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.peer);
                }
            }
        }
    }
}

/// A running node. Drop or [`NodeHandle::shutdown`] to stop it.
pub struct NodeHandle {
    pub node: Node,
    pub router: Router,
    pub addr: NodeAddr,
    /// The first-boot enrollment being served, if any ([`crate::enroll`]).
    pub enroll: Option<crate::enroll::EnrollHandle>,
}

impl NodeHandle {
    /// A ticket for the owner (no capability).
    pub fn ticket(&self) -> Ticket {
        Ticket::new(self.addr.clone())
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(self) -> Result<()> {
        self.node.inner.stopping.cancel();
        self.node.cancel_all();
        self.node.last_save_before_exit();
        self.node.inner.agents.shutdown();
        self.node.inner.prs.shutdown();
        if let Some(e) = self.enroll {
            e.shutdown().await;
        }
        self.router.shutdown().await.context("router shutdown")?;
        let _ = std::fs::remove_file(self.node.inner.paths.addr());
        Ok(())
    }
}

impl Node {
    /// Loads config and key from `paths` and starts serving.
    pub async fn start(paths: NodePaths) -> Result<NodeHandle> {
        let cfg = NodeConfig::load(&paths.config())?;
        // A cloud node's first boot: it makes its own key (the user-data holds only a one-time
        // enrollment, see `crate::enroll`).
        let key = if crate::enroll::pending(&paths) {
            crate::config::create_private_dir(&paths.dir)
                .with_context(|| format!("create {}", paths.dir.display()))?;
            let made = !paths.key().exists();
            let key = SecretKey::load_or_create(&paths.key())
                .with_context(|| format!("load or make the node key in {}", paths.dir.display()))?;
            if made {
                info!(node = %key.node_id(), "made this node's key (first boot)");
            }
            key
        } else {
            SecretKey::load(&paths.key())
                .with_context(|| format!("load node key from {}", paths.dir.display()))?
        };
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
        mut agents_config: crate::agent::AgentsConfig,
    ) -> Result<NodeHandle> {
        let owner = cfg.owner_id()?;
        // The node's home (key, config, shares, documents, run folder) is its user's alone.
        crate::config::create_private_dir(&paths.dir)
            .with_context(|| format!("create {}", paths.dir.display()))?;
        agents_config
            .allowed_env
            .extend(cfg.agent_env.iter().cloned());
        let endpoint = crate::endpoint::bind(&key, &cfg).await?;
        let addr = crate::endpoint::ticket_addr(&endpoint, &cfg);
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
                revocations: Mutex::new(Revocations::default()),
                damaged: Mutex::new(None),
                retrying: AtomicBool::new(false),
                stopping: CancellationToken::new(),
                conns: Mutex::new(HashMap::new()),
                peer_conns: Mutex::new(HashMap::new()),
                pending_hellos: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HELLOS)),
                next_conn: AtomicU64::new(1),
                // No IO here: Docker is reached on first use, so the node serves
                // everything else when dockerd is missing.
                workspaces,
                docs,
                agents,
                prs,
            }),
        };
        // A damaged share file does not stop the node: it starts serving its owner only
        // (said loudly in the log and in `sam status`) until the file is repaired.
        match node.load_shares() {
            Ok(_) => {}
            Err(ShareTrouble::Damaged) => {}
            Err(ShareTrouble::Unreadable(e)) => {
                error!(error = %e, "cannot read the share file: only the owner is admitted until it can be read");
            }
        }
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
        // Not fatal: the node serves its owner's ticket either way; the log says why not.
        let enroll = match crate::enroll::start_judged(
            &paths,
            &key,
            owner,
            addr.clone(),
            crate::enroll::system_clock(),
            crate::enroll::system_synced(std::time::Instant::now()),
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                error!("cannot serve this node's enrollment: {e:#}");
                None
            }
        };
        Ok(NodeHandle {
            node,
            router,
            addr,
            enroll,
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn owner(&self) -> NodeId {
        self.inner.owner
    }

    /// Cancelled when the node stops ([`NodeHandle::shutdown`]).
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// The node's home folder (`SAM_HOME`).
    pub fn home(&self) -> &std::path::Path {
        &self.inner.paths.dir
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

    /// Problems the owner should know about (`sam status`): a damaged share file,
    /// revocations in force but not saved.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = self.lock_damaged().as_ref() {
            out.push(format!(
                "{} is damaged ({}){}: only the owner is admitted until it is repaired",
                self.inner.shares.path().display(),
                d.reason,
                d.kept
                    .as_ref()
                    .map(|k| format!("; a copy is kept at {}", k.display()))
                    .unwrap_or_default()
            ));
        }
        let unsaved = self.lock_revocations().unsaved.len();
        if unsaved > 0 {
            out.push(format!(
                "{unsaved} revocation(s) in force but not yet saved to {} (retrying; lost if the node restarts first)",
                self.inner.shares.path().display()
            ));
        }
        out
    }

    /// The registered shares for `sam shares ls`; a revocation in force but not yet
    /// saved shows as revoked.
    pub fn share_infos(&self) -> Result<Vec<sam_protocol::ctl::ShareInfo>, ErrorBody> {
        let file = self
            .inner
            .shares
            .load()
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
        let in_force = self.lock_revocations().in_force.clone();
        let mut infos = file.infos();
        for i in &mut infos {
            i.revoked |= in_force.contains(&i.capability.id);
        }
        Ok(infos)
    }

    fn lock_revocations(&self) -> std::sync::MutexGuard<'_, Revocations> {
        self.inner
            .revocations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock_damaged(&self) -> std::sync::MutexGuard<'_, Option<Damage>> {
        self.inner.damaged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the share file. A file that does not parse puts the node in "owner only"
    /// mode (once: a copy is kept aside, every non-owner connection is cut, the log
    /// says why); a file that parses again ends that mode.
    fn load_shares(&self) -> Result<ShareFile, ShareTrouble> {
        match self.inner.shares.load() {
            Ok(file) => {
                if let Some(d) = self.lock_damaged().take() {
                    info!(was = %d.reason, "the share file parses again: peers with capabilities are admitted again");
                }
                Ok(file)
            }
            Err(LoadError::Damaged { reason, .. }) => {
                let mut damaged = self.lock_damaged();
                if damaged.is_none() {
                    let kept = match self.inner.shares.keep_damaged_copy() {
                        Ok(p) => Some(p),
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "cannot keep a copy of the damaged share file");
                            None
                        }
                    };
                    error!(
                        file = %self.inner.shares.path().display(),
                        %reason,
                        kept = ?kept,
                        "the share file is damaged: every peer but the owner is refused until it is repaired (fix it or restore it from a copy; deleting it would forget every revocation)"
                    );
                    *damaged = Some(Damage { reason, kept });
                    drop(damaged);
                    for c in self.lock_conns().values() {
                        if !c.grant.capability_ids.is_empty() {
                            c.cut(Cut::Damaged);
                        }
                    }
                }
                Err(ShareTrouble::Damaged)
            }
            Err(e @ LoadError::Io { .. }) => Err(ShareTrouble::Unreadable(e.to_string())),
        }
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConn>> {
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every live connection as a shutdown does (close code
    /// [`close::SHUTDOWN`]) while terminals, workspaces and transfers' sources stay: the
    /// clients dial again and resume their streams. What a restart looks like to them,
    /// without one (the resume tests use it).
    pub fn drop_all_links(&self) {
        self.cancel_all();
    }

    fn cancel_all(&self) {
        for c in self.lock_conns().values() {
            c.cut(Cut::Shutdown);
        }
    }

    /// Revokes a capability. In this order: the revocation is put in force in memory and
    /// every live connection resting on it is closed (under the connection registry's
    /// lock, so no hello in flight slips through); only then is it saved. A save that
    /// fails is returned as [`NotSaved`] (the revocation stays in force) and retried in
    /// the background until it lands.
    pub fn revoke(&self, id: [u8; 16]) -> Result<usize, NotSaved> {
        let closed = {
            let conns = self.lock_conns();
            {
                let mut r = self.lock_revocations();
                r.in_force.insert(id);
                r.unsaved.insert(id);
            }
            let mut closed = 0;
            for c in conns.values() {
                if c.grant.capability_ids.contains(&id) {
                    c.cut(Cut::Revoked);
                    closed += 1;
                }
            }
            closed
        };
        let hex = sam_protocol::capability::id_hex(&id);
        match self.save_revocations() {
            Ok(()) => {
                info!(id = %hex, closed, "capability revoked");
                Ok(closed)
            }
            Err(e) => {
                let error = format!("{e:#}");
                error!(id = %hex, closed, %error, "capability revoked in memory but NOT saved; retrying in the background");
                self.spawn_save_retry();
                Err(NotSaved { closed, error })
            }
        }
    }

    /// Writes every unsaved revocation to the share file.
    fn save_revocations(&self) -> Result<()> {
        let ids: Vec<[u8; 16]> = self.lock_revocations().unsaved.iter().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.update_shares(|f| {
            for id in &ids {
                f.revoke(*id);
            }
        })?;
        let mut r = self.lock_revocations();
        for id in &ids {
            r.unsaved.remove(id);
        }
        Ok(())
    }

    /// Starts (once) the task that saves unsaved revocations until none is left.
    fn spawn_save_retry(&self) {
        if self.inner.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stopping.clone();
        tokio::spawn(async move {
            let mut wait = SAVE_RETRY_FIRST;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let node = Node { inner };
                match node.save_revocations() {
                    Ok(()) => {
                        node.inner.retrying.store(false, Ordering::SeqCst);
                        // A revoke that failed while this task was finishing found
                        // `retrying` set and left its save to us.
                        if node.lock_revocations().unsaved.is_empty()
                            || node.inner.retrying.swap(true, Ordering::SeqCst)
                        {
                            info!("revocations saved to the share file");
                            return;
                        }
                        wait = SAVE_RETRY_FIRST;
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "revocations still not saved; retrying");
                        wait = (wait * 2).min(SAVE_RETRY_MAX);
                    }
                }
            }
        });
    }

    /// At shutdown: one last try to save, and a clear word about what is lost.
    fn last_save_before_exit(&self) {
        if self.lock_revocations().unsaved.is_empty() {
            return;
        }
        if let Err(e) = self.save_revocations() {
            let lost: Vec<String> = self
                .lock_revocations()
                .unsaved
                .iter()
                .map(sam_protocol::capability::id_hex)
                .collect();
            error!(error = %format!("{e:#}"), ?lost, "node stopping with revocations that were never saved: they are NOT in force after a restart; revoke them again");
        }
    }

    /// Reads the peer's hello, decides, answers. `None` when the peer was refused
    /// (the connection is then closed with the reason).
    pub async fn accept_peer(&self, conn: &Connection) -> Option<Session> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        let Some(slot) = self.take_slot(peer) else {
            warn!(peer = %peer.short(), limit = MAX_CONNS_PER_PEER, "too many connections from one peer");
            let reason = format!(
                "too many connections from your key (the limit is {MAX_CONNS_PER_PEER} at once); close some and try again"
            );
            conn.close(VarInt::from_u32(close::TOO_MANY), reason.as_bytes());
            return None;
        };
        // Held until the hello is decided (the owner's never waits for one).
        let _hello_slot = if peer == self.inner.owner {
            None
        } else {
            match self.inner.pending_hellos.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    warn!(peer = %peer.short(), limit = MAX_PENDING_HELLOS, "too many connections waiting for their hello");
                    let reason = format!(
                        "the node is busy: {MAX_PENDING_HELLOS} connections already wait for their hello; try again shortly"
                    );
                    conn.close(VarInt::from_u32(close::BUSY), reason.as_bytes());
                    return None;
                }
            }
        };
        let result = tokio::time::timeout(HELLO_TIMEOUT, self.hello(conn, peer, slot)).await;
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

    /// Counts a connection of `peer`; `None` when it already holds the most allowed.
    fn take_slot(&self, peer: NodeId) -> Option<PeerSlot> {
        let mut map = self
            .inner
            .peer_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= MAX_CONNS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            node: Arc::downgrade(&self.inner),
            peer,
        })
    }

    async fn hello(
        &self,
        conn: &Connection,
        peer: NodeId,
        slot: PeerSlot,
    ) -> Result<Session, String> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let decision = match read_frame::<Hello>(&mut recv, MAX_HELLO).await {
            // Registered before the welcome goes out: a revocation from now on finds
            // this connection in the registry.
            Ok(hello) => self
                .decide(peer, &hello)
                .and_then(|grant| self.register(grant, conn, slot)),
            Err(e) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("bad hello: {e}"),
            )),
        };
        let reply = match &decision {
            Ok(session) => HelloReply::Welcome(Welcome {
                node: self.inner.id,
                owner: self.inner.owner,
                role: session.grant.role,
                scope: session.grant.scope.clone(),
                protocol_version: sam_protocol::PROTOCOL_VERSION,
                node_version: crate::NODE_VERSION.to_string(),
            }),
            Err(e) => HelloReply::Refused(e.clone()),
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        match decision {
            Ok(session) => Ok(session),
            Err(e) => {
                // Let the refusal reach the peer before the connection closes.
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                Err(e.message)
            }
        }
    }

    fn decide(&self, peer: NodeId, hello: &Hello) -> Result<Grant, ErrorBody> {
        check_version(hello.protocol_version)?;
        let (mut revoked, redeemed) = match self.load_shares() {
            Ok(file) => (file.revoked_set(), file.redeemed_map()),
            // The owner needs no record: it is admitted whatever the file's state.
            Err(_) if peer == self.inner.owner => (BTreeSet::new(), BTreeMap::new()),
            Err(e) => return Err(e.refusal()),
        };
        revoked.extend(self.lock_revocations().in_force.iter().copied());
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

    /// Enters an authorised connection in the registry. Checked again under the
    /// registry's lock: a revocation (or a damaged share file) that came while the
    /// hello was being decided refuses it here.
    fn register(
        &self,
        grant: Grant,
        conn: &Connection,
        slot: PeerSlot,
    ) -> Result<Session, ErrorBody> {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let cut = Arc::new(OnceLock::new());
        {
            let mut conns = self.lock_conns();
            if let Some(revoked) = grant
                .capability_ids
                .iter()
                .find(|c| self.lock_revocations().in_force.contains(*c))
            {
                return Err(ErrorBody::new(
                    ErrorCode::Unauthorized,
                    sam_protocol::AuthError::Revoked {
                        id: sam_protocol::capability::id_hex(revoked),
                    }
                    .to_string(),
                ));
            }
            if !grant.capability_ids.is_empty() && self.lock_damaged().is_some() {
                return Err(ErrorBody::new(ErrorCode::Unavailable, DAMAGED_REFUSAL));
            }
            conns.insert(
                id,
                LiveConn {
                    grant: grant.clone(),
                    cancel: cancel.clone(),
                    cut: cut.clone(),
                    conn: conn.clone(),
                },
            );
        }
        if let Some(exp) = grant.expires_at {
            let token = cancel.clone();
            let cut = cut.clone();
            let wait = exp.saturating_sub(crate::now_secs());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(wait)) => {
                        let _ = cut.set(Cut::Expired);
                        token.cancel();
                    }
                    _ = token.cancelled() => {}
                }
            });
        }
        Ok(Session {
            grant,
            cancel,
            cut,
            id,
            node: self.clone(),
            _slot: slot,
        })
    }

    /// Checks that a live grant is still good (not revoked, not expired, and the share
    /// file readable: a non-owner is refused while it is damaged).
    pub fn recheck(&self, grant: &Grant) -> Result<(), ErrorBody> {
        if grant.capability_ids.is_empty() {
            return Ok(());
        }
        let mut revoked = self.lock_revocations().in_force.clone();
        let file = self.load_shares().map_err(|e| e.refusal())?;
        revoked.extend(file.revoked_set());
        grant
            .still_valid(&revoked, crate::now_secs())
            .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))
    }
}

/// Why the share file cannot be used.
enum ShareTrouble {
    Damaged,
    Unreadable(String),
}

impl ShareTrouble {
    /// What a non-owner is told.
    fn refusal(&self) -> ErrorBody {
        match self {
            ShareTrouble::Damaged => ErrorBody::new(ErrorCode::Unavailable, DAMAGED_REFUSAL),
            ShareTrouble::Unreadable(_) => ErrorBody::new(
                ErrorCode::Unavailable,
                "this node cannot read its share records now; only its owner is admitted",
            ),
        }
    }
}

/// One authorised connection. Dropping it unregisters the connection.
pub struct Session {
    pub grant: Grant,
    /// Cancelled on revocation, expiry, a damaged share file or shutdown.
    pub cancel: CancellationToken,
    cut: Arc<OnceLock<Cut>>,
    id: u64,
    node: Node,
    _slot: PeerSlot,
}

impl Session {
    /// Waits for cancellation and closes `conn` with the reason.
    pub async fn close_when_cancelled(&self, conn: &Connection) {
        self.cancel.cancelled().await;
        let (code, reason) = self.cut.get().copied().unwrap_or(Cut::Shutdown).close();
        conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.node.lock_conns().remove(&self.id);
        self.cancel.cancel();
    }
}
