//! The GUI's backend: an actor on a tokio runtime in a background thread. The UI sends
//! [`Command`]s through [`BackendHandle::send`] and drains [`Event`]s with
//! [`BackendHandle::poll`]; every event wakes the UI with `request_repaint`.
//!
//! The actor owns the local replicas and the live `sam/doc/1` link of the selected
//! conversation: local changes (prompts, permission answers) go into the replica first
//! and ride the link when it is up, so a prompt typed offline stays `queued` and leaves
//! when the node is reachable again. Slow work (dialling nodes, shares) runs in tasks
//! that report back as events.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use iroh::Endpoint;
use iroh::endpoint::{Connection, SendStream};
use sam_crdt::{Conversation, MessageId, NewConversation, Role, Status, SyncPeer};
use sam_protocol::doc::{DocFrame, DocOpen};
use sam_protocol::stream::OpenReply;
use sam_protocol::{Ticket, alpn};
use tokio::sync::mpsc;

use super::state::{Command, ConvSummary, Event, Level, Notification};
use crate::book::NodeBook;
use crate::docs::{Inbound, Replicas};
use crate::paths::ClientPaths;
use sam_protocol::wire::{WireError, read_frame, write_frame};

mod tasks;

/// How often the UI gets a fresh snapshot of a streaming conversation at most.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(30);
/// How often nodes are asked for their status.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Wait before re-dialling a conversation's node.
const RETRY_EVERY: Duration = Duration::from_secs(3);

/// Sends events to the UI and wakes it.
#[derive(Clone)]
pub struct Events {
    tx: std::sync::mpsc::Sender<Event>,
    ctx: Arc<OnceLock<egui::Context>>,
}

impl Events {
    pub fn emit(&self, ev: Event) {
        let _ = self.tx.send(ev);
        if let Some(ctx) = self.ctx.get() {
            ctx.request_repaint();
        }
    }

    pub fn notice(&self, level: Level, title: &str, body: impl Into<String>) {
        self.emit(Event::Notice(Notification::new(level, title, body)));
    }
}

