//! Files, terminal and ports panels.
//!
//! Not implemented yet in the GUI: each panel says so and names the CLI command that
//! does the job today (`sam files`, `sam shell`, `sam ports` / `sam forward`).

use egui::{RichText, Ui};

use super::state::{AppState, Panel};

/// View state of the panels.
#[derive(Default)]
pub struct Panels {}

pub fn show(ui: &mut Ui, panel: Panel, state: &AppState, _panels: &mut Panels) {
    let ws = state
        .selected_conv()
        .map(|c| c.workspace.clone())
        .unwrap_or_else(|| "WORKSPACE".into());
    let (title, cli) = match panel {
        Panel::Files => (
            "Files and diffs",
            format!(
                "sam files ls {ws} .   ·   sam files diff {ws} .   ·   sam files get {ws} PATH"
            ),
        ),
        Panel::Terminal => ("Terminal", format!("sam shell {ws}")),
        Panel::Ports => (
            "Ports",
            format!("sam ports {ws} --watch   ·   sam forward {ws} PORT"),
        ),
        Panel::Chat => return,
    };
    ui.heading(title);
    ui.label(RichText::new("Not implemented yet in the GUI.").strong());
    ui.label("Use the CLI meanwhile:");
    ui.label(RichText::new(cli).monospace());
}
