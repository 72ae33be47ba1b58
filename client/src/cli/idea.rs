//! `sam idea` and `sam pr`: from an idea to a pull request.
//!
//! `sam idea` creates a workspace for the repo on a node, a conversation with the
//! `allow-all` policy, hands the node the PR settings (GitHub token in the node's memory
//! only), prompts, and follows the conversation until the node writes the PR outcome. It
//! keeps answering the node's git credential requests meanwhile (clone and push).
//! `sam pr CONV` runs the PR step again (after a failure, or by hand).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use sam_crdt::{Conversation, Role as MsgRole};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::pr::{GitIdentity, PrOutcome, PrRequest, PrResponse, PrSettings, branch_for};
use sam_protocol::workspace::{
    CreateWorkspace, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
};
use sam_provisioner::{AnyProvider, IrohProbe, Pool, Provider, Size, Vm};
use serde_json::json;

use super::cloud::ProviderName;
use super::{Output, open};
use crate::book::NodeBook;
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
    /// Keep the workspace (and a pool node busy) after the PR, for follow-up prompts.
    pub keep: bool,
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

tokio::task_local! {
    /// Where progress lines also go while `sam idea` runs inside [`with_progress`] (the GUI).
    static PROGRESS: tokio::sync::mpsc::UnboundedSender<String>;
}

/// Runs `fut` (e.g. [`idea`]) with every progress line also sent to `tx`, as printed.
pub async fn with_progress<F: std::future::Future>(
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    fut: F,
) -> F::Output {
    PROGRESS.scope(tx, fut).await
}

/// Prints a progress line on stderr, and hands it to the [`with_progress`] listener.
fn say(line: String) {
    eprintln!("{line}");
    listener_line(line);
}

/// Hands a line printed elsewhere (e.g. a workspace's creation log) to the
/// [`with_progress`] listener, if any.
pub(crate) fn listener_line(line: String) {
    let _ = PROGRESS.try_with(|tx| tx.send(line));
}

async fn pr_request(client: &NodeClient, req: PrRequest) -> Result<PrResponse> {
    match client.request(Request::Pr(req)).await? {
        Response::Pr(p) => Ok(p),
        other => bail!("node answered with something else: {other:?}"),
    }
}

/// The progress display: one line per step on stderr, with the time since the start and the
/// step's own time; the steps also go into the JSON output (`steps`).
struct Progress {
    t0: Instant,
    last: Instant,
    steps: Vec<serde_json::Value>,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            t0: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// A step is done.
    fn done(&mut self, name: &str, detail: &str) {
        self.done_at(name, detail, Instant::now());
    }

    fn done_at(&mut self, name: &str, detail: &str, at: Instant) {
        let took = at.saturating_duration_since(self.last).as_secs_f64();
        let total = at.saturating_duration_since(self.t0).as_secs_f64();
        self.last = at;
        say(format!("==> [{total:6.2}s +{took:5.2}s] {name}: {detail}"));
        self.steps
            .push(json!({ "step": name, "secs": took, "at": total, "detail": detail }));
    }

    fn note(&self, text: &str) {
        say(format!("    {text}"));
    }
}

/// Requests to stop since `sam idea` started: Ctrl-C presses in the CLI, the Cancel button
/// in the app. One listener for the whole command, so a press between two steps is not
/// lost (a fresh `ctrl_c()` only sees later ones). The first press stops at the next safe
/// point and cleans up; a second one leaves at once.
pub struct Interrupts {
    rx: tokio::sync::watch::Receiver<u32>,
    /// What the user pressed, for the messages ("Ctrl-C", "Cancel").
    how: &'static str,
}

impl Interrupts {
    /// Listens for Ctrl-C (the CLI).
    fn ctrl_c() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                tx.send_modify(|n| *n += 1);
            }
        });
        Self { rx, how: "Ctrl-C" }
    }

    /// Presses sent by the caller: each `send_modify(|n| *n += 1)` on the sender is one.
    pub fn from_watch(rx: tokio::sync::watch::Receiver<u32>, how: &'static str) -> Self {
        Self { rx, how }
    }

    /// Resolves at the next press, at once when one came unseen.
    async fn next(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a press came unseen (and marks it seen).
    fn pressed(&mut self) -> bool {
        let p = self.rx.has_changed().unwrap_or(false);
        self.rx.mark_unchanged();
        p
    }
}

