//! The GUI model without a window: events in, state and commands out.

use std::sync::Arc;

use sam_crdt::{Conversation, NewConversation, PermissionOption, Role, Status};

use super::*;
use crate::gui::palette::{self, Action};

const ME: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NODE: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn conv(id: &str, parent: Option<&str>, at: i64) -> ConvSummary {
    ConvSummary {
        id: id.into(),
        title: format!("title {id}"),
        agent: "claude".into(),
        node: NODE.into(),
        workspace: "w1".into(),
        parent: parent.map(Into::into),
        created_at: at,
        messages: 0,
        queued: 0,
    }
}

fn doc() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "c1".into(),
            title: "t".into(),
            agent: "claude".into(),
            workspace_node: NODE.into(),
            workspace_id: "w1".into(),
            created_at: 1,
        },
        ME,
    )
    .expect("create")
}

fn state_with_selection() -> AppState {
    let mut s = AppState::default();
    s.apply(Event::Nodes(vec![("box".into(), NODE.into())]));
    s.apply(Event::Convs(vec![conv("c1", None, 1)]));
    s.select("c1");
    s
}

#[test]
fn node_going_offline_notifies_once() {
    let mut s = AppState::default();
    s.apply(Event::Nodes(vec![("box".into(), NODE.into())]));
    assert_eq!(s.nodes[0].reachable, None);
    let up = Event::NodeStatus {
        id: NODE.into(),
        reachable: true,
        detail: "ok".into(),
        path: None,
    };
    assert!(s.apply(up).is_empty());
    let down = Event::NodeStatus {
        id: NODE.into(),
        reachable: false,
        detail: "gone".into(),
        path: None,
    };
    let fresh = s.apply(down.clone());
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].title.contains("unreachable"), "{fresh:?}");
    assert!(s.apply(down).is_empty());
    // The book reloads: reachability is kept.
    s.apply(Event::Nodes(vec![("box".into(), NODE.into())]));
    assert_eq!(s.nodes[0].reachable, Some(false));
}

#[test]
fn prompt_is_queued_offline_and_cleared_on_submit() {
    let mut s = state_with_selection();
    assert_eq!(
        s.prompt_hint(),
        Some("queued — will send when the node is reachable")
    );
    s.apply(Event::Link {
        conv: "c1".into(),
        online: true,
    });
    assert_eq!(s.prompt_hint(), None);
    s.prompt = "   ".into();
    assert_eq!(s.submit_prompt(), None);
    s.prompt = " hello ".into();
    assert_eq!(
        s.submit_prompt(),
        Some(Command::Prompt {
            conv: "c1".into(),
            text: "hello".into()
        })
    );
    assert!(s.prompt.is_empty());
}

#[test]
fn messages_of_other_conversations_are_ignored_and_news_notify() {
    let mut s = state_with_selection();
    let mut d = doc();
    d.append_user_message(ME, "hi", Status::Queued)
        .expect("prompt");
    let agent = d.start_message(NODE, Role::Agent).expect("agent");
    d.append_chunk(&agent, "working").expect("chunk");
    let first = Arc::new(d.messages());
    s.apply(Event::Messages {
        conv: "other".into(),
        messages: first.clone(),
        plan: vec![],
    });
    assert!(s.messages.is_empty());
    assert!(
        s.apply(Event::Messages {
            conv: "c1".into(),
            messages: first,
            plan: vec![]
        })
        .is_empty()
    );
    assert!(s.running());
    d.set_status(&agent, Status::Done, None).expect("done");
    let opts = [PermissionOption {
        id: "ok".into(),
        name: "Allow".into(),
        kind: "allow_once".into(),
    }];
    d.request_permission(NODE, "Run tests?", &opts)
        .expect("perm");
    let fresh = s.apply(Event::Messages {
        conv: "c1".into(),
        messages: Arc::new(d.messages()),
        plan: vec![],
    });
    let titles: Vec<_> = fresh.iter().map(|n| n.title.as_str()).collect();
    assert!(titles.contains(&"Agent finished"), "{titles:?}");
    assert!(titles.contains(&"Permission requested"), "{titles:?}");
    assert_eq!(s.unread(), 2);
}

#[test]
fn forks_form_a_tree_and_relatives_are_found() {
    let mut s = AppState::default();
    s.apply(Event::Convs(vec![
        conv("a", None, 1),
        conv("b", Some("a"), 3),
        conv("c", Some("b"), 4),
        conv("d", None, 2),
        conv("e", Some("a"), 5),
        conv("orphan", Some("missing"), 6),
    ]));
    let tree: Vec<(usize, &str)> = s
        .conv_tree(NODE)
        .into_iter()
        .map(|(d, c)| (d, c.id.as_str()))
        .collect();
    assert_eq!(
        tree,
        vec![
            (0, "a"),
            (1, "b"),
            (2, "c"),
            (1, "e"),
            (0, "d"),
            (0, "orphan")
        ]
    );
    s.select("b");
    let (parent, kids) = s.relatives();
    assert_eq!(parent.map(|p| p.id.as_str()), Some("a"));
    assert_eq!(
        kids.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
}

#[test]
fn fuzzy_search_ranks_and_filters() {
    assert!(palette::fuzzy_score("stg", "Settings").is_some());
    assert!(palette::fuzzy_score("xyz", "Settings").is_none());
    let exact = palette::fuzzy_score("set", "Settings").expect("match");
    let scattered = palette::fuzzy_score("set", "Some extra text").expect("match");
    assert!(exact > scattered);
    let mut s = state_with_selection();
    s.palette.query = "title c1".into();
    let items = palette::filtered(&s);
    assert_eq!(items[0].action, Action::OpenConv("c1".into()));
}

#[test]
fn palette_actions_open_dialogs_and_emit_commands() {
    let mut s = state_with_selection();
    s.palette.open = true;
    assert_eq!(s.run_action(Action::Settings), Some(Command::LoadKeys));
    assert!(s.dialogs.settings && !s.palette.open);
    assert_eq!(s.run_action(Action::NewConv), None);
    let form = s.dialogs.new_conv.clone().expect("form");
    assert_eq!(form.node, NODE);
    assert_eq!(
        s.new_conv_command()
            .map(|c| matches!(c, Command::NewConv { .. })),
        Some(true)
    );
    assert_eq!(
        s.run_action(Action::Cancel),
        Some(Command::Cancel { conv: "c1".into() })
    );
    assert_eq!(
        s.run_action(Action::Share),
        Some(Command::ListShares { node: NODE.into() })
    );
    let dark = s.prefs.dark;
    s.run_action(Action::ToggleTheme);
    assert_ne!(s.prefs.dark, dark);
    s.apply(Event::Opened("c2".into()));
    assert_eq!(s.selected.as_deref(), Some("c2"));
}
