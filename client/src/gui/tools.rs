//! The GUI's second worker: workspace files, ports and forwards, and voice (recording,
//! transcription, speech and the player). Like the [`super::backend`], an actor on its own
//! tokio runtime in a background thread: the UI pushes [`ToolCmd`]s into
//! `AppState::tools_out`, the app hands them over after each frame, and results come back
//! as [`ToolEvent`]s that wake the UI. Nothing here is awaited by the UI thread.
//!
//! Network work opens a fresh connection per request on one shared endpoint, so a slow or
//! unreachable node never holds up the microphone or the player.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use sam_protocol::workspace::{FileEntry, PortInfo};
use tokio::sync::mpsc;

use super::state::AppState;
use crate::paths::ClientPaths;
use crate::voice::{
    self, Clip, DeviceSink, FileSink, InputSource, Player, PlayerEvent, Recorder, Recording, Sink,
    VoiceConfig, VoiceError,
};

mod remote;
mod speech;

/// Largest file the viewer reads (bigger ones: download them).
pub const VIEW_MAX: u64 = 1 << 20;
/// Entries listed per directory.
pub const LIST_LIMIT: u32 = 2000;

/// A workspace: `(node id, workspace id)`.
pub type Ws = (String, String);

/// What the UI asks the tools worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCmd {
    /// One directory of a workspace (`""` is the root).
    List {
        ws: Ws,
        path: String,
    },
    /// A file's contents for the viewer.
    Read {
        ws: Ws,
        path: String,
    },
    /// `git diff` of the working tree against HEAD, or against the merge base with `base`.
    Diff {
        ws: Ws,
        base: Option<String>,
        path: Option<String>,
    },
    /// Uploads a local file or folder into the workspace folder `remote`.
    Upload {
        ws: Ws,
        local: PathBuf,
        remote: String,
    },
    /// Downloads `remote` into the local folder `local`.
    Download {
        ws: Ws,
        remote: String,
        local: PathBuf,
    },
    /// Watches a workspace's listening ports (replaces the previous watch).
    WatchPorts(Ws),
    StopPorts,
    /// Forwards `127.0.0.1:<port or any>` to `port` in the workspace.
    Forward {
        ws: Ws,
        port: u16,
    },
    Unforward {
        port: u16,
    },
    /// Starts recording a prompt.
    RecordStart,
    /// Stops recording and transcribes.
    RecordStop,
    /// Reads a message aloud: `now` plays it at once, else it joins the queue.
    Speak {
        id: String,
        label: String,
        markdown: String,
        now: bool,
    },
    Player(PlayerCtl),
    /// Turns "auto-read new answers" on or off (saved in voice.toml).
    AutoRead(bool),
    LoadVoiceSettings,
    SaveVoiceSettings(super::voice::VoiceForm),
    /// Runs `sam idea` (numbered `run`): progress and the end come as [`ToolEvent::Idea`].
    Idea {
        run: u64,
        req: Box<super::idea::IdeaRequest>,
    },
    /// Asks run `run` of `sam idea` to stop: the first time at its next safe point, with
    /// clean-up (as Ctrl-C does in the CLI); again, at once.
    CancelIdea {
        run: u64,
    },
    /// Runs `sam move` (numbered `run`): the end comes as [`ToolEvent::Move`].
    Move {
        run: u64,
        req: Box<super::relocate::MoveRequest>,
    },
}

/// Player buttons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlayerCtl {
    Toggle,
    Skip,
    Clear,
    Speed(f32),
}

