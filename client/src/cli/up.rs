//! `sam up`: a local node on this machine, started as a `sam-node` child process
//! (the client never links the node code), remembered as `local`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use sam_protocol::Ticket;
use serde_json::json;

use super::Output;
use crate::book::NodeBook;
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

/// Finds the `sam-node` binary: `SAM_NODE_BIN`, next to this executable, or on PATH.
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAM_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        for cand in [dir.join("sam-node"), dir.join("../sam-node")] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("sam-node");
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    bail!(
        "cannot find the sam-node binary next to sam or on PATH (build it with `cargo build --bins`, or set SAM_NODE_BIN)"
    )
}

/// What `sam up` does once the node is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Leave the node running and exit (`--detach`).
    Exit,
    /// Open the GUI; closing it stops the node.
    Gui,
    /// Chat in the terminal with this agent; Ctrl-D stops the node.
    Chat(String),
    /// Keep the node up until Ctrl-C.
    Wait,
}

/// A display the GUI can open on.
pub fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

pub async fn run(
    paths: &ClientPaths,
    bind: Option<SocketAddr>,
    then: Then,
    json_out: bool,
) -> Result<Output> {
    let detach = then == Then::Exit;
    let key = paths.identity()?;
    let me = key.node_id();
    let node_dir = paths.local_node();
    let bin = node_binary()?;
    if !node_dir.join("config.toml").exists() {
        let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let status = std::process::Command::new(&bin)
            .env("SAM_HOME", &paths.home)
            .args([
                "init",
                "--owner",
                &me.to_string(),
                "--bind",
                &bind.to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run {}", bin.display()))?;
        if !status.success() {
            bail!("sam-node init failed ({status})");
        }
    }
    // The node logs to a file and announces its address in `node.addr`, so it
    // never writes to our terminal or pipes (it may outlive us with --detach).
    let addr_file = node_dir.join("node.addr");
    let _ = std::fs::remove_file(&addr_file);
    let log_path = node_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env("SAM_HOME", &paths.home)
        .args(["run", "-v"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(!detach);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let t0 = std::time::Instant::now();
    let addr: sam_protocol::NodeAddr = loop {
        if let Ok(bytes) = std::fs::read(&addr_file)
            && let Ok(a) = serde_json::from_slice(&bytes)
        {
            break a;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the local node exited at start ({status}); see {}",
                log_path.display()
            );
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            bail!(
                "the local node did not start within 30 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ticket = Ticket::new(addr);
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = if book
        .nodes
        .iter()
        .any(|e| e.name == "local" && e.id != ticket.addr.id.to_string())
    {
        None
    } else {
        Some("local")
    };
    let name = book.upsert(&ticket, name)?;
    book.set_owner(&ticket.addr.id.to_string(), &me);
    book.save(&paths.nodes())?;

    let ep = crate::endpoint::bind(&key, None).await?;
    let client = NodeClient::connect(&ep, &ticket).await?;
    client.close();
    ep.close().await;

    let out = Output::new(
        json!({ "name": name, "node": ticket.addr.id.to_string(), "ticket": ticket.to_string(), "pid": child.id() }),
        format!(
            "local node {name} is up ({}); connected as owner.\nnext: `sam status`, or share it with `sam share {name} --role viewer --to <NodeId>`\n{ticket}",
            ticket.addr.id.short()
        ),
    );
    if detach {
        // Let the child outlive us: it is in its own process group and writes
        // only to its log file.
        std::mem::forget(child);
        return Ok(out);
    }
    super::print(&out, json_out);
    match then {
        Then::Gui => {
            eprintln!(
                "opening the SAM window (closing it stops the node; `sam up --cli` chats here instead)"
            );
            let p = paths.clone();
            if let Err(e) = tokio::task::block_in_place(|| crate::gui::run_gui(p)) {
                eprintln!("the GUI could not start: {e:#}; `sam up --cli` chats in the terminal");
            }
        }
        Then::Chat(agent) => {
            if super::agent::credentials_from_env().env.is_empty() {
                eprintln!(
                    "note: no agent key in the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY, MISTRAL_API_KEY): the agent will fail to answer until one is set"
                );
            }
            tokio::select! {
                r = super::agent::chat(paths, None, None, Some(name.clone()), agent) => {
                    if let Err(e) = r {
                        eprintln!("error: {e:#}");
                    }
                }
                status = child.wait() => {
                    bail!("the local node exited: {}", status?);
                }
            }
        }
        Then::Wait | Then::Exit => {
            eprintln!("node running; Ctrl-C stops it");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                status = child.wait() => {
                    bail!("the local node exited: {}", status?);
                }
            }
        }
    }
    if let Some(pid) = child.id() {
        // SIGTERM for a clean shutdown, then wait.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
    eprintln!("local node stopped");
    Ok(Output::new(serde_json::Value::Null, ""))
}
