//! [`Conversation`]: the typed API over one conversation document.

mod agent;
mod apply;
mod fork;
mod hosts;
mod messages;
mod validate;

use std::collections::HashMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT};

use crate::access;
use crate::ids::{self, node_id_bytes};
use crate::schema::{NewConversation, ParentRef, SCHEMA_VERSION, WorkspaceRef};
use crate::{CrdtError, MessageId, SchemaError};

/// Streamed text goes on in a new Text segment (`more`) once the last one holds this many
/// characters: Automerge applies a remote change by walking the whole object it touches,
/// so bounded segments keep a follower's cost per live batch flat however long the answer.
pub const SEGMENT_CHARS: usize = 2048;

/// Where a message lives in the document (ObjIds are stable for the life of the document).
#[derive(Debug, Clone)]
pub(crate) struct MsgEntry {
    pub(crate) obj: ObjId,
    pub(crate) text: ObjId,
}

/// A conversation document: an [`automerge::AutoCommit`] plus an index of its messages.
///
/// Every mutation is one committed Automerge change carrying a message (e.g. `"chunk"`) and the
/// time in **milliseconds** since the Unix epoch. The Automerge actor id is the author's 32-byte
/// NodeId followed by 16 random bytes chosen once per `Conversation` value (per process
/// session), so changes are attributable to a NodeId while two processes holding the same key
/// never share an actor id (which would corrupt the document).
pub struct Conversation {
    pub(crate) doc: AutoCommit,
    pub(crate) index: HashMap<MessageId, MsgEntry>,
    /// Message map and Text object → message map, for the objects in `index` (ObjIds are
    /// unique for the life of a document, so entries never become wrong, only unused).
    pub(crate) by_obj: HashMap<ObjId, ObjId>,
    pub(crate) messages_obj: Option<ObjId>,
    session: [u8; 16],
    actor_author: Option<String>,
    clock: fn() -> i64,
    /// True while the open Automerge transaction or `chunks` holds streamed chunks that are not
    /// committed yet.
    pending: bool,
    /// Streamed chunks not yet spliced into the document, per Text object in first-append
    /// order: each is spliced at the end of its Text as one `splice_text` when the change is
    /// committed ([`Self::commit_pending`]). This gives exactly the ops that one splice per
    /// chunk gives (consecutive insertions at the end, all in the same change) for a fraction
    /// of the cost: Automerge's per-splice overhead dominates for short chunks.
    chunks: Vec<(ObjId, String)>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("id", &self.id())
            .field("messages", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Conversation {
    fn from_doc(doc: AutoCommit) -> Self {
        Self {
            doc,
            index: HashMap::new(),
            by_obj: HashMap::new(),
            messages_obj: None,
            session: rand::random(),
            actor_author: None,
            clock: crate::now_ms,
            pending: false,
            chunks: Vec::new(),
        }
    }

    /// Creates a new conversation in a single change authored by `author` (NodeId hex).
    pub fn create(new: NewConversation, author: &str) -> Result<Self, CrdtError> {
        ids::validate_doc_id(&new.id)?;
        ids::validate_node_id(&new.workspace_node)?;
        let mut c = Self::from_doc(AutoCommit::new());
        c.set_author(author)?;
        let d = &mut c.doc;
        d.put(ROOT, "schema", SCHEMA_VERSION)?;
        d.put(ROOT, "id", new.id.as_str())?;
        let title = d.put_object(ROOT, "title", ObjType::Text)?;
        d.splice_text(&title, 0, 0, &new.title)?;
        d.put(ROOT, "created_at", new.created_at)?;
        d.put(ROOT, "agent", new.agent.as_str())?;
        let ws = d.put_object(ROOT, "workspace", ObjType::Map)?;
        d.put(&ws, "node", new.workspace_node.as_str())?;
        d.put(&ws, "id", new.workspace_id.as_str())?;
        d.put(ROOT, "parent", automerge::ScalarValue::Null)?;
        let msgs = d.put_object(ROOT, "messages", ObjType::List)?;
        d.put_object(ROOT, "served_by", ObjType::List)?;
        c.messages_obj = Some(msgs);
        c.commit("create");
        Ok(c)
    }

    /// An empty replica, to be filled by [`crate::SyncPeer::receive`] (a peer that does not have
    /// the document yet). Accessors return empty values and mutations fail with
    /// [`CrdtError::EmptyReplica`] until the document arrives.
    pub fn new_replica() -> Self {
        Self::from_doc(AutoCommit::new())
    }

    /// Loads a document saved with [`Self::save`] (or any concatenation of saves and incremental
    /// saves) and checks the whole schema. Never panics on arbitrary bytes.
    pub fn load(bytes: &[u8]) -> Result<Self, CrdtError> {
        let doc = AutoCommit::load(bytes)?;
        Self::from_automerge(doc)
    }

    /// Wraps an already loaded Automerge document, checking the whole schema.
    pub fn from_automerge(doc: AutoCommit) -> Result<Self, CrdtError> {
        let mut c = Self::from_doc(doc);
        if c.doc.get_heads().is_empty() {
            return Err(SchemaError::new("schema", "missing (the document is empty)").into());
        }
        c.revalidate_all()?;
        Ok(c)
    }

    /// Replaces the clock used for change times and `created_at` (tests, simulations).
    pub fn set_clock(&mut self, clock: fn() -> i64) {
        self.clock = clock;
    }

    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    /// True while this is a replica that has not received the document yet.
    pub fn is_empty(&self) -> bool {
        self.messages_obj.is_none()
    }

    /// The whole document, compressed.
    pub fn save(&mut self) -> Vec<u8> {
        self.commit_pending();
        self.doc.save()
    }

    /// The changes since the previous `save`/`save_incremental` of this value.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.commit_pending();
        self.doc.save_incremental()
    }

    /// The changes that are not ancestors of `heads`, for [`Self::load_incremental`].
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        self.commit_pending();
        self.doc.save_after(heads)
    }