/// Where the idea runs: a node the user named, or one taken from a provider's warm pool.
enum Place {
    Known,
    Pooled {
        pool: Box<Pool<AnyProvider>>,
        vm: Vm,
        /// Taken warm from the pool rather than created.
        reused: bool,
    },
}

/// Takes a warm node of the size from the provider's pool, or creates one (a failed create is
/// deleted by the pool), and writes it into the node book.
async fn acquire(
    paths: &ClientPaths,
    provider: &str,
    size: Size,
    progress: &mut Progress,
    intr: &mut Interrupts,
) -> Result<(Place, String)> {
    let name = ProviderName::from_str(provider, true).map_err(|_| {
        anyhow::anyhow!("unknown provider {provider:?}: use local, hetzner or scaleway")
    })?;
    let pool = super::cloud::pool_for(paths, name)?;
    let key = paths.identity()?;
    let owner = key.node_id();
    // the owner's key: new nodes are enrolled by their owner only
    let probe = IrohProbe::bind_as(&key, super::cloud::probe_bind()?)
        .await
        .map_err(anyhow::Error::msg)?;
    if intr.pressed() {
        bail!("interrupted before step 'node'");
    }
    // The pool works in its own task, so an interrupt never cuts a create in half: the node being
    // made is finished, then given back to the pool.
    let mut task = tokio::spawn(async move {
        let got = pool.acquire(size, &owner, &probe).await;
        probe.close().await;
        (pool, got)
    });
    let (pool, got) = tokio::select! {
        r = &mut task => r.context("the pool task failed")?,
        _ = intr.next() => {
            progress.note(&format!("interrupted: finishing the node being made, then giving it back ({} again to leave now)", intr.how));
            let (pool, got) = tokio::select! {
                r = &mut task => r.context("the pool task failed")?,
                _ = intr.next() => bail!("interrupted at step 'node': a node may be left, see `sam vm ls` and `sam vm rm`"),
            };
            if let Ok(got) = got {
                match pool.release(&got.vm).await {
                    Ok(_) => progress.note(&format!("node {} is idle in the warm pool", got.vm.id)),
                    Err(e) => progress.note(&format!("node {} could not be given back ({e}): `sam vm rm {}`", got.vm.id, got.vm.id)),
                }
            }
            bail!("interrupted at step 'node'");
        }
    };
    let got = got.with_context(|| {
        format!(
            "step 'node' failed: no {} node of size {size}",
            pool.provider.name()
        )
    })?;
    let mut book = NodeBook::load(&paths.nodes())?;
    let entry = book.upsert(&got.ticket, None)?;
    book.set_owner(&got.ticket.addr.id.to_string(), &owner);
    book.save(&paths.nodes())?;
    progress.done(
        "node",
        &format!(
            "{} {} node {} ({entry})",
            if got.reused {
                "warm"
            } else {
                "new (no idle node)"
            },
            pool.provider.name(),
            got.vm.id
        ),
    );
    Ok((
        Place::Pooled {
            pool: Box::new(pool),
            vm: got.vm,
            reused: got.reused,
        },
        got.ticket.addr.id.to_string(),
    ))
}

/// `sam idea`: Ctrl-C interrupts it.
pub async fn idea(paths: &ClientPaths, a: IdeaArgs) -> Result<Output> {
    idea_with(paths, a, Interrupts::ctrl_c()).await
}

