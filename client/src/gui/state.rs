//! The GUI's model: a plain struct updated only by [`AppState::apply`] from backend
//! [`Event`]s, and the [`Command`]s the view sends back. No egui, no tokio: tests build
//! it directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use sam_crdt::{MessageView, PlanEntry, Role, Status};

use super::files::FilesView;
use super::idea::IdeaView;
use super::palette::PaletteState;
use super::ports::PortsView;
use super::relocate::MoveView;
use super::tools::ToolCmd;
use super::voice::VoiceView;

/// What the backend tells the UI.
#[derive(Debug, Clone)]
pub enum Event {
    /// This peer's NodeId.
    Me(String),
    /// The node book: `(name, id)`.
    Nodes(Vec<(String, String)>),
    /// A node answered (or not) its status request.
    NodeStatus {
        id: String,
        reachable: bool,
        detail: String,
        /// The path the status request took (`sam status`'s path), when reachable.
        path: Option<NodePath>,
    },
    /// Workspaces of a node, or why they could not be listed.
    Workspaces {
        node: String,
        list: Result<Vec<WorkspaceRow>, String>,
    },
    /// Every local conversation.
    Convs(Vec<ConvSummary>),
    /// One conversation's row changed (the followed one).
    Conv(ConvSummary),
    /// The selected conversation's messages (a fresh snapshot).
    Messages {
        conv: String,
        messages: Arc<Vec<MessageView>>,
        plan: Vec<PlanEntry>,
    },
    /// The live link of the selected conversation to its node came up or went down.
    Link { conv: String, online: bool },
    /// A conversation was created or forked here: show it.
    Opened(String),
    /// Capabilities of a node.
    Shares { node: String, list: Vec<ShareRow> },
    /// A share was made: the ticket to hand over.
    ShareTicket(String),
    /// Where the agent keys are kept, and which are set.
    Keys(KeysView),
    /// Bytes from the open terminal.
    TermOutput(Vec<u8>),
    /// The terminal opened, closed or failed.
    TermStatus { open: bool, text: String },
    /// Something to tell the user.
    Notice(Notification),
}

/// What the UI asks the backend to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Reload nodes and conversations; ask every node for its status and workspaces.
    Refresh,
    Connect {
        ticket: String,
        name: Option<String>,
    },
    /// Follow this conversation (load it, sync it live).
    Select(String),
    /// Follow it again from the local replica, changed by another path (a move): drops the
    /// in-memory copy and its link.
    Reopen(String),
    Prompt {
        conv: String,
        text: String,
    },
    Cancel {
        conv: String,
    },
    Permit {
        conv: String,
        message: String,
        option: String,
    },
    Fork {
        conv: String,
        at: String,
    },
    NewConv {
        node: String,
        workspace: String,
        agent: String,
        title: Option<String>,
    },
    ListShares {
        node: String,
    },
    Share {
        node: String,
        role: String,
        to: Option<String>,
        expires: Option<String>,
    },
    Revoke {
        node: String,
        id: String,
    },
    /// Stores an agent API key (environment variable name → value).
    SaveKey {
        name: String,
        value: String,
    },
    LoadKeys,
    /// Attaches to the workspace's terminal (`sam/pty/1`).
    OpenTerminal {
        node: String,
        workspace: String,
        rows: u16,
        cols: u16,
    },
    TermInput(Vec<u8>),
    TermResize {
        rows: u16,
        cols: u16,
    },
    /// Shows a desktop notification when a notification service runs.
    Desktop {
        title: String,
        body: String,
    },
}

/// One known node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    /// `None` until the first status answer.
    pub reachable: Option<bool>,
    pub detail: String,
    /// How the last status request reached the node (direct or through a relay).
    pub path: Option<NodePath>,
}

/// How a node is reached: `kind` is `direct` or `relay` (`sam status`'s path), `note` says
/// through which relay and why not direct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePath {
    pub kind: String,
    pub note: String,
}

impl From<crate::endpoint::PathReport> for NodePath {
    fn from(p: crate::endpoint::PathReport) -> Self {
        let mut note = match (&p.relay_url, p.path.as_str()) {
            (Some(r), "relay") => format!("through relay {r}"),
            _ => format!("{} path", p.path),
        };
        if let Some(w) = &p.why_not_direct {
            note.push('\n');
            note.push_str(w);
        }
        Self { kind: p.path, note }
    }
}

/// One workspace of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub status: String,
}

