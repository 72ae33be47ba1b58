//! The `sam` command line: argument types (clap derive) and one function per command.
//! Each command returns an [`Output`]: a JSON value for `--json` and text whose last
//! line is the main result.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sam_protocol::capability::{Capability, Grantee, invite_hash, parse_id};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::{NodeId, Role, Ticket};
use serde_json::json;

use crate::book::NodeBook;
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

pub mod agent;
pub mod cloud;
pub mod convs;
pub mod files;
pub mod idea;
pub mod ports;
pub mod relocate;
pub mod shell;
pub mod team;
pub mod teardown;
pub mod up;
pub mod voice;
pub mod workspace;

/// SAM — run AI coding agents in throwaway workspaces, peer to peer.
///
/// Files live in $SAM_HOME (default ~/.sam). Every command prints its main result
/// as the last line of stdout; --json prints one JSON value instead.
#[derive(Debug, Parser)]
#[command(name = "sam", version, about, long_about)]
pub struct Cli {
    /// Print one JSON value instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logs (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start a local node on this machine and connect to it.
    Up {
        /// UDP address for the local node (default 127.0.0.1:0: this machine only).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Start the node, print its ticket and exit, leaving the node running.
        #[arg(long)]
        detach: bool,
        /// Chat in the terminal even when a display is available.
        #[arg(long)]
        cli: bool,
        /// Agent for the chat: claude, codex, gemini, vibe.
        #[arg(long, default_value = "claude")]
        agent: String,
    },
    /// Print this peer's NodeId (give it to a node owner to be let in).
    Id,
    /// Remember a node by its ticket and check that it lets us in.
    Connect {
        ticket: String,
        /// A short name for the node.
        #[arg(long)]
        name: Option<String>,
    },
    /// Join what someone shared with you (a ticket from `sam share`).
    Join {
        ticket: String,
        #[arg(long)]
        name: Option<String>,
        /// Fetch the history from a teammate running `sam serve` (its ticket),
        /// e.g. when the node is gone.
        #[arg(long)]
        via: Option<String>,
    },
    /// Serve the conversations held here to teammates (history outlives the node).
    Serve {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
    },
    /// `sam provider add`, `sam vm ls|rm`, `sam pool ls|reap`.
    #[command(flatten)]
    Cloud(cloud::CloudCmd),
    /// Nodes from a team provisioner: `sam team create|ls|release|rm` (release and rm bring
    /// the node's conversations here first).
    Team {
        #[command(subcommand)]
        cmd: team::TeamCmd,
    },
    /// Known nodes.
    Nodes {
        #[command(subcommand)]
        cmd: NodesCmd,
    },
    /// Version, uptime, peers and round-trip time of a node.
    Status {
        /// Node name or id (optional when only one is known).
        node: Option<String>,
    },
    /// Let someone else use a node: prints a ticket for them.
    Share {
        /// The node (name or id).
        target: String,
        #[arg(long)]
        role: Role,
        /// The grantee's NodeId (`sam id` on their side).
        #[arg(long, conflicts_with = "invite")]
        to: Option<NodeId>,
        /// A one-time invite instead: bound to the first key that uses it.
        #[arg(long)]
        invite: bool,
        /// Expiry, e.g. 30m, 12h, 7d.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Capabilities a node knows of (owner only).
    Shares {
        #[command(subcommand)]
        cmd: SharesCmd,
    },
    /// Revoke a capability at once: open streams close, later connections are refused.
    Revoke {
        /// Capability id (from `sam shares ls`).
        id: String,
        /// The node (optional when only one is known).
        #[arg(long)]
        node: Option<String>,
    },
    /// From an idea to a pull request: workspace on `sam/<slug>`, autonomous agent, commit,
    /// push and PR (GitHub token from GH_TOKEN/GITHUB_TOKEN, `gh auth token` or the keyring).
    Idea {
        idea: String,
        #[arg(long)]
        repo: String,
        #[arg(long, default_value = "main")]
        base: String,
        #[arg(long, default_value = "claude", conflicts_with = "agent_cmd")]
        agent: String,
        /// Any ACP agent command instead (the `custom` agent).
        #[arg(long)]
        agent_cmd: Option<String>,
        /// A node you have already (`sam nodes`); without it a node comes from --provider's
        /// warm pool and goes back to it after the PR.
        #[arg(long)]
        node: Option<String>,
        /// Where the node comes from: local (default: a `sam-node` on this machine), hetzner
        /// or scaleway (`sam provider add`). A warm idle node first, else a new one.
        #[arg(long)]
        provider: Option<String>,
        /// small (default), medium or large.
        #[arg(long)]
        size: Option<String>,
        /// A lightweight workspace (base image, no devcontainer build).
        #[arg(long)]
        lightweight: bool,
        /// Keep the workspace after the PR for follow-up prompts (a pool node stays busy until
        /// `sam vm release`).
        #[arg(long)]
        keep: bool,
    },
    /// Commit, push and open (or reuse) the PR of a conversation now: a retry.
    Pr {
        conv: String,
        #[arg(long, default_value = "main")]
        base: String,
        /// The branch (default: `sam/<slug of the conversation title>`).
        #[arg(long)]
        branch: Option<String>,
    },
    /// Workspaces on a node: create, ls, rm, logs, recreate, creds.
    Workspace {
        #[command(subcommand)]
        cmd: workspace::WorkspaceCmd,
    },
    /// A shared terminal in a workspace (attaches to its first one by default).
    Shell {
        workspace: String,
        /// Start another terminal instead of joining the first one.
        #[arg(long, conflicts_with = "id")]
        new: bool,
        /// Join the terminal with this id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// TCP listeners in a workspace.
    Ports {
        workspace: String,
        /// Keep printing changes.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        node: Option<String>,
    },
    /// Forward 127.0.0.1:LOCAL to PORT in a workspace.
    Forward {
        workspace: String,
        port: u16,
        /// Local port (default: the same as PORT).
        #[arg(long)]
        local: Option<u16>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Files of a workspace: ls, cat, diff, get, put.
    Files {
        #[command(subcommand)]
        cmd: files::FilesCmd,
    },
    /// Conversations: new, ls.
    Convs {
        #[command(subcommand)]
        cmd: convs::ConvsCmd,
    },
    #[command(flatten)]
    Conv(ConvCmds),
    /// The native app (needs a display).
    Gui,
}

#[derive(Debug, Subcommand)]
pub enum ConvCmds {
    /// Replay a conversation from the local replica (works offline).
    Log {
        conv: String,
        /// Keep following live changes from the node.
        #[arg(long)]
        follow: bool,
    },
    /// Send a prompt; queued locally when the node is unreachable.
    Prompt {
        conv: String,
        #[arg(required_unless_present = "audio")]
        text: Option<String>,
        /// Transcribe this WAV file (settings in $SAM_HOME/voice.toml) and send the text.
        #[arg(long, conflicts_with = "text")]
        audio: Option<std::path::PathBuf>,
        /// Follow the agent's answer until the turn ends (Ctrl-C cancels it).
        #[arg(long)]
        follow: bool,
    },
    /// Cancel the running turn of a conversation.
    Cancel { conv: String },
    /// Answer a permission request with one of the agent's options.
    Permit {
        conv: String,
        message: String,
        option: String,
    },
    /// Chat with an agent interactively (creates a conversation unless --conv).
    Chat {
        #[arg(long, default_value = "claude")]
        agent: String,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// Continue this conversation.
        #[arg(long)]
        conv: Option<String>,
    },
    /// Read a message aloud (default: the last agent answer) with the local speech engine.
    Say {
        conv: String,
        message: Option<String>,
        /// Write the audio to this WAV file instead of playing it.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Fork a conversation at a message; prints the new conversation's id.
    Fork {
        conv: String,
        #[arg(long)]
        at: String,
    },
    /// Write a conversation as a plain Automerge document.
    Export {
        conv: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Push queued prompts and pull news for every local conversation.
    Sync,
    /// Continue a conversation on another node (same id, history, forks and shares): a new
    /// workspace from the same repo and branch, the agent seeded from the document.
    Move {
        conv: String,
        /// A node you know (name or id).
        #[arg(long, conflicts_with = "provider")]
        node: Option<String>,
        /// Or a node from this provider's warm pool: local, hetzner, scaleway.
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, requires = "provider")]
        size: Option<String>,
        /// Use this workspace on the new node instead of creating one.
        #[arg(long)]
        workspace: Option<String>,
        /// The repo, when neither the old node nor the document can tell.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// A lightweight workspace (base image, no devcontainer build).
        #[arg(long)]
        lightweight: bool,
        /// Leave the old workspace's uncommitted work out of the document (a carried patch
        /// is readable by everyone who may read the conversation, viewers included).
        #[arg(long)]
        no_carry: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List known nodes.
    Ls,
    /// Forget a node.
    Rm { node: String },
}

#[derive(Debug, Subcommand)]
pub enum SharesCmd {
    /// List capabilities on a node.
    Ls { node: Option<String> },
}

/// What a command prints.
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
}

impl Output {
    fn new(json: serde_json::Value, text: impl Into<String>) -> Self {
        Self {
            json,
            text: text.into(),
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli, paths: ClientPaths) -> Result<Output> {
    match cli.cmd {
        Cmd::Up {
            bind,
            detach,
            cli: force_cli,
            agent,
        } => {
            let then = if detach {
                up::Then::Exit
            } else if !force_cli && up::display_available() {
                up::Then::Gui
            } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                up::Then::Chat(agent)
            } else {
                up::Then::Wait
            };
            up::run(&paths, bind, then, cli.json).await
        }
        Cmd::Cloud(cmd) => cloud::run(&paths, cmd).await,
        Cmd::Team { cmd } => team::run(&paths, cmd).await,
        Cmd::Id => {
            let id = paths.identity()?.node_id();
            Ok(Output::new(json!({ "id": id.to_string() }), id.to_string()))
        }
        Cmd::Connect { ticket, name } => connect(&paths, &ticket, name.as_deref(), false).await,
        Cmd::Join {
            ticket,
            name,
            via: Some(via),
        } => join_via(&paths, &ticket, &via, name.as_deref()).await,
        Cmd::Join { ticket, name, .. } => connect(&paths, &ticket, name.as_deref(), true).await,
        Cmd::Serve { bind } => {
            let server = crate::serve::start(&paths, bind).await?;
            let out = Output::new(
                json!({ "ticket": server.ticket.to_string() }),
                format!(
                    "serving the conversations held here to teammates with a capability for their node; they run `sam join <their ticket> --via <this ticket>`\n{}",
                    server.ticket
                ),
            );
            print(&out, cli.json);
            let _ = tokio::signal::ctrl_c().await;
            let _ = server.router.shutdown().await;
            Ok(Output::new(serde_json::Value::Null, ""))
        }
        Cmd::Nodes { cmd: NodesCmd::Ls } => {
            let book = NodeBook::load(&paths.nodes())?;
            let text = book
                .nodes
                .iter()
                .map(|e| format!("{}\t{}", e.name, e.id))
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<_> = book
                .nodes
                .iter()
                .map(|e| json!({ "name": e.name, "id": e.id }))
                .collect();
            Ok(Output::new(json!(list), text))
        }
        Cmd::Nodes {
            cmd: NodesCmd::Rm { node },
        } => {
            let mut book = NodeBook::load(&paths.nodes())?;
            let gone = book.remove(&node)?;
            book.save(&paths.nodes())?;
            Ok(Output::new(json!({ "removed": gone.id }), gone.id))
        }
        Cmd::Status { node } => status(&paths, node.as_deref()).await,
        Cmd::Share {
            target,
            role,
            to,
            invite,
            expires,
        } => share(&paths, &target, role, to, invite, expires.as_deref()).await,
        Cmd::Shares {
            cmd: SharesCmd::Ls { node },
        } => shares_ls(&paths, node.as_deref()).await,
        Cmd::Revoke { id, node } => revoke(&paths, &id, node.as_deref()).await,
        Cmd::Convs { cmd } => convs::convs(&paths, cmd).await,
        Cmd::Conv(c) => match c {
            ConvCmds::Log { conv, follow } => convs::log(&paths, &conv, follow).await,
            ConvCmds::Prompt {
                conv,
                text: Some(text),
                follow: true,
                ..
            } => agent::prompt_follow(&paths, &conv, &text).await,
            ConvCmds::Prompt {
                conv,
                text: Some(text),
                ..
            } => {
                if let Ok((_, doc)) = crate::docs::Replicas::open(&paths).and_then(|mut r| {
                    let id = r.resolve(&conv)?;
                    Ok((id.clone(), r.load(&id)?))
                }) && let Err(e) = agent::send_credentials(&paths, &doc).await
                {
                    eprintln!("note: agent keys not sent: {e:#}");
                }
                convs::prompt(&paths, &conv, &text).await
            }
            ConvCmds::Cancel { conv } => agent::cancel(&paths, &conv).await,
            ConvCmds::Permit {
                conv,
                message,
                option,
            } => agent::permit(&paths, &conv, &message, &option).await,
            ConvCmds::Chat {
                agent: a,
                workspace,
                node,
                conv,
            } => agent::chat(&paths, conv, workspace, node, a).await,
            ConvCmds::Prompt {
                conv,
                audio,
                follow,
                ..
            } => {
                let audio = audio.context("give the prompt text or --audio FILE.wav")?;
                voice::prompt_audio(&paths, &conv, &audio, follow).await
            }
            ConvCmds::Say { conv, message, out } => {
                voice::say(&paths, &conv, message.as_deref(), out.as_deref()).await
            }
            ConvCmds::Fork { conv, at } => convs::fork(&paths, &conv, &at).await,
            ConvCmds::Export { conv, out } => convs::export(&paths, &conv, &out),
            ConvCmds::Sync => convs::sync_all(&paths).await,
            ConvCmds::Move {
                conv,
                node,
                provider,
                size,
                workspace,
                repo,
                branch,
                lightweight,
                no_carry,
            } => {
                let a = relocate::MoveArgs {
                    conv,
                    node,
                    provider,
                    size,
                    workspace,
                    repo,
                    branch,
                    lightweight,
                    no_carry,
                };
                relocate::run(&paths, a).await
            }
        },
        Cmd::Idea {
            idea: text,
            repo,
            base,
            agent,
            agent_cmd,
            node,
            provider,
            size,
            lightweight,
            keep,
        } => {
            let args = idea::IdeaArgs {
                idea: text,
                repo,
                base,
                agent,
                agent_cmd,
                node,
                provider,
                size,
                lightweight,
                keep,
            };
            idea::idea(&paths, args).await
        }
        Cmd::Pr { conv, base, branch } => idea::pr(&paths, &conv, &base, branch).await,
        Cmd::Workspace { cmd } => workspace::run(&paths, cmd).await,
        Cmd::Shell {
            workspace,
            new,
            id,
            node,
        } => shell::run(&paths, node.as_deref(), &workspace, new, id).await,
        Cmd::Ports {
            workspace,
            watch,
            node,
        } => ports::run(&paths, node.as_deref(), &workspace, watch).await,
        Cmd::Forward {
            workspace,
            port,
            local,
            node,
        } => ports::forward(&paths, node.as_deref(), &workspace, port, local).await,
        Cmd::Files { cmd } => files::run(&paths, cmd).await,
        Cmd::Gui => {
            crate::gui::run_gui(paths)?;
            Ok(Output::new(serde_json::Value::Null, ""))
        }
    }
}

/// A known node's ticket and a bound endpoint, for streams that dial again by
/// themselves after a lost link ([`crate::resume`]).
pub async fn endpoint_for(
    paths: &ClientPaths,
    node: Option<&str>,
) -> Result<(iroh::Endpoint, Ticket, crate::NodeEntry)> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(node)?.clone();
    let ep = crate::endpoint::bind(&paths.identity()?, None).await?;
    let ticket = entry.ticket()?;
    Ok((ep, ticket, entry))
}

/// Connects to a known node on `alpn` (hello done).
pub async fn dial(
    paths: &ClientPaths,
    node: Option<&str>,
    alpn: &[u8],
) -> Result<(iroh::Endpoint, iroh::endpoint::Connection, crate::NodeEntry)> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(node)?.clone();
    let ep = crate::endpoint::bind(&paths.identity()?, None).await?;
    let (conn, _) = crate::conn::connect(&ep, &entry.ticket()?, alpn)
        .await
        .with_context(|| format!("node {}", entry.name))?;
    Ok((ep, conn, entry))
}

/// Connects to a known node on `sam/ctl/1`.
pub async fn open(
    paths: &ClientPaths,
    node: Option<&str>,
) -> Result<(iroh::Endpoint, NodeClient, crate::NodeEntry)> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(node)?.clone();
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let client = NodeClient::connect(&ep, &entry.ticket()?)
        .await
        .with_context(|| format!("node {}", entry.name))?;
    Ok((ep, client, entry))
}

async fn connect(
    paths: &ClientPaths,
    ticket: &str,
    name: Option<&str>,
    join: bool,
) -> Result<Output> {
    let ticket: Ticket = ticket.parse()?;
    if join && ticket.capability.is_none() {
        bail!("this ticket carries no capability; use `sam connect` for your own nodes");
    }
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let client = NodeClient::connect(&ep, &ticket).await?;
    let role = client.welcome.role;
    let scope = client.welcome.scope.clone();
    let owner = client.welcome.owner;
    client.close();
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = book.upsert(&ticket, name)?;
    book.set_owner(&ticket.addr.id.to_string(), &owner);
    book.save(&paths.nodes())?;
    // Joining brings the shared conversations with their full history.
    let mut pulled = 0;
    if join {
        let entry = book.find(Some(&name))?.clone();
        let mut replicas = crate::docs::Replicas::open(paths)?;
        let before = replicas.ids()?.len();
        if let Err(e) = convs::pull_node(&ep, &entry, &mut replicas).await {
            eprintln!("note: could not fetch conversations yet: {e:#}");
        }
        pulled = replicas.ids()?.len().saturating_sub(before);
    }
    ep.close().await;
    let id = ticket.addr.id.to_string();
    let scope_text = scope
        .as_ref()
        .map(|s| format!(" on {s}"))
        .unwrap_or_default();
    Ok(Output::new(
        json!({ "name": name, "id": id, "role": role.as_str(), "scope": scope.map(|s| s.to_string()), "conversations": pulled }),
        format!(
            "connected to {name} as {role}{scope_text}{}\n{id}",
            if join {
                format!("; {pulled} conversation(s) fetched")
            } else {
                String::new()
            }
        ),
    ))
}

/// `sam join TICKET --via PEER`: the history comes from a teammate's `sam serve`.
async fn join_via(
    paths: &ClientPaths,
    ticket: &str,
    via: &str,
    name: Option<&str>,
) -> Result<Output> {
    let ticket: Ticket = ticket.parse()?;
    let via: Ticket = via.parse().context("the --via ticket")?;
    if ticket.capability.is_none() {
        bail!("this ticket carries no capability; ask the node's owner for a `sam share` ticket");
    }
    let peer = Ticket {
        addr: via.addr.clone(),
        capability: ticket.capability.clone(),
        invite_secret: None,
    };
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let client = NodeClient::connect(&ep, &peer)
        .await
        .context("the teammate's peer")?;
    let owner = client.welcome.owner;
    client.close();
    let mut replicas = crate::docs::Replicas::open(paths)?;
    let pulled = convs::pull_from(&ep, &peer, &mut replicas).await?;
    ep.close().await;
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = book.upsert(&ticket, name)?;
    book.set_owner(&ticket.addr.id.to_string(), &owner);
    book.save(&paths.nodes())?;
    Ok(Output::new(
        json!({ "name": name, "id": ticket.addr.id.to_string(), "conversations": pulled, "via": via.addr.id.to_string() }),
        format!(
            "{pulled} conversation(s) fetched from teammate {} for node {name}\n{}",
            via.addr.id.short(),
            ticket.addr.id
        ),
    ))
}

async fn status(paths: &ClientPaths, node: Option<&str>) -> Result<Output> {
    let t0 = Instant::now();
    let (ep, client, entry) = match open(paths, node).await {
        Ok(x) => x,
        Err(e) => {
            let mut book = NodeBook::load(&paths.nodes())?;
            let Ok(entry) = book.find(node).cloned() else {
                return Err(e);
            };
            book.set_reachable(&entry.id, false, crate::now_secs());
            book.save(&paths.nodes())?;
            let note = book
                .find(Some(&entry.id))
                .ok()
                .and_then(|e| e.unreachable_note(crate::now_secs()))
                .unwrap_or_default();
            return Err(e.context(note));
        }
    };
    {
        let mut book = NodeBook::load(&paths.nodes())?;
        book.set_reachable(&entry.id, true, crate::now_secs());
        book.save(&paths.nodes())?;
    }
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let Response::Status(st) = client.request(Request::Status).await? else {
        bail!("node answered status with something else");
    };
    let rtt_ms = t1.elapsed().as_secs_f64() * 1e3;
    let mut path = crate::endpoint::path_report(&client.conn(), &entry.ticket()?.addr);
    // `ticket` for an address the node book learnt since says so.
    if path.found_by.as_deref() == Some("ticket")
        && path.path == "direct"
        && path
            .remote
            .as_deref()
            .is_some_and(|r| entry.hints.iter().any(|h| h == r))
    {
        path.found_by = Some("book".into());
    }
    client.close();
    ep.close().await;
    // The node answered, authenticated by its NodeId, at a direct address its ticket may not
    // name (it moved and was found by lookup): kept as a hint for the next dial.
    if path.path == "direct"
        && let Some(a) = path.remote.as_deref().and_then(|r| r.parse().ok())
    {
        let mut book = NodeBook::load(&paths.nodes())?;
        if book.learn_addr(&entry.id, a) {
            book.save(&paths.nodes())?;
        }
    }
    let mut text = format!(
        "node      {} ({})\nversion   sam-node {} (protocol {})\nuptime    {}s\npeers     {}\nrole      {}\nconnect   {:.1} ms\nrtt       {:.2} ms\npath      {}",
        entry.name,
        st.node,
        st.node_version,
        st.protocol_version,
        st.uptime_secs,
        st.peers,
        st.your_role,
        connect_ms,
        rtt_ms,
        path.path,
    );
    if let Some(r) = &path.remote {
        text.push_str(&format!(" via {r}"));
    }
    if let Some(p) = path.rtt_ms {
        text.push_str(&format!(" (path rtt {p:.2} ms)"));
    }
    if let Some(r) = &path.relay_url {
        text.push_str(&format!("\nrelay     {r}"));
    }
    if let Some(w) = &path.why_not_direct {
        text.push_str(&format!("\nwhy       {w}"));
    }
    if let Some(f) = &path.found_by {
        text.push_str(&format!("\nfound by  {f}"));
    }
    text.push_str("\nreachable");
    for w in &st.warnings {
        text.push_str(&format!("\nWARNING   {w}"));
    }
    Ok(Output::new(
        json!({
            "name": entry.name, "node": st.node.to_string(), "owner": st.owner.to_string(),
            "version": st.node_version, "protocol": st.protocol_version,
            "uptime_secs": st.uptime_secs, "peers": st.peers, "role": st.your_role.as_str(),
            "connect_ms": connect_ms, "rtt_ms": rtt_ms, "warnings": st.warnings,
            "path": path.path, "relay_url": path.relay_url, "remote": path.remote,
            "path_rtt_ms": path.rtt_ms, "why_not_direct": path.why_not_direct,
            "found_by": path.found_by,
        }),
        text,
    ))
}

pub async fn share(
    paths: &ClientPaths,
    target: &str,
    role: Role,
    to: Option<NodeId>,
    _invite: bool,
    expires: Option<&str>,
) -> Result<Output> {
    let ttl = expires
        .map(sam_protocol::duration::parse_duration_secs)
        .transpose()?;
    let (entry, scope) = share_target(paths, target).await?;
    let node_ticket = entry.ticket()?;
    let key = paths.identity()?;
    let (grantee, secret) = match to {
        Some(k) => (Grantee::Key(k), None),
        None => {
            let secret: [u8; 32] = rand::random();
            (Grantee::Invite(invite_hash(&secret)), Some(secret))
        }
    };
    let cap = Capability::new(
        key.node_id(),
        node_ticket.addr.id,
        grantee,
        role,
        scope.clone(),
        crate::now_secs(),
        ttl,
    )
    .sign(
        &key,
        node_ticket
            .capability
            .clone()
            .filter(|c| c.cap.role == Role::Owner),
    );
    let (ep, client, _) = open(paths, Some(&entry.id)).await?;
    client.request(Request::RegisterShare(cap.clone())).await?;
    client.close();
    ep.close().await;
    let ticket = Ticket {
        addr: node_ticket.addr.clone(),
        capability: Some(cap.clone()),
        invite_secret: secret,
    };
    let who = match to {
        Some(k) => k.short(),
        None => "the first key that uses it (invite)".into(),
    };
    let on = scope
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("node {}", entry.name));
    Ok(Output::new(
        json!({ "ticket": ticket.to_string(), "id": cap.cap.id_hex(), "role": role.as_str(),
                "scope": scope.as_ref().map(|s| s.to_string()), "expires_at": cap.cap.expires_at }),
        format!(
            "capability {} for {who} as {role} on {on}; send them this ticket (`sam join <ticket>`):\n{ticket}",
            cap.cap.id_hex()
        ),
    ))
}

