//! Error types.

use std::path::PathBuf;

/// A document that does not follow the conversation schema.
///
/// `path` names the offending field in JavaScript-like notation, e.g. `messages[3].text`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conversation schema violation at `{path}`: {problem}")]
pub struct SchemaError {
    /// Path of the offending field, e.g. `messages[3].status`.
    pub path: String,
    /// What is wrong with it, e.g. `expected a Text object, found a string`.
    pub problem: String,
}

impl SchemaError {
    pub(crate) fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum CrdtError {
    /// The document breaks the schema (see `docs/conversation-schema.md`).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Automerge rejected the bytes or an operation.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// The bytes are not an Automerge sync message.
    #[error("invalid sync message: {0}")]
    SyncDecode(String),
    /// The encoded sync state could not be decoded.
    #[error("invalid sync state: {0}")]
    SyncStateDecode(String),
    /// A sync message is larger than the configured cap.
    #[error("sync message of {size} bytes exceeds the limit of {limit} bytes")]
    SyncMessageTooLarge {
        /// Size of the received message.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A received sync message would have broken the schema; its changes were rolled back.
    #[error("rejected sync message from peer: {0}")]
    SyncRejected(SchemaError),
    /// A received sync message changed a field the sender may not change (see
    /// [`crate::guard`]); its changes were rolled back.
    #[error("{0}")]
    Forbidden(String),
    /// A document held under one id says it is another.
    #[error("the document held as conversation {expected} names itself {found:?}; not stored")]
    IdMismatch {
        /// The id it is held (and stored) under.
        expected: String,
        /// The id its `id` field holds.
        found: String,
    },
    /// A caller-supplied argument is invalid (bad id, unknown option, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No message with that id exists in the conversation.
    #[error("no message with id {0} in this conversation")]
    UnknownMessage(String),
    /// The message exists but is of the wrong kind for the operation.
    #[error("message {id} is a {actual} message, expected {expected}")]
    WrongRole {
        /// The message id.
        id: String,
        /// The role the operation needs.
        expected: &'static str,
        /// The role the message has.
        actual: String,
    },
    /// The permission request was already answered.
    #[error("permission {id} was already answered with option `{option}` by {by}")]
    AlreadyAnswered {
        /// The permission message id.
        id: String,
        /// The option chosen.
        option: String,
        /// NodeId (hex) of who answered.
        by: String,
    },
    /// The operation needs a document that has been received (this replica is still empty).
    #[error("this replica has not received the conversation yet")]
    EmptyReplica,
    /// A file of the document store is corrupt; it was moved aside to `moved_to`.
    #[error("corrupt {what} {path}: {reason}; the file was moved aside to {moved_to}")]
    Corrupt {
        /// "snapshot" or "log".
        what: &'static str,
        /// The file that was corrupt.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// Where the file now is.
        moved_to: PathBuf,
    },
    /// The store has no document with that id.
    #[error("no stored document with id {0}")]
    NotFound(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