/// One conversation in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSummary {
    pub id: String,
    pub title: String,
    pub agent: String,
    pub node: String,
    pub workspace: String,
    pub parent: Option<String>,
    pub created_at: i64,
    pub messages: usize,
    pub queued: usize,
}

/// One capability of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRow {
    pub id: String,
    pub role: String,
    pub grantee: String,
    pub state: String,
}

/// Agent keys: where they live and which are set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeysView {
    /// e.g. "OS keyring (Secret Service)" or the fallback file and why.
    pub storage: String,
    /// `(variable, is set)`.
    pub keys: Vec<(String, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A notification (toast + list entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub level: Level,
    pub title: String,
    pub body: String,
    /// When the UI first showed it as a toast (egui time, seconds).
    pub shown_at: Option<f64>,
    pub dismissed: bool,
}

impl Notification {
    pub fn new(level: Level, title: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            level,
            title: title.into(),
            body: body.into(),
            shown_at: None,
            dismissed: false,
        }
    }
}

/// The main area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Panel {
    #[default]
    Chat,
    Files,
    Terminal,
    Ports,
}

/// The "new conversation" form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewConvForm {
    pub node: String,
    pub workspace: String,
    pub agent: String,
    pub title: String,
}

/// The share dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareForm {
    pub node: String,
    pub role: String,
    pub invite: bool,
    pub to: String,
    pub expires: String,
}

/// Open dialogs and their inputs.
#[derive(Debug, Clone, Default)]
pub struct Dialogs {
    pub connect: bool,
    pub ticket: String,
    pub node_name: String,
    pub new_conv: Option<NewConvForm>,
    pub settings: bool,
    pub share: Option<ShareForm>,
    pub notifications: bool,
    pub key_name: String,
    pub key_value: String,
}

/// User preferences (saved in `$SAM_HOME/gui.toml`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Prefs {
    pub default_agent: String,
    pub dark: bool,
    pub desktop_notifications: bool,
}

impl Default for Prefs {
    fn default() -> Self {
        Self {
            default_agent: "claude".into(),
            dark: true,
            desktop_notifications: true,
        }
    }
}

/// Agents offered in the UI.
pub const AGENTS: &[&str] = &["claude", "codex", "gemini", "vibe"];

/// Everything the view shows.
#[derive(Debug, Default)]
pub struct AppState {
    pub me: String,
    pub nodes: Vec<NodeView>,
    pub workspaces: BTreeMap<String, Result<Vec<WorkspaceRow>, String>>,
    pub convs: Vec<ConvSummary>,
    pub selected: Option<String>,
    pub messages: Arc<Vec<MessageView>>,
    pub plan: Vec<PlanEntry>,
    /// The selected conversation is linked live to its node.
    pub online: bool,
    pub prompt: String,
    pub notifications: Vec<Notification>,
    pub palette: PaletteState,
    pub shares: Vec<ShareRow>,
    pub share_ticket: Option<String>,
    pub keys: KeysView,
    pub prefs: Prefs,
    pub dialogs: Dialogs,
    pub panel: Panel,
    /// Terminal output not yet drawn (the view feeds it to its screen).
    pub term_out: Vec<u8>,
    pub term_open: bool,
    pub term_status: String,
    /// Voice controls and the player bar.
    pub voice: VoiceView,
    pub files: FilesView,
    pub ports: PortsView,
    /// Commands for the tools worker (files, ports, voice), handed over after each frame.
    pub tools_out: Vec<ToolCmd>,
    /// The "New idea" dialog and its run.
    pub idea: IdeaView,
    /// The "Continue on another node" dialog and its run.
    pub moving: MoveView,
    /// Commands for the backend made outside the view (e.g. when an idea ends).
    pub backend_out: Vec<Command>,
}

