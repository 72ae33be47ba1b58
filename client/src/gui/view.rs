//! The window: top bar, sidebar (nodes, workspaces, conversation tree), the main panel,
//! dialogs (connect, new conversation, new idea, settings, share, notifications), the command
//! palette and toasts. Reads [`AppState`], pushes [`Command`]s.

use egui::{Color32, RichText, Ui};

use super::chat::{self, ChatCache};
use super::palette::{self, Action};
use super::panels::{self, Panels};
use super::state::{AGENTS, AppState, Command, Level, Panel};

pub fn show(
    ui: &mut Ui,
    state: &mut AppState,
    chat: &mut ChatCache,
    panels: &mut Panels,
    out: &mut Vec<Command>,
) {
    if ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::K)) {
        state.palette.open = !state.palette.open;
        state.palette.query.clear();
        state.palette.cursor = 0;
    }
    egui::Panel::top("top").show(ui, |ui| top_bar(ui, state, out));
    super::voice::player_bar(ui, &mut state.voice, &mut state.tools_out);
    if state.panel != Panel::Ports {
        state.ports.unwatch(&mut state.tools_out);
    }
    egui::Panel::left("sidebar")
        .resizable(true)
        .default_size(260.0)
        .show(ui, |ui| sidebar(ui, state, out));
    egui::CentralPanel::default().show(ui, |ui| match state.panel {
        Panel::Chat => chat::show(ui, state, chat, out),
        p => panels::show(ui, p, state, panels, out),
    });
    let ctx = ui.ctx().clone();
    connect_dialog(&ctx, state, out);
    new_conv_dialog(&ctx, state, out);
    settings_dialog(&ctx, state, out);
    share_dialog(&ctx, state, out);
    super::idea::dialog(&ctx, state);
    super::relocate::dialog(&ctx, state);
    notifications_dialog(&ctx, state);
    palette_window(&ctx, state, out);
    toasts(&ctx, state);
}

fn top_bar(ui: &mut Ui, state: &mut AppState, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("SAM").strong());
        ui.separator();
        for (p, name) in [
            (Panel::Chat, "Chat"),
            (Panel::Files, "Files"),
            (Panel::Terminal, "Terminal"),
            (Panel::Ports, "Ports"),
        ] {
            ui.selectable_value(&mut state.panel, p, name);
        }
        ui.separator();
        if ui.button("Commands (Ctrl+K)").clicked() {
            state.palette.open = true;
        }
        if ui.button("Share…").clicked()
            && let Some(c) = state.open_share(None)
        {
            out.push(c);
        }
        let unread = state.unread();
        let label = if unread > 0 {
            format!("🔔 Notifications ({unread})")
        } else {
            "🔔 Notifications".to_string()
        };
        if ui.button(label).clicked() {
            state.dialogs.notifications = true;
        }
        if ui.button("⚙ Settings").clicked() {
            state.dialogs.settings = true;
            out.push(Command::LoadKeys);
        }
    });
}

fn dot(ui: &mut Ui, reachable: Option<bool>) {
    let (c, t) = match reachable {
        Some(true) => (Color32::from_rgb(60, 180, 90), "reachable"),
        Some(false) => (Color32::from_rgb(200, 80, 60), "offline"),
        None => (Color32::GRAY, "checking"),
    };
    dot_colored(ui, c, t);
}

/// "relay" next to a node reached through a relay (hover: which, and why not direct).
fn path_badge(ui: &mut Ui, path: Option<&crate::gui::state::NodePath>) {
    let Some(p) = path.filter(|p| p.kind == "relay") else {
        return;
    };
    ui.label(
        RichText::new("relay")
            .small()
            .color(Color32::from_rgb(200, 150, 40)),
    )
    .on_hover_text(&p.note);
}

/// A small filled circle (painted: no font has to carry the glyph).
pub fn dot_colored(ui: &mut Ui, color: Color32, tooltip: &str) {
    let (rect, resp) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
    ui.painter().circle_filled(rect.center(), 4.5, color);
    resp.on_hover_text(tooltip);
}

