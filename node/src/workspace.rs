//! Workspaces: Docker containers on this node where agents and people work.
//!
//! The truth about a workspace lives in Docker: every container SAM makes carries
//! labels (`sam.workspace=<id>`, `sam.node=<node id>`, name, repo, root, user, …),
//! so a restarted node finds its workspaces again by label ([`discover`]). A workspace
//! that finished setting up has a marker file (`/var/lib/sam/ready`) in its container.
//! The node keeps in memory only what Docker cannot tell: the creation log and the
//! reason of a failure.
//!
//! - [`create`]: the build pipeline (lightweight: base image + clone; devcontainer:
//!   clone, then `docker build` with the repo as context, local features, then the
//!   final container with the repo copied in).
//! - [`devcontainer`]: the `devcontainer.json` subset, parsed with no IO.
//! - [`credentials`]: the git credential broker (container → node → client).
//! - [`docker`]: bollard helpers: connecting, exec with output, error mapping.
//!
//! Progress reaches clients by long polling `WorkspaceRequest::Logs { id, from }`.

mod create;
pub mod credentials;
pub mod devcontainer;
mod docker;
mod state;
mod tarball;

pub use state::scrub_url;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sam_protocol::NodeId;
use sam_protocol::auth::Grant;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::{
    CreateWorkspace, LOGS_WAIT_SECS, WorkspaceInfo, WorkspaceLogs, WorkspaceRequest,
    WorkspaceResponse, WorkspaceStatus,
};
use tracing::{info, warn};

use self::docker::{DockerConn, docker_err};
use self::state::{Entry, State};

pub use self::docker::{ContainerLimits, cannot_reach, docker_host};

/// The base image of lightweight workspaces, built by `bootstrap/images/build-base.sh`.
pub const DEFAULT_BASE_IMAGE: &str = "sam-base:1";
/// Labels on every container SAM makes.
pub mod label {
    pub const WORKSPACE: &str = "sam.workspace";
    pub const NODE: &str = "sam.node";
    pub const NAME: &str = "sam.name";
    pub const REPO: &str = "sam.repo";
    pub const BRANCH: &str = "sam.branch";
    pub const ROOT: &str = "sam.root";
    pub const USER: &str = "sam.user";
    pub const CREATED: &str = "sam.created";
    pub const IMAGE: &str = "sam.image";
    pub const LIGHTWEIGHT: &str = "sam.lightweight";
    pub const PORTS: &str = "sam.ports";
    /// NodeId (hex) of the peer that created the workspace.
    pub const CREATOR: &str = "sam.creator";
}
/// Marker file written in a container once its workspace is ready.
pub const READY_MARKER: &str = "/var/lib/sam/ready";
/// Where repos live in a container.
pub const WORKSPACES_DIR: &str = "/workspaces";

/// Settings of the workspace service.
#[derive(Debug, Clone)]
pub struct WorkspaceConfig {
    /// This node's id (hex), written as the `sam.node` label.
    pub node: String,
    /// Image of lightweight workspaces (and of the clone step of devcontainers).
    pub base_image: String,
    /// Host folder for per-workspace runtime files (the credential socket); each
    /// workspace's subfolder is bind-mounted at `/run/sam` in its container.
    pub run_dir: PathBuf,
    /// `DOCKER_HOST`-style address; `None` reads `DOCKER_HOST`, else the default socket.
    pub docker_host: Option<String>,
    /// Pid, memory and disk limits of every workspace container.
    pub limits: ContainerLimits,
}

impl WorkspaceConfig {
    /// Defaults for a node: base image from `SAM_BASE_IMAGE` or [`DEFAULT_BASE_IMAGE`].
    pub fn new(node: impl Into<String>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            base_image: std::env::var("SAM_BASE_IMAGE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_BASE_IMAGE.to_string()),
            run_dir: run_dir.into(),
            docker_host: None,
            limits: ContainerLimits::default(),
        }
    }
}

impl WorkspaceConfig {
    /// Applies the node config's `docker_host` and `base_image` when set.
    pub fn with_node_config(mut self, cfg: &crate::config::NodeConfig) -> Self {
        if let Some(h) = &cfg.docker_host {
            self.docker_host = Some(h.clone());
        }
        if let Some(b) = &cfg.base_image {
            self.base_image = b.clone();
        }
        self.limits = ContainerLimits::from_node_config(cfg);
        self
    }
}

/// What the PTY, port and file services need to reach a workspace's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub container_id: String,
    /// The repo folder inside the container.
    pub root: String,
    /// The user to run commands as.
    pub user: String,
}

