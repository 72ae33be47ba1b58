//! The git credential broker: no secret is ever written on the node.
//!
//! Path of one credential:
//! 1. `git` in a container runs the helper `/usr/local/bin/git-credential-sam get`
//!    (set as `credential.helper` system-wide in the container).
//! 2. The helper POSTs git's description (`protocol=…`, `host=…`, `path=…`) with
//!    `curl --unix-socket /run/sam/cred.sock`. That socket is served by the node: each
//!    workspace has a host folder `<run_dir>/<id>/` bind-mounted at `/run/sam`, so the
//!    node knows which workspace asks.
//! 3. The node queues a [`CredentialRequest`]. Clients that are willing to answer
//!    keep a long poll `WorkspaceRequest::WaitCredential` open on `sam/ctl/1` (the
//!    server→client path is a client-held long poll: no extra stream type, works
//!    through the same request/response frames). A request is handed only to the peer
//!    that created the workspace ([`Broker::set_creator`]; kept across restarts in a
//!    container label), and answered only by it; a workspace with no recorded creator
//!    (adopted, or made before creators were recorded) is served by the node's owner
//!    key alone. A collaborator's workspace so never reaches the owner's (or a
//!    teammate's) client, which may hold credentials for the same host.
//! 4. The client answers with `AnswerCredential` from `git credential fill` on its
//!    side (or `SAM_GIT_USERNAME`/`SAM_GIT_PASSWORD`), and only for the protocol and host
//!    of the repository it created that workspace with (it refuses anything else, and
//!    says so on stderr); the node hands the answer to the waiting helper, which prints
//!    it to git. Nothing is cached on the node.
//!
//! The socket is `0666` so the container's user can reach it, but the run folder that
//! holds the per-workspace folders is `0700`: no other user of the host can get to it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sam_protocol::NodeId;
use sam_protocol::auth::Grant;
use sam_protocol::capability::{Role, Scope};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::workspace::{CREDENTIAL_WAIT_SECS, CredentialRequest, GitCredential};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a `git` inside a container waits for a client to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(90);
/// A request handed to a client that has not answered within this time is handed out again
/// (the client may have gone away with it). Longer than a client's own `git credential fill`
/// timeout (30 s).
pub const CLAIM_LEASE: Duration = Duration::from_secs(35);
/// Largest credential description accepted from a container.
const MAX_DESCRIPTION: usize = 16 * 1024;
/// Most credential requests waiting at once (all workspaces).
const MAX_PENDING: usize = 64;

/// The helper installed in containers as `/usr/local/bin/git-credential-sam`.
pub const HELPER_SCRIPT: &str = r#"#!/bin/sh
# SAM's git credential helper: asks the node (which asks a connected client).
# Nothing is stored: `store` and `erase` are ignored.
if [ "$1" != get ]; then cat >/dev/null; exit 0; fi
exec curl -sf --max-time 100 --unix-socket /run/sam/cred.sock --data-binary @- http://sam/get
"#;

/// File name of the socket in a workspace's run folder.
pub const SOCKET: &str = "cred.sock";

struct Pending {
    request: CredentialRequest,
    reply: Option<oneshot::Sender<Option<GitCredential>>>,
    /// When it was last handed to a client.
    claimed: Option<tokio::time::Instant>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<u64, Pending>,
    queue: VecDeque<u64>,
    sockets: HashMap<String, CancellationToken>,
    /// The peer that created each workspace: the only one its requests go to.
    creators: HashMap<String, NodeId>,
}

impl Inner {
    /// May this grant be handed (and answer) a credential request of `workspace`? Only
    /// the peer that created the workspace, while it may still use the workspace; for a
    /// workspace without a recorded creator, only the node's owner key.
    fn may_answer(&self, grant: &Grant, workspace: &str) -> bool {
        match self.creators.get(workspace) {
            Some(creator) => {
                grant.peer == *creator
                    && grant.allows(
                        Role::Collaborator,
                        Some(&Scope::Workspace(workspace.to_string())),
                    )
            }
            None => is_node_owner(grant),
        }
    }
}

/// The owner's own key (not a holder of a delegated owner capability).
fn is_node_owner(grant: &Grant) -> bool {
    grant.role == Role::Owner && grant.scope.is_none() && grant.capability_ids.is_empty()
}

/// Queue of credential requests, and the per-workspace sockets. Cheap to clone.
#[derive(Clone, Default)]
pub struct Broker {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    next: Arc<AtomicU64>,
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records who created `workspace` (`None`: unknown, so only the owner is asked).
    pub fn set_creator(&self, workspace: &str, creator: Option<NodeId>) {
        let mut inner = self.lock();
        match creator {
            Some(c) => inner.creators.insert(workspace.to_string(), c),
            None => inner.creators.remove(workspace),
        };
    }

    /// The workspaces with a credential request waiting for an answer (status and tests).
    pub fn waiting(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .queue
            .iter()
            .filter_map(|id| inner.pending.get(id))
            .filter(|p| p.reply.is_some())
            .map(|p| p.request.workspace.clone())
            .collect()
    }

