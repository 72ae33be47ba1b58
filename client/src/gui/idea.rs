//! The "New idea" dialog: an idea, a repository and a place to run it, handed to the
//! same flow as `sam idea` ([`crate::cli::idea::idea`]) on the tools worker. Its progress
//! lines come back as [`IdeaEvent::Step`]s; the end as [`IdeaEvent::Done`] (the PR URL and
//! the conversation, or the error naming the step that failed).

use egui::{Color32, RichText};

use super::state::{AGENTS, AppState, Command, Level, Notification};
use super::tools::ToolCmd;
use crate::cli::idea::IdeaArgs;

/// Providers offered for a fresh node from a warm pool.
pub const PROVIDERS: &[&str] = &["local", "hetzner", "scaleway"];
/// Node sizes of the pools (`--size`; each provider maps them to its server types).
pub const SIZES: &[&str] = &["small", "medium", "large"];

/// Where the idea runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A node from this provider's warm pool (`--provider`).
    Provider(String),
    /// A node in the book, by id (`--node`).
    Node(String),
}

/// The form's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdeaForm {
    pub idea: String,
    pub repo: String,
    pub base: String,
    /// One of [`AGENTS`] or `custom`.
    pub agent: String,
    /// The ACP command of the `custom` agent.
    pub agent_cmd: String,
    pub place: Place,
    pub lightweight: bool,
    /// Node size when the node comes from a provider's pool.
    pub size: String,
    /// Keep the workspace and the pool node after the PR, for follow-up prompts.
    pub keep: bool,
}

impl IdeaForm {
    pub fn new(default_agent: &str) -> Self {
        Self {
            idea: String::new(),
            repo: String::new(),
            base: "main".into(),
            agent: default_agent.to_string(),
            agent_cmd: String::new(),
            place: Place::Provider("local".into()),
            lightweight: false,
            size: "small".into(),
            keep: false,
        }
    }

    /// The flow's arguments, or what is wrong with the form (nothing runs then).
    pub fn args(&self) -> Result<IdeaRequest, String> {
        let idea = self.idea.trim();
        if idea.is_empty() {
            return Err("The idea is empty: describe what the agent should do.".into());
        }
        check_repo(&self.repo)?;
        let base = self.base.trim();
        if base.is_empty() || base.starts_with('-') || base.contains(char::is_whitespace) {
            return Err(format!(
                "Base branch {base:?} is not a branch name (e.g. main)."
            ));
        }
        let agent_cmd = self.agent_cmd.trim();
        if self.agent == "custom" && agent_cmd.is_empty() {
            return Err(
                "The custom agent needs its command (an ACP agent, e.g. `my-agent --acp`).".into(),
            );
        }
        let (node, provider, size) = match &self.place {
            Place::Node(id) if id.is_empty() => return Err("Pick a node or a provider.".into()),
            Place::Node(id) => (Some(id.clone()), None, None),
            Place::Provider(p) => {
                if !SIZES.contains(&self.size.as_str()) {
                    return Err(format!(
                        "Size {:?} is not one of {}.",
                        self.size,
                        SIZES.join(", ")
                    ));
                }
                (None, Some(p.clone()), Some(self.size.clone()))
            }
        };
        Ok(IdeaRequest {
            idea: idea.to_string(),
            repo: self.repo.trim().to_string(),
            base: base.to_string(),
            agent: self.agent.clone(),
            agent_cmd: (self.agent == "custom").then(|| agent_cmd.to_string()),
            node,
            provider,
            size,
            lightweight: self.lightweight,
            // Only a pool node is given back after the PR; a node of the user's own stays.
            keep: self.keep && matches!(self.place, Place::Provider(_)),
        })
    }
}

/// A repository URL the node can clone: `https://`, `http://`, `ssh://`, `git://` with a host
/// and a path, or `git@HOST:OWNER/REPO`.
pub fn check_repo(url: &str) -> Result<(), String> {
    let u = url.trim();
    let example = "e.g. https://github.com/OWNER/REPO or git@github.com:OWNER/REPO.git";
    if u.is_empty() {
        return Err(format!("The repository URL is empty ({example})."));
    }
    if u.contains(char::is_whitespace) {
        return Err(format!("Repository URL {u:?} contains spaces ({example})."));
    }
    let ok = if let Some(rest) = ["https://", "http://", "ssh://", "git://"]
        .iter()
        .find_map(|p| u.strip_prefix(p))
    {
        rest.split_once('/')
            .is_some_and(|(host, path)| !host.is_empty() && !path.trim_matches('/').is_empty())
    } else if let Some(rest) = u.strip_prefix("git@") {
        rest.split_once(':')
            .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty())
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{u:?} is not a repository URL ({example})."))
    }
}

