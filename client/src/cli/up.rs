//! `sam up`: a local node on this machine, started as a `sam-node` child process
//! (the client never links the node code), remembered as `local`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use sam_protocol::Ticket;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

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

pub async fn run(
    paths: &ClientPaths,
    bind: Option<SocketAddr>,
    detach: bool,
    json_out: bool,
) -> Result<Output> {
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
    let mut child = tokio::process::Command::new(&bin)
        .env("SAM_HOME", &paths.home)
        .args(["run", "--json"])
        .stdout(Stdio::piped())
        .kill_on_drop(!detach)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .context("the local node did not start within 30 s")??;
    let Some(first) = first else {
        let status = child.wait().await?;
        bail!(
            "the local node exited at start ({status}); run `sam-node run -v` with SAM_HOME={} to see why",
            paths.home.display()
        );
    };
    let v: serde_json::Value = serde_json::from_str(&first).context("node start line")?;
    let ticket: Ticket = v["ticket"]
        .as_str()
        .context("node printed no ticket")?
        .parse()?;
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
        // Let the child outlive us; its stdout is closed with ours.
        std::mem::forget(child);
        return Ok(out);
    }
    super::print(&out, json_out);
    eprintln!("node running; Ctrl-C stops it");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        status = child.wait() => {
            bail!("the local node exited: {}", status?);
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
