//! Lightweight workspace creation benchmark: seconds from `Create` to `Ready`.
//!
//! ```text
//! bootstrap/images/build-base.sh        # the base image must be cached
//! cargo run --release -p sam-node --example bench_workspace -- [--n 10] [--repo URL]
//! ```
//!
//! A node in this process on loopback (relays off), the owner's client over iroh.
//! Each run: `Create { lightweight }` then `Logs` long polls until the status is no
//! longer `Creating`; the workspace is removed after each run (not timed). With
//! `--repo` each run also clones that repo inside the container. Prints a Markdown
//! table (min / median / max seconds).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sam_client::conn::NodeClient;
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::SecretKey;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{
    CreateWorkspace, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
};

async fn ws(c: &NodeClient, r: WorkspaceRequest) -> Result<WorkspaceResponse> {
    match c.request(Request::Workspace(r)).await? {
        Response::Workspace(w) => Ok(w),
        other => bail!("unexpected answer {other:?}"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut n = 10usize;
    let mut repo = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--n" => n = args.next().context("--n N")?.parse()?,
            "--repo" => repo = Some(args.next().context("--repo URL")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let dir = tempfile::tempdir()?;
    let owner = SecretKey::generate();
    let cfg = NodeConfig {
        bind: loopback,
        ..NodeConfig::new(owner.node_id())
    };
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, SecretKey::generate()).await?;
    let ep = sam_client::endpoint::bind(&owner, Some(loopback)).await?;
    let c = NodeClient::connect(&ep, &handle.ticket()).await?;

    let mut secs = Vec::new();
    for i in 0..=n {
        let t0 = Instant::now();
        let WorkspaceResponse::Info(info) = ws(
            &c,
            WorkspaceRequest::Create(CreateWorkspace {
                repo: repo.clone(),
                branch: None,
                lightweight: true,
                name: None,
            }),
        )
        .await?
        else {
            bail!("create answered with something else");
        };
        let mut from = 0;
        let status = loop {
            let WorkspaceResponse::Logs(l) = ws(
                &c,
                WorkspaceRequest::Logs {
                    id: info.id.clone(),
                    from,
                },
            )
            .await?
            else {
                bail!("logs answered with something else");
            };
            from = l.next;
            if !matches!(l.status, WorkspaceStatus::Creating) {
                break l.status;
            }
        };
        let s = t0.elapsed().as_secs_f64();
        if status != WorkspaceStatus::Ready {
            bail!("workspace did not get ready: {status:?}");
        }
        ws(&c, WorkspaceRequest::Remove { id: info.id }).await?;
        if i == 0 {
            eprintln!("warm-up run: {s:.2} s");
        } else {
            eprintln!("run {i}: {s:.2} s");
            secs.push(s);
        }
    }
    secs.sort_by(|a, b| a.total_cmp(b));
    let (min, med, max) = (secs[0], secs[secs.len() / 2], secs[secs.len() - 1]);
    println!(
        "| lightweight create → ready ({}) | runs | min | median | max |",
        if repo.is_some() {
            "with clone"
        } else {
            "no repo"
        }
    );
    println!("|---|---|---|---|---|");
    println!(
        "| seconds | {} | {min:.2} | {med:.2} | {max:.2} |",
        secs.len()
    );
    c.close();
    ep.close().await;
    handle.shutdown().await?;
    Ok(())
}