/// What the tools worker runs: [`IdeaArgs`] without the CLI-only options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdeaRequest {
    pub idea: String,
    pub repo: String,
    pub base: String,
    pub agent: String,
    pub agent_cmd: Option<String>,
    pub node: Option<String>,
    pub provider: Option<String>,
    pub size: Option<String>,
    pub lightweight: bool,
    pub keep: bool,
}

impl IdeaRequest {
    pub fn into_args(self) -> IdeaArgs {
        IdeaArgs {
            idea: self.idea,
            repo: self.repo,
            base: self.base,
            agent: self.agent,
            agent_cmd: self.agent_cmd,
            node: self.node,
            provider: self.provider,
            size: self.size,
            lightweight: self.lightweight,
            keep: self.keep,
        }
    }
}

/// What the tools worker reports about a run.
#[derive(Debug, Clone)]
pub enum IdeaEvent {
    /// A progress line (as `sam idea` prints it).
    Step(String),
    /// The end: `sam idea`'s JSON output, or the error with its causes.
    Done(Result<serde_json::Value, String>),
}

/// How the last run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Opened {
        url: String,
        conv: Option<String>,
        message: String,
    },
    Failed(String),
    /// Stopped by Cancel: what the flow said (what it cleaned up is in the progress).
    Cancelled(String),
}

/// The dialog and its run.
#[derive(Debug, Clone, Default)]
pub struct IdeaView {
    pub open: bool,
    pub form: Option<IdeaForm>,
    /// Why Start did nothing (the form is incomplete).
    pub invalid: Option<String>,
    /// The run in progress (its number).
    pub running: Option<u64>,
    pub runs: u64,
    /// Progress lines of the current or last run.
    pub steps: Vec<String>,
    pub outcome: Option<Outcome>,
    /// egui time when the run started (for the elapsed time).
    pub started: Option<f64>,
    /// Cancel presses for the running run (the first stops cleanly, a second at once).
    pub stops: u32,
}

impl IdeaView {
    /// Opens the dialog (a fresh form, unless one is filled or running).
    pub fn open(&mut self, default_agent: &str) {
        self.open = true;
        if self.running.is_none() {
            if matches!(self.outcome, Some(Outcome::Opened { .. })) || self.form.is_none() {
                self.form = Some(IdeaForm::new(default_agent));
                self.steps.clear();
            }
            self.outcome = None;
            self.invalid = None;
        }
    }

    /// Cancel (then "Stop now"): the command for the tools worker, when a run is going.
    pub fn cancel(&mut self) -> Option<ToolCmd> {
        let run = self.running?;
        self.stops += 1;
        Some(ToolCmd::CancelIdea { run })
    }

    /// Start: the command for the tools worker when the form is complete; else says why.
    pub fn start(&mut self) -> Option<ToolCmd> {
        if self.running.is_some() {
            return None;
        }
        let req = match self.form.as_ref()?.args() {
            Ok(r) => r,
            Err(e) => {
                self.invalid = Some(e);
                return None;
            }
        };
        self.invalid = None;
        self.outcome = None;
        self.steps.clear();
        self.started = None;
        self.stops = 0;
        self.runs += 1;
        self.running = Some(self.runs);
        Some(ToolCmd::Idea {
            run: self.runs,
            req: Box::new(req),
        })
    }
}

