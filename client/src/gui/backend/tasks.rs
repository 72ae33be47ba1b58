//! Slow backend work, each run as its own task that reports with events: node status
//! and workspaces, fetching conversations a node has and we do not, connecting,
//! cancelling, shares, desktop notifications.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use iroh::Endpoint;
use sam_crdt::Conversation;
use sam_protocol::Ticket;
use sam_protocol::agent::AgentRequest;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse, WorkspaceStatus};
use tokio::sync::mpsc;

use super::{Events, Internal};
use crate::book::{NodeBook, NodeEntry};
use crate::conn::NodeClient;
use crate::gui::state::{Event, Level, ShareRow, WorkspaceRow};
use crate::paths::ClientPaths;

const POLL_TIMEOUT: Duration = Duration::from_secs(4);

/// Asks one node for its status, workspaces and conversations; fetches conversations
/// we have no replica of.
pub async fn poll_node(
    ep: Endpoint,
    entry: NodeEntry,
    events: Events,
    internal: mpsc::UnboundedSender<Internal>,
    known: Vec<String>,
    polling: Arc<Mutex<HashSet<String>>>,
) {
    let result = tokio::time::timeout(POLL_TIMEOUT, poll(&ep, &entry, &events)).await;
    let status = match result {
        Ok(Ok((client, detail))) => {
            let path = entry
                .ticket()
                .ok()
                .map(|t| crate::endpoint::path_report(&client.conn(), &t.addr).into());
            events.emit(Event::NodeStatus {
                id: entry.id.clone(),
                reachable: true,
                detail,
                path,
            });
            Some(client)
        }
        Ok(Err(e)) => {
            let _ = internal.send(Internal::NodeDown(entry.id.clone()));
            events.emit(Event::NodeStatus {
                id: entry.id.clone(),
                reachable: false,
                detail: format!("{e:#}"),
                path: None,
            });
            None
        }
        Err(_) => {
            let _ = internal.send(Internal::NodeDown(entry.id.clone()));
            events.emit(Event::NodeStatus {
                id: entry.id.clone(),
                reachable: false,
                detail: "no answer within 4 s".into(),
                path: None,
            });
            None
        }
    };
    if let Some(client) = status {
        if let Err(e) = fetch_missing(&ep, &entry, &client, &known, &internal).await {
            tracing::info!("conversations of {}: {e:#}", entry.name);
        }
        client.close();
    }
    if let Ok(mut p) = polling.lock() {
        p.remove(&entry.id);
    }
}

async fn poll(ep: &Endpoint, entry: &NodeEntry, events: &Events) -> Result<(NodeClient, String)> {
    let client = NodeClient::connect(ep, &entry.ticket()?).await?;
    let Response::Status(st) = client.request(Request::Status).await? else {
        bail!("the node answered status with something else");
    };
    let detail = format!(
        "sam-node {} · you are {} · up {}s",
        st.node_version, st.your_role, st.uptime_secs
    );
    let list = match client
        .request(Request::Workspace(WorkspaceRequest::List))
        .await
    {
        Ok(Response::Workspace(WorkspaceResponse::List(list))) => Ok(list
            .into_iter()
            .map(|w| WorkspaceRow {
                status: match &w.status {
                    WorkspaceStatus::Failed { reason, .. } => format!("failed: {reason}"),
                    s => format!("{s:?}").to_lowercase(),
                },
                id: w.id,
                name: w.name,
            })
            .collect()),
        Ok(_) => Err("unexpected answer".to_string()),
        Err(e) => Err(e.to_string()),
    };
    events.emit(Event::Workspaces {
        node: entry.id.clone(),
        list,
    });
    Ok((client, detail))
}