/// The UI's side of the backend.
pub struct BackendHandle {
    tx: mpsc::UnboundedSender<Command>,
    rx: std::sync::mpsc::Receiver<Event>,
    ctx: Arc<OnceLock<egui::Context>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendHandle {
    /// Starts the runtime thread and the actor.
    pub fn start(paths: ClientPaths) -> Result<Self> {
        let (tx, cmds) = mpsc::unbounded_channel();
        let (etx, rx) = std::sync::mpsc::channel();
        let ctx = Arc::new(OnceLock::new());
        let events = Events {
            tx: etx,
            ctx: ctx.clone(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("sam-gui-backend")
            .build()
            .context("start the GUI's tokio runtime")?;
        let thread = std::thread::Builder::new()
            .name("sam-gui-backend".into())
            .spawn(move || {
                rt.block_on(async move {
                    if let Err(e) = Actor::run(paths, events.clone(), cmds).await {
                        events.notice(Level::Error, "Backend stopped", format!("{e:#}"));
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("start the GUI's backend thread")?;
        Ok(Self {
            tx,
            rx,
            ctx,
            thread: Some(thread),
        })
    }

    /// Lets the backend wake this UI (call once a frame; cheap after the first).
    pub fn set_ctx(&self, ctx: &egui::Context) {
        if self.ctx.get().is_none() {
            let _ = self.ctx.set(ctx.clone());
        }
    }

    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }

    /// Every event that arrived since the last call.
    pub fn poll(&self) -> Vec<Event> {
        self.rx.try_iter().collect()
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        // Closing the command channel ends the actor, then the thread.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The live `sam/doc/1` link of one conversation.
struct Link {
    send: SendStream,
    inbound: Inbound,
    sync: SyncPeer,
    _conn: Connection,
}

/// The selected conversation.
struct Followed {
    id: String,
    conv: Conversation,
    link: Option<Link>,
    dialling: bool,
    next_try: Instant,
    dirty: bool,
    last_emit: Instant,
    /// (queued prompts, messages) last told to the sidebar.
    queued: Option<(usize, usize)>,
}

/// Results of tasks, back to the actor.
enum Internal {
    Linked(String, Result<Box<Link>>),
    Fetched(Box<Conversation>),
    /// A node stopped answering: links to it are dead even if QUIC has not noticed.
    NodeDown(String),
}

struct Actor {
    paths: ClientPaths,
    events: Events,
    ep: Endpoint,
    replicas: Replicas,
    me: String,
    followed: Option<Followed>,
    internal: mpsc::UnboundedSender<Internal>,
    polling: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Input of the open terminal.
    term: Option<mpsc::UnboundedSender<tasks::TermIn>>,
}

impl Actor {
    async fn run(
        paths: ClientPaths,
        events: Events,
        mut cmds: mpsc::UnboundedReceiver<Command>,
    ) -> Result<()> {
        let key = paths.identity()?;
        let me = key.node_id().to_string();
        events.emit(Event::Me(me.clone()));
        let ep = crate::endpoint::bind(&key, None).await?;
        let replicas = Replicas::open(&paths)?;
        let (internal, mut internal_rx) = mpsc::unbounded_channel();
        let mut actor = Actor {
            paths,
            events,
            ep,
            replicas,
            me,
            followed: None,
            internal,
            polling: Default::default(),
            term: None,
        };
        actor.refresh();
        let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll = Instant::now();
        loop {
            enum Step {
                Cmd(Option<Command>),
                Internal(Option<Internal>),
                Frame(Option<Result<DocFrame, WireError>>),
                Tick,
            }
            let step = tokio::select! {
                c = cmds.recv() => Step::Cmd(c),
                i = internal_rx.recv() => Step::Internal(i),
                f = next_frame(&mut actor.followed) => Step::Frame(f),
                _ = tick.tick() => Step::Tick,
            };
            match step {
                Step::Cmd(None) => break,
                Step::Cmd(Some(c)) => {
                    if let Err(e) = actor.command(c).await {
                        actor.events.notice(Level::Error, "Error", format!("{e:#}"));
                    }
                }
                Step::Internal(Some(i)) => actor.internal(i).await,
                Step::Internal(None) => {}
                Step::Frame(f) => actor.frame(f).await,
                Step::Tick => {
                    actor.tick();
                    if last_poll.elapsed() >= POLL_EVERY {
                        last_poll = Instant::now();
                        actor.poll_nodes();
                    }
                }
            }
        }
        actor.followed = None;
        actor.ep.close().await;
        Ok(())
    }

    /// Reloads the node book and the conversation list and asks every node.
    fn refresh(&mut self) {
        match NodeBook::load(&self.paths.nodes()) {
            Ok(book) => self.events.emit(Event::Nodes(
                book.nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.id.clone()))
                    .collect(),
            )),
            Err(e) => {
                self.events
                    .notice(Level::Error, "Cannot read the node book", format!("{e:#}"))
            }
        }
        self.emit_convs();
        self.poll_nodes();
    }

    fn poll_nodes(&self) {
        let Ok(book) = NodeBook::load(&self.paths.nodes()) else {
            return;
        };
        for entry in book.nodes {
            if let Ok(mut p) = self.polling.lock()
                && !p.insert(entry.id.clone())
            {
                continue;
            }
            let known = self.replicas.ids().unwrap_or_default();
            tokio::spawn(tasks::poll_node(
                self.ep.clone(),
                entry,
                self.events.clone(),
                self.internal.clone(),
                known,
                self.polling.clone(),
            ));
        }
    }

    fn emit_convs(&mut self) {
        let mut list = Vec::new();
        for id in self.replicas.ids().unwrap_or_default() {
            let conv = match self.followed.as_ref().filter(|f| f.id == id) {
                Some(f) => summary(&f.conv),
                None => match self.replicas.load(&id) {
                    Ok(c) => summary(&c),
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        continue;
                    }
                },
            };
            list.push(conv);
        }
        list.sort_by_key(|c| c.created_at);
        self.events.emit(Event::Convs(list));
    }

    async fn command(&mut self, c: Command) -> Result<()> {
        match c {
            Command::Refresh => self.refresh(),
            Command::Connect { ticket, name } => {
                let (ep, paths, ev) = (self.ep.clone(), self.paths.clone(), self.events.clone());
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    match tasks::connect(&ep, &paths, &ticket, name.as_deref()).await {
                        Ok(msg) => {
                            ev.notice(Level::Info, "Connected", msg);
                            let _ = internal; // the next poll lists its conversations
                        }
                        Err(e) => ev.notice(Level::Error, "Cannot connect", format!("{e:#}")),
                    }
                });
                // The book changes when the task is done; refresh shortly after.
                let ev = self.events.clone();
                let paths = self.paths.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if let Ok(book) = NodeBook::load(&paths.nodes()) {
                            ev.emit(Event::Nodes(
                                book.nodes
                                    .iter()
                                    .map(|n| (n.name.clone(), n.id.clone()))
                                    .collect(),
                            ));
                        }
                    }
                });
            }
            Command::Select(id) => self.select(&id)?,
            Command::Reopen(id) => {
                if self.followed.as_ref().is_some_and(|f| f.id == id) {
                    self.followed = None;
                }
                self.emit_convs();
                self.select(&id)?;
            }
            Command::Prompt { conv, text } => {
                let me = self.me.clone();
                self.change(&conv, |c| {
                    c.append_user_message(&me, &text, Status::Queued)?;
                    Ok(())
                })
                .await?;
            }
            Command::Permit {
                conv,
                message,
                option,
            } => {
                let me = self.me.clone();
                let mid = MessageId::new(message.clone())
                    .map_err(|e| anyhow!("bad message id {message:?}: {e}"))?;
                self.change(&conv, |c| {
                    c.answer_permission(&mid, &option, &me)?;
                    Ok(())
                })
                .await?;
            }
            Command::Cancel { conv } => {
                let (ep, paths, ev) = (self.ep.clone(), self.paths.clone(), self.events.clone());
                let node = self.node_of(&conv)?;
                tokio::spawn(async move {
                    if let Err(e) = tasks::cancel(&ep, &paths, &node, &conv).await {
                        ev.notice(Level::Error, "Cannot cancel", format!("{e:#}"));
                    }
                });
            }
            Command::Fork { conv, at } => {
                let at = MessageId::new(at).map_err(|e| anyhow!("bad message id: {e}"))?;
                let new_id = MessageId::random().to_string();
                let mut forked = match self.followed.as_mut().filter(|f| f.id == conv) {
                    Some(f) => f.conv.fork_at(&at, &new_id, &self.me)?,
                    None => self.replicas.load(&conv)?.fork_at(&at, &new_id, &self.me)?,
                };
                self.replicas.save(&mut forked)?;
                self.emit_convs();
                self.events.emit(Event::Opened(new_id.clone()));
                self.select(&new_id)?;
            }
            Command::NewConv {
                node,
                workspace,
                agent,
                title,
            } => {
                let id = MessageId::random().to_string();
                let mut conv = Conversation::create(
                    NewConversation {
                        id: id.clone(),
                        title: title.unwrap_or_else(|| format!("{agent} in {workspace}")),
                        agent,
                        workspace_node: node,
                        workspace_id: workspace,
                        created_at: sam_crdt::now_ms(),
                    },
                    &self.me,
                )?;
                self.replicas.save(&mut conv)?;
                self.emit_convs();
                self.events.emit(Event::Opened(id.clone()));
                self.select(&id)?;
            }
            Command::ListShares { node } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::spawn(async move { tasks::list_shares(&paths, &node, &ev).await });
            }
            Command::Share {
                node,
                role,
                to,
                expires,
            } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::spawn(async move {
                    tasks::share(&paths, &node, &role, to, expires, &ev).await;
                    tasks::list_shares(&paths, &node, &ev).await;
                });
            }
            Command::Revoke { node, id } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::spawn(async move {
                    match crate::cli::revoke(&paths, &id, Some(&node)).await {
                        Ok(_) => ev.notice(Level::Info, "Revoked", id),
                        Err(e) => ev.notice(Level::Error, "Cannot revoke", format!("{e:#}")),
                    }
                    tasks::list_shares(&paths, &node, &ev).await;
                });
            }
            Command::SaveKey { name, value } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::task::spawn_blocking(move || {
                    match super::keys::save(&paths, &name, &value) {
                        Ok(where_) => {
                            ev.notice(Level::Info, "Key saved", format!("{name}: {where_}"))
                        }
                        Err(e) => ev.notice(Level::Error, "Cannot save the key", format!("{e:#}")),
                    }
                    ev.emit(Event::Keys(super::keys::view(&paths)));
                });
            }
            Command::LoadKeys => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::task::spawn_blocking(move || {
                    ev.emit(Event::Keys(super::keys::view(&paths)))
                });
            }
            Command::OpenTerminal {
                node,
                workspace,
                rows,
                cols,
            } => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.term = Some(tx);
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::spawn(async move {
                    tasks::terminal(paths, node, workspace, rows, cols, rx, ev).await
                });
            }
            Command::TermInput(bytes) => {
                if let Some(t) = &self.term {
                    let _ = t.send(tasks::TermIn::Data(bytes));
                }
            }
            Command::TermResize { rows, cols } => {
                if let Some(t) = &self.term {
                    let _ = t.send(tasks::TermIn::Resize { rows, cols });
                }
            }
            Command::Desktop { title, body } => {
                tokio::spawn(tasks::desktop_notification(title, body));
            }
        }
        Ok(())
    }

    fn node_of(&mut self, conv: &str) -> Result<String> {
        if let Some(f) = self.followed.as_ref().filter(|f| f.id == conv) {
            return Ok(f.conv.workspace().node);
        }
        Ok(self.replicas.load(conv)?.workspace().node)
    }

    /// Follows `id`: loads its replica, shows it, dials its node.
    fn select(&mut self, id: &str) -> Result<()> {
        if self.followed.as_ref().is_some_and(|f| f.id == id) {
            self.snapshot();
            return Ok(());
        }
        self.followed = None;
        let conv = self.replicas.load(id)?;
        self.followed = Some(Followed {
            id: id.to_string(),
            conv,
            link: None,
            dialling: false,
            next_try: Instant::now(),
            dirty: true,
            last_emit: Instant::now() - SNAPSHOT_EVERY,
            queued: None,
        });
        self.snapshot();
        self.dial();
        Ok(())
    }

    /// Changes a conversation locally (saved at once), then pushes it when linked.
    async fn change(
        &mut self,
        id: &str,
        op: impl FnOnce(&mut Conversation) -> Result<()>,
    ) -> Result<()> {
        if self.followed.as_ref().is_none_or(|f| f.id != id) {
            self.select(id)?;
        }
        let Some(f) = self.followed.as_mut() else {
            bail!("conversation {id} is not open");
        };
        op(&mut f.conv)?;
        self.replicas.save(&mut f.conv)?;
        f.dirty = true;
        self.push().await;
        self.snapshot();
        Ok(())
    }

    /// Sends what the node lacks over the link; drops the link on failure.
    async fn push(&mut self) {
        let Some(f) = self.followed.as_mut() else {
            return;
        };
        let Some(link) = f.link.as_mut() else { return };
        while let Some(msg) = link.sync.generate(&mut f.conv) {
            if let Err(e) = write_frame(&mut link.send, &DocFrame::Sync(msg)).await {
                tracing::info!("doc link of {} broke: {e}", f.id);
                f.link = None;
                f.next_try = Instant::now() + RETRY_EVERY;
                self.events.emit(Event::Link {
                    conv: f.id.clone(),
                    online: false,
                });
                return;
            }
        }
    }

    fn dial(&mut self) {
        let Some(f) = self.followed.as_mut() else {
            return;
        };
        if f.link.is_some() || f.dialling {
            return;
        }
        let node = f.conv.workspace().node;
        let ticket = NodeBook::load(&self.paths.nodes())
            .ok()
            .and_then(|b| b.find(Some(&node)).ok().and_then(|e| e.ticket().ok()));
        let Some(ticket) = ticket else {
            f.next_try = Instant::now() + RETRY_EVERY * 10;
            return;
        };
        f.dialling = true;
        let (ep, id, internal) = (self.ep.clone(), f.id.clone(), self.internal.clone());
        tokio::spawn(async move {
            let link = open_link(&ep, &ticket, &id).await.map(Box::new);
            let _ = internal.send(Internal::Linked(id, link));
        });
    }

    async fn internal(&mut self, i: Internal) {
        match i {
            Internal::Linked(id, link) => {
                let Some(f) = self.followed.as_mut().filter(|f| f.id == id) else {
                    return;
                };
                f.dialling = false;
                match link {
                    Ok(link) => {
                        f.link = Some(*link);
                        self.events.emit(Event::Link {
                            conv: id,
                            online: true,
                        });
                        self.push().await;
                    }
                    Err(e) => {
                        tracing::info!("cannot link {id}: {e:#}");
                        f.next_try = Instant::now() + RETRY_EVERY;
                        self.events.emit(Event::Link {
                            conv: id,
                            online: false,
                        });
                    }
                }
            }
            Internal::NodeDown(node) => {
                if let Some(f) = self.followed.as_mut()
                    && f.link.is_some()
                    && f.conv.workspace().node == node
                {
                    f.link = None;
                    f.next_try = Instant::now() + RETRY_EVERY;
                    self.events.emit(Event::Link {
                        conv: f.id.clone(),
                        online: false,
                    });
                }
            }
            Internal::Fetched(conv) => {
                let mut conv = *conv;
                if !self.replicas.contains(&conv.id()) {
                    if let Err(e) = self.replicas.save(&mut conv) {
                        tracing::warn!("{e:#}");
                    }
                    self.emit_convs();
                }
            }
        }
    }

    async fn frame(&mut self, f: Option<Result<DocFrame, WireError>>) {
        let Some(fl) = self.followed.as_mut() else {
            return;
        };
        // Live batches need no answer unless one was missed.
        let mut answer = true;
        let broke = match f {
            Some(Ok(frame @ (DocFrame::Sync(_) | DocFrame::Live(_)))) => {
                let Some(link) = fl.link.as_mut() else { return };
                let applied = match &frame {
                    DocFrame::Live(first) => {
                        // Consecutive live batches already here are applied in one walk of
                        // the document and saved once (as `DocStream` does for the CLI).
                        let more = link.inbound.more_lives();
                        let lives: Vec<&[u8]> = std::iter::once(first.as_slice())
                            .chain(more.iter().map(Vec::as_slice))
                            .collect();
                        link.sync.receive_live_batches(&mut fl.conv, &lives)
                    }
                    DocFrame::Sync(bytes) => link.sync.receive(&mut fl.conv, bytes).map(|()| false),
                    DocFrame::Error(_) => Ok(false),
                };
                match applied {
                    Ok(_) if !fl.conv.is_empty() && fl.conv.id() != fl.id => Some(format!(
                        "the node sent a document that names itself {:?}: not kept",
                        fl.conv.id()
                    )),
                    Ok(complete) => {
                        answer = !complete;
                        if let Err(e) = self.replicas.save(&mut fl.conv) {
                            self.events
                                .notice(Level::Error, "Cannot save", format!("{e:#}"));
                        }
                        fl.dirty = true;
                        None
                    }
                    Err(e) => Some(format!("bad change from the node: {e}")),
                }
            }
            Some(Ok(DocFrame::Error(e))) => Some(format!("the node stopped syncing: {e}")),
            Some(Err(e)) => Some(format!("{e}")),
            None => Some("the node closed the stream".to_string()),
        };
        if let Some(why) = broke {
            tracing::info!("doc link of {}: {why}", fl.id);
            fl.link = None;
            fl.next_try = Instant::now() + RETRY_EVERY;
            self.events.emit(Event::Link {
                conv: fl.id.clone(),
                online: false,
            });
        } else if answer {
            self.push().await;
        }
    }

    fn tick(&mut self) {
        let Some(f) = self.followed.as_mut() else {
            return;
        };
        if f.dirty && f.last_emit.elapsed() >= SNAPSHOT_EVERY {
            self.snapshot();
        }
        if let Some(f) = self.followed.as_ref()
            && f.link.is_none()
            && !f.dialling
            && Instant::now() >= f.next_try
        {
            self.dial();
        }
    }

    /// Sends the followed conversation's messages to the UI.
    fn snapshot(&mut self) {
        let Some(f) = self.followed.as_mut() else {
            return;
        };
        f.dirty = false;
        f.last_emit = Instant::now();
        let messages = Arc::new(f.conv.messages());
        let queued = queued(&messages);
        if f.queued != Some((queued, messages.len())) {
            f.queued = Some((queued, messages.len()));
            let ws = f.conv.workspace();
            self.events.emit(Event::Conv(ConvSummary {
                id: f.id.clone(),
                title: f.conv.title(),
                agent: f.conv.agent(),
                node: ws.node,
                workspace: ws.id,
                parent: f.conv.parent().map(|p| p.conversation),
                created_at: f.conv.created_at(),
                messages: messages.len(),
                queued,
            }));
        }
        self.events.emit(Event::Messages {
            conv: f.id.clone(),
            messages,
            plan: f.conv.plan(),
        });
    }
}

