//! `sam team create|ls|release|rm`: nodes from a team provisioner (`sam-provisioner serve
//! --team`, protocol `sam/prov/1`).
//!
//! The provisioner's ticket (the first line `sam-provisioner serve` prints) is given once with
//! `--via` and remembered in `$SAM_HOME/team.toml` (`0600`). A node handed out goes in the node
//! book under its name, with the member's ticket.
//!
//! Releasing or deleting a node loses whatever only that node has: the provisioner wipes a
//! released node (or deletes it). So `release` and `rm` first bring every conversation the
//! node serves that this member can read into the local replica, the way `sam workspace rm`
//! does ([`super::teardown`]): each one is synced until this replica holds exactly the node's
//! heads, and the streams stay open while the provisioner is asked. When any of them cannot be
//! held here (node unreachable, a document refused or not saved) nothing is released, unless
//! `--force`, which says on stderr what is lost.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sam_protocol::Ticket;
use sam_protocol::prov::{HeldConv, ProvNode, ProvRequest, ProvResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Output;
use crate::book::NodeBook;
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

/// How long the node may take to answer before the release is refused (or forced).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum TeamCmd {
    /// Ask the team provisioner for a node (a warm one when there is one).
    Create {
        /// The provisioner's ticket (the line `sam-provisioner serve --team` prints);
        /// remembered, so later commands need no --via.
        #[arg(long)]
        via: Option<String>,
        /// small (default), medium or large.
        #[arg(long, default_value = "small")]
        size: String,
        /// A name for the node in your node book.
        #[arg(long)]
        name: Option<String>,
    },
    /// The nodes the provisioner handed to you.
    Ls {
        /// The provisioner's ticket (default: the one remembered from `create --via`).
        #[arg(long)]
        via: Option<String>,
    },
    /// Give a node back to the team pool, after its conversations are held here.
    Release {
        /// The node (name or id in your node book, or the provisioner's VM id).
        node: String,
        /// Release even when some conversation cannot be brought here (it is lost).
        #[arg(long)]
        force: bool,
        /// The provisioner's ticket (default: the one remembered from `create --via`).
        #[arg(long)]
        via: Option<String>,
    },
    /// Delete a node now, after its conversations are held here.
    Rm {
        node: String,
        /// Delete even when some conversation cannot be brought here (it is lost).
        #[arg(long)]
        force: bool,
        /// The provisioner's ticket (default: the one remembered from `create --via`).
        #[arg(long)]
        via: Option<String>,
    },
}

/// `$SAM_HOME/team.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamFile {
    /// The provisioner's ticket.
    provisioner: Option<String>,
}

impl TeamFile {
    fn path(paths: &ClientPaths) -> std::path::PathBuf {
        paths.home.join("team.toml")
    }

