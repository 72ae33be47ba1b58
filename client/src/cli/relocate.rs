//! `sam move CONV --node N | --provider P`: continue a conversation on another node.
//!
//! The conversation is a document this client holds, so nothing has to come from the old
//! node. When the old node still answers, it gets a last sync, and its workspace tells the
//! repo and branch and gives its uncommitted work (`git diff HEAD`, tracked files) to keep in
//! the document as a patch (readable by everyone who may read the conversation, viewers
//! included: `--no-carry` leaves it out). When it does not answer, turns it left running are marked
//! `interrupted` and the document says its uncommitted work was not recoverable.
//!
//! Then, on the new node: a workspace from the same repo and branch (or the one named with
//! `--workspace`), the document pushed there (`sam/doc/1` with `create`) after one `"move"`
//! change that sets `workspace` and closes/opens `hosts` entries. The new node's agent
//! runner seeds a new agent from the document (ACP `session/load` when the agent supports
//! it, else the transcript as context) and says which in the conversation. The id, the
//! history, the forks and the shares stay as they were.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sam_crdt::{Conversation, Host, HostEnd, MoveTo, Role, Status};
use sam_protocol::capability::{Capability, Grantee, Scope};
use sam_protocol::ctl::{Request, Response, ShareInfo};
use sam_protocol::workspace::{
    CreateWorkspace, FilesOp, FilesResponse, WorkspaceInfo, WorkspaceRequest, WorkspaceResponse,
    WorkspaceStatus,
};
use serde_json::json;

use super::Output;
use super::convs::note_reachability;
use super::workspace::{follow_creation, ws};
use crate::book::{NodeBook, NodeEntry};
use crate::conn::NodeClient;
use crate::docs::{Replicas, open_stream};
use crate::paths::ClientPaths;

/// How long the old node gets to answer before it counts as gone.
const OLD_NODE_WAIT: Duration = Duration::from_secs(5);
/// The wait when the node book already says the node is unreachable (every attempt since
/// some time failed).
const OLD_NODE_RECHECK: Duration = Duration::from_millis(1500);
/// How long one document sync may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest patch of uncommitted work kept in the document.
pub const MAX_PATCH: usize = 256 * 1024;

/// Arguments of `sam move`.
#[derive(Debug, Clone, Default)]
pub struct MoveArgs {
    pub conv: String,
    /// A node from the node book.
    pub node: Option<String>,
    /// Or a node from this provider's warm pool.
    pub provider: Option<String>,
    pub size: Option<String>,
    /// Use this workspace on the new node instead of creating one.
    pub workspace: Option<String>,
    /// Repo and branch when the old node and the document cannot tell.
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub lightweight: bool,
    /// Do not carry the old workspace's uncommitted work into the document.
    pub no_carry: bool,
}

/// What the old node could still tell.
struct OldNode {
    name: String,
    reached: bool,
    /// "node X unreachable since …" when it did not answer.
    down: Option<String>,
    info: Option<WorkspaceInfo>,
    patch: Option<Result<String, String>>,
    /// The old node's shares (only its owner may list them).
    shares: Option<Vec<ShareInfo>>,
}

fn short(s: &str) -> &str {
    &s[..s.len().min(10)]
}

/// `sam move`.
pub async fn run(paths: &ClientPaths, a: MoveArgs) -> Result<Output> {
    let t0 = Instant::now();
    if a.node.is_some() == a.provider.is_some() {
        bail!(
            "say where to: --node N (a node you know, see `sam nodes ls`) or --provider local|hetzner|scaleway (a node from the warm pool)"
        );
    }
    let key = paths.identity()?;
    let author = key.node_id().to_string();
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(&a.conv)?;
    let mut doc = replicas.load(&id)?;
    super::convs::refuse_viewer(paths, &doc, "move it")?;
    let old = doc.current_host();
    let ep = crate::endpoint::bind(&key, None).await?;
    let r = move_with(paths, &ep, &mut replicas, &mut doc, &old, &author, a, t0).await;
    // A dead old node's connection attempt would hold a graceful close for seconds; the
    // document is saved and sent already.
    let _ = tokio::time::timeout(Duration::from_millis(500), ep.close()).await;
    r
}

