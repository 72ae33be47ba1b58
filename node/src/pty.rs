//! `sam/pty/1`: shared terminals in workspaces.
//!
//! A terminal is a login shell on a PTY held inside the workspace container by
//! `sam-pty-hold` ([`crate::pty_hold`]): the holder owns the PTY, the shell and a bounded
//! ring of the output with absolute offsets, so the terminal, its processes and its
//! scrollback outlive a node restart (`kill -9` included). The node reaches it through a
//! non-tty `docker exec` relay, records it in its own `terminals.json` (which container,
//! which socket, the terminal's id and instance) and, when it starts again, adopts the
//! holders named there — never one a container merely claims to have. A container where
//! the holder cannot run (another CPU, no writable `/opt`) gets the old Docker tty exec, and
//! the terminal's first line says it will not survive a restart.
//! One actor per terminal owns the output, a 256 KiB scrollback and the attached clients;
//! any number of clients may attach.
//!
//! - Output fans out to every attached client through a bounded queue. A slow
//!   **collaborator** slows the shell down (like ssh) instead of losing bytes; one that
//!   takes no output for [`SLOW_CLIENT`] is detached. A **viewer** never slows anyone:
//!   once [`PTY_VIEWER_BUFFER`] bytes wait for it, it is detached at once. A detached
//!   client's stream is reset with [`PTY_RESET_TOO_SLOW`], which the client prints.
//! - Size: the **smallest** size of the attached collaborators wins (per dimension),
//!   so every writer's screen shows the whole terminal; it is recomputed on attach,
//!   resize and detach. Viewers' sizes never count: a viewer cannot resize it.
//! - Viewers attach read-only: their input is dropped and they are told once.
//! - A terminal outlives its clients (reattach with its id) and its node process, and
//!   ends when its shell exits; the node then finishes every attached stream. A node that
//!   stops resets them instead, so clients dial again and resume on the next node.
//! - **Resume**: the output is one byte sequence with absolute offsets; the scrollback
//!   knows the offset of its first byte ([`PtyOpened::offset`] of every attach). A client
//!   whose link was lost reattaches with [`PtyTarget::Resume`] and gets exactly the bytes
//!   from where it was, or learns how many fell out of the scrollback. The one byte
//!   sequence outside it is the read-only notice sent to a viewer that types anyway
//!   (`sam` clients never send a viewer's input, so their offsets stay exact).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bytes::Bytes;
use futures_util::StreamExt;
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::{
    PTY_RESET_TOO_SLOW, PTY_SCROLLBACK, PTY_VIEWER_BUFFER, PtyFrame, PtyOpen, PtyOpened, PtyTarget,
    check_size,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::inside::{Target, check_role, docker_err};
use crate::pty_hold::{HOLDER_PATH, PROBE, ToHolder, ToNode, VERSION};
use crate::server::{Node, Session};
use crate::streams::{reply, serve_connection};
use sam_protocol::wire::{read_bounded, write_frame};

mod actor;
mod docker;
mod holder;

use actor::*;
use docker::*;
use holder::*;

/// A collaborator that takes no output for this long is detached.
pub const SLOW_CLIENT: Duration = Duration::from_secs(10);
/// Output chunks queued per client (viewers are also bounded in bytes).
const CLIENT_QUEUE: usize = 256;
/// Most terminals per workspace.
pub const MAX_TERMINALS: usize = 32;
/// Largest `terminals.json` read back.
const MAX_STATE_FILE: u64 = 1 << 20;
/// How long a holder may take to answer an attach.
const HOLDER_HELLO: Duration = Duration::from_secs(20);

const READ_ONLY_NOTICE: &[u8] = b"\r\n[sam: read-only: viewers cannot type in this terminal]\r\n";

/// Serves `sam/pty/1`.
#[derive(Debug, Clone)]
pub struct PtyHandler {
    node: Node,
    terms: Arc<Terminals>,
}

impl PtyHandler {
    /// The handler, and the adoption of the terminals the node's `terminals.json` names
    /// (they were started by an earlier run of this node): until it is done, every attach
    /// waits for it.
    pub fn new(node: Node) -> Self {
        let terms = Arc::new(Terminals::new(
            node.home().join("terminals.json"),
            node.stopping(),
        ));
        // Taken here, before the router accepts anything: the first attach waits for it.
        if let Ok(guard) = terms.map.clone().try_lock_owned() {
            tokio::spawn(adopt_all(node.clone(), terms.clone(), guard));
        }
        Self { node, terms }
    }
}

impl ProtocolHandler for PtyHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let terms = self.terms.clone();
        serve_connection(&self.node, conn, move |node, session, send, recv| {
            let terms = terms.clone();
            async move { serve_stream(node, terms, session, send, recv).await }
        })
        .await;
        Ok(())
    }
}

