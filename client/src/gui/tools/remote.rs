//! Workspace work of the tools worker: files (list, read, diff, upload, download), the
//! ports watch and port forwards, each on a fresh connection over the shared endpoint.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sam_protocol::workspace::{FileEntry, FilesOp, FilesResponse, PortInfo};

use super::{Events, FileData, LIST_LIMIT, ToolCmd, ToolEvent, VIEW_MAX, Ws};
use crate::book::NodeBook;
use crate::paths::ClientPaths;

async fn ctl_client(
    ep: &iroh::Endpoint,
    paths: &ClientPaths,
    node: &str,
) -> Result<crate::NodeClient> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(Some(node))?;
    crate::NodeClient::connect(ep, &entry.ticket()?)
        .await
        .with_context(|| format!("node {}", entry.name))
}

async fn files_request(
    ep: &iroh::Endpoint,
    paths: &ClientPaths,
    ws: &Ws,
    op: FilesOp,
) -> Result<FilesResponse> {
    let client = ctl_client(ep, paths, &ws.0).await?;
    let r = crate::cli::files::request(&client, &ws.1, op).await;
    client.close();
    r
}

/// Runs one files command and reports the result.
pub(super) async fn files(ep: Result<iroh::Endpoint>, paths: ClientPaths, ev: Events, c: ToolCmd) {
    let ep = match ep {
        Ok(ep) => Ok(ep),
        Err(e) => Err(format!("{e:#}")),
    };
    let err = |e: anyhow::Error| format!("{e:#}");
    match c {
        ToolCmd::List { ws, path } => {
            let result = match &ep {
                Ok(ep) => list(ep, &paths, &ws, &path).await.map_err(err),
                Err(e) => Err(e.clone()),
            };
            ev.emit(ToolEvent::Listing { ws, path, result });
        }
        ToolCmd::Read { ws, path } => {
            let result = match &ep {
                Ok(ep) => read(ep, &paths, &ws, &path).await.map_err(err),
                Err(e) => Err(e.clone()),
            };
            ev.emit(ToolEvent::File { ws, path, result });
        }
        ToolCmd::Diff { ws, base, path } => {
            let title = match (&base, &path) {
                (None, None) => "working tree vs HEAD".to_string(),
                (Some(b), None) => format!("working tree vs {b}"),
                (None, Some(p)) => format!("{p} vs HEAD"),
                (Some(b), Some(p)) => format!("{p} vs {b}"),
            };
            let result = match &ep {
                Ok(ep) => {
                    match files_request(ep, &paths, &ws, FilesOp::GitDiff { base, path }).await {
                        Ok(FilesResponse::Diff { text, truncated }) => Ok((text, truncated)),
                        Ok(other) => Err(format!("unexpected answer to diff: {other:?}")),
                        Err(e) => Err(err(e)),
                    }
                }
                Err(e) => Err(e.clone()),
            };
            ev.emit(ToolEvent::Diff { ws, title, result });
        }
        ToolCmd::Upload { ws, local, remote } => {
            let what = format!("upload of {}", local.display());
            let result = match &ep {
                Ok(ep) => async {
                    let book = NodeBook::load(&paths.nodes())?;
                    let ticket = book.find(Some(&ws.0))?.ticket()?;
                    // Resumes after a lost link, silently; checked end to end.
                    let t = crate::resume::upload(
                        ep,
                        &ticket,
                        &ws.1,
                        &local,
                        &remote,
                        crate::resume::RESUME_WINDOW,
                        |n| tracing::info!("upload: {n}"),
                    )
                    .await?;
                    Ok::<_, anyhow::Error>(format!("{} bytes, now at {}", t.size, t.dest))
                }
                .await
                .map_err(err),
                Err(e) => Err(e.clone()),
            };
            ev.emit(ToolEvent::Transfer { what, result });
        }
        ToolCmd::Download { ws, remote, local } => {
            let what = format!("download of {remote}");
            let result = match &ep {
                Ok(ep) => async {
                    if !local.is_dir() {
                        bail!("{} is not a folder", local.display());
                    }
                    let book = NodeBook::load(&paths.nodes())?;
                    let ticket = book.find(Some(&ws.0))?.ticket()?;
                    // Resumes after a lost link, silently; checked end to end.
                    let t = crate::resume::download(
                        ep,
                        &ticket,
                        &ws.1,
                        &remote,
                        &local,
                        crate::resume::RESUME_WINDOW,
                        |n| tracing::info!("download: {n}"),
                    )
                    .await?;
                    Ok(format!("{} bytes, now at {}", t.size, t.dest))
                }
                .await
                .map_err(err),
                Err(e) => Err(e.clone()),
            };
            ev.emit(ToolEvent::Transfer { what, result });
        }
        _ => {}
    }
}