fn sidebar(ui: &mut Ui, state: &mut AppState, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if ui.button("➕ Connect node").clicked() {
            state.dialogs.connect = true;
        }
        if ui.button("New conversation").clicked() {
            state.open_new_conv(None, None);
        }
        if ui
            .button("New idea")
            .on_hover_text("From an idea to a pull request: a workspace, an agent, a PR (sam idea)")
            .clicked()
        {
            let agent = state.prefs.default_agent.clone();
            state.idea.open(&agent);
        }
    });
    ui.separator();
    if state.nodes.is_empty() {
        ui.label(
            "No nodes yet. Paste a ticket from `sam up` or `sam-node ticket` with Connect node.",
        );
    }
    let nodes = state.nodes.clone();
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for n in &nodes {
                ui.horizontal(|ui| {
                    dot(ui, n.reachable);
                    ui.label(RichText::new(&n.name).strong())
                        .on_hover_text(format!("{}\n{}", n.id, n.detail));
                    if n.reachable == Some(true) {
                        path_badge(ui, n.path.as_ref());
                    }
                });
                ui.indent(("node", n.id.as_str()), |ui| {
                    match state.workspaces.get(&n.id).cloned() {
                        Some(Ok(list)) => {
                            for w in list {
                                ui.horizontal(|ui| {
                                    ui.label(format!("🗀 {} ({})", w.name, w.status));
                                    if ui
                                        .small_button("+")
                                        .on_hover_text("New conversation in this workspace")
                                        .clicked()
                                    {
                                        state.open_new_conv(Some(n.id.clone()), Some(w.id.clone()));
                                    }
                                });
                            }
                        }
                        Some(Err(e)) => {
                            ui.label(RichText::new("workspaces unavailable").weak())
                                .on_hover_text(e);
                        }
                        None => {}
                    }
                    let tree: Vec<(usize, String, String, usize)> = state
                        .conv_tree(&n.id)
                        .into_iter()
                        .map(|(d, c)| (d, c.id.clone(), c.title.clone(), c.queued))
                        .collect();
                    for (depth, id, title, queued) in tree {
                        ui.horizontal(|ui| {
                            ui.add_space(depth as f32 * 14.0);
                            let mark = if depth > 0 { "» " } else { "" };
                            let q = if queued > 0 {
                                format!(" ({queued} queued)")
                            } else {
                                String::new()
                            };
                            let selected = state.selected.as_deref() == Some(id.as_str());
                            if ui
                                .selectable_label(selected, format!("{mark}{title}{q}"))
                                .clicked()
                            {
                                out.push(state.select(&id));
                            }
                        });
                    }
                });
            }
        });
}

fn connect_dialog(ctx: &egui::Context, state: &mut AppState, out: &mut Vec<Command>) {
    let mut open = state.dialogs.connect;
    egui::Window::new("Connect to a node")
        .open(&mut open)
        .collapsible(false)
        .show(ctx, |ui| {
            let l = ui.label("Ticket");
            ui.add(
                egui::TextEdit::singleline(&mut state.dialogs.ticket)
                    .desired_width(420.0)
                    .hint_text("sam1…"),
            )
            .labelled_by(l.id);
            let l = ui.label("Name (optional)");
            ui.text_edit_singleline(&mut state.dialogs.node_name)
                .labelled_by(l.id);
            if ui.button("Connect").clicked() && !state.dialogs.ticket.trim().is_empty() {
                out.push(Command::Connect {
                    ticket: state.dialogs.ticket.trim().to_string(),
                    name: Some(state.dialogs.node_name.trim().to_string())
                        .filter(|n| !n.is_empty()),
                });
                state.dialogs.ticket.clear();
                state.dialogs.node_name.clear();
                state.dialogs.connect = false;
            }
        });
    state.dialogs.connect &= open;
}

fn new_conv_dialog(ctx: &egui::Context, state: &mut AppState, out: &mut Vec<Command>) {
    if state.dialogs.new_conv.is_none() {
        return;
    }
    let mut open = true;
    let nodes = state.nodes.clone();
    let workspaces = state.workspaces.clone();
    let cmd = state.new_conv_command();
    egui::Window::new("New conversation")
        .open(&mut open)
        .collapsible(false)
        .show(ctx, |ui| {
            let Some(f) = state.dialogs.new_conv.as_mut() else {
                return;
            };
            let name = nodes
                .iter()
                .find(|n| n.id == f.node)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            egui::ComboBox::from_label("Node")
                .selected_text(name)
                .show_ui(ui, |ui| {
                    for n in &nodes {
                        ui.selectable_value(&mut f.node, n.id.clone(), &n.name);
                    }
                });
            if let Some(Ok(list)) = workspaces.get(&f.node) {
                egui::ComboBox::from_label("Workspace")
                    .selected_text(f.workspace.clone())
                    .show_ui(ui, |ui| {
                        for w in list {
                            ui.selectable_value(
                                &mut f.workspace,
                                w.id.clone(),
                                format!("{} ({})", w.name, w.id),
                            );
                        }
                    });
            }
            let l = ui.label("Workspace id");
            ui.text_edit_singleline(&mut f.workspace).labelled_by(l.id);
            egui::ComboBox::from_label("Agent")
                .selected_text(f.agent.clone())
                .show_ui(ui, |ui| {
                    for a in AGENTS {
                        ui.selectable_value(&mut f.agent, a.to_string(), *a);
                    }
                });
            let l = ui.label("Title (optional)");
            ui.text_edit_singleline(&mut f.title).labelled_by(l.id);
            if ui
                .add_enabled(cmd.is_some(), egui::Button::new("Create"))
                .clicked()
                && let Some(c) = cmd.clone()
            {
                out.push(c);
            }
        });
    if !open {
        state.dialogs.new_conv = None;
    }
}