/// A terminal as the node records it in `terminals.json`: every field is the node's own
/// choice or lookup, never a peer's or a container's claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Saved {
    key: u64,
    id: String,
    instance: u64,
    workspace: String,
    /// The container the holder was started in.
    container: String,
    /// The user it runs as.
    user: String,
    /// Its socket inside the container (a random name the node chose).
    sock: String,
    /// The holder binary inside the container.
    holder: String,
}

/// The live terminals of this node.
#[derive(Debug)]
pub struct Terminals {
    map: Arc<Mutex<BTreeMap<u64, TermHandle>>>,
    next: AtomicU64,
    next_client: AtomicU64,
    /// What `terminals.json` holds.
    saved: std::sync::Mutex<BTreeMap<u64, Saved>>,
    state_file: PathBuf,
    stopping: CancellationToken,
    /// Containers the holder was checked in: its path there, or why it cannot run.
    installed: Mutex<HashMap<String, Result<String, String>>>,
}

#[derive(Debug, Clone)]
struct TermHandle {
    id: String,
    /// Random, so a reattach never takes another terminal of the same id for this one.
    instance: u64,
    workspace: String,
    inbox: mpsc::Sender<Cmd>,
    /// Input straight to the PTY's writer (not through the actor).
    input: mpsc::Sender<ToPty>,
}

enum Cmd {
    Attach {
        client: u64,
        cols: u16,
        rows: u16,
        read_only: bool,
        /// Resume from this absolute offset; `None`: the scrollback.
        from: Option<u64>,
        reply: oneshot::Sender<Result<Attached, ErrorBody>>,
    },
    Resize {
        client: u64,
        cols: u16,
        rows: u16,
    },
    Detach {
        client: u64,
    },
    /// Tell one client its input is dropped.
    ReadOnlyNotice {
        client: u64,
    },
}

struct Attached {
    scrollback: Vec<u8>,
    /// Absolute offset of `scrollback`'s first byte.
    offset: u64,
    output: mpsc::Receiver<Bytes>,
    count: u32,
    /// Bytes queued for this client and not yet written to its stream.
    queued: Arc<AtomicUsize>,
    /// Cancelled when the terminal detaches this client for being too slow.
    kicked: CancellationToken,
    /// Set when the shell ended (the output's end is the terminal's); unset when the
    /// node stops while the shell goes on.
    ended: Arc<AtomicBool>,
}

impl Terminals {
    fn new(state_file: PathBuf, stopping: CancellationToken) -> Self {
        Self {
            map: Arc::default(),
            next: AtomicU64::new(0),
            next_client: AtomicU64::new(0),
            saved: Default::default(),
            state_file,
            stopping,
            installed: Mutex::default(),
        }
    }