/// The node's workspaces. Cheap to clone (a handle on shared state).
#[derive(Clone)]
pub struct Workspaces {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Workspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspaces")
            .field("node", &self.shared.cfg.node)
            .finish()
    }
}

impl Default for Workspaces {
    /// A service with no node id and a temp run dir (tests and tools only).
    fn default() -> Self {
        Self::new(WorkspaceConfig::new(
            "unknown",
            std::env::temp_dir().join("sam-workspaces"),
        ))
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: WorkspaceConfig,
    pub(crate) docker: DockerConn,
    pub(crate) state: State,
    pub(crate) broker: credentials::Broker,
}

impl Workspaces {
    /// Makes the service; no IO (Docker is reached on first use, so a node without
    /// Docker starts and serves everything else).
    pub fn new(cfg: WorkspaceConfig) -> Self {
        let docker = DockerConn::new(cfg.docker_host.clone());
        Self {
            shared: Arc::new(Shared {
                cfg,
                docker,
                state: State::default(),
                broker: credentials::Broker::default(),
            }),
        }
    }

    /// The Docker client (API version negotiated once the daemon has answered).
    pub fn docker(&self) -> Result<&bollard::Docker, ErrorBody> {
        self.shared.docker.raw()
    }

    /// The credential broker (for tests and the ctl handler).
    pub fn broker(&self) -> &credentials::Broker {
        &self.shared.broker
    }

    /// The container of a ready workspace. `NotFound` for unknown ids, `Unavailable`
    /// when it is still being created, failed, or its container is not running.
    pub async fn container(&self, id: &str) -> Result<ContainerRef, ErrorBody> {
        let docker = self.shared.client().await?;
        self.shared.discover().await?;
        let (container, info) = self
            .shared
            .state
            .with(id, |e| (e.container_id.clone(), e.info.clone()))?;
        let unavailable = |why: String| {
            ErrorBody::new(
                ErrorCode::Unavailable,
                format!("workspace {id} ({}) is {why}", info.name),
            )
        };
        match &info.status {
            WorkspaceStatus::Ready => {}
            WorkspaceStatus::Creating => return Err(unavailable("still being created".into())),
            WorkspaceStatus::Failed { reason, .. } => {
                return Err(unavailable(format!("failed: {reason}")));
            }
            WorkspaceStatus::Stopped => return Err(unavailable("stopped".into())),
        }
        let Some(container_id) = container else {
            return Err(unavailable("without a container".into()));
        };
        if !docker::is_running(docker, &container_id).await? {
            return Err(unavailable(format!(
                "stopped (its container is not running): bring it back with `sam workspace create --name {}` or Recreate",
                info.name
            )));
        }
        Ok(ContainerRef {
            container_id,
            root: info.root,
            user: info.user,
        })
    }

    /// Registers an existing, running container as a ready workspace (tests of the
    /// PTY/port/file services). Not labelled, so it is forgotten on restart; `Remove`
    /// forgets it and leaves the container to its owner.
    pub async fn adopt(
        &self,
        container_id: &str,
        root: &str,
        user: &str,
    ) -> Result<String, ErrorBody> {
        let docker = self.shared.client().await?;
        let inspect = docker
            .inspect_container(container_id, None)
            .await
            .map_err(|e| {
                docker_err(&self.shared.docker, e, &format!("container {container_id}"))
            })?;
        let full_id = inspect.id.unwrap_or_else(|| container_id.to_string());
        let name = inspect
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| full_id.chars().take(12).collect());
        let id = state::new_id();
        let info = WorkspaceInfo {
            id: id.clone(),
            name,
            repo: None,
            branch: None,
            status: WorkspaceStatus::Ready,
            created_at: crate::now_secs(),
            image: inspect.config.and_then(|c| c.image).unwrap_or_default(),
            root: root.to_string(),
            user: user.to_string(),
            forward_ports: Vec::new(),
        };
        let mut entry = Entry::new(info, None);
        entry.container_id = Some(full_id);
        entry.adopted = true;
        self.shared.state.insert(entry);
        Ok(id)
    }

