//! From a conversation's work to a pull request: when a turn of a conversation with PR
//! settings ends, the node commits the workspace's changes as the user, pushes the branch
//! with a brokered credential (the client answers; nothing is stored on the node) and opens
//! or reuses the PR through the GitHub REST API. The outcome is a system message in the
//! conversation, so every peer sees the PR URL or what went wrong. Tokens live in memory only.
//!
//! - [`Prs`]: the handle the node holds: settings per conversation, the watcher of turn
//!   ends, `Request::Pr`.
//! - `git`: git on the host or in a container. `github`: the REST calls.

pub mod git;
pub mod github;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sam_crdt::{MessageView, Role as MsgRole, Status};
use sam_protocol::Grant;
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::pr::{PrOutcome, PrRequest, PrResponse, PrSettings};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::{Agents, LauncherMode};
use crate::docs::DocHost;
use crate::workspace::Workspaces;
use git::Place;

/// Most characters of transcript in a PR body.
const EXCERPT: usize = 3000;

struct Inner {
    node_id: String,
    docs: DocHost,
    workspaces: Workspaces,
    agents: Agents,
    settings: Mutex<HashMap<String, PrSettings>>,
    /// User messages whose turn end was handled already.
    seen: Mutex<HashMap<String, HashSet<String>>>,
    /// One PR step at a time per conversation.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    shutdown: CancellationToken,
}

/// The node's PR service. Cheap to clone.
#[derive(Clone)]
pub struct Prs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prs").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Has the turn of this user message ended?
fn ended(m: &MessageView) -> bool {
    m.role == MsgRole::User
        && matches!(
            m.status,
            Status::Done | Status::Failed | Status::Cancelled | Status::Interrupted
        )
}