    /// Writes `terminals.json` (0600 in the node's home).
    fn save(&self) {
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<&Saved> = saved.values().collect();
        let result = serde_json::to_vec_pretty(&list)
            .map_err(anyhow::Error::from)
            .and_then(|b| crate::config::write_private(&self.state_file, &b));
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), "cannot save the terminal list: terminals started now will not be adopted after a restart");
        }
    }

    fn remember(&self, s: Saved) {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.key, s);
        self.save();
    }

    fn forget(&self, key: u64) {
        let had = self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .is_some();
        if had {
            self.save();
        }
    }

    /// The entries of `terminals.json` (bounded; a damaged file is said and ignored).
    fn load(&self) -> Vec<Saved> {
        let f = &self.state_file;
        match std::fs::metadata(f) {
            Err(_) => return Vec::new(),
            Ok(m) if m.len() > MAX_STATE_FILE => {
                warn!(file = %f.display(), "the terminal list is too large; ignored");
                return Vec::new();
            }
            Ok(_) => {}
        }
        match std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Vec<Saved>>(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                warn!(file = %f.display(), error = %e, "cannot read the terminal list; terminals of the last run are not adopted");
                Vec::new()
            }
        }
    }

    async fn get_or_start(
        self: &Arc<Self>,
        docker: &Docker,
        t: &Target,
        open: &PtyOpen,
        can_start: bool,
    ) -> Result<TermHandle, ErrorBody> {
        let mut map = self.map.lock().await;
        map.retain(|_, h| !h.inbox.is_closed());
        let found = match &open.target {
            PtyTarget::Id(id) => Some(
                map.values()
                    .find(|h| &h.id == id && h.workspace == open.workspace)
                    .cloned()
                    .ok_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::NotFound,
                            format!("no terminal {id} in workspace {}", open.workspace),
                        )
                    })?,
            ),
            PtyTarget::Resume { id, instance, .. } => Some(
                map.values()
                    .find(|h| &h.id == id && h.workspace == open.workspace && h.instance == *instance)
                    .cloned()
                    .ok_or_else(|| {
                        ErrorBody::new(
                            ErrorCode::NotFound,
                            format!(
                                "terminal {id} in workspace {} is gone (its shell exited, or it could not outlive a node restart)",
                                open.workspace
                            ),
                        )
                    })?,
            ),
            PtyTarget::Default => map
                .values()
                .find(|h| h.workspace == open.workspace)
                .cloned(),
            PtyTarget::New => None,
        };
        if let Some(h) = found {
            return Ok(h);
        }
        if !can_start {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "no terminal to watch in workspace {}; starting one needs the collaborator role",
                    open.workspace
                ),
            ));
        }
        if map
            .values()
            .filter(|h| h.workspace == open.workspace)
            .count()
            >= MAX_TERMINALS
        {
            return Err(ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "workspace {} already has {MAX_TERMINALS} terminals; exit some first",
                    open.workspace
                ),
            ));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("t{n}");
        let h = start(self.clone(), n, id, docker, t, open).await?;
        map.insert(n, h.clone());
        Ok(h)
    }

    /// Ids of the live terminals of a workspace, oldest first.
    pub async fn list(&self, workspace: &str) -> Vec<String> {
        let map = self.map.lock().await;
        map.values()
            .filter(|h| h.workspace == workspace && !h.inbox.is_closed())
            .map(|h| h.id.clone())
            .collect()
    }

    /// The holder's path in `t`'s container once it runs there (copied in when missing),
    /// or why it cannot.
    async fn install(&self, docker: &Docker, t: &Target) -> Result<String, String> {
        let mut installed = self.installed.lock().await;
        if let Some(r) = installed.get(&t.container_id) {
            return r.clone();
        }
        let r = install_holder(docker, t).await;
        // Only success is kept: a failure (Docker busy, say) is tried again next time.
        if r.is_ok() {
            if installed.len() >= 4096 {
                installed.clear();
            }
            installed.insert(t.container_id.clone(), r.clone());
        }
        r
    }
}

/// Adopts the terminals `terminals.json` names, holding the map (so attaches wait).
async fn adopt_all(
    node: Node,
    terms: Arc<Terminals>,
    mut map: OwnedMutexGuard<BTreeMap<u64, TermHandle>>,
) {
    let list = terms.load();
    if list.is_empty() {
        return;
    }
    let mut kept = BTreeMap::new();
    let mut candidates: Vec<(Saved, HolderAt)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in list.into_iter().take(4096) {
        terms.next.fetch_max(s.key, Ordering::Relaxed);
        if !seen.insert(s.key) || map.contains_key(&s.key) {
            continue;
        }
        // The workspace's container as the node knows it now: a terminal recorded in
        // another container (the workspace was recreated) is not this one.
        let (docker, t) = match crate::inside::target(&node, &s.workspace).await {
            Ok(x) => x,
            Err(e) if e.code == ErrorCode::NotFound => {
                info!(terminal = %s.id, workspace = %s.workspace, "terminal of a workspace that is gone; forgotten");
                continue;
            }
            Err(e) => {
                // Not reachable now (Docker down, the container stopped): kept for the
                // next start.
                warn!(terminal = %s.id, workspace = %s.workspace, error = %e.message, "cannot adopt a terminal now");
                kept.insert(s.key, s);
                continue;
            }
        };
        if t.container_id != s.container {
            info!(terminal = %s.id, workspace = %s.workspace, "the workspace has another container now; terminal forgotten");
            continue;
        }
        let at = HolderAt {
            docker: docker.clone(),
            container: s.container.clone(),
            user: s.user.clone(),
            sock: s.sock.clone(),
            holder: s.holder.clone(),
        };
        candidates.push((s, at));
    }
    // All at once: a holder that never answers (a workspace can make its own do that)
    // holds the others up for one hello timeout at most, not one each.
    let attached = futures_util::future::join_all(
        candidates
            .iter()
            .map(|(_, at)| async move { attach_holder(at, 0, false).await }),
    )
    .await;
    for ((s, at), r) in candidates.into_iter().zip(attached) {
        match r {
            Ok(link) => {
                let h = spawn_actor(
                    terms.clone(),
                    s.key,
                    s.id.clone(),
                    s.instance,
                    s.workspace.clone(),
                    Backend::Holder(at),
                    link,
                );
                info!(terminal = %s.id, workspace = %s.workspace, "terminal adopted after a restart");
                map.insert(s.key, h);
                kept.insert(s.key, s);
            }
            Err(e) => {
                info!(terminal = %s.id, workspace = %s.workspace, error = %e, "terminal's holder is gone; forgotten");
            }
        }
    }
    *terms.saved.lock().unwrap_or_else(|p| p.into_inner()) = kept;
    terms.save();
    drop(map);
}