    /// Answers one workspace request (role and scope were checked by the caller).
    pub async fn handle(
        &self,
        grant: &Grant,
        request: WorkspaceRequest,
    ) -> Result<WorkspaceResponse, ErrorBody> {
        match request {
            WorkspaceRequest::Create(spec) => self
                .create_by(spec, Some(grant.peer))
                .await
                .map(WorkspaceResponse::Info),
            WorkspaceRequest::List => self.list().await.map(WorkspaceResponse::List),
            WorkspaceRequest::Get { id } => self.get(&id).await.map(WorkspaceResponse::Info),
            // The ctl handler runs the graceful teardown first (crate::teardown).
            WorkspaceRequest::Remove { id } | WorkspaceRequest::Teardown { id, .. } => {
                self.remove(&id).await?;
                Ok(WorkspaceResponse::Removed { id })
            }
            WorkspaceRequest::Drain => Err(ErrorBody::new(
                ErrorCode::Internal,
                "a drain is answered by the ctl handler (crate::teardown)",
            )),
            WorkspaceRequest::Logs { id, from } => {
                self.logs(&id, from).await.map(WorkspaceResponse::Logs)
            }
            WorkspaceRequest::Recreate { id } => {
                self.recreate(&id).await.map(WorkspaceResponse::Info)
            }
            WorkspaceRequest::WaitCredential => Ok(WorkspaceResponse::Credential(
                self.shared.broker.wait(grant).await,
            )),
            WorkspaceRequest::AnswerCredential { request, answer } => {
                self.shared.broker.answer(grant, request, answer)?;
                Ok(WorkspaceResponse::CredentialAnswered)
            }
            // Ports and files: crate::inside (terminal/ports/files work).
            r @ (WorkspaceRequest::Ports { .. }
            | WorkspaceRequest::WatchPorts { .. }
            | WorkspaceRequest::Files { .. }) => crate::inside::handle(self, r).await,
        }
    }

    /// Starts creating a workspace and answers at once (status `Creating`). A name
    /// that exists already: a ready or creating workspace is returned as it is; a
    /// stopped or failed one is brought back.
    pub async fn create(&self, spec: CreateWorkspace) -> Result<WorkspaceInfo, ErrorBody> {
        self.create_by(spec, None).await
    }

    /// [`Self::create`] for a peer: the workspace's git credential requests go to
    /// `creator` alone (`None`: to the node's owner key).
    pub async fn create_by(
        &self,
        spec: CreateWorkspace,
        creator: Option<NodeId>,
    ) -> Result<WorkspaceInfo, ErrorBody> {
        self.shared.client().await?;
        self.shared.discover().await?;
        let name = match &spec.name {
            Some(n) => {
                state::check_name(n)?;
                n.clone()
            }
            None => state::default_name(spec.repo.as_deref()),
        };
        if let Some(repo) = &spec.repo {
            state::check_repo(repo)?;
        }
        if let Some(b) = &spec.branch {
            state::check_branch(b)?;
        }
        if let Some(id) = self.shared.state.find_name(&name) {
            let info = self.get(&id).await?;
            return match info.status {
                WorkspaceStatus::Ready | WorkspaceStatus::Creating => Ok(info),
                WorkspaceStatus::Stopped | WorkspaceStatus::Failed { .. } => {
                    self.recreate(&id).await
                }
            };
        }
        let id = state::new_id();
        let info = WorkspaceInfo {
            id: id.clone(),
            name: name.clone(),
            repo: spec.repo.clone(),
            branch: spec.branch.clone(),
            status: WorkspaceStatus::Creating,
            created_at: crate::now_secs(),
            image: self.shared.cfg.base_image.clone(),
            root: format!("{WORKSPACES_DIR}/{name}"),
            user: "sam".into(),
            forward_ports: Vec::new(),
        };
        let mut entry = Entry::new(info.clone(), Some(spec.clone()));
        entry.creator = creator;
        self.shared.state.insert(entry);
        self.shared.broker.set_creator(&id, creator);
        info!(workspace = %id, %name, repo = ?spec.repo.as_deref().map(state::scrub_url), creator = ?creator.map(|c| c.short()), "creating workspace");
        create::spawn(self.shared.clone(), id);
        Ok(info)
    }

    /// Every workspace with its live status.
    pub async fn list(&self) -> Result<Vec<WorkspaceInfo>, ErrorBody> {
        self.shared.client().await?;
        self.shared.discover().await?;
        let running = self.shared.running_containers().await?;
        let mut all = self.shared.state.infos(&running);
        all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(all)
    }

    /// One workspace with its live status.
    pub async fn get(&self, id: &str) -> Result<WorkspaceInfo, ErrorBody> {
        self.shared.client().await?;
        self.shared.discover().await?;
        let running = self.shared.running_containers().await?;
        self.shared.state.info(id, &running)
    }

