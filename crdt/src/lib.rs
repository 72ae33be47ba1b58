//! SAM conversation documents on [Automerge](https://automerge.org).
//!
//! A conversation is a plain Automerge document whose schema is documented in
//! `docs/conversation-schema.md`. This crate owns:
//!
//! - [`Conversation`]: a typed API over the document (messages, streamed chunks, tool calls,
//!   plans, permissions, forks) that validates every document it loads;
//! - [`SyncPeer`]: a sans-IO wrapper around Automerge's sync protocol that rejects oversized or
//!   schema-breaking messages;
//! - [`DocStore`]: crash-safe persistence (snapshot + CRC-checked incremental log + compaction).
//!
//! It never does networking and never depends on tokio.

mod access;
mod conversation;
mod error;
pub mod guard;
mod ids;
mod schema;
mod store;
mod sync;

pub use automerge::ChangeHash;
pub use conversation::{Conversation, SEGMENT_CHARS};
pub use error::{CrdtError, SchemaError};
pub use guard::{Guarded, GuardedChange};
pub use ids::{MessageId, validate_doc_id, validate_node_id};
pub use schema::{
    Host, HostEnd, MessageView, MoveTo, NewConversation, ParentRef, PermissionAnswer,
    PermissionOption, PermissionView, PlanEntry, Role, SCHEMA_VERSION, ServedBy, Status, ToolCall,
    ToolCallUpdate, ToolStatus, ToolView, WorkspaceRef,
};
pub use store::{DocStore, FsyncPolicy, MIN_RELATIVE_COMPACTION_BYTES, StoreOptions};
pub use sync::{DEFAULT_MAX_SYNC_MESSAGE_BYTES, SyncPeer, live_message};

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