/// What `sam share TARGET` shares: a known node (whole node), a conversation held
/// here (by id or unique prefix), or a workspace of a reachable node.
async fn share_target(
    paths: &ClientPaths,
    target: &str,
) -> Result<(crate::NodeEntry, Option<sam_protocol::Scope>)> {
    let book = NodeBook::load(&paths.nodes())?;
    if let Ok(e) = book.find(Some(target)) {
        return Ok((e.clone(), None));
    }
    let replicas = crate::docs::Replicas::open(paths)?;
    if let Ok(id) = replicas.resolve(target) {
        let mut replicas = replicas;
        let conv = replicas.load(&id)?;
        let node = conv.workspace().node;
        let entry = book.find(Some(&node)).with_context(|| {
            format!("conversation {id} lives on node {node}, which is not in your node book")
        })?;
        return Ok((entry.clone(), Some(sam_protocol::Scope::Conversation(id))));
    }
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    for entry in &book.nodes {
        let Ok(ticket) = entry.ticket() else { continue };
        let Ok(Ok(client)) = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            NodeClient::connect(&ep, &ticket),
        )
        .await
        else {
            continue;
        };
        let list = client
            .request(Request::Workspace(
                sam_protocol::workspace::WorkspaceRequest::List,
            ))
            .await;
        client.close();
        if let Ok(Response::Workspace(sam_protocol::workspace::WorkspaceResponse::List(ws))) = list
            && let Some(w) = ws.iter().find(|w| w.id == target || w.name == target)
        {
            ep.close().await;
            return Ok((
                entry.clone(),
                Some(sam_protocol::Scope::Workspace(w.id.clone())),
            ));
        }
    }
    ep.close().await;
    bail!("{target:?} is not a known node, a conversation here, or a workspace on a reachable node")
}

