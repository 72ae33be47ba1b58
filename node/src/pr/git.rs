//! Git in a workspace: on the host (agents' host launcher) or in the container (docker exec).
//! Commands get no secret on their command line; a push's credential comes from the broker.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;

/// Longest output kept from one git command.
const MAX_OUTPUT: usize = 64 * 1024;
/// Longest any git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a workspace's repository is.
#[derive(Debug, Clone)]
pub enum Place {
    Host(PathBuf),
    Docker {
        docker: Docker,
        container: String,
        user: String,
        root: String,
    },
}

/// Exit code and output (stdout then stderr) of one command.
#[derive(Debug)]
pub struct Out {
    pub code: i64,
    pub text: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl Place {
    /// Runs `git args…` with `env` in the repo folder.
    pub async fn git(&self, args: &[&str], env: &[(String, String)]) -> Result<Out, String> {
        let run = async {
            match self {
                Place::Host(dir) => {
                    let out = tokio::process::Command::new("git")
                        .args(args)
                        .current_dir(dir)
                        .env("GIT_TERMINAL_PROMPT", "0")
                        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .stdin(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .output()
                        .await
                        .map_err(|e| format!("cannot run git in {}: {e}", dir.display()))?;
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    text.truncate(MAX_OUTPUT.min(text.len()));
                    Ok(Out {
                        code: i64::from(out.status.code().unwrap_or(-1)),
                        text,
                    })
                }
                Place::Docker {
                    docker,
                    container,
                    user,
                    root,
                } => docker_git(docker, container, user, root, args, env).await,
            }
        };
        tokio::time::timeout(GIT_TIMEOUT, run)
            .await
            .map_err(|_| format!("git {} took longer than {GIT_TIMEOUT:?}", args.join(" ")))?
    }

    /// Like [`Self::git`], failing with the output when git does.
    pub async fn git_ok(&self, args: &[&str], env: &[(String, String)]) -> Result<String, String> {
        let out = self.git(args, env).await?;
        if out.ok() {
            Ok(out.text)
        } else {
            Err(format!(
                "git {} failed: {}",
                args.first().copied().unwrap_or(""),
                out.text.trim()
            ))
        }
    }
}

async fn docker_git(
    docker: &Docker,
    container: &str,
    user: &str,
    root: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Result<Out, String> {
    let mut cmd = vec!["git".to_string()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let mut envs = vec!["GIT_TERMINAL_PROMPT=0".to_string()];
    envs.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let err =
        |e: bollard::errors::Error| format!("cannot run git in the workspace's container: {e}");
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd),
                user: Some(user.to_string()),
                working_dir: Some(root.to_string()),
                env: Some(envs),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.map_err(err)?
    {
        while let Some(chunk) = output.next().await {
            let chunk = chunk.map_err(err)?;
            if text.len() < MAX_OUTPUT {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(err)?
        .exit_code
        .unwrap_or(-1);
    Ok(Out { code, text })
}

/// `(protocol, host, path)` of an http(s) remote URL, without any user info.
pub fn remote_parts(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next()?.to_string();
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_string(), host, path.to_string()))
}

/// Standard base64 (for a Basic auth header given to git through its environment).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_and_remotes() {
        assert_eq!(base64(b"u:p"), "dTpw");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abcd"), "YWJjZA==");
        assert_eq!(
            remote_parts("https://x@github.com/o/r.git"),
            Some(("https".into(), "github.com".into(), "o/r.git".into()))
        );
        assert_eq!(remote_parts("git@github.com:o/r"), None);
    }
}
