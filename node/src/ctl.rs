//! The `sam/ctl/1` handler: one request and one response per bi stream.

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::capability::{Grantee, Role, Scope};
use sam_protocol::ctl::{
    ErrorBody, ErrorCode, NodeStatus, Request, RequestFrame, Response, RoleGate, check_version,
};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::workspace::WorkspaceRequest;
use tracing::{debug, warn};

use crate::server::{Node, Session};
use sam_protocol::wire::{RequestError, read_request, write_frame};

/// Serves `sam/ctl/1`.
#[derive(Debug, Clone)]
pub struct CtlHandler {
    node: Node,
}

impl CtlHandler {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

impl ProtocolHandler for CtlHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Some(session) = self.node.accept_peer(&conn).await else {
            return Ok(());
        };
        let session = std::sync::Arc::new(session);
        loop {
            tokio::select! {
                _ = session.close_when_cancelled(&conn) => break,
                stream = conn.accept_bi() => {
                    let Ok((mut send, mut recv)) = stream else { break };
                    let node = self.node.clone();
                    let session = session.clone();
                    tokio::spawn(async move {
                        // Bounded by the peer's role before the body is read: a frame longer
                        // than anything this role may ask, a request above the role, or one
                        // over its kind's own cap is refused from its first bytes.
                        let gate = RoleGate(session.grant.role);
                        let response = match read_request(&mut recv, &gate).await {
                            // A long poll whose asker went away (stream stopped, connection
                            // closed) ends at once: left running, it would claim the next git
                            // credential request and hand it to nobody.
                            Ok(frame) if is_long_poll(&frame.request) => tokio::select! {
                                r = handle(&node, &session, frame) => r,
                                _ = send.stopped() => {
                                    debug!(peer = %session.grant.peer.short(), "long poll abandoned by the peer");
                                    return;
                                }
                            },
                            Ok(frame) => handle(&node, &session, frame).await,
                            Err(RequestError::Closed) => return,
                            Err(RequestError::Refused(e)) => {
                                warn!(peer = %session.grant.peer.short(), error = %e, "ctl request refused");
                                Response::Error(e)
                            }
                            Err(RequestError::Io(e)) => {
                                debug!(peer = %session.grant.peer.short(), error = %e, "ctl stream failed");
                                return;
                            }
                        };
                        if write_frame(&mut send, &response).await.is_ok() {
                            let _ = send.finish();
                        }
                    });
                }
            }
        }
        Ok(())
    }
}

/// Requests that wait for something to happen; safe to drop before they answer.
fn is_long_poll(request: &Request) -> bool {
    matches!(
        request,
        Request::Workspace(sam_protocol::workspace::WorkspaceRequest::WaitCredential)
    )
}

/// Decides one request (no IO beyond the share file).
pub async fn handle(node: &Node, session: &Session, frame: RequestFrame) -> Response {
    match handle_inner(node, session, frame.version, frame.request).await {
        Ok(r) => r,
        Err(e) => Response::Error(e),
    }
}

