//! The conversation view: a virtualised message list (only rows in the viewport are
//! laid out; heights of rows seen once are cached), Markdown with highlighted code,
//! tool-call cards, plans, permission buttons, forks, cancel and the prompt box.

use egui::{Color32, RichText, Ui};
use egui_commonmark::{CommonMarkCache, CommonMarkViewer};
use sam_crdt::{MessageView, Role, Status, ToolStatus};

use super::state::{AppState, Command};
use super::tools::ToolCmd;

mod pieces;

/// Space between rows.
const GAP: f32 = 6.0;

/// View-only caches of the conversation view.
#[derive(Default)]
pub struct ChatCache {
    pub md: CommonMarkCache,
    /// Per row: (signature of what was measured, measured height).
    heights: Vec<(u64, f32)>,
    conv: Option<String>,
    /// Rows laid out in the last frame (the benchmark checks it stays small).
    pub laid_out: usize,
}

/// What a row's height depends on.
fn signature(m: &MessageView, width: f32) -> u64 {
    let mut s = m.text.len() as u64;
    s = s.wrapping_mul(31).wrapping_add(m.status as u64);
    if let Some(t) = &m.tool {
        s = s
            .wrapping_mul(31)
            .wrapping_add(t.output.len() as u64 + t.locations.len() as u64);
    }
    if let Some(p) = &m.permission {
        s = s
            .wrapping_mul(31)
            .wrapping_add(p.chosen.is_some() as u64 + 7);
    }
    s.wrapping_mul(31).wrapping_add(width as u64)
}

/// A guess for rows not measured yet.
fn estimate(m: &MessageView, width: f32) -> f32 {
    let per_line = ((width / 7.5).max(20.0)) as usize;
    let lines = (m.text.len() / per_line + 1).min(400) as f32;
    match m.role {
        Role::Thought | Role::Tool => 64.0,
        Role::Permission => 96.0,
        _ => 36.0 + lines * 17.0,
    }
}

/// The whole conversation panel.
pub fn show(ui: &mut Ui, state: &mut AppState, cache: &mut ChatCache, out: &mut Vec<Command>) {
    let Some(conv_id) = state.selected.clone() else {
        ui.centered_and_justified(|ui| {
            ui.label(
                "Pick a conversation on the left, or start one: New conversation (Ctrl+K for every action).",
            );
        });
        return;
    };
    header(ui, state, &conv_id, out);
    egui::Panel::bottom("prompt")
        .resizable(false)
        .show(ui, |ui| prompt_box(ui, state, out));
    if !state.plan.is_empty() {
        egui::CollapsingHeader::new(format!("Plan ({} steps)", state.plan.len()))
            .default_open(true)
            .show(ui, |ui| {
                for p in &state.plan {
                    let mark = match p.status.as_str() {
                        "completed" => "☑",
                        "in_progress" => "▶",
                        _ => "☐",
                    };
                    ui.label(format!("{mark} {}", p.content));
                }
            });
    }
    messages(ui, state, cache, &conv_id, out);
}