async fn fetch_missing(
    ep: &Endpoint,
    entry: &NodeEntry,
    client: &NodeClient,
    known: &[String],
    internal: &mpsc::UnboundedSender<Internal>,
) -> Result<()> {
    let Response::Conv(ConvResponse::List(list)) =
        client.request(Request::Conv(ConvRequest::List)).await?
    else {
        bail!("unexpected answer to the conversation list");
    };
    let ticket = entry.ticket()?;
    for s in list.into_iter().filter(|s| !known.contains(&s.id)).take(50) {
        let mut conv = Conversation::new_replica();
        let mut stream = crate::docs::open_stream(ep, &ticket, &s.id, false).await?;
        stream
            .sync_once(&mut conv, |_| Ok(()), Duration::from_secs(15))
            .await?;
        stream.close(None).await;
        let _ = internal.send(Internal::Fetched(Box::new(conv)));
    }
    Ok(())
}

/// Checks a ticket and remembers its node; returns what to tell the user.
pub async fn connect(
    ep: &Endpoint,
    paths: &ClientPaths,
    ticket: &str,
    name: Option<&str>,
) -> Result<String> {
    let ticket: Ticket = ticket.trim().parse().context("this is not a SAM ticket")?;
    let client = NodeClient::connect(ep, &ticket).await?;
    let role = client.welcome.role;
    client.close();
    let mut book = NodeBook::load(&paths.nodes())?;
    let name = book.upsert(&ticket, name.filter(|n| !n.trim().is_empty()))?;
    book.save(&paths.nodes())?;
    Ok(format!("{name} as {role}"))
}

/// Asks the node to cancel the running turn.
pub async fn cancel(ep: &Endpoint, paths: &ClientPaths, node: &str, conv: &str) -> Result<()> {
    let book = NodeBook::load(&paths.nodes())?;
    let ticket = book.find(Some(node))?.ticket()?;
    let client = NodeClient::connect(ep, &ticket).await?;
    let r = client
        .request(Request::Agent(AgentRequest::Cancel {
            conv: conv.to_string(),
        }))
        .await;
    client.close();
    r?;
    Ok(())
}

