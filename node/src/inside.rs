//! Reaching into a workspace's container for the terminal, ports and files: which
//! container a workspace id names, and running a short command in it.

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use sam_protocol::Scope;
use sam_protocol::auth::Grant;
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};

use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse};

use crate::server::Node;
use crate::workspace::Workspaces;

/// Answers the ports and files requests of `sam/ctl/1` (role and scope are
/// checked by the ctl handler before this).
pub async fn handle(
    workspaces: &Workspaces,
    request: WorkspaceRequest,
) -> Result<WorkspaceResponse, ErrorBody> {
    match request {
        WorkspaceRequest::Ports { id } => {
            let (docker, t) = target_in(workspaces, &id).await?;
            Ok(WorkspaceResponse::Ports(
                crate::ports::listeners(&docker, &t).await?,
            ))
        }
        WorkspaceRequest::WatchPorts {
            id,
            known,
            timeout_ms,
        } => {
            let (docker, t) = target_in(workspaces, &id).await?;
            let now = crate::ports::watch(&docker, &t, &known, timeout_ms).await?;
            Ok(WorkspaceResponse::Ports(now))
        }
        WorkspaceRequest::Files { id, op } => {
            let (docker, t) = target_in(workspaces, &id).await?;
            crate::files::handle(&docker, &t, op).await
        }
        _ => Err(ErrorBody::new(
            ErrorCode::Internal,
            "not a ports or files request",
        )),
    }
}

/// The container behind a workspace.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    /// The workspace root inside the container (absolute, no trailing `/`).
    pub root: String,
    /// The user people work as inside the container.
    pub user: String,
}

/// Looks up a workspace's container and the Docker handle.
pub async fn target(node: &Node, workspace: &str) -> Result<(Docker, Target), ErrorBody> {
    target_in(node.workspaces(), workspace).await
}

/// [`target`] from the workspace service itself.
pub async fn target_in(
    workspaces: &Workspaces,
    workspace: &str,
) -> Result<(Docker, Target), ErrorBody> {
    let c = workspaces.container(workspace).await?;
    let docker = workspaces.docker()?.clone();
    let root = c.root.trim_end_matches('/').to_string();
    Ok((
        docker,
        Target {
            container_id: c.container_id,
            root: if root.is_empty() { "/".into() } else { root },
            user: c.user,
        },
    ))
}

/// Refuses unless `grant` has `role` on `workspace`.
pub fn check_role(grant: &Grant, role: Role, workspace: &str, what: &str) -> Result<(), ErrorBody> {
    if grant.allows(role, Some(&Scope::Workspace(workspace.to_string()))) {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "{what} needs the {role} role on workspace {workspace}; you have {}",
                grant.role
            ),
        ))
    }
}

/// A Docker error as a message for the peer.
pub fn docker_err(what: &str, e: bollard::errors::Error) -> ErrorBody {
    let code = match &e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => ErrorCode::NotFound,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        } => ErrorCode::Conflict,
        _ => ErrorCode::Internal,
    };
    ErrorBody::new(code, format!("{what}: {e}"))
}

/// What a finished command printed.
#[derive(Debug, Default)]
pub struct Captured {
    pub exit: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Stdout went over the cap and was cut.
    pub truncated: bool,
}

/// Runs `cmd` in the container as `user` (root when `None`) in `dir`, keeping at
/// most `max_out` bytes of stdout (and 64 KiB of stderr).
pub async fn run(
    docker: &Docker,
    t: &Target,
    user: Option<&str>,
    cmd: Vec<String>,
    max_out: usize,
) -> Result<Captured, ErrorBody> {
    let exec = docker
        .create_exec(
            &t.container_id,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd),
                user: Some(user.unwrap_or("root").to_string()),
                working_dir: Some(t.root.clone()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| docker_err("cannot run a command in the workspace", e))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                output_capacity: Some(256 * 1024),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| docker_err("cannot start a command in the workspace", e))?;
    let mut out = Captured::default();
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(item) = output.next().await {
            match item.map_err(|e| docker_err("reading command output", e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    let room = max_out.saturating_sub(out.stdout.len());
                    if message.len() > room {
                        out.truncated = true;
                    }
                    out.stdout
                        .extend_from_slice(&message[..message.len().min(room)]);
                }
                LogOutput::StdErr { message } => {
                    let room = (64 * 1024usize).saturating_sub(out.stderr.len());
                    out.stderr
                        .extend_from_slice(&message[..message.len().min(room)]);
                }
                LogOutput::StdIn { .. } => {}
            }
        }
    }
    let info = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| docker_err("cannot read a command's exit status", e))?;
    out.exit = info.exit_code.unwrap_or(-1);
    Ok(out)
}

/// The container's main process id on the host (0 when not running).
pub async fn host_pid(docker: &Docker, t: &Target) -> Result<i64, ErrorBody> {
    let info = docker
        .inspect_container(&t.container_id, None)
        .await
        .map_err(|e| docker_err("cannot inspect the workspace container", e))?;
    Ok(info.state.and_then(|s| s.pid).unwrap_or(0))
}
