//! `sam/pty/1`: shared terminals in workspaces.
//!
//! A terminal is a login shell started with a Docker tty exec (Docker allocates
//! the PTY inside the container). One actor per terminal owns the exec's output,
//! a 256 KiB scrollback and the attached clients; any number of clients may attach.
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
//! - A terminal outlives its clients (reattach with its id) and ends when its
//!   shell exits; the node then finishes every attached stream.
//! - **Resume**: the output is one byte sequence with absolute offsets; the scrollback
//!   knows the offset of its first byte ([`PtyOpened::offset`] of every attach). A client
//!   whose link was lost reattaches with [`PtyTarget::Resume`] and gets exactly the bytes
//!   from where it was, or learns how many fell out of the scrollback. The one byte
//!   sequence outside it is the read-only notice sent to a viewer that types anyway
//!   (`sam` clients never send a viewer's input, so their offsets stay exact).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::inside::{Target, check_role, docker_err};
use crate::server::{Node, Session};
use crate::streams::{reply, serve_connection};
use sam_protocol::wire::{read_bounded, write_frame};

/// A collaborator that takes no output for this long is detached.
pub const SLOW_CLIENT: Duration = Duration::from_secs(10);
/// Output chunks queued per client (viewers are also bounded in bytes).
const CLIENT_QUEUE: usize = 256;
/// Most terminals per workspace.
pub const MAX_TERMINALS: usize = 32;

const READ_ONLY_NOTICE: &[u8] = b"\r\n[sam: read-only: viewers cannot type in this terminal]\r\n";

/// Serves `sam/pty/1`.
#[derive(Debug, Clone)]
pub struct PtyHandler {
    node: Node,
    terms: Arc<Terminals>,
}

impl PtyHandler {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            terms: Arc::new(Terminals::default()),
        }
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

/// The live terminals of this node.
#[derive(Debug, Default)]
pub struct Terminals {
    map: Mutex<BTreeMap<u64, TermHandle>>,
    next: AtomicU64,
    next_client: AtomicU64,
}

#[derive(Debug, Clone)]
struct TermHandle {
    id: String,
    /// Random, so a reattach never takes another terminal of the same id for this one.
    instance: u64,
    workspace: String,
    inbox: mpsc::Sender<Cmd>,
    input: mpsc::Sender<Bytes>,
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
}

impl Terminals {
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
                                "terminal {id} in workspace {} is gone (its shell exited or the node restarted)",
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
    let kicked = attached.kicked.clone();
    let ended = tokio::select! {
        ended = write_output(&mut send, info, &mut attached) => ended,
        _ = kicked.cancelled() => false,
    };
    if kicked.is_cancelled() {
        // Too slow: the reset reaches the client whatever its flow-control window,
        // and its code says why.
        let _ = send.reset(VarInt::from_u32(PTY_RESET_TOO_SLOW));
        return;
    }
    if ended {
        // The shell exited: finish our side.
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
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
                            if handle.input.send(Bytes::from(d)).await.is_err() {
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

/// Starts a login shell under a tty exec and the actor that owns it.
async fn start(
    terms: Arc<Terminals>,
    key: u64,
    id: String,
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
) -> Result<TermHandle, ErrorBody> {
    let cmd = match &open.shell {
        Some(c) if !c.is_empty() => c.clone(),
        _ => vec![
            "/bin/sh".into(),
            "-c".into(),
            "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi".into(),
        ],
    };
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
        cmd: Some(cmd),
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
    let StartExecResults::Attached { output, mut input } = started else {
        return Err(ErrorBody::new(
            ErrorCode::Internal,
            "docker did not attach the shell",
        ));
    };
    let (input_tx, mut input_rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        while let Some(b) = input_rx.recv().await {
            if input.write_all(&b).await.is_err() || input.flush().await.is_err() {
                break;
            }
        }
        let _ = input.shutdown().await;
    });
    let (inbox_tx, inbox_rx) = mpsc::channel(64);
    let actor = Actor {
        docker: docker.clone(),
        exec_id: exec.id,
        clients: HashMap::new(),
        scrollback: Vec::new(),
        base: 0,
        // Unknown: Docker does not always apply `console_size`, so the first attach
        // resizes the tty explicitly.
        size: (0, 0),
    };
    let tid = id.clone();
    tokio::spawn(async move {
        actor.run(output, inbox_rx).await;
        debug!(terminal = %tid, "terminal ended");
        terms.map.lock().await.remove(&key);
    });
    Ok(TermHandle {
        id,
        instance: rand::random(),
        workspace: open.workspace.clone(),
        inbox: inbox_tx,
        input: input_tx,
    })
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
    docker: Docker,
    exec_id: String,
    clients: HashMap<u64, Client>,
    scrollback: Vec<u8>,
    /// Absolute offset of `scrollback[0]` in the terminal's whole output.
    base: u64,
    size: (u16, u16),
}

type Output = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

impl Actor {
    async fn run(mut self, mut output: Output, mut inbox: mpsc::Receiver<Cmd>) {
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::Console { message } | LogOutput::StdOut { message } | LogOutput::StdErr { message })) => {
                        self.output(message).await;
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "terminal output failed");
                        break;
                    }
                    None => break,
                },
                cmd = inbox.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
            }
        }
    }

    async fn output(&mut self, chunk: Bytes) {
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
        let opts = bollard::exec::ResizeExecOptions {
            width: size.0,
            height: size.1,
        };
        if let Err(e) = self.docker.resize_exec(&self.exec_id, opts).await {
            warn!(error = %e, "terminal resize failed");
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