impl Prs {
    pub fn start(node_id: String, docs: DocHost, workspaces: Workspaces, agents: Agents) -> Self {
        let me = Self {
            inner: Arc::new(Inner {
                node_id,
                docs,
                workspaces,
                agents,
                settings: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(me.clone().watch());
        me
    }

    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Drops what is kept for a deleted conversation (its PR settings, with their token).
    pub fn forget(&self, conv: &str) {
        lock(&self.inner.settings).remove(conv);
        lock(&self.inner.seen).remove(conv);
        lock(&self.inner.locks).remove(conv);
    }

    async fn watch(self) {
        let mut changes = self.inner.docs.subscribe_changes();
        loop {
            let id = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                id = changes.recv() => match id {
                    Ok(id) => id,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
            };
            let Some(settings) = lock(&self.inner.settings).get(&id).cloned() else {
                continue;
            };
            let Ok(msgs) = self.inner.docs.read(&id, |c| c.messages()).await else {
                continue;
            };
            // Wait until no prompt is queued or running: the last turn has ended.
            let users: Vec<&MessageView> =
                msgs.iter().filter(|m| m.role == MsgRole::User).collect();
            if users.is_empty() || !users.iter().all(|m| ended(m)) {
                continue;
            }
            let fresh: Vec<String> = {
                let mut seen = lock(&self.inner.seen);
                let seen = seen.entry(id.clone()).or_default();
                users
                    .iter()
                    .map(|m| m.id.to_string())
                    .filter(|m| seen.insert(m.clone()))
                    .collect()
            };
            if fresh.is_empty() {
                continue;
            }
            let failed = users
                .last()
                .map(|m| m.status != Status::Done)
                .unwrap_or(false);
            let me = self.clone();
            tokio::spawn(async move {
                me.step(&id, &settings, failed, false).await;
            });
        }
    }

    /// Answers `Request::Pr`.
    pub async fn handle(&self, grant: &Grant, req: PrRequest) -> Result<PrResponse, ErrorBody> {
        let conv = req.conversation().to_string();
        let ws = self.inner.docs.read(&conv, |c| c.workspace().id).await?;
        if !crate::docs::stream::may(grant, Role::Collaborator, &conv, &ws) {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("your capability does not allow PRs on conversation {conv}"),
            ));
        }
        match req {
            PrRequest::Enable { conv, settings } => {
                check_settings(&settings)?;
                // Turns that ended before now are not this idea's.
                let done: HashSet<String> = self
                    .inner
                    .docs
                    .read(&conv, |c| c.messages())
                    .await?
                    .iter()
                    .filter(|m| ended(m))
                    .map(|m| m.id.to_string())
                    .collect();
                lock(&self.inner.seen).insert(conv.clone(), done);
                lock(&self.inner.settings).insert(conv, settings);
                Ok(PrResponse::Enabled)
            }
            PrRequest::Run { conv, settings } => {
                let settings = match settings {
                    Some(s) => {
                        check_settings(&s)?;
                        lock(&self.inner.settings).insert(conv.clone(), s.clone());
                        s
                    }
                    None => lock(&self.inner.settings).get(&conv).cloned().ok_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::NotFound,
                            format!("no PR settings for conversation {conv} on this node (it restarted?): run `sam pr {conv}` from a client with the repo and a token"),
                        )
                    })?,
                };
                Ok(PrResponse::Outcome(
                    self.step(&conv, &settings, false, true).await,
                ))
            }
        }
    }

    /// One PR step, its outcome written into the conversation.
    /// `retry`: asked by a person (`sam pr`): a pushed branch without a PR gets one.
    pub async fn step(
        &self,
        conv: &str,
        s: &PrSettings,
        turn_failed: bool,
        retry: bool,
    ) -> PrOutcome {
        let l = lock(&self.inner.locks)
            .entry(conv.to_string())
            .or_default()
            .clone();
        let _guard = l.lock().await;
        let outcome = match self.place(conv).await {
            Ok(place) => self.run(conv, &place, s, turn_failed, retry).await,
            Err(message) => PrOutcome::Failed {
                stage: "workspace".into(),
                message,
                commit: None,
            },
        };
        let text = redact(&describe(&outcome, conv, s), &self.secrets(s));
        info!(conv, "{}", text.lines().next().unwrap_or(""));
        let author = self.inner.node_id.clone();
        let written = self
            .inner
            .docs
            .mutate(conv, move |c| {
                let id = c.start_message(&author, MsgRole::System)?;
                c.append_chunk(&id, &text)?;
                c.set_status(&id, Status::Done, None)
            })
            .await;
        if !matches!(written, Ok(Ok(()))) {
            warn!(conv, "cannot write the PR outcome into the conversation");
        }
        outcome
    }

    async fn place(&self, conv: &str) -> Result<Place, String> {
        let ws = self
            .inner
            .docs
            .read(conv, |c| c.workspace().id)
            .await
            .map_err(|e| e.message)?;
        let mut mode = None;
        self.inner
            .agents
            .configure(|c| mode = Some(c.launcher.clone()));
        match mode {
            Some(LauncherMode::Host { root }) => {
                if ws.is_empty() || ws.contains(['/', '\\']) || ws.starts_with('.') {
                    return Err(format!("bad workspace id {ws:?}"));
                }
                Ok(Place::Host(root.join(ws)))
            }
            Some(LauncherMode::Docker) | None => {
                let c = self
                    .inner
                    .workspaces
                    .container(&ws)
                    .await
                    .map_err(|e| e.message)?;
                let docker = self
                    .inner
                    .workspaces
                    .docker()
                    .map_err(|e| e.message)?
                    .clone();
                Ok(Place::Docker {
                    docker,
                    container: c.container_id,
                    user: c.user,
                    root: c.root,
                })
            }
            Some(LauncherMode::Fixed(_)) => Err(
                "this node's agents use a fixed launcher: PRs need a host or docker workspace"
                    .into(),
            ),
        }
    }

    async fn run(
        &self,
        conv: &str,
        place: &Place,
        s: &PrSettings,
        turn_failed: bool,
        retry: bool,
    ) -> PrOutcome {
        let secrets = self.secrets(s);
        let fail = |stage: &str, message: String, commit: Option<String>| PrOutcome::Failed {
            stage: stage.into(),
            message: redact(&message, &secrets),
            commit,
        };
        // 1. On the PR branch (keeping the working tree).
        let current = match place
            .git_ok(&["rev-parse", "--abbrev-ref", "HEAD"], &[])
            .await
        {
            Ok(b) => b.trim().to_string(),
            Err(e) => {
                return fail(
                    "commit",
                    format!("the workspace holds no git repository: {e}"),
                    None,
                );
            }
        };
        if current != s.branch
            && let Err(e) = place
                .git_ok(&["checkout", "-q", "-B", &s.branch], &[])
                .await
        {
            return fail("commit", e, None);
        }
        // 2. Commit what changed, as the user.
        let dirty = match place.git_ok(&["status", "--porcelain"], &[]).await {
            Ok(t) => !t.trim().is_empty(),
            Err(e) => return fail("commit", e, None),
        };
        if dirty {
            let transcript = self.excerpt(conv, 400).await;
            let message = redact(&commit_message(&s.idea, conv, &transcript), &secrets);
            let id = [
                ("GIT_AUTHOR_NAME".to_string(), s.identity.name.clone()),
                ("GIT_AUTHOR_EMAIL".to_string(), s.identity.email.clone()),
                ("GIT_COMMITTER_NAME".to_string(), s.identity.name.clone()),
                ("GIT_COMMITTER_EMAIL".to_string(), s.identity.email.clone()),
            ];
            if let Err(e) = place.git_ok(&["add", "-A"], &[]).await {
                return fail("commit", e, None);
            }
            if let Err(e) = place
                .git_ok(&["commit", "-q", "--no-verify", "-m", &message], &id)
                .await
            {
                return fail("commit", e, None);
            }
        }
        let commit = place
            .git_ok(&["rev-parse", "HEAD"], &[])
            .await
            .map(|t| t.trim().to_string())
            .ok();
        // Anything to push? Compare with the pushed branch, else with the base (local refs:
        // a push updates `origin/<branch>`).
        let pushed = format!("origin/{}", s.branch);
        let against = if place
            .git_ok(&["rev-parse", "-q", "--verify", &pushed], &[])
            .await
            .is_ok()
        {
            pushed
        } else {
            format!("origin/{}", s.base)
        };
        let unpushed = place
            .git_ok(&["rev-list", "--count", &format!("{against}..HEAD")], &[])
            .await
            .map(|n| n.trim() != "0")
            .unwrap_or(true);
        let pushed_ahead = retry
            && against == format!("origin/{}", s.branch)
            && place
                .git_ok(
                    &[
                        "rev-list",
                        "--count",
                        &format!("origin/{}..{against}", s.base),
                    ],
                    &[],
                )
                .await
                .is_ok_and(|n| n.trim() != "0");
        if !dirty && !unpushed && !pushed_ahead {
            return PrOutcome::NoChanges;
        }
        if turn_failed {
            return fail(
                "agent",
                "the agent's turn did not finish: its changes are committed in the workspace but not pushed".into(),
                commit,
            );
        }
        // 3. Push with a brokered credential (a retry of a pushed branch only needs the PR).
        let env = if unpushed || dirty {
            self.push_env(conv, place, s).await
        } else {
            Vec::new()
        };
        let refspec = format!("HEAD:refs/heads/{}", s.branch);
        let push = if unpushed || dirty {
            place.git(&["push", "-q", "origin", &refspec], &env).await
        } else {
            Ok(git::Out {
                code: 0,
                text: String::new(),
            })
        };
        match push {
            Ok(o) if o.ok() => {}
            Ok(o) => {
                let hint = if o.text.contains("rejected") || o.text.contains("protected") {
                    "the remote refused the branch (protected, or it moved: fetch and rebase in the workspace)"
                } else if o.text.contains("not found")
                    || o.text.contains("does not exist")
                    || o.text.contains("404")
                {
                    "the repository was not found, or the credential cannot see it"
                } else if o.text.contains("403")
                    || o.text.contains("denied")
                    || o.text.contains("Authentication failed")
                    || o.text.contains("could not read Username")
                {
                    "the git credential may not push to this repository"
                } else {
                    "git push failed"
                };
                return fail("push", format!("{hint}: {}", o.text.trim()), commit);
            }
            Err(e) => return fail("push", e, commit),
        }
        // 4. The PR.
        let Some((owner, repo)) = github::owner_repo(&s.repo_url) else {
            return fail(
                "pr",
                format!("{} does not name OWNER/REPO", s.repo_url),
                commit,
            );
        };
        let api = s
            .api
            .clone()
            .or_else(|| {
                std::env::var("SAM_GITHUB_API")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| github::DEFAULT_API.to_string());
        let gh = match github::GitHub::new(&api, &s.token) {
            Ok(g) => g,
            Err(e) => return fail("pr", e, commit),
        };
        if let Err(e) = gh.repo(&owner, &repo).await {
            return fail("pr", e, commit);
        }
        let body = redact(
            &pr_body(&s.idea, &self.excerpt(conv, EXCERPT).await),
            &secrets,
        );
        match gh
            .open(
                &owner,
                &repo,
                &s.branch,
                &s.base,
                &redact(&title(&s.idea), &secrets),
                &body,
            )
            .await
        {
            Ok((p, reused)) => PrOutcome::Opened {
                url: p.url,
                number: p.number,
                reused,
                branch: s.branch.clone(),
                commit: commit.unwrap_or_default(),
            },
            Err(e) => fail("pr", e, commit),
        }
    }

    /// On the host, git gets the brokered credential as a header in its environment
    /// (memory only); in a container, its credential helper asks the broker itself.
    async fn push_env(&self, conv: &str, place: &Place, s: &PrSettings) -> Vec<(String, String)> {
        let Place::Host(_) = place else {
            return Vec::new();
        };
        let Some((protocol, host, path)) = git::remote_parts(&s.repo_url) else {
            return Vec::new();
        };
        let ws = self
            .inner
            .docs
            .read(conv, |c| c.workspace().id)
            .await
            .unwrap_or_default();
        let Some(cred) = self
            .inner
            .workspaces
            .broker()
            .ask(&ws, protocol, host, Some(path))
            .await
        else {
            return vec![("GIT_CONFIG_NOSYSTEM".into(), "1".into())];
        };
        let basic = git::base64(format!("{}:{}", cred.username, cred.password).as_bytes());
        vec![
            ("GIT_CONFIG_COUNT".into(), "2".into()),
            ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
            (
                "GIT_CONFIG_VALUE_0".into(),
                format!("Authorization: Basic {basic}"),
            ),
            ("GIT_CONFIG_KEY_1".into(), "credential.helper".into()),
            ("GIT_CONFIG_VALUE_1".into(), String::new()),
        ]
    }

    /// The transcript's user and agent text, links removed, cut to `max` characters.
    /// What never goes into a commit, a PR or a document: the token and the agent keys.
    fn secrets(&self, s: &PrSettings) -> Vec<String> {
        let mut all = self.inner.agents.secrets();
        all.push(s.token.clone());
        all
    }

    async fn excerpt(&self, conv: &str, max: usize) -> String {
        let msgs = self
            .inner
            .docs
            .read(conv, |c| c.messages())
            .await
            .unwrap_or_default();
        let mut out = String::new();
        for m in msgs {
            let who = match m.role {
                MsgRole::User => "user",
                MsgRole::Agent => "agent",
                _ => continue,
            };
            out.push_str(&format!("{who}: {}\n", unlink(m.text.trim())));
        }
        if out.chars().count() > max {
            let tail: String = out
                .chars()
                .rev()
                .take(max)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            out = format!("…{tail}");
        }
        out
    }
}

