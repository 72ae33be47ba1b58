//! Workspace requests on `sam/ctl/1` (wrapped in `Request::Workspace`).
//! Extended by the workspaces work; add variants at the end only.

use serde::{Deserialize, Serialize};

use crate::capability::Role;

/// Requests about workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceRequest {
    /// Create a workspace; answered at once with its id (status `Creating`).
    Create(CreateWorkspace),
    List,
    Get {
        id: String,
    },
    Remove {
        id: String,
    },
    /// TCP listeners in the workspace now.
    Ports {
        id: String,
    },
    /// Long poll: answered with the listeners as soon as they differ from `known`,
    /// or after `timeout_ms` (at most [`MAX_WATCH_MS`]) with the same set.
    WatchPorts {
        id: String,
        known: Vec<PortInfo>,
        timeout_ms: u32,
    },
    /// Files in the workspace (paths are relative to the workspace root).
    Files {
        id: String,
        op: FilesOp,
    },
    /// Creation progress (build output, clone progress) from line `from` on. When
    /// nothing new is there and the workspace is still `Creating`, the node waits up
    /// to [`LOGS_WAIT_SECS`] before answering (a long poll): clients loop on
    /// `Logs { from: next }` until the status is no longer `Creating`.
    Logs {
        id: String,
        from: u64,
    },
    /// Brings back a `Stopped` or `Failed` workspace: starts its container again, or
    /// builds it anew when the container is gone.
    Recreate {
        id: String,
    },
    /// Long poll of the git credential broker: answered with the next credential
    /// request of a workspace (a `git` inside a container asked), or `None` after
    /// [`CREDENTIAL_WAIT_SECS`]. Clients loop on it while they are willing to answer.
    WaitCredential,
    /// The answer to a [`CredentialRequest`]; `None` refuses.
    AnswerCredential {
        request: u64,
        answer: Option<GitCredential>,
    },
    /// Deletes a workspace gracefully: first every conversation of the workspace must be
    /// held, in sync, by another peer connected on `sam/doc/1` (else the node refuses with
    /// the list, unless `force`); the deletion is then recorded in those conversations.
    /// `Remove { id }` is `Teardown { id, force: false }`.
    Teardown {
        id: String,
        force: bool,
    },
    /// Before the node itself is deleted (pool shrink): answered `Drained` when every
    /// conversation this node still serves is held in sync by another peer connected on
    /// `sam/doc/1` (else refused with the list). Deletes nothing.
    Drain,
}

/// Longest wait of a `Logs` long poll.
pub const LOGS_WAIT_SECS: u64 = 5;
/// Longest wait of a `WaitCredential` long poll.
pub const CREDENTIAL_WAIT_SECS: u64 = 20;
/// Most lines in one `Logs` answer.
pub const MAX_LOG_LINES: usize = 1000;

impl WorkspaceRequest {
    /// The least role needed.
    pub fn required_role(&self) -> Role {
        match self {
            WorkspaceRequest::List
            | WorkspaceRequest::Get { .. }
            | WorkspaceRequest::Ports { .. }
            | WorkspaceRequest::WatchPorts { .. } => Role::Viewer,
            WorkspaceRequest::Files { op, .. } => op.required_role(),
            WorkspaceRequest::Logs { .. } => Role::Viewer,
            WorkspaceRequest::Create(_)
            | WorkspaceRequest::Recreate { .. }
            | WorkspaceRequest::WaitCredential
            | WorkspaceRequest::AnswerCredential { .. } => Role::Collaborator,
            WorkspaceRequest::Remove { .. }
            | WorkspaceRequest::Teardown { .. }
            | WorkspaceRequest::Drain => Role::Owner,
        }
    }

