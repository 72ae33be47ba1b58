//! The actor of one conversation: runs its queued prompts one at a time through its agent
//! and writes what the agent does into the document. The document is the truth: prompts
//! are found there (whoever wrote them, online or offline), permission answers are read
//! from there (written by a ctl request or synced from any collaborator's replica).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use acpc::schema::ProtocolVersion;
use acpc::v1::Responder;
use acpc::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities,
    InitializeRequest, LoadSessionRequest, NewSessionRequest, PermissionOptionKind, PromptRequest,
    RequestPermissionOutcome, RequestPermissionResponse, SelectedPermissionOutcome, SessionUpdate,
    StopReason, TextContent, ToolCallContent, ToolCallStatus, ToolKind,
};
use agent_client_protocol as acpc;
use sam_crdt::{
    MessageId, PermissionOption, PlanEntry, Role as MsgRole, Status, ToolCall, ToolCallUpdate,
    ToolStatus,
};
use sam_protocol::agent::{AgentStatus, PermissionPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::acp::{self, AcpConn, Event};
use super::launcher::Launcher;
use super::writer::{Op, Slot, Writer};
use super::{Shared, registry};

mod turn;

use turn::*;

/// Most transcript bytes handed to a restarted agent that cannot `session/load`.
const MAX_TRANSCRIPT: usize = 64 * 1024;

pub(crate) enum Msg {
    Cancel {
        by: String,
        reply: oneshot::Sender<Option<String>>,
    },
    Status {
        reply: oneshot::Sender<AgentStatus>,
    },
    /// Stop for good (the conversation is being deleted): idle, at once; in a turn, refused
    /// with the turn's prompt id unless `force`, which cancels the turn and stops when it
    /// has ended (answering with its prompt id).
    Stop {
        by: String,
        force: bool,
        reply: StopReply,
    },
}

/// The answer to [`Msg::Stop`]: `Ok(cancelled turn)` once stopped, `Err(running turn)` when
/// refused.
pub(crate) type StopReply = oneshot::Sender<Result<Option<String>, String>>;

/// Handle to a conversation's runner.
#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Msg>,
}

impl Handle {
    /// A handle to no runner.
    pub fn closed() -> Self {
        Self {
            tx: mpsc::channel(1).0,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub async fn cancel(&self, by: String) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Cancel { by, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// See [`Msg::Stop`]; a runner already gone counts as stopped.
    pub async fn stop(&self, by: String, force: bool) -> Result<Option<String>, String> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop { by, force, reply }).await.is_err() {
            return Ok(None);
        }
        rx.await.unwrap_or(Ok(None))
    }

    pub async fn status(&self) -> AgentStatus {
        let (reply, rx) = oneshot::channel();
        let idle = AgentStatus {
            running: false,
            turn: None,
            waiting_permissions: Vec::new(),
            queued: 0,
        };
        if self.tx.send(Msg::Status { reply }).await.is_err() {
            return idle;
        }
        rx.await.unwrap_or(idle)
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, conv: String) -> Handle {
    let (tx, rx) = mpsc::channel(64);
    let span = info_span!("agent", conv = %conv);
    let r = Runner {
        shared,
        conv,
        agent: None,
        inbox: rx,
        stopping: None,
    };
    tokio::spawn(r.run().instrument(span));
    Handle { tx }
}

struct Agent {
    conn: AcpConn,
    session: String,
    launcher: Arc<dyn Launcher>,
}

/// What the document says about the next prompt.
struct Prompt {
    id: MessageId,
    text: String,
    agent: String,
    agent_cmd: Option<String>,
    workspace: String,
    session: Option<String>,
    policy: PermissionPolicy,
    /// Agent output exists before this prompt (a fresh agent needs context).
    has_history: bool,
    /// The `hosts` history does not name this node/workspace as the open last entry yet.
    record_host: bool,
    /// The conversation was moved here from this host and no agent has run here since.
    moved_from: Option<sam_crdt::Host>,
    /// The uncommitted work the move carried as a patch (`hosts[i].carried` names the note).
    carried_patch: Option<String>,
}

struct Runner {
    shared: Arc<Shared>,
    conv: String,
    agent: Option<Agent>,
    inbox: mpsc::Receiver<Msg>,
    /// A forced stop arrived during the turn (its reply, the turn's prompt id).
    stopping: Option<(StopReply, String)>,
}

async fn ended(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return "the agent connection ended".into();
        }
    }
}

