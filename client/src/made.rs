//! The workspaces this client created, and the repository each was created from: the only
//! git credential requests this client answers are those of a workspace it created, for
//! that repository's protocol, host and (when git names it) path.
//!
//! A node hands a workspace's credential requests to the peer that created it, but a node
//! is not what decides which of the user's secrets leave this machine: this record, kept
//! by the client itself, is. So a request for another host (`github.com` asked by a
//! workspace made from `gitlab.example`), for a workspace another peer created, or naming
//! a repository other than the workspace's is refused, and the refusal is said on stderr.
//!
//! Kept in memory for the process (`sam idea`, `sam move`, the GUI answer the requests of
//! the workspaces they make themselves) and, once [`set_home`] was called (loading the
//! client's identity does), in `$SAM_HOME/workspaces.json` (`0600`) for `sam workspace
//! creds` or `sam pr` in another process.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sam_protocol::workspace::CredentialRequest;
use serde::{Deserialize, Serialize};

/// Most workspaces remembered (the oldest are forgotten first).
const MAX_ENTRIES: usize = 4096;

/// One workspace this client created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Made {
    /// This client's NodeId.
    me: String,
    /// The node's NodeId.
    node: String,
    workspace: String,
    /// The repository URL this client asked for (`None`: a workspace without a repo).
    repo: Option<String>,
}

#[derive(Default)]
struct Book {
    entries: Vec<Made>,
    file: Option<PathBuf>,
}

fn book() -> &'static Mutex<Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Book> {
    book().lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the record in `home/workspaces.json` from now on (and reads it).
pub fn set_home(home: &Path) {
    lock().file = Some(crate::ClientPaths::new(home).made_workspaces());
}

fn load(file: &Path) -> Vec<Made> {
    let Ok(bytes) = std::fs::read(file) else {
        return Vec::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        eprintln!(
            "warning: {} is not valid ({e}); workspaces made before are not answered for",
            file.display()
        );
        Vec::new()
    })
}

fn save(file: &Path, entries: &[Made]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(entries).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// Records that `me` created `workspace` on `node` from `repo`.
pub fn record(me: &str, node: &str, workspace: &str, repo: Option<&str>) {
    let made = Made {
        me: me.to_string(),
        node: node.to_string(),
        workspace: workspace.to_string(),
        repo: repo.map(str::to_string),
    };
    let mut b = lock();
    let same = |m: &Made| m.me == made.me && m.node == made.node && m.workspace == made.workspace;
    b.entries.retain(|m| !same(m));
    b.entries.push(made.clone());
    let extra = b.entries.len().saturating_sub(MAX_ENTRIES);
    b.entries.drain(..extra);
    if let Some(file) = b.file.clone() {
        let mut all = load(&file);
        all.retain(|m| !same(m));
        all.push(made);
        let extra = all.len().saturating_sub(MAX_ENTRIES);
        all.drain(..extra);
        if let Err(e) = save(&file, &all) {
            eprintln!(
                "warning: cannot record the workspace in {}: {e}",
                file.display()
            );
        }
    }
}

/// The repo `me` created `workspace` on `node` from: `Some(None)` for a workspace without
/// a repo, `None` when `me` did not create it (as far as this client knows).
fn repo_of(me: &str, node: &str, workspace: &str) -> Option<Option<String>> {
    let b = lock();
    let hit = |m: &&Made| m.me == me && m.node == node && m.workspace == workspace;
    if let Some(m) = b.entries.iter().find(hit) {
        return Some(m.repo.clone());
    }
    let file = b.file.clone()?;
    drop(b);
    load(&file).iter().find(hit).map(|m| m.repo.clone())
}

/// May `me` answer `req` from `node`? `Err` says why not.
pub fn check(me: &str, node: &str, req: &CredentialRequest) -> Result<(), String> {
    let Some(repo) = repo_of(me, node, &req.workspace) else {
        return Err(format!(
            "workspace {} was not created by this client",
            req.workspace
        ));
    };
    let Some(repo) = repo else {
        return Err(format!(
            "workspace {} was created without a repository",
            req.workspace
        ));
    };
    matches_repo(&repo, req)
}

/// Does `req` ask for `repo`'s protocol, host and (when given) path?
pub fn matches_repo(repo: &str, req: &CredentialRequest) -> Result<(), String> {
    let url = reqwest::Url::parse(repo).map_err(|_| {
        format!("the workspace's repository {repo:?} is not an http(s) URL, so it needs no credential from here")
    })?;
    let scheme = url.scheme();
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "the workspace's repository is a {scheme} URL, so it needs no credential from here"
        ));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let asked = req.host.to_ascii_lowercase();
    // git names the port when the URL does: `h:8080`; a default port may be named or not.
    let same_host = match (url.port(), url.port_or_known_default()) {
        (Some(p), _) => asked == format!("{host}:{p}"),
        (None, Some(d)) => asked == host || asked == format!("{host}:{d}"),
        (None, None) => asked == host,
    };
    if !same_host {
        return Err(format!(
            "the workspace's repository is on {}, not {}",
            match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            },
            req.host
        ));
    }
    if !req.protocol.eq_ignore_ascii_case(scheme) {
        return Err(format!(
            "the workspace's repository is {scheme}, not {}",
            req.protocol
        ));
    }
    if let Some(path) = &req.path {
        let norm = |p: &str| {
            let p = p.trim_matches('/');
            p.strip_suffix(".git").unwrap_or(p).to_string()
        };
        if norm(path) != norm(url.path()) {
            return Err(format!(
                "the workspace's repository is {}, not {path}",
                url.path().trim_matches('/')
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(protocol: &str, host: &str, path: Option<&str>) -> CredentialRequest {
        CredentialRequest {
            id: 1,
            workspace: "w".into(),
            protocol: protocol.into(),
            host: host.into(),
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn only_the_repository_of_the_workspace_is_answered() {
        let gh = "https://github.com/me/app.git";
        assert!(matches_repo(gh, &req("https", "github.com", None)).is_ok());
        assert!(matches_repo(gh, &req("https", "GitHub.com", Some("me/app.git"))).is_ok());
        assert!(matches_repo(gh, &req("https", "github.com", Some("me/app"))).is_ok());
        assert!(matches_repo(gh, &req("https", "github.com:443", None)).is_ok());
        for bad in [
            req("https", "gitlab.com", None),
            req("http", "github.com", None),
            req("https", "github.com", Some("me/other.git")),
            req("https", "github.com.evil.example", None),
            req("https", "github.com:8443", None),
        ] {
            assert!(matches_repo(gh, &bad).is_err(), "{bad:?}");
        }
        let local = "http://10.0.0.2:8080/r.git";
        assert!(matches_repo(local, &req("http", "10.0.0.2:8080", Some("r.git"))).is_ok());
        assert!(matches_repo(local, &req("http", "10.0.0.2", None)).is_err());
        assert!(
            matches_repo(
                "git@github.com:me/app.git",
                &req("https", "github.com", None)
            )
            .is_err()
        );
    }

    #[test]
    fn a_workspace_this_client_did_not_create_is_refused() {
        record("me", "n1", "w", Some("https://h/r.git"));
        assert!(check("me", "n1", &req("https", "h", None)).is_ok());
        assert!(check("other", "n1", &req("https", "h", None)).is_err());
        assert!(check("me", "n2", &req("https", "h", None)).is_err());
        record("me", "n1", "w", None);
        assert!(check("me", "n1", &req("https", "h", None)).is_err());
    }
}