async fn handle_inner(
    node: &Node,
    session: &Session,
    version: u32,
    request: Request,
) -> Result<Response, ErrorBody> {
    check_version(version)?;
    let grant = &session.grant;
    node.recheck(grant)?;
    let needed = request.required_role();
    // Ping and status are open to every authorised peer whatever its scope.
    let scope = match &request {
        // Open to every authorised peer whatever its scope (lists are filtered).
        Request::Ping | Request::Status | Request::Conv(ConvRequest::List) => grant.scope.clone(),
        // Checked against the conversation's workspace by the agents.
        Request::Agent(_) | Request::Pr(_) => grant.scope.clone(),
        Request::Workspace(w) => w.workspace().map(|id| Scope::Workspace(id.to_string())),
        _ => None,
    };
    if !grant.allows(needed, scope.as_ref()) {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "this needs the {needed} role on {}; you have {}{}",
                scope
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "the whole node".into()),
                grant.role,
                grant
                    .scope
                    .as_ref()
                    .map(|s| format!(" on {s}"))
                    .unwrap_or_default()
            ),
        ));
    }
    debug!(peer = %grant.peer.short(), ?request, "ctl request");
    let internal = |e: anyhow::Error| ErrorBody::new(ErrorCode::Internal, format!("{e:#}"));
    Ok(match request {
        Request::Ping => Response::Pong,
        Request::Status => Response::Status(NodeStatus {
            node: node.id(),
            owner: node.owner(),
            node_version: crate::NODE_VERSION.to_string(),
            protocol_version: sam_protocol::PROTOCOL_VERSION,
            uptime_secs: node.uptime().as_secs(),
            peers: node.peer_count() as u32,
            your_role: grant.role,
            warnings: if grant.role == Role::Owner {
                node.warnings()
            } else {
                Vec::new()
            },
        }),
        Request::RegisterShare(cap) => {
            cap.verify(node.id(), node.owner(), crate::now_secs())
                .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
            if grant.role < Role::Owner
                || (cap.cap.issuer != grant.peer && grant.peer != node.owner())
            {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    "only the issuer of a capability may register it",
                ));
            }
            if let Grantee::Key(k) = cap.cap.grantee
                && k == node.owner()
            {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "the owner needs no capability",
                ));
            }
            node.update_shares(|f| f.register(cap)).map_err(internal)?;
            Response::Ok
        }
        Request::ListShares => Response::Shares(node.share_infos()?),
        // In force (live connections cut) before it is saved; a save that failed is
        // reported, and retried by the node.
        Request::Revoke { id } => {
            node.revoke(id)
                .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
            Response::Ok
        }
        Request::Workspace(
            WorkspaceRequest::Remove { id } | WorkspaceRequest::Teardown { id, force: false },
        ) => Response::Workspace(crate::teardown::remove_workspace(node, &id, false).await?),
        Request::Workspace(WorkspaceRequest::Teardown { id, force: true }) => {
            Response::Workspace(crate::teardown::remove_workspace(node, &id, true).await?)
        }
        Request::Workspace(WorkspaceRequest::Drain) => {
            Response::Workspace(crate::teardown::drain(node).await?)
        }
        Request::Workspace(w) => Response::Workspace(node.workspaces().handle(grant, w).await?),
        Request::Conv(ConvRequest::List) => {
            let visible = node
                .docs()
                .list()
                .await
                .into_iter()
                .filter(|c| crate::docs::stream::may(grant, Role::Viewer, &c.id, &c.workspace))
                .collect();
            Response::Conv(ConvResponse::List(visible))
        }
        // Owner only (unscoped), checked above like every request: `required_role`.
        Request::Conv(ConvRequest::Heads { id }) => {
            let heads = node.docs().heads(&id).await?;
            Response::Conv(ConvResponse::Heads {
                id,
                heads: heads.into_iter().map(|h| h.0).collect(),
            })
        }
        Request::Conv(ConvRequest::Delete { id, force }) => {
            let cancelled_turn = delete_conversation(node, grant, &id, force).await?;
            Response::Conv(ConvResponse::Deleted { id, cancelled_turn })
        }
        Request::Agent(a) => Response::Agent(node.agents().handle(grant, a).await?),
        Request::Pr(p) => Response::Pr(node.prs().handle(grant, p).await?),
    })
}

/// Deletes conversation `id` for its owner: its agent stops (a running turn refuses unless
/// `force`, which cancels it first), then the document, its files and its queued prompts go,
/// with the agent keys and PR settings sent for it. Returns the cancelled turn's prompt id.
pub async fn delete_conversation(
    node: &Node,
    grant: &sam_protocol::Grant,
    id: &str,
    force: bool,
) -> Result<Option<String>, ErrorBody> {
    // Never on anyone but the node's owner, whatever called this.
    if !grant.allows(Role::Owner, None) {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            "only the node's owner may delete a conversation",
        ));
    }
    sam_crdt::validate_doc_id(id)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    // Known here (else NotFound) before its agent is touched.
    node.docs().heads(id).await?;
    let agents = node.agents();
    let cancelled = agents
        .stop_for_delete(id, grant.peer.to_string(), force)
        .await?;
    let r = node.docs().delete(id).await;
    agents.forget(id);
    r?;
    node.prs().forget(id);
    Ok(cancelled)
}