impl Runner {
    async fn run(mut self) {
        let docs = self.shared.docs.clone();
        let Ok(opened) = docs.open(&self.conv, false).await else {
            return;
        };
        let mut version = opened.version;
        let shutdown = self.shared.shutdown.clone();
        loop {
            match self.next_prompt().await {
                Ok(Some(p)) => {
                    self.turn(p, &mut version).await;
                    if let Some((reply, turn)) = self.stopping.take() {
                        let _ = reply.send(Ok(Some(turn)));
                        break;
                    }
                    continue;
                }
                Ok(None) => {
                    if self.agent.is_some() && self.moved_away().await {
                        info!("the conversation moved to another node; stopping its agent here");
                        self.agent = None;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the conversation");
                    return;
                }
            }
            let mut agent_end = self.agent.as_ref().map(|a| a.conn.ended.clone());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = version.changed() => if r.is_err() { break },
                m = self.inbox.recv() => match m {
                    None => break,
                    Some(Msg::Cancel { reply, .. }) => { let _ = reply.send(None); }
                    Some(Msg::Stop { reply, .. }) => { let _ = reply.send(Ok(None)); break; }
                    Some(Msg::Status { reply }) => {
                        let queued = self.shared.docs.read(&self.conv, |c| c.queued_prompts().len() as u32).await.unwrap_or(0);
                        let _ = reply.send(AgentStatus { running: self.agent.is_some(), turn: None, waiting_permissions: Vec::new(), queued });
                    }
                },
                why = async { match agent_end.as_mut() { Some(rx) => ended(rx).await, None => std::future::pending().await } } => {
                    info!(%why, "idle agent went away");
                    self.agent = None;
                }
            }
        }
        if let Some(mut a) = self.agent.take() {
            a.conn.stop();
        }
    }

    async fn next_prompt(&self) -> Result<Option<Prompt>, sam_protocol::ctl::ErrorBody> {
        let me = self.shared.node_id.clone();
        self.shared
            .docs
            .read(&self.conv, move |c| {
                // Moved to another node (`sam move`): its queued prompts are that node's.
                if c.workspace().node != me {
                    return None;
                }
                let id = c.queued_prompts().into_iter().next()?;
                let msgs = c.messages();
                let pos = msgs.iter().position(|m| m.id == id)?;
                // Only the guarded root field (never a message a collaborator could write).
                let agent_cmd = c.agent_cmd();
                let here = c.current_host();
                let hosts = c.hosts();
                let record_host = !matches!(hosts.last(), Some(h) if h == &here);
                // The host before this one, when nothing has run here yet.
                let ran_here = msgs
                    .iter()
                    .any(|m| m.author == me && m.created_at >= here.since);
                let moved_from = (!ran_here && hosts.len() >= 2 && !record_host)
                    .then(|| hosts[hosts.len() - 2].clone())
                    .filter(|h| h.node != here.node || h.workspace != here.workspace);
                let carried_patch = moved_from.as_ref().and_then(|h| carried_patch(c, h));
                Some(Prompt {
                    carried_patch,
                    text: msgs[pos].text.clone(),
                    has_history: msgs[..pos].iter().any(|m| m.role == MsgRole::Agent),
                    record_host,
                    moved_from,
                    id,
                    agent: c.agent(),
                    agent_cmd,
                    workspace: c.workspace().id,
                    session: c.acp_session(),
                    policy: super::policy_of(c),
                })
            })
            .await
    }