#[allow(clippy::too_many_arguments)]
async fn move_with(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    replicas: &mut Replicas,
    doc: &mut Conversation,
    old: &Host,
    author: &str,
    a: MoveArgs,
    t0: Instant,
) -> Result<Output> {
    let id = doc.id();
    // 1. The old node, if it still answers.
    let gone = visit_old(paths, ep, replicas, doc, old, !a.no_carry).await;
    let running: Vec<_> = doc
        .messages()
        .into_iter()
        .filter(|m| match m.role {
            Role::User => m.status == Status::Running,
            _ => matches!(m.status, Status::Running | Status::Streaming),
        })
        .collect();
    if gone.reached && !running.is_empty() {
        bail!(
            "a turn is running on node {}: wait for it to end or `sam cancel {}`, then move",
            gone.name,
            short(&id)
        );
    }

    // 2. The new node.
    let target = match (&a.node, &a.provider) {
        (Some(n), _) => NodeBook::load(&paths.nodes())?.find(Some(n))?.clone(),
        (None, Some(p)) => acquire(paths, p, a.size.as_deref()).await?,
        (None, None) => bail!("say where to: --node N or --provider P"),
    };
    if target.id == old.node && a.workspace.as_deref().is_none_or(|w| w == old.workspace) {
        bail!(
            "conversation {} is already on node {}: give another node, or --workspace for another workspace there",
            short(&id),
            target.name
        );
    }
    let ticket = target.ticket()?;
    let client = NodeClient::connect(ep, &ticket)
        .await
        .with_context(|| format!("node {}", target.name))?;

    // 3. The workspace there: the one named, else a new one from the same repo and branch.
    let info = gone.info.as_ref();
    let repo = a
        .repo
        .clone()
        .or_else(|| info.and_then(|i| i.repo.clone()))
        .or_else(|| old.repo.clone());
    let branch = a
        .branch
        .clone()
        .or_else(|| info.and_then(|i| i.branch.clone()))
        .or_else(|| old.branch.clone());
    let (workspace, created) = match &a.workspace {
        Some(w) => {
            let get = WorkspaceRequest::Get { id: w.clone() };
            if let Err(e) = ws(&client, get).await {
                eprintln!(
                    "note: node {} does not list workspace {w} ({e:#}); its agents need it there (a node that runs agents on the host uses it as a folder name)",
                    target.name
                );
            }
            (w.clone(), false)
        }
        None if repo.is_some() || info.is_some() => {
            let spec = CreateWorkspace {
                repo: repo.clone(),
                branch: branch.clone(),
                lightweight: a.lightweight,
                name: None,
            };
            let r = async {
                let WorkspaceResponse::Info(i) =
                    ws(&client, WorkspaceRequest::Create(spec)).await?
                else {
                    bail!("node answered create with something else");
                };
                let i = follow_creation(&client, &i.id).await?;
                if let WorkspaceStatus::Failed { reason, log_tail } = &i.status {
                    bail!(
                        "workspace {} failed: {reason}\n--- last log lines ---\n{log_tail}",
                        i.id
                    );
                }
                Ok(i.id)
            }
            .await;
            match r {
                Ok(w) => (w, true),
                Err(e) => {
                    client.close();
                    return Err(e.context(format!(
                        "creating a workspace on {} for the move (nothing was changed in the conversation)",
                        target.name
                    )));
                }
            }
        }
        None => {
            client.close();
            bail!(
                "cannot tell which repo the workspace of conversation {} was made from (node {} {} and the document does not say): give --repo URL [--branch B], or --workspace ID to use a workspace that exists on {}",
                short(&id),
                gone.name,
                if gone.reached {
                    "does not know the workspace"
                } else {
                    "is unreachable"
                },
                target.name
            );
        }
    };
    client.close();

    // 4. One "move" change (plus notes), saved here first.
    let mut interrupted = 0;
    if !gone.reached {
        let why = format!(
            "node {} became unreachable during this turn; the conversation moved to node {}",
            gone.name, target.name
        );
        for m in &running {
            if doc
                .set_status(&m.id, Status::Interrupted, Some(&why))
                .is_ok()
            {
                interrupted += 1;
            }
        }
    }
    let carried = match (&gone.patch, gone.reached) {
        (Some(Ok(patch)), _) => {
            let note = doc.append_note(
                author,
                &format!(
                    "uncommitted work of workspace {} on node {} when the conversation moved (changed and new files, `git diff --binary HEAD`; the new node applies it with `git apply` before its agent's first turn there):\n\n```diff\n{patch}```",
                    old.workspace, gone.name
                ),
            )?;
            Some(format!("patch in message {note} (tracked files)"))
        }
        (Some(Err(why)), _) => Some(format!("not carried: {why}")),
        (None, true) if a.no_carry => Some("not carried (--no-carry)".to_string()),
        (None, true) if gone.info.is_some() => Some("nothing uncommitted".to_string()),
        (None, true) => None,
        (None, false) => Some(format!(
            "not recoverable: {}",
            gone.down
                .clone()
                .unwrap_or_else(|| format!("node {} was unreachable", gone.name))
        )),
    };
    doc.move_to(
        author,
        &MoveTo {
            node: target.id.clone(),
            workspace: workspace.clone(),
            repo: repo.clone(),
            branch: branch.clone(),
            end: if gone.reached {
                HostEnd::Moved
            } else {
                HostEnd::Lost
            },
            carried: carried.clone(),
        },
    )?;
    let mut note = format!(
        "moved from node {} (workspace {}) to node {} (workspace {})",
        gone.name, old.workspace, target.name, workspace
    );
    if let Some(c) = &carried {
        note.push_str(&format!("; uncommitted work: {c}"));
    }
    if interrupted > 0 {
        note.push_str(&format!(
            "; {interrupted} message(s) cut off there marked interrupted"
        ));
    }
    doc.append_note(author, &note)?;
    replicas.save(doc)?;

    // 5. The document to the new node, then (if it answers) to the old one.
    let sent = async {
        let mut s = open_stream(ep, &ticket, &id, true).await?;
        s.sync_once(doc, |c| replicas.save(c), SYNC_TIMEOUT).await?;
        s.close(None).await;
        anyhow::Ok(())
    }
    .await;
    note_reachability(paths, &[(target.id.clone(), sent.is_ok())]);
    if let Err(e) = &sent {
        eprintln!(
            "note: the move is saved here but could not be sent to {} yet ({e:#}); `sam sync` sends it",
            target.name
        );
    }
    if gone.reached
        && let Ok(entry) = NodeBook::load(&paths.nodes())?.find(Some(&old.node))
        && let Ok(t) = entry.ticket()
        && let Ok(mut s) = open_stream(ep, &t, &id, false).await
    {
        // The old node learns that it no longer runs this conversation.
        let _ = s.sync_once(doc, |c| replicas.save(c), SYNC_TIMEOUT).await;
        s.close(None).await;
    }
    // Shares of this conversation (or its old workspace) on the old node: the same grant on
    // the new node, as tickets for the grantees.
    let mut shares = Vec::new();
    let mut share_text = String::new();
    match (&gone.shares, sent.is_ok()) {
        (Some(list), true) => {
            let r = carry_shares(paths, ep, &ticket, &id, &old.workspace, list).await;
            for (grantee, role, t) in &r.carried {
                share_text.push_str(&format!(
                    "\nshare for {} as {role} carried to {}: send them this ticket (`sam join <ticket>`):\n{t}",
                    short(grantee),
                    target.name
                ));
                shares.push(json!({ "grantee": grantee, "role": role, "ticket": t }));
            }
            for n in &r.notes {
                share_text.push_str(&format!("\nnote: {n}"));
            }
        }
        (None, _) if gone.reached => share_text.push_str(&format!(
            "\nnote: shares on node {} were not carried (only its owner can list them)",
            gone.name
        )),
        (None, _) => share_text.push_str(&format!(
            "\nnote: shares on node {} could not be read (it is unreachable): share the conversation again with `sam share {} --role R --to ID`",
            gone.name,
            short(&id)
        )),
        (Some(_), false) => {}
    }
    let ms = t0.elapsed().as_millis() as u64;
    let text = format!(
        "{note}{share_text}\n{} messages kept{}; the next prompt runs on {}: sam prompt {} \"…\"\n{id}",
        doc.message_count(),
        if sent.is_ok() { "" } else { " (not sent yet)" },
        target.name,
        short(&id),
    );
    Ok(Output::new(
        json!({
            "id": id,
            "from": { "node": old.node, "workspace": old.workspace, "reached": gone.reached },
            "to": { "node": target.id, "name": target.name, "workspace": workspace, "created": created },
            "repo": repo, "branch": branch, "carried": carried, "interrupted": interrupted,
            "sent": sent.is_ok(), "ms": ms, "shares": shares,
        }),
        text,
    ))
}

