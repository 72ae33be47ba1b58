//! Terminal, files and ports panels.
//!
//! The terminal is a `vt100` screen over `sam/pty/1`; files ([`super::files`]) and ports
//! ([`super::ports`]) work through the tools worker.

use egui::{FontId, RichText, Ui};

use super::state::{AppState, Command, Panel};
use super::terminal::{Term, key_bytes};

/// View state of the panels.
#[derive(Default)]
pub struct Panels {
    pub term: Term,
    term_has_focus: bool,
}

pub fn show(
    ui: &mut Ui,
    panel: Panel,
    state: &mut AppState,
    panels: &mut Panels,
    out: &mut Vec<Command>,
) {
    let ws = state
        .selected_conv()
        .map(|c| (c.node.clone(), c.workspace.clone()));
    let ws_name = ws
        .as_ref()
        .map(|w| w.1.clone())
        .unwrap_or_else(|| "WORKSPACE".into());
    match panel {
        Panel::Terminal => terminal(ui, state, panels, ws, out),
        Panel::Files => {
            let mut attached = false;
            super::files::show(
                ui,
                &mut state.files,
                ws,
                &ws_name,
                &mut state.prompt,
                &mut attached,
                &mut state.tools_out,
            );
            if attached {
                state.panel = Panel::Chat;
            }
        }
        Panel::Ports => {
            super::ports::show(ui, &mut state.ports, ws, &ws_name, &mut state.tools_out)
        }
        Panel::Chat => {}
    }
}

fn terminal(
    ui: &mut Ui,
    state: &mut AppState,
    panels: &mut Panels,
    ws: Option<(String, String)>,
    out: &mut Vec<Command>,
) {
    let font = FontId::monospace(13.0);
    let (cw, ch) = ui.fonts_mut(|f| (f.glyph_width(&font, 'M'), f.row_height(&font)));
    ui.horizontal(|ui| {
        ui.heading("Terminal");
        match &ws {
            Some((node, workspace)) if !state.term_open => {
                if ui.button("Open terminal").clicked() {
                    let avail = ui.available_size();
                    out.push(Command::OpenTerminal {
                        node: node.clone(),
                        workspace: workspace.clone(),
                        rows: panels.term.rows,
                        cols: panels.term.cols.max((avail.x / cw.max(1.0)) as u16),
                    });
                    state.term_status = format!("opening a terminal in {workspace}…");
                }
            }
            Some(_) => {}
            None => {
                ui.label("Pick a conversation: the terminal opens in its workspace.");
            }
        }
        if ui.button("Copy screen").clicked() {
            ui.ctx().copy_text(panels.term.text());
        }
        ui.label(RichText::new(&state.term_status).weak());
    });
    if !state.term_out.is_empty() {
        panels.term.feed(&std::mem::take(&mut state.term_out));
    }
    // Fit the screen to the panel.
    let avail = ui.available_size();
    let rows = ((avail.y - 8.0) / ch.max(1.0)).floor().max(2.0) as u16;
    let cols = ((avail.x - 8.0) / cw.max(1.0)).floor().max(10.0) as u16;
    if panels.term.resize(rows, cols) && state.term_open {
        out.push(Command::TermResize { rows, cols });
    }
    let frame = egui::Frame::canvas(ui.style()).inner_margin(4.0);
    let resp = frame
        .show(ui, |ui| {
            ui.spacing_mut().item_spacing.y = 0.0;
            panels.term.show(ui, &font);
            ui.allocate_space(ui.available_size());
        })
        .response
        .interact(egui::Sense::click());
    if resp.clicked() {
        panels.term_has_focus = true;
        ui.memory_mut(|m| m.surrender_focus(m.focused().unwrap_or(egui::Id::NULL)));
    }
    if ui.memory(|m| m.focused().is_some()) {
        panels.term_has_focus = false;
    }
    if panels.term_has_focus && state.term_open {
        let app = panels.term.app_cursor();
        let events = ui.input(|i| i.events.clone());
        for ev in &events {
            if let Some(b) = key_bytes(ev, app) {
                out.push(Command::TermInput(b));
            }
        }
    }
}
