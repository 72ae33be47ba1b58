//! `sam gui`: the native app (eframe/egui).
//!
//! Three layers, as in the style guide: a [`backend`] actor on tokio in a background
//! thread (nodes, conversations, terminal), a plain [`state::AppState`] updated only from
//! backend events, and view functions that read the state and emit
//! [`state::Command`]s. A second actor, [`tools`], does the workspace files, ports and
//! forwards, and voice (recording, transcription, speech, the player); the view queues its
//! [`tools::ToolCmd`]s in `AppState::tools_out`. The UI thread never awaits.

use anyhow::{Result, anyhow};

use crate::paths::ClientPaths;

pub mod backend;
mod chat;
pub mod files;
pub mod idea;
pub mod keys;
pub mod palette;
mod panels;
pub mod ports;
pub mod relocate;
pub mod state;
mod terminal;
pub mod tools;
mod view;
pub mod voice;

pub use backend::BackendHandle;
pub use state::{AppState, Command, Event};
pub use tools::{ToolsHandle, VoiceIo};

/// The app: the state, the backend, and view-only caches.
pub struct GuiApp {
    pub state: AppState,
    backend: BackendHandle,
    tools: ToolsHandle,
    paths: ClientPaths,
    chat: chat::ChatCache,
    panels: panels::Panels,
    /// Frames drawn (for tests and the benchmark).
    pub frames: u64,
}

impl GuiApp {
    /// Starts the backend for `paths`, with the microphone and the sound card (or the
    /// stand-in files named by `SAM_VOICE_INPUT_WAV` / `SAM_VOICE_OUTPUT_WAV`).
    pub fn new(paths: ClientPaths) -> Result<Self> {
        Self::with_voice(paths, VoiceIo::from_env())
    }

    /// Starts the backend for `paths` with the given audio input and output.
    pub fn with_voice(paths: ClientPaths, voice: VoiceIo) -> Result<Self> {
        let backend = BackendHandle::start(paths.clone())?;
        let tools = ToolsHandle::start(paths.clone(), voice)?;
        let mut state = AppState {
            prefs: load_prefs(&paths),
            ..AppState::default()
        };
        // `SAM_GUI_OPEN=<conversation id>` opens it at start (screenshots, links).
        if let Ok(id) = std::env::var("SAM_GUI_OPEN")
            && !id.is_empty()
        {
            backend.send(state.select(&id));
        }
        Ok(Self {
            state,
            backend,
            tools,
            paths,
            chat: chat::ChatCache::default(),
            panels: panels::Panels::default(),
            frames: 0,
        })
    }

    /// Message rows laid out in the last frame (only the visible ones).
    pub fn laid_out(&self) -> usize {
        self.chat.laid_out
    }

    /// Sends a command to the backend.
    pub fn send(&self, cmd: Command) {
        self.backend.send(cmd);
    }

    /// Applies every pending backend and tools event.
    pub fn drain_events(&mut self) {
        for ev in self.tools.poll() {
            tools::apply(&mut self.state, ev);
        }
        for cmd in std::mem::take(&mut self.state.backend_out) {
            self.backend.send(cmd);
        }
        for ev in self.backend.poll() {
            let messages_of = match &ev {
                Event::Messages { conv, .. } => Some(conv.clone()),
                _ => None,
            };
            let fresh = self.state.apply(ev);
            if let Some(conv) = messages_of
                && self.state.selected.as_deref() == Some(conv.as_str())
            {
                let msgs = self.state.messages.clone();
                let news = self.state.voice.auto_read_news(&conv, &msgs);
                self.state.tools_out.extend(news);
            }
            if self.state.prefs.desktop_notifications {
                for n in fresh {
                    if n.level != state::Level::Info || n.title == "Agent finished" {
                        self.backend.send(Command::Desktop {
                            title: n.title,
                            body: n.body,
                        });
                    }
                }
            }
        }
    }

    /// One frame: events in, UI out, commands to the backend.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.frames += 1;
        self.backend.set_ctx(ui.ctx());
        self.tools.set_ctx(ui.ctx());
        self.drain_events();
        let prefs_before = self.state.prefs.clone();
        ui.ctx().set_theme(if self.state.prefs.dark {
            egui::Theme::Dark
        } else {
            egui::Theme::Light
        });
        let mut out = Vec::new();
        view::show(
            ui,
            &mut self.state,
            &mut self.chat,
            &mut self.panels,
            &mut out,
        );
        out.append(&mut self.state.backend_out);
        for cmd in out {
            self.backend.send(cmd);
        }
        for cmd in std::mem::take(&mut self.state.tools_out) {
            self.tools.send(cmd);
        }
        if self.state.prefs != prefs_before {
            save_prefs(&self.paths, &self.state.prefs);
        }
        // Toasts expire by time: look again soon while any is showing.
        if self.state.notifications.iter().any(|n| !n.dismissed) {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(500));
        }
    }
}

impl eframe::App for GuiApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        GuiApp::ui(self, ui);
    }
}

fn prefs_path(paths: &ClientPaths) -> std::path::PathBuf {
    paths.home.join("gui.toml")
}

fn load_prefs(paths: &ClientPaths) -> state::Prefs {
    std::fs::read_to_string(prefs_path(paths))
        .ok()
        .and_then(|s| toml::from_str(&s).ok())
        .unwrap_or_default()
}

fn save_prefs(paths: &ClientPaths, prefs: &state::Prefs) {
    if let Ok(s) = toml::to_string(prefs) {
        let _ = std::fs::create_dir_all(&paths.home);
        if let Err(e) = std::fs::write(prefs_path(paths), s) {
            tracing::warn!("cannot save GUI settings: {e}");
        }
    }
}

/// A graphical display is there (X11 or Wayland).
pub fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Opens the window and runs until it is closed. Call it on the main thread (winit
/// wants its event loop there); it blocks, and it may be called inside `block_on`.
pub fn run_gui(paths: ClientPaths) -> Result<()> {
    if !display_available() {
        anyhow::bail!(
            "no display: set DISPLAY (X11) or WAYLAND_DISPLAY, or use the CLI (`sam chat`, `sam log`)"
        );
    }
    let app = GuiApp::new(paths)?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("SAM")
            .with_app_id("sam")
            .with_inner_size([1200.0, 780.0])
            .with_min_inner_size([640.0, 400.0]),
        ..Default::default()
    };
    eframe::run_native("SAM", options, Box::new(|_cc| Ok(Box::new(app))))
        .map_err(|e| anyhow!("the window failed: {e}"))
}
