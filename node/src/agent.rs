//! Agents over ACP: the node starts each conversation's agent (through a [`Launcher`]),
//! feeds it the conversation's queued prompts one at a time and writes everything it does
//! into the conversation document, which is the truth every peer syncs.
//!
//! - [`Agents`] is the handle the node holds: it watches the document host for changed
//!   conversations, keeps one runner actor per conversation (spawned on first change),
//!   answers `Request::Agent` and keeps credentials in memory only.
//! - `runner` is the per-conversation actor (inbox + cancellation token): turns, permissions,
//!   cancel, crash/hang handling and restarts.
//! - `acp` is the ACP client connection and the client-side methods (`fs/*`, `terminal/*`).
//! - `launcher` starts processes on the host or in a workspace container.
//! - `writer` batches document changes; `registry` maps agent names to commands.
//!
//! Settings come from the environment of `sam-node` (for tests and local setups):
//! `SAM_AGENT_LAUNCHER=host` with `SAM_AGENT_HOST_ROOT=DIR` runs agents as host processes
//! in `DIR/<workspace>`; the default runs them in the workspace's container.
//! `SAM_AGENT_IDLE_TIMEOUT_SECS` bounds how long a silent agent may keep a turn.

pub mod acp;
pub mod launcher;
pub mod registry;
mod runner;
pub mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sam_crdt::{CrdtError, MessageId, Role as MsgRole, Status};
use sam_protocol::Grant;
use sam_protocol::agent::{AgentRequest, AgentResponse, Credentials, PermissionPolicy};
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use launcher::{DockerLauncher, HostLauncher, Launcher};

use crate::docs::DocHost;
use crate::workspace::Workspaces;

/// Errors of the agent subsystem.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Spawn(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Doc(ErrorBody),
}

/// Where agents run.
#[derive(Debug, Clone)]
pub enum LauncherMode {
    /// In the workspace's container (the default).
    Docker,
    /// As host processes in `root/<workspace id>`.
    Host { root: PathBuf },
    /// One fixed launcher for every workspace (tests, embedding).
    Fixed(Arc<dyn Launcher>),
}

/// Settings of the agent subsystem.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    pub launcher: LauncherMode,
    /// A turn fails when the agent says nothing for this long (permission waits excepted).
    pub idle_timeout: Duration,
    /// How long a cancelled turn may take to end before the agent is killed.
    pub cancel_grace: Duration,
    /// Extra arguments per agent name (e.g. Codex `-c` provider flags).
    pub extra_args: HashMap<String, Vec<String>>,
    /// Environment given to every agent (not secret: e.g. a fake LLM's base URL in tests).
    pub extra_env: Vec<(String, String)>,
    /// Names peers may set for agents besides [`registry::AGENT_ENV`] (the node config's
    /// `agent_env`, set by its owner).
    pub allowed_env: Vec<String>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            launcher: LauncherMode::Docker,
            idle_timeout: Duration::from_secs(600),
            cancel_grace: Duration::from_secs(10),
            extra_args: HashMap::new(),
            extra_env: Vec::new(),
            allowed_env: Vec::new(),
        }
    }
}

impl AgentsConfig {
    /// Defaults overridden by `SAM_AGENT_*` environment variables.
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if std::env::var("SAM_AGENT_LAUNCHER").as_deref() == Ok("host") {
            let root = std::env::var_os("SAM_AGENT_HOST_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("sam-workspaces"));
            c.launcher = LauncherMode::Host { root };
        }
        if let Some(s) = std::env::var("SAM_AGENT_IDLE_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            c.idle_timeout = Duration::from_secs(s);
        }
        c
    }
}

pub(crate) struct Shared {
    pub node_id: String,
    pub docs: DocHost,
    pub workspaces: Workspaces,
    pub config: RwLock<AgentsConfig>,
    /// Agent environment per target, with the peer that sent it.
    creds: Mutex<HashMap<CredKey, PeerEnv>>,
    /// Values replaced by a later set: a running agent may still hold them.
    retired: Mutex<Vec<String>>,
    actors: Mutex<HashMap<String, runner::Handle>>,
    /// Conversations being deleted: no runner is spawned for them.
    deleting: Mutex<std::collections::HashSet<String>>,
    pub shutdown: CancellationToken,
}

/// An agent environment and the peer that sent it.
type PeerEnv = (sam_protocol::NodeId, Vec<(String, String)>);

