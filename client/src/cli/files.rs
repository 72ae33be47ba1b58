//! `sam files ls|cat|diff|get|put`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{
    FileKind, FilesOp, FilesResponse, WorkspaceRequest, WorkspaceResponse,
};
use serde_json::json;

use super::Output;
use crate::conn::NodeClient;
use crate::paths::ClientPaths;

/// Largest file `sam files cat` prints (use `get` for more).
pub const CAT_MAX: u64 = 8 << 20;

#[derive(Debug, Subcommand)]
pub enum FilesCmd {
    /// List a directory of a workspace.
    Ls {
        workspace: String,
        #[arg(default_value = ".")]
        path: String,
        /// Levels to recurse into (0: only this directory).
        #[arg(long, default_value_t = 0)]
        depth: u32,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print a file (up to 8 MiB; `get` for bigger ones).
    Cat {
        workspace: String,
        path: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// `git diff` of the working tree against HEAD (or `--base BRANCH`), or with
    /// `--against OTHER` a diff of two files.
    Diff {
        workspace: String,
        path: Option<String>,
        #[arg(long, conflicts_with = "against")]
        base: Option<String>,
        #[arg(long, requires = "path")]
        against: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Download a file or directory.
    Get {
        workspace: String,
        remote: String,
        /// Local destination (default: the current directory).
        #[arg(default_value = ".")]
        local: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Upload a file or directory.
    Put {
        workspace: String,
        local: String,
        /// Destination in the workspace (default: its root).
        #[arg(default_value = ".")]
        remote: String,
        #[arg(long)]
        node: Option<String>,
    },
}

/// One files request on ctl.
pub async fn request(client: &NodeClient, workspace: &str, op: FilesOp) -> Result<FilesResponse> {
    let req = WorkspaceRequest::Files {
        id: workspace.into(),
        op,
    };
    match client.request(Request::Workspace(req)).await? {
        Response::Workspace(WorkspaceResponse::Files(r)) => Ok(r),
        other => bail!("unexpected answer to a files request: {other:?}"),
    }
}

async fn ctl(
    paths: &ClientPaths,
    node: Option<&str>,
    workspace: &str,
    op: FilesOp,
) -> Result<FilesResponse> {
    let (ep, client, _) = super::open(paths, node).await?;
    let r = request(&client, workspace, op).await;
    client.close();
    ep.close().await;
    r
}

pub async fn run(paths: &ClientPaths, cmd: FilesCmd) -> Result<Output> {
    match cmd {
        FilesCmd::Ls {
            workspace,
            path,
            depth,
            limit,
            node,
        } => {
            let op = FilesOp::List { path, depth, limit };
            let FilesResponse::List { entries, truncated } =
                ctl(paths, node.as_deref(), &workspace, op).await?
            else {
                bail!("unexpected answer to ls");
            };
            let mut text: Vec<String> = entries
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        FileKind::Dir => "d",
                        FileKind::File => "-",
                        FileKind::Symlink => "l",
                        FileKind::Other => "?",
                    };
                    format!("{kind} {:>12} {}", e.size, e.path)
                })
                .collect();
            if truncated {
                text.push(format!(
                    "(more entries than the limit of {limit}; use --limit)"
                ));
            }
            let items: Vec<_> = entries
                .iter()
                .map(|e| json!({ "path": e.path, "kind": format!("{:?}", e.kind).to_lowercase(), "size": e.size, "modified": e.modified }))
                .collect();
            Ok(Output::new(
                json!({ "entries": items, "truncated": truncated }),
                text.join("\n"),
            ))
        }
        FilesCmd::Cat {
            workspace,
            path,
            node,
        } => {
            let op = FilesOp::Read {
                path: path.clone(),
                max_bytes: CAT_MAX,
            };
            let FilesResponse::Read {
                data,
                size,
                truncated,
            } = ctl(paths, node.as_deref(), &workspace, op).await?
            else {
                bail!("unexpected answer to cat");
            };
            if truncated {
                bail!(
                    "{path} is {size} bytes, over the {CAT_MAX}-byte limit of cat; use `sam files get`"
                );
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
            Ok(Output::new(serde_json::Value::Null, ""))
        }
        FilesCmd::Diff {
            workspace,
            path,
            base,
            against,
            node,
        } => {
            let op = match (against, path) {
                (Some(b), Some(a)) => FilesOp::Diff { a, b },
                (_, path) => FilesOp::GitDiff { base, path },
            };
            let FilesResponse::Diff { text, truncated } =
                ctl(paths, node.as_deref(), &workspace, op).await?
            else {
                bail!("unexpected answer to diff");
            };
            let mut text = text;
            if truncated {
                text.push_str("\n(diff cut at the size limit)");
            }
            Ok(Output::new(
                json!({ "diff": text, "truncated": truncated }),
                text.trim_end().to_string(),
            ))
        }
        FilesCmd::Get {
            workspace,
            remote,
            local,
            node,
        } => {
            let (ep, ticket, entry) = super::endpoint_for(paths, node.as_deref()).await?;
            // A lost link is dialled again and the download resumes where it was; what
            // was retried goes to stderr.
            let r = crate::resume::download(
                &ep,
                &ticket,
                &workspace,
                &remote,
                Path::new(&local),
                crate::resume::RESUME_WINDOW,
                |n| eprintln!("sam: {n}"),
            )
            .await
            .with_context(|| format!("node {}", entry.name));
            ep.close().await;
            let t = r?;
            let sum = t.sha256.as_deref().unwrap_or_default();
            Ok(Output::new(
                json!(t),
                format!(
                    "{} bytes in {} entries\n{}\nsha256 (tar, checked) {sum}",
                    t.size, t.count, t.dest
                ),
            ))
        }
        FilesCmd::Put {
            workspace,
            local,
            remote,
            node,
        } => {
            let (ep, ticket, entry) = super::endpoint_for(paths, node.as_deref()).await?;
            // A lost link is dialled again and the upload goes on from what the node
            // holds; what was retried goes to stderr.
            let r = crate::resume::upload(
                &ep,
                &ticket,
                &workspace,
                Path::new(&local),
                &remote,
                crate::resume::RESUME_WINDOW,
                |n| eprintln!("sam: {n}"),
            )
            .await
            .with_context(|| format!("node {}", entry.name));
            ep.close().await;
            let t = r?;
            Ok(Output::new(
                json!(t),
                format!("{} bytes in {} entries\n{}", t.size, t.count, t.dest),
            ))
        }
    }
}