    /// Asks the clients for a credential; `None` when none answered in time or one refused.
    pub async fn ask(
        &self,
        workspace: &str,
        protocol: String,
        host: String,
        path: Option<String>,
    ) -> Option<GitCredential> {
        let (tx, rx) = oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut inner = self.lock();
            if inner.pending.len() >= MAX_PENDING {
                warn!(workspace, "too many credential requests waiting: refused");
                return None;
            }
            inner.pending.insert(
                id,
                Pending {
                    request: CredentialRequest {
                        id,
                        workspace: workspace.to_string(),
                        protocol,
                        host,
                        path,
                    },
                    reply: Some(tx),
                    claimed: None,
                },
            );
            inner.queue.push_back(id);
        }
        self.notify.notify_waiters();
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, rx).await;
        let mut inner = self.lock();
        inner.pending.remove(&id);
        inner.queue.retain(|q| *q != id);
        match answer {
            Ok(Ok(a)) => a,
            _ => {
                warn!(workspace, "no client answered a git credential request");
                None
            }
        }
    }

    /// The next request this client may answer, or `None` after the long-poll wait.
    pub async fn wait(&self, grant: &Grant) -> Option<CredentialRequest> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(CREDENTIAL_WAIT_SECS);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.claim(grant) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn claim(&self, grant: &Grant) -> Option<CredentialRequest> {
        let mut inner = self.lock();
        // Claimed requests stay queued until answered, so a claim whose client went away
        // is handed out again once its lease is over.
        let id = *inner.queue.iter().find(|id| {
            inner.pending.get(id).is_some_and(|p| {
                p.reply.is_some()
                    && p.claimed.is_none_or(|t| t.elapsed() >= CLAIM_LEASE)
                    && inner.may_answer(grant, &p.request.workspace)
            })
        })?;
        let p = inner.pending.get_mut(&id)?;
        p.claimed = Some(tokio::time::Instant::now());
        debug!(id, workspace = %p.request.workspace, peer = %grant.peer.short(), "credential request handed out");
        Some(p.request.clone())
    }

    /// A client's answer.
    pub fn answer(
        &self,
        grant: &Grant,
        id: u64,
        answer: Option<GitCredential>,
    ) -> Result<(), ErrorBody> {
        let mut inner = self.lock();
        let Some(workspace) = inner.pending.get(&id).map(|p| p.request.workspace.clone()) else {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("no credential request {id} is waiting (answered or timed out)"),
            ));
        };
        if !inner.may_answer(grant, &workspace) {
            warn!(id, workspace, peer = %grant.peer.short(), "credential answer refused: not the workspace's creator");
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "only the peer that created this workspace answers its credential requests",
            ));
        }
        let Some(p) = inner.pending.get_mut(&id) else {
            return Err(ErrorBody::new(ErrorCode::NotFound, "request gone"));
        };
        if let Some(tx) = p.reply.take() {
            let _ = tx.send(answer);
        }
        Ok(())
    }

    /// Serves `<run_dir>/<workspace>/cred.sock` unless it is served already.
    pub fn ensure_socket(&self, run_dir: &Path, workspace: &str) {
        if self.lock().sockets.contains_key(workspace) {
            return;
        }
        match self.bind(run_dir, workspace) {
            Ok(token) => {
                self.lock().sockets.insert(workspace.to_string(), token);
            }
            Err(e) => warn!(workspace, error = %e, "cannot serve the credential socket"),
        }
    }

    pub fn stop_socket(&self, workspace: &str) {
        let mut inner = self.lock();
        inner.creators.remove(workspace);
        if let Some(t) = inner.sockets.remove(workspace) {
            t.cancel();
        }
    }

    fn bind(&self, run_dir: &Path, workspace: &str) -> std::io::Result<CancellationToken> {
        use std::os::unix::fs::PermissionsExt;
        // Nobody else on the host may reach the sockets: the run folder is the owner's.
        crate::config::create_private_dir(run_dir)?;
        let dir = run_dir.join(workspace);
        std::fs::create_dir_all(&dir)?;
        // Traversable by the container's user through the bind mount only.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let path = dir.join(SOCKET);
        if path.as_os_str().len() > 107 {
            return Err(std::io::Error::other(format!(
                "the socket path {} is longer than a unix socket allows (107 bytes): set SAM_RUN_DIR to a shorter folder",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        // The container's user (uid 1000 or any) must be able to connect.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        let token = CancellationToken::new();
        let broker = self.clone();
        let ws = workspace.to_string();
        let stop = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    conn = listener.accept() => {
                        let Ok((stream, _)) = conn else { continue };
                        let broker = broker.clone();
                        let ws = ws.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let broker = broker.clone();
                                let ws = ws.clone();
                                async move { Ok::<_, Infallible>(broker.serve(&ws, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        });
        info!(workspace, "credential socket served");
        Ok(token)
    }

    async fn serve(
        &self,
        workspace: &str,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r
        };
        let body = match Limited::new(req.into_body(), MAX_DESCRIPTION)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, String::new()),
        };
        let desc = parse_description(&String::from_utf8_lossy(&body));
        let (Some(protocol), Some(host)) = (desc.get("protocol"), desc.get("host")) else {
            return reply(StatusCode::BAD_REQUEST, String::new());
        };
        let answer = self
            .ask(
                workspace,
                protocol.clone(),
                host.clone(),
                desc.get("path").cloned(),
            )
            .await;
        match answer {
            Some(c) if valid_value(&c.username) && valid_value(&c.password) => reply(
                StatusCode::OK,
                format!("username={}\npassword={}\n", c.username, c.password),
            ),
            _ => reply(StatusCode::NOT_FOUND, String::new()),
        }
    }
}

/// Values git would misread (newlines, NUL) are refused.
fn valid_value(v: &str) -> bool {
    !v.contains(['\n', '\0'])
}

/// Parses git's `key=value` lines.
pub fn parse_description(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_protocol::NodeId;

    #[test]
    fn description() {
        let d = parse_description("protocol=https\nhost=h:8080\npath=a/b.git\n\n");
        assert_eq!(d["protocol"], "https");
        assert_eq!(d["host"], "h:8080");
        assert_eq!(d["path"], "a/b.git");
        assert!(!valid_value("a\nb"));
    }

    #[tokio::test]
    async fn ask_wait_answer() {
        let broker = Broker::default();
        let owner = Grant::owner(NodeId([1; 32]));
        let b = broker.clone();
        let asker =
            tokio::spawn(async move { b.ask("ws1", "http".into(), "h".into(), None).await });
        let req = broker.wait(&owner).await.expect("a request");
        assert_eq!(req.workspace, "ws1");
        broker
            .answer(
                &owner,
                req.id,
                Some(GitCredential {
                    username: "u".into(),
                    password: "p".into(),
                }),
            )
            .expect("answer");
        let got = asker.await.expect("join").expect("credential");
        assert_eq!(got.username, "u");
        assert!(broker.answer(&owner, req.id, None).is_err());
    }

    /// A workspace's requests go to its creator alone; the owner key gets only those of
    /// workspaces without a creator; nobody else may answer.
    #[tokio::test]
    async fn requests_go_to_the_workspace_creator_only() {
        let broker = Broker::default();
        let owner = Grant::owner(NodeId([1; 32]));
        let collab = |k: u8| Grant {
            role: Role::Collaborator,
            capability_ids: vec![[k; 16]],
            ..Grant::owner(NodeId([k; 32]))
        };
        let (creator, teammate) = (collab(2), collab(3));
        broker.set_creator("theirs", Some(creator.peer));
        let b = broker.clone();
        let asker = tokio::spawn(async move {
            b.ask("theirs", "https".into(), "github.com".into(), None)
                .await
        });
        while broker.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(broker.claim(&owner).is_none(), "the owner was handed it");
        assert!(
            broker.claim(&teammate).is_none(),
            "a teammate was handed it"
        );
        let req = broker.claim(&creator).expect("the creator is asked");
        let cred = || {
            Some(GitCredential {
                username: "u".into(),
                password: "p".into(),
            })
        };
        for other in [&owner, &teammate] {
            let e = broker.answer(other, req.id, cred()).expect_err("answered");
            assert_eq!(e.code, ErrorCode::Forbidden);
        }
        broker.answer(&creator, req.id, cred()).expect("answer");
        assert!(asker.await.expect("join").is_some());
        // No creator recorded: the owner key only.
        let b = broker.clone();
        let asker =
            tokio::spawn(async move { b.ask("legacy", "https".into(), "h".into(), None).await });
        while broker.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(broker.claim(&creator).is_none());
        let req = broker.claim(&owner).expect("the owner is asked");
        broker.answer(&owner, req.id, None).expect("refuse");
        assert!(asker.await.expect("join").is_none());
    }

    /// A client that took a request and went away (its long poll dropped, its connection
    /// lost) does not eat it: after the lease the request goes to the next poll.
    #[tokio::test]
    async fn an_unanswered_claim_is_handed_out_again_after_its_lease() {
        let broker = Broker::default();
        let owner = Grant::owner(NodeId([1; 32]));
        let b = broker.clone();
        let asker =
            tokio::spawn(async move { b.ask("ws1", "http".into(), "h".into(), None).await });
        let first = broker.wait(&owner).await.expect("a request");
        assert!(broker.claim(&owner).is_none(), "handed out twice at once");
        for p in broker.lock().pending.values_mut() {
            p.claimed = p.claimed.and_then(|t| t.checked_sub(CLAIM_LEASE));
        }
        let again = broker.claim(&owner).expect("handed out again");
        assert_eq!(again.id, first.id);
        broker
            .answer(
                &owner,
                again.id,
                Some(GitCredential {
                    username: "u".into(),
                    password: "p".into(),
                }),
            )
            .expect("answer");
        assert_eq!(
            asker.await.expect("join").expect("credential").password,
            "p"
        );
        assert!(broker.claim(&owner).is_none());
    }
}