pub async fn list_shares(paths: &ClientPaths, node: &str, ev: &Events) {
    match crate::cli::shares_ls(paths, Some(node)).await {
        Ok(out) => {
            let rows = out
                .json
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let str_of = |k: &str| {
                                s.get(k)
                                    .and_then(|v| v.as_str())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let revoked = s.get("revoked").and_then(|v| v.as_bool()) == Some(true);
                            ShareRow {
                                id: str_of("id"),
                                role: str_of("role"),
                                grantee: str_of("grantee"),
                                state: if revoked { "revoked" } else { "active" }.into(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            ev.emit(Event::Shares {
                node: node.to_string(),
                list: rows,
            });
        }
        Err(e) => ev.notice(Level::Error, "Cannot list shares", format!("{e:#}")),
    }
}

pub async fn share(
    paths: &ClientPaths,
    node: &str,
    role: &str,
    to: Option<String>,
    expires: Option<String>,
    ev: &Events,
) {
    let r = async {
        let role: sam_protocol::Role = role.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let to = to
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().parse::<sam_protocol::NodeId>())
            .transpose()
            .map_err(|e| anyhow::anyhow!("grantee: {e}"))?;
        let invite = to.is_none();
        let out = crate::cli::share(
            paths,
            node,
            role,
            to,
            invite,
            expires.as_deref().filter(|e| !e.trim().is_empty()),
        )
        .await?;
        out.json
            .get("ticket")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .context("the share made no ticket")
    }
    .await;
    match r {
        Ok(t) => ev.emit(Event::ShareTicket(t)),
        Err(e) => ev.notice(Level::Error, "Cannot share", format!("{e:#}")),
    }
}

/// A desktop notification through the freedesktop notification service (pure-Rust
/// D-Bus). Without a session bus or service it does nothing.
pub async fn desktop_notification(title: String, body: String) {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        return;
    }
    let mut note = notify_rust::Notification::new();
    note.appname("SAM").summary(&title).body(&body);
    match tokio::time::timeout(Duration::from_secs(3), note.show_async()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::info!("no desktop notification: {e}"),
        Err(_) => tracing::info!("no desktop notification: the service did not answer"),
    }
}

/// Input for the terminal task.
pub enum TermIn {
    Data(Vec<u8>),
    Resize { rows: u16, cols: u16 },
}

/// Attaches to the workspace's terminal and pumps bytes both ways until either side ends.
/// A lost link is resumed silently (crate::resume); only when it is not back within a
/// second does the status line say "reconnecting".
pub async fn terminal(
    paths: ClientPaths,
    node: String,
    workspace: String,
    rows: u16,
    cols: u16,
    mut input: mpsc::UnboundedReceiver<TermIn>,
    ev: Events,
) {
    use crate::resume::{PtyEvent, PtyIn, RESUME_WINDOW, attach_pty};
    use sam_protocol::stream::{PtyOpen, PtyTarget};
    let r = async {
        let book = crate::NodeBook::load(&paths.nodes())?;
        let entry = book.find(Some(&node))?.clone();
        let ep = crate::endpoint::bind(&paths.identity()?, None).await?;
        let open = PtyOpen {
            workspace: workspace.clone(),
            target: PtyTarget::Default,
            shell: None,
            cols: cols.max(1),
            rows: rows.max(1),
        };
        let mut session = attach_pty(ep.clone(), entry.ticket()?, open, RESUME_WINDOW).await?;
        let opened = session.opened.clone();
        let status = format!(
            "terminal {} in {workspace} · {} attached{}",
            opened.terminal,
            opened.attached,
            if opened.read_only { " · read-only (viewer)" } else { "" }
        );
        ev.emit(Event::TermStatus {
            open: true,
            text: status.clone(),
        });
        // Set while the link is down: when the "reconnecting" state may show.
        let mut lost: Option<(tokio::time::Instant, String)> = None;
        let mut shown = false;
        let result: Result<()> = loop {
            let show_at = lost.as_ref().map(|(t, _)| *t);
            tokio::select! {
                i = input.recv() => {
                    let msg = match i {
                        None => PtyIn::Detach,
                        Some(TermIn::Data(d)) => PtyIn::Data(d),
                        Some(TermIn::Resize { rows, cols }) => PtyIn::Resize { cols, rows },
                    };
                    let detach = msg == PtyIn::Detach;
                    if session.input.send(msg).await.is_err() || detach {
                        break Ok(());
                    }
                }
                _ = tokio::time::sleep_until(show_at.unwrap_or_else(tokio::time::Instant::now)), if show_at.is_some() && !shown => {
                    shown = true;
                    let why = lost.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
                    ev.emit(Event::TermStatus { open: true, text: format!("reconnecting… ({why})") });
                }
                e = session.events.recv() => match e {
                    Some(PtyEvent::Output(chunk)) => ev.emit(Event::TermOutput(chunk.to_vec())),
                    Some(PtyEvent::Lost { reason }) => {
                        lost = Some((tokio::time::Instant::now() + Duration::from_secs(1), reason));
                        shown = false;
                    }
                    Some(PtyEvent::Resumed { missed, .. }) => {
                        lost = None;
                        if shown || missed > 0 {
                            let mut text = status.clone();
                            if missed > 0 {
                                text.push_str(&format!(" · {missed} bytes of output lost while away"));
                            }
                            ev.emit(Event::TermStatus { open: true, text });
                        }
                        shown = false;
                    }
                    Some(PtyEvent::ReadOnlyInput) => ev.emit(Event::TermStatus {
                        open: true,
                        text: format!("{status} · read-only: viewers cannot type in this terminal"),
                    }),
                    Some(PtyEvent::Ended(r)) => break r.map_err(|e| anyhow::anyhow!("{e}")),
                    None => break Ok(()),
                },
            }
        };
        ep.close().await;
        result
    }
    .await;
    let text = match r {
        Ok(()) => "terminal closed".to_string(),
        Err(e) => format!("cannot use the terminal: {e:#}"),
    };
    ev.emit(Event::TermStatus { open: false, text });
}
