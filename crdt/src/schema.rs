//! Schema constants, enums and the plain view structs returned by [`crate::Conversation`].

use std::collections::BTreeMap;

use crate::{ChangeHash, MessageId};

/// Value of the root `schema` field written by this crate.
pub const SCHEMA_VERSION: i64 = 1;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// All values, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The string stored in the document.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            /// Parses the string stored in the document.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }

            pub(crate) fn expected() -> String {
                [$($s),+].join("|")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Who or what produced a message.
    Role {
        /// A prompt typed by a person.
        User = "user",
        /// Agent output.
        Agent = "agent",
        /// Agent reasoning ("thinking").
        Thought = "thought",
        /// A tool call with its output.
        Tool = "tool",
        /// A permission request the agent is waiting on.
        Permission = "permission",
        /// A message from SAM itself (errors, restarts, ...).
        System = "system",
    }
);

string_enum!(
    /// Lifecycle of a message.
    Status {
        /// A user prompt not yet picked up by the node (e.g. written offline).
        Queued = "queued",
        /// Being worked on (a prompt the agent is answering, a tool call in progress).
        Running = "running",
        /// Text is being appended.
        Streaming = "streaming",
        /// Finished normally.
        Done = "done",
        /// Cancelled by a user.
        Cancelled = "cancelled",
        /// Failed; `reason` says why.
        Failed = "failed",
        /// Cut short by a crash or restart of the node or agent.
        Interrupted = "interrupted",
    }
);

string_enum!(
    /// Status of a tool call (ACP `ToolCallStatus`).
    ToolStatus {
        /// Not started yet.
        Pending = "pending",
        /// Running.
        InProgress = "in_progress",
        /// Finished successfully.
        Completed = "completed",
        /// Failed.
        Failed = "failed",
    }
);

/// Arguments of [`crate::Conversation::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    /// Conversation id (see [`crate::validate_doc_id`]).
    pub id: String,
    /// Initial title.
    pub title: String,
    /// Agent name: `claude`, `codex`, `gemini`, `vibe`, `custom`, ...
    pub agent: String,
    /// NodeId (hex) of the node that hosts the workspace.
    pub workspace_node: String,
    /// Workspace id on that node.
    pub workspace_id: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// The `workspace` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// NodeId (hex) of the node.
    pub node: String,
    /// Workspace id on that node.
    pub id: String,
}

/// The `parent` field of a fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// Id of the parent conversation.
    pub conversation: String,
    /// Heads of the parent at the fork point.
    pub heads: Vec<ChangeHash>,
    /// The message of the parent the fork was made at (the last message the fork keeps).
    pub message_id: MessageId,
}

/// A new tool call (see [`crate::Conversation::add_tool_call`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    /// Tool kind (ACP `ToolKind`: `read`, `edit`, `execute`, ...).
    pub kind: String,
    /// Human readable title.
    pub title: String,
    /// Raw input as a JSON string.
    pub input: String,
    /// Initial status.
    pub status: Option<ToolStatus>,
    /// Files touched.
    pub locations: Vec<String>,
}

/// An update of a tool call; `None` fields are left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallUpdate {
    /// New status.
    pub status: Option<ToolStatus>,
    /// Text appended to `output`.
    pub output_chunk: Option<String>,
    /// Replaces `locations`.
    pub locations: Option<Vec<String>>,
    /// Replaces `title`.
    pub title: Option<String>,
}

/// A tool call as read from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolView {
    /// Tool kind.
    pub kind: String,
    /// Title.
    pub title: String,
    /// Input, a JSON string.
    pub input: String,
    /// Output text so far.
    pub output: String,
    /// Status.
    pub status: ToolStatus,
    /// Files touched.
    pub locations: Vec<String>,
}

/// One option of a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionOption {
    /// Option id, answered with.
    pub id: String,
    /// Label.
    pub name: String,
    /// ACP `PermissionOptionKind`: `allow_once`, `allow_always`, `reject_once`, `reject_always`.
    pub kind: String,
}

/// One answer to a permission request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PermissionAnswer {
    /// When, ms since the Unix epoch (first field: answers order by time).
    pub at: i64,
    /// NodeId (hex) of who answered.
    pub by: String,
    /// The option id chosen.
    pub option: String,
}

/// A permission request as read from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionView {
    /// The options offered.
    pub options: Vec<PermissionOption>,
    /// Every answer written, in document order (several only after concurrent answers).
    pub answers: Vec<PermissionAnswer>,
    /// The effective answer: the earliest by `(at, by, option)`; the same on every replica.
    pub chosen: Option<PermissionAnswer>,
}

/// A message as read from the document (an owned snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Stable id.
    pub id: MessageId,
    /// Role.
    pub role: Role,
    /// NodeId (hex) of the author.
    pub author: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Text so far.
    pub text: String,
    /// Status.
    pub status: Status,
    /// Why it failed / was cancelled, if said.
    pub reason: Option<String>,
    /// Present on `tool` messages.
    pub tool: Option<ToolView>,
    /// Present on `permission` messages.
    pub permission: Option<PermissionView>,
}

/// One entry of the agent's plan (ACP `PlanEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// What to do.
    pub content: String,
    /// `pending` | `in_progress` | `completed`.
    pub status: String,
    /// `high` | `medium` | `low`.
    pub priority: String,
}

/// Which node served which part of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    /// NodeId (hex) of the node.
    pub node: String,
    /// Workspace id on that node.
    pub workspace: String,
    /// First message it served.
    pub from_message: MessageId,
}

/// Token usage counters (`usage` field): name → count.
pub type Usage = BTreeMap<String, i64>;

string_enum!(
    /// Why a host stopped serving a conversation (`hosts[i].end`).
    HostEnd {
        /// The conversation was moved to another node or workspace (`sam move`).
        Moved = "moved",
        /// The workspace was deleted after its documents were flushed to another peer.
        Removed = "removed",
        /// The node was unreachable when the conversation moved away: whatever it held that
        /// was not synced (uncommitted work, an unsynced tail) is lost.
        Lost = "lost",
    }
);

/// One entry of the `hosts` history: which node and workspace served the conversation from
/// when (see `docs/conversation-schema.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// NodeId (hex) of the node.
    pub node: String,
    /// Workspace id on that node.
    pub workspace: String,
    /// From when it served, ms since the Unix epoch.
    pub since: i64,
    /// Git URL the workspace was made from, if known.
    pub repo: Option<String>,
    /// Branch checked out there, if known.
    pub branch: Option<String>,
    /// When it stopped serving (ms), once it has.
    pub ended_at: Option<i64>,
    /// Why it stopped.
    pub end: Option<HostEnd>,
    /// What became of the workspace's uncommitted work when it stopped (free text, e.g.
    /// `patch in message <id>` or `not recoverable: the node was unreachable`).
    pub carried: Option<String>,
}

/// Arguments of [`crate::Conversation::move_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTo {
    /// NodeId (hex) of the new node.
    pub node: String,
    /// Workspace id on the new node.
    pub workspace: String,
    /// Git URL of the new workspace, if known.
    pub repo: Option<String>,
    /// Branch of the new workspace, if known.
    pub branch: Option<String>,
    /// How the previous host ended.
    pub end: HostEnd,
    /// What became of the previous workspace's uncommitted work.
    pub carried: Option<String>,
}
