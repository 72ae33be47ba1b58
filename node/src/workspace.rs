//! Workspaces: Docker containers on this node where agents and people work.

use sam_protocol::auth::Grant;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse};

/// The node's workspaces.
#[derive(Debug, Default)]
pub struct Workspaces {}

impl Workspaces {
    /// Answers one workspace request.
    pub async fn handle(
        &self,
        _grant: &Grant,
        _request: WorkspaceRequest,
    ) -> Result<WorkspaceResponse, ErrorBody> {
        Err(ErrorBody::new(
            ErrorCode::Unimplemented,
            "workspaces are not implemented on this node yet",
        ))
    }
}
