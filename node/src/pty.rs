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

/// Where a holder lives.
#[derive(Clone)]
struct HolderAt {
    docker: Docker,
    container: String,
    user: String,
    sock: String,
    holder: String,
}

/// Where the node lets a holder make its socket: a folder only the terminal's user can
/// enter (the holder refuses one owned by anybody else).
fn sock_dir(user: &str) -> String {
    if user == "root" || user == "0" || user.is_empty() {
        return "/run/sam/term".into();
    }
    let safe: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    format!("/tmp/sam-term-{safe}")
}

/// Copies the holder into the container (a name per content, so a running one is never
/// overwritten) unless it is there, and checks it runs there.
async fn install_holder(docker: &Docker, t: &Target) -> Result<String, String> {
    let local = holder_binary().ok_or_else(|| {
        "the node has no sam-pty-hold binary beside it (or at SAM_PTY_HOLD)".to_string()
    })?;
    let bytes = tokio::fs::read(&local)
        .await
        .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
    let sum = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(&bytes);
        d.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let path = format!("{HOLDER_PATH}-{sum}");
    if probe(docker, t, &path).await.is_ok() {
        return Ok(path);
    }
    let mut tar = tar::Builder::new(Vec::new());
    let dir = std::path::Path::new(path.trim_start_matches('/'))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, &dir, std::io::empty())
        .map_err(|e| e.to_string())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bytes.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path.trim_start_matches('/'), &bytes[..])
        .map_err(|e| e.to_string())?;
    let tar = tar.into_inner().map_err(|e| e.to_string())?;
    let opts = bollard::query_parameters::UploadToContainerOptions {
        path: "/".into(),
        no_overwrite_dir_non_dir: None,
        copy_uidgid: None,
    };
    docker
        .upload_to_container(&t.container_id, Some(opts), bollard::body_full(tar.into()))
        .await
        .map_err(|e| format!("cannot copy the terminal holder into the container: {e}"))?;
    probe(docker, t, &path).await?;
    Ok(path)
}

