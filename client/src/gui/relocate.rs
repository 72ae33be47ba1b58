//! "Continue on another node…": a conversation whose node does not answer moves to a node
//! of the book or to a provider's warm pool, by the same flow as `sam move`
//! ([`crate::cli::relocate::run`]) on the tools worker. The id, the history and the forks
//! stay; the new node's agent is seeded from the document.

use egui::{Color32, RichText};

use super::idea::{PROVIDERS, Place};
use super::state::{AppState, Command, Level, Notification};
use super::tools::ToolCmd;
use crate::cli::relocate::MoveArgs;

/// The dialog and its run.
#[derive(Debug, Clone, Default)]
pub struct MoveView {
    /// The conversation being moved (the dialog is open while `Some`).
    pub conv: Option<String>,
    /// Where to (`None` until picked).
    pub place: Option<Place>,
    /// A workspace on the new node to use instead of creating one.
    pub workspace: String,
    pub lightweight: bool,
    pub running: Option<u64>,
    pub runs: u64,
    /// The last run's outcome: what the move did, or the error.
    pub outcome: Option<Result<String, String>>,
}

impl MoveView {
    /// Opens the dialog for `conv`.
    pub fn open(&mut self, conv: &str) {
        if self.running.is_some() {
            return;
        }
        if self.conv.as_deref() != Some(conv) {
            *self = Self {
                runs: self.runs,
                ..Self::default()
            };
        }
        self.conv = Some(conv.to_string());
        self.outcome = None;
    }

    /// Move: the command for the tools worker once a target is picked.
    pub fn start(&mut self) -> Option<ToolCmd> {
        if self.running.is_some() {
            return None;
        }
        let conv = self.conv.clone()?;
        let (node, provider) = match self.place.clone() {
            Some(Place::Node(n)) => (Some(n), None),
            Some(Place::Provider(p)) => (None, Some(p)),
            None => {
                self.outcome = Some(Err("Pick a node or a provider to move to.".into()));
                return None;
            }
        };
        self.outcome = None;
        self.runs += 1;
        self.running = Some(self.runs);
        Some(ToolCmd::Move {
            run: self.runs,
            req: Box::new(MoveRequest {
                conv,
                node,
                provider,
                workspace: Some(self.workspace.trim().to_string()).filter(|w| !w.is_empty()),
                lightweight: self.lightweight,
            }),
        })
    }
}

/// What the tools worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRequest {
    pub conv: String,
    pub node: Option<String>,
    pub provider: Option<String>,
    pub workspace: Option<String>,
    pub lightweight: bool,
}

impl MoveRequest {
    pub fn into_args(self) -> MoveArgs {
        MoveArgs {
            conv: self.conv,
            node: self.node,
            provider: self.provider,
            workspace: self.workspace,
            lightweight: self.lightweight,
            ..MoveArgs::default()
        }
    }
}

/// Applies the end of a move: a notification, and the conversation followed again at its
/// new node.
pub fn apply(state: &mut AppState, run: u64, result: Result<serde_json::Value, String>) {
    if state.moving.running != Some(run) {
        return;
    }
    state.moving.running = None;
    match result {
        Ok(json) => {
            let to = json["to"]["name"].as_str().unwrap_or("the new node");
            let ws = json["to"]["workspace"].as_str().unwrap_or("?");
            let mut text = format!("Moved to {to} (workspace {ws})");
            if json["sent"] == serde_json::json!(false) {
                text.push_str("; not sent to the node yet (it is saved here)");
            }
            state.apply(super::state::Event::Notice(Notification::new(
                Level::Info,
                text.clone(),
                state.title_of(json["id"].as_str().unwrap_or_default()),
            )));
            state.backend_out.push(Command::Refresh);
            if let Some(id) = json["id"].as_str() {
                state.select(id);
                state.backend_out.push(Command::Reopen(id.to_string()));
            }
            state.moving.outcome = Some(Ok(text));
        }
        Err(e) => {
            state.apply(super::state::Event::Notice(Notification::new(
                Level::Error,
                "Move failed",
                e.clone(),
            )));
            state.moving.outcome = Some(Err(e));
        }
    }
}

/// The selected conversation's node does not answer.
pub fn node_down(state: &AppState) -> bool {
    state.selected_conv().is_some_and(|c| {
        state
            .nodes
            .iter()
            .find(|n| n.id == c.node)
            .is_some_and(|n| n.reachable == Some(false))
    })
}

/// The dialog.
pub fn dialog(ctx: &egui::Context, state: &mut AppState) {
    let Some(conv) = state.moving.conv.clone() else {
        return;
    };
    let mut open = true;
    let title = state.title_of(&conv);
    let from = state
        .convs
        .iter()
        .find(|c| c.id == conv)
        .map(|c| c.node.clone())
        .unwrap_or_default();
    let nodes = state.nodes.clone();
    let mut start = false;
    egui::Window::new("Continue on another node")
        .open(&mut open)
        .collapsible(false)
        .show(ctx, |ui| {
            let m = &mut state.moving;
            let running = m.running.is_some();
            ui.label(format!(
                "Moves \"{title}\" off {}: the history stays, a new agent picks it up there.",
                nodes
                    .iter()
                    .find(|n| n.id == from)
                    .map(|n| n.name.as_str())
                    .unwrap_or("its node")
            ));
            ui.add_enabled_ui(!running, |ui| {
                ui.label("Move to");
                for n in nodes.iter().filter(|n| n.id != from) {
                    let state = match n.reachable {
                        Some(true) => "reachable",
                        Some(false) => "offline",
                        None => "checking",
                    };
                    ui.radio_value(
                        &mut m.place,
                        Some(Place::Node(n.id.clone())),
                        format!("Node: {} ({state})", n.name),
                    );
                }
                ui.horizontal_wrapped(|ui| {
                    for p in PROVIDERS {
                        ui.radio_value(
                            &mut m.place,
                            Some(Place::Provider(p.to_string())),
                            format!("Provider: {p}"),
                        )
                        .on_hover_text("a node from this provider's warm pool");
                    }
                });
                let l = ui.label("Workspace on the new node (optional; default: a new one)");
                ui.text_edit_singleline(&mut m.workspace).labelled_by(l.id);
                ui.checkbox(
                    &mut m.lightweight,
                    "Lightweight workspace (base image, no devcontainer)",
                );
                start = ui.button("Move").clicked();
            });
            if running {
                ui.horizontal(|ui| {
                    ui.add(egui::Spinner::new());
                    ui.label("Moving (sam move)…");
                });
            }
            match &m.outcome {
                Some(Ok(t)) => {
                    ui.label(RichText::new(t).strong());
                }
                Some(Err(e)) => {
                    ui.colored_label(Color32::from_rgb(230, 80, 70), format!("Failed: {e}"));
                }
                None => {}
            }
        });
    if start && let Some(cmd) = state.moving.start() {
        state.tools_out.push(cmd);
    }
    if !open {
        // A run goes on; its end still comes as a notification.
        state.moving.conv = None;
    }
}