/// Applies a run's event: progress into the dialog; at the end a notification, and the
/// idea's conversation opened in the sidebar.
pub fn apply(state: &mut AppState, run: u64, ev: IdeaEvent) {
    if state.idea.running != Some(run) {
        return;
    }
    match ev {
        IdeaEvent::Step(line) => {
            state.idea.steps.push(line);
            let excess = state.idea.steps.len().saturating_sub(500);
            state.idea.steps.drain(..excess);
        }
        IdeaEvent::Done(result) => {
            state.idea.running = None;
            let outcome = match result {
                Ok(json) => {
                    let url = json["pr"].as_str().unwrap_or_default().to_string();
                    let conv = json["conversation"].as_str().map(str::to_string);
                    let message = json["message"].as_str().unwrap_or_default().to_string();
                    Outcome::Opened { url, conv, message }
                }
                Err(e) if state.idea.stops > 0 => Outcome::Cancelled(e),
                Err(e) => Outcome::Failed(e),
            };
            match &outcome {
                Outcome::Opened { url, conv, message } => {
                    state.apply(super::state::Event::Notice(Notification::new(
                        Level::Info,
                        format!("PR opened: {url}"),
                        message.clone(),
                    )));
                    // The idea's node and conversation are new to the sidebar.
                    state.backend_out.push(Command::Refresh);
                    if let Some(c) = conv {
                        let cmd = state.select(c);
                        state.backend_out.push(cmd);
                    }
                }
                Outcome::Failed(e) => {
                    state.apply(super::state::Event::Notice(Notification::new(
                        Level::Error,
                        "Idea failed",
                        e.clone(),
                    )));
                }
                Outcome::Cancelled(e) => {
                    state.apply(super::state::Event::Notice(Notification::new(
                        Level::Info,
                        "Idea cancelled",
                        e.clone(),
                    )));
                }
            }
            state.idea.outcome = Some(outcome);
        }
    }
}