impl AppState {
    /// Applies one backend event; returns notifications that are new (for the desktop).
    pub fn apply(&mut self, ev: Event) -> Vec<Notification> {
        let mut fresh = Vec::new();
        match ev {
            Event::Me(id) => self.me = id,
            Event::Nodes(list) => {
                let old = std::mem::take(&mut self.nodes);
                self.nodes = list
                    .into_iter()
                    .map(|(name, id)| {
                        let prev = old.iter().find(|n| n.id == id);
                        NodeView {
                            reachable: prev.and_then(|p| p.reachable),
                            detail: prev.map(|p| p.detail.clone()).unwrap_or_default(),
                            path: prev.and_then(|p| p.path.clone()),
                            id,
                            name,
                        }
                    })
                    .collect();
            }
            Event::NodeStatus {
                id,
                reachable,
                detail,
                path,
            } => {
                if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
                    if n.reachable == Some(true) && !reachable {
                        fresh.push(Notification::new(
                            Level::Warn,
                            format!("Node {} unreachable", n.name),
                            detail.clone(),
                        ));
                    }
                    n.reachable = Some(reachable);
                    n.detail = detail;
                    n.path = path;
                }
            }
            Event::Workspaces { node, list } => {
                self.workspaces.insert(node, list);
            }
            Event::Convs(list) => self.convs = list,
            Event::Conv(c) => match self.convs.iter_mut().find(|o| o.id == c.id) {
                Some(o) => *o = c,
                None => self.convs.push(c),
            },
            Event::Messages {
                conv,
                messages,
                plan,
            } => {
                if self.selected.as_deref() == Some(conv.as_str()) {
                    fresh.extend(news(&self.messages, &messages, self.title_of(&conv)));
                    self.messages = messages;
                    self.plan = plan;
                }
            }
            Event::Link { conv, online } => {
                if self.selected.as_deref() == Some(conv.as_str()) {
                    self.online = online;
                }
            }
            Event::Opened(id) => {
                self.dialogs.new_conv = None;
                self.select(&id);
            }
            Event::Shares { node: _, list } => self.shares = list,
            Event::ShareTicket(t) => self.share_ticket = Some(t),
            Event::Keys(k) => self.keys = k,
            Event::TermOutput(b) => {
                if self.term_out.len() < 8 << 20 {
                    self.term_out.extend_from_slice(&b);
                }
            }
            Event::TermStatus { open, text } => {
                self.term_open = open;
                self.term_status = text;
            }
            Event::Notice(n) => fresh.push(n),
        }
        self.notifications.extend(fresh.iter().cloned());
        let excess = self.notifications.len().saturating_sub(200);
        self.notifications.drain(..excess);
        fresh
    }

    /// Shows a conversation; the caller sends [`Command::Select`].
    pub fn select(&mut self, id: &str) -> Command {
        if self.selected.as_deref() != Some(id) {
            self.selected = Some(id.to_string());
            self.messages = Arc::new(Vec::new());
            self.plan.clear();
            self.online = false;
        }
        self.panel = Panel::Chat;
        Command::Select(id.to_string())
    }

    pub fn title_of(&self, id: &str) -> String {
        self.convs
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.title.clone())
            .unwrap_or_else(|| id.chars().take(8).collect())
    }

    pub fn node_name(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| id.chars().take(8).collect())
    }

    pub fn selected_conv(&self) -> Option<&ConvSummary> {
        let id = self.selected.as_deref()?;
        self.convs.iter().find(|c| c.id == id)
    }

    /// The agent is working on the selected conversation.
    pub fn running(&self) -> bool {
        self.messages.iter().rev().take(50).any(|m| {
            matches!(m.status, Status::Running | Status::Streaming) && m.role != Role::Permission
        })
    }

    /// The line under the prompt box.
    pub fn prompt_hint(&self) -> Option<&'static str> {
        self.selected.as_ref()?;
        (!self.online).then_some("queued — will send when the node is reachable")
    }

    /// Takes the prompt text as a command (`None` when empty or nothing is selected).
    pub fn submit_prompt(&mut self) -> Option<Command> {
        let conv = self.selected.clone()?;
        let text = self.prompt.trim().to_string();
        if text.is_empty() {
            return None;
        }
        self.prompt.clear();
        Some(Command::Prompt { conv, text })
    }

    /// Conversations of one node as a fork tree: `(depth, conversation)`, parents first.
    pub fn conv_tree(&self, node: &str) -> Vec<(usize, &ConvSummary)> {
        let mine: Vec<&ConvSummary> = self.convs.iter().filter(|c| c.node == node).collect();
        let mut children: BTreeMap<&str, Vec<&ConvSummary>> = BTreeMap::new();
        let mut roots = Vec::new();
        for c in &mine {
            match &c.parent {
                Some(p) if mine.iter().any(|o| &o.id == p) => {
                    children.entry(p.as_str()).or_default().push(c)
                }
                _ => roots.push(*c),
            }
        }
        roots.sort_by_key(|c| c.created_at);
        let mut out = Vec::new();
        let mut stack: Vec<(usize, &ConvSummary)> =
            roots.into_iter().rev().map(|c| (0, c)).collect();
        while let Some((d, c)) = stack.pop() {
            out.push((d, c));
            if out.len() > 10_000 {
                break;
            }
            if let Some(kids) = children.get_mut(c.id.as_str()) {
                kids.sort_by_key(|k| k.created_at);
                stack.extend(kids.iter().rev().map(|k| (d + 1, *k)));
            }
        }
        out
    }

    /// Forks of the selected conversation and its parent, for jumping between them.
    pub fn relatives(&self) -> (Option<&ConvSummary>, Vec<&ConvSummary>) {
        let Some(cur) = self.selected_conv() else {
            return (None, Vec::new());
        };
        let parent = cur
            .parent
            .as_ref()
            .and_then(|p| self.convs.iter().find(|c| &c.id == p));
        let kids = self
            .convs
            .iter()
            .filter(|c| c.parent.as_deref() == Some(cur.id.as_str()))
            .collect();
        (parent, kids)
    }

    /// Opens the new-conversation form for a node (and workspace, when known).
    pub fn open_new_conv(&mut self, node: Option<String>, workspace: Option<String>) {
        let node = node
            .or_else(|| self.selected_conv().map(|c| c.node.clone()))
            .or_else(|| self.nodes.first().map(|n| n.id.clone()))
            .unwrap_or_default();
        let workspace = workspace
            .or_else(|| {
                self.workspaces
                    .get(&node)
                    .and_then(|l| l.as_ref().ok())
                    .and_then(|l| l.first().map(|w| w.id.clone()))
            })
            .or_else(|| {
                self.selected_conv()
                    .filter(|c| c.node == node)
                    .map(|c| c.workspace.clone())
            })
            .unwrap_or_default();
        self.dialogs.new_conv = Some(NewConvForm {
            node,
            workspace,
            agent: self.prefs.default_agent.clone(),
            title: String::new(),
        });
    }

    /// The form's command, when complete.
    pub fn new_conv_command(&self) -> Option<Command> {
        let f = self.dialogs.new_conv.as_ref()?;
        if f.node.is_empty() || f.workspace.trim().is_empty() || f.agent.is_empty() {
            return None;
        }
        Some(Command::NewConv {
            node: f.node.clone(),
            workspace: f.workspace.trim().to_string(),
            agent: f.agent.clone(),
            title: Some(f.title.trim().to_string()).filter(|t| !t.is_empty()),
        })
    }

    /// Opens the share dialog for a node.
    pub fn open_share(&mut self, node: Option<String>) -> Option<Command> {
        let node = node
            .or_else(|| self.selected_conv().map(|c| c.node.clone()))
            .or_else(|| self.nodes.first().map(|n| n.id.clone()))?;
        self.share_ticket = None;
        self.shares.clear();
        self.dialogs.share = Some(ShareForm {
            node: node.clone(),
            role: "collaborator".into(),
            invite: true,
            to: String::new(),
            expires: "7d".into(),
        });
        Some(Command::ListShares { node })
    }

    /// Unread notifications.
    pub fn unread(&self) -> usize {
        self.notifications.iter().filter(|n| !n.dismissed).count()
    }
}