/// Most replaced credential values remembered for redaction.
const MAX_RETIRED: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CredKey {
    Conv(String),
    Workspace(String),
}

impl Shared {
    pub fn config(&self) -> AgentsConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Environment for an agent of `conv` in `workspace`: workspace credentials, then the
    /// conversation's on top. Two peers' sets are never mixed: when the conversation's set
    /// was sent by another peer than the workspace's, only the conversation's is used (else
    /// a collaborator's `ANTHROPIC_BASE_URL` could send the owner's key to its own server).
    pub fn credentials(&self, conv: &str, workspace: &str) -> Vec<(String, String)> {
        let creds = self.creds.lock().unwrap_or_else(|p| p.into_inner());
        let ws = creds.get(&CredKey::Workspace(workspace.into()));
        let cv = creds.get(&CredKey::Conv(conv.into()));
        let sets = match (ws, cv) {
            (Some((a, _)), Some((b, _))) if a != b => vec![cv],
            _ => vec![ws, cv],
        };
        let mut env: Vec<(String, String)> = Vec::new();
        for (_, set) in sets.into_iter().flatten() {
            for (k, v) in set {
                env.retain(|(n, _)| n != k);
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    /// Every credential value (redacted from agent stderr and from everything an agent
    /// writes into a document).
    pub fn secrets(&self) -> Vec<String> {
        let creds = self.creds.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<String> = creds
            .values()
            .flat_map(|(_, set)| set.iter().map(|(_, v)| v.clone()))
            .collect();
        all.extend(
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        all
    }

    /// The launcher for a workspace.
    pub async fn launcher(&self, workspace: &str) -> Result<Arc<dyn Launcher>, AgentError> {
        match self.config().launcher {
            LauncherMode::Fixed(l) => Ok(l),
            LauncherMode::Host { root } => {
                if workspace.is_empty()
                    || workspace.contains(['/', '\\'])
                    || workspace.starts_with('.')
                {
                    return Err(AgentError::Config(format!(
                        "bad workspace id {workspace:?}"
                    )));
                }
                let dir = root.join(workspace);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| AgentError::Io(format!("create {}: {e}", dir.display())))?;
                Ok(Arc::new(HostLauncher::new(dir)))
            }
            LauncherMode::Docker => {
                let c = self
                    .workspaces
                    .container(workspace)
                    .await
                    .map_err(AgentError::Doc)?;
                Ok(Arc::new(DockerLauncher::new(
                    c.container_id,
                    c.user,
                    c.root,
                )))
            }
        }
    }
}

/// The node's agents. Cheap to clone.
#[derive(Clone)]
pub struct Agents {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").finish_non_exhaustive()
    }
}

fn doc_err(e: CrdtError) -> ErrorBody {
    let code = match &e {
        CrdtError::AlreadyAnswered { .. } => ErrorCode::Conflict,
        CrdtError::UnknownMessage(_) => ErrorCode::NotFound,
        _ => ErrorCode::BadRequest,
    };
    ErrorBody::new(code, e.to_string())
}

impl Agents {
    /// Starts watching `docs`; marks turns cut short by a node restart `interrupted` and
    /// picks up queued prompts.
    pub fn start(
        node_id: String,
        docs: DocHost,
        workspaces: Workspaces,
        config: AgentsConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            node_id,
            docs,
            workspaces,
            config: RwLock::new(config),
            creds: Mutex::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
            actors: Mutex::new(HashMap::new()),
            deleting: Mutex::new(std::collections::HashSet::new()),
            shutdown: CancellationToken::new(),
        });
        let me = Self { shared };
        tokio::spawn(me.clone().watch());
        me
    }