/// Syncs with the old node one last time and asks it about its workspace.
async fn visit_old(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    replicas: &mut Replicas,
    doc: &mut Conversation,
    old: &Host,
    carry: bool,
) -> OldNode {
    let book = NodeBook::load(&paths.nodes()).unwrap_or_default();
    let mut out = OldNode {
        name: short(&old.node).to_string(),
        reached: false,
        down: None,
        info: None,
        patch: None,
        shares: None,
    };
    let Ok(entry) = book.find(Some(&old.node)).cloned() else {
        out.down = Some(format!("node {} is not in the node book", out.name));
        return out;
    };
    out.name = entry.name.clone();
    let Ok(ticket) = entry.ticket() else {
        return out;
    };
    // A node every attempt has failed to reach since some time gets one short last chance.
    let wait = if entry.unreachable_since.is_some() {
        OLD_NODE_RECHECK
    } else {
        OLD_NODE_WAIT
    };
    let client = match tokio::time::timeout(wait, NodeClient::connect(ep, &ticket)).await {
        Ok(Ok(c)) => c,
        _ => {
            note_reachability(paths, &[(entry.id.clone(), false)]);
            out.down = NodeBook::load(&paths.nodes())
                .ok()
                .and_then(|b| b.find(Some(&entry.id)).ok().cloned())
                .and_then(|e| e.unreachable_note(crate::now_secs()));
            eprintln!(
                "note: node {} does not answer; moving from the copy held here",
                entry.name
            );
            return out;
        }
    };
    out.reached = true;
    note_reachability(paths, &[(entry.id.clone(), true)]);
    if let Ok(mut s) = open_stream(ep, &ticket, &doc.id(), false).await {
        if let Err(e) = s.sync_once(doc, |c| replicas.save(c), SYNC_TIMEOUT).await {
            eprintln!("note: last sync with {} failed: {e:#}", entry.name);
        }
        s.close(None).await;
    }
    let get = WorkspaceRequest::Get {
        id: old.workspace.clone(),
    };
    if let Ok(WorkspaceResponse::Info(i)) = ws(&client, get).await {
        if i.status == WorkspaceStatus::Ready && carry {
            out.patch = uncommitted(&client, &old.workspace).await;
        }
        out.info = Some(i);
    }
    if let Ok(Response::Shares(list)) = client.request(Request::ListShares).await {
        out.shares = Some(list);
    }
    client.close();
    out
}