/// The first line of the idea, at most 72 characters.
pub fn title(idea: &str) -> String {
    let line = idea
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("SAM idea")
        .trim();
    let mut t: String = line.chars().take(72).collect();
    if line.chars().count() > 72 {
        t.pop();
        t.push('…');
    }
    t
}

fn commit_message(idea: &str, conv: &str, transcript: &str) -> String {
    let mut m = format!(
        "{}\n\n{}\n\nSAM conversation {conv}\n",
        title(idea),
        idea.trim()
    );
    if !transcript.is_empty() {
        m.push('\n');
        m.push_str(transcript);
    }
    m
}

fn pr_body(idea: &str, transcript: &str) -> String {
    format!(
        "## Summary\n\n{}\n\nThis change was made by an agent in SAM from the idea above.\n\n## Transcript excerpt\n\n```text\n{}\n```\n",
        unlink(idea.trim()),
        transcript.replace("```", "'''")
    )
}

/// Removes URLs, so the excerpt holds no link.
pub fn unlink(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") || w.starts_with("www.") {
                "[link removed]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Settings a node keeps: checked, and without credentials in the repository URL (it is
/// named in PR notes written into the document; the push asks the credential broker).
fn check_settings(s: &PrSettings) -> Result<(), ErrorBody> {
    s.check()
        .map_err(|m| ErrorBody::new(ErrorCode::BadRequest, m))?;
    let clean = crate::workspace::scrub_url(&s.repo_url);
    if clean != s.repo_url {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "the repository URL carries credentials ({clean}): give the plain URL; the push asks your client through the credential broker"
            ),
        ));
    }
    Ok(())
}