fn settings_dialog(ctx: &egui::Context, state: &mut AppState, out: &mut Vec<Command>) {
    let mut open = state.dialogs.settings;
    egui::Window::new("Settings")
        .open(&mut open)
        .show(ctx, |ui| {
            ui.heading("Agent API keys");
            ui.label(&state.keys.storage);
            for (k, set) in &state.keys.keys {
                ui.label(format!("{k}: {}", if *set { "set" } else { "not set" }));
            }
            ui.horizontal(|ui| {
                egui::ComboBox::from_label("Variable")
                    .selected_text(state.dialogs.key_name.clone())
                    .show_ui(ui, |ui| {
                        for k in super::keys::KEY_NAMES {
                            ui.selectable_value(&mut state.dialogs.key_name, k.to_string(), *k);
                        }
                    });
                let l = ui.label("Key");
                ui.add(egui::TextEdit::singleline(&mut state.dialogs.key_value).password(true))
                    .labelled_by(l.id);
                if ui.button("Save key").clicked() && !state.dialogs.key_name.is_empty() {
                    out.push(Command::SaveKey {
                        name: state.dialogs.key_name.clone(),
                        value: std::mem::take(&mut state.dialogs.key_value),
                    });
                }
            });
            ui.separator();
            egui::ComboBox::from_label("Default agent")
                .selected_text(state.prefs.default_agent.clone())
                .show_ui(ui, |ui| {
                    for a in AGENTS {
                        ui.selectable_value(&mut state.prefs.default_agent, a.to_string(), *a);
                    }
                });
            ui.checkbox(&mut state.prefs.dark, "Dark theme");
            ui.checkbox(
                &mut state.prefs.desktop_notifications,
                "Desktop notifications",
            );
            ui.separator();
            super::voice::settings_section(ui, &mut state.voice, &mut state.tools_out);
        });
    state.dialogs.settings &= open;
    if !state.dialogs.settings {
        state.voice.settings_closed();
    }
}

fn share_dialog(ctx: &egui::Context, state: &mut AppState, out: &mut Vec<Command>) {
    if state.dialogs.share.is_none() {
        return;
    }
    let mut open = true;
    let nodes = state.nodes.clone();
    egui::Window::new("Share").open(&mut open).show(ctx, |ui| {
        let Some(f) = state.dialogs.share.as_mut() else {
            return;
        };
        let name = nodes
            .iter()
            .find(|n| n.id == f.node)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        ui.label(format!("Node {name}"));
        ui.horizontal(|ui| {
            ui.label("Role");
            for r in ["viewer", "collaborator", "owner"] {
                ui.radio_value(&mut f.role, r.to_string(), r);
            }
        });
        ui.checkbox(&mut f.invite, "One-time invite (anyone holding the ticket)");
        if !f.invite {
            let l = ui.label("Grantee NodeId");
            ui.text_edit_singleline(&mut f.to).labelled_by(l.id);
        }
        let l = ui.label("Expires (e.g. 12h, 7d; empty: never)");
        ui.text_edit_singleline(&mut f.expires).labelled_by(l.id);
        if ui.button("Create ticket").clicked() {
            out.push(Command::Share {
                node: f.node.clone(),
                role: f.role.clone(),
                to: (!f.invite).then(|| f.to.clone()),
                expires: Some(f.expires.clone()),
            });
        }
        let node = f.node.clone();
        if let Some(t) = &state.share_ticket {
            ui.separator();
            ui.label(
                "Send this ticket (they run `sam join <ticket>` or paste it in Connect node):",
            );
            ui.add(egui::Label::new(RichText::new(t).monospace()).wrap());
            if ui.button("Copy ticket").clicked() {
                ui.ctx().copy_text(t.clone());
            }
        }
        ui.separator();
        ui.label(RichText::new("Shares").strong());
        for s in state.shares.clone() {
            ui.horizontal(|ui| {
                ui.label(RichText::new(s.id.get(..8).unwrap_or(&s.id)).monospace());
                ui.label(format!("{} · {} · {}", s.role, s.grantee, s.state));
                if s.state != "revoked" && ui.small_button("Revoke").clicked() {
                    out.push(Command::Revoke {
                        node: node.clone(),
                        id: s.id.clone(),
                    });
                }
            });
        }
    });
    if !open {
        state.dialogs.share = None;
    }
}

