//! Local replicas of conversation documents and syncing them with a node over
//! `sam/doc/1`.
//!
//! Every replica lives in `$SAM_HOME/docs` (snapshot + fsynced change log), so
//! history, `sam log` and `sam prompt` work with the node down; a prompt written
//! offline is a `queued` message that reaches the node at the next sync.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use iroh::Endpoint;
use iroh::endpoint::{RecvStream, SendStream};
use sam_crdt::{Conversation, DocStore, FsyncPolicy, StoreOptions, SyncPeer};
use sam_protocol::ctl::ErrorBody;
use sam_protocol::doc::{DocFrame, DocOpen, MAX_SYNC_FRAME};
use sam_protocol::stream::OpenReply;
use sam_protocol::{Ticket, alpn};
use tokio::sync::mpsc;

use crate::conn::ConnectError;
use crate::paths::ClientPaths;
use sam_protocol::wire::{WireError, read_frame, write_frame};

/// The local document store.
pub struct Replicas {
    store: DocStore,
}

impl Replicas {
    pub fn open(paths: &ClientPaths) -> Result<Self> {
        let opts = StoreOptions {
            fsync: FsyncPolicy::Always,
            ..StoreOptions::default()
        };
        let store = DocStore::open(paths.docs(), opts)
            .with_context(|| format!("open {}", paths.docs().display()))?;
        Ok(Self { store })
    }

    /// Ids of every local replica.
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self.store.list()?)
    }

    pub fn load(&mut self, id: &str) -> Result<Conversation> {
        self.store
            .load(id)
            .with_context(|| format!("load local replica of {id}"))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.store.contains(id).unwrap_or(false)
    }

    /// Appends what changed since the last save (fsynced).
    pub fn save(&mut self, conv: &mut Conversation) -> Result<()> {
        self.store
            .append(conv)
            .with_context(|| format!("save local replica of {}", conv.id()))?;
        Ok(())
    }

    /// A full id from a unique prefix.
    pub fn resolve(&self, prefix: &str) -> Result<String> {
        let ids = self.ids()?;
        if ids.iter().any(|i| i == prefix) {
            return Ok(prefix.to_string());
        }
        let hits: Vec<_> = ids.iter().filter(|i| i.starts_with(prefix)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no conversation {prefix:?} here: `sam convs ls` lists them"),
            _ => bail!(
                "{prefix:?} matches {} conversations: give more of the id",
                hits.len()
            ),
        }
    }
}

/// An open `sam/doc/1` stream for one document.
pub struct DocStream {
    /// The conversation this stream was opened for: a document that names itself otherwise
    /// is never persisted (a peer cannot make us file its document over another one).
    id: String,
    send: SendStream,
    inbound: Inbound,
    /// Keeps the connection open.
    _conn: iroh::endpoint::Connection,
}

