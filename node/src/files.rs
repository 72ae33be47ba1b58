//! Files in a workspace: listing, reading and diffs on `sam/ctl/1`, whole files
//! and directories as tar streams on `sam/file/1` ([`transfer`]).
//!
//! No path may leave the workspace root. A peer's path is first joined and
//! normalised lexically ([`path::join`]), then resolved **inside the container**
//! (`realpath -m`, symlinks followed) and checked again, so `..`, absolute paths
//! and symlinks that point out are all refused. The resolved path is what the
//! operation then uses. (A symlink swapped in between the check and the use could
//! still win that race; people with write access already have a shell there.)

pub mod path;
mod spool;
pub mod transfer;

use bollard::Docker;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::{FileEntry, FileKind, FilesOp, FilesResponse, WorkspaceResponse};

use crate::inside::{Target, run};

/// Most entries one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Deepest recursion of one listing.
pub const MAX_DEPTH: u32 = 16;
/// Most bytes one read returns (a ctl frame holds 16 MiB).
pub const MAX_READ: u64 = 8 << 20;
/// Most bytes of diff text returned.
pub const MAX_DIFF: usize = 8 << 20;

/// Answers a [`FilesOp`] (role and scope already checked by the ctl handler).
pub async fn handle(
    docker: &Docker,
    t: &Target,
    op: FilesOp,
) -> Result<WorkspaceResponse, ErrorBody> {
    let (docker, t) = (docker, t);
    let r = match op {
        FilesOp::List { path, depth, limit } => list(docker, t, &path, depth, limit).await?,
        FilesOp::Read { path, max_bytes } => read(docker, t, &path, max_bytes).await?,
        FilesOp::GitDiff { base, path } => {
            git_diff(docker, t, base.as_deref(), path.as_deref()).await?
        }
        FilesOp::Diff { a, b } => diff(docker, t, &a, &b).await?,
        FilesOp::WorkPatch => work_patch(docker, t).await?,
    };
    Ok(WorkspaceResponse::Files(r))
}

/// Resolves `paths` in the container (symlinks followed) and checks that each
/// stays inside the root. Returns the resolved absolute paths in order.
pub async fn resolve(
    docker: &Docker,
    t: &Target,
    paths: &[&str],
) -> Result<Vec<String>, ErrorBody> {
    let mut cmd = vec![
        "realpath".to_string(),
        "-m".into(),
        "-z".into(),
        "--".into(),
        t.root.clone(),
    ];
    for p in paths {
        cmd.push(path::join(&t.root, p)?);
    }
    let out = run(docker, t, None, cmd, 64 * 1024).await?;
    if out.exit != 0 {
        return Err(ErrorBody::new(
            ErrorCode::Internal,
            format!(
                "cannot resolve paths in the workspace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let mut lines = out
        .stdout
        .split(|b| *b == 0)
        .map(|l| String::from_utf8_lossy(l).into_owned());
    let root = lines.next().unwrap_or_default();
    let mut resolved = Vec::with_capacity(paths.len());
    for p in paths {
        let r = lines.next().unwrap_or_default();
        if root.is_empty() || r.is_empty() || !path::is_inside(&root, &r) {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "path {p:?} resolves to {r:?}, outside the workspace root {root} (a symlink pointing out?); only paths under it are allowed"
                ),
            ));
        }
        resolved.push(r);
    }
    Ok(resolved)
}

async fn resolve_one(docker: &Docker, t: &Target, p: &str) -> Result<String, ErrorBody> {
    resolve(docker, t, &[p])
        .await?
        .pop()
        .ok_or_else(|| ErrorBody::new(ErrorCode::Internal, "path not resolved"))
}

pub(crate) fn failed(what: &str, out: &crate::inside::Captured) -> ErrorBody {
    let msg = String::from_utf8_lossy(&out.stderr);
    let msg = msg.trim();
    let code = if msg.contains("No such") {
        ErrorCode::NotFound
    } else {
        ErrorCode::BadRequest
    };
    ErrorBody::new(code, format!("{what}: {msg}"))
}

async fn list(
    docker: &Docker,
    t: &Target,
    p: &str,
    depth: u32,
    limit: u32,
) -> Result<FilesResponse, ErrorBody> {
    let dir = resolve_one(docker, t, p).await?;
    let limit = limit.clamp(1, MAX_LIST);
    let depth = depth.min(MAX_DEPTH);
    // One record per entry: type, size, mtime, path relative to `dir`; NUL-ended.
    let script = r#"d="$1"; [ -e "$d" ] || { echo "No such file or directory: $d" >&2; exit 2; }
if [ -d "$d" ] && [ ! -L "$d" ]; then find "$d" -mindepth 1 -maxdepth "$2" -printf '%y\t%s\t%T@\t%P\0' | head -z -n "$3"
else find "$d" -maxdepth 0 -printf '%y\t%s\t%T@\t%f\0'; fi"#;
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        dir.clone(),
        (depth + 1).to_string(),
        (limit + 1).to_string(),
    ];
    let out = run(docker, t, Some(&t.user), cmd, 64 << 20).await?;
    if out.exit != 0 {
        return Err(failed(&format!("cannot list {p:?}"), &out));
    }
    let base = path::relative(&t.root, &dir);
    let mut entries: Vec<FileEntry> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|r| !r.is_empty())
        .filter_map(|r| parse_entry(&String::from_utf8_lossy(r), base))
        .collect();
    let truncated = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    Ok(FilesResponse::List { entries, truncated })
}