    /// Applies a (possibly incremental) save from a trusted source (our own log), then checks the
    /// whole schema. On a schema error the document is rolled back.
    pub fn load_incremental(&mut self, bytes: &[u8]) -> Result<(), CrdtError> {
        self.commit_pending();
        let before = self.doc.get_heads();
        if let Err(e) = self.doc.load_incremental(bytes) {
            self.rollback_to(&before)?;
            return Err(e.into());
        }
        if let Err(e) = self.revalidate_all() {
            self.rollback_to(&before)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.commit_pending();
        self.doc.get_heads()
    }

    /// Merges all changes of `other` into `self`; the result is checked like a sync message and
    /// rolled back if it breaks the schema.
    pub fn merge(&mut self, other: &mut Conversation) -> Result<(), CrdtError> {
        self.commit_pending();
        other.commit_pending();
        let before = self.doc.get_heads();
        if let Err(e) = self.doc.merge(&mut other.doc) {
            self.rollback_to(&before)?;
            return Err(e.into());
        }
        if let Err(e) = self.revalidate_all() {
            self.rollback_to(&before)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// The underlying Automerge document (read-only). Streamed chunks appended since the last
    /// commit point are buffered outside it: call [`Self::commit_pending`] first to see them.
    pub fn automerge(&self) -> &AutoCommit {
        &self.doc
    }

    /// Conversation id (empty on an empty replica).
    pub fn id(&self) -> String {
        access::req_str(&self.doc, &ROOT, "id", "").unwrap_or_default()
    }

    /// Title.
    pub fn title(&self) -> String {
        access::req_obj(&self.doc, &ROOT, "title", ObjType::Text, "")
            .and_then(|t| access::text(&self.doc, &t, "title"))
            .unwrap_or_default()
    }

    /// Agent name.
    pub fn agent(&self) -> String {
        access::req_str(&self.doc, &ROOT, "agent", "").unwrap_or_default()
    }

    /// Creation time, ms since the Unix epoch.
    pub fn created_at(&self) -> i64 {
        access::req_int(&self.doc, &ROOT, "created_at", "").unwrap_or_default()
    }

    /// The workspace the conversation runs in.
    pub fn workspace(&self) -> WorkspaceRef {
        let ws = access::req_obj(&self.doc, &ROOT, "workspace", ObjType::Map, "");
        let (node, id) = match ws {
            Ok(ws) => (
                access::req_str(&self.doc, &ws, "node", "").unwrap_or_default(),
                access::req_str(&self.doc, &ws, "id", "").unwrap_or_default(),
            ),
            Err(_) => Default::default(),
        };
        WorkspaceRef { node, id }
    }

    /// The parent of a fork, `None` for an original conversation.
    pub fn parent(&self) -> Option<ParentRef> {
        validate::read_parent(&self.doc).ok().flatten()
    }

    /// Replaces the title (a minimal Text splice).
    pub fn set_title(&mut self, author: &str, title: &str) -> Result<(), CrdtError> {
        self.mutate(author, "set_title", |c| {
            let t = access::req_obj(&c.doc, &ROOT, "title", ObjType::Text, "")?;
            c.doc.update_text(&t, title)?;
            Ok(())
        })
    }

    fn set_author(&mut self, author: &str) -> Result<(), CrdtError> {
        if self.actor_author.as_deref() == Some(author) {
            return Ok(());
        }
        let key = node_id_bytes(author).ok_or_else(|| {
            CrdtError::InvalidArgument(format!(
                "author {author:?} is not a NodeId (64 lowercase hex chars)"
            ))
        })?;
        let mut actor = Vec::with_capacity(48);
        actor.extend_from_slice(&key);
        actor.extend_from_slice(&self.session);
        self.doc.set_actor(ActorId::from(actor));
        self.actor_author = Some(author.to_owned());
        Ok(())
    }

    /// The NodeId (hex) encoded in an actor id written by this crate, if it is one.
    pub fn author_of_actor(actor: &ActorId) -> Option<String> {
        let b = actor.to_bytes();
        (b.len() == 48).then(|| ids::hex(&b[..32]))
    }

    /// Commits chunks appended by [`Self::append_chunk`] that are not in a change yet, as one
    /// change with message `"chunks"`. Called by every other mutation and by `heads`, `save*`,
    /// `merge`, `fork_at`, [`crate::SyncPeer`] and [`crate::DocStore::append`], so callers
    /// rarely need it.
    pub fn commit_pending(&mut self) {
        if self.pending {
            self.pending = false;
            self.flush_chunks();
            self.commit("chunks");
        }
    }

    /// Splices the buffered chunks into the (open) transaction.
    fn flush_chunks(&mut self) {
        for (text, chunk) in std::mem::take(&mut self.chunks) {
            let end = automerge::ReadDoc::length(&self.doc, &text);
            let target = if end >= SEGMENT_CHARS {
                self.new_segment(&text).unwrap_or(text)
            } else {
                text
            };
            let end = automerge::ReadDoc::length(&self.doc, &target);
            if let Err(e) = self.doc.splice_text(&target, end, 0, &chunk) {
                // The Text objects of indexed messages are never deleted, so this cannot
                // happen; do not lose the chunk silently.
                tracing::error!("dropping {} bytes of streamed text: {e}", chunk.len());
            }
        }
    }

    /// Starts a new Text segment in the `more` list of the message whose last segment is
    /// `tail`, and makes it the message's tail. `None` for a message without `more`
    /// (written before segments existed: it keeps one Text).
    fn new_segment(&mut self, tail: &ObjId) -> Option<ObjId> {
        use automerge::ReadDoc;
        let msg = self.by_obj.get(tail)?.clone();
        let (_, more) = self.doc.get(&msg, "more").ok()??;
        let at = self.doc.length(&more);
        let seg = self.doc.insert_object(&more, at, ObjType::Text).ok()?;
        self.by_obj.insert(seg.clone(), msg.clone());
        if let Some(e) = self.index.values_mut().find(|e| e.obj == msg) {
            e.text = seg.clone();
        }
        Some(seg)
    }

    /// Buffers `chunk` for the end of `text` (see the `chunks` field).
    pub(crate) fn push_chunk(&mut self, text: &ObjId, chunk: &str) {
        match self.chunks.iter_mut().rev().find(|(t, _)| t == text) {
            Some((_, s)) => s.push_str(chunk),
            None => self.chunks.push((text.clone(), chunk.to_owned())),
        }
        self.pending = true;
    }

    /// Chunks appended to `text` that are buffered and not in the document yet.
    pub(crate) fn buffered_chunks(&self, text: &ObjId) -> Option<&str> {
        self.chunks
            .iter()
            .find(|(t, _)| t == text)
            .map(|(_, s)| s.as_str())
    }

    pub(crate) fn set_author_for_chunks(&mut self, author: &str) -> Result<(), CrdtError> {
        if self.actor_author.as_deref() != Some(author) {
            self.commit_pending();
            self.set_author(author)?;
        }
        Ok(())
    }

    fn commit(&mut self, message: &str) {
        let time = self.now();
        self.doc.commit_with(
            CommitOptions::default()
                .with_message(message)
                .with_time(time),
        );
    }

    /// Runs `f` as one change by `author`; on error nothing is committed.
    pub(crate) fn mutate<T>(
        &mut self,
        author: &str,
        message: &str,
        f: impl FnOnce(&mut Self) -> Result<T, CrdtError>,
    ) -> Result<T, CrdtError> {
        if self.is_empty() {
            return Err(CrdtError::EmptyReplica);
        }
        self.commit_pending();
        self.set_author(author)?;
        match f(self) {
            Ok(v) => {
                self.commit(message);
                Ok(v)
            }
            Err(e) => {
                self.doc.rollback();
                Err(e)
            }
        }
    }

    /// Whether changes received from peers wait for dependencies that have not arrived yet
    /// (they apply, unchecked by whoever receives the missing ones, once those arrive).
    pub fn has_queued_changes(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    /// Forgets changes received from peers that still wait for dependencies (O(document)
    /// when there are any; nothing otherwise).
    pub fn drop_queued_changes(&mut self) -> Result<(), CrdtError> {
        if !self.has_queued_changes() {
            return Ok(());
        }
        let heads = self.heads();
        self.rollback_to(&heads)
    }

    /// Replaces the document by its state at `heads` (drops everything newer, including changes
    /// queued for missing dependencies) and rebuilds the index.
    pub(crate) fn rollback_to(&mut self, heads: &[ChangeHash]) -> Result<(), CrdtError> {
        self.commit_pending();
        let actor = self.doc.get_actor().clone();
        let mut doc = if heads.is_empty() {
            AutoCommit::new()
        } else {
            self.doc.fork_at(heads)?
        };
        doc.set_actor(actor);
        self.doc = doc;
        if let Err(e) = self.revalidate_all() {
            // The state before was valid, so this cannot happen; leave an empty index rather
            // than a wrong one.
            tracing::error!("document invalid after rollback: {e}");
            self.index.clear();
        }
        Ok(())
    }

    /// Adds a message to the index.
    pub(crate) fn index_insert(&mut self, id: MessageId, entry: MsgEntry) {
        self.by_obj.insert(entry.obj.clone(), entry.obj.clone());
        self.by_obj.insert(entry.text.clone(), entry.obj.clone());
        self.index.insert(id, entry);
    }

    /// Checks the whole document and rebuilds the message index.
    pub(crate) fn revalidate_all(&mut self) -> Result<(), SchemaError> {
        if self.doc.get_heads().is_empty() {
            self.index.clear();
            self.messages_obj = None;
            return Ok(());
        }
        let msgs = validate::validate_header(&self.doc)?;
        let index = validate::validate_messages(&self.doc, &msgs)?;
        self.by_obj.clear();
        for e in index.values() {
            self.by_obj.insert(e.obj.clone(), e.obj.clone());
            self.by_obj.insert(e.text.clone(), e.obj.clone());
        }
        self.index = index;
        self.messages_obj = Some(msgs);
        Ok(())
    }
}
