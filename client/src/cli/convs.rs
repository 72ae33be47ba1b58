//! Conversations from the command line: new, ls, log, prompt, fork, export, sync.
//! Everything reads the local replica first, so history works with the node down.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sam_crdt::{Conversation, MessageId, MessageView, NewConversation, Role, Status};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use serde_json::json;

use super::Output;
use crate::book::{NodeBook, NodeEntry};
use crate::docs::{Replicas, open_stream};
use crate::paths::ClientPaths;

/// How long an opportunistic sync may take before we call the node unreachable.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Subcommand)]
pub enum ConvsCmd {
    /// Start a conversation in a workspace; prints its id.
    New {
        /// Workspace id on the node.
        #[arg(long)]
        workspace: String,
        /// The node (name or id; optional when only one is known).
        #[arg(long)]
        node: Option<String>,
        /// Agent: claude, codex, gemini, vibe.
        #[arg(long, default_value = "claude", conflicts_with = "agent_cmd")]
        agent: String,
        /// Any ACP agent command instead (the `custom` agent).
        #[arg(long)]
        agent_cmd: Option<String>,
        #[arg(long)]
        title: Option<String>,
        /// Permission policy: ask (default), allow-reads, allow-all.
        #[arg(long)]
        policy: Option<String>,
    },
    /// List conversations (local replicas, refreshed from reachable nodes).
    Ls {
        /// Show forks under their parents.
        #[arg(long)]
        tree: bool,
        /// Do not contact any node.
        #[arg(long)]
        offline: bool,
    },
}

pub async fn convs(paths: &ClientPaths, cmd: ConvsCmd) -> Result<Output> {
    match cmd {
        ConvsCmd::New {
            workspace,
            node,
            agent,
            agent_cmd,
            title,
            policy,
        } => {
            new(
                paths,
                &workspace,
                node.as_deref(),
                &agent,
                agent_cmd,
                title,
                policy,
            )
            .await
        }
        ConvsCmd::Ls { tree, offline } => ls(paths, tree, offline).await,
    }
}

fn me(paths: &ClientPaths) -> Result<String> {
    Ok(paths.identity()?.node_id().to_string())
}

