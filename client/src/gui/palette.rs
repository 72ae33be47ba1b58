//! The command palette (Ctrl+K): fuzzy search over actions, conversations and workspaces.
//! Pure functions over [`AppState`]; the view only draws the result.

use super::state::{AppState, Command, Panel};

/// Palette input.
#[derive(Debug, Clone, Default)]
pub struct PaletteState {
    pub open: bool,
    pub query: String,
    /// Index into the filtered list.
    pub cursor: usize,
}

/// What a palette entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Connect,
    NewConv,
    NewIdea,
    /// Moves the selected conversation off its unreachable node.
    MoveConv,
    NewConvIn {
        node: String,
        workspace: String,
    },
    OpenConv(String),
    Settings,
    Share,
    Notifications,
    ToggleTheme,
    Refresh,
    Show(Panel),
    Cancel,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub label: String,
    pub action: Action,
}

/// Every entry, before filtering.
pub fn items(state: &AppState) -> Vec<Item> {
    let mut out: Vec<Item> = [
        ("Connect to a node…", Action::Connect),
        ("New conversation…", Action::NewConv),
        ("New idea…", Action::NewIdea),
        ("Settings", Action::Settings),
        ("Share node…", Action::Share),
        ("Notifications", Action::Notifications),
        ("Toggle dark/light theme", Action::ToggleTheme),
        ("Refresh nodes and conversations", Action::Refresh),
        ("Show chat", Action::Show(Panel::Chat)),
        ("Show files", Action::Show(Panel::Files)),
        ("Show terminal", Action::Show(Panel::Terminal)),
        ("Show ports", Action::Show(Panel::Ports)),
        ("Cancel the running turn", Action::Cancel),
    ]
    .into_iter()
    .map(|(l, a)| Item {
        label: l.to_string(),
        action: a,
    })
    .collect();
    if super::relocate::node_down(state) {
        out.push(Item {
            label: "Continue on another node…".into(),
            action: Action::MoveConv,
        });
    }
    for c in &state.convs {
        out.push(Item {
            label: format!("Conversation: {} ({})", c.title, c.agent),
            action: Action::OpenConv(c.id.clone()),
        });
    }
    for (node, list) in &state.workspaces {
        if let Ok(list) = list {
            for w in list {
                out.push(Item {
                    label: format!(
                        "Workspace: {} on {} — new conversation",
                        w.name,
                        state.node_name(node)
                    ),
                    action: Action::NewConvIn {
                        node: node.clone(),
                        workspace: w.id.clone(),
                    },
                });
            }
        }
    }
    out
}

/// Entries matching `query`, best first.
pub fn filtered(state: &AppState) -> Vec<Item> {
    let q = state.palette.query.trim();
    let mut scored: Vec<(i64, usize, Item)> = items(state)
        .into_iter()
        .enumerate()
        .filter_map(|(i, it)| fuzzy_score(q, &it.label).map(|s| (s, i, it)))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, _, it)| it).take(50).collect()
}

/// Subsequence match, case-insensitive; higher is better. Consecutive letters and
/// letters at word starts score more. `None` when not all letters are found.
pub fn fuzzy_score(query: &str, text: &str) -> Option<i64> {
    if query.is_empty() {
        return Some(0);
    }
    let text: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let mut score = 0i64;
    let mut ti = 0usize;
    let mut last: Option<usize> = None;
    for qc in query.chars().flat_map(char::to_lowercase) {
        if qc.is_whitespace() {
            continue;
        }
        let pos = text[ti..].iter().position(|c| *c == qc)? + ti;
        score += 1;
        if last.is_some_and(|l| l + 1 == pos) {
            score += 5;
        }
        if pos == 0 || !text[pos - 1].is_alphanumeric() {
            score += 3;
        }
        last = Some(pos);
        ti = pos + 1;
    }
    Some(score * 100 - text.len() as i64)
}

impl AppState {
    /// Runs a palette entry: changes what the UI shows and returns a command when the
    /// backend has work to do. Closes the palette.
    pub fn run_action(&mut self, action: Action) -> Option<Command> {
        self.palette = PaletteState::default();
        match action {
            Action::Connect => {
                self.dialogs.connect = true;
                None
            }
            Action::NewConv => {
                self.open_new_conv(None, None);
                None
            }
            Action::NewIdea => {
                let agent = self.prefs.default_agent.clone();
                self.idea.open(&agent);
                None
            }
            Action::MoveConv => {
                if let Some(id) = self.selected.clone() {
                    self.moving.open(&id);
                }
                None
            }
            Action::NewConvIn { node, workspace } => {
                self.open_new_conv(Some(node), Some(workspace));
                None
            }
            Action::OpenConv(id) => Some(self.select(&id)),
            Action::Settings => {
                self.dialogs.settings = true;
                Some(Command::LoadKeys)
            }
            Action::Share => self.open_share(None),
            Action::Notifications => {
                self.dialogs.notifications = true;
                None
            }
            Action::ToggleTheme => {
                self.prefs.dark = !self.prefs.dark;
                None
            }
            Action::Refresh => Some(Command::Refresh),
            Action::Show(p) => {
                self.panel = p;
                None
            }
            Action::Cancel => self.selected.clone().map(|conv| Command::Cancel { conv }),
        }
    }
}