    /// Deletes the workspace's container(s) and forgets it. A workspace still being
    /// created has its pipeline stopped first, so no step of it starts a container or
    /// tags an image after the removal.
    pub async fn remove(&self, id: &str) -> Result<(), ErrorBody> {
        let docker = self.shared.client().await?;
        self.shared.discover().await?;
        let (adopted, task, docker_calls) = self
            .shared
            .state
            .with(id, |e| (e.adopted, e.task.take(), e.docker_calls.clone()))?;
        let mut stopped = false;
        if let Some(task) = task
            && !task.is_finished()
        {
            task.abort();
            let _ = task.await;
            stopped = true;
            info!(workspace = %id, "creation stopped: the workspace is being removed");
        }
        if !adopted {
            // A container create/start the pipeline had sent ends first, so the sweep sees it.
            let _calls = docker_calls.lock().await;
            create::remove_all(&self.shared, docker, id).await?;
        }
        if stopped {
            // An image build or pull the pipeline had sent may still tag an image on
            // dockerd after the abort: sweep once more.
            let shared = self.shared.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                if let Ok(docker) = shared.client().await
                    && let Err(e) = create::remove_all(&shared, docker, &id).await
                {
                    warn!(workspace = %id, error = %e.message, "second sweep after removal failed");
                }
            });
        }
        self.shared.state.remove(id);
        self.shared.broker.stop_socket(id);
        let _ = std::fs::remove_dir_all(self.shared.cfg.run_dir.join(id));
        info!(workspace = %id, "workspace removed");
        Ok(())
    }

    /// Brings back a stopped or failed workspace.
    pub async fn recreate(&self, id: &str) -> Result<WorkspaceInfo, ErrorBody> {
        let docker = self.shared.client().await?;
        self.shared.discover().await?;
        let info = self.get(id).await?;
        match info.status {
            WorkspaceStatus::Creating | WorkspaceStatus::Ready => return Ok(info),
            WorkspaceStatus::Stopped | WorkspaceStatus::Failed { .. } => {}
        }
        let container = self.shared.state.with(id, |e| e.container_id.clone())?;
        // A stopped container that had finished setting up: start it again.
        if matches!(info.status, WorkspaceStatus::Stopped)
            && let Some(c) = &container
            && docker::exists(docker, c).await?
        {
            docker
                .start_container(c, None)
                .await
                .map_err(|e| docker_err(&self.shared.docker, e, "start the container"))?;
            if docker::has_ready_marker(docker, c).await {
                self.shared
                    .broker
                    .ensure_socket(&self.shared.cfg.run_dir, id);
                info!(workspace = %id, "workspace container restarted");
                return self.get(id).await;
            }
            warn!(workspace = %id, "restarted container was never ready: building it anew");
        }
        let adopted = self.shared.state.with(id, |e| e.adopted)?;
        if adopted {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                "an adopted workspace can only be restarted, not rebuilt",
            ));
        }
        create::remove_containers(&self.shared, docker, id).await?;
        self.shared.state.restart_creating(id)?;
        create::spawn(self.shared.clone(), id.to_string());
        self.get(id).await
    }

    /// Creation log from line `from`; waits a little for news while creating.
    pub async fn logs(&self, id: &str, from: u64) -> Result<WorkspaceLogs, ErrorBody> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(LOGS_WAIT_SECS);
        loop {
            let notified = self.shared.state.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let logs = self.shared.state.logs(id, from)?;
            let creating = matches!(logs.status, WorkspaceStatus::Creating);
            if !logs.lines.is_empty() || !creating {
                if !creating {
                    // Report Stopped as list/get would.
                    let info = self.get(id).await?;
                    return Ok(WorkspaceLogs {
                        status: info.status,
                        ..logs
                    });
                }
                return Ok(logs);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(logs);
            }
        }
    }
}

impl Shared {
    /// The Docker client, after a first successful contact with the daemon.
    pub(crate) async fn client(&self) -> Result<&bollard::Docker, ErrorBody> {
        self.docker.ready().await
    }

    /// Finds this node's containers by label once (after a restart), and brings
    /// back their workspaces and credential sockets.
    pub(crate) async fn discover(&self) -> Result<(), ErrorBody> {
        if self.state.discovered() {
            return Ok(());
        }
        let docker = self.client().await?;
        let found = create::discover(self, docker).await?;
        let mut revived = Vec::new();
        for entry in found {
            revived.push(entry.info.id.clone());
            self.broker.set_creator(&entry.info.id, entry.creator);
            self.state.insert_if_absent(entry);
        }
        for id in &revived {
            self.broker.ensure_socket(&self.cfg.run_dir, id);
        }
        self.state.set_discovered();
        if !revived.is_empty() {
            info!(count = revived.len(), "workspaces found again by label");
        }
        Ok(())
    }

    /// Ids of the running containers of this node's workspaces.
    pub(crate) async fn running_containers(
        &self,
    ) -> Result<std::collections::HashSet<String>, ErrorBody> {
        let docker = self.client().await?;
        let mut running = docker::running_with_label(self, docker).await?;
        for c in self.state.adopted_containers() {
            if docker::is_running(docker, &c).await? {
                running.insert(c);
            }
        }
        Ok(running)
    }
}