/// `sam idea`, stopped by the presses of `intr` (the app's Cancel button).
pub async fn idea_with(paths: &ClientPaths, a: IdeaArgs, mut intr: Interrupts) -> Result<Output> {
    let mut progress = Progress::new();
    if a.idea.trim().is_empty() {
        bail!("the idea is empty: describe what the agent should do");
    }
    if a.node.is_some() && (a.provider.is_some() || a.size.is_some()) {
        bail!("--node uses a node you already have; --provider and --size pick one from a pool");
    }
    let size: Size = match a.size.as_deref() {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("--size: {e}"))?,
        None => Size::Small,
    };
    let token = github_token(paths).await?;
    let identity = git_identity().await?;
    let branch = branch_for(&a.idea);
    let title = title(&a.idea);
    // 1. The node: the one named, else the pool's.
    let (place, node) = match a.node.as_deref() {
        Some(n) => (Place::Known, n.to_string()),
        None => {
            acquire(
                paths,
                a.provider.as_deref().unwrap_or("local"),
                size,
                &mut progress,
                &mut intr,
            )
            .await?
        }
    };
    // 2. Connect by ticket.
    let (ep, client, entry) = match open(paths, Some(&node)).await {
        Ok(c) => c,
        Err(e) => {
            let fate = match &place {
                Place::Pooled { pool, vm, .. } => match pool.provider.delete(&vm.id).await {
                    Ok(()) => {
                        let _ = super::cloud::forget_machine(paths, vm);
                        format!("; node {} was deleted", vm.id)
                    }
                    Err(d) => format!(
                        "; deleting node {} failed ({d}): `sam vm rm {}`",
                        vm.id, vm.id
                    ),
                },
                Place::Known => String::new(),
            };
            return Err(e.context(format!("step 'connect' failed{fate}")));
        }
    };
    progress.done(
        "connect",
        &format!("node {} reached by its ticket", entry.name),
    );
    // 3–6 run with one credential broker for the whole flow (clone and push): a broker loop
    // that is cancelled while its long poll is open would leave that poll on the node.
    let mut made = Made::default();
    let flow = run_flow(
        paths,
        &a,
        &ep,
        &client,
        &entry,
        &branch,
        &title,
        identity,
        token,
        &mut progress,
        &mut made,
    );
    let mut interrupted = false;
    let result = tokio::select! {
        r = flow => r,
        _ = credential_broker(&client) => unreachable!("the credential broker never ends"),
        _ = intr.next() => {
            interrupted = true;
            Err(anyhow::anyhow!("interrupted ({})", intr.how))
        }
    };
    // 7. Release: after the PR (or when no workspace could be made), the workspace goes and
    // the node goes back to the warm pool. After a later failure the work is kept.
    let mut released = false;
    if let Place::Pooled { pool, vm, .. } = &place {
        if result.is_ok() && a.keep {
            progress.note(&format!(
                "--keep: workspace and node {} stay for follow-up prompts (`sam prompt CONV`, then `sam pr CONV`); `sam vm release {}` when done",
                vm.id, vm.id
            ));
        } else if result.is_ok() || !made.ready {
            let workspace = made_workspace(&client, &made, &branch).await;
            let at = (paths, &ep, &entry);
            released = release(
                pool,
                vm,
                &client,
                at,
                workspace.as_deref(),
                &mut progress,
                &mut intr,
            )
            .await;
        } else {
            progress.note(&format!(
                "node {} stays busy with the workspace (retry: `sam pr CONV`; give it back: `sam vm release {}`)",
                vm.id, vm.id
            ));
        }
    } else if interrupted && !made.ready {
        // A node of the user's own: a workspace interrupted before it was ready holds no
        // work, so it goes (the node stops its creation).
        if let Some(id) = made_workspace(&client, &made, &branch).await {
            match super::teardown::remove_keeping_history(paths, &ep, &client, &entry, &id, false)
                .await
            {
                Ok(_) => progress.note(&format!("workspace {id} was not ready yet: removed")),
                Err(e) => progress.note(&format!(
                    "workspace {id} could not be removed ({e:#}): `sam workspace rm {id}`"
                )),
            }
        }
    }
    client.close();
    ep.close().await;
    let done = result?;
    progress.done("done", "idea to PR");
    let (provider, vm_id, reused) = match &place {
        Place::Pooled { pool, vm, reused } => (
            Some(pool.provider.name()),
            Some(vm.id.clone()),
            Some(*reused),
        ),
        Place::Known => (None, None, None),
    };
    Ok(Output::new(
        json!({
            "conversation": done.conv, "workspace": done.workspace, "branch": branch,
            "pr": done.url, "message": done.text, "node": entry.id, "provider": provider,
            "vm": vm_id, "reused": reused, "released": released,
            "steps": progress.steps,
        }),
        format!("{}\n{}", done.text, done.url),
    ))
}