    async fn transcript(&self, before: MessageId) -> String {
        let t = self
            .shared
            .docs
            .read(&self.conv, move |c| {
                let mut out = String::new();
                for m in c.messages() {
                    if m.id == before {
                        break;
                    }
                    if matches!(m.role, MsgRole::User | MsgRole::Agent) && !m.text.is_empty() {
                        out.push_str(&format!("{}: {}\n\n", m.role, m.text));
                    }
                }
                out
            })
            .await
            .unwrap_or_default();
        if t.len() <= MAX_TRANSCRIPT {
            return t;
        }
        let mut cut = t.len() - MAX_TRANSCRIPT;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t[cut..].to_string()
    }

    /// Whether the conversation now names another node (`sam move`).
    async fn moved_away(&self) -> bool {
        let me = self.shared.node_id.clone();
        self.shared
            .docs
            .read(&self.conv, move |c| c.workspace().node != me)
            .await
            .unwrap_or(false)
    }

    /// Writes this node/workspace into the `hosts` history, with the repo and branch of a
    /// Docker workspace when the node knows them.
    async fn record_host(&self, workspace: &str) {
        let (mut repo, mut branch) = (None, None);
        if matches!(self.shared.config().launcher, super::LauncherMode::Docker)
            && let Ok(info) = self.shared.workspaces.get(workspace).await
        {
            repo = info.repo;
            branch = info.branch;
        }
        let me = self.shared.node_id.clone();
        let ws = workspace.to_string();
        let r = self
            .shared
            .docs
            .mutate(&self.conv, move |c| {
                c.record_host(&me, &me, &ws, repo.as_deref(), branch.as_deref())
            })
            .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot record this node in the hosts history"),
            Err(e) => warn!(error = %e, "cannot record this node in the hosts history"),
        }
    }

    /// Applies a carried patch in the workspace (`git apply`, through the agent's launcher).
    async fn apply_patch(&self, agent: &Agent, patch: &str) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let argv: Vec<String> = ["git", "apply", "--whitespace=nowarn", "-"]
            .map(String::from)
            .to_vec();
        let root = agent.launcher.root();
        let mut proc = agent
            .launcher
            .spawn(&argv, &[], &root)
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = proc.stdin.take() {
            stdin
                .write_all(patch.as_bytes())
                .await
                .map_err(|e| format!("write the patch: {e}"))?;
        }
        let status = tokio::time::timeout(Duration::from_secs(60), proc.child.wait())
            .await
            .map_err(|_| "git apply did not finish within 60 s".to_string())?
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(format!(
                "git apply: {status}: {}",
                proc.stderr.text(&[]).trim()
            ))
        }
    }

    fn tail(&self, conn: &AcpConn) -> String {
        let t = conn.stderr.text(&self.shared.secrets());
        if t.is_empty() {
            String::new()
        } else {
            format!("; agent stderr: {t}")
        }
    }

    /// Sends a request, failing when the agent dies or stays silent for `timeout`.
    async fn request<R: acpc::JsonRpcRequest>(
        &self,
        conn: &mut AcpConn,
        req: R,
        timeout: Duration,
        what: &str,
    ) -> Result<R::Response, String>
    where
        R::Response: Send + 'static,
    {
        let fut = conn.cx.send_request(req).block_task();
        let mut end = conn.ended.clone();
        let r = tokio::select! {
            r = fut => r.map_err(|e| format!("{what} failed: {}", acp::describe(&e))),
            why = ended(&mut end) => Err(format!("{why} during {what}")),
            _ = tokio::time::sleep(timeout) => Err(format!("the agent did not answer {what} within {} s", timeout.as_secs())),
        };
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                // Give a dying agent a moment to say why (exit status, stderr).
                tokio::time::sleep(Duration::from_millis(150)).await;
                let e = match conn.ended() {
                    Some(why) if !e.contains("did not answer") => format!("{why} during {what}"),
                    _ => e,
                };
                Err(format!("{e}{}", self.tail(conn)))
            }
        }
    }

    async fn start_agent(&self, p: &Prompt, w: &mut Writer) -> Result<(Agent, bool), String> {
        let cfg = self.shared.config();
        let extra = cfg.extra_args.get(&p.agent).cloned().unwrap_or_default();
        let spec = registry::resolve(&p.agent, p.agent_cmd.as_deref(), &extra)
            .map_err(|e| e.to_string())?;
        let launcher = self
            .shared
            .launcher(&p.workspace)
            .await
            .map_err(|e| format!("cannot reach the workspace: {e}"))?;
        let mut env = spec.env.clone();
        env.extend(cfg.extra_env.iter().cloned());
        env.extend(self.shared.credentials(&self.conv, &p.workspace));
        let root = launcher.root();
        let proc = launcher
            .spawn(&spec.argv, &env, &root)
            .map_err(|e| e.to_string())?;
        info!(agent = %p.agent, cmd = %spec.argv[0], launcher = %launcher.describe(), "agent started");
        let span = info_span!("acp", conv = %self.conv, agent = %p.agent);
        let mut conn = acp::connect(proc, launcher.clone(), span)
            .await
            .map_err(|e| e.to_string())?;
        let init = InitializeRequest::new(ProtocolVersion::V1).client_capabilities(
            ClientCapabilities::new()
                .fs(FileSystemCapabilities::new()
                    .read_text_file(true)
                    .write_text_file(true))
                .terminal(true),
        );
        let timeout = cfg.idle_timeout;
        let caps = self.request(&mut conn, init, timeout, "initialize").await?;
        let can_load = caps.agent_capabilities.load_session;
        let mut loaded = None;
        if let (true, Some(sid)) = (can_load, p.session.clone()) {
            match self
                .request(
                    &mut conn,
                    LoadSessionRequest::new(sid.clone(), root.clone()),
                    timeout,
                    "session/load",
                )
                .await
            {
                Ok(_) => loaded = Some(sid),
                Err(e) => warn!(error = %e, "session/load failed; starting a new session"),
            }
            // The replayed history is in the document already.
            while conn.events.try_recv().is_ok() {}
        }
        let (session, fresh) = match loaded {
            Some(s) => (s, false),
            None => {
                let r = self
                    .request(
                        &mut conn,
                        NewSessionRequest::new(root.clone()),
                        timeout,
                        "session/new",
                    )
                    .await?;
                (r.session_id.0.to_string(), true)
            }
        };
        w.send(Op::Session(session.clone()));
        Ok((
            Agent {
                conn,
                session,
                launcher,
            },
            fresh && p.has_history,
        ))
    }

    async fn turn(&mut self, p: Prompt, version: &mut watch::Receiver<u64>) {
        let mut w = Writer::start(
            self.shared.docs.clone(),
            self.conv.clone(),
            self.shared.node_id.clone(),
            self.shared.secrets(),
        );
        w.send(Op::StatusOf(p.id.clone(), Status::Running, None));
        info!(prompt = %p.id, "turn starts");
        if self
            .agent
            .as_ref()
            .is_some_and(|a| a.conn.ended().is_some())
        {
            self.agent = None;
        }
        if p.record_host {
            self.record_host(&p.workspace).await;
        }
        let mut blocks = Vec::new();
        let mut agent = match self.agent.take() {
            Some(a) => a,
            None => match self.start_agent(&p, &mut w).await {
                Ok((a, needs_context)) => {
                    if let Some(from) = &p.moved_from {
                        // A new host: say how the new agent knows the conversation.
                        let applied = match &p.carried_patch {
                            Some(patch) => match self.apply_patch(&a, patch).await {
                                Ok(()) => "; the uncommitted work carried from there was applied (git apply)".to_string(),
                                Err(e) => format!("; the uncommitted work carried from there could not be applied ({e}): it stays in the note above"),
                            },
                            None => String::new(),
                        };
                        let context = if needs_context {
                            self.transcript(p.id.clone()).await
                        } else {
                            String::new()
                        };
                        if !context.is_empty() {
                            blocks.push(ContentBlock::Text(TextContent::new(format!(
                                "The conversation so far (it was moved to this machine and you cannot reload your earlier session):\n\n{context}"
                            ))));
                        }
                        let how = if !context.is_empty() {
                            "this agent cannot load its earlier session here, so it was given the transcript so far as context"
                        } else if p.has_history && p.session.as_deref() == Some(a.session.as_str())
                        {
                            "the agent reloaded its earlier session with ACP session/load"
                        } else if p.has_history {
                            "the agent started a new session and was given no earlier context"
                        } else {
                            "the agent started a new session (there was no earlier agent output)"
                        };
                        let s = w.slot();
                        w.send(Op::Start(s, MsgRole::System));
                        w.send(Op::Chunk(
                            s,
                            format!(
                                "continued on node {} (workspace {}) after a move from node {} (workspace {}): {how}{applied}",
                                short(&self.shared.node_id),
                                p.workspace,
                                short(&from.node),
                                from.workspace
                            ),
                        ));
                        w.send(Op::Status(s, Status::Done, None));
                    } else if needs_context {
                        let t = self.transcript(p.id.clone()).await;
                        if !t.is_empty() {
                            blocks.push(ContentBlock::Text(TextContent::new(format!(
                                "The conversation so far (you were restarted and cannot reload your session):\n\n{t}"
                            ))));
                        }
                        let s = w.slot();
                        w.send(Op::Start(s, MsgRole::System));
                        w.send(Op::Chunk(s, "the agent was restarted and cannot load its earlier session: it was given the transcript so far as context".into()));
                        w.send(Op::Status(s, Status::Done, None));
                    }
                    a
                }
                Err(reason) => {
                    warn!(%reason, "agent did not start");
                    w.send(Op::StatusOf(p.id.clone(), Status::Failed, Some(reason)));
                    w.finish().await;
                    return;
                }
            },
        };
        blocks.push(ContentBlock::Text(TextContent::new(p.text.clone())));
        let cfg = self.shared.config();
        let (res_tx, mut res_rx) = oneshot::channel();
        let fut = agent
            .conn
            .cx
            .send_request(PromptRequest::new(agent.session.clone(), blocks))
            .block_task();
        tokio::spawn(async move {
            let _ = res_tx.send(fut.await);
        });
        let mut t = Turn {
            w,
            policy: p.policy,
            open: None,
            tools: HashMap::new(),
            perms: Vec::new(),
            cancelled_by: None,
        };
        let mut end = agent.conn.ended.clone();
        let mut last = Instant::now();
        let mut cancel_deadline: Option<Instant> = None;
        let mut events_open = true;
        let far = Duration::from_secs(86400 * 365);
        let shutdown = self.shared.shutdown.clone();
        let (status, reason, keep_agent) = loop {
            let idle_at = if t.perms.is_empty() {
                last + cfg.idle_timeout
            } else {
                last + far
            };
            tokio::select! {
                biased;
                ev = agent.conn.events.recv(), if events_open => {
                    last = Instant::now();
                    match ev {
                        Some(ev) => t.event(ev),
                        // The connection is gone; `ended` says why.
                        None => events_open = false,
                    }
                }
                r = &mut res_rx => {
                    while let Ok(ev) = agent.conn.events.try_recv() { t.event(ev) }
                    break match r {
                        Ok(Ok(resp)) => match (resp.stop_reason, &t.cancelled_by) {
                            (StopReason::Cancelled, _) | (_, Some(_)) => (Status::Cancelled, t.cancel_reason(), true),
                            (StopReason::EndTurn, _) => (Status::Done, None, true),
                            (other, _) => (Status::Done, Some(format!("the agent stopped: {}", stop_name(other))), true),
                        },
                        Ok(Err(e)) => {
                            // Give the connection a moment: an agent that died says so.
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            let alive = agent.conn.ended().is_none();
                            let why = agent.conn.ended().unwrap_or_else(|| format!("the agent refused the prompt: {}", acp::describe(&e)));
                            (Status::Failed, Some(format!("{why}{}", self.tail(&agent.conn))), alive)
                        }
                        Err(_) => (Status::Failed, Some("the agent connection was lost".into()), false),
                    };
                }
                why = ended(&mut end) => {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while let Ok(ev) = agent.conn.events.try_recv() { t.event(ev) }
                    break (Status::Failed, Some(format!("{why}{}", self.tail(&agent.conn))), false);
                }
                r = version.changed() => {
                    if r.is_ok() {
                        t.check_answers(&self.shared.docs, &self.conv).await;
                    } else {
                        // The document left the node (deleted): nothing to write to.
                        break (Status::Interrupted, Some("the conversation was deleted from this node".into()), false);
                    }
                }
                m = self.inbox.recv() => match m {
                    Some(Msg::Cancel { by, reply }) => {
                        let _ = reply.send(Some(p.id.to_string()));
                        if t.cancelled_by.is_none() {
                            info!(%by, "turn cancelled");
                            t.cancelled_by = Some(by);
                            let _ = agent.conn.cx.send_notification(CancelNotification::new(agent.session.clone()));
                            t.drop_perms(Status::Cancelled);
                            cancel_deadline = Some(Instant::now() + cfg.cancel_grace);
                        }
                    }
                    Some(Msg::Stop { by, force, reply }) => {
                        if !force {
                            let _ = reply.send(Err(p.id.to_string()));
                        } else {
                            self.stopping = Some((reply, p.id.to_string()));
                            if t.cancelled_by.is_none() {
                                info!(%by, "turn cancelled: the conversation is being deleted");
                                t.cancelled_by = Some(by);
                                let _ = agent.conn.cx.send_notification(CancelNotification::new(agent.session.clone()));
                                t.drop_perms(Status::Cancelled);
                                cancel_deadline = Some(Instant::now() + cfg.cancel_grace);
                            }
                        }
                    }
                    Some(Msg::Status { reply }) => {
                        let waiting = t.perms.iter().filter_map(|q| t.w.id(q.slot)).map(|m| m.to_string()).collect();
                        let _ = reply.send(AgentStatus { running: true, turn: Some(p.id.to_string()), waiting_permissions: waiting, queued: 0 });
                    }
                    None => break (Status::Interrupted, Some("the node stopped the conversation".into()), false),
                },
                _ = tokio::time::sleep_until(idle_at) => {
                    break (Status::Failed, Some(format!(
                        "the agent did not answer for {} s and was stopped{}",
                        cfg.idle_timeout.as_secs(), self.tail(&agent.conn)
                    )), false);
                }
                _ = async { match cancel_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    let r = t.cancel_reason().map(|r| format!("{r}; the agent did not stop in time and was killed"));
                    break (Status::Cancelled, r, false);
                }
                _ = shutdown.cancelled() => break (Status::Interrupted, Some("the node shut down during this turn".into()), false),
            }
        };
        info!(prompt = %p.id, %status, "turn ends");
        t.finish(status, reason.clone());
        t.w.send(Op::StatusOf(p.id.clone(), status, reason));
        t.w.finish().await;
        if keep_agent && agent.conn.ended().is_none() {
            self.agent = Some(agent);
        } else {
            agent.conn.stop();
            let _ = agent.launcher.describe();
        }
    }
}

/// The patch a move carried from `from`, when its `carried` names a note holding one.
fn carried_patch(c: &sam_crdt::Conversation, from: &sam_crdt::Host) -> Option<String> {
    let id = from
        .carried
        .as_deref()?
        .strip_prefix("patch in message ")?
        .split_whitespace()
        .next()?;
    let note = c.message(&MessageId::new(id).ok()?)?;
    let body = note.text.split_once("```diff\n")?.1;
    let end = body.rfind("```")?;
    Some(body[..end].to_string())
}