pub async fn shares_ls(paths: &ClientPaths, node: Option<&str>) -> Result<Output> {
    let (ep, client, _) = open(paths, node).await?;
    let Response::Shares(list) = client.request(Request::ListShares).await? else {
        bail!("unexpected answer to list shares");
    };
    client.close();
    ep.close().await;
    let now = crate::now_secs();
    let mut lines = Vec::new();
    let mut items = Vec::new();
    for s in &list {
        let c = &s.capability;
        let grantee = match (&c.grantee, &s.redeemed_by) {
            (Grantee::Key(k), _) => k.short(),
            (Grantee::Invite(_), Some(k)) => format!("invite:{}", k.short()),
            (Grantee::Invite(_), None) => "invite (unused)".into(),
        };
        let state = if s.revoked {
            "revoked".to_string()
        } else {
            match c.expires_at {
                Some(e) if e <= now => "expired".into(),
                Some(e) => format!("expires in {}s", e - now),
                None => "no expiry".into(),
            }
        };
        lines.push(format!(
            "{}\t{}\t{}\t{}",
            c.id_hex(),
            c.role,
            grantee,
            state
        ));
        items.push(json!({
            "id": c.id_hex(), "role": c.role.as_str(), "grantee": grantee,
            "revoked": s.revoked, "expires_at": c.expires_at,
            "redeemed_by": s.redeemed_by.map(|k| k.to_string()),
        }));
    }
    Ok(Output::new(json!(items), lines.join("\n")))
}

pub async fn revoke(paths: &ClientPaths, id: &str, node: Option<&str>) -> Result<Output> {
    let id = parse_id(id)?;
    let (ep, client, _) = open(paths, node).await?;
    client.request(Request::Revoke { id }).await?;
    client.close();
    ep.close().await;
    let hex = sam_protocol::capability::id_hex(&id);
    Ok(Output::new(
        json!({ "revoked": hex }),
        format!("revoked\n{hex}"),
    ))
}

/// Prints an output the way every command does. A closed stdout (e.g. `| head`)
/// is not an error.
pub fn print(out: &Output, json_out: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = if json_out {
        if out.json.is_null() {
            Ok(())
        } else {
            writeln!(stdout, "{}", out.json)
        }
    } else if out.text.is_empty() {
        Ok(())
    } else {
        writeln!(stdout, "{}", out.text)
    };
}