/// `text` with each secret (the GitHub token, the agent keys peers sent) as `[redacted]`.
fn redact(text: &str, secrets: &[String]) -> String {
    crate::agent::writer::Redactor::new(secrets.iter().cloned()).redact(text)
}

/// The system message for an outcome.
pub fn describe(o: &PrOutcome, conv: &str, s: &PrSettings) -> String {
    match o {
        PrOutcome::Opened {
            url,
            number,
            reused: false,
            branch,
            ..
        } => {
            format!(
                "Pull request #{number} opened from {branch} into {}: {url}",
                s.base
            )
        }
        PrOutcome::Opened {
            url,
            number,
            reused: true,
            branch,
            ..
        } => {
            format!("Pushed {branch} to the existing pull request #{number}: {url}")
        }
        PrOutcome::NoChanges => {
            "No changes in the workspace: nothing committed, no pull request.".into()
        }
        PrOutcome::Failed {
            stage,
            message,
            commit,
        } => {
            let kept = commit
                .as_deref()
                .map(|c| {
                    format!(
                        " The work is kept in commit {} on branch {} in the workspace.",
                        c.get(..12).unwrap_or(c),
                        s.branch
                    )
                })
                .unwrap_or_default();
            format!(
                "Pull request step failed ({stage}): {message}.{kept} Retry with `sam pr {conv}`."
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_url_with_credentials_is_refused() {
        let mut s = PrSettings {
            repo_url: "https://github.com/o/r.git".into(),
            base: "main".into(),
            branch: "sam/x".into(),
            idea: "x".into(),
            identity: sam_protocol::pr::GitIdentity {
                name: "A".into(),
                email: "a@example.invalid".into(),
            },
            token: "ghp_token".into(),
            api: None,
        };
        check_settings(&s).expect("plain URL");
        s.repo_url = "https://x:ghp_secret@github.com/o/r.git".into();
        let e = check_settings(&s).expect_err("credentials");
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(!e.message.contains("ghp_secret"), "{}", e.message);
    }

    #[test]
    fn titles_and_links() {
        assert_eq!(title("\n  Add a README\nmore"), "Add a README");
        assert_eq!(title(&"x".repeat(100)).chars().count(), 72);
        assert_eq!(unlink("see https://a.b/c now"), "see [link removed] now");
        let secrets = ["ghp_1234".to_string(), "sk-ant-5678".to_string()];
        assert_eq!(
            redact("tok ghp_1234 x sk-ant-5678", &secrets),
            "tok [redacted] x [redacted]"
        );
    }
}