/// What the tools worker reports.
#[derive(Debug, Clone)]
pub enum ToolEvent {
    Listing {
        ws: Ws,
        path: String,
        result: Result<(Vec<FileEntry>, bool), String>,
    },
    File {
        ws: Ws,
        path: String,
        result: Result<FileData, String>,
    },
    Diff {
        ws: Ws,
        title: String,
        result: Result<(String, bool), String>,
    },
    /// An upload or download finished (`what` says which).
    Transfer {
        what: String,
        result: Result<String, String>,
    },
    Ports {
        ws: Ws,
        result: Result<Vec<PortInfo>, String>,
    },
    /// A forward is listening (`Ok(local address)`), failed, or stopped (`None`).
    Forward {
        port: u16,
        state: Option<Result<String, String>>,
    },
    /// Voice settings at start.
    VoiceConfig {
        auto_read: bool,
        speed: f32,
    },
    Recording(bool),
    Level(f32),
    Transcribing,
    /// The transcript, or why there is none (the recording kept on disk when possible).
    Transcript(Result<String, String>),
    /// Speech is being made for a message (`+1`) or is done (`-1`).
    Synth(i32),
    Player(PlayerEvent),
    /// A voice error worth telling the user.
    VoiceError(String),
    /// The voice settings form, and the outcome of a save when this answers one.
    VoiceSettings {
        form: super::voice::VoiceForm,
        saved: Option<Result<String, String>>,
    },
    /// Progress or the end of an idea run.
    Idea {
        run: u64,
        ev: super::idea::IdeaEvent,
    },
    /// The end of a move: `sam move`'s JSON output, or the error.
    Move {
        run: u64,
        result: Result<serde_json::Value, String>,
    },
}

/// A file read for the viewer.
#[derive(Debug, Clone, PartialEq)]
pub struct FileData {
    pub data: Vec<u8>,
    pub size: u64,
    pub truncated: bool,
}

/// Where recordings come from and playback goes: the sound card, or files for headless
/// machines and tests.
#[derive(Debug, Clone)]
pub struct VoiceIo {
    pub input: InputSource,
    /// `None`: the sound card; else a WAV file, written in real time.
    pub output: Option<PathBuf>,
}

impl VoiceIo {
    /// The microphone and the sound card, unless `SAM_VOICE_INPUT_WAV` / `SAM_VOICE_OUTPUT_WAV`
    /// name stand-in files (headless demos and screenshots).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            input: match var("SAM_VOICE_INPUT_WAV") {
                Some(path) => InputSource::WavFile {
                    path,
                    realtime: true,
                },
                None => InputSource::Microphone,
            },
            output: var("SAM_VOICE_OUTPUT_WAV"),
        }
    }
}

/// Sends events to the UI and wakes it.
#[derive(Clone)]
struct Events {
    tx: std::sync::mpsc::Sender<ToolEvent>,
    ctx: Arc<OnceLock<egui::Context>>,
}

impl Events {
    fn emit(&self, ev: ToolEvent) {
        let _ = self.tx.send(ev);
        if let Some(ctx) = self.ctx.get() {
            ctx.request_repaint();
        }
    }
}