async fn list(
    ep: &iroh::Endpoint,
    paths: &ClientPaths,
    ws: &Ws,
    path: &str,
) -> Result<(Vec<FileEntry>, bool)> {
    let op = FilesOp::List {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.into()
        },
        depth: 0,
        limit: LIST_LIMIT,
    };
    match files_request(ep, paths, ws, op).await? {
        FilesResponse::List { entries, truncated } => Ok((entries, truncated)),
        other => Err(anyhow!("unexpected answer to ls: {other:?}")),
    }
}

async fn read(ep: &iroh::Endpoint, paths: &ClientPaths, ws: &Ws, path: &str) -> Result<FileData> {
    let op = FilesOp::Read {
        path: path.into(),
        max_bytes: VIEW_MAX,
    };
    match files_request(ep, paths, ws, op).await? {
        FilesResponse::Read {
            data,
            size,
            truncated,
        } => Ok(FileData {
            data,
            size,
            truncated,
        }),
        other => Err(anyhow!("unexpected answer to cat: {other:?}")),
    }
}

/// Lists the ports, then reports every change (long polls) until aborted.
pub(super) async fn watch_ports(
    ep: Result<iroh::Endpoint>,
    paths: ClientPaths,
    ev: Events,
    ws: Ws,
) {
    let mut known: Option<Vec<PortInfo>> = None;
    loop {
        let r = async {
            let ep = ep.as_ref().map_err(|e| anyhow!("{e:#}"))?;
            let client = ctl_client(ep, &paths, &ws.0).await?;
            let mut ports = crate::cli::ports::list(&client, &ws.1).await?;
            if known.as_ref() != Some(&ports) {
                ev.emit(ToolEvent::Ports {
                    ws: ws.clone(),
                    result: Ok(ports.clone()),
                });
                known = Some(ports.clone());
            }
            loop {
                let now = crate::cli::ports::watch(&client, &ws.1, &ports, 20_000).await?;
                if now != ports {
                    ev.emit(ToolEvent::Ports {
                        ws: ws.clone(),
                        result: Ok(now.clone()),
                    });
                    known = Some(now.clone());
                    ports = now;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }
        .await;
        if let Err(e) = r {
            ev.emit(ToolEvent::Ports {
                ws: ws.clone(),
                result: Err(format!("{e:#}")),
            });
            known = None;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Listens on 127.0.0.1 (the same port when free, else any) and forwards each connection
/// to `port` in the workspace until aborted or the node goes away.
pub(super) async fn forward(
    ep: Result<iroh::Endpoint>,
    paths: &ClientPaths,
    ev: &Events,
    ws: Ws,
    port: u16,
) -> Result<()> {
    let ep = ep?;
    let ticket = NodeBook::load(&paths.nodes())?
        .find(Some(&ws.0))?
        .ticket()?;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on 127.0.0.1")?,
    };
    let local = listener.local_addr()?;
    ev.emit(ToolEvent::Forward {
        port,
        state: Some(Ok(local.to_string())),
    });
    // Re-established silently after a lost link.
    crate::resume::forward(
        ep,
        ticket,
        ws.1,
        port,
        listener,
        crate::resume::RESUME_WINDOW,
        |n| tracing::info!("forward: {n}"),
    )
    .await
}
