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
