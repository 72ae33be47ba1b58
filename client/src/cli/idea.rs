//! `sam idea` and `sam pr`: from an idea to a pull request.
//!
//! `sam idea` creates a workspace for the repo on a node, a conversation with the
//! `allow-all` policy, hands the node the PR settings (GitHub token in the node's memory
//! only), prompts, and follows the conversation until the node writes the PR outcome. It
//! keeps answering the node's git credential requests meanwhile (clone and push).
//! `sam pr CONV` runs the PR step again (after a failure, or by hand).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sam_crdt::{Conversation, Role as MsgRole};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::pr::{GitIdentity, PrOutcome, PrRequest, PrResponse, PrSettings, branch_for};
use sam_protocol::workspace::{
    CreateWorkspace, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
};
use serde_json::json;

use super::{Output, open};
use crate::conn::NodeClient;
use crate::docs::{Replicas, open_stream};
use crate::paths::ClientPaths;

/// Arguments of `sam idea`.
#[derive(Debug, Clone)]
pub struct IdeaArgs {
    pub idea: String,
    pub repo: String,
    pub base: String,
    pub agent: String,
    pub agent_cmd: Option<String>,
    pub node: Option<String>,
    pub provider: Option<String>,
    pub size: Option<String>,
    pub lightweight: bool,
}

