//! Bollard helpers: connecting, error mapping, exec with streamed output.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptionsBuilder;
use futures_util::StreamExt;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use tokio::sync::OnceCell;

use super::{Shared, label};

/// Timeout of one Docker API request (long streams such as builds are not bound by it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Time a first contact with dockerd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The address dockerd is reached at: `host` or `DOCKER_HOST` or the default socket.
pub fn docker_host(host: Option<&str>) -> String {
    host.map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// The error for a daemon that does not answer, naming the fix.
pub fn cannot_reach(host: &str, detail: &str) -> ErrorBody {
    let shown = host.strip_prefix("unix://").unwrap_or(host);
    ErrorBody::new(
        ErrorCode::Unavailable,
        format!(
            "cannot reach dockerd at {shown}: is dockerd running? (`dockerd &` or `systemctl start docker`) [{detail}]"
        ),
    )
}

/// A Docker client made without IO; the API version is negotiated on first use.
pub struct DockerConn {
    host: String,
    client: Result<Docker, ErrorBody>,
    negotiated: OnceCell<()>,
}

impl DockerConn {
    pub fn new(host: Option<String>) -> Self {
        let host = docker_host(host.as_deref());
        let client = connect(&host);
        Self {
            host,
            client,
            negotiated: OnceCell::new(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn raw(&self) -> Result<&Docker, ErrorBody> {
        self.client.as_ref().map_err(Clone::clone)
    }

    /// The client once dockerd has answered (the version is negotiated down to the
    /// daemon's; retried on the next call after a failure).
    pub async fn ready(&self) -> Result<&Docker, ErrorBody> {
        let docker = self.raw()?;
        self.negotiated
            .get_or_try_init(|| async {
                match tokio::time::timeout(CONNECT_TIMEOUT, docker.clone().negotiate_version())
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(cannot_reach(&self.host, &e.to_string())),
                    Err(_) => Err(cannot_reach(&self.host, "no answer within 10 s")),
                }
            })
            .await?;
        Ok(docker)
    }
}

fn connect(host: &str) -> Result<Docker, ErrorBody> {
    let version = bollard::API_DEFAULT_VERSION;
    let timeout = REQUEST_TIMEOUT.as_secs();
    let result = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, timeout, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, timeout, version)
    } else if host.starts_with('/') {
        Docker::connect_with_unix(host, timeout, version)
    } else {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("DOCKER_HOST {host:?} is not supported: use unix:///path or tcp://host:port"),
        ));
    };
    result.map_err(|e| cannot_reach(host, &e.to_string()))
}

/// Maps a bollard error: connection failures name the fix, 404 is `NotFound`.
pub fn docker_err(conn: &DockerConn, e: bollard::errors::Error, what: &str) -> ErrorBody {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let code = match status_code {
                404 => ErrorCode::NotFound,
                409 => ErrorCode::Conflict,
                400 => ErrorCode::BadRequest,
                _ => ErrorCode::Internal,
            };
            ErrorBody::new(code, format!("{what}: docker says: {message}"))
        }
        E::IOError { .. }
        | E::HyperResponseError { .. }
        | E::SocketNotFoundError(_)
        | E::RequestTimeoutError => cannot_reach(conn.host(), &format!("{what}: {e}")),
        other => ErrorBody::new(ErrorCode::Internal, format!("{what}: {other}")),
    }
}

pub async fn exists(docker: &Docker, container: &str) -> Result<bool, ErrorBody> {
    match docker.inspect_container(container, None).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("inspect container {container}: {e}"),
        )),
    }
}

pub async fn is_running(docker: &Docker, container: &str) -> Result<bool, ErrorBody> {
    match docker.inspect_container(container, None).await {
        Ok(i) => Ok(i.state.and_then(|s| s.running).unwrap_or(false)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("inspect container {container}: {e}"),
        )),
    }
}

/// Containers of this node (all states), with their labels.
pub async fn node_containers(
    shared: &Shared,
    docker: &Docker,
    all: bool,
) -> Result<Vec<bollard::models::ContainerSummary>, ErrorBody> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{}={}", label::NODE, shared.cfg.node)],
    );
    let opts = ListContainersOptionsBuilder::default()
        .all(all)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| docker_err(&shared.docker, e, "list containers"))
}

pub async fn running_with_label(
    shared: &Shared,
    docker: &Docker,
) -> Result<HashSet<String>, ErrorBody> {
    Ok(node_containers(shared, docker, false)
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect())
}

/// Output and exit code of a finished exec.
pub struct ExecOutput {
    pub code: i64,
    pub output: String,
}

/// Limit of the output kept by [`exec`] (the log gets all of it).
const MAX_KEPT_OUTPUT: usize = 1 << 20;