/// The UI's side of the tools worker.
pub struct ToolsHandle {
    tx: mpsc::UnboundedSender<ToolCmd>,
    rx: std::sync::mpsc::Receiver<ToolEvent>,
    ctx: Arc<OnceLock<egui::Context>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ToolsHandle {
    pub fn start(paths: ClientPaths, io: VoiceIo) -> Result<Self> {
        let (tx, cmds) = mpsc::unbounded_channel();
        let (etx, rx) = std::sync::mpsc::channel();
        let ctx = Arc::new(OnceLock::new());
        let events = Events {
            tx: etx,
            ctx: ctx.clone(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("sam-gui-tools")
            .build()
            .context("start the GUI's tools runtime")?;
        let thread = std::thread::Builder::new()
            .name("sam-gui-tools".into())
            .spawn(move || {
                rt.block_on(Tools::run(paths, io, events, cmds));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("start the GUI's tools thread")?;
        Ok(Self {
            tx,
            rx,
            ctx,
            thread: Some(thread),
        })
    }

    pub fn set_ctx(&self, ctx: &egui::Context) {
        if self.ctx.get().is_none() {
            let _ = self.ctx.set(ctx.clone());
        }
    }

    pub fn send(&self, cmd: ToolCmd) {
        let _ = self.tx.send(cmd);
    }

    pub fn poll(&self) -> Vec<ToolEvent> {
        self.rx.try_iter().collect()
    }
}

impl Drop for ToolsHandle {
    fn drop(&mut self) {
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The actor.
struct Tools {
    paths: ClientPaths,
    io: VoiceIo,
    events: Events,
    ep: Option<iroh::Endpoint>,
    recording: Option<Recording>,
    player: Option<Arc<Player>>,
    speed: f32,
    ports: Option<tokio::task::AbortHandle>,
    forwards: HashMap<u16, tokio::task::AbortHandle>,
    /// The stop buttons of the running ideas, by run.
    idea_stops: HashMap<u64, tokio::sync::watch::Sender<u32>>,
}

impl Tools {
    async fn run(
        paths: ClientPaths,
        io: VoiceIo,
        events: Events,
        mut cmds: mpsc::UnboundedReceiver<ToolCmd>,
    ) {
        let cfg = VoiceConfig::load(&paths).unwrap_or_else(|e| {
            events.emit(ToolEvent::VoiceError(e.to_string()));
            VoiceConfig::default()
        });
        let speed = cfg.speed.unwrap_or(1.0).clamp(
            *voice::player::SPEED_RANGE.start(),
            *voice::player::SPEED_RANGE.end(),
        );
        events.emit(ToolEvent::VoiceConfig {
            auto_read: cfg.auto_read,
            speed,
        });
        let mut tools = Tools {
            paths,
            io,
            events,
            ep: None,
            recording: None,
            player: None,
            speed,
            ports: None,
            forwards: HashMap::new(),
            idea_stops: HashMap::new(),
        };
        while let Some(c) = cmds.recv().await {
            tools.command(c).await;
        }
        if let Some(p) = tools.ports.take() {
            p.abort();
        }
        for (_, f) in tools.forwards.drain() {
            f.abort();
        }
        if let Some(ep) = tools.ep.take() {
            ep.close().await;
        }
    }

    async fn endpoint(&mut self) -> Result<iroh::Endpoint> {
        if let Some(ep) = &self.ep {
            return Ok(ep.clone());
        }
        let key = self.paths.identity()?;
        let ep = crate::endpoint::bind(&key, None).await?;
        self.ep = Some(ep.clone());
        Ok(ep)
    }

    async fn command(&mut self, c: ToolCmd) {
        match c {
            ToolCmd::List { .. }
            | ToolCmd::Read { .. }
            | ToolCmd::Diff { .. }
            | ToolCmd::Upload { .. }
            | ToolCmd::Download { .. } => {
                let ep = self.endpoint().await;
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::spawn(async move { remote::files(ep, paths, ev, c).await });
            }
            ToolCmd::WatchPorts(ws) => {
                if let Some(p) = self.ports.take() {
                    p.abort();
                }
                let ep = self.endpoint().await;
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                let task =
                    tokio::spawn(async move { remote::watch_ports(ep, paths, ev, ws).await });
                self.ports = Some(task.abort_handle());
            }
            ToolCmd::StopPorts => {
                if let Some(p) = self.ports.take() {
                    p.abort();
                }
            }
            ToolCmd::Forward { ws, port } => {
                if let Some(old) = self.forwards.remove(&port) {
                    old.abort();
                }
                let ep = self.endpoint().await;
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                let task = tokio::spawn(async move {
                    let r = remote::forward(ep, &paths, &ev, ws, port).await;
                    let state = match r {
                        Ok(()) => None,
                        Err(e) => Some(Err(format!("{e:#}"))),
                    };
                    ev.emit(ToolEvent::Forward { port, state });
                });
                self.forwards.insert(port, task.abort_handle());
            }
            ToolCmd::Unforward { port } => {
                if let Some(f) = self.forwards.remove(&port) {
                    f.abort();
                }
                self.events.emit(ToolEvent::Forward { port, state: None });
            }
            ToolCmd::Idea { run, req } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                let (stop, stops) = tokio::sync::watch::channel(0u32);
                self.idea_stops.retain(|_, s| !s.is_closed());
                self.idea_stops.insert(run, stop);
                // The flow's future is not `Send` (it follows the conversation with local
                // state): it runs on a blocking thread of this runtime, driven by its handle.
                tokio::task::spawn_blocking(move || run_idea(paths, ev, run, *req, stops));
            }
            ToolCmd::CancelIdea { run } => {
                if let Some(stop) = self.idea_stops.get(&run) {
                    stop.send_modify(|n| *n += 1);
                }
            }
            ToolCmd::Move { run, req } => {
                let (paths, ev) = (self.paths.clone(), self.events.clone());
                tokio::task::spawn_blocking(move || {
                    let rt = tokio::runtime::Handle::current();
                    let r = rt.block_on(crate::cli::relocate::run(&paths, req.into_args()));
                    ev.emit(ToolEvent::Move {
                        run,
                        result: r.map(|o| o.json).map_err(|e| format!("{e:#}")),
                    });
                });
            }
            ToolCmd::RecordStart => self.record_start().await,
            ToolCmd::RecordStop => self.record_stop().await,
            ToolCmd::Speak {
                id,
                label,
                markdown,
                now,
            } => self.speak(id, label, markdown, now),
            ToolCmd::Player(ctl) => {
                if let Some(p) = &self.player {
                    match ctl {
                        PlayerCtl::Toggle => p.toggle(),
                        PlayerCtl::Skip => p.skip(),
                        PlayerCtl::Clear => p.clear(),
                        PlayerCtl::Speed(s) => {
                            p.set_speed(s);
                        }
                    }
                }
                if let PlayerCtl::Speed(s) = ctl {
                    self.speed = s;
                    self.save_config(|c| c.speed = Some(s));
                }
            }
            ToolCmd::AutoRead(on) => self.save_config(|c| c.auto_read = on),
            ToolCmd::LoadVoiceSettings => match VoiceConfig::load(&self.paths) {
                Ok(c) => self.events.emit(ToolEvent::VoiceSettings {
                    form: super::voice::VoiceForm::of(&c),
                    saved: None,
                }),
                Err(e) => self.events.emit(ToolEvent::VoiceSettings {
                    form: super::voice::VoiceForm::of(&VoiceConfig::default()),
                    saved: Some(Err(format!("{e} (saving writes a fresh file)"))),
                }),
            },
            ToolCmd::SaveVoiceSettings(form) => {
                let path = VoiceConfig::path(&self.paths);
                let r = VoiceConfig::load(&self.paths)
                    .or_else(|_| Ok::<_, VoiceError>(VoiceConfig::default()))
                    .and_then(|mut c| {
                        form.apply_to(&mut c);
                        c.save(&self.paths).map(|()| c)
                    });
                let (form, saved) = match r {
                    Ok(c) => (
                        super::voice::VoiceForm::of(&c),
                        Ok(format!("saved in {}", path.display())),
                    ),
                    Err(e) => (form, Err(format!("cannot save: {e}"))),
                };
                self.events.emit(ToolEvent::VoiceSettings {
                    form,
                    saved: Some(saved),
                });
            }
        }
    }

    fn save_config(&self, change: impl FnOnce(&mut VoiceConfig)) {
        let r = VoiceConfig::load(&self.paths).and_then(|mut c| {
            change(&mut c);
            c.save(&self.paths)
        });
        if let Err(e) = r {
            self.events.emit(ToolEvent::VoiceError(format!(
                "cannot save voice settings: {e}"
            )));
        }
    }

    async fn record_start(&mut self) {
        if self.recording.is_some() {
            return;
        }
        let recorder = Recorder::new(self.io.input.clone());
        let ev = self.events.clone();
        // Opening a sound card can block: off the runtime's worker.
        let started = tokio::task::spawn_blocking(move || {
            recorder.start(move |level| ev.emit(ToolEvent::Level(level)))
        })
        .await;
        match started {
            Ok(Ok(rec)) => {
                self.recording = Some(rec);
                self.events.emit(ToolEvent::Recording(true));
            }
            Ok(Err(e)) => {
                self.events.emit(ToolEvent::Recording(false));
                self.events
                    .emit(ToolEvent::Transcript(Err(format!("cannot record: {e}"))));
            }
            Err(e) => {
                self.events.emit(ToolEvent::Recording(false));
                self.events
                    .emit(ToolEvent::Transcript(Err(format!("cannot record: {e}"))));
            }
        }
    }

    async fn record_stop(&mut self) {
        let Some(rec) = self.recording.take() else {
            return;
        };
        self.events.emit(ToolEvent::Recording(false));
        let audio = match tokio::task::spawn_blocking(move || rec.stop()).await {
            Ok(a) => a,
            Err(e) => {
                self.events.emit(ToolEvent::Transcript(Err(format!(
                    "the recording failed: {e}"
                ))));
                return;
            }
        };
        self.events.emit(ToolEvent::Transcribing);
        let (paths, ev) = (self.paths.clone(), self.events.clone());
        tokio::spawn(async move {
            let r = speech::transcribe(&paths, &audio).await;
            ev.emit(ToolEvent::Transcript(r));
        });
    }

    /// The player, started on first use.
    fn player(&mut self) -> Result<Arc<Player>, VoiceError> {
        if let Some(p) = &self.player {
            return Ok(p.clone());
        }
        let sink: Box<dyn Sink> = match &self.io.output {
            Some(path) => Box::new(speech::Paced::new(FileSink::create(path, 24_000)?)),
            None => Box::new(DeviceSink::open()?),
        };
        let ev = self.events.clone();
        let p = Arc::new(Player::spawn(sink, move |e| ev.emit(ToolEvent::Player(e)))?);
        p.set_speed(self.speed);
        self.player = Some(p.clone());
        Ok(p)
    }

    fn speak(&mut self, id: String, label: String, markdown: String, now: bool) {
        let player = match self.player() {
            Ok(p) => p,
            Err(e) => {
                self.events.emit(ToolEvent::VoiceError(format!(
                    "cannot play: {e} (set SAM_VOICE_OUTPUT_WAV=FILE.wav to write speech to a file)"
                )));
                return;
            }
        };
        let (paths, ev) = (self.paths.clone(), self.events.clone());
        ev.emit(ToolEvent::Synth(1));
        tokio::spawn(async move {
            match speech::speak(&paths, &markdown).await {
                Ok(audio) => {
                    let clip = Clip { id, label, audio };
                    if now {
                        player.play_now(clip);
                    } else {
                        player.enqueue(clip);
                    }
                }
                Err(e) => ev.emit(ToolEvent::VoiceError(format!("cannot read aloud: {e:#}"))),
            }
            ev.emit(ToolEvent::Synth(-1));
        });
    }
}

/// Runs `sam idea` to its end on this (blocking) thread; progress lines go to the UI as
/// they are printed.
fn run_idea(
    paths: ClientPaths,
    events: Events,
    run: u64,
    req: super::idea::IdeaRequest,
    stops: tokio::sync::watch::Receiver<u32>,
) {
    use super::idea::IdeaEvent;
    let rt = tokio::runtime::Handle::current();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let ev = events.clone();
    let forward = rt.spawn(async move {
        while let Some(line) = rx.recv().await {
            ev.emit(ToolEvent::Idea {
                run,
                ev: IdeaEvent::Step(line),
            });
        }
    });
    let result = rt.block_on(crate::cli::idea::with_progress(
        tx,
        crate::cli::idea::idea_with(
            &paths,
            req.into_args(),
            crate::cli::idea::Interrupts::from_watch(stops, "Cancel"),
        ),
    ));
    // Every step line before the end.
    let _ = rt.block_on(forward);
    events.emit(ToolEvent::Idea {
        run,
        ev: IdeaEvent::Done(result.map(|o| o.json).map_err(|e| format!("{e:#}"))),
    });
}

/// Applies a tools event to the UI state.
pub fn apply(state: &mut AppState, ev: ToolEvent) {
    match ev {
        ToolEvent::Idea { run, ev } => super::idea::apply(state, run, ev),
        ToolEvent::Move { run, result } => super::relocate::apply(state, run, result),
        ToolEvent::Listing { .. }
        | ToolEvent::File { .. }
        | ToolEvent::Diff { .. }
        | ToolEvent::Transfer { .. } => state.files.apply(ev),
        ToolEvent::Ports { .. } | ToolEvent::Forward { .. } => state.ports.apply(ev),
        ToolEvent::Transcript(Ok(text)) => {
            state.voice.transcribing = false;
            state.voice.error = None;
            if !state.prompt.trim().is_empty() && !state.prompt.ends_with(char::is_whitespace) {
                state.prompt.push(' ');
            }
            state.prompt.push_str(text.trim());
        }
        ev => {
            // Voice failures also go to the notifications (the prompt box may not show).
            let failure = match &ev {
                ToolEvent::Transcript(Err(e)) => Some(("Transcription failed", e.clone())),
                ToolEvent::VoiceError(e) => Some(("Voice", e.clone())),
                ToolEvent::Player(PlayerEvent::Error(e)) => Some(("Playback failed", e.clone())),
                _ => None,
            };
            if let Some((title, body)) = failure {
                state.apply(super::state::Event::Notice(
                    super::state::Notification::new(super::state::Level::Error, title, body),
                ));
            }
            state.voice.apply(ev);
        }
    }
}
