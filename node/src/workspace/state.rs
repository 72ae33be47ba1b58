//! In-memory state of the workspaces: entries, creation logs, name checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::{
    CreateWorkspace, MAX_LOG_LINES, WorkspaceInfo, WorkspaceLogs, WorkspaceStatus,
};
use tokio::sync::Notify;

/// Lines of creation log kept per workspace (older ones are dropped).
pub const LOG_KEEP: usize = 5000;
/// Longest log line kept (longer ones are cut).
pub const MAX_LINE: usize = 2000;
/// Lines of log in a `Failed` status.
pub const TAIL_LINES: usize = 30;

/// One workspace the node knows of.
#[derive(Debug)]
pub struct Entry {
    /// `status` here is the phase (Creating, Ready, Failed); `Stopped` is worked out
    /// from the container when asked.
    pub info: WorkspaceInfo,
    pub container_id: Option<String>,
    /// What it was created from (to build it anew); `None` for adopted containers.
    pub spec: Option<CreateWorkspace>,
    pub adopted: bool,
    /// The peer that asked for it (its git credential requests go to that peer alone);
    /// kept in the `sam.creator` label.
    pub creator: Option<sam_protocol::NodeId>,
    /// The creation pipeline while it runs (aborted when the workspace is removed).
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// Held by a container create/start in flight, which an abort does not stop.
    pub docker_calls: std::sync::Arc<tokio::sync::Mutex<()>>,
    log: VecDeque<String>,
    /// Line number of `log[0]`.
    log_base: u64,
}

impl Entry {
    pub fn new(info: WorkspaceInfo, spec: Option<CreateWorkspace>) -> Self {
        Self {
            info,
            container_id: None,
            spec,
            adopted: false,
            creator: None,
            task: None,
            docker_calls: Default::default(),
            log: VecDeque::new(),
            log_base: 0,
        }
    }

    fn push_line(&mut self, line: &str) {
        let mut line = line.trim_end().to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        self.log.push_back(line);
        while self.log.len() > LOG_KEEP {
            self.log.pop_front();
            self.log_base += 1;
        }
    }

    pub fn tail(&self, n: usize) -> String {
        let skip = self.log.len().saturating_sub(n);
        self.log
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn live_info(&self, running: &HashSet<String>) -> WorkspaceInfo {
        let mut info = self.info.clone();
        if matches!(info.status, WorkspaceStatus::Ready)
            && !self
                .container_id
                .as_ref()
                .is_some_and(|c| running.contains(c))
        {
            info.status = WorkspaceStatus::Stopped;
        }
        info
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    discovered: bool,
}

/// The entries, behind one lock that is never held across an await.
#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// Woken on every log line and status change (long polls wait on it).
    pub notify: Notify,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn discovered(&self) -> bool {
        self.lock().discovered
    }

    pub fn set_discovered(&self) {
        self.lock().discovered = true;
    }

    pub fn insert(&self, entry: Entry) {
        self.lock().entries.insert(entry.info.id.clone(), entry);
        self.notify.notify_waiters();
    }

    pub fn insert_if_absent(&self, entry: Entry) {
        self.lock()
            .entries
            .entry(entry.info.id.clone())
            .or_insert(entry);
    }

    pub fn remove(&self, id: &str) {
        self.lock().entries.remove(id);
        self.notify.notify_waiters();
    }

    /// Runs `f` on the entry, or `NotFound`.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Result<R, ErrorBody> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(id).ok_or_else(|| not_found(id))?;
        Ok(f(entry))
    }

    pub fn find_name(&self, name: &str) -> Option<String> {
        self.lock()
            .entries
            .values()
            .find(|e| e.info.name == name)
            .map(|e| e.info.id.clone())
    }

    pub fn adopted_containers(&self) -> Vec<String> {
        self.lock()
            .entries
            .values()
            .filter(|e| e.adopted)
            .filter_map(|e| e.container_id.clone())
            .collect()
    }

    pub fn infos(&self, running: &HashSet<String>) -> Vec<WorkspaceInfo> {
        self.lock()
            .entries
            .values()
            .map(|e| e.live_info(running))
            .collect()
    }

    pub fn info(&self, id: &str, running: &HashSet<String>) -> Result<WorkspaceInfo, ErrorBody> {
        self.with(id, |e| e.live_info(running))
    }

    /// Appends log lines (split on `\n` and `\r`; empty ones dropped).
    pub fn log(&self, id: &str, text: &str) {
        {
            let mut inner = self.lock();
            let Some(e) = inner.entries.get_mut(id) else {
                return;
            };
            for line in text.split(['\n', '\r']) {
                if !line.trim().is_empty() {
                    e.push_line(line);
                }
            }
        }
        self.notify.notify_waiters();
    }

    pub fn set_status(&self, id: &str, status: WorkspaceStatus) {
        if let Some(e) = self.lock().entries.get_mut(id) {
            e.info.status = status;
        }
        self.notify.notify_waiters();
    }

    /// Marks a workspace failed, with the tail of its log.
    pub fn fail(&self, id: &str, reason: &str) {
        self.log(id, &format!("error: {reason}"));
        if let Some(e) = self.lock().entries.get_mut(id) {
            e.info.status = WorkspaceStatus::Failed {
                reason: reason.to_string(),
                log_tail: e.tail(TAIL_LINES),
            };
        }
        self.notify.notify_waiters();
    }

    /// Back to `Creating` for a rebuild.
    pub fn restart_creating(&self, id: &str) -> Result<(), ErrorBody> {
        self.with(id, |e| {
            e.info.status = WorkspaceStatus::Creating;
            e.container_id = None;
            e.push_line("--- building the workspace anew ---");
        })?;
        self.notify.notify_waiters();
        Ok(())
    }