async fn serve_stream(
    node: Node,
    terms: Arc<Terminals>,
    session: Arc<Session>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let open = match read_bounded::<PtyOpen>(&mut recv).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("bad terminal header ({e}); is one side a newer version?");
            reply(&mut send, Err(ErrorBody::new(ErrorCode::BadRequest, msg))).await;
            return;
        }
    };
    let opened = open_terminal(&node, &terms, &session, &open).await;
    let (handle, read_only, client, attached) = match opened {
        Ok(x) => x,
        Err(e) => {
            reply(&mut send, Err(e)).await;
            return;
        }
    };
    if !reply(&mut send, Ok(())).await {
        let _ = handle.inbox.send(Cmd::Detach { client }).await;
        return;
    }
    let info = PtyOpened {
        terminal: handle.id.clone(),
        read_only,
        attached: attached.count,
        instance: handle.instance,
        offset: attached.offset,
    };
    debug!(peer = %session.grant.peer.short(), terminal = %handle.id, read_only, "terminal attached");
    let inbox = handle.inbox.clone();
    let out = pump_out(send, info, attached);
    let inp = pump_in(recv, handle, client, read_only);
    tokio::select! {
        _ = out => {}
        _ = inp => {}
    }
    let _ = inbox.send(Cmd::Detach { client }).await;
}

async fn open_terminal(
    node: &Node,
    terms: &Arc<Terminals>,
    session: &Session,
    open: &PtyOpen,
) -> Result<(TermHandle, bool, u64, Attached), ErrorBody> {
    let grant = &session.grant;
    node.recheck(grant)?;
    check_role(grant, Role::Viewer, &open.workspace, "watching a terminal")?;
    check_size(open.cols, open.rows)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.to_string()))?;
    let read_only = check_role(grant, Role::Collaborator, &open.workspace, "typing").is_err();
    if read_only && open.target == PtyTarget::New {
        check_role(
            grant,
            Role::Collaborator,
            &open.workspace,
            "starting a terminal",
        )?;
    }
    let (docker, t) = crate::inside::target(node, &open.workspace).await?;
    let handle = terms.get_or_start(&docker, &t, open, !read_only).await?;
    let client = terms.next_client.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let gone = || ErrorBody::new(ErrorCode::NotFound, "the terminal has just exited");
    let from = match &open.target {
        PtyTarget::Resume { from, .. } => Some(*from),
        _ => None,
    };
    handle
        .inbox
        .send(Cmd::Attach {
            client,
            cols: open.cols,
            rows: open.rows,
            read_only,
            from,
            reply: tx,
        })
        .await
        .map_err(|_| gone())?;
    let attached = rx.await.map_err(|_| gone())??;
    Ok((handle, read_only, client, attached))
}

async fn pump_out(mut send: SendStream, info: PtyOpened, mut attached: Attached) {
    let attached = &mut attached;
    let kicked = attached.kicked.clone();
    let ended = tokio::select! {
        ended = write_output(&mut send, info, attached) => ended,
        _ = kicked.cancelled() => false,
    };
    if kicked.is_cancelled() {
        // Too slow: the reset reaches the client whatever its flow-control window,
        // and its code says why.
        let _ = send.reset(VarInt::from_u32(PTY_RESET_TOO_SLOW));
        return;
    }
    if ended && attached.ended.load(Ordering::Acquire) {
        // The shell exited: finish our side.
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    } else if ended {
        // The node stops while the shell goes on: the client dials again and resumes.
        let _ = send.reset(VarInt::from_u32(0));
    }
}

