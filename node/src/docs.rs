//! The node's conversation documents: one actor owns every loaded document, its
//! per-peer sync states and the on-disk store. Stream handlers and (later) agents
//! talk to it through a [`DocHost`] handle.
//!
//! Durability: the actor handles a batch of commands, then appends every changed
//! document to the store (fsync), bumps the documents' versions, and only then
//! answers the `Generate` requests of that batch. So no peer ever receives a change
//! the node could lose in a crash: a change is acknowledged once it is on disk.

pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use sam_crdt::{ChangeHash, Conversation, DocStore, StoreOptions, SyncPeer};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::doc::{ConvSummary, Watcher};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// Most commands handled before a flush.
const BATCH: usize = 256;

type Mutation = Box<dyn FnOnce(&mut Conversation) + Send>;

enum Cmd {
    Open {
        id: String,
        create: bool,
        /// May re-create a conversation the owner deleted (the owner's own streams).
        revive: bool,
        watcher: Option<(u64, Watcher)>,
        reply: oneshot::Sender<Result<Opened, ErrorBody>>,
    },
    Receive {
        id: String,
        peer: u64,
        bytes: Vec<u8>,
        rights: Rights,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
    Generate {
        id: String,
        peer: u64,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Leave {
        id: String,
        peer: u64,
    },
    Mutate {
        id: String,
        f: Mutation,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
    List {
        reply: oneshot::Sender<Vec<ConvSummary>>,
    },
    /// Peers known to hold every change of a document (graceful teardown).
    InSync {
        id: String,
        nudge: bool,
        reply: oneshot::Sender<Result<Vec<sam_protocol::NodeId>, ErrorBody>>,
    },
    Insert {
        conv: Box<Conversation>,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
    /// The heads of a stored document.
    Heads {
        id: String,
        reply: oneshot::Sender<Result<Vec<ChangeHash>, ErrorBody>>,
    },
    /// Forgets a stored document: memory, files, and leaves a tombstone.
    Delete {
        id: String,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
    /// Runs a closure that only reads (no flush, no version bump).
    Read {
        id: String,
        f: Mutation,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
}

/// What a doc stream forwards to its peer after a durable batch.
#[derive(Debug, Clone)]
pub enum Live {
    /// The batch as one live message, encoded once for every follower.
    Changes(Arc<Vec<u8>>),
    /// The batch has no live form (a new document arrived): run ordinary sync.
    Resync,
}

/// Batches a follower may fall behind before it resyncs the ordinary way.
const LIVE_BACKLOG: usize = 256;

/// A document opened for a peer.
pub struct Opened {
    /// Bumped after every durable change.
    pub version: watch::Receiver<u64>,
    /// Every durable batch, subscribed before the peer's first sync message so that no
    /// batch falls between the two.
    pub live: broadcast::Receiver<Live>,
    /// The document's workspace id (for scope checks); empty for a pending create.
    pub workspace: String,
    /// The document does not exist yet; the peer's first sync creates it.
    pub pending: bool,
}

/// Handle to the document actor.
#[derive(Debug, Clone)]
pub struct DocHost {
    tx: mpsc::Sender<Cmd>,
    /// Ids of documents after each durable change (agents watch it).
    changed: tokio::sync::broadcast::Sender<String>,
}

fn gone() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the node's document store stopped")
}

impl DocHost {
    /// Opens the store in `dir` and starts the actor.
    pub fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let store = DocStore::open(dir, StoreOptions::default())
            .map_err(|e| anyhow::anyhow!("open document store {}: {e}", dir.display()))?;
        let (tx, rx) = mpsc::channel(1024);
        let changed = tokio::sync::broadcast::channel(1024).0;
        let actor = Actor {
            store,
            docs: HashMap::new(),
            changed: changed.clone(),
        };
        tokio::spawn(actor.run(rx));
        Ok(Self { tx, changed })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Loads a document (or prepares to receive a new one when `create`).
    pub async fn open(&self, id: &str, create: bool) -> Result<Opened, ErrorBody> {
        self.open_as(id, create, true, None).await
    }

    /// Like [`Self::open`], recording `watcher` (stream `peer`) as present until
    /// [`Self::leave`]. A conversation the owner deleted ([`Self::delete`]) is created again
    /// only with `revive` (the owner's say); else the open is refused.
    pub async fn open_as(
        &self,
        id: &str,
        create: bool,
        revive: bool,
        watcher: Option<(u64, Watcher)>,
    ) -> Result<Opened, ErrorBody> {
        let id = id.to_string();
        self.call(|reply| Cmd::Open {
            id,
            create,
            revive,
            watcher,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(gone()))
    }

    /// Applies a sync message from `peer`, whose grant gives it `rights` over the
    /// node-controlled fields (see [`Rights`]).
    pub async fn receive(
        &self,
        id: &str,
        peer: u64,
        bytes: Vec<u8>,
        rights: Rights,
    ) -> Result<(), ErrorBody> {
        let id = id.to_string();
        self.call(|reply| Cmd::Receive {
            id,
            peer,
            bytes,
            rights,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(gone()))
    }

    /// The next sync message for `peer`, if any (only durable changes).
    pub async fn generate(&self, id: &str, peer: u64) -> Option<Vec<u8>> {
        let id = id.to_string();
        self.call(|reply| Cmd::Generate { id, peer, reply })
            .await
            .flatten()
    }

    /// Forgets `peer`'s sync state.
    pub async fn leave(&self, id: &str, peer: u64) {
        let _ = self
            .tx
            .send(Cmd::Leave {
                id: id.to_string(),
                peer,
            })
            .await;
    }

    /// Runs `f` on the document inside the actor; the change is durable when this returns.
    pub async fn mutate<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Conversation) -> R + Send + 'static,
    ) -> Result<R, ErrorBody> {
        let (out_tx, out_rx) = oneshot::channel();
        let f: Mutation = Box::new(move |c| {
            let _ = out_tx.send(f(c));
        });
        let id = id.to_string();
        self.call(|reply| Cmd::Mutate { id, f, reply })
            .await
            .unwrap_or_else(|| Err(gone()))?;
        out_rx.await.map_err(|_| gone())
    }

    /// Stores a conversation made on this node (e.g. for an idea); durable on return.
    pub async fn insert(&self, conv: Conversation) -> Result<(), ErrorBody> {
        let conv = Box::new(conv);
        self.call(|reply| Cmd::Insert { conv, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }

    /// Runs a read-only `f` on the document inside the actor (nothing is written).
    pub async fn read<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(&Conversation) -> R + Send + 'static,
    ) -> Result<R, ErrorBody> {
        let (out_tx, out_rx) = oneshot::channel();
        let f: Mutation = Box::new(move |c| {
            let _ = out_tx.send(f(c));
        });
        let id = id.to_string();
        self.call(|reply| Cmd::Read { id, f, reply })
            .await
            .unwrap_or_else(|| Err(gone()))?;
        out_rx.await.map_err(|_| gone())
    }

    /// The heads of stored conversation `id`.
    pub async fn heads(&self, id: &str) -> Result<Vec<ChangeHash>, ErrorBody> {
        let id = id.to_string();
        self.call(|reply| Cmd::Heads { id, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }

    /// Deletes stored conversation `id` from this node: its document leaves memory (every
    /// stream of it and its agent runner see it end), its files are removed (directory
    /// fsynced), and a tombstone `<id>.deleted` stays, so that a later sync from another
    /// peer that still holds it does not create it again ([`Self::open_as`]). The caller
    /// stops its agent first ([`crate::agent::Agents::stop_for_delete`]).
    pub async fn delete(&self, id: &str) -> Result<(), ErrorBody> {
        let id = id.to_string();
        self.call(|reply| Cmd::Delete { id, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }

    /// Ids of documents as they change durably (lagging receivers miss ids: rescan then).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Summaries of every stored conversation.
    pub async fn list(&self) -> Vec<ConvSummary> {
        self.call(|reply| Cmd::List { reply })
            .await
            .unwrap_or_default()
    }

    /// The peers connected on `sam/doc/1` to `id` that are known to hold every change of it:
    /// their last sync message announced exactly this node's heads. With `nudge`, every
    /// stream of the document also runs an ordinary sync round now, so followers that only
    /// received live batches (which they do not answer) announce their heads; ask again a
    /// moment later to see them.
    pub async fn peers_in_sync(
        &self,
        id: &str,
        nudge: bool,
    ) -> Result<Vec<sam_protocol::NodeId>, ErrorBody> {
        let id = id.to_string();
        self.call(|reply| Cmd::InSync { id, nudge, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
}

/// Work answered only after the batch's flush.
enum After {
    Generate {
        id: String,
        peer: u64,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Durable {
        id: String,
        reply: oneshot::Sender<Result<(), ErrorBody>>,
    },
}

/// What a peer may change of a conversation's node-controlled fields through sync
/// (`sam_crdt::guard`): the node decides, peers propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// May change the steering fields (`workspace`, `agent`, `agent_cmd`, `policy`,
    /// `acp_session`, `hosts`, `served_by`): the node's owner and unscoped collaborators
    /// (never a scoped grant, whatever its role).
    pub steer: bool,
    /// Who the peer is, for the refusal ("a collaborator scoped to conversation X").
    pub who: String,
}

impl Rights {
    /// The rights of `grant`.
    pub fn of(grant: &sam_protocol::Grant) -> Self {
        use sam_protocol::capability::Role;
        // Unscoped only: an `owner` delegated on one conversation or workspace holds that,
        // not the node, and must not point its conversation elsewhere.
        let steer = grant.role >= Role::Collaborator && grant.scope.is_none();
        let who = match &grant.scope {
            Some(scope) => format!("a {} scoped to {scope}", grant.role),
            None => format!("an unscoped {}", grant.role),
        };
        Self { steer, who }
    }

    /// The decision for one received change to guarded fields of the document held as `id`.
    fn check(&self, id: &str, c: &sam_crdt::GuardedChange) -> Result<(), String> {
        let fields = c
            .changed
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if c.touches_identity() {
            return Err(format!(
                "refused: {fields} of conversation {id} cannot change (rolled back)"
            ));
        }
        if c.touches_steering() && !self.steer {
            return Err(format!(
                "refused: {} may not change {fields} of conversation {id}; only the node's \
                 owner or an unscoped collaborator may (your changes were rolled back)",
                self.who
            ));
        }
        Ok(())
    }
}

struct Entry {
    /// The peer without steering rights whose changes wait in the document's queue for
    /// dependencies: only its own messages may complete them; before any other peer's
    /// message is applied, or a message generated for another peer, they are dropped (the
    /// peer sends them again in a later sync if it still means them).
    tainted_by: Option<u64>,
    conv: Conversation,
    peers: HashMap<u64, SyncPeer>,
    watchers: HashMap<u64, Watcher>,
    version: watch::Sender<u64>,
    /// Stored on disk (false while a new document is being received).
    stored: bool,
    dirty: bool,
    live: broadcast::Sender<Live>,
    /// Heads at the previous live batch.
    live_heads: Vec<ChangeHash>,
}

impl Entry {
    fn new(mut conv: Conversation, stored: bool, dirty: bool) -> Self {
        let live_heads = if stored && !dirty {
            conv.heads()
        } else {
            Vec::new()
        };
        Self {
            tainted_by: None,
            conv,
            peers: HashMap::new(),
            watchers: HashMap::new(),
            version: watch::channel(0).0,
            stored,
            dirty,
            live: broadcast::channel(LIVE_BACKLOG).0,
            live_heads,
        }
    }

    /// Drops changes queued for dependencies by a restricted peer other than `peer`.
    fn drop_queue_unless_from(&mut self, peer: u64) {
        if let Some(t) = self.tainted_by
            && t != peer
        {
            if let Err(e) = self.conv.drop_queued_changes() {
                error!(error = %e, "cannot drop a restricted peer's queued changes");
            }
            self.tainted_by = None;
        }
    }

    /// Sends the batch just made durable to the followers.
    fn publish(&mut self, was_stored: bool) {
        let heads = self.conv.heads();
        if heads == self.live_heads {
            return;
        }
        if self.live.receiver_count() > 0 {
            let msg = if was_stored && !self.live_heads.is_empty() {
                sam_crdt::live_message(&mut self.conv, &self.live_heads)
            } else {
                None
            };
            let _ = self.live.send(match msg {
                Some(m) => Live::Changes(Arc::new(m)),
                None => Live::Resync,
            });
        }
        self.live_heads = heads;
    }
}

struct Actor {
    store: DocStore,
    docs: HashMap<String, Entry>,
    changed: tokio::sync::broadcast::Sender<String>,
}

fn not_found(id: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotFound,
        format!("no conversation {id} on this node"),
    )
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut after = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut cmd = Some(first);
            let mut handled = 0;
            while let Some(c) = cmd.take() {
                self.handle(c, &mut after);
                handled += 1;
                if handled < BATCH {
                    cmd = rx.try_recv().ok();
                }
            }
            let failed = self.flush();
            for a in after.drain(..) {
                match a {
                    After::Generate { id, peer, reply } => {
                        let _ = reply.send(self.generate(&id, peer));
                    }
                    After::Durable { id, reply } => {
                        let r = match failed.get(&id) {
                            Some(e) => Err(ErrorBody::new(
                                ErrorCode::Internal,
                                format!("conversation {id} could not be saved: {e}"),
                            )),
                            None => Ok(()),
                        };
                        let _ = reply.send(r);
                    }
                }
            }
        }
        self.flush();
    }

    fn entry(&mut self, id: &str) -> Result<&mut Entry, ErrorBody> {
        if !self.docs.contains_key(id) {
            sam_crdt::validate_doc_id(id)
                .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
            if !self.store.contains(id).unwrap_or(false) {
                return Err(not_found(id));
            }
            let conv = self.store.load(id).map_err(|e| {
                ErrorBody::new(ErrorCode::Internal, format!("conversation {id}: {e}"))
            })?;
            self.docs
                .insert(id.to_string(), Entry::new(conv, true, false));
        }
        self.docs.get_mut(id).ok_or_else(|| not_found(id))
    }

    fn handle(&mut self, cmd: Cmd, after: &mut Vec<After>) {
        match cmd {
            Cmd::Open {
                id,
                create,
                revive,
                watcher,
                reply,
            } => {
                let refused = create && !revive && self.deleted(&id);
                let r = match self.entry(&id) {
                    Ok(e) => {
                        if let Some((peer, w)) = watcher {
                            e.watchers.insert(peer, w);
                        }
                        Ok(opened(e))
                    }
                    Err(e) if e.code == ErrorCode::NotFound && refused => Err(ErrorBody::new(
                        ErrorCode::Conflict,
                        format!(
                            "conversation {id} was deleted from this node by its owner; only the owner may bring it back"
                        ),
                    )),
                    Err(e) if e.code == ErrorCode::NotFound && create => {
                        let entry = Entry::new(Conversation::new_replica(), false, false);
                        let o = opened(&entry);
                        self.docs.insert(id, entry);
                        Ok(o)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Cmd::Receive {
                id,
                peer,
                bytes,
                rights,
                reply,
            } => {
                let r = self.entry(&id).and_then(|e| {
                    // Changes a restricted peer left waiting for dependencies are its own
                    // business: another peer's message never completes them (they would be
                    // checked under that peer's rights), so they are dropped first.
                    e.drop_queue_unless_from(peer);
                    let sync = e.peers.entry(peer).or_default();
                    let before = e.conv.heads();
                    // A document still arriving (not stored yet; only unscoped collaborators
                    // may send one) may take any shape on the way — a fork's history names its
                    // parent's id until its last change — and is stored only under the id it
                    // was opened as (`DocStore::append_as`).
                    let stored = e.stored;
                    let guard = |c: &sam_crdt::GuardedChange| {
                        if stored { rights.check(&id, c) } else { Ok(()) }
                    };
                    let res = sync.receive_guarded(&mut e.conv, &bytes, &guard);
                    e.tainted_by = (e.conv.has_queued_changes() && !rights.steer).then_some(peer);
                    res.map_err(|err| match err {
                        sam_crdt::CrdtError::Forbidden(why) => {
                            ErrorBody::new(ErrorCode::Forbidden, why)
                        }
                        err => {
                            ErrorBody::new(ErrorCode::BadRequest, format!("sync rejected: {err}"))
                        }
                    })?;
                    if e.conv.heads() != before {
                        e.dirty = true;
                    }
                    Ok(())
                });
                let _ = reply.send(r);
            }
            Cmd::Generate { id, peer, reply } => after.push(After::Generate { id, peer, reply }),
            Cmd::Leave { id, peer } => {
                if let Some(e) = self.docs.get_mut(&id) {
                    e.peers.remove(&peer);
                    e.watchers.remove(&peer);
                    if !e.stored && e.peers.is_empty() {
                        self.docs.remove(&id);
                    }
                }
            }
            Cmd::Mutate { id, f, reply } => match self.entry(&id) {
                Ok(e) => {
                    f(&mut e.conv);
                    e.dirty = true;
                    after.push(After::Durable { id, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Insert { conv, reply } => {
                let id = conv.id();
                if self.docs.contains_key(&id) || self.store.contains(&id).unwrap_or(false) {
                    let _ = reply.send(Err(ErrorBody::new(
                        ErrorCode::Conflict,
                        format!("conversation {id} already exists"),
                    )));
                } else {
                    self.docs.insert(id.clone(), Entry::new(*conv, true, true));
                    after.push(After::Durable { id, reply });
                }
            }
            Cmd::Heads { id, reply } => {
                let r = self.entry(&id).and_then(|e| {
                    if e.stored {
                        Ok(e.conv.heads())
                    } else {
                        Err(not_found(&id))
                    }
                });
                let _ = reply.send(r);
            }
            Cmd::Delete { id, reply } => {
                let _ = reply.send(self.delete(&id));
            }
            Cmd::Read { id, f, reply } => match self.entry(&id) {
                Ok(e) if !e.conv.is_empty() => {
                    f(&mut e.conv);
                    let _ = reply.send(Ok(()));
                }
                Ok(_) => {
                    let _ = reply.send(Err(not_found(&id)));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::InSync { id, nudge, reply } => {
                let r = self.entry(&id).map(|e| {
                    let mut ours = e.conv.heads();
                    ours.sort();
                    let mut peers: Vec<sam_protocol::NodeId> = e
                        .peers
                        .iter()
                        .filter(|(_, s)| {
                            let mut h = s.shared_heads().to_vec();
                            h.sort();
                            !ours.is_empty() && h == ours
                        })
                        .filter_map(|(p, _)| e.watchers.get(p).map(|w| w.peer))
                        .collect();
                    peers.sort();
                    peers.dedup();
                    if nudge {
                        let _ = e.live.send(Live::Resync);
                    }
                    peers
                });
                let _ = reply.send(r);
            }
            Cmd::List { reply } => {
                let ids = self.store.list().unwrap_or_default();
                let mut out = Vec::new();
                for id in ids {
                    match self.entry(&id) {
                        Ok(e) => {
                            let mut s = summary(&id, &e.conv);
                            s.watchers = e.watchers.values().cloned().collect();
                            s.watchers.sort_by_key(|w| (w.since, w.peer));
                            out.push(s)
                        }
                        Err(err) => warn!(%id, %err, "cannot list conversation"),
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    fn tombstone(&self, id: &str) -> std::path::PathBuf {
        self.store.dir().join(format!("{id}.deleted"))
    }

    /// Whether the owner deleted `id` (a valid id) and nobody with the owner's say brought it
    /// back.
    fn deleted(&self, id: &str) -> bool {
        sam_crdt::validate_doc_id(id).is_ok() && self.tombstone(id).exists()
    }

    fn delete(&mut self, id: &str) -> Result<(), ErrorBody> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("cannot delete conversation {id}: {what}: {e}"),
            )
        };
        sam_crdt::validate_doc_id(id)
            .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
        let in_store = self
            .store
            .contains(id)
            .map_err(|e| internal("look up", &e))?;
        if !in_store && !self.docs.get(id).is_some_and(|e| e.stored) {
            return Err(not_found(id));
        }
        // Out of memory first: its streams and runner see the document end, and nothing of
        // this batch is written for it any more.
        self.docs.remove(id);
        // The tombstone before the files: a crash between the two leaves the document
        // listed (the owner deletes it again), never a document a stale peer may re-create.
        let tomb = self.tombstone(id);
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tomb)
            .and_then(|f| f.sync_all())
            .map_err(|e| internal("write its tombstone", &e))?;
        match self.store.remove(id) {
            Ok(()) | Err(sam_crdt::CrdtError::NotFound(_)) => {}
            Err(e) => return Err(internal("remove its files", &e)),
        }
        // What the store may have left beside them: a snapshot being written, files moved
        // aside as damaged or torn.
        let dir = self.store.dir().to_path_buf();
        let prefixes = [format!("{id}.am."), format!("{id}.log.")];
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    std::fs::remove_file(entry.path())
                        .map_err(|e| internal(&format!("remove {name}"), &e))?;
                }
            }
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| internal("fsync the store directory", &e))?;
        info!(%id, "conversation deleted by the owner");
        Ok(())
    }

    fn generate(&mut self, id: &str, peer: u64) -> Option<Vec<u8>> {
        let e = self.docs.get_mut(id)?;
        e.drop_queue_unless_from(peer);
        e.peers.entry(peer).or_default().generate(&mut e.conv)
    }

    /// Appends every changed document; returns the ones that could not be saved.
    fn flush(&mut self) -> HashMap<String, String> {
        let mut failed = HashMap::new();
        for (id, e) in self.docs.iter_mut().filter(|(_, e)| e.dirty) {
            if e.conv.is_empty() {
                continue;
            }
            if !e.stored {
                if e.conv.id() != *id {
                    warn!(%id, got = %e.conv.id(), "new document names another id; not stored");
                    continue;
                }
                info!(%id, "new conversation received");
            }
            let revived = !e.stored;
            let was_stored = e.stored;
            // Filed under the id it is held as, never the one its content names (the
            // store refuses a mismatch; the sync guard already rolled such changes back).
            match self.store.append_as(id, &mut e.conv) {
                Ok(_) => {
                    if revived {
                        // Brought back by the owner (only the owner may open it for creation).
                        let _ =
                            std::fs::remove_file(self.store.dir().join(format!("{id}.deleted")));
                    }
                    e.stored = true;
                    e.dirty = false;
                    e.publish(was_stored);
                    e.version.send_modify(|v| *v += 1);
                    let _ = self.changed.send(id.clone());
                }
                Err(err) => {
                    error!(%id, %err, "cannot persist conversation; changes kept in memory");
                    failed.insert(id.clone(), err.to_string());
                }
            }
        }
        failed
    }
}

fn opened(e: &Entry) -> Opened {
    Opened {
        version: e.version.subscribe(),
        live: e.live.subscribe(),
        workspace: if e.conv.is_empty() {
            String::new()
        } else {
            e.conv.workspace().id
        },
        pending: !e.stored,
    }
}

fn summary(id: &str, conv: &Conversation) -> ConvSummary {
    let messages = conv.messages();
    ConvSummary {
        id: id.to_string(),
        title: conv.title(),
        agent: conv.agent(),
        workspace: conv.workspace().id,
        parent: conv.parent().map(|p| p.conversation),
        messages: messages.len() as u32,
        updated_at: messages
            .last()
            .map(|m| m.created_at)
            .unwrap_or_else(|| conv.created_at()),
        watchers: Vec::new(),
    }
}