    fn load(paths: &ClientPaths) -> Result<Self> {
        let path = Self::path(paths);
        match std::fs::read_to_string(&path) {
            Ok(t) => toml::from_str(&t).with_context(|| format!("{} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
}

/// The provisioner to ask: `via` (remembered for next time) or the remembered one.
fn provisioner(paths: &ClientPaths, via: Option<&str>) -> Result<Ticket> {
    if let Some(via) = via {
        // The plain line `sam-provisioner serve` prints, or its `--json` line.
        let via = via.trim();
        let via = match serde_json::from_str::<serde_json::Value>(via) {
            Ok(v) if v.is_object() => v["ticket"]
                .as_str()
                .context("--via: this JSON has no \"ticket\"")?
                .to_owned(),
            _ => via.to_owned(),
        };
        let ticket: Ticket = via
            .parse()
            .context("--via: not a provisioner ticket (the line `sam-provisioner serve` prints)")?;
        let file = TeamFile {
            provisioner: Some(ticket.to_string()),
        };
        let text = toml::to_string(&file).context("serialise team.toml")?;
        super::cloud::write_private(&TeamFile::path(paths), text.as_bytes())?;
        return Ok(ticket);
    }
    let file = TeamFile::load(paths)?;
    let Some(t) = file.provisioner else {
        bail!(
            "no team provisioner known: give its ticket once with --via (the line `sam-provisioner serve --team` prints)"
        );
    };
    t.parse()
        .with_context(|| format!("{} holds a bad ticket", TeamFile::path(paths).display()))
}

async fn ask(ep: &iroh::Endpoint, via: &Ticket, req: ProvRequest) -> Result<ProvResponse> {
    match sam_provisioner::serve::request(ep, &via.addr, req)
        .await
        .context("team provisioner")?
    {
        ProvResponse::Error(e) => bail!("team provisioner: {e}"),
        other => Ok(other),
    }
}

fn node_json(n: &ProvNode, name: Option<&str>) -> serde_json::Value {
    json!({
        "id": n.id, "name": name, "node": n.ticket.addr.id.to_string(),
        "size": n.size, "pool": n.pool, "reused": n.reused,
    })
}

pub async fn run(paths: &ClientPaths, cmd: TeamCmd) -> Result<Output> {
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let r = match cmd {
        TeamCmd::Create { via, size, name } => {
            let via = provisioner(paths, via.as_deref())?;
            create(paths, &ep, &via, &size, name.as_deref()).await
        }
        TeamCmd::Ls { via } => {
            let via = provisioner(paths, via.as_deref())?;
            ls(paths, &ep, &via).await
        }
        TeamCmd::Release { node, force, via } => {
            let via = provisioner(paths, via.as_deref())?;
            give_back(paths, &ep, &via, &node, force, false).await
        }
        TeamCmd::Rm { node, force, via } => {
            let via = provisioner(paths, via.as_deref())?;
            give_back(paths, &ep, &via, &node, force, true).await
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), ep.close()).await;
    r
}

async fn create(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    via: &Ticket,
    size: &str,
    name: Option<&str>,
) -> Result<Output> {
    eprintln!("asking the team provisioner for a {size} node…");
    let ProvResponse::Node(n) = ask(
        ep,
        via,
        ProvRequest::CreateNode {
            size: size.to_owned(),
        },
    )
    .await?
    else {
        bail!("the team provisioner answered with something else than a node");
    };
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = book.upsert(&n.ticket, name)?;
    // The node's owner is the provisioner (it signed our capability).
    if let Some(cap) = &n.ticket.capability {
        book.set_owner(&n.ticket.addr.id.to_string(), &cap.cap.issuer);
    }
    book.save(&paths.nodes())?;
    Ok(Output::new(
        node_json(&n, Some(&name)),
        format!(
            "node {name} ({}, {}{}) from the team provisioner\n{name}",
            n.id,
            n.size,
            if n.reused { ", warm" } else { "" }
        ),
    ))
}

async fn list(ep: &iroh::Endpoint, via: &Ticket) -> Result<Vec<ProvNode>> {
    match ask(ep, via, ProvRequest::ListNodes).await? {
        ProvResponse::Nodes(n) => Ok(n),
        _ => bail!("the team provisioner answered the list with something else"),
    }
}

async fn ls(paths: &ClientPaths, ep: &iroh::Endpoint, via: &Ticket) -> Result<Output> {
    let nodes = list(ep, via).await?;
    let book = NodeBook::load(&paths.nodes())?;
    let mut items = Vec::new();
    let mut lines = Vec::new();
    for n in &nodes {
        let node = n.ticket.addr.id.to_string();
        let name = book
            .nodes
            .iter()
            .find(|e| e.id == node)
            .map(|e| e.name.clone());
        lines.push(format!(
            "{}\t{}\t{}\t{}",
            n.id,
            name.as_deref().unwrap_or("-"),
            n.size,
            n.ticket.addr.id.short()
        ));
        items.push(node_json(n, name.as_deref()));
    }
    Ok(Output::new(json!(items), lines.join("\n")))
}

/// `release` (`delete == false`) or `rm`.
async fn give_back(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    via: &Ticket,
    node: &str,
    force: bool,
    delete: bool,
) -> Result<Output> {
    let verb = if delete { "deleted" } else { "released" };
    let mine = list(ep, via).await?;
    let mut book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(Some(node)).ok().cloned();
    let vm = mine
        .iter()
        .find(|n| match &entry {
            Some(e) => n.ticket.addr.id.to_string() == e.id,
            None => n.id == node,
        })
        .with_context(|| format!("{node:?} is not a node the team provisioner handed to you"))?;
    // The provisioner's fresh ticket for us (the one in the book may have expired).
    let ticket = vm.ticket.clone();
    let name = entry
        .as_ref()
        .map(|e| e.name.clone())
        .unwrap_or_else(|| vm.id.clone());

    eprintln!("bringing the conversations of node {name} here before it is {verb}…");
    let mut lost: Vec<String> = Vec::new();
    let mut convs: Vec<String> = Vec::new();
    let mut open = Vec::new();
    let mut held: Vec<HeldConv> = Vec::new();
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, NodeClient::connect(ep, &ticket)).await
    {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            lost.push(format!(
                "every conversation it serves (the node refused us: {e})"
            ));
            None
        }
        Err(_) => {
            lost.push("every conversation it serves (the node does not answer)".to_owned());
            None
        }
    };
    if let Some(client) = &client {
        match super::teardown::hold_conversations(paths, ep, client, &ticket, |_| true).await {
            Ok((all, streams, failed, heads)) => {
                for conv in &all {
                    if !failed.contains(conv) {
                        eprintln!("  {conv}: held here, in sync");
                    }
                }
                lost.extend(failed.iter().map(|c| format!("conversation {c}")));
                convs = all;
                open = streams;
                held = heads
                    .into_iter()
                    .map(|(conversation, heads)| HeldConv {
                        conversation,
                        heads,
                    })
                    .collect();
            }
            Err(e) => lost.push(format!("every conversation it serves ({e:#})")),
        }
    }
    let close = |open: Vec<crate::docs::DocStream>| async move {
        for s in open {
            s.close(None).await;
        }
    };
    if !lost.is_empty() && !force {
        close(open).await;
        if let Some(c) = client {
            c.close();
        }
        bail!(
            "node {name} was not {verb}: these cannot be held here first: {}. Nothing was {verb}; `--force` {} it anyway and loses them",
            lost.join("; "),
            if delete { "deletes" } else { "releases" }
        );
    }
    if !lost.is_empty() {
        eprintln!(
            "warning: --force: node {name} is {verb} although these are not held here and are lost: {}",
            lost.join("; ")
        );
    }
    // The streams stay open while the provisioner wipes the node: we are a peer in sync.
    // The provisioner checks for itself that the heads held here cover the node's (unless
    // --force); more than it takes cannot be proved held.
    if let Err(e) = sam_protocol::prov::check_held(&held) {
        if !force {
            close(open).await;
            if let Some(c) = client {
                c.close();
            }
            bail!(
                "node {name} was not {verb}: {e}, more than one release can show held; `--force` {} it anyway",
                if delete { "deletes" } else { "releases" }
            );
        }
        held.clear();
    }
    let req = if delete {
        ProvRequest::DeleteNode {
            id: vm.id.clone(),
            held,
            force,
        }
    } else {
        ProvRequest::ReleaseNode {
            id: vm.id.clone(),
            held,
            force,
        }
    };
    let r = ask(ep, via, req).await;
    close(open).await;
    if let Some(c) = client {
        c.close();
    }
    match r? {
        ProvResponse::Done { .. } => {}
        _ => bail!("the team provisioner answered with something else than done"),
    }
    if let Some(e) = &entry {
        book.forget_id(&e.id);
        book.save(&paths.nodes())?;
    }
    let held = convs.len().saturating_sub(
        lost.iter()
            .filter(|l| l.starts_with("conversation "))
            .count(),
    );
    Ok(Output::new(
        json!({
            "id": vm.id, "name": name, "done": verb, "conversations": convs,
            "held_here": held, "forced": force && !lost.is_empty(), "lost": lost,
        }),
        format!(
            "node {name} {verb}; {held} of its {} conversation(s) are held here\n{}",
            convs.len(),
            vm.id
        ),
    ))
}
