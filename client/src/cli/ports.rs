//! `sam ports WORKSPACE [--watch]` and `sam forward WORKSPACE PORT [--local P]`.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{PortInfo, WorkspaceRequest, WorkspaceResponse};
use serde_json::json;

use super::Output;
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

/// The listeners in a workspace now.
pub async fn list(client: &NodeClient, workspace: &str) -> Result<Vec<PortInfo>> {
    match client
        .request(Request::Workspace(WorkspaceRequest::Ports {
            id: workspace.into(),
        }))
        .await?
    {
        Response::Workspace(WorkspaceResponse::Ports(p)) => Ok(p),
        other => bail!("unexpected answer to ports: {other:?}"),
    }
}

/// Waits (up to `timeout_ms`) for the listeners to differ from `known`.
pub async fn watch(
    client: &NodeClient,
    workspace: &str,
    known: &[PortInfo],
    timeout_ms: u32,
) -> Result<Vec<PortInfo>> {
    let req = WorkspaceRequest::WatchPorts {
        id: workspace.into(),
        known: known.to_vec(),
        timeout_ms,
    };
    match client.request(Request::Workspace(req)).await? {
        Response::Workspace(WorkspaceResponse::Ports(p)) => Ok(p),
        other => bail!("unexpected answer to watch ports: {other:?}"),
    }
}

fn lines(ports: &[PortInfo]) -> String {
    ports
        .iter()
        .map(|p| format!("{}\t{}", p.port, p.addr))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sam ports`: prints the listeners; with `watch`, prints every change until
/// interrupted.
pub async fn run(
    paths: &ClientPaths,
    node: Option<&str>,
    workspace: &str,
    watch_: bool,
) -> Result<Output> {
    let (ep, client, _) = super::open(paths, node).await?;
    let mut ports = list(&client, workspace).await?;
    if watch_ {
        println!(
            "{}",
            if ports.is_empty() {
                "(no listeners)".into()
            } else {
                lines(&ports)
            }
        );
        loop {
            let now = watch(&client, workspace, &ports, 30_000).await?;
            if now != ports {
                println!(
                    "--\n{}",
                    if now.is_empty() {
                        "(no listeners)".into()
                    } else {
                        lines(&now)
                    }
                );
                ports = now;
            }
        }
    }
    client.close();
    ep.close().await;
    let items: Vec<_> = ports
        .iter()
        .map(|p| json!({ "port": p.port, "addr": p.addr }))
        .collect();
    Ok(Output::new(json!(items), lines(&ports)))
}

/// `sam forward`: listens on 127.0.0.1 and forwards each connection.
pub async fn forward(
    paths: &ClientPaths,
    node: Option<&str>,
    workspace: &str,
    port: u16,
    local: Option<u16>,
) -> Result<Output> {
    let (ep, ticket, _) = super::endpoint_for(paths, node).await?;
    let local = local.unwrap_or(port);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, local));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (in use? pick another with --local)"))?;
    let bound = listener.local_addr()?;
    eprintln!("forwarding {bound} -> {workspace}:{port} (Ctrl-C to stop)");
    // A lost link is dialled again (said on stderr); connections open through it end.
    let fwd = crate::resume::forward(
        ep.clone(),
        ticket,
        workspace.into(),
        port,
        listener,
        crate::resume::RESUME_WINDOW,
        |n| eprintln!("forward: {n}"),
    );
    let result = tokio::select! {
        r = fwd => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    ep.close().await;
    result?;
    Ok(Output::new(
        json!({ "local": bound.to_string() }),
        bound.to_string(),
    ))
}
