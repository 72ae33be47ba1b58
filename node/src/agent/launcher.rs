//! Starting agent (and terminal) processes where a workspace's files are: on the host
//! ([`HostLauncher`], tests) or inside the workspace container ([`DockerLauncher`]).
//!
//! Every process runs in its own process group and stopping kills the whole group: some
//! adapters (Codex) leave children running when only the parent dies or stdin closes.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::AgentError;

/// Bytes of stderr kept for failure messages.
pub const STDERR_TAIL: usize = 4096;
/// Largest file served by `fs/read_text_file`.
pub const MAX_TEXT_FILE: u64 = 16 * 1024 * 1024;

/// The last bytes a process wrote on stderr (in memory only).
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.extend_from_slice(bytes);
        if t.len() > STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }

    /// The tail as text, with every secret replaced by `[redacted]`.
    pub fn text(&self, secrets: &[String]) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&t).trim().to_string();
        for v in secrets.iter().filter(|v| v.len() >= 4) {
            s = s.replace(v.as_str(), "[redacted]");
        }
        s
    }
}

/// A started process: piped stdio, its stderr tail, and how to kill its group.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: StderrTail,
    /// Kills the process group; also when dropped.
    pub killer: GroupKiller,
}

/// Kills a process group started by a [`Launcher`] (on [`GroupKiller::kill`] or drop).
#[derive(Debug)]
pub struct GroupKiller(Killer);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.child.id())
            .finish()
    }
}

#[derive(Debug)]
enum Killer {
    /// A host process group (its leader's pid).
    Group(Option<i32>),
    /// `docker exec`: kill the group inside the container, whose id is in `pidfile`.
    Docker {
        docker: String,
        container: String,
        pidfile: String,
        local: Option<i32>,
    },
}

impl Proc {
    fn new(mut child: Child, killer: Killer) -> Self {
        let stderr = StderrTail::default();
        if let Some(err) = child.stderr.take() {
            tokio::spawn(drain_stderr(err, stderr.clone()));
        }
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            stderr,
            killer: GroupKiller(killer),
        }
    }
}

