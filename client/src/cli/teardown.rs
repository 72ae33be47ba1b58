//! `sam workspace rm ID [--force]`: graceful teardown from the client's side.
//!
//! The node deletes a workspace only when every conversation it serves is held, in sync,
//! by another peer connected on `sam/doc/1` (`node/src/teardown.rs`). So the client first
//! brings its own replica of each of them up to date and keeps those streams open while it
//! asks: the client that deletes a workspace takes the history with it. The node says which
//! conversations nobody holds when it refuses; `--force` deletes anyway.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sam_crdt::Conversation;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse};
use serde_json::json;

use super::Output;
use super::workspace::ws;
use crate::book::NodeEntry;
use crate::conn::NodeClient;
use crate::docs::{DocStream, Replicas, open_stream};
use crate::paths::ClientPaths;

const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// `sam workspace rm`.
pub async fn rm(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    client: &NodeClient,
    entry: &NodeEntry,
    id: &str,
    force: bool,
) -> Result<Output> {
    let (convs, kept) = remove_keeping_history(paths, ep, client, entry, id, force).await?;
    Ok(Output::new(
        json!({ "removed": id, "conversations": convs, "held_here": kept, "forced": force }),
        format!(
            "workspace {id} deleted; {kept} of its {} conversation(s) are held here\n{id}",
            convs.len()
        ),
    ))
}

/// Brings this client's replicas of the workspace's conversations up to date, holds their
/// streams open while the node deletes the workspace (so this client is a peer in sync), and
/// returns the conversations and how many are held here. Errors carry the node's reason.
pub(crate) async fn remove_keeping_history(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    client: &NodeClient,
    entry: &NodeEntry,
    id: &str,
    force: bool,
) -> Result<(Vec<String>, usize)> {
    let ticket = entry.ticket()?;
    let (convs, open, failed, _) =
        hold_conversations(paths, ep, client, &ticket, |s| s.workspace == id).await?;
    let r = ws(
        client,
        WorkspaceRequest::Teardown {
            id: id.to_string(),
            force,
        },
    )
    .await;
    for s in open {
        s.close(None).await;
    }
    match r.with_context(|| format!("workspace {id} on {}", entry.name))? {
        WorkspaceResponse::Removed { .. } => {}
        other => bail!("node answered the removal with something else: {other:?}"),
    }
    let kept = convs.len() - failed.len();
    Ok((convs, kept))
}

/// Brings this client's replicas of the node's conversations that `pick` selects up to date
/// and returns their streams, still open: while they are, this client is a peer in sync for
/// each of them. Also returns every picked conversation, the ones that failed, and for each
/// one held the heads this replica holds once in sync (then exactly the node's heads).
pub(crate) async fn hold_conversations(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    client: &NodeClient,
    ticket: &sam_protocol::Ticket,
    pick: impl Fn(&sam_protocol::doc::ConvSummary) -> bool,
) -> Result<Held> {
    let Response::Conv(ConvResponse::List(list)) =
        client.request(Request::Conv(ConvRequest::List)).await?
    else {
        bail!("unexpected answer to the conversation list");
    };
    let convs: Vec<String> = list.into_iter().filter(|s| pick(s)).map(|s| s.id).collect();
    let mut replicas = Replicas::open(paths)?;
    let mut open: Vec<DocStream> = Vec::new();
    let mut failed = Vec::new();
    let mut heads = Vec::new();
    for conv in &convs {
        let r = async {
            let mut doc = if replicas.contains(conv) {
                replicas.load(conv)?
            } else {
                Conversation::new_replica()
            };
            let mut s = open_stream(ep, ticket, conv, false).await?;
            s.sync_once(
                &mut doc,
                |c| {
                    if c.is_empty() {
                        Ok(())
                    } else {
                        replicas.save(c)
                    }
                },
                SYNC_TIMEOUT,
            )
            .await?;
            replicas.save(&mut doc)?;
            let held: Vec<[u8; 32]> = doc.heads().into_iter().map(|h| h.0).collect();
            anyhow::Ok((s, held))
        }
        .await;
        match r {
            Ok((s, held)) => {
                open.push(s);
                heads.push((conv.clone(), held));
            }
            Err(e) => {
                eprintln!("note: could not bring conversation {conv} here: {e:#}");
                failed.push(conv.clone());
            }
        }
    }
    Ok((convs, open, failed, heads))
}

/// What [`hold_conversations`] returns: every picked conversation, the open streams, the
/// ones that failed, and the heads held of each one held.
pub(crate) type Held = (
    Vec<String>,
    Vec<DocStream>,
    Vec<String>,
    Vec<(String, Vec<[u8; 32]>)>,
);

/// Asks a pooled node whether it may be deleted (every conversation it serves is held in
/// sync elsewhere), after bringing the conversations this client may read here. A node that
/// does not answer cannot be asked and holds nothing anyone can reach: it may go.
pub(crate) async fn drain_node(
    paths: &ClientPaths,
    provider: &sam_provisioner::AnyProvider,
    vm: &sam_provisioner::Vm,
) -> Result<()> {
    let ticket = sam_provisioner::Provider::ticket(provider, vm)
        .map_err(|e| anyhow::anyhow!("no ticket for node {}: {e}", vm.id))?;
    let ep = crate::endpoint::bind(&paths.identity()?, None).await?;
    let r = async {
        let client =
            match tokio::time::timeout(Duration::from_secs(5), NodeClient::connect(&ep, &ticket))
                .await
            {
                Ok(Ok(c)) => c,
                _ => {
                    eprintln!(
                        "note: node {} does not answer; deleting it without asking",
                        vm.id
                    );
                    return Ok(());
                }
            };
        // Its conversations come here first (held open while it answers), like `rm`.
        let (_, open, _, _) = hold_conversations(paths, &ep, &client, &ticket, |_| true).await?;
        let r = ws(&client, WorkspaceRequest::Drain).await;
        for s in open {
            s.close(None).await;
        }
        client.close();
        match r? {
            WorkspaceResponse::Drained { .. } => Ok(()),
            other => bail!("node answered the drain with something else: {other:?}"),
        }
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(500), ep.close()).await;
    r
}