/// Writes the open reply, the scrollback and the output; `true` when the output ended
/// (the shell exited), `false` when the stream broke.
async fn write_output(send: &mut SendStream, info: PtyOpened, attached: &mut Attached) -> bool {
    if write_frame(send, &info).await.is_err() {
        return false;
    }
    if !attached.scrollback.is_empty()
        && send
            .write_chunk(Bytes::from(std::mem::take(&mut attached.scrollback)))
            .await
            .is_err()
    {
        return false;
    }
    while let Some(chunk) = attached.output.recv().await {
        let len = chunk.len();
        if send.write_chunk(chunk).await.is_err() {
            return false;
        }
        attached.queued.fetch_sub(len, Ordering::Relaxed);
    }
    true
}

async fn pump_in(mut recv: RecvStream, handle: TermHandle, client: u64, read_only: bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut told = false;
    loop {
        let chunk = match recv.read_chunk(64 * 1024).await {
            Ok(Some(c)) => c,
            _ => return,
        };
        buf.extend_from_slice(&chunk);
        let mut used = 0;
        loop {
            match PtyFrame::decode(&buf[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    match frame {
                        PtyFrame::Data(d) if read_only => {
                            if !told && !d.is_empty() {
                                told = true;
                                // Best effort: the notice goes to this client only.
                                let _ = handle.inbox.send(Cmd::ReadOnlyNotice { client }).await;
                            }
                        }
                        PtyFrame::Data(d) => {
                            if handle
                                .input
                                .send(ToPty::Input(Bytes::from(d)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        // A viewer's size never counts (the actor ignores it too).
                        PtyFrame::Resize { .. } if read_only => {}
                        PtyFrame::Resize { cols, rows } => {
                            let _ = handle.inbox.send(Cmd::Resize { client, cols, rows }).await;
                        }
                        PtyFrame::Detach => return,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "bad terminal frame; detaching the client");
                    return;
                }
            }
        }
        buf.drain(..used);
    }
}

/// The default command of a new terminal: the user's login shell.
fn shell_cmd(open: &PtyOpen) -> Vec<String> {
    match &open.shell {
        Some(c) if !c.is_empty() => c.clone(),
        _ => vec![
            "/bin/sh".into(),
            "-c".into(),
            "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi".into(),
        ],
    }
}

/// Starts a terminal: under a holder when the container can run one, else under a Docker
/// tty exec (said in the terminal's first line).
async fn start(
    terms: Arc<Terminals>,
    key: u64,
    id: String,
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
) -> Result<TermHandle, ErrorBody> {
    let instance: u64 = rand::random();
    let why = match terms.install(docker, t).await {
        Ok(holder) => match start_holder(docker, t, open, &id, &holder).await {
            Ok((at, link)) => {
                terms.remember(Saved {
                    key,
                    id: id.clone(),
                    instance,
                    workspace: open.workspace.clone(),
                    container: at.container.clone(),
                    user: at.user.clone(),
                    sock: at.sock.clone(),
                    holder: at.holder.clone(),
                });
                return Ok(spawn_actor(
                    terms,
                    key,
                    id,
                    instance,
                    open.workspace.clone(),
                    Backend::Holder(at),
                    link,
                ));
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    warn!(terminal = %id, workspace = %open.workspace, reason = %why, "terminal started without a holder: it will not survive a node restart");
    let (exec_id, link) = start_docker(docker, t, open, &id).await?;
    let mut link = link;
    link.notice = Some(Bytes::from(format!(
        "[sam: this terminal will not survive a node restart: {why}]\r\n"
    )));
    Ok(spawn_actor(
        terms,
        key,
        id,
        instance,
        open.workspace.clone(),
        Backend::Docker {
            docker: docker.clone(),
            exec_id,
        },
        link,
    ))
}

/// The smallest size per dimension, `None` without clients.
pub fn smallest(sizes: impl Iterator<Item = (u16, u16)>) -> Option<(u16, u16)> {
    sizes.reduce(|a, b| (a.0.min(b.0), a.1.min(b.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_size_wins_per_dimension() {
        assert_eq!(smallest([].into_iter()), None);
        assert_eq!(smallest([(80, 24)].into_iter()), Some((80, 24)));
        assert_eq!(
            smallest([(120, 20), (80, 50), (200, 60)].into_iter()),
            Some((80, 20))
        );
    }
}