/// Pushes (and pulls) one document; `Ok(false)` when the node was unreachable.
pub async fn sync_with_node(
    paths: &ClientPaths,
    replicas: &mut Replicas,
    conv: &mut Conversation,
    create: bool,
) -> Result<bool> {
    let node = conv.workspace().node;
    let book = NodeBook::load(&paths.nodes())?;
    let Ok(entry) = book.find(Some(&node)) else {
        bail!(
            "the node of this conversation ({}) is not in your node book: `sam connect <ticket>` first",
            &node[..node.len().min(10)]
        );
    };
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let result = async {
        let mut stream = match open_stream(&ep, &entry.ticket()?, &conv.id(), create).await {
            Ok(s) => s,
            Err(e @ crate::conn::ConnectError::Unreachable { .. }) => {
                tracing::info!("{e}");
                eprintln!("note: {e}");
                note_reachability(paths, &[(entry.id.clone(), false)]);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        stream
            .sync_once(conv, |c| replicas.save(c), SYNC_TIMEOUT)
            .await?;
        stream.close(None).await;
        note_reachability(paths, &[(entry.id.clone(), true)]);
        Ok(true)
    }
    .await;
    ep.close().await;
    result
}

async fn new(
    paths: &ClientPaths,
    workspace: &str,
    node: Option<&str>,
    agent: &str,
    agent_cmd: Option<String>,
    title: Option<String>,
    policy: Option<String>,
) -> Result<Output> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(node)?.clone();
    let author = me(paths)?;
    let id = MessageId::random().to_string();
    let agent = if agent_cmd.is_some() { "custom" } else { agent };
    let mut conv = Conversation::create(
        NewConversation {
            id: id.clone(),
            title: title.unwrap_or_else(|| format!("{agent} in {workspace}")),
            agent: agent.to_string(),
            workspace_node: entry.id.clone(),
            workspace_id: workspace.to_string(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )?;
    if let Some(cmd) = agent_cmd {
        conv.set_agent_cmd(&author, &cmd)?;
    }
    if let Some(p) = policy {
        if sam_protocol::agent::PermissionPolicy::parse(&p).is_none() {
            bail!("unknown policy {p:?}: use ask, allow-reads or allow-all");
        }
        conv.set_policy(&author, &p)?;
    }
    let mut replicas = Replicas::open(paths)?;
    replicas.save(&mut conv)?;
    let reached = sync_with_node(paths, &mut replicas, &mut conv, true).await?;
    let note = if reached {
        format!("conversation created on {}", entry.name)
    } else {
        format!(
            "node {} unreachable: the conversation is saved here and will be sent with the next `sam sync`",
            entry.name
        )
    };
    Ok(Output::new(
        json!({ "id": id, "node": entry.id, "synced": reached }),
        format!("{note}\n{id}"),
    ))
}

async fn ls(paths: &ClientPaths, tree: bool, offline: bool) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    if !offline {
        pull_new(paths, &mut replicas).await;
    }
    let mut rows = Vec::new();
    for id in replicas.ids()? {
        match replicas.load(&id) {
            Ok(c) => rows.push(c),
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    rows.sort_by_key(|c| c.created_at());
    let book = NodeBook::load(&paths.nodes()).unwrap_or_default();
    let now = crate::now_secs();
    let down = |c: &Conversation| {
        book.find(Some(&c.workspace().node))
            .ok()
            .and_then(|e| e.unreachable_note(now))
    };
    let line = |c: &Conversation, depth: usize| {
        let msgs = c.messages();
        let queued = msgs.iter().filter(|m| m.status == Status::Queued).count();
        let running = msgs
            .iter()
            .any(|m| matches!(m.status, Status::Running | Status::Streaming));
        let state = match down(c) {
            // Never "working" when nobody can tell: say what we know.
            Some(note) if running => format!(" · {note}; last seen working"),
            Some(note) => format!(" · {note}"),
            None if running => " · working".to_string(),
            None => String::new(),
        };
        let queued = if queued > 0 {
            format!(", {queued} queued")
        } else {
            String::new()
        };
        format!(
            "{}{}\t{}\t{}\t{} messages{queued}{state}",
            "  ".repeat(depth),
            c.id(),
            c.agent(),
            c.title(),
            msgs.len(),
        )
    };
    let mut text = Vec::new();
    if tree {
        let ids: Vec<String> = rows.iter().map(|c| c.id()).collect();
        let mut children: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut roots = Vec::new();
        for (i, c) in rows.iter().enumerate() {
            match c.parent() {
                Some(p) if ids.contains(&p.conversation) => {
                    children.entry(p.conversation).or_default().push(i)
                }
                _ => roots.push(i),
            }
        }
        let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            text.push(line(&rows[i], depth));
            if let Some(kids) = children.get(&rows[i].id()) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
    } else {
        text.extend(rows.iter().map(|c| line(c, 0)));
    }
    let list: Vec<_> = rows
        .iter()
        .map(|c| {
            json!({
                "id": c.id(), "title": c.title(), "agent": c.agent(),
                "workspace": c.workspace().id, "node": c.workspace().node,
                "parent": c.parent().map(|p| p.conversation),
                "messages": c.message_count(),
                "node_unreachable": down(c),
            })
        })
        .collect();
    Ok(Output::new(json!(list), text.join("\n")))
}

/// Fetches conversations that reachable nodes have and we do not (best effort).
/// Remembers which nodes answered (for "unreachable since …").
pub(crate) fn note_reachability(paths: &ClientPaths, status: &[(String, bool)]) {
    if let Ok(mut book) = NodeBook::load(&paths.nodes()) {
        let now = crate::now_secs();
        for (id, ok) in status {
            book.set_reachable(id, *ok, now);
        }
        let _ = book.save(&paths.nodes());
    }
}

async fn pull_new(paths: &ClientPaths, replicas: &mut Replicas) {
    let Ok(book) = NodeBook::load(&paths.nodes()) else {
        return;
    };
    let Ok(key) = paths.identity() else { return };
    let Ok(ep) = crate::endpoint::bind(&key, None).await else {
        return;
    };
    let mut status = Vec::new();
    for entry in &book.nodes {
        let r = pull_node(&ep, entry, replicas).await;
        if let Err(e) = &r {
            eprintln!("note: {}: {e:#}", entry.name);
        }
        status.push((entry.id.clone(), r.is_ok()));
    }
    ep.close().await;
    note_reachability(paths, &status);
}

pub(crate) async fn pull_node(
    ep: &iroh::Endpoint,
    entry: &NodeEntry,
    replicas: &mut Replicas,
) -> Result<()> {
    pull_from(ep, &entry.ticket()?, replicas).await.map(|_| ())
}

/// Fetches the conversations the ticket's peer (a node, or a teammate running
/// `sam serve`) lets us read and we do not have; returns how many.
pub(crate) async fn pull_from(
    ep: &iroh::Endpoint,
    ticket: &sam_protocol::Ticket,
    replicas: &mut Replicas,
) -> Result<usize> {
    let ticket = ticket.clone();
    let client = tokio::time::timeout(
        Duration::from_secs(3),
        crate::conn::NodeClient::connect(ep, &ticket),
    )
    .await
    .context("unreachable")??;
    let Response::Conv(ConvResponse::List(list)) =
        client.request(Request::Conv(ConvRequest::List)).await?
    else {
        bail!("unexpected answer to the conversation list");
    };
    client.close();
    let (present, missing): (Vec<_>, Vec<_>) =
        list.into_iter().partition(|s| replicas.contains(&s.id));
    let count = missing.len();
    for summary in missing {
        let mut conv = Conversation::new_replica();
        let mut stream = open_stream(ep, &ticket, &summary.id, false).await?;
        stream
            .sync_once(&mut conv, |_| Ok(()), SYNC_TIMEOUT)
            .await?;
        stream.close(None).await;
        replicas.save(&mut conv)?;
    }
    // Conversations held here whose copy on this peer names another workspace: moved (`sam
    // move`) while this replica could not hear of it (e.g. its old node is gone).
    for summary in present {
        let Ok(mut conv) = replicas.load(&summary.id) else {
            continue;
        };
        if conv.workspace().id == summary.workspace {
            continue;
        }
        let mut stream = open_stream(ep, &ticket, &summary.id, false).await?;
        stream
            .sync_once(&mut conv, |c| replicas.save(c), SYNC_TIMEOUT)
            .await?;
        stream.close(None).await;
        replicas.save(&mut conv)?;
    }
    Ok(count)
}

/// `sam log`.
pub async fn log(paths: &ClientPaths, conv: &str, follow: bool) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let mut doc = replicas.load(&id)?;
    let mut printer = Printer::default();
    let msgs = doc.messages();
    if !follow {
        let text = msgs.iter().map(render).collect::<Vec<_>>().join("\n\n");
        let json = json!(msgs.iter().map(message_json).collect::<Vec<_>>());
        return Ok(Output::new(json, text));
    }
    printer.show(&msgs);
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    // The first link must come up (a clear error if not); after that a lost link is dialled
    // again, at the node the conversation names then (a `sam move` changes it), until Ctrl-C.
    let first = follow_node(paths, &doc)?;
    let mut stream = open_stream(&ep, &first.ticket()?, &id, false)
        .await
        .with_context(|| format!("follow {id} on {}", first.name))?;
    let following = async {
        let mut wait = FOLLOW_RETRY_MIN;
        loop {
            let ended = stream
                .follow(
                    &mut doc,
                    |c| replicas.save(c),
                    |c| printer.show(&c.messages()),
                )
                .await;
            let reason = match ended {
                Ok(()) => "the node ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            eprintln!("sam: link lost ({reason}); following again…");
            stream = follow_again(&ep, paths, &doc, &id, &mut wait).await?;
        }
    };
    let r: Result<()> = tokio::select! {
        r = following => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    ep.close().await;
    r?;
    Ok(Output::new(serde_json::Value::Null, ""))
}

/// Dials the node hosting `doc` now (a `sam move` changes it) until a stream to `id`
/// opens, waiting `wait` (doubling) between tries; each try is said on stderr.
pub(crate) async fn follow_again(
    ep: &iroh::Endpoint,
    paths: &ClientPaths,
    doc: &Conversation,
    id: &str,
    wait: &mut Duration,
) -> Result<crate::docs::DocStream> {
    loop {
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(FOLLOW_RETRY_MAX);
        let node = follow_node(paths, doc)?;
        match open_stream(ep, &node.ticket()?, id, false).await {
            Ok(s) => {
                eprintln!(
                    "sam: following {} on {} again",
                    &id[..8.min(id.len())],
                    node.name
                );
                *wait = FOLLOW_RETRY_MIN;
                return Ok(s);
            }
            Err(e) => eprintln!(
                "sam: {} not reachable ({e:#}); next try in {:.0?}",
                node.name, wait
            ),
        }
    }
}

/// Waits between tries to follow a conversation again.
pub(crate) const FOLLOW_RETRY_MIN: Duration = Duration::from_millis(500);
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(10);

/// The book's entry of the node hosting `doc` now.
pub(crate) fn follow_node(paths: &ClientPaths, doc: &Conversation) -> Result<NodeEntry> {
    let book = NodeBook::load(&paths.nodes())?;
    Ok(book.find(Some(&doc.workspace().node))?.clone())
}

/// Prints messages incrementally: new messages whole, then appended text only.
#[derive(Default)]
pub struct Printer {
    seen: HashMap<MessageId, (usize, Status)>,
}

impl Printer {
    /// Like [`Self::show`] for the messages after `after` only (a turn's output).
    pub fn show_after(&mut self, msgs: &[MessageView], after: &MessageId) {
        let start = msgs
            .iter()
            .position(|m| &m.id == after)
            .map(|p| p + 1)
            .unwrap_or(msgs.len());
        self.show(&msgs[start..]);
    }

    pub fn show(&mut self, msgs: &[MessageView]) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for m in msgs {
            match self.seen.get(&m.id) {
                None => {
                    let _ = write!(out, "\n{}\n{}", header(m), m.text);
                }
                Some((len, status)) => {
                    if m.text.len() > *len && m.text.is_char_boundary(*len) {
                        let _ = write!(out, "{}", &m.text[*len..]);
                    }
                    if *status != m.status {
                        let _ = write!(out, "\n  [{}]", m.status);
                    }
                }
            }
            self.seen.insert(m.id.clone(), (m.text.len(), m.status));
        }
        let _ = out.flush();
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(8)]
}

fn header(m: &MessageView) -> String {
    let mut h = format!(
        "── {} · {} · {} · {}",
        m.role,
        short(&m.author),
        m.status,
        m.id
    );
    if let Some(r) = &m.reason {
        h.push_str(&format!(" · {r}"));
    }
    if let Some(t) = &m.tool {
        h.push_str(&format!(
            "\n   tool {} \"{}\" {}",
            t.kind, t.title, t.status
        ));
    }
    if let Some(p) = &m.permission {
        let opts: Vec<_> = p
            .options
            .iter()
            .map(|o| format!("{} ({})", o.id, o.name))
            .collect();
        h.push_str(&format!("\n   options: {}", opts.join(", ")));
        if let Some(a) = &p.chosen {
            h.push_str(&format!("\n   answered {} by {}", a.option, short(&a.by)));
        }
    }
    h
}

fn render(m: &MessageView) -> String {
    let body = match m.role {
        Role::Tool => m
            .tool
            .as_ref()
            .map(|t| t.output.clone())
            .unwrap_or_default(),
        _ => m.text.clone(),
    };
    format!("{}\n{}", header(m), body)
}

fn message_json(m: &MessageView) -> serde_json::Value {
    let tool = m.tool.as_ref().map(|t| {
        json!({
            "kind": t.kind, "title": t.title, "status": t.status.as_str(),
            "locations": t.locations,
        })
    });
    let permission = m.permission.as_ref().map(|p| {
        json!({
            "options": p.options.iter().map(|o| json!({"id": o.id, "name": o.name, "kind": o.kind})).collect::<Vec<_>>(),
            "chosen": p.chosen.as_ref().map(|a| json!({"option": a.option, "by": a.by, "at": a.at})),
        })
    });
    json!({
        "id": m.id.to_string(), "role": m.role.as_str(), "author": m.author,
        "created_at": m.created_at, "status": m.status.as_str(), "text": m.text,
        "reason": m.reason, "tool": tool, "permission": permission,
    })
}

/// `sam prompt`.
pub async fn prompt(paths: &ClientPaths, conv: &str, text: &str) -> Result<Output> {
    if text.trim().is_empty() {
        bail!("the prompt is empty");
    }
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let mut doc = replicas.load(&id)?;
    refuse_viewer(paths, &doc, "prompt")?;
    let msg = doc.append_user_message(&me(paths)?, text, Status::Queued)?;
    replicas.save(&mut doc)?;
    let reached = match sync_with_node(paths, &mut replicas, &mut doc, false).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: {e:#}");
            false
        }
    };
    let note = if reached {
        "sent to the node".to_string()
    } else {
        format!(
            "queued — will send when the node is reachable (`sam sync`)\n{}",
            continue_hint(paths, &doc)
        )
    };
    Ok(Output::new(
        json!({ "message": msg.to_string(), "conversation": id, "sent": reached }),
        format!("{note}\n{msg}"),
    ))
}

/// How to go on when the conversation's node does not answer: `sam move`.
fn continue_hint(paths: &ClientPaths, doc: &Conversation) -> String {
    let node = doc.workspace().node;
    let book = NodeBook::load(&paths.nodes()).unwrap_or_default();
    let entry = book.find(Some(&node)).ok();
    let down = entry
        .and_then(|e| e.unreachable_note(crate::now_secs()))
        .unwrap_or_else(|| format!("node {} does not answer", short(&node)));
    let others: Vec<&str> = book
        .nodes
        .iter()
        .filter(|e| e.id != node)
        .map(|e| e.name.as_str())
        .collect();
    let to = match others.as_slice() {
        [] => "--provider local".to_string(),
        [one, ..] => format!("--node {one}"),
    };
    format!(
        "{down}: to continue this conversation elsewhere with its history, run `sam move {} {to}` (the queued prompt goes along)",
        short(&doc.id())
    )
}

/// Refuses to write when this peer only holds a viewer capability for the
/// conversation's node (the node would refuse the change anyway).
pub(crate) fn refuse_viewer(paths: &ClientPaths, doc: &Conversation, what: &str) -> Result<()> {
    let book = NodeBook::load(&paths.nodes())?;
    if let Ok(entry) = book.find(Some(&doc.workspace().node))
        && let Ok(t) = entry.ticket()
        && let Some(cap) = &t.capability
        && cap.cap.role < sam_protocol::Role::Collaborator
    {
        bail!(
            "you are a {} on node {}: to {what} you need the collaborator role (ask the owner for `sam share … --role collaborator`)",
            cap.cap.role,
            entry.name
        );
    }
    Ok(())
}

/// `sam fork`.
pub async fn fork(paths: &ClientPaths, conv: &str, at: &str) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let mut doc = replicas.load(&id)?;
    let at = doc
        .messages()
        .into_iter()
        .map(|m| m.id)
        .find(|m| m.as_str() == at || m.as_str().starts_with(at))
        .with_context(|| format!("no message {at:?} in conversation {id}"))?;
    let new_id = MessageId::random().to_string();
    let mut forked = doc.fork_at(&at, &new_id, &me(paths)?)?;
    replicas.save(&mut forked)?;
    let reached = sync_with_node(paths, &mut replicas, &mut forked, true)
        .await
        .unwrap_or(false);
    Ok(Output::new(
        json!({ "id": new_id, "parent": id, "at": at.to_string(), "synced": reached }),
        format!("forked {} at {at}\n{new_id}", short(&id)),
    ))
}

/// `sam export`.
pub fn export(paths: &ClientPaths, conv: &str, out: &std::path::Path) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let mut doc = replicas.load(&id)?;
    let bytes = doc.save();
    std::fs::write(out, &bytes).with_context(|| format!("write {}", out.display()))?;
    Ok(Output::new(
        json!({ "id": id, "out": out, "bytes": bytes.len() }),
        format!(
            "{} bytes of plain Automerge\n{}",
            bytes.len(),
            out.display()
        ),
    ))
}

/// `sam sync`: pushes and pulls every local replica with its node.
pub async fn sync_all(paths: &ClientPaths) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let mut synced = Vec::new();
    let mut unreachable = Vec::new();
    for id in replicas.ids()? {
        let mut doc = replicas.load(&id)?;
        match sync_with_node(paths, &mut replicas, &mut doc, true).await {
            Ok(true) => synced.push(id),
            Ok(false) => unreachable.push(id),
            Err(e) => {
                eprintln!("{id}: {e:#}");
                unreachable.push(id);
            }
        }
    }
    Ok(Output::new(
        json!({ "synced": synced, "unreachable": unreachable }),
        format!("{} synced, {} unreachable", synced.len(), unreachable.len()),
    ))
}