/// Notifications for what changed between two snapshots of one conversation: a new
/// unanswered permission request, an agent message that finished or failed. Looks only
/// at the tail, where changes happen.
fn news(old: &[MessageView], new: &[MessageView], title: String) -> Vec<Notification> {
    let mut out = Vec::new();
    if old.is_empty() {
        return out;
    }
    let start = old.len().saturating_sub(8).min(new.len());
    for (i, m) in new.iter().enumerate().skip(start) {
        let before = old.get(i).filter(|o| o.id == m.id);
        match m.role {
            Role::Permission => {
                let unanswered = m.permission.as_ref().is_some_and(|p| p.chosen.is_none());
                if before.is_none() && unanswered {
                    out.push(Notification::new(
                        Level::Warn,
                        "Permission requested",
                        format!("{title}: {}", first_line(&m.text)),
                    ));
                }
            }
            Role::Agent => {
                let was_busy = before.is_some_and(|o| {
                    matches!(
                        o.status,
                        Status::Running | Status::Streaming | Status::Queued
                    )
                });
                if was_busy && m.status == Status::Done {
                    out.push(Notification::new(
                        Level::Info,
                        "Agent finished",
                        title.clone(),
                    ));
                }
                if was_busy && m.status == Status::Failed {
                    out.push(Notification::new(
                        Level::Error,
                        "Agent failed",
                        format!("{title}: {}", m.reason.clone().unwrap_or_default()),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

pub fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or_default();
    if l.chars().count() > 80 {
        let cut: String = l.chars().take(79).collect();
        format!("{cut}…")
    } else {
        l.to_string()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
