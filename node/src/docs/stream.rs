//! `sam/doc/1`: one document per bi stream, synced live in both directions.

use std::sync::atomic::{AtomicU64, Ordering};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::capability::{Role, Scope};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::doc::{DocFrame, DocOpen, MAX_SYNC_FRAME};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use crate::docs::Live;
use crate::server::{Node, Session};
use crate::streams::{reply, serve_connection};
use sam_protocol::wire::{WireError, read_bounded, read_frame, write_frame};

static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

/// Frames from one peer waiting to be applied: bounds memory per peer.
const INBOUND_QUEUE: usize = 4;

/// Serves `sam/doc/1`.
#[derive(Debug, Clone)]
pub struct DocHandler {
    node: Node,
}

impl DocHandler {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

impl ProtocolHandler for DocHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        serve_connection(&self.node, conn, |node, session, send, recv| async move {
            if let Err(e) = serve_stream(&node, &session, send, recv).await {
                debug!(peer = %session.grant.peer.short(), error = %e, "doc stream ended");
            }
        })
        .await;
        Ok(())
    }
}

/// Whether the grant may read (or, with `Collaborator`, write) a document of
/// `workspace`.
pub fn may(grant: &sam_protocol::Grant, role: Role, conv: &str, workspace: &str) -> bool {
    grant.allows(role, Some(&Scope::Conversation(conv.to_string())))
        || (!workspace.is_empty()
            && grant.allows(role, Some(&Scope::Workspace(workspace.to_string()))))
}

async fn serve_stream(
    node: &Node,
    session: &Session,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), WireError> {
    let open: DocOpen = match read_bounded(&mut recv).await {
        Ok(o) => o,
        Err(e) => {
            reply(
                &mut send,
                Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("bad doc header: {e}"),
                )),
            )
            .await;
            return Err(e);
        }
    };
    let grant = &session.grant;
    let id = open.conversation;
    let docs = node.docs();
    let create = open.create && grant.role >= Role::Collaborator;
    let peer = NEXT_PEER.fetch_add(1, Ordering::Relaxed);
    let watcher = sam_protocol::doc::Watcher {
        peer: grant.peer,
        role: grant.role,
        since: crate::now_secs(),
    };
    // Only the owner's say brings back a conversation the owner deleted: another peer's
    // stale replica is refused.
    let revive = grant.role >= Role::Owner && grant.scope.is_none();
    let opened = docs
        .open_as(&id, create, revive, Some((peer, watcher)))
        .await
        .and_then(|o| {
            let allowed = if o.pending {
                // The workspace of a new document is unknown until it arrives.
                grant.role >= Role::Collaborator && grant.scope.is_none()
            } else {
                may(grant, Role::Viewer, &id, &o.workspace)
            };
            if allowed {
                Ok(o)
            } else {
                Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("your capability does not cover conversation {id}"),
                ))
            }
        });
    let mut opened = match opened {
        Ok(o) => {
            reply(&mut send, Ok(())).await;
            o
        }
        Err(e) => {
            docs.leave(&id, peer).await;
            reply(&mut send, Err(e)).await;
            return Ok(());
        }
    };
    let can_write = opened.pending || may(grant, Role::Collaborator, &id, &opened.workspace);
    let rights = crate::docs::Rights::of(grant);

    // Reads run in their own task: a frame half-read is never lost to a select.
    let (in_tx, mut in_rx) = mpsc::channel::<Result<DocFrame, WireError>>(INBOUND_QUEUE);
    // A reader's messages carry no changes: a smaller cap, known before any body is read.
    let max_frame = if can_write {
        MAX_SYNC_FRAME
    } else {
        sam_protocol::doc::MAX_READER_SYNC_FRAME
    };
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame::<DocFrame>(&mut recv, max_frame).await;
            let stop = frame.is_err();
            if in_tx.send(frame).await.is_err() || stop {
                break;
            }
        }
    });

    // Ordinary sync answers the peer's messages (and repairs gaps); every durable batch
    // after that goes out as one live message shared by all followers, so a follower costs
    // the document actor nothing per batch.
    let mut resync = true;
    let result = async {
        loop {
            if resync {
                // Automerge answers until it has nothing new to say; the same message twice
                // in a row means it would repeat itself (seen with a peer's change waiting
                // for a dependency): stop and wait for the peer.
                let mut last: Option<Vec<u8>> = None;
                while let Some(msg) = docs.generate(&id, peer).await {
                    if last.as_ref() == Some(&msg) {
                        break;
                    }
                    write_frame(&mut send, &DocFrame::Sync(msg.clone())).await?;
                    last = Some(msg);
                }
                resync = false;
            }
            tokio::select! {
                incoming = in_rx.recv() => match incoming {
                    Some(Ok(DocFrame::Sync(bytes))) => {
                        if !can_write && sync_has_changes(&bytes) {
                            let e = ErrorBody::new(ErrorCode::Forbidden, "viewers cannot change this conversation");
                            let _ = write_frame(&mut send, &DocFrame::Error(e)).await;
                            break;
                        }
                        if let Err(e) = docs.receive(&id, peer, bytes, rights.clone()).await {
                            warn!(peer = %grant.peer.short(), conv = %id, error = %e, "closing doc peer");
                            let _ = write_frame(&mut send, &DocFrame::Error(e)).await;
                            break;
                        }
                        resync = true;
                    }
                    Some(Ok(DocFrame::Live(_))) => {
                        let e = ErrorBody::new(ErrorCode::BadRequest, "live frames go from the node to peers only");
                        let _ = write_frame(&mut send, &DocFrame::Error(e)).await;
                        break;
                    }
                    Some(Ok(DocFrame::Error(e))) => {
                        debug!(conv = %id, error = %e, "peer stopped syncing");
                        break;
                    }
                    Some(Err(WireError::Closed)) | None => break,
                    Some(Err(e)) => {
                        let body = ErrorBody::new(ErrorCode::BadRequest, format!("bad sync frame: {e}"));
                        let _ = write_frame(&mut send, &DocFrame::Error(body)).await;
                        break;
                    }
                },
                live = opened.live.recv() => match live {
                    Ok(Live::Changes(msg)) => {
                        write_frame(&mut send, &DocFrame::Live(msg.to_vec())).await?;
                    }
                    Ok(Live::Resync) => resync = true,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(conv = %id, missed = n, "follower lagged; resyncing");
                        resync = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The document left the node (its owner deleted it).
                        let e = ErrorBody::new(ErrorCode::NotFound, format!("conversation {id} is no longer on this node (its owner deleted it)"));
                        let _ = write_frame(&mut send, &DocFrame::Error(e)).await;
                        break;
                    }
                },
            }
        }
        Ok::<(), WireError>(())
    }
    .await;
    reader.abort();
    docs.leave(&id, peer).await;
    let _ = send.finish();
    result
}

/// Whether a sync message carries changes (undecodable messages count as changes:
/// the document actor rejects them).
fn sync_has_changes(bytes: &[u8]) -> bool {
    automerge::sync::Message::decode(bytes)
        .map(|m| !m.changes.is_empty())
        .unwrap_or(true)
}