impl GroupKiller {
    /// Kills the whole process group (idempotent; never waits).
    pub fn kill(&mut self) {
        match &mut self.0 {
            Killer::Group(pid) => {
                if let Some(p) = pid.take() {
                    kill_group(p);
                }
            }
            Killer::Docker {
                docker,
                container,
                pidfile,
                local,
            } => {
                if let Some(p) = local.take() {
                    let script =
                        format!("kill -KILL -- -\"$(cat {pidfile})\" 2>/dev/null; rm -f {pidfile}");
                    // Fire and forget: a stop must not wait for docker.
                    let _ = std::process::Command::new(docker.as_str())
                        .args(["exec", container.as_str(), "sh", "-c", &script])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn();
                    kill_group(p);
                }
            }
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

async fn drain_stderr(mut err: ChildStderr, tail: StderrTail) {
    let mut buf = vec![0u8; 8192];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

/// Where agents of one workspace run and how they reach its files.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// The repository root as the agent sees it (`cwd` of `session/new`).
    fn root(&self) -> PathBuf;
    /// Starts `argv` with `env` (on top of a minimal inherited environment) in `cwd`, in a
    /// new process group, stdio piped.
    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<Proc, AgentError>;
    /// Reads a text file (`None`: it does not exist).
    fn read_file(&self, path: PathBuf) -> BoxFuture<'static, Result<Option<String>, AgentError>>;
    /// Writes a text file, creating parent directories.
    fn write_file(
        &self,
        path: PathBuf,
        content: String,
    ) -> BoxFuture<'static, Result<(), AgentError>>;
    /// Short description for logs.
    fn describe(&self) -> String;
}

/// Resolves `path` (absolute, or relative to `root`) lexically and refuses anything
/// outside `root`.
pub fn confine(root: &Path, path: &Path) -> Result<PathBuf, AgentError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return Err(outside(path));
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if !out.starts_with(root) {
        return Err(outside(path));
    }
    Ok(out)
}

fn outside(path: &Path) -> AgentError {
    AgentError::Denied(format!("{} is outside the workspace", path.display()))
}

/// Agents as host processes with the workspace in a host directory (tests, `sam up`
/// without Docker).
#[derive(Debug, Clone)]
pub struct HostLauncher {
    root: PathBuf,
}

impl HostLauncher {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `path` confined to the root, also through symlinks of existing ancestors.
    fn real(&self, path: &Path) -> Result<PathBuf, AgentError> {
        let p = confine(&self.root, path)?;
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        let mut probe = p.as_path();
        loop {
            if let Ok(real) = probe.canonicalize() {
                if !real.starts_with(&root) {
                    return Err(outside(path));
                }
                break;
            }
            match probe.parent() {
                Some(parent) => probe = parent,
                None => break,
            }
        }
        Ok(p)
    }
}

/// Environment every agent inherits from the node (nothing secret).
const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR", "SHELL"];

impl Launcher for HostLauncher {
    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<Proc, AgentError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| AgentError::Config("empty command".into()))?;
        let cwd = self.real(cwd)?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .current_dir(&cwd)
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| AgentError::Spawn(format!("cannot start {prog}: {e}")))?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        Ok(Proc::new(child, Killer::Group(pid)))
    }

    fn read_file(&self, path: PathBuf) -> BoxFuture<'static, Result<Option<String>, AgentError>> {
        let p = self.real(&path);
        Box::pin(async move {
            let p = p?;
            match tokio::fs::metadata(&p).await {
                Ok(m) if m.len() > MAX_TEXT_FILE => {
                    return Err(AgentError::Denied(format!(
                        "{} is larger than {MAX_TEXT_FILE} bytes",
                        path.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(AgentError::Io(format!("{}: {e}", path.display()))),
            }
            match tokio::fs::read(&p).await {
                Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(AgentError::Io(format!("{}: {e}", path.display()))),
            }
        })
    }

    fn write_file(
        &self,
        path: PathBuf,
        content: String,
    ) -> BoxFuture<'static, Result<(), AgentError>> {
        let p = self.real(&path);
        Box::pin(async move {
            let p = p?;
            if let Some(parent) = p.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| AgentError::Io(format!("{}: {e}", parent.display())))?;
            }
            tokio::fs::write(&p, content)
                .await
                .map_err(|e| AgentError::Io(format!("{}: {e}", path.display())))
        })
    }

    fn describe(&self) -> String {
        format!("host:{}", self.root.display())
    }
}

/// Agents inside a workspace container through `docker exec -i`, as the workspace user,
/// in the repository root.
#[derive(Debug, Clone)]
pub struct DockerLauncher {
    /// The docker CLI.
    pub docker: String,
    pub container: String,
    pub user: String,
    pub root: PathBuf,
}

impl DockerLauncher {
    pub fn new(
        container: impl Into<String>,
        user: impl Into<String>,
        root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            docker: std::env::var("SAM_DOCKER_CLI").unwrap_or_else(|_| "docker".into()),
            container: container.into(),
            user: user.into(),
            root: root.into(),
        }
    }

    fn exec(&self, interactive: bool, cwd: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("exec");
        if interactive {
            cmd.arg("-i");
        }
        cmd.args(["-u", &self.user, "-w"]).arg(cwd);
        // `-e NAME` takes the value from the docker CLI's own environment, so secrets never
        // appear on a command line.
        for (k, _) in env {
            cmd.args(["-e", k]);
        }
        cmd.env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(
                ["DOCKER_HOST", "DOCKER_CONFIG"]
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg(&self.container);
        cmd
    }

    async fn run(
        &self,
        script: &str,
        args: &[&str],
        input: Option<String>,
    ) -> Result<std::process::Output, AgentError> {
        let mut cmd = self.exec(input.is_some(), &self.root, &[]);
        cmd.args(["sh", "-c", script, "sam"]).args(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| AgentError::Spawn(format!("cannot run {}: {e}", self.docker)))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| AgentError::Io(format!("write to the container: {e}")))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| AgentError::Io(format!("docker exec: {e}")))
    }
}