fn notifications_dialog(ctx: &egui::Context, state: &mut AppState) {
    let mut open = state.dialogs.notifications;
    egui::Window::new("Notifications")
        .open(&mut open)
        .show(ctx, |ui| {
            if state.notifications.is_empty() {
                ui.label("Nothing yet.");
            }
            egui::ScrollArea::vertical()
                .max_height(360.0)
                .show(ui, |ui| {
                    for n in state.notifications.iter().rev() {
                        ui.label(RichText::new(&n.title).strong().color(level_color(n.level)));
                        if !n.body.is_empty() {
                            ui.label(&n.body);
                        }
                        ui.separator();
                    }
                });
            if ui.button("Mark all read").clicked() {
                for n in &mut state.notifications {
                    n.dismissed = true;
                }
            }
        });
    state.dialogs.notifications &= open;
}

fn level_color(l: Level) -> Color32 {
    match l {
        Level::Info => Color32::from_rgb(90, 160, 230),
        Level::Warn => Color32::from_rgb(230, 160, 40),
        Level::Error => Color32::from_rgb(230, 80, 70),
    }
}

fn palette_window(ctx: &egui::Context, state: &mut AppState, out: &mut Vec<Command>) {
    if !state.palette.open {
        return;
    }
    let items = palette::filtered(state);
    let mut run: Option<Action> = None;
    let (up, down, enter, esc) = ctx.input_mut(|i| {
        (
            i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowUp),
            i.consume_key(egui::Modifiers::NONE, egui::Key::ArrowDown),
            i.key_pressed(egui::Key::Enter),
            i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
        )
    });
    if esc {
        state.palette.open = false;
        return;
    }
    if down {
        state.palette.cursor = (state.palette.cursor + 1).min(items.len().saturating_sub(1));
    }
    if up {
        state.palette.cursor = state.palette.cursor.saturating_sub(1);
    }
    egui::Window::new("Command palette")
        .anchor(egui::Align2::CENTER_TOP, [0.0, 60.0])
        .collapsible(false)
        .resizable(false)
        .title_bar(false)
        .show(ctx, |ui| {
            ui.set_width(520.0);
            let l = ui.label("Search commands");
            let r = ui
                .add(
                    egui::TextEdit::singleline(&mut state.palette.query)
                        .hint_text("Type to search actions, conversations, workspaces")
                        .desired_width(f32::INFINITY),
                )
                .labelled_by(l.id);
            if r.changed() {
                state.palette.cursor = 0;
            }
            r.request_focus();
            ui.separator();
            egui::ScrollArea::vertical()
                .max_height(360.0)
                .show(ui, |ui| {
                    for (i, it) in items.iter().enumerate() {
                        if ui
                            .selectable_label(i == state.palette.cursor, &it.label)
                            .clicked()
                        {
                            run = Some(it.action.clone());
                        }
                    }
                });
        });
    if enter && run.is_none() {
        run = items.get(state.palette.cursor).map(|i| i.action.clone());
    }
    if let Some(a) = run
        && let Some(c) = state.run_action(a)
    {
        out.push(c);
    }
}

fn toasts(ctx: &egui::Context, state: &mut AppState) {
    let now = ctx.input(|i| i.time);
    let mut shown = 0;
    let visible: Vec<usize> = state
        .notifications
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, n)| !n.dismissed && n.shown_at.is_none_or(|t| now - t < 6.0))
        .map(|(i, _)| i)
        .take(4)
        .collect();
    if visible.is_empty() {
        return;
    }
    egui::Area::new(egui::Id::unique("sam-toasts"))
        .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -12.0])
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            for i in visible {
                let n = &mut state.notifications[i];
                n.shown_at.get_or_insert(now);
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    ui.set_max_width(320.0);
                    ui.label(RichText::new(&n.title).strong().color(level_color(n.level)));
                    if !n.body.is_empty() {
                        ui.label(&n.body);
                    }
                });
                shown += 1;
            }
        });
    let _ = shown;
}