/// The next frame of the followed conversation's link (pending without one).
async fn next_frame(f: &mut Option<Followed>) -> Option<Result<DocFrame, WireError>> {
    match f.as_mut().and_then(|f| f.link.as_mut()) {
        Some(link) => link.inbound.recv().await,
        None => std::future::pending().await,
    }
}

/// Opens `sam/doc/1` for one conversation (creating it on the node when it is new).
async fn open_link(ep: &Endpoint, ticket: &Ticket, id: &str) -> Result<Link> {
    let (conn, _) = crate::conn::connect(ep, ticket, alpn::DOC).await?;
    let (mut send, mut recv) = conn.open_bi().await.context("open a doc stream")?;
    let open = DocOpen {
        conversation: id.to_string(),
        create: true,
    };
    write_frame(&mut send, &open).await?;
    match read_frame::<OpenReply>(&mut recv, 64 * 1024).await {
        Ok(OpenReply::Ok) => {}
        Ok(OpenReply::Error(e)) => bail!("the node refused the conversation: {e}"),
        Err(e) => bail!("the node closed the doc stream: {e}"),
    }
    Ok(Link {
        send,
        inbound: Inbound::spawn(recv),
        sync: SyncPeer::new(),
        _conn: conn,
    })
}

/// A sidebar row for a conversation.
pub fn summary(c: &Conversation) -> ConvSummary {
    let msgs = c.messages();
    let ws = c.workspace();
    ConvSummary {
        id: c.id(),
        title: c.title(),
        agent: c.agent(),
        node: ws.node,
        workspace: ws.id,
        parent: c.parent().map(|p| p.conversation),
        created_at: c.created_at(),
        messages: msgs.len(),
        queued: queued(&msgs),
    }
}

fn queued(msgs: &[sam_crdt::MessageView]) -> usize {
    msgs.iter()
        .filter(|m| m.status == Status::Queued && m.role == Role::User)
        .count()
}