/// Runs `path probe` in the container as the terminal's user.
async fn probe(docker: &Docker, t: &Target, path: &str) -> Result<(), String> {
    let out = crate::inside::run(
        docker,
        t,
        Some(&t.user),
        vec![path.to_string(), "probe".into()],
        1024,
    )
    .await
    .map_err(|e| e.message)?;
    if out.exit == 0 && String::from_utf8_lossy(&out.stdout).trim() == PROBE {
        Ok(())
    } else {
        Err(format!(
            "the terminal holder does not run in this container (exit {}): {}",
            out.exit,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The holder binary on this machine: `SAM_PTY_HOLD`, else beside the node's binary (or
/// one folder up: cargo's test layout).
fn holder_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SAM_PTY_HOLD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("sam-pty-hold"))
        .find(|p| p.is_file())
}

/// Starts a holder running the terminal's command (a detached exec) and attaches to it.
async fn start_holder(
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
    id: &str,
    holder: &str,
) -> Result<(HolderAt, Link), String> {
    let sock = format!("{}/{:032x}.sock", sock_dir(&t.user), rand::random::<u128>());
    let mut cmd = vec![
        holder.to_string(),
        "serve".into(),
        sock.clone(),
        open.cols.to_string(),
        open.rows.to_string(),
        "--".into(),
    ];
    cmd.extend(shell_cmd(open));
    let config = ExecConfig {
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        env: Some(vec![
            "TERM=xterm-256color".into(),
            format!("SAM_TERMINAL={id}"),
        ]),
        cmd: Some(cmd),
        user: Some(t.user.clone()),
        working_dir: Some(t.root.clone()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(&t.container_id, config)
        .await
        .map_err(|e| format!("cannot start the terminal holder: {e}"))?;
    docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("cannot start the terminal holder: {e}"))?;
    let at = HolderAt {
        docker: docker.clone(),
        container: t.container_id.clone(),
        user: t.user.clone(),
        sock,
        holder: holder.to_string(),
    };
    let link = attach_holder(&at, 0, true).await?;
    Ok((at, link))
}

/// What feeds an actor: output events and where input goes.
struct Link {
    events: mpsc::Receiver<Ev>,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The absolute offset of the first output byte that follows.
    start: u64,
    /// The output the holder had when attached: attaches wait until the node has it.
    end: u64,
    /// Bytes the node writes first (the old path's warning).
    notice: Option<Bytes>,
}

enum Ev {
    /// Output; `offset` is its first byte's absolute offset when the source says it.
    Output { offset: Option<u64>, data: Bytes },
    /// The shell exited.
    Exit,
    /// Another attach took the holder over.
    Replaced,
    /// The link broke (the shell may go on).
    Broken(String),
}

/// Attaches to a holder through a relay exec, from absolute byte `from`; `wait`: the holder
/// may still be starting.
async fn attach_holder(at: &HolderAt, from: u64, wait: bool) -> Result<Link, String> {
    let mut cmd = vec![at.holder.clone(), "attach".into(), at.sock.clone()];
    if !wait {
        cmd.push("0".into());
    }
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(cmd),
        user: Some(at.user.clone()),
        ..Default::default()
    };
    let exec = at
        .docker
        .create_exec(&at.container, config)
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let started = at
        .docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                output_capacity: Some(256 * 1024),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let StartExecResults::Attached { output, mut input } = started else {
        return Err("docker did not attach the terminal holder".into());
    };
    let mut f = Vec::new();
    ToHolder::Attach {
        version: VERSION,
        from,
    }
    .encode(&mut f);
    input
        .write_all(&f)
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let _ = input.flush().await;
    let (hello_tx, hello_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(decode_holder(output, hello_tx, tx));
    let (start, end) = match tokio::time::timeout(HOLDER_HELLO, hello_rx).await {
        Ok(Ok(Ok(x))) => x,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err("the terminal holder link ended".into()),
        Err(_) => return Err("the terminal holder did not answer".into()),
    };
    Ok(Link {
        events: rx,
        input,
        start,
        end,
        notice: None,
    })
}

type Output =
    Pin<Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Decodes a relay's stdout into events; its first frame must be a hello.
async fn decode_holder(
    mut output: Output,
    hello: oneshot::Sender<Result<(u64, u64), String>>,
    tx: mpsc::Sender<Ev>,
) {
    let mut hello = Some(hello);
    let mut buf: Vec<u8> = Vec::with_capacity(80 * 1024);
    let mut stderr = String::new();
    let fail = |hello: &mut Option<oneshot::Sender<_>>, why: String| {
        if let Some(h) = hello.take() {
            let _ = h.send(Err(why.clone()));
        }
        why
    };
    let why = loop {
        let message = match output.next().await {
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => message,
            Some(Ok(LogOutput::StdErr { message })) => {
                if stderr.len() < 1024 {
                    stderr.push_str(&String::from_utf8_lossy(&message));
                }
                continue;
            }
            Some(Ok(LogOutput::StdIn { .. })) => continue,
            Some(Err(e)) => break fail(&mut hello, format!("terminal holder link: {e}")),
            None => {
                let said = stderr.trim();
                break fail(
                    &mut hello,
                    if said.is_empty() {
                        "the terminal holder link ended".into()
                    } else {
                        format!("the terminal holder link ended: {said}")
                    },
                );
            }
        };
        buf.extend_from_slice(&message);
        let mut used = 0;
        let mut done = None;
        loop {
            match ToNode::decode(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    let ev = match (f, hello.take()) {
                        (
                            ToNode::Hello {
                                version,
                                start,
                                end,
                            },
                            Some(h),
                        ) => {
                            if version != VERSION || end < start {
                                let _ = h.send(Err(format!(
                                    "the terminal holder speaks version {version}, not {VERSION}"
                                )));
                                done = Some(String::new());
                                break;
                            }
                            let _ = h.send(Ok((start, end)));
                            continue;
                        }
                        (_, Some(h)) => {
                            let _ = h.send(Err("the terminal holder did not say hello".into()));
                            done = Some(String::new());
                            break;
                        }
                        (ToNode::Hello { .. }, None) => {
                            done = Some("the terminal holder said hello twice".into());
                            break;
                        }
                        (ToNode::Output { offset, data }, None) => Ev::Output {
                            offset: Some(offset),
                            data: Bytes::from(data),
                        },
                        (ToNode::Exit { .. }, None) => Ev::Exit,
                        (ToNode::Replaced, None) => Ev::Replaced,
                    };
                    let last = matches!(ev, Ev::Exit | Ev::Replaced);
                    if tx.send(ev).await.is_err() || last {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    done = Some(fail(
                        &mut hello,
                        format!("bad frame from the terminal holder: {e}"),
                    ));
                    break;
                }
            }
        }
        if let Some(why) = done {
            break why;
        }
        buf.drain(..used);
    };
    if !why.is_empty() {
        let _ = tx.send(Ev::Broken(why)).await;
    }
}

/// The old path: a login shell under a Docker tty exec (ends with the node).
async fn start_docker(
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
    id: &str,
) -> Result<(String, Link), ErrorBody> {
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        console_size: Some(vec![open.rows as usize, open.cols as usize]),
        env: Some(vec![
            "TERM=xterm-256color".into(),
            format!("SAM_TERMINAL={id}"),
        ]),
        cmd: Some(shell_cmd(open)),
        user: Some(t.user.clone()),
        working_dir: Some(t.root.clone()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(&t.container_id, config)
        .await
        .map_err(|e| docker_err("cannot start a shell in the workspace", e))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                tty: true,
                output_capacity: Some(256 * 1024),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| docker_err("cannot attach to the shell", e))?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err(ErrorBody::new(
            ErrorCode::Internal,
            "docker did not attach the shell",
        ));
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let ev = loop {
            match output.next().await {
                Some(Ok(
                    LogOutput::Console { message }
                    | LogOutput::StdOut { message }
                    | LogOutput::StdErr { message },
                )) => {
                    let ev = Ev::Output {
                        offset: None,
                        data: message,
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "terminal output failed");
                    break Ev::Exit;
                }
                None => break Ev::Exit,
            }
        };
        let _ = tx.send(ev).await;
    });
    Ok((
        exec.id,
        Link {
            events: rx,
            input,
            start: 0,
            end: 0,
            notice: None,
        },
    ))
}

/// Where a terminal's PTY is.
enum Backend {
    /// Docker's tty exec: resized through Docker; ends with the node.
    Docker { docker: Docker, exec_id: String },
    /// A holder in the container.
    Holder(HolderAt),
}

/// Input to the writer task.
enum ToPty {
    Input(Bytes),
    Resize(u16, u16),
    /// Input goes to this relay from now on (after a reattach).
    Swap(Pin<Box<dyn AsyncWrite + Send>>),
}

/// Moves input to the PTY as it comes (no batching: each keystroke is written and flushed
/// at once).
async fn write_input(
    mut to: Pin<Box<dyn AsyncWrite + Send>>,
    holder: bool,
    mut rx: mpsc::Receiver<ToPty>,
) {
    let mut frame = Vec::with_capacity(1024);
    let mut broken = false;
    while let Some(w) = rx.recv().await {
        frame.clear();
        match w {
            ToPty::Swap(t) => {
                to = t;
                broken = false;
                continue;
            }
            ToPty::Input(b) if holder => ToHolder::Input(b.to_vec()).encode(&mut frame),
            ToPty::Input(b) => frame.extend_from_slice(&b),
            ToPty::Resize(cols, rows) if holder => {
                ToHolder::Resize { cols, rows }.encode(&mut frame)
            }
            ToPty::Resize(..) => continue,
        }
        // Input on a broken link is dropped (it may or may not have reached the shell).
        if !broken && (to.write_all(&frame).await.is_err() || to.flush().await.is_err()) {
            broken = true;
        }
    }
    let _ = to.shutdown().await;
}

/// Starts the actor (and its input writer) of a terminal.
fn spawn_actor(
    terms: Arc<Terminals>,
    key: u64,
    id: String,
    instance: u64,
    workspace: String,
    backend: Backend,
    link: Link,
) -> TermHandle {
    let holder = matches!(backend, Backend::Holder(_));
    let (write_tx, write_rx) = mpsc::channel::<ToPty>(256);
    let Link {
        events,
        input,
        start,
        end,
        notice,
    } = link;
    tokio::spawn(write_input(input, holder, write_rx));
    let (inbox_tx, inbox_rx) = mpsc::channel(64);
    let write_tx_for_input = write_tx.clone();
    let actor = Actor {
        backend,
        writer: write_tx,
        clients: HashMap::new(),
        scrollback: Vec::new(),
        base: start,
        sync_to: end,
        ended: Arc::new(AtomicBool::new(false)),
        // Unknown: Docker does not always apply `console_size`, so the first attach
        // resizes the tty explicitly.
        size: (0, 0),
        id: id.clone(),
        reattached: Default::default(),
    };
    let stopping = terms.stopping.clone();
    tokio::spawn(async move {
        let mut actor = actor;
        if let Some(n) = notice {
            let _ = actor.output(None, n).await;
        }
        let end = actor.run(events, inbox_rx, stopping).await;
        debug!(terminal = %actor.id, ?end, "terminal ended");
        terms.map.lock().await.remove(&key);
        if matches!(end, End::Exited) {
            terms.forget(key);
        }
    });
    TermHandle {
        id,
        instance,
        workspace,
        inbox: inbox_tx,
        input: write_tx_for_input,
    }
}

struct Client {
    tx: mpsc::Sender<Bytes>,
    size: (u16, u16),
    read_only: bool,
    queued: Arc<AtomicUsize>,
    kicked: CancellationToken,
}

impl Client {
    /// Queues `chunk` without waiting: `Err` when this client is too far behind (or
    /// gone), with the chunk back.
    fn offer(&self, chunk: Bytes) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        let len = chunk.len();
        if self.read_only && self.queued.load(Ordering::Relaxed) + len > PTY_VIEWER_BUFFER {
            return Err(mpsc::error::TrySendError::Full(chunk));
        }
        self.tx.try_send(chunk)?;
        self.queued.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

struct Actor {
    backend: Backend,
    writer: mpsc::Sender<ToPty>,
    clients: HashMap<u64, Client>,
    scrollback: Vec<u8>,
    /// Absolute offset of `scrollback[0]` in the terminal's whole output.
    base: u64,
    /// Attaches wait until the output reaches this offset (what a holder had when the
    /// node attached to it), so a resume after a restart finds its bytes.
    sync_to: u64,
    /// Shared with every attached client: the shell ended.
    ended: Arc<AtomicBool>,
    size: (u16, u16),
    id: String,
    /// When the holder link was last attached again (bounded: a holder that keeps
    /// breaking its link is given up).
    reattached: std::collections::VecDeque<std::time::Instant>,
}

/// Reattaches to a holder within [`REATTACH_WINDOW`] before it is given up.
const MAX_REATTACH: usize = 5;
const REATTACH_WINDOW: Duration = Duration::from_secs(60);

/// Why an actor ended.
#[derive(Debug)]
enum End {
    /// The shell exited (or its holder is gone): the terminal is over.
    Exited,
    /// Another node process took the holder over.
    Replaced,
    /// This node is stopping; the holder goes on for the next one.
    Stopping,
}

impl Actor {
    fn end(&self) -> u64 {
        self.base + self.scrollback.len() as u64
    }

    async fn run(
        &mut self,
        mut events: mpsc::Receiver<Ev>,
        mut inbox: mpsc::Receiver<Cmd>,
        stopping: CancellationToken,
    ) -> End {
        // A holder that never delivers what it announced holds attaches up only so long.
        let sync_deadline = tokio::time::Instant::now() + HOLDER_HELLO;
        let end = loop {
            let synced = self.end() >= self.sync_to;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ev::Output { offset, data }) => {
                        if let Err(e) = self.output(offset, data).await {
                            warn!(terminal = %self.id, error = %e, "terminal holder output out of order; reattaching");
                            match self.reattach(&stopping).await {
                                Some(ev) => events = ev,
                                None => break End::Exited,
                            }
                        }
                    }
                    Some(Ev::Exit) => break End::Exited,
                    Some(Ev::Replaced) => break End::Replaced,
                    Some(Ev::Broken(why)) => {
                        debug!(terminal = %self.id, reason = %why, "terminal holder link broke");
                        match self.reattach(&stopping).await {
                            Some(ev) => events = ev,
                            None if stopping.is_cancelled() => break End::Stopping,
                            None => break End::Exited,
                        }
                    }
                    None => break End::Exited,
                },
                cmd = inbox.recv(), if synced => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break End::Exited,
                },
                _ = tokio::time::sleep_until(sync_deadline), if !synced => {
                    warn!(terminal = %self.id, "the terminal holder did not replay what it announced");
                    self.sync_to = 0;
                }
                _ = stopping.cancelled() => break End::Stopping,
            }
        };
        if matches!(end, End::Exited) {
            self.ended.store(true, Ordering::Release);
        }
        end
    }

    /// Attaches to the holder again after its link broke (a Docker hiccup), from the
    /// output's end: `None` when it is gone (or this is not a holder, or the node stops).
    async fn reattach(&mut self, stopping: &CancellationToken) -> Option<mpsc::Receiver<Ev>> {
        let Backend::Holder(at) = &self.backend else {
            return None;
        };
        if stopping.is_cancelled() {
            return None;
        }
        let now = std::time::Instant::now();
        self.reattached
            .retain(|t| now.duration_since(*t) < REATTACH_WINDOW);
        if self.reattached.len() >= MAX_REATTACH {
            warn!(terminal = %self.id, "the terminal holder keeps breaking its link; given up");
            return None;
        }
        self.reattached.push_back(now);
        let from = self.end();
        let link = match attach_holder(at, from, false).await {
            Ok(l) => l,
            Err(e) => {
                info!(terminal = %self.id, error = %e, "terminal holder gone");
                return None;
            }
        };
        if link.end < from {
            // It has less output than the node already took: not the holder this was.
            warn!(terminal = %self.id, "the terminal holder went back in its output; given up");
            return None;
        }
        if link.start > from {
            // The holder's ring no longer has what this node had not read: the attached
            // clients catch up through a resume, which says what was lost.
            warn!(terminal = %self.id, lost = link.start.saturating_sub(from), "terminal output lost while the holder link was down");
            self.scrollback.clear();
            self.base = link.start;
            for c in self.clients.values() {
                c.kicked.cancel();
            }
            self.clients.clear();
        }
        self.sync_to = link.end;
        let _ = self.writer.send(ToPty::Swap(link.input)).await;
        if self.size != (0, 0) {
            let _ = self
                .writer
                .send(ToPty::Resize(self.size.0, self.size.1))
                .await;
        }
        Some(link.events)
    }

    /// Takes output (at `offset` when its source says where it starts).
    async fn output(&mut self, offset: Option<u64>, mut chunk: Bytes) -> Result<(), String> {
        if let Some(o) = offset {
            let end = self.end();
            if o < end {
                // Already have it (a replay that overlaps).
                let skip = usize::try_from(end - o).unwrap_or(usize::MAX);
                if skip >= chunk.len() {
                    return Ok(());
                }
                chunk = chunk.slice(skip..);
            } else if o > end {
                return Err(format!("output at byte {o}, expected {end}"));
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.scrollback.extend_from_slice(&chunk);
        if self.scrollback.len() > 2 * PTY_SCROLLBACK {
            let cut = self.scrollback.len() - PTY_SCROLLBACK;
            self.scrollback.drain(..cut);
            self.base += cut as u64;
        }
        let mut gone = Vec::new();
        let mut slow = Vec::new();
        // Viewers first: they never wait, so a collaborator's back-pressure below
        // cannot hold up what they have been sent.
        let mut order: Vec<(&u64, &Client)> = self.clients.iter().collect();
        order.sort_by_key(|(_, c)| !c.read_only);
        for (id, c) in order {
            match c.offer(chunk.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
                // A viewer too far behind is detached at once.
                Err(mpsc::error::TrySendError::Full(_)) if c.read_only => slow.push(*id),
                Err(mpsc::error::TrySendError::Full(b)) => {
                    // A collaborator: back-pressure, like ssh, but not forever.
                    let len = b.len();
                    match tokio::time::timeout(SLOW_CLIENT, c.tx.send(b)).await {
                        Ok(Ok(())) => {
                            c.queued.fetch_add(len, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => gone.push(*id),
                        Err(_) => slow.push(*id),
                    }
                }
            }
        }
        for id in &slow {
            if let Some(c) = self.clients.get(id) {
                debug!(
                    client = id,
                    read_only = c.read_only,
                    "terminal client too slow; detached"
                );
                c.kicked.cancel();
            }
        }
        if !gone.is_empty() || !slow.is_empty() {
            for id in gone.into_iter().chain(slow) {
                self.clients.remove(&id);
            }
            self.resize_to_smallest().await;
        }
        Ok(())
    }
    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach {
                client,
                cols,
                rows,
                read_only,
                from,
                reply,
            } => {
                let end = self.base + self.scrollback.len() as u64;
                // A fresh attach gets the last PTY_SCROLLBACK bytes; a resume everything
                // from its offset the node still holds (up to 2 × PTY_SCROLLBACK).
                let start = match from {
                    None => end.saturating_sub(PTY_SCROLLBACK as u64).max(self.base),
                    Some(f) if f > end => {
                        let _ = reply.send(Err(ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!(
                                "cannot resume at byte {f}: this terminal has written {end} bytes"
                            ),
                        )));
                        return;
                    }
                    Some(f) => f.max(self.base),
                };
                let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
                let queued = Arc::new(AtomicUsize::new(0));
                let kicked = CancellationToken::new();
                self.clients.insert(
                    client,
                    Client {
                        tx,
                        size: (cols, rows),
                        read_only,
                        queued: queued.clone(),
                        kicked: kicked.clone(),
                    },
                );
                let skip = usize::try_from(start - self.base).unwrap_or(usize::MAX);
                // The tty has its size before the client hears it is attached (a
                // command typed at once sees it); no output is read meanwhile, so the
                // scrollback and its offset stay exact.
                self.resize_to_smallest().await;
                let _ = reply.send(Ok(Attached {
                    scrollback: self.scrollback.get(skip..).unwrap_or_default().to_vec(),
                    offset: start,
                    output: rx,
                    count: self.clients.len() as u32,
                    queued,
                    kicked,
                    ended: self.ended.clone(),
                }));
            }
            Cmd::ReadOnlyNotice { client } => {
                if let Some(c) = self.clients.get(&client) {
                    let _ = c.offer(Bytes::from_static(READ_ONLY_NOTICE));
                }
            }
            Cmd::Resize { client, cols, rows } => {
                match self.clients.get_mut(&client) {
                    Some(c) if !c.read_only => c.size = (cols, rows),
                    // A viewer cannot resize the shared terminal.
                    _ => return,
                }
                self.resize_to_smallest().await;
            }
            Cmd::Detach { client } => {
                if self.clients.remove(&client).is_some() {
                    self.resize_to_smallest().await;
                }
            }
        }
    }

    /// Resizes to the smallest collaborator's size; viewers never count.
    async fn resize_to_smallest(&mut self) {
        let writers = self.clients.values().filter(|c| !c.read_only);
        let Some(size) = smallest(writers.map(|c| c.size)) else {
            return;
        };
        if size == self.size {
            return;
        }
        self.size = size;
        match &self.backend {
            Backend::Docker { docker, exec_id } => {
                let opts = bollard::exec::ResizeExecOptions {
                    width: size.0,
                    height: size.1,
                };
                if let Err(e) = docker.resize_exec(exec_id, opts).await {
                    warn!(error = %e, "terminal resize failed");
                }
            }
            Backend::Holder(_) => {
                let _ = self.writer.send(ToPty::Resize(size.0, size.1)).await;
            }
        }
    }
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