/// The frames of a doc stream, read ahead by a task of their own (so a half-read frame is
/// never lost to a `select!`); the task stops when this is dropped.
pub(crate) struct Inbound {
    rx: mpsc::Receiver<Result<DocFrame, WireError>>,
    /// A frame read while merging live batches, handed out next.
    peeked: Option<Result<DocFrame, WireError>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Inbound {
    /// Starts reading `recv` (at most [`INBOUND_FRAMES`] frames ahead).
    pub(crate) fn spawn(mut recv: RecvStream) -> Self {
        let (tx, rx) = mpsc::channel(INBOUND_FRAMES);
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame::<DocFrame>(&mut recv, MAX_SYNC_FRAME).await;
                let stop = frame.is_err();
                if tx.send(frame).await.is_err() || stop {
                    break;
                }
            }
        });
        Self {
            rx,
            peeked: None,
            reader,
        }
    }

    /// The next frame; `None` once the reader has stopped. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<DocFrame, WireError>> {
        match self.peeked.take() {
            Some(frame) => Some(frame),
            None => self.rx.recv().await,
        }
    }

    /// The live batches right behind one just received that are already here (so all of
    /// them are applied with one walk of the document), at most [`MAX_MERGED`] in all; a
    /// frame of another kind is kept for the next [`Inbound::recv`].
    pub(crate) fn more_lives(&mut self) -> Vec<Vec<u8>> {
        let mut more = Vec::new();
        while more.len() + 1 < MAX_MERGED {
            match self.rx.try_recv() {
                Ok(Ok(DocFrame::Live(b))) => more.push(b),
                Ok(other) => {
                    self.peeked = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        more
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens a sync stream for `id` on the ticket's node.
pub async fn open_stream(
    ep: &Endpoint,
    ticket: &Ticket,
    id: &str,
    create: bool,
) -> Result<DocStream, ConnectError> {
    let (conn, _welcome) = crate::conn::connect(ep, ticket, alpn::DOC).await?;
    let proto = |e: &dyn std::fmt::Display| ConnectError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| proto(&e))?;
    let open = DocOpen {
        conversation: id.to_string(),
        create,
    };
    write_frame(&mut send, &open).await.map_err(|e| proto(&e))?;
    match read_frame::<OpenReply>(&mut recv, 64 * 1024).await {
        Ok(OpenReply::Ok) => {}
        Ok(OpenReply::Error(e)) => return Err(ConnectError::Remote(e)),
        Err(e) => return Err(proto(&e)),
    }
    Ok(DocStream::new(id, conn, send, recv))
}

impl DocStream {
    fn new(id: &str, conn: iroh::endpoint::Connection, send: SendStream, recv: RecvStream) -> Self {
        Self {
            id: id.to_string(),
            send,
            inbound: Inbound::spawn(recv),
            _conn: conn,
        }
    }

    async fn push(&mut self, sync: &mut SyncPeer, conv: &mut Conversation) -> Result<()> {
        while let Some(msg) = sync.generate(conv) {
            if let Err(e) = write_frame(&mut self.send, &DocFrame::Sync(msg)).await {
                // The node stopped reading: it usually said why first.
                return Err(self
                    .reason()
                    .await
                    .unwrap_or_else(|| anyhow::Error::new(e).context("send sync message")));
            }
        }
        Ok(())
    }

    /// The node's error frame, if it sent one before closing.
    async fn reason(&mut self) -> Option<anyhow::Error> {
        let wait = Duration::from_secs(2);
        while let Ok(Some(frame)) = tokio::time::timeout(wait, self.inbound.recv()).await {
            if let Ok(DocFrame::Error(e)) = frame {
                return Some(anyhow::Error::new(e).context("the node stopped syncing"));
            }
            if frame.is_err() {
                return None;
            }
        }
        None
    }

    /// The next message; consecutive live batches already here come as one (applied with
    /// one walk of the document instead of one each).
    async fn next(&mut self) -> Result<Option<Incoming>> {
        match self.inbound.recv().await {
            Some(Ok(DocFrame::Live(b))) => {
                let mut lives = vec![b];
                lives.extend(self.inbound.more_lives());
                Ok(Some(Incoming::Live(lives)))
            }
            Some(Ok(DocFrame::Sync(b))) => Ok(Some(Incoming::Sync(b))),
            Some(Ok(DocFrame::Error(e))) => {
                Err(anyhow::Error::new(e).context("the node stopped syncing"))
            }
            Some(Err(WireError::Closed)) | None => Ok(None),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("bad frame from the node")),
        }
    }

    /// Syncs until both sides have the same heads (or `timeout`).
    pub async fn sync_once(
        &mut self,
        conv: &mut Conversation,
        mut persist: impl FnMut(&mut Conversation) -> Result<()>,
        timeout: Duration,
    ) -> Result<()> {
        let mut sync = SyncPeer::new();
        let mut theirs: Option<Vec<sam_crdt::ChangeHash>> = None;
        let work = async {
            loop {
                self.push(&mut sync, conv).await?;
                if let Some(t) = &theirs
                    && in_sync(&sync, conv, t)
                {
                    return self.check_id(conv);
                }
                let Some(frame) = self.next().await? else {
                    bail!("the node closed the stream before the sync finished");
                };
                theirs = frame.heads();
                frame.apply(&mut sync, conv)?;
                if self.names_itself(conv) {
                    persist(conv)?;
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .context("sync with the node timed out")?
    }

    /// Syncs and then follows live changes until the stream ends; `on_change` sees
    /// the document after every applied message.
    pub async fn follow(
        &mut self,
        conv: &mut Conversation,
        mut persist: impl FnMut(&mut Conversation) -> Result<()>,
        mut on_change: impl FnMut(&mut Conversation),
    ) -> Result<()> {
        let mut sync = SyncPeer::new();
        let mut push = true;
        loop {
            if push {
                self.push(&mut sync, conv).await?;
            }
            let Some(frame) = self.next().await? else {
                return Ok(());
            };
            // Live batches need no answer unless one was missed.
            push = !frame.apply(&mut sync, conv)? || matches!(frame, Incoming::Sync(_));
            if self.names_itself(conv) {
                persist(conv)?;
                on_change(conv);
            }
        }
    }

    /// Whether `conv` is (so far) the document this stream is for. A new replica may name
    /// another id while a fork's history arrives (its last change sets the id); it is only
    /// persisted once it names this one.
    fn names_itself(&self, conv: &Conversation) -> bool {
        conv.is_empty() || conv.id() == self.id
    }

    fn check_id(&self, conv: &Conversation) -> Result<()> {
        if self.names_itself(conv) {
            Ok(())
        } else {
            bail!(
                "the peer sent a document that names itself {:?} for conversation {}: not kept",
                conv.id(),
                self.id
            )
        }
    }

    /// Tells the node why we stop.
    pub async fn close(mut self, error: Option<ErrorBody>) {
        if let Some(e) = error {
            let _ = write_frame(&mut self.send, &DocFrame::Error(e)).await;
        }
        let _ = self.send.finish();
    }
}

/// A message from the node.
pub enum Incoming {
    /// An ordinary sync message: answer it.
    Sync(Vec<u8>),
    /// Consecutive live batches (see [`DocFrame::Live`]): no answer needed.
    Live(Vec<Vec<u8>>),
}

/// Frames read ahead from the node (each at most `MAX_SYNC_FRAME`).
const INBOUND_FRAMES: usize = 16;
/// Most live batches merged into one apply.
const MAX_MERGED: usize = 64;

impl Incoming {
    /// The heads the node announced last in this message.
    fn heads(&self) -> Option<Vec<sam_crdt::ChangeHash>> {
        match self {
            Self::Sync(b) => message_heads(b),
            Self::Live(b) => b.last().and_then(|b| message_heads(b)),
        }
    }

    /// Applies the message; `false` when a live batch found a gap (sync to repair it).
    pub fn apply(&self, sync: &mut SyncPeer, conv: &mut Conversation) -> Result<bool> {
        match self {
            Self::Sync(b) => sync
                .receive(conv, b)
                .map(|()| true)
                .context("apply the node's changes"),
            Self::Live(b) => sync
                .receive_live_batches(conv, b)
                .context("apply the node's live changes"),
        }
    }
}

/// Heads announced in a sync message.
fn message_heads(bytes: &[u8]) -> Option<Vec<sam_crdt::ChangeHash>> {
    automerge::sync::Message::decode(bytes)
        .ok()
        .map(|m| m.heads)
}

/// Both sides are known to hold the same changes: the node announced `theirs`, we
/// have exactly those heads, and the sync state agrees.
fn in_sync(sync: &SyncPeer, conv: &mut Conversation, theirs: &[sam_crdt::ChangeHash]) -> bool {
    let mut ours = conv.heads();
    ours.sort();
    let mut shared = sync.shared_heads().to_vec();
    shared.sort();
    let mut theirs = theirs.to_vec();
    theirs.sort();
    ours == shared && ours == theirs
}