/// The GitHub token: `GH_TOKEN`, `GITHUB_TOKEN`, `gh auth token`, then the OS keyring.
pub async fn github_token(paths: &ClientPaths) -> Result<String> {
    for var in ["GH_TOKEN", "GITHUB_TOKEN"] {
        if let Ok(t) = std::env::var(var)
            && !t.trim().is_empty()
        {
            return Ok(t.trim().to_string());
        }
    }
    if let Ok(Ok(out)) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("gh")
            .args(["auth", "token"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output(),
    )
    .await
        && out.status.success()
    {
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    if let Some(t) = crate::gui::keys::get(paths, "GITHUB_TOKEN").filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    bail!(
        "no GitHub token: set GH_TOKEN or GITHUB_TOKEN, run `gh auth login`, or save GITHUB_TOKEN in the keyring (sam gui settings)"
    )
}

/// `git config user.name` / `user.email` of this machine.
pub async fn git_identity() -> Result<GitIdentity> {
    async fn get(key: &str) -> Option<String> {
        let out = tokio::process::Command::new("git")
            .args(["config", "--get", key])
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!v.is_empty()).then_some(v)
    }
    match (get("user.name").await, get("user.email").await) {
        (Some(name), Some(email)) => Ok(GitIdentity { name, email }),
        _ => bail!(
            "no git identity: run `git config --global user.name \"Your Name\"` and `git config --global user.email you@example.com`"
        ),
    }
}

async fn pr_request(client: &NodeClient, req: PrRequest) -> Result<PrResponse> {
    match client.request(Request::Pr(req)).await? {
        Response::Pr(p) => Ok(p),
        other => bail!("node answered with something else: {other:?}"),
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// `sam idea`.
pub async fn idea(paths: &ClientPaths, a: IdeaArgs) -> Result<Output> {
    let started = std::time::Instant::now();
    if a.idea.trim().is_empty() {
        bail!("the idea is empty: describe what the agent should do");
    }
    if let Some(p) = a.provider.as_deref().filter(|p| *p != "local") {
        bail!(
            "`sam idea --provider {p}` is not implemented yet: start or connect a node (`sam up`, `sam connect`) and use --node{}",
            a.size
                .as_deref()
                .map(|_| " (--size applies to cloud providers only)")
                .unwrap_or("")
        );
    }
    let token = github_token(paths).await?;
    let identity = git_identity().await?;
    let branch = branch_for(&a.idea);
    let title = title(&a.idea);
    let (ep, client, entry) = open(paths, a.node.as_deref()).await?;
    step(&format!("node {} reached", entry.name));
    // 1. The workspace, on the base branch; the node switches to `branch` for the PR.
    let spec = CreateWorkspace {
        repo: Some(a.repo.clone()),
        branch: Some(a.base.clone()),
        lightweight: a.lightweight,
        name: Some(branch.trim_start_matches("sam/").to_string()),
    };
    let WorkspaceResponse::Info(info) =
        super::workspace::ws(&client, WorkspaceRequest::Create(spec)).await?
    else {
        bail!("node answered create with something else");
    };
    let info = super::workspace::follow_creation(&client, &info.id).await?;
    if let WorkspaceStatus::Failed { reason, log_tail } = &info.status {
        bail!(
            "workspace {} failed: {reason}\n--- last log lines ---\n{log_tail}",
            info.id
        );
    }
    step(&format!(
        "workspace {} ready ({:.1}s)",
        info.id,
        started.elapsed().as_secs_f64()
    ));
    // 2. The conversation (autonomous policy), PR settings, the prompt.
    let out = super::convs::convs(
        paths,
        super::convs::ConvsCmd::New {
            workspace: info.id.clone(),
            node: Some(entry.id.clone()),
            agent: a.agent.clone(),
            agent_cmd: a.agent_cmd.clone(),
            title: Some(title.clone()),
            policy: Some("allow-all".into()),
        },
    )
    .await?;
    let conv = out
        .text
        .lines()
        .last()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .context("no conversation id")?
        .to_string();
    let settings = PrSettings {
        repo_url: a.repo.clone(),
        base: a.base.clone(),
        branch: branch.clone(),
        idea: a.idea.clone(),
        identity,
        token,
        api: std::env::var("SAM_GITHUB_API")
            .ok()
            .filter(|v| !v.is_empty()),
    };
    pr_request(
        &client,
        PrRequest::Enable {
            conv: conv.clone(),
            settings,
        },
    )
    .await?;
    super::convs::prompt(paths, &conv, &a.idea).await?;
    step(&format!(
        "conversation {conv}: agent working (policy allow-all)"
    ));
    // 3. Follow until the node writes the PR outcome; answer credentials meanwhile.
    let outcome = follow(paths, &ep, &entry.ticket()?, &conv, &client).await;
    client.close();
    ep.close().await;
    let text = outcome?;
    let url = text
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(str::to_string);
    step(&format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    match url {
        Some(url) => Ok(Output::new(
            json!({ "conversation": conv, "workspace": info.id, "branch": branch, "pr": url, "message": text }),
            format!("{text}\n{url}"),
        )),
        None => bail!("{text}"),
    }
}

/// Prints each new message as a step line and returns the first PR outcome the node writes.
async fn follow(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    ticket: &sam_protocol::Ticket,
    conv: &str,
    client: &NodeClient,
) -> Result<String> {
    let mut stream = open_stream(ep, ticket, conv, false).await?;
    let (tx, mut rx) = tokio::sync::watch::channel(None::<String>);
    let mut replicas = Replicas::open(paths)?;
    let follower = async move {
        let mut doc = replicas
            .load(conv)
            .unwrap_or_else(|_| Conversation::new_replica());
        let mut shown = 0usize;
        stream
            .follow(
                &mut doc,
                |c| replicas.save(c),
                |c| {
                    let msgs = c.messages();
                    for m in msgs.iter().skip(shown) {
                        if m.role == MsgRole::System {
                            let _ = tx.send(Some(m.text.clone()));
                        } else if m.role != MsgRole::User {
                            let first = m.text.lines().next().unwrap_or("");
                            let what = m.tool.as_ref().map(|t| t.title.as_str()).unwrap_or(first);
                            step(&format!(
                                "{}: {}",
                                m.role.as_str(),
                                what.chars().take(100).collect::<String>()
                            ));
                        }
                    }
                    // Count only messages that are finished, so streamed text is shown once done.
                    shown = msgs
                        .iter()
                        .position(|m| {
                            m.role != MsgRole::User
                                && matches!(
                                    m.status,
                                    sam_crdt::Status::Streaming | sam_crdt::Status::Running
                                )
                        })
                        .unwrap_or(msgs.len());
                },
            )
            .await
    };
    let creds = async {
        loop {
            if let Err(e) = super::workspace::serve_one_credential(client).await {
                eprintln!("credential broker: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let wait = async {
        loop {
            if let Some(t) = rx.borrow_and_update().clone() {
                return Ok::<_, anyhow::Error>(t);
            }
            rx.changed()
                .await
                .context("the conversation stream ended")?;
        }
    };
    tokio::select! {
        t = wait => t,
        r = follower => match r {
            Ok(()) => bail!("the node closed the conversation stream before the PR step"),
            Err(e) => Err(e.context("following the conversation")),
        },
        _ = creds => bail!("credential loop ended"),
    }
}

fn title(idea: &str) -> String {
    idea.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("SAM idea")
        .trim()
        .chars()
        .take(72)
        .collect()
}

/// `sam pr CONV`: commit, push and open/reuse the PR now.
pub async fn pr(
    paths: &ClientPaths,
    conv: &str,
    base: &str,
    branch: Option<String>,
) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let doc = replicas.load(&id)?;
    let ws = doc.workspace();
    let (ep, client, _entry) = open(paths, Some(&ws.node)).await?;
    let result = async {
        let WorkspaceResponse::Info(info) =
            super::workspace::ws(&client, WorkspaceRequest::Get { id: ws.id.clone() }).await?
        else {
            bail!("node answered get with something else");
        };
        let repo = info.repo.context("the conversation's workspace has no repository")?;
        let idea = doc.title();
        let settings = PrSettings {
            repo_url: repo,
            base: base.to_string(),
            branch: branch.unwrap_or_else(|| branch_for(&idea)),
            idea,
            identity: git_identity().await?,
            token: github_token(paths).await?,
            api: std::env::var("SAM_GITHUB_API").ok().filter(|v| !v.is_empty()),
        };
        let run = pr_request(&client, PrRequest::Run { conv: id.clone(), settings: Some(settings) });
        let creds = async {
            loop {
                if let Err(e) = super::workspace::serve_one_credential(&client).await {
                    eprintln!("credential broker: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let r = tokio::select! { r = run => r?, _ = creds => bail!("credential loop ended") };
        match r {
            PrResponse::Outcome(PrOutcome::Opened { url, number, reused, branch, commit }) => Ok(Output::new(
                json!({ "pr": url, "number": number, "reused": reused, "branch": branch, "commit": commit }),
                url,
            )),
            PrResponse::Outcome(PrOutcome::NoChanges) => Ok(Output::new(
                json!({ "pr": null, "no_changes": true }),
                "no changes in the workspace: nothing to push",
            )),
            PrResponse::Outcome(PrOutcome::Failed { stage, message, commit }) => {
                bail!("PR step failed ({stage}): {message}{}", commit.map(|c| format!("; the work is kept in commit {c}")).unwrap_or_default())
            }
            other => bail!("node answered with something else: {other:?}"),
        }
    }
    .await;
    client.close();
    ep.close().await;
    result
}