fn header(ui: &mut Ui, state: &mut AppState, conv_id: &str, out: &mut Vec<Command>) {
    let summary = state.selected_conv().cloned();
    ui.horizontal_wrapped(|ui| {
        let title = summary
            .as_ref()
            .map(|c| c.title.clone())
            .unwrap_or_else(|| conv_id.to_string());
        ui.heading(title);
        if let Some(c) = &summary {
            ui.label(
                RichText::new(format!(
                    "{} · workspace {} on {}",
                    c.agent,
                    c.workspace,
                    state.node_name(&c.node)
                ))
                .weak(),
            );
        }
        let (dot, text) = if state.online {
            (Color32::from_rgb(60, 180, 90), "live")
        } else {
            (Color32::from_rgb(200, 80, 60), "offline")
        };
        super::view::dot_colored(ui, dot, text);
        ui.label(RichText::new(text).color(dot));
        if super::relocate::node_down(state)
            && ui
                .button("Continue on another node…")
                .on_hover_text("Its node does not answer: move the conversation (sam move)")
                .clicked()
        {
            state.moving.open(conv_id);
        }
        if ui
            .checkbox(&mut state.voice.auto_read, "Auto-read new answers")
            .on_hover_text("Read each new agent answer aloud when it is complete")
            .changed()
        {
            state
                .tools_out
                .push(ToolCmd::AutoRead(state.voice.auto_read));
        }
        if state.running()
            && ui
                .button("■ Cancel")
                .on_hover_text("Cancel the running turn")
                .clicked()
        {
            out.push(Command::Cancel {
                conv: conv_id.to_string(),
            });
        }
    });
    let (parent, kids) = state.relatives();
    let parent = parent.map(|p| (p.id.clone(), p.title.clone()));
    let kids: Vec<(String, String)> = kids
        .iter()
        .map(|k| (k.id.clone(), k.title.clone()))
        .collect();
    if parent.is_some() || !kids.is_empty() {
        ui.horizontal_wrapped(|ui| {
            if let Some((id, title)) = parent {
                ui.label("forked from");
                if ui
                    .link(format!("« {title}"))
                    .on_hover_text("Go to the parent conversation")
                    .clicked()
                {
                    out.push(state.select(&id));
                }
            }
            if !kids.is_empty() {
                ui.label("forks:");
                for (id, title) in kids {
                    if ui.link(format!("🔀 {title}")).clicked() {
                        out.push(state.select(&id));
                    }
                }
            }
        });
    }
    ui.separator();
}

fn prompt_box(ui: &mut Ui, state: &mut AppState, out: &mut Vec<Command>) {
    ui.add_space(4.0);
    let label = ui.label("Prompt");
    let edit = egui::TextEdit::multiline(&mut state.prompt)
        .desired_rows(3)
        .desired_width(f32::INFINITY)
        .hint_text("Message the agent — Ctrl+Enter sends");
    let resp = ui.add(edit).labelled_by(label.id);
    let ctrl_enter =
        resp.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && i.modifiers.command);
    ui.horizontal(|ui| {
        let send = ui
            .button("Send")
            .on_hover_text("Send the prompt (Ctrl+Enter)");
        if (send.clicked() || ctrl_enter)
            && let Some(cmd) = state.submit_prompt()
        {
            out.push(cmd);
        }
        super::voice::mic_controls(ui, &mut state.voice, &mut state.tools_out);
        if let Some(hint) = state.prompt_hint() {
            ui.label(
                RichText::new(hint)
                    .italics()
                    .color(Color32::from_rgb(210, 150, 40)),
            );
        }
    });
    super::voice::error_line(ui, &mut state.voice);
    ui.add_space(4.0);
}

fn messages(
    ui: &mut Ui,
    state: &mut AppState,
    cache: &mut ChatCache,
    conv_id: &str,
    out: &mut Vec<Command>,
) {
    let msgs = state.messages.clone();
    if cache.conv.as_deref() != Some(conv_id) {
        cache.conv = Some(conv_id.to_string());
        cache.heights.clear();
    }
    cache.heights.resize(msgs.len(), (0, 0.0));
    let width = ui.available_width().max(100.0);
    // Row tops from cached heights (estimates for rows never seen).
    let mut tops = Vec::with_capacity(msgs.len() + 1);
    let mut y = 0.0f32;
    for (i, m) in msgs.iter().enumerate() {
        tops.push(y);
        let (sig, h) = cache.heights[i];
        let h = if sig != 0 && h > 0.0 {
            h
        } else {
            estimate(m, width)
        };
        y += h + GAP;
    }
    let total = y;
    let me = state.me.clone();
    let tools = &mut state.tools_out;
    let mut laid = 0;
    egui::ScrollArea::vertical()
        .id_salt(("messages", conv_id))
        .auto_shrink([false, false])
        .stick_to_bottom(true)
        .show_viewport(ui, |ui, viewport| {
            ui.set_min_height(total);
            let origin = ui.max_rect().min;
            let first = tops
                .partition_point(|t| *t < viewport.min.y)
                .saturating_sub(1);
            for i in first..msgs.len() {
                if tops[i] > viewport.max.y {
                    break;
                }
                let m = &msgs[i];
                let rect = egui::Rect::from_min_size(
                    origin + egui::vec2(0.0, tops[i]),
                    egui::vec2(width, f32::INFINITY),
                );
                let r = ui.scope_builder(
                    egui::UiBuilder::new().max_rect(rect).id_salt(m.id.as_str()),
                    |ui| row(ui, m, &me, &mut cache.md, conv_id, out, tools),
                );
                laid += 1;
                let sig = signature(m, width);
                cache.heights[i] = (sig.max(1), r.response.rect.height());
            }
        });
    cache.laid_out = laid;
}