/// The dialog.
pub fn dialog(ctx: &egui::Context, state: &mut AppState) {
    if !state.idea.open {
        return;
    }
    let mut open = true;
    let nodes = state.nodes.clone();
    let now = ctx.input(|i| i.time);
    let mut start = false;
    let mut cancel = false;
    egui::Window::new("New idea: from an idea to a pull request")
        .open(&mut open)
        .collapsible(false)
        .default_width(520.0)
        .show(ctx, |ui| {
            let view = &mut state.idea;
            let running = view.running.is_some();
            let Some(f) = view.form.as_mut() else {
                return;
            };
            ui.add_enabled_ui(!running, |ui| {
                let l = ui.label("Idea");
                ui.add(
                    egui::TextEdit::multiline(&mut f.idea)
                        .desired_rows(4)
                        .desired_width(f32::INFINITY)
                        .hint_text("What should the agent do? The first line is the PR title."),
                )
                .labelled_by(l.id);
                let l = ui.label("Repository URL");
                ui.add(
                    egui::TextEdit::singleline(&mut f.repo)
                        .desired_width(f32::INFINITY)
                        .hint_text("https://github.com/OWNER/REPO"),
                )
                .labelled_by(l.id);
                let l = ui.label("Base branch");
                ui.text_edit_singleline(&mut f.base).labelled_by(l.id);
                egui::ComboBox::new("idea-agent", "Agent")
                    .selected_text(f.agent.clone())
                    .show_ui(ui, |ui| {
                        for a in AGENTS.iter().chain(&["custom"]) {
                            ui.selectable_value(&mut f.agent, a.to_string(), *a);
                        }
                    });
                if f.agent == "custom" {
                    let l = ui.label("Agent command");
                    ui.text_edit_singleline(&mut f.agent_cmd)
                        .labelled_by(l.id);
                }
                ui.label("Run on");
                ui.horizontal_wrapped(|ui| {
                    for p in PROVIDERS {
                        ui.radio_value(
                            &mut f.place,
                            Place::Provider(p.to_string()),
                            format!("Provider: {p}"),
                        )
                        .on_hover_text("a node from this provider's warm pool");
                    }
                    for n in &nodes {
                        ui.radio_value(
                            &mut f.place,
                            Place::Node(n.id.clone()),
                            format!("Node: {}", n.name),
                        )
                        .on_hover_text(&n.id);
                    }
                });
                // Pool nodes only; shown (greyed) for a node of one's own too, so the form
                // does not jump when the place changes.
                ui.add_enabled_ui(matches!(f.place, Place::Provider(_)), |ui| {
                    ui.horizontal(|ui| {
                        egui::ComboBox::new("idea-size", "Node size")
                            .selected_text(f.size.clone())
                            .show_ui(ui, |ui| {
                                for s in SIZES {
                                    ui.selectable_value(&mut f.size, s.to_string(), *s);
                                }
                            });
                        ui.checkbox(&mut f.keep, "Keep the node and workspace after the PR")
                            .on_hover_text(
                                "for follow-up prompts; give the node back with `sam vm release`",
                            );
                    });
                });
                ui.checkbox(
                    &mut f.lightweight,
                    "Lightweight workspace (base image, no devcontainer)",
                );
                ui.horizontal(|ui| {
                    start = ui.button("Start").clicked();
                    ui.label(
                        RichText::new("runs `sam idea`: workspace, agent, PR (needs a GitHub token and a git identity)")
                            .weak(),
                    );
                });
            });
            if let Some(e) = &view.invalid {
                ui.colored_label(Color32::from_rgb(230, 80, 70), format!("Cannot start: {e}"));
            }
            if running {
                let t0 = *view.started.get_or_insert(now);
                ui.horizontal(|ui| {
                    ui.add(egui::Spinner::new());
                    let last = view
                        .steps
                        .iter()
                        .rev()
                        .find(|s| s.starts_with("==>"))
                        .map(|s| s.trim_start_matches("==> ").to_string())
                        .unwrap_or_else(|| "starting (token, git identity, node)…".into());
                    ui.label(format!("Running ({:.0}s): {last}", now - t0));
                });
                ui.horizontal(|ui| {
                    if view.stops == 0 {
                        cancel = ui
                            .button("Cancel")
                            .on_hover_text("stop at the next safe point and clean up what was made")
                            .clicked();
                    } else {
                        ui.label("Stopping: cleaning up what was made…");
                        cancel = ui
                            .button("Stop now")
                            .on_hover_text("leave at once; what was made may stay")
                            .clicked();
                    }
                });
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(250));
            }
            match &view.outcome {
                Some(Outcome::Opened { url, message, .. }) => {
                    ui.label(RichText::new(format!("PR opened: {url}")).strong());
                    ui.hyperlink_to("Open the pull request", url);
                    if !message.is_empty() {
                        ui.label(message);
                    }
                }
                Some(Outcome::Failed(e)) => {
                    ui.colored_label(Color32::from_rgb(230, 80, 70), format!("Failed: {e}"));
                }
                Some(Outcome::Cancelled(e)) => {
                    ui.label(format!("Cancelled: {e}"));
                }
                None => {}
            }
            if !view.steps.is_empty() {
                ui.separator();
                ui.label(RichText::new("Progress").strong());
                egui::ScrollArea::vertical()
                    .max_height(200.0)
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for s in &view.steps {
                            ui.label(RichText::new(s).monospace());
                        }
                    });
            }
        });
    if start && let Some(cmd) = state.idea.start() {
        state.tools_out.push(cmd);
    }
    if cancel && let Some(cmd) = state.idea.cancel() {
        state.tools_out.push(cmd);
    }
    // Closing while it runs keeps it running: the end comes as a notification.
    state.idea.open &= open;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls() {
        for ok in [
            "https://github.com/o/r",
            "https://github.com/o/r.git",
            "http://10.0.0.1:8080/o/r.git",
            "ssh://git@github.com/o/r.git",
            "git@github.com:o/r.git",
        ] {
            assert_eq!(check_repo(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "github.com/o/r",
            "https://github.com",
            "https:///o/r",
            "git@github.com",
            "https://github.com/o/r x",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_to_args() {
        let mut f = IdeaForm::new("codex");
        assert!(f.args().expect_err("incomplete").contains("idea is empty"));
        f.idea = "  Do it\n".into();
        f.repo = "https://github.com/o/r".into();
        let a = f.args().expect("complete");
        assert_eq!(
            (a.idea.as_str(), a.agent.as_str(), a.provider.as_deref()),
            ("Do it", "codex", Some("local"))
        );
        assert_eq!((a.node, a.agent_cmd), (None, None));
        f.base = "my branch".into();
        assert!(
            f.args()
                .expect_err("incomplete")
                .contains("not a branch name")
        );
        f.base = "dev".into();
        f.agent = "custom".into();
        assert!(
            f.args()
                .expect_err("incomplete")
                .contains("needs its command")
        );
        f.agent_cmd = "my-agent --acp".into();
        f.place = Place::Node("n1".into());
        let a = f.args().expect("complete");
        assert_eq!(a.agent_cmd.as_deref(), Some("my-agent --acp"));
        assert_eq!((a.node.as_deref(), a.provider), (Some("n1"), None));
        // Size and keep belong to pool nodes only.
        f.keep = true;
        f.size = "large".into();
        let a = f.args().expect("complete");
        assert_eq!((a.size, a.keep), (None, false));
        f.place = Place::Provider("hetzner".into());
        let a = f.args().expect("complete");
        assert_eq!((a.size.as_deref(), a.keep), (Some("large"), true));
        f.size = "huge".into();
        assert!(f.args().expect_err("bad size").contains("not one of"));
    }
}