    /// The workspace this request is about, for scope checks.
    pub fn workspace(&self) -> Option<&str> {
        match self {
            WorkspaceRequest::Get { id }
            | WorkspaceRequest::Remove { id }
            | WorkspaceRequest::Teardown { id, .. }
            | WorkspaceRequest::Ports { id }
            | WorkspaceRequest::WatchPorts { id, .. }
            | WorkspaceRequest::Files { id, .. }
            | WorkspaceRequest::Logs { id, .. }
            | WorkspaceRequest::Recreate { id } => Some(id),
            WorkspaceRequest::Create(_)
            | WorkspaceRequest::List
            | WorkspaceRequest::WaitCredential
            | WorkspaceRequest::AnswerCredential { .. }
            | WorkspaceRequest::Drain => None,
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateWorkspace {
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// Skip the repo's devcontainer and use the prebuilt base image.
    pub lightweight: bool,
    pub name: Option<String>,
}

/// Answers to workspace requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceResponse {
    Info(WorkspaceInfo),
    List(Vec<WorkspaceInfo>),
    Removed {
        id: String,
    },
    Ports(Vec<PortInfo>),
    Files(FilesResponse),
    Logs(WorkspaceLogs),
    /// Answer to `WaitCredential`.
    Credential(Option<CredentialRequest>),
    /// Answer to `AnswerCredential`.
    CredentialAnswered,
    /// Answer to `Drain`: how many conversations this node serves (all held elsewhere).
    Drained {
        conversations: u32,
    },
}

/// A slice of a workspace's creation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceLogs {
    pub lines: Vec<String>,
    /// Ask `from: next` for the lines after these.
    pub next: u64,
    pub status: WorkspaceStatus,
}

/// A `git` in a workspace needs credentials (the `get` of a git credential helper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRequest {
    pub id: u64,
    pub workspace: String,
    /// `https`, `http`.
    pub protocol: String,
    /// Host with port, as git gives it.
    pub host: String,
    pub path: Option<String>,
}

/// A username and password (or token) for git. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredential")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// One workspace as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub id: String,
    pub name: String,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub status: WorkspaceStatus,
    /// Unix seconds.
    pub created_at: u64,
    pub image: String,
    /// The repo folder inside the container (`/workspaces/<name>`).
    pub root: String,
    /// The user that people and agents run as inside the container.
    pub user: String,
    /// `forwardPorts` of the devcontainer, recorded for clients.
    pub forward_ports: Vec<u16>,
}

/// Lifecycle of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceStatus {
    Creating,
    Ready,
    Failed {
        reason: String,
        log_tail: String,
    },
    /// The container exists but is not running (e.g. killed behind SAM's back).
    Stopped,
}

/// Longest [`WorkspaceRequest::WatchPorts`] wait.
pub const MAX_WATCH_MS: u32 = 60_000;

/// One TCP listener inside a workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortInfo {
    pub port: u16,
    /// Listening address as the kernel shows it, e.g. `0.0.0.0`, `127.0.0.1`, `::`.
    pub addr: String,
}

/// File operations on `sam/ctl/1` (bulk transfer is on `sam/file/1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesOp {
    /// List a directory, recursing `depth` levels (0 = just this one), at most
    /// `limit` entries.
    List {
        path: String,
        depth: u32,
        limit: u32,
    },
    /// Read a file, at most `max_bytes` (capped by the node).
    Read { path: String, max_bytes: u64 },
    /// `git diff` in the workspace repo: the working tree against HEAD, or against
    /// the merge base with `base` (a branch), limited to `path` when set.
    GitDiff {
        base: Option<String>,
        path: Option<String>,
    },
    /// Unified diff of two files.
    Diff { a: String, b: String },
    /// Every uncommitted change of the workspace repo as one patch that `git apply` takes:
    /// tracked files, new files git does not ignore, binary files (`--binary`). Made with a
    /// throw-away index, so the workspace's own index is left as it is.
    WorkPatch,
}

impl FilesOp {
    /// Viewers may list; reading contents (cat, diffs) is for collaborators, like
    /// downloads on `sam/file/1`.
    pub fn required_role(&self) -> Role {
        match self {
            FilesOp::List { .. } => Role::Viewer,
            FilesOp::Read { .. }
            | FilesOp::GitDiff { .. }
            | FilesOp::Diff { .. }
            | FilesOp::WorkPatch => Role::Collaborator,
        }
    }
}

/// Answers to [`FilesOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesResponse {
    List {
        entries: Vec<FileEntry>,
        /// More entries existed than the limit allowed.
        truncated: bool,
    },
    Read {
        data: Vec<u8>,
        /// The whole file's size.
        size: u64,
        truncated: bool,
    },
    Diff {
        text: String,
        truncated: bool,
    },
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the workspace root.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Unix seconds.
    pub modified: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}
