//! Conversation documents: the `sam/doc/1` stream header and the ctl requests about
//! conversations (wrapped in `Request::Conv`).
//!
//! On `sam/doc/1`, each bi stream syncs one document: the opener sends [`DocOpen`],
//! the node answers with an [`crate::stream::OpenReply`], then both sides exchange
//! Automerge sync messages, each as one raw frame (u32 BE length + bytes, at most
//! [`MAX_SYNC_FRAME`]). The node pushes new changes as they happen until the stream
//! or the connection closes.

use serde::{Deserialize, Serialize};

use crate::capability::Role;

/// Largest sync message accepted on the wire.
pub const MAX_SYNC_FRAME: usize = 16 * 1024 * 1024;
/// Largest sync message accepted from a peer that may only read the document: its
/// messages carry no changes (heads, needs and a bloom filter of what it has), so a
/// longer frame is refused from its header.
pub const MAX_READER_SYNC_FRAME: usize = 4 * 1024 * 1024;

/// First frame of a `sam/doc/1` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocOpen {
    pub conversation: String,
    /// The opener holds a new document (created or forked offline) that the node
    /// does not have yet; the node accepts it from a collaborator.
    pub create: bool,
}

/// Requests about conversations on `sam/ctl/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvRequest {
    /// The conversations this peer may read.
    List,
    /// Owner only (unscoped): the heads of conversation `id` on this node (a team
    /// provisioner checks that a member holds them before it wipes a released node).
    Heads { id: String },
    /// Owner only (unscoped): deletes conversation `id` from this node: its document, its
    /// files and queued prompts, its agent and the credentials sent for it. Refused while
    /// a turn runs unless `force`, which cancels the turn first. Open streams of it close;
    /// a later sync from another peer does not bring it back (only the owner may).
    Delete { id: String, force: bool },
}

impl ConvRequest {
    pub fn required_role(&self) -> Role {
        match self {
            ConvRequest::List => Role::Viewer,
            ConvRequest::Heads { .. } | ConvRequest::Delete { .. } => Role::Owner,
        }
    }
}

/// Answers to [`ConvRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvResponse {
    List(Vec<ConvSummary>),
    /// The heads (Automerge change hashes) of a conversation.
    Heads {
        id: String,
        heads: Vec<[u8; 32]>,
    },
    /// The conversation is gone from this node; `cancelled_turn`: the prompt whose turn
    /// `force` cancelled.
    Deleted {
        id: String,
        cancelled_turn: Option<String>,
    },
}

/// What a list shows of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSummary {
    pub id: String,
    pub title: String,
    pub agent: String,
    pub workspace: String,
    pub parent: Option<String>,
    pub messages: u32,
    /// Milliseconds since the epoch of the newest message (or creation).
    pub updated_at: i64,
    /// Who has this conversation open on the node now (presence).
    pub watchers: Vec<Watcher>,
}

/// A peer with a conversation open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watcher {
    pub peer: crate::identity::NodeId,
    pub role: Role,
    /// Unix seconds.
    pub since: u64,
}

/// One frame on a `sam/doc/1` stream after the open reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocFrame {
    /// An Automerge sync message.
    Sync(#[serde(with = "crate::bytes")] Vec<u8>),
    /// The sender stops syncing this document, and why.
    Error(crate::ctl::ErrorBody),
    /// Node → peer only: the changes of one durable batch, as an Automerge sync message
    /// (heads + one chunk per change, no `have`/`need`), encoded once and sent to every
    /// watcher. The receiver applies it without answering; if it lacks a dependency it falls
    /// back to ordinary sync messages, which repair any gap.
    Live(#[serde(with = "crate::bytes")] Vec<u8>),
}
