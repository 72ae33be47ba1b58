//! Graceful teardown: a workspace is deleted only once every conversation it serves is held,
//! in sync, by another peer, so deleting it loses nothing that only this node has; and the
//! deletion is written into those conversations only after it happened (no document says
//! "removed" while the workspace still runs).
//!
//! "Held in sync" means: a peer connected on `sam/doc/1` to the conversation whose last sync
//! message announced exactly this node's heads ([`crate::docs::DocHost::peers_in_sync`]).
//! Followers that only received live batches are asked to announce their heads first (one
//! ordinary sync round), and the node waits up to [`FLUSH_WAIT`] for one of them.
//! `sam workspace rm` keeps a doc stream open for each conversation of the workspace while it
//! asks, so the client that deletes a workspace is such a peer itself. [`drain`] asks the
//! same of every conversation a node still serves before the node itself is deleted (`sam
//! pool reap`).

use std::time::Duration;

use sam_crdt::HostEnd;
use sam_protocol::NodeId;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::WorkspaceResponse;
use tracing::{info, warn};

use crate::docs::DocHost;
use crate::server::Node;

/// How long the node waits for a peer to confirm it holds a conversation.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How often connected peers are asked to announce their heads while waiting.
const NUDGE_EVERY: Duration = Duration::from_millis(1000);
/// Most conversation ids named in a refusal.
const MAX_NAMED: usize = 10;

/// Where each conversation of a workspace was flushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    pub conv: String,
    /// Peers that hold every change of it (empty: none).
    pub peers: Vec<NodeId>,
}

/// The conversations this node serves from `workspace` (their `workspace` names this node
/// and that workspace).
pub async fn conversations_of(docs: &DocHost, me: &str, workspace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in docs.list().await {
        if s.workspace != workspace {
            continue;
        }
        let node = docs.read(&s.id, |c| c.workspace().node).await;
        if node.as_deref() == Ok(me) {
            out.push(s.id);
        }
    }
    out
}

/// Waits (up to `wait`) until each conversation is held in sync by at least one peer.
pub async fn flush(docs: &DocHost, convs: &[String], wait: Duration) -> Vec<Flush> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    for conv in convs {
        let mut nudged_at: Option<tokio::time::Instant> = None;
        let peers = loop {
            let now = tokio::time::Instant::now();
            let nudge = nudged_at.is_none_or(|t| now >= t + NUDGE_EVERY);
            if nudge {
                nudged_at = Some(now);
            }
            let peers = docs.peers_in_sync(conv, nudge).await.unwrap_or_default();
            if !peers.is_empty() || now >= deadline {
                break peers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        out.push(Flush {
            conv: conv.clone(),
            peers,
        });
    }
    out
}

/// Before the node itself goes (pool shrink): every conversation it still serves (its
/// `workspace` names this node and that host's `hosts` entry is open) must be held in sync
/// by another peer. Deletes nothing.
pub async fn drain(node: &Node) -> Result<WorkspaceResponse, ErrorBody> {
    let docs = node.docs();
    let me = node.id().to_string();
    let mut convs = Vec::new();
    for s in docs.list().await {
        let me2 = me.clone();
        let serving = docs
            .read(&s.id, move |c| {
                let h = c.current_host();
                h.node == me2 && h.ended_at.is_none()
            })
            .await;
        if serving == Ok(true) {
            convs.push(s.id);
        }
    }
    let alone: Vec<String> = flush(docs, &convs, FLUSH_WAIT)
        .await
        .into_iter()
        .filter(|f| f.peers.is_empty())
        .map(|f| f.conv)
        .collect();
    if !alone.is_empty() {
        let mut named: Vec<String> = alone.iter().take(MAX_NAMED).cloned().collect();
        if alone.len() > MAX_NAMED {
            named.push(format!("and {} more", alone.len() - MAX_NAMED));
        }
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "node {} should not be deleted yet: {} conversation(s) it serves ({}) are not held in sync by any other peer. Open them on another device (`sam sync`), move them (`sam move CONV --node N`), or delete the machine anyway (`sam vm rm ID`)",
                node.id().short(),
                alone.len(),
                named.join(", ")
            ),
        ));
    }
    Ok(WorkspaceResponse::Drained {
        conversations: convs.len() as u32,
    })
}

/// Deletes `workspace` when every conversation it serves is flushed to another peer (or
/// `force`), then records the deletion in those conversations.
pub async fn remove_workspace(
    node: &Node,
    workspace: &str,
    force: bool,
) -> Result<WorkspaceResponse, ErrorBody> {
    let docs = node.docs();
    let me = node.id().to_string();
    let convs = conversations_of(docs, &me, workspace).await;
    let flushed = flush(
        docs,
        &convs,
        if force { Duration::ZERO } else { FLUSH_WAIT },
    )
    .await;
    let alone: Vec<&str> = flushed
        .iter()
        .filter(|f| f.peers.is_empty())
        .map(|f| f.conv.as_str())
        .collect();
    if !alone.is_empty() && !force {
        let mut named: Vec<String> = alone
            .iter()
            .take(MAX_NAMED)
            .map(|c| c.to_string())
            .collect();
        if alone.len() > MAX_NAMED {
            named.push(format!("and {} more", alone.len() - MAX_NAMED));
        }
        return Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "workspace {workspace} was not deleted: {} of its {} conversation(s) ({}) are not held in sync by any other peer, so deleting it could lose what only this node has. Open them on another device first (`sam sync`, `sam log CONV --follow` or the app), move them (`sam move CONV --node N`), or delete anyway with `sam workspace rm {workspace} --force`",
                alone.len(),
                convs.len(),
                named.join(", ")
            ),
        ));
    }
    node.workspaces().remove(workspace).await?;
    // The agent keys sent for it go with it (a pooled node's next holder never runs with them).
    node.agents().forget_workspace(workspace);
    // Recorded only now that the workspace is gone.
    for f in flushed {
        let note = if f.peers.is_empty() {
            format!(
                "workspace {workspace} on node {} was deleted with --force; no other peer was known to hold every change of this conversation",
                node.id().short()
            )
        } else {
            format!(
                "workspace {workspace} on node {} was deleted after this conversation was flushed to {}",
                node.id().short(),
                f.peers
                    .iter()
                    .map(|p| p.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (me2, ws) = (me.clone(), workspace.to_string());
        let r = docs
            .mutate(&f.conv, move |c| {
                c.end_host(&me2, &me2, &ws, HostEnd::Removed, None)?;
                c.append_note(&me2, &note)
            })
            .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(conv = %f.conv, error = %e, "cannot record the teardown"),
            Err(e) => warn!(conv = %f.conv, error = %e, "cannot record the teardown"),
        }
    }
    info!(%workspace, conversations = convs.len(), force, "workspace torn down");
    Ok(WorkspaceResponse::Removed {
        id: workspace.to_string(),
    })
}