fn role_color(role: Role, dark: bool) -> Color32 {
    let (d, l) = match role {
        Role::User => (
            Color32::from_rgb(36, 52, 74),
            Color32::from_rgb(226, 236, 250),
        ),
        Role::Agent => (
            Color32::from_rgb(34, 34, 38),
            Color32::from_rgb(248, 248, 248),
        ),
        Role::Thought => (
            Color32::from_rgb(40, 38, 30),
            Color32::from_rgb(250, 247, 232),
        ),
        Role::Tool => (
            Color32::from_rgb(30, 42, 36),
            Color32::from_rgb(232, 246, 238),
        ),
        Role::Permission => (
            Color32::from_rgb(64, 46, 20),
            Color32::from_rgb(255, 240, 214),
        ),
        Role::System => (
            Color32::from_rgb(50, 30, 30),
            Color32::from_rgb(250, 232, 232),
        ),
    };
    if dark { d } else { l }
}

fn status_color(s: Status) -> Color32 {
    match s {
        Status::Done => Color32::from_rgb(90, 170, 100),
        Status::Failed | Status::Interrupted | Status::Cancelled => Color32::from_rgb(210, 80, 70),
        Status::Queued => Color32::from_rgb(210, 150, 40),
        _ => Color32::from_rgb(90, 140, 220),
    }
}

/// `HH:MM` (UTC) of a ms timestamp.
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}", secs / 3600, (secs / 60) % 60)
}

fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

/// One message.
fn row(
    ui: &mut Ui,
    m: &MessageView,
    me: &str,
    md: &mut CommonMarkCache,
    conv: &str,
    out: &mut Vec<Command>,
    tools: &mut Vec<ToolCmd>,
) {
    let dark = ui.visuals().dark_mode;
    let frame = egui::Frame::group(ui.style()).fill(role_color(m.role, dark));
    let resp = frame.show(ui, |ui| {
        ui.set_width(ui.available_width() - 2.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new(m.role.as_str()).strong());
            let who = if m.author == me {
                "you".to_string()
            } else {
                short(&m.author).to_string()
            };
            ui.label(RichText::new(who).weak())
                .on_hover_text(format!("author {}", m.author));
            ui.label(RichText::new(clock(m.created_at)).weak());
            ui.label(
                RichText::new(m.status.as_str())
                    .color(status_color(m.status))
                    .small(),
            );
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .small_button("🔀 Fork")
                    .on_hover_text("Fork the conversation at this message")
                    .clicked()
                {
                    out.push(Command::Fork {
                        conv: conv.to_string(),
                        at: m.id.to_string(),
                    });
                }
                if m.role == Role::Agent
                    && !m.text.trim().is_empty()
                    && ui
                        .small_button("▶ Read aloud")
                        .on_hover_text("Read this answer aloud")
                        .clicked()
                {
                    tools.push(super::voice::speak_message(m));
                }
            });
        });
        body(ui, m, md, conv, out);
        if let Some(r) = &m.reason {
            ui.label(RichText::new(r).color(Color32::from_rgb(210, 80, 70)));
        }
    });
    resp.response.context_menu(|ui| {
        if ui.button("Fork from here").clicked() {
            out.push(Command::Fork {
                conv: conv.to_string(),
                at: m.id.to_string(),
            });
            ui.close();
        }
        if ui.button("Copy text").clicked() {
            ui.ctx().copy_text(m.text.clone());
            ui.close();
        }
    });
}

