//! The per-terminal actor: the scrollback, the attached clients and the input writer.

use super::*;

/// Where a terminal's PTY is.
pub(super) enum Backend {
    /// Docker's tty exec: resized through Docker; ends with the node.
    Docker { docker: Docker, exec_id: String },
    /// A holder in the container.
    Holder(HolderAt),
}

/// Input to the writer task.
pub(super) enum ToPty {
    Input(Bytes),
    Resize(u16, u16),
    /// Input goes to this relay from now on (after a reattach).
    Swap(Pin<Box<dyn AsyncWrite + Send>>),
}

/// Moves input to the PTY as it comes (no batching: each keystroke is written and flushed
/// at once).
pub(super) async fn write_input(
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
pub(super) fn spawn_actor(
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

pub(super) struct Client {
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

pub(super) struct Actor {
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
pub(super) const MAX_REATTACH: usize = 5;
pub(super) const REATTACH_WINDOW: Duration = Duration::from_secs(60);

/// Why an actor ended.
#[derive(Debug)]
pub(super) enum End {
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
        // A failed attach may be Docker slow under load, not the holder gone: try again a
        // few times (about 1.4 s in all) before the terminal is taken as ended.
        let mut wait = Duration::from_millis(200);
        let link = loop {
            match attach_holder(at, from, false).await {
                Ok(l) => break l,
                Err(e) if wait > Duration::from_millis(800) || stopping.is_cancelled() => {
                    info!(terminal = %self.id, error = %e, "terminal holder gone");
                    return None;
                }
                Err(e) => {
                    debug!(terminal = %self.id, error = %e, "terminal holder attach failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
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