    /// Replaces the settings (tests: a fixed launcher, short timeouts).
    pub fn configure(&self, f: impl FnOnce(&mut AgentsConfig)) {
        let mut c = self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// Stops every runner and agent process.
    /// Every agent key peers sent (to keep them out of commits and PRs).
    pub fn secrets(&self) -> Vec<String> {
        self.shared.secrets()
    }

    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    async fn watch(self) {
        let mut changes = self.shared.docs.subscribe_changes();
        if let Err(e) = self.recover().await {
            warn!(error = %e, "agent recovery after restart failed");
        }
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                id = changes.recv() => match id {
                    Ok(id) => { self.ensure(&id); }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for s in self.shared.docs.list().await {
                            self.ensure(&s.id);
                        }
                    }
                    Err(_) => break,
                },
            }
        }
    }

    /// After a node start: running turns become `interrupted`; queued prompts stay queued.
    async fn recover(&self) -> Result<(), ErrorBody> {
        for s in self.shared.docs.list().await {
            let stale: Vec<MessageId> = self
                .shared
                .docs
                .read(&s.id, |c| {
                    c.messages()
                        .into_iter()
                        .filter(|m| match m.role {
                            MsgRole::User => m.status == Status::Running,
                            _ => matches!(m.status, Status::Running | Status::Streaming),
                        })
                        .map(|m| m.id)
                        .collect()
                })
                .await?;
            if !stale.is_empty() {
                info!(conv = %s.id, n = stale.len(), "marking turns cut short by a node restart");
                self.shared
                    .docs
                    .mutate(&s.id, move |c| {
                        for m in stale {
                            let _ = c.set_status(
                                &m,
                                Status::Interrupted,
                                Some("the node restarted during this turn"),
                            );
                        }
                    })
                    .await?;
            }
            self.ensure(&s.id);
        }
        Ok(())
    }

    /// The runner of `conv`, spawned if needed.
    fn ensure(&self, conv: &str) -> runner::Handle {
        if self
            .shared
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(conv)
        {
            // A handle to no runner: idle status, nothing to cancel.
            return runner::Handle::closed();
        }
        let mut actors = self.shared.actors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = actors.get(conv)
            && !h.is_closed()
        {
            return h.clone();
        }
        let h = runner::spawn(self.shared.clone(), conv.to_string());
        actors.insert(conv.to_string(), h.clone());
        h
    }

    /// Stops the agent of `conv` for good before the conversation is deleted: no runner is
    /// spawned for it until [`Self::forget`]. A running turn refuses the stop (`Conflict`,
    /// naming its prompt) unless `force`, which cancels it (by `by`) and waits for it to end
    /// (the agent is killed after the cancel grace). Returns the cancelled turn's prompt id.
    pub async fn stop_for_delete(
        &self,
        conv: &str,
        by: String,
        force: bool,
    ) -> Result<Option<String>, ErrorBody> {
        let handle = {
            let mut deleting = self
                .shared
                .deleting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !deleting.insert(conv.to_string()) {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("conversation {conv} is being deleted already"),
                ));
            }
            self.shared
                .actors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(conv)
        };
        let Some(h) = handle.filter(|h| !h.is_closed()) else {
            return Ok(None);
        };
        let limit = self.shared.config().cancel_grace + Duration::from_secs(30);
        let refused = |this: &Self, h: runner::Handle, e: ErrorBody| {
            this.shared
                .actors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(conv.to_string(), h);
            this.shared
                .deleting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(conv);
            Err(e)
        };
        match tokio::time::timeout(limit, h.stop(by, force)).await {
            Ok(Ok(turn)) => Ok(turn),
            Ok(Err(turn)) => refused(
                self,
                h,
                ErrorBody::new(
                    ErrorCode::Conflict,
                    format!(
                        "a turn of conversation {conv} is running (prompt {turn}): cancel it first, or delete with force, which cancels it"
                    ),
                ),
            ),
            Err(_) => refused(
                self,
                h,
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the turn of conversation {conv} did not end within {} s of its cancel",
                        limit.as_secs()
                    ),
                ),
            ),
        }
    }

    /// After a deletion (done or failed): runners may be spawned for `conv` again, and the
    /// agent keys sent for it are dropped.
    pub fn forget(&self, conv: &str) {
        self.shared
            .creds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&CredKey::Conv(conv.to_string()));
        self.shared
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(conv);
    }

    /// Drops the agent keys sent for workspace `id` (it was deleted).
    pub fn forget_workspace(&self, id: &str) {
        self.shared
            .creds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&CredKey::Workspace(id.to_string()));
    }

    /// Answers `Request::Agent` for `grant`.
    pub async fn handle(
        &self,
        grant: &Grant,
        req: AgentRequest,
    ) -> Result<AgentResponse, ErrorBody> {
        let needed = req.required_role();
        let by = grant.peer.to_string();
        match req {
            AgentRequest::Credentials {
                conv,
                workspace,
                credentials,
            } => {
                credentials
                    .check()
                    .map_err(|m| ErrorBody::new(ErrorCode::BadRequest, m))?;
                let allowed = self.shared.config().allowed_env;
                if let Some((name, _)) = credentials
                    .env
                    .iter()
                    .find(|(k, _)| !registry::env_allowed(k, &allowed))
                {
                    warn!(peer = %grant.peer.short(), name, "agent environment refused");
                    return Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!(
                            "{name} is not an agent key this node accepts (accepted: {}{}); the node's owner can allow more names with `agent_env` in the node's config.toml",
                            registry::AGENT_ENV.join(", "),
                            allowed.iter().map(|a| format!(", {a}")).collect::<String>()
                        ),
                    ));
                }
                let key = match (conv, workspace) {
                    (Some(c), _) => {
                        self.check_conv(grant, needed, &c).await?;
                        CredKey::Conv(c)
                    }
                    (None, Some(w)) => {
                        if !grant.allows(needed, Some(&sam_protocol::Scope::Workspace(w.clone()))) {
                            return Err(forbidden(&format!("workspace {w}")));
                        }
                        CredKey::Workspace(w)
                    }
                    (None, None) => {
                        return Err(ErrorBody::new(
                            ErrorCode::BadRequest,
                            "credentials need a conversation or a workspace",
                        ));
                    }
                };
                let Credentials { env } = credentials;
                let old = self
                    .shared
                    .creds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (grant.peer, env));
                if let Some((_, old)) = old {
                    let mut retired = self
                        .shared
                        .retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    retired.extend(old.into_iter().map(|(_, v)| v));
                    let extra = retired.len().saturating_sub(MAX_RETIRED);
                    retired.drain(..extra);
                }
                Ok(AgentResponse::Cancelled { turn: None })
            }
            AgentRequest::Cancel { conv } => {
                self.check_conv(grant, needed, &conv).await?;
                let turn = self.ensure(&conv).cancel(by).await;
                Ok(AgentResponse::Cancelled { turn })
            }
            AgentRequest::Permit {
                conv,
                message,
                option,
            } => {
                self.check_conv(grant, needed, &conv).await?;
                let id = sam_crdt::MessageId::new(message)
                    .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
                self.shared
                    .docs
                    .mutate(&conv, move |c| {
                        let m = c
                            .message(&id)
                            .ok_or_else(|| CrdtError::UnknownMessage(id.to_string()))?;
                        if m.role != MsgRole::Permission {
                            return Err(CrdtError::InvalidArgument(format!(
                                "message {id} is not a permission request"
                            )));
                        }
                        if m.status != Status::Running {
                            return Err(CrdtError::InvalidArgument(format!(
                                "permission request {id} is {} and takes no answer",
                                m.status
                            )));
                        }
                        c.answer_permission(&id, &option, &by)
                    })
                    .await?
                    .map_err(doc_err)?;
                Ok(AgentResponse::Cancelled { turn: None })
            }
            AgentRequest::SetPolicy { conv, policy } => {
                self.check_conv(grant, needed, &conv).await?;
                let rights = crate::docs::Rights::of(grant);
                if !rights.steer {
                    return Err(ErrorBody::new(
                        ErrorCode::Forbidden,
                        format!(
                            "{} may not change the permission policy of conversation {conv}; \
                             only the node's owner or an unscoped collaborator may",
                            rights.who
                        ),
                    ));
                }
                let author = self.shared.node_id.clone();
                self.shared
                    .docs
                    .mutate(&conv, move |c| c.set_policy(&author, policy.as_str()))
                    .await?
                    .map_err(doc_err)?;
                Ok(AgentResponse::Cancelled { turn: None })
            }
            AgentRequest::Status { conv } => {
                self.check_conv(grant, needed, &conv).await?;
                Ok(AgentResponse::Status(self.ensure(&conv).status().await))
            }
        }
    }

    async fn check_conv(&self, grant: &Grant, role: Role, conv: &str) -> Result<(), ErrorBody> {
        let ws = self.shared.docs.read(conv, |c| c.workspace().id).await?;
        if crate::docs::stream::may(grant, role, conv, &ws) {
            Ok(())
        } else {
            Err(forbidden(&format!("conversation {conv}")))
        }
    }
}

fn forbidden(what: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!("your capability does not allow this on {what}"),
    )
}

/// The policy stored in a document (unknown values count as `ask`).
pub fn policy_of(c: &sam_crdt::Conversation) -> PermissionPolicy {
    c.policy()
        .and_then(|p| PermissionPolicy::parse(&p))
        .unwrap_or_default()
}