/// Removes the idea's workspace (if any) and marks the node idle; says what happened.
async fn release(
    pool: &Pool<AnyProvider>,
    vm: &Vm,
    client: &NodeClient,
    (paths, ep, entry): (&ClientPaths, &iroh::Endpoint, &crate::book::NodeEntry),
    workspace: Option<&str>,
    progress: &mut Progress,
    intr: &mut Interrupts,
) -> bool {
    if let Some(id) = workspace {
        // Graceful teardown: the node deletes the workspace once its conversation is held
        // here in sync. A workspace still being made (interrupted) goes at once: the node
        // stops its creation first.
        let removed = tokio::select! {
            r = super::teardown::remove_keeping_history(paths, ep, client, entry, id, false) => r,
            _ = intr.next() => Err(anyhow::anyhow!("interrupted again ({})", intr.how)),
        };
        if let Err(e) = removed {
            progress.note(&format!(
                "workspace {id} could not be removed ({e:#}); node {} stays busy: `sam vm release {}` when done",
                vm.id, vm.id
            ));
            return false;
        }
    }
    match pool.release(vm).await {
        Ok(vm) => {
            let left = pool
                .policy
                .expires_at(&vm)
                .map(|t| t.saturating_sub(sam_provisioner::pool::now_unix()))
                .unwrap_or(0);
            progress.done(
                "release",
                &format!(
                    "{}node {} idle in the warm pool (deleted after {} min unless reused)",
                    if workspace.is_some() {
                        "workspace removed; "
                    } else {
                        ""
                    },
                    vm.id,
                    left / 60
                ),
            );
            true
        }
        Err(e) => {
            progress.note(&format!(
                "could not put node {} back in the pool: {e} (`sam vm release {}`)",
                vm.id, vm.id
            ));
            false
        }
    }
}

/// The idea's workspace, also when the flow was interrupted while its create request was
/// on its way (then it is found by its name, the branch without `sam/`).
async fn made_workspace(client: &NodeClient, made: &Made, branch: &str) -> Option<String> {
    match &made.workspace {
        Some(id) => Some(id.clone()),
        None => workspace_named(client, branch.trim_start_matches("sam/")).await,
    }
}

/// The id of the node's workspace called `name`, if there is one.
async fn workspace_named(client: &NodeClient, name: &str) -> Option<String> {
    match super::workspace::ws(client, WorkspaceRequest::List).await {
        Ok(WorkspaceResponse::List(all)) => all.into_iter().find(|w| w.name == name).map(|w| w.id),
        _ => None,
    }
}

/// What the flow has made so far.
#[derive(Default)]
struct Made {
    workspace: Option<String>,
    /// The workspace is ready: from here on a failure keeps it (and its work).
    ready: bool,
}

/// What the flow made.
struct Done {
    conv: String,
    workspace: String,
    text: String,
    url: String,
}