    pub fn logs(&self, id: &str, from: u64) -> Result<WorkspaceLogs, ErrorBody> {
        self.with(id, |e| {
            let start = from.max(e.log_base);
            let skip = (start - e.log_base) as usize;
            let lines: Vec<String> = e
                .log
                .iter()
                .skip(skip)
                .take(MAX_LOG_LINES)
                .cloned()
                .collect();
            WorkspaceLogs {
                next: start + lines.len() as u64,
                lines,
                status: e.info.status.clone(),
            }
        })
    }
}

pub fn not_found(id: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotFound,
        format!("no workspace {id} on this node (`sam workspace ls` lists them)"),
    )
}

/// A new workspace id: 12 hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names become folder and container names: `[A-Za-z0-9._-]`, 1..=64, no leading `.`/`-`.
pub fn check_name(name: &str) -> Result<(), ErrorBody> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "bad workspace name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)"
            ),
        ))
    }
}

/// The repo's last path segment without `.git`, or `ws-<random>`.
pub fn default_name(repo: Option<&str>) -> String {
    let from_repo = repo.and_then(|r| {
        let last = r.trim_end_matches('/').rsplit(['/', ':']).next()?;
        let name: String = last
            .trim_end_matches(".git")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(48)
            .collect();
        let name = name.trim_start_matches(['.', '-']).to_string();
        (!name.is_empty()).then_some(name)
    });
    let base = from_repo.unwrap_or_else(|| "ws".into());
    format!("{base}-{}", &new_id()[..4])
}

/// Repo URLs go to `git clone` as one argument; refuse what git would take as an option.
pub fn check_repo(repo: &str) -> Result<(), ErrorBody> {
    if repo.is_empty() || repo.len() > 2048 || repo.starts_with('-') || repo.contains(['\n', '\0'])
    {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("bad repo URL {:?}", scrub_url(repo)),
        ));
    }
    if scrub_url(repo) != repo {
        // The URL would land in labels, logs, `sam workspace ls` and documents.
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "the repo URL carries credentials ({}): give the plain URL; git asks your client for credentials through SAM's credential broker",
                scrub_url(repo)
            ),
        ));
    }
    Ok(())
}

/// `url` without the credentials of its authority: `https://user:token@host/p` →
/// `https://host/p`; for `ssh://` only a password is dropped (`ssh://git@host/p` stays).
/// Text that is not a `scheme://` URL is returned as it is.
pub fn scrub_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return url.to_string();
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let ssh = scheme.to_ascii_lowercase().contains("ssh");
    match userinfo.split_once(':') {
        None if ssh => url.to_string(),
        Some((user, _)) if ssh => format!("{scheme}://{user}@{host}{tail}"),
        _ => format!("{scheme}://{host}{tail}"),
    }
}

pub fn check_branch(branch: &str) -> Result<(), ErrorBody> {
    if branch.is_empty()
        || branch.len() > 255
        || branch.starts_with('-')
        || branch.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("bad branch name {branch:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls_with_credentials_are_refused_and_scrubbed() {
        for (bad, clean) in [
            (
                "https://u:ghp_secret@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            (
                "https://ghp_secret@github.com/o/r",
                "https://github.com/o/r",
            ),
            ("http://a:b@h:8080", "http://h:8080"),
            ("ssh://git:pw@h/r", "ssh://git@h/r"),
        ] {
            assert_eq!(scrub_url(bad), clean);
            let e = check_repo(bad).expect_err(bad);
            assert!(
                !e.message.contains("secret") && !e.message.contains(":b@"),
                "{}",
                e.message
            );
        }
        for ok in [
            "https://github.com/o/r.git",
            "git@github.com:o/r.git",
            "ssh://git@h/r",
            "/srv/repo.git",
            "https://h/p?x=a@b",
        ] {
            assert_eq!(scrub_url(ok), ok);
            check_repo(ok).expect(ok);
        }
    }

    #[test]
    fn names() {
        assert!(check_name("my-repo_1.x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let n = default_name(Some("https://host/org/My-Repo.git"));
        assert!(n.starts_with("My-Repo-"), "{n}");
        assert!(check_name(&n).is_ok());
        assert!(default_name(None).starts_with("ws-"));
        assert!(check_name(&default_name(Some("file:///tmp/.../"))).is_ok());
    }

    #[test]
    fn repo_and_branch_checks() {
        assert!(check_repo("--upload-pack=x").is_err());
        assert!(check_repo("https://h/r.git").is_ok());
        assert!(check_branch("-b").is_err());
        assert!(check_branch("feature/x").is_ok());
    }

    #[test]
    fn log_ring_and_polling() {
        let state = State::default();
        let info = WorkspaceInfo {
            id: "a".into(),
            name: "a".into(),
            repo: None,
            branch: None,
            status: WorkspaceStatus::Creating,
            created_at: 0,
            image: String::new(),
            root: String::new(),
            user: String::new(),
            forward_ports: vec![],
        };
        state.insert(Entry::new(info, None));
        state.log("a", "one\rtwo\n\nthree\n");
        let l = state.logs("a", 0).expect("logs");
        assert_eq!(l.lines, ["one", "two", "three"]);
        assert_eq!(l.next, 3);
        for i in 0..LOG_KEEP {
            state.log("a", &format!("l{i}"));
        }
        let l = state.logs("a", 0).expect("logs");
        assert_eq!(l.lines.len(), MAX_LOG_LINES);
        assert_eq!(l.lines[0], "l0");
        state.fail("a", "boom");
        let l = state.logs("a", l.next).expect("logs");
        match l.status {
            WorkspaceStatus::Failed { reason, log_tail } => {
                assert_eq!(reason, "boom");
                assert!(log_tail.ends_with("error: boom"));
            }
            s => panic!("{s:?}"),
        }
    }
}
