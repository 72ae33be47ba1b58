//! The Ports panel: the workspace's listening ports, watched live while the panel is
//! open, each with a "forward" toggle that shows the local address it is reachable at.

use std::collections::BTreeMap;

use egui::{Color32, RichText, Ui};
use sam_protocol::workspace::PortInfo;

use super::tools::{ToolCmd, ToolEvent, Ws};

/// One forward's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fwd {
    Starting,
    /// Listening on this local address.
    Live(String),
    Failed(String),
}

/// View state of the Ports panel.
#[derive(Debug, Clone, Default)]
pub struct PortsView {
    /// The workspace being watched.
    pub watching: Option<Ws>,
    pub list: Option<Result<Vec<PortInfo>, String>>,
    /// Forwards by workspace port (kept when the panel closes).
    pub forwards: BTreeMap<u16, (Ws, Fwd)>,
}

impl PortsView {
    pub fn apply(&mut self, ev: ToolEvent) {
        match ev {
            ToolEvent::Ports { ws, result } if self.watching.as_ref() == Some(&ws) => {
                self.list = Some(result);
            }
            ToolEvent::Forward { port, state } => match state {
                None => {
                    self.forwards.remove(&port);
                }
                Some(r) => {
                    if let Some((_, f)) = self.forwards.get_mut(&port) {
                        *f = match r {
                            Ok(addr) => Fwd::Live(addr),
                            Err(e) => Fwd::Failed(e),
                        };
                    }
                }
            },
            _ => {}
        }
    }

    /// Stops watching (the panel is not shown).
    pub fn unwatch(&mut self, out: &mut Vec<ToolCmd>) {
        if self.watching.take().is_some() {
            out.push(ToolCmd::StopPorts);
        }
    }
}

pub fn show(ui: &mut Ui, v: &mut PortsView, ws: Option<Ws>, ws_name: &str, out: &mut Vec<ToolCmd>) {
    ui.heading("Ports");
    let Some(ws) = ws else {
        v.unwatch(out);
        ui.label("Pick a conversation: the ports are those of its workspace.");
        return;
    };
    if v.watching.as_ref() != Some(&ws) {
        v.watching = Some(ws.clone());
        v.list = None;
        out.push(ToolCmd::WatchPorts(ws.clone()));
    }
    ui.label(
        RichText::new(format!(
            "Listening TCP ports in workspace {ws_name}, updated live. Forward one to reach it on this machine."
        ))
        .weak(),
    );
    ui.separator();
    match &v.list {
        None => {
            ui.spinner();
        }
        Some(Err(e)) => {
            ui.label(
                RichText::new(format!("cannot list the ports: {e}"))
                    .color(Color32::from_rgb(220, 80, 70)),
            );
        }
        Some(Ok(list)) if list.is_empty() => {
            ui.label("No listening ports. Start a server in the workspace and it shows up here.");
        }
        Some(Ok(list)) => {
            let list = list.clone();
            egui::Grid::new("ports-grid")
                .striped(true)
                .num_columns(3)
                .show(ui, |ui| {
                    for p in &list {
                        ui.label(RichText::new(format!("{}", p.port)).strong().monospace());
                        ui.label(RichText::new(&p.addr).weak());
                        row(ui, v, &ws, p.port, out);
                        ui.end_row();
                    }
                });
        }
    }
    // Forwards whose port went away (or of other workspaces) stay until turned off.
    let listed: Vec<u16> = match &v.list {
        Some(Ok(l)) => l.iter().map(|p| p.port).collect(),
        _ => Vec::new(),
    };
    let others: Vec<u16> = v
        .forwards
        .keys()
        .copied()
        .filter(|p| !listed.contains(p))
        .collect();
    if !others.is_empty() {
        ui.separator();
        ui.label(RichText::new("Other forwards").strong());
        for port in others {
            ui.horizontal(|ui| {
                ui.label(RichText::new(format!("{port}")).monospace());
                row(ui, v, &ws, port, out);
            });
        }
    }
}

/// The toggle and the local address of one port.
fn row(ui: &mut Ui, v: &mut PortsView, ws: &Ws, port: u16, out: &mut Vec<ToolCmd>) {
    ui.horizontal(|ui| {
        let mut on = v.forwards.contains_key(&port);
        if ui
            .toggle_value(&mut on, format!("Forward {port}"))
            .on_hover_text("Listen on 127.0.0.1 and forward to this port")
            .changed()
        {
            if on {
                let target = v
                    .forwards
                    .get(&port)
                    .map(|f| f.0.clone())
                    .unwrap_or_else(|| ws.clone());
                v.forwards.insert(port, (target.clone(), Fwd::Starting));
                out.push(ToolCmd::Forward { ws: target, port });
            } else {
                v.forwards.remove(&port);
                out.push(ToolCmd::Unforward { port });
            }
        }
        match v.forwards.get(&port).map(|f| &f.1) {
            Some(Fwd::Starting) => {
                ui.spinner();
            }
            Some(Fwd::Live(addr)) => {
                let url = format!("http://{addr}");
                ui.label(format!("at {addr}"));
                ui.hyperlink_to("open", &url);
                if ui.small_button("Copy address").clicked() {
                    ui.ctx().copy_text(addr.clone());
                }
            }
            Some(Fwd::Failed(e)) => {
                ui.label(RichText::new(e).color(Color32::from_rgb(220, 80, 70)));
            }
            None => {}
        }
    });
}