/// Parses one `find -printf '%y\t%s\t%T@\t%P'` record.
fn parse_entry(rec: &str, base: &str) -> Option<FileEntry> {
    let mut f = rec.splitn(4, '\t');
    let kind = match f.next()? {
        "f" => FileKind::File,
        "d" => FileKind::Dir,
        "l" => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let size = f.next()?.parse().ok()?;
    let modified = f.next()?.split('.').next()?.parse().ok()?;
    let name = f.next()?;
    let path = if base == "." {
        name.to_string()
    } else if name.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{name}")
    };
    Some(FileEntry {
        path,
        kind,
        size,
        modified,
    })
}

async fn read(
    docker: &Docker,
    t: &Target,
    p: &str,
    max_bytes: u64,
) -> Result<FilesResponse, ErrorBody> {
    let file = resolve_one(docker, t, p).await?;
    let cap = max_bytes.clamp(1, MAX_READ);
    let script = r#"[ -f "$1" ] || { if [ -d "$1" ]; then echo "is a directory (use ls)" >&2; else echo "No such file: $1" >&2; fi; exit 2; }
stat -L -c '%s' -- "$1" && head -c "$2" -- "$1""#;
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        file,
        cap.to_string(),
    ];
    let out = run(docker, t, Some(&t.user), cmd, cap as usize + 32).await?;
    if out.exit != 0 {
        return Err(failed(&format!("cannot read {p:?}"), &out));
    }
    let nl =
        out.stdout.iter().position(|b| *b == b'\n').ok_or_else(|| {
            ErrorBody::new(ErrorCode::Internal, "unexpected output reading a file")
        })?;
    let size: u64 = String::from_utf8_lossy(&out.stdout[..nl])
        .trim()
        .parse()
        .map_err(|_| ErrorBody::new(ErrorCode::Internal, "unexpected output reading a file"))?;
    let data = out.stdout[nl + 1..].to_vec();
    Ok(FilesResponse::Read {
        truncated: size > data.len() as u64,
        data,
        size,
    })
}

/// `git diff --binary HEAD` over a copy of the index with every change added (new files
/// too), so the patch carries all uncommitted work and the real index is not touched.
async fn work_patch(docker: &Docker, t: &Target) -> Result<FilesResponse, ErrorBody> {
    let script = r#"set -e
g() { git -c safe.directory="$ROOT" "$@"; }
g rev-parse --verify -q HEAD >/dev/null || { echo "no commit yet" >&2; exit 3; }
idx=$(mktemp)
trap 'rm -f "$idx"' EXIT
cp "$(g rev-parse --git-path index)" "$idx" 2>/dev/null || true
export GIT_INDEX_FILE="$idx"
g add -A
g diff --cached --binary --no-color --no-ext-diff HEAD
"#;
    let cmd = vec![
        "env".into(),
        format!("ROOT={}", t.root),
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
    ];
    let out = run(docker, t, Some(&t.user), cmd, MAX_DIFF).await?;
    if out.exit != 0 {
        return Err(failed("making the patch of uncommitted work failed", &out));
    }
    Ok(FilesResponse::Diff {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        truncated: out.truncated,
    })
}

async fn git_diff(
    docker: &Docker,
    t: &Target,
    base: Option<&str>,
    p: Option<&str>,
) -> Result<FilesResponse, ErrorBody> {
    let mut cmd: Vec<String> = vec![
        "git".into(),
        "-c".into(),
        format!("safe.directory={}", t.root),
        "diff".into(),
        "--no-color".into(),
        "--no-ext-diff".into(),
    ];
    match base {
        Some(b) => {
            if b.is_empty()
                || b.starts_with('-')
                || b.len() > 255
                || b.contains(char::is_whitespace)
            {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("{b:?} is not a branch name"),
                ));
            }
            cmd.push("--merge-base".into());
            cmd.push(b.into());
        }
        None => cmd.push("HEAD".into()),
    }
    cmd.push("--".into());
    if let Some(p) = p {
        cmd.push(resolve_one(docker, t, p).await?);
    }
    let out = run(docker, t, Some(&t.user), cmd, MAX_DIFF).await?;
    if out.exit != 0 {
        return Err(failed("git diff failed", &out));
    }
    Ok(FilesResponse::Diff {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        truncated: out.truncated,
    })
}

async fn diff(docker: &Docker, t: &Target, a: &str, b: &str) -> Result<FilesResponse, ErrorBody> {
    let r = resolve(docker, t, &[a, b]).await?;
    let label = |p: &str, r: &str| format!("{p} ({})", path::relative(&t.root, r));
    let cmd = vec![
        "diff".into(),
        "-u".into(),
        "--label".into(),
        label(a, &r[0]),
        "--label".into(),
        label(b, &r[1]),
        "--".into(),
        r[0].clone(),
        r[1].clone(),
    ];
    let out = run(docker, t, Some(&t.user), cmd, MAX_DIFF).await?;
    // diff exits 0 (same), 1 (different) or 2 (trouble).
    if out.exit > 1 || out.exit < 0 {
        return Err(failed("diff failed", &out));
    }
    Ok(FilesResponse::Diff {
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
        truncated: out.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let e = parse_entry("f\t12\t1700000000.123\tsrc/a b.rs", "sub").expect("entry");
        assert_eq!(e.path, "sub/src/a b.rs");
        assert_eq!(e.kind, FileKind::File);
        assert_eq!(e.size, 12);
        assert_eq!(e.modified, 1_700_000_000);
        assert_eq!(parse_entry("d\t4096\t1.0\tx", ".").expect("dir").path, "x");
        assert!(parse_entry("garbage", ".").is_none());
        assert!(parse_entry("f\tx\t1\ty", ".").is_none());
    }
}