/// Workspace → conversation → prompt → agent → PR. Each failure names its step.
#[allow(clippy::too_many_arguments)]
async fn run_flow(
    paths: &ClientPaths,
    a: &IdeaArgs,
    ep: &iroh::Endpoint,
    client: &NodeClient,
    entry: &crate::NodeEntry,
    branch: &str,
    title: &str,
    identity: GitIdentity,
    token: String,
    progress: &mut Progress,
    made: &mut Made,
) -> Result<Done> {
    // 3. The workspace, on the base branch; the node switches to `branch` for the PR.
    let spec = CreateWorkspace {
        repo: Some(a.repo.clone()),
        branch: Some(a.base.clone()),
        lightweight: a.lightweight,
        name: Some(branch.trim_start_matches("sam/").to_string()),
    };
    let info = async {
        let WorkspaceResponse::Info(info) =
            super::workspace::ws(client, WorkspaceRequest::Create(spec)).await?
        else {
            bail!("node answered create with something else");
        };
        made.workspace = Some(info.id.clone());
        let info = super::workspace::creation_logs(client, &info.id).await?;
        if let WorkspaceStatus::Failed { reason, log_tail } = &info.status {
            bail!(
                "workspace {} failed: {reason}\n--- last log lines ---\n{log_tail}",
                info.id
            );
        }
        Ok(info)
    }
    .await
    .context("step 'workspace' failed")?;
    made.ready = true;
    progress.done(
        "workspace",
        &format!(
            "{} ready on {} (branch {branch} for the PR)",
            info.id, a.base
        ),
    );
    // 4. The conversation (autonomous policy), PR settings, the prompt.
    let conv = async {
        let out = super::convs::convs(
            paths,
            super::convs::ConvsCmd::New {
                workspace: info.id.clone(),
                node: Some(entry.id.clone()),
                agent: a.agent.clone(),
                agent_cmd: a.agent_cmd.clone(),
                title: Some(title.to_string()),
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
            branch: branch.to_string(),
            idea: a.idea.clone(),
            identity,
            token,
            api: std::env::var("SAM_GITHUB_API")
                .ok()
                .filter(|v| !v.is_empty()),
        };
        pr_request(
            client,
            PrRequest::Enable {
                conv: conv.clone(),
                settings,
            },
        )
        .await?;
        let sent = super::convs::prompt(paths, &conv, &a.idea).await?;
        if sent.json["sent"] != json!(true) {
            bail!("the prompt could not be sent to the node (it is queued in {conv})");
        }
        Ok::<_, anyhow::Error>(conv)
    }
    .await
    .context("step 'agent' failed (conversation, PR settings or prompt)")?;
    progress.done(
        "agent",
        &format!("conversation {conv}: prompt sent, agent working (policy allow-all)"),
    );
    // 5–6. Follow until the node writes the PR outcome.
    let text = follow(paths, ep, &entry.ticket()?, &conv, progress)
        .await
        .with_context(|| {
            format!(
                "step 'pr' failed; the work stays in workspace {} (retry: `sam pr {conv}`)",
                info.id
            )
        })?;
    let url = text
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|u| u.trim_end_matches(['.', ',', ')']).to_string());
    let Some(url) = url else {
        bail!(
            "step 'pr': {text} (workspace {} is kept; prompt again with `sam prompt {conv}`, then `sam pr {conv}`)",
            info.id
        );
    };
    progress.done("pr", &format!("pull request opened: {url}"));
    Ok(Done {
        conv,
        workspace: info.id,
        text,
        url,
    })
}

/// Answers the node's git credential requests, one long poll after the other, forever.
async fn credential_broker(client: &NodeClient) {
    loop {
        if let Err(e) = super::workspace::serve_one_credential(client).await {
            eprintln!("credential broker: {e:#}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Prints each new message as a step line and returns the first PR outcome the node writes.
async fn follow(
    paths: &ClientPaths,
    ep: &iroh::Endpoint,
    ticket: &sam_protocol::Ticket,
    conv: &str,
    progress: &mut Progress,
) -> Result<String> {
    let mut stream = open_stream(ep, ticket, conv, false).await?;
    let (tx, mut rx) = tokio::sync::watch::channel(None::<String>);
    let mut replicas = Replicas::open(paths)?;
    let first_token = std::cell::Cell::new(None::<Instant>);
    let first = &first_token;
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
                    if first.get().is_none()
                        && msgs.iter().any(|m| {
                            matches!(m.role, MsgRole::Agent | MsgRole::Thought | MsgRole::Tool)
                                && (!m.text.is_empty() || m.tool.is_some())
                        })
                    {
                        first.set(Some(Instant::now()));
                        say("    (first agent token)".into());
                    }
                    for m in msgs.iter().skip(shown) {
                        if m.role == MsgRole::System && is_pr_outcome(&m.text) {
                            let _ = tx.send(Some(m.text.clone()));
                        } else if m.role != MsgRole::User {
                            let line = m.text.lines().next().unwrap_or("");
                            let what = m.tool.as_ref().map(|t| t.title.as_str()).unwrap_or(line);
                            say(format!(
                                "    {}: {}",
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
    let r = tokio::select! {
        t = wait => t,
        r = follower => match r {
            Ok(()) => Err(anyhow::anyhow!("the node closed the conversation stream before the PR step")),
            Err(e) => Err(e.context("following the conversation")),
        },
    };
    if let Some(at) = first_token.get() {
        progress.done_at("first token", "the agent answered", at);
    }
    r
}

/// Whether a system message is the node's PR outcome (the texts of `sam_node::pr::describe`);
/// other system messages (an agent restarted, a move) are progress.
fn is_pr_outcome(text: &str) -> bool {
    [
        "Pull request #",
        "Pushed ",
        "No changes in the workspace",
        "Pull request step failed",
    ]
    .iter()
    .any(|p| text.starts_with(p))
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
        let r = tokio::select! {
            r = run => r?,
            _ = credential_broker(&client) => unreachable!("the credential broker never ends"),
        };
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