/// The workspace's uncommitted work (changed and new files), if any.
async fn uncommitted(client: &NodeClient, workspace: &str) -> Option<Result<String, String>> {
    let op = WorkspaceRequest::Files {
        id: workspace.to_string(),
        op: FilesOp::WorkPatch,
    };
    match ws(client, op).await {
        Ok(WorkspaceResponse::Files(FilesResponse::Diff { text, truncated })) => {
            if text.trim().is_empty() {
                None
            } else if truncated || text.len() > MAX_PATCH {
                Some(Err(format!(
                    "the diff is larger than {} KiB; it stays in the old workspace until it is deleted",
                    MAX_PATCH / 1024
                )))
            } else {
                Some(Ok(text))
            }
        }
        Ok(_) => Some(Err("the node answered the diff with something else".into())),
        Err(e) => Some(Err(format!("making the patch failed: {e:#}"))),
    }
}

/// A node from the provider's warm pool (or a new one), written into the node book.
async fn acquire(paths: &ClientPaths, provider: &str, size: Option<&str>) -> Result<NodeEntry> {
    use clap::ValueEnum;
    let name = super::cloud::ProviderName::from_str(provider, true).map_err(|_| {
        anyhow::anyhow!("unknown provider {provider:?}: use local, hetzner or scaleway")
    })?;
    let size: sam_provisioner::Size = match size {
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("--size {s:?}: {e}"))?,
        None => sam_provisioner::Size::Small,
    };
    let pool = super::cloud::pool_for(paths, name)?;
    let key = paths.identity()?;
    let owner = key.node_id();
    // the owner's key: new nodes are enrolled by their owner only
    let probe = sam_provisioner::IrohProbe::bind_as(&key, super::cloud::probe_bind()?)
        .await
        .map_err(anyhow::Error::msg)?;
    let got = pool.acquire(size, &owner, &probe).await;
    probe.close().await;
    let got = got.with_context(|| format!("no {provider} node of size {size} for the move"))?;
    eprintln!(
        "{} {provider} node {}",
        if got.reused { "warm" } else { "new" },
        got.vm.id
    );
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = book.upsert(&got.ticket, None)?;
    book.set_owner(&got.ticket.addr.id.to_string(), &owner);
    book.save(&paths.nodes())?;
    Ok(book.find(Some(&name))?.clone())
}