fn body(
    ui: &mut Ui,
    m: &MessageView,
    md: &mut CommonMarkCache,
    conv: &str,
    out: &mut Vec<Command>,
) {
    match m.role {
        Role::Thought => {
            egui::CollapsingHeader::new("Thought")
                .id_salt(("thought", m.id.as_str()))
                .default_open(false)
                .show(ui, |ui| ui.label(RichText::new(&m.text).italics()));
        }
        Role::Tool => {
            let Some(t) = &m.tool else {
                ui.label(&m.text);
                return;
            };
            ui.horizontal_wrapped(|ui| {
                ui.label(RichText::new(format!("🔧 {}", t.kind)).strong());
                ui.label(&t.title);
                let c = match t.status {
                    ToolStatus::Completed => Color32::from_rgb(90, 170, 100),
                    ToolStatus::Failed => Color32::from_rgb(210, 80, 70),
                    _ => Color32::from_rgb(90, 140, 220),
                };
                ui.label(RichText::new(t.status.as_str()).color(c));
            });
            for loc in t.locations.iter().take(20) {
                ui.label(RichText::new(format!("📄 {loc}")).monospace());
            }
            if !t.output.is_empty() {
                egui::CollapsingHeader::new("Output")
                    .id_salt(("tool", m.id.as_str()))
                    .default_open(false)
                    .show(ui, |ui| {
                        let text: String = t.output.chars().take(20_000).collect();
                        ui.label(RichText::new(text).monospace());
                    });
            }
        }
        Role::Permission => {
            ui.label(RichText::new(format!("🔐 {}", m.text)).strong());
            let Some(p) = &m.permission else { return };
            match &p.chosen {
                Some(a) => {
                    let name = p
                        .options
                        .iter()
                        .find(|o| o.id == a.option)
                        .map(|o| o.name.as_str())
                        .unwrap_or(a.option.as_str());
                    ui.label(format!("answered: {name} (by {})", short(&a.by)));
                }
                None => {
                    ui.horizontal_wrapped(|ui| {
                        for o in &p.options {
                            if ui.button(&o.name).on_hover_text(&o.kind).clicked() {
                                out.push(Command::Permit {
                                    conv: conv.to_string(),
                                    message: m.id.to_string(),
                                    option: o.id.clone(),
                                });
                            }
                        }
                    });
                }
            }
        }
        _ => {
            let streaming = matches!(m.status, Status::Running | Status::Streaming);
            if m.text.is_empty() && streaming {
                ui.spinner();
            } else if streaming && m.text.len() > pieces::MAX_PIECE {
                streaming_text(ui, md, &m.text);
            } else {
                CommonMarkViewer::new().show(ui, md, &m.text);
            }
        }
    }
}

/// A long message still streaming: stable pieces (see [`pieces`]), so only the growing
/// tail is laid out again each frame.
fn streaming_text(ui: &mut Ui, md: &mut CommonMarkCache, text: &str) {
    for (i, (piece, kind)) in pieces::pieces(text, pieces::MAX_PIECE)
        .into_iter()
        .enumerate()
    {
        ui.push_id(i, |ui| match kind {
            pieces::Kind::Markdown => {
                CommonMarkViewer::new().show(ui, md, piece);
            }
            pieces::Kind::Plain => {
                ui.label(piece.trim_end_matches('\n'));
            }
            pieces::Kind::Code => {
                ui.label(RichText::new(piece.trim_end_matches('\n')).monospace());
            }
        });
    }
}
