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
}

impl WorkspaceRequest {
    /// The least role needed.
    pub fn required_role(&self) -> Role {
        match self {
            WorkspaceRequest::List | WorkspaceRequest::Get { .. } => Role::Viewer,
            WorkspaceRequest::Create(_) => Role::Collaborator,
            WorkspaceRequest::Remove { .. } => Role::Owner,
        }
    }

    /// The workspace this request is about, for scope checks.
    pub fn workspace(&self) -> Option<&str> {
        match self {
            WorkspaceRequest::Get { id } | WorkspaceRequest::Remove { id } => Some(id),
            WorkspaceRequest::Create(_) | WorkspaceRequest::List => None,
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
    Removed { id: String },
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