/// What [`carry_shares`] did.
struct Carried {
    /// (grantee NodeId, role, ticket for the new node)
    carried: Vec<(String, String, String)>,
    notes: Vec<String>,
}

/// Re-issues, on the new node, the old node's live shares of this conversation (or of its
/// old workspace, narrowed to the conversation): same grantee, role and expiry.
async fn carry_shares(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    ticket: &sam_protocol::Ticket,
    conv: &str,
    old_workspace: &str,
    list: &[ShareInfo],
) -> Carried {
    let mut out = Carried {
        carried: Vec::new(),
        notes: Vec::new(),
    };
    let now = crate::now_secs();
    let key = match paths.identity() {
        Ok(k) => k,
        Err(e) => {
            out.notes.push(format!("shares not carried: {e:#}"));
            return out;
        }
    };
    let picked: Vec<&ShareInfo> = list
        .iter()
        .filter(|s| !s.revoked && s.capability.expires_at.is_none_or(|e| e > now))
        .filter(|s| match &s.capability.scope {
            Some(Scope::Conversation(c)) => c == conv,
            Some(Scope::Workspace(w)) => w == old_workspace,
            None => false,
        })
        .collect();
    if picked.is_empty() {
        return out;
    }
    let client = match NodeClient::connect(ep, ticket).await {
        Ok(c) => c,
        Err(e) => {
            out.notes
                .push(format!("shares not carried: the new node: {e}"));
            return out;
        }
    };
    let proof = ticket
        .capability
        .clone()
        .filter(|c| c.cap.role == sam_protocol::Role::Owner);
    for s in picked {
        let grantee = match (&s.capability.grantee, s.redeemed_by) {
            (Grantee::Key(k), _) => *k,
            (Grantee::Invite(_), Some(k)) => k,
            (Grantee::Invite(_), None) => {
                out.notes.push(format!(
                    "an invite not used yet ({}) was not carried: invite them again on the new node",
                    s.capability.id_hex()
                ));
                continue;
            }
        };
        let cap = Capability::new(
            key.node_id(),
            ticket.addr.id,
            Grantee::Key(grantee),
            s.capability.role,
            Some(Scope::Conversation(conv.to_string())),
            now,
            s.capability.expires_at.map(|e| e.saturating_sub(now)),
        )
        .sign(&key, proof.clone());
        match client.request(Request::RegisterShare(cap.clone())).await {
            Ok(_) => {
                let t = sam_protocol::Ticket {
                    addr: ticket.addr.clone(),
                    capability: Some(cap),
                    invite_secret: None,
                };
                out.carried.push((
                    grantee.to_string(),
                    s.capability.role.as_str().to_string(),
                    t.to_string(),
                ));
            }
            Err(e) => out.notes.push(format!(
                "the share for {} was not carried: {e}",
                grantee.short()
            )),
        }
    }
    client.close();
    out
}
