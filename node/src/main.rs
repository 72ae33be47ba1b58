//! `sam-node`: set up, run and hand out tickets for a SAM node.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sam_node::{NodeConfig, NodePaths, config, tickets};
use sam_protocol::{NodeId, Role};

/// The SAM node daemon: hosts workspaces and agents, reached by clients over iroh.
///
/// Files live in $SAM_HOME/node (SAM_HOME defaults to ~/.sam).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Print one JSON value instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// More logs (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create this node's key and config, owned by the given client key (`sam id`).
    Init {
        /// The owner's NodeId, as printed by `sam id`.
        #[arg(long)]
        owner: NodeId,
        /// UDP address to listen on (default 0.0.0.0:7447).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// A relay for peers that cannot reach this node directly: the URL of an iroh relay,
        /// `n0` for n0's public relays, or `none` (the default). Repeatable.
        #[arg(long = "relay", value_name = "URL|n0|none")]
        relays: Vec<String>,
        /// Where this node publishes its current address under its NodeId, so clients with
        /// an old ticket find it again: `n0` (n0's public DNS/pkarr), the URL of a
        /// self-hosted pkarr relay (`iroh-dns-server`, e.g. https://dns.example.org/pkarr),
        /// `local` (mDNS on the LAN), or `none` (the default). Repeatable.
        #[arg(long = "discovery", value_name = "n0|URL|local|none")]
        discovery: Vec<String>,
    },
    /// Serve until Ctrl-C or SIGTERM.
    Run,
    /// Print a ticket to this node: for the owner, or with a capability for someone else.
    Ticket {
        /// Role to grant; without it the ticket carries no capability (enough for the owner).
        #[arg(long)]
        role: Option<Role>,
        /// Grant to this key only.
        #[arg(long, conflicts_with = "invite")]
        to: Option<NodeId>,
        /// A one-time invite: bound to the first key that uses it.
        #[arg(long)]
        invite: bool,
        /// Expiry, e.g. 30m, 12h, 7d.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print this node's NodeId.
    Id,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let paths = NodePaths::from_env()?;
    match cli.cmd {
        Cmd::Init {
            owner,
            bind,
            relays,
            discovery,
        } => {
            let id = config::init(&paths, owner, bind, &relays, &discovery)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "node": id.to_string(), "owner": owner.to_string(), "dir": paths.dir })
                );
            } else {
                eprintln!(
                    "node set up in {} (owner {})",
                    paths.dir.display(),
                    owner.short()
                );
                println!("{id}");
            }
        }
        Cmd::Run => run(paths, cli.json)?,
        Cmd::Ticket {
            role,
            to,
            invite,
            expires,
        } => {
            if role.is_none() && (to.is_some() || invite || expires.is_some()) {
                bail!("--to, --invite and --expires need --role viewer|collaborator|owner");
            }
            let ttl = expires
                .as_deref()
                .map(sam_protocol::duration::parse_duration_secs)
                .transpose()?;
            let ticket = tickets::issue(&paths, role, to, invite, ttl)?;
            if cli.json {
                println!("{}", serde_json::json!({ "ticket": ticket.to_string() }));
            } else {
                println!("{ticket}");
            }
        }
        Cmd::Id => {
            let key = sam_protocol::SecretKey::load(&paths.key())
                .with_context(|| "no node key: run `sam-node init --owner <NodeId>` first")?;
            println!("{}", key.node_id());
        }
    }
    Ok(())
}

fn run(paths: NodePaths, json: bool) -> Result<()> {
    let _ = NodeConfig::load(&paths.config())?;
    let rt = tokio::runtime::Runtime::new().context("start tokio")?;
    rt.block_on(async move {
        // Listen before the ticket is printed: whoever started us may stop us right after
        // reading it, and SIGTERM must still shut down cleanly then.
        let mut stop = StopSignals::register();
        let handle = sam_node::Node::start(paths).await?;
        let ticket = handle.ticket();
        if json {
            println!("{}", serde_json::json!({ "node": handle.node.id().to_string(), "ticket": ticket.to_string() }));
        } else {
            eprintln!("sam-node {} listening on {:?}", handle.node.id(), handle.addr.direct);
            eprintln!("owner ticket (connect with `sam connect <ticket>`):");
            println!("{ticket}");
        }
        stop.wait().await;
        eprintln!("shutting down");
        handle.shutdown().await
    })
}

/// SIGTERM and SIGINT (Ctrl-C), registered up front.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,iroh=error,noq=error",
        1 => "info,iroh=warn,noq=warn",
        _ => "debug,iroh=info,noq=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