/// Runs `cmd` in the container and waits for it. Output lines go to `on_output`
/// as they come; the first MiB is also returned.
pub async fn exec(
    docker: &Docker,
    container: &str,
    user: &str,
    workdir: Option<&str>,
    env: &[String],
    cmd: Vec<String>,
    mut on_output: impl FnMut(&str),
) -> Result<ExecOutput, bollard::errors::Error> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                user: Some(user.to_string()),
                working_dir: workdir.map(str::to_string),
                env: Some(env.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut kept = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            let chunk = chunk?;
            let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
            on_output(&text);
            if kept.len() < MAX_KEPT_OUTPUT {
                kept.push_str(&text);
            }
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await?
        .exit_code
        .unwrap_or(-1);
    Ok(ExecOutput { code, output: kept })
}

/// Does the container have the ready marker?
pub async fn has_ready_marker(docker: &Docker, container: &str) -> bool {
    let cmd = vec!["test".into(), "-e".into(), super::READY_MARKER.into()];
    matches!(
        exec(docker, container, "root", None, &[], cmd, |_| {}).await,
        Ok(ExecOutput { code: 0, .. })
    )
}

/// Pid, memory and disk limits of a workspace container (node config `workspace_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Most processes and threads; `0`: no limit.
    pub pids: u64,
    /// Memory in MiB (swap included, so no swap beyond it); `None`: three quarters of the
    /// Docker host's memory; `Some(0)`: no limit.
    pub memory_mb: Option<u64>,
    /// Writable layer in GiB (`--storage-opt size`); `0`: no limit.
    pub disk_gb: u64,
}

impl ContainerLimits {
    pub const DEFAULT_PIDS: u64 = 4096;
    pub const DEFAULT_DISK_GB: u64 = 32;

    pub fn from_node_config(cfg: &crate::config::NodeConfig) -> Self {
        let d = Self::default();
        Self {
            pids: cfg.workspace_pids_limit.unwrap_or(d.pids),
            memory_mb: cfg.workspace_memory_mb.or(d.memory_mb),
            disk_gb: cfg.workspace_disk_gb.unwrap_or(d.disk_gb),
        }
    }

    /// Sets the limits on `host` (the disk limit only when `with_disk`). `host_memory` is the
    /// Docker host's memory in bytes, for the default memory limit.
    pub fn apply(
        &self,
        host: &mut bollard::models::HostConfig,
        host_memory: Option<i64>,
        with_disk: bool,
    ) {
        if self.pids > 0 {
            host.pids_limit = Some(i64::try_from(self.pids).unwrap_or(i64::MAX));
        }
        let memory = match self.memory_mb {
            Some(0) => None,
            Some(mb) => Some(i64::try_from(mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)),
            None => host_memory.filter(|m| *m > 0).map(|m| m / 4 * 3),
        };
        if let Some(bytes) = memory {
            host.memory = Some(bytes);
            // swap included: no swap beyond the limit
            host.memory_swap = Some(bytes);
        }
        if with_disk && self.disk_gb > 0 {
            host.storage_opt = Some(HashMap::from([(
                "size".to_string(),
                format!("{}G", self.disk_gb),
            )]));
        }
    }
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            pids: Self::DEFAULT_PIDS,
            memory_mb: None,
            disk_gb: Self::DEFAULT_DISK_GB,
        }
    }
}

/// Whether dockerd refused a create because its storage driver cannot limit a container's
/// disk (`--storage-opt size`): overlay2 outside xfs with `pquota`, vfs, …
pub fn storage_opt_unsupported(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => {
            let m = message.to_ascii_lowercase();
            m.contains("storage-opt") || m.contains("storage opt") || m.contains("storageopt")
        }
        _ => false,
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use bollard::models::HostConfig;

    #[test]
    fn limits_from_config_and_defaults() {
        let mut cfg = crate::config::NodeConfig::new(sam_protocol::NodeId([1; 32]));
        let d = ContainerLimits::from_node_config(&cfg);
        assert_eq!(d, ContainerLimits::default());
        let mut h = HostConfig::default();
        d.apply(&mut h, Some(8 << 30), true);
        assert_eq!(h.pids_limit, Some(4096));
        assert_eq!(h.memory, Some(6 << 30));
        assert_eq!(h.memory_swap, Some(6 << 30));
        assert_eq!(h.storage_opt.expect("disk")["size"], "32G");

        cfg.workspace_pids_limit = Some(0);
        cfg.workspace_memory_mb = Some(0);
        cfg.workspace_disk_gb = Some(0);
        let none = ContainerLimits::from_node_config(&cfg);
        let mut h = HostConfig::default();
        none.apply(&mut h, Some(8 << 30), true);
        assert_eq!((h.pids_limit, h.memory, h.storage_opt), (None, None, None));

        cfg.workspace_memory_mb = Some(512);
        let mut h = HostConfig::default();
        ContainerLimits::from_node_config(&cfg).apply(&mut h, None, false);
        assert_eq!(h.memory, Some(512 << 20));
        assert!(h.storage_opt.is_none());
    }
}