impl Launcher for DockerLauncher {
    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<Proc, AgentError> {
        if argv.is_empty() {
            return Err(AgentError::Config("empty command".into()));
        }
        let cwd = confine(&self.root, cwd)?;
        let pidfile = format!("/tmp/.sam-proc-{:016x}", rand::random::<u64>());
        let mut cmd = self.exec(true, &cwd, env);
        // A new session (so a new process group) inside the container; its id is written
        // down so stopping can kill the whole group there. `-w`: `docker exec` runs the
        // command as a group leader, so plain setsid would fork and exit at once.
        let script = format!("echo $$ > {pidfile}; exec \"$@\"");
        cmd.args(["setsid", "-w", "sh", "-c", &script, "sam-agent"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| AgentError::Spawn(format!("cannot run {}: {e}", self.docker)))?;
        let local = child.id().and_then(|p| i32::try_from(p).ok());
        Ok(Proc::new(
            child,
            Killer::Docker {
                docker: self.docker.clone(),
                container: self.container.clone(),
                pidfile,
                local,
            },
        ))
    }

    fn read_file(&self, path: PathBuf) -> BoxFuture<'static, Result<Option<String>, AgentError>> {
        let me = self.clone();
        Box::pin(async move {
            let p = confine(&me.root, &path)?;
            let p = p.to_string_lossy().into_owned();
            let script = format!(
                "[ -e \"$1\" ] || exit 44; [ $(stat -c %s \"$1\") -le {MAX_TEXT_FILE} ] || exit 45; exec cat -- \"$1\""
            );
            let out = me.run(&script, &[&p], None).await?;
            match out.status.code() {
                Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
                Some(44) => Ok(None),
                Some(45) => Err(AgentError::Denied(format!(
                    "{p} is larger than {MAX_TEXT_FILE} bytes"
                ))),
                _ => Err(AgentError::Io(format!(
                    "read {p}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))),
            }
        })
    }

    fn write_file(
        &self,
        path: PathBuf,
        content: String,
    ) -> BoxFuture<'static, Result<(), AgentError>> {
        let me = self.clone();
        Box::pin(async move {
            let p = confine(&me.root, &path)?;
            let p = p.to_string_lossy().into_owned();
            let out = me
                .run(
                    "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                    &[&p],
                    Some(content),
                )
                .await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(AgentError::Io(format!(
                    "write {p}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        })
    }

    fn describe(&self) -> String {
        format!(
            "docker:{}:{}",
            &self.container[..self.container.len().min(12)],
            self.root.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_refuses_escapes() {
        let root = Path::new("/w/repo");
        assert_eq!(
            confine(root, Path::new("a/b")).expect("ok"),
            Path::new("/w/repo/a/b")
        );
        assert_eq!(
            confine(root, Path::new("/w/repo/./x/../y")).expect("ok"),
            Path::new("/w/repo/y")
        );
        assert!(confine(root, Path::new("../x")).is_err());
        assert!(confine(root, Path::new("/etc/passwd")).is_err());
        assert!(confine(root, Path::new("/w/repo/../other")).is_err());
    }

    #[test]
    fn tail_redacts_and_caps() {
        let t = StderrTail::default();
        t.push(&vec![b'a'; STDERR_TAIL * 2]);
        t.push(b"key=sk-secret-1");
        let s = t.text(&["sk-secret-1".into()]);
        assert!(s.len() <= STDERR_TAIL);
        assert!(s.ends_with("key=[redacted]"));
    }
}
