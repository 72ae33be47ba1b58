//! `sam workspace create|ls|rm|logs|recreate|creds`.
//!
//! `create` sends the request, then follows the creation log by long polling
//! `WorkspaceRequest::Logs` (lines go to stderr) while answering the node's git
//! credential requests (`WaitCredential` long polls) until the workspace is ready or
//! failed. The workspace id is the last line of stdout.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{
    CreateWorkspace, CredentialRequest, GitCredential, WorkspaceInfo, WorkspaceRequest,
    WorkspaceResponse, WorkspaceStatus,
};
use serde_json::json;

use super::{Output, open};
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

#[derive(Debug, Subcommand)]
pub enum WorkspaceCmd {
    /// Create a workspace (a container with the repo checked out); prints its id.
    Create {
        /// The node (name or id; optional when only one is known).
        #[arg(long)]
        node: Option<String>,
        /// Git URL to clone inside the workspace.
        #[arg(long)]
        repo: Option<String>,
        /// Branch to check out.
        #[arg(long)]
        branch: Option<String>,
        /// Use the prebuilt base image even when the repo has a devcontainer.
        #[arg(long)]
        lightweight: bool,
        /// Name (folder /workspaces/NAME); default from the repo.
        #[arg(long)]
        name: Option<String>,
        /// Return at once instead of following creation.
        #[arg(long)]
        no_wait: bool,
    },
    /// List workspaces.
    Ls {
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a workspace and its container.
    Rm {
        id: String,
        #[arg(long)]
        node: Option<String>,
        /// Delete even when some of its conversations are held by no other peer (what only
        /// the node had is lost).
        #[arg(long)]
        force: bool,
    },
    /// Show a workspace's creation log.
    Logs {
        id: String,
        #[arg(long)]
        node: Option<String>,
        /// Keep following while it is being created.
        #[arg(long)]
        follow: bool,
    },
    /// Bring back a stopped or failed workspace.
    Recreate {
        id: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Answer git credential requests of the node's workspaces until interrupted
    /// (from SAM_GIT_USERNAME/SAM_GIT_PASSWORD or `git credential fill`).
    Creds {
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(paths: &ClientPaths, cmd: WorkspaceCmd) -> Result<Output> {
    let node = match &cmd {
        WorkspaceCmd::Create { node, .. }
        | WorkspaceCmd::Ls { node }
        | WorkspaceCmd::Rm { node, .. }
        | WorkspaceCmd::Logs { node, .. }
        | WorkspaceCmd::Recreate { node, .. }
        | WorkspaceCmd::Creds { node } => node.clone(),
    };
    let (ep, client, entry) = open(paths, node.as_deref()).await?;
    let result = match cmd {
        WorkspaceCmd::Rm { id, force, .. } => {
            super::teardown::rm(paths, &ep, &client, &entry, &id, force).await
        }
        cmd => run_on(&client, cmd).await,
    };
    client.close();
    ep.close().await;
    result
}

pub async fn ws(client: &NodeClient, request: WorkspaceRequest) -> Result<WorkspaceResponse> {
    let asked = match &request {
        WorkspaceRequest::Create(spec) => Some(spec.repo.clone()),
        _ => None,
    };
    match client.request(Request::Workspace(request)).await? {
        Response::Workspace(w) => {
            // What this client made, and from which repo: the only credential requests it
            // answers (crate::made).
            if let (Some(repo), WorkspaceResponse::Info(info)) = (asked, &w)
                && info.repo == repo
            {
                crate::made::record(
                    &client.my_id(),
                    &client.node_id(),
                    &info.id,
                    repo.as_deref(),
                );
            }
            Ok(w)
        }
        other => bail!("node answered with something else: {other:?}"),
    }
}

async fn run_on(client: &NodeClient, cmd: WorkspaceCmd) -> Result<Output> {
    match cmd {
        WorkspaceCmd::Create {
            repo,
            branch,
            lightweight,
            name,
            no_wait,
            ..
        } => {
            let spec = CreateWorkspace {
                repo,
                branch,
                lightweight,
                name,
            };
            let WorkspaceResponse::Info(info) = ws(client, WorkspaceRequest::Create(spec)).await?
            else {
                bail!("node answered create with something else");
            };
            let info = if no_wait {
                info
            } else {
                follow_creation(client, &info.id).await?
            };
            if let WorkspaceStatus::Failed { reason, log_tail } = &info.status {
                bail!(
                    "workspace {} failed: {reason}\n--- last log lines ---\n{log_tail}",
                    info.id
                );
            }
            Ok(info_output(&info))
        }
        WorkspaceCmd::Ls { .. } => {
            let WorkspaceResponse::List(list) = ws(client, WorkspaceRequest::List).await? else {
                bail!("node answered list with something else");
            };
            let text = list
                .iter()
                .map(|w| {
                    format!(
                        "{}\t{}\t{}\t{}",
                        w.id,
                        w.name,
                        status_word(&w.status),
                        w.repo.as_deref().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Output::new(serde_json::to_value(&list)?, text))
        }
        WorkspaceCmd::Rm { id, force, .. } => {
            ws(
                client,
                WorkspaceRequest::Teardown {
                    id: id.clone(),
                    force,
                },
            )
            .await?;
            Ok(Output::new(json!({ "removed": id }), id))
        }
        WorkspaceCmd::Recreate { id, .. } => {
            ws(client, WorkspaceRequest::Recreate { id: id.clone() }).await?;
            let info = follow_creation(client, &id).await?;
            Ok(info_output(&info))
        }
        WorkspaceCmd::Logs { id, follow, .. } => {
            let mut from = 0;
            let mut all = Vec::new();
            loop {
                let WorkspaceResponse::Logs(l) = ws(
                    client,
                    WorkspaceRequest::Logs {
                        id: id.clone(),
                        from,
                    },
                )
                .await?
                else {
                    bail!("node answered logs with something else");
                };
                from = l.next;
                if follow {
                    for line in &l.lines {
                        eprintln!("{line}");
                    }
                }
                all.extend(l.lines);
                if !follow || !matches!(l.status, WorkspaceStatus::Creating) {
                    break;
                }
            }
            Ok(Output::new(json!(all), all.join("\n")))
        }
        WorkspaceCmd::Creds { .. } => {
            eprintln!("answering git credential requests; Ctrl-C stops");
            loop {
                serve_one_credential(client).await?;
            }
        }
    }
}

fn info_output(info: &WorkspaceInfo) -> Output {
    let text = format!(
        "{} {} ({}) {}\n{}",
        status_word(&info.status),
        info.name,
        info.image,
        info.root,
        info.id
    );
    Output::new(serde_json::to_value(info).unwrap_or(json!(null)), text)
}

pub fn status_word(s: &WorkspaceStatus) -> &'static str {
    match s {
        WorkspaceStatus::Creating => "creating",
        WorkspaceStatus::Ready => "ready",
        WorkspaceStatus::Failed { .. } => "failed",
        WorkspaceStatus::Stopped => "stopped",
    }
}

/// Shows the creation log until the workspace is no longer `Creating`, answering
/// credential requests meanwhile. Returns the final info.
pub async fn follow_creation(client: &NodeClient, id: &str) -> Result<WorkspaceInfo> {
    let creds = async {
        loop {
            if let Err(e) = serve_one_credential(client).await {
                eprintln!("credential broker: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tokio::select! {
        r = creation_logs(client, id) => r,
        _ = creds => unreachable!("the credential loop never ends"),
    }
}

/// Shows the creation log until the workspace is no longer `Creating` (without answering
/// credential requests: the caller does). Returns the final info.
pub(crate) async fn creation_logs(client: &NodeClient, id: &str) -> Result<WorkspaceInfo> {
    let tty = std::io::stderr().is_terminal();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut from = 0;
    let mut tick = 0usize;
    loop {
        let WorkspaceResponse::Logs(l) = ws(
            client,
            WorkspaceRequest::Logs {
                id: id.to_string(),
                from,
            },
        )
        .await?
        else {
            bail!("node answered logs with something else");
        };
        from = l.next;
        let mut err = std::io::stderr().lock();
        for line in &l.lines {
            if tty {
                let _ = write!(err, "\r\x1b[2K");
            }
            let _ = writeln!(err, "  {line}");
            super::idea::listener_line(format!("  {line}"));
        }
        if !matches!(l.status, WorkspaceStatus::Creating) {
            if tty {
                let _ = write!(err, "\r\x1b[2K");
            }
            break;
        }
        if tty {
            tick += 1;
            let _ = write!(
                err,
                "\r{} creating workspace {id}",
                spinner[tick % spinner.len()]
            );
            let _ = err.flush();
        }
    }
    let WorkspaceResponse::Info(info) =
        ws(client, WorkspaceRequest::Get { id: id.to_string() }).await?
    else {
        bail!("node answered get with something else");
    };
    Ok(info)
}

/// One long poll for a credential request, answered when one comes; returns the line said
/// on stderr about it (`None`: no request came).
pub async fn serve_one_credential(client: &NodeClient) -> Result<Option<String>> {
    let WorkspaceResponse::Credential(req) = ws(client, WorkspaceRequest::WaitCredential).await?
    else {
        bail!("node answered a credential poll with something else");
    };
    let Some(req) = req else { return Ok(None) };
    // Only a workspace this client created, and only its repository's host (crate::made).
    let verdict = crate::made::check(&client.my_id(), &client.node_id(), &req);
    let answer = match &verdict {
        Ok(()) => local_credential(&req).await,
        Err(_) => None,
    };
    let what = match (&verdict, &answer) {
        (Err(why), _) => format!("refused ({why})"),
        (Ok(()), Some(_)) => "answered".to_string(),
        (Ok(()), None) => "none found, refused".to_string(),
    };
    let line = format!(
        "git credentials for {}://{} asked by workspace {}: {what}",
        clean(&req.protocol),
        clean(&req.host),
        clean(&req.workspace),
    );
    eprintln!("{line}");
    ws(
        client,
        WorkspaceRequest::AnswerCredential {
            request: req.id,
            answer,
        },
    )
    .await?;
    Ok(Some(line))
}

/// Text from the node, fit for one line of stderr (no control characters, bounded).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// This side's credential: `SAM_GIT_USERNAME`/`SAM_GIT_PASSWORD`, else
/// `git credential fill` (the user's own helpers: keyring, `gh`, store), with no
/// terminal prompt.
pub async fn local_credential(req: &CredentialRequest) -> Option<GitCredential> {
    if let (Ok(username), Ok(password)) = (
        std::env::var("SAM_GIT_USERNAME"),
        std::env::var("SAM_GIT_PASSWORD"),
    ) {
        return Some(GitCredential { username, password });
    }
    git_credential_fill(req).await.ok().flatten()
}

async fn git_credential_fill(req: &CredentialRequest) -> Result<Option<GitCredential>> {
    use tokio::io::AsyncWriteExt;
    let mut input = format!("protocol={}\nhost={}\n", req.protocol, req.host);
    if let Some(p) = &req.path {
        input.push_str(&format!("path={p}\n"));
    }
    input.push('\n');
    let mut child = tokio::process::Command::new("git")
        .args(["credential", "fill"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("run git credential fill")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("git credential fill took too long")??;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut username = None;
    let mut password = None;
    for line in text.lines() {
        if let Some(u) = line.strip_prefix("username=") {
            username = Some(u.to_string());
        } else if let Some(p) = line.strip_prefix("password=") {
            password = Some(p.to_string());
        }
    }
    Ok(username
        .zip(password)
        .map(|(username, password)| GitCredential { username, password }))
}
