//! `sam gui` driven headless with egui_kittest (AccessKit queries, no renderer) against a
//! real `sam-node` on loopback. A teammate (a second identity with a collaborator
//! capability) plays the agent: it streams output into the conversation and asks for a
//! permission, exactly as the node's agent runner would, through the node.

use std::path::Path;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::gui::GuiApp;
use sam_client::{ClientPaths, NodeBook};
use sam_crdt::{Conversation, PermissionOption, Role, Status};

use crate::support::bins::{ok, sam, start_node};

type H<'a> = Harness<'a, GuiApp>;

/// Steps the UI until `cond` holds (panics with `what` after 30 s).
fn wait_until(h: &mut H<'_>, what: &str, cond: impl Fn(&H<'_>) -> bool) {
    let t0 = Instant::now();
    loop {
        h.step();
        if cond(h) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let s = &h.state().state;
            panic!(
                "timed out waiting for: {what}\nnodes: {:?}\nnotifications: {:?}\nselected: {:?} online: {}\nmessages: {:?}",
                s.nodes, s.notifications, s.selected, s.online, s.messages
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Focuses the text box labelled `label` and types into it.
fn type_into(h: &mut H<'_>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

fn steps(h: &mut H<'_>, n: usize) {
    for _ in 0..n {
        h.step();
    }
}

/// The teammate's replica of a conversation, synced once with the node.
struct Teammate {
    rt: tokio::runtime::Runtime,
    paths: ClientPaths,
    me: String,
    ep: iroh::Endpoint,
}

impl Teammate {
    fn new(home: &Path) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let paths = ClientPaths::new(home);
        let key = paths.identity().expect("identity");
        let me = key.node_id().to_string();
        let ep = rt
            .block_on(sam_client::endpoint::bind(&key, "127.0.0.1:0".parse().ok()))
            .expect("bind");
        Self { rt, paths, me, ep }
    }

    fn sync(&self, conv: &mut Conversation, id: &str) {
        let book = NodeBook::load(&self.paths.nodes()).expect("book");
        let ticket = book.find(None).expect("node").ticket().expect("ticket");
        self.rt.block_on(async {
            let mut s = sam_client::docs::open_stream(&self.ep, &ticket, id, false)
                .await
                .expect("open doc stream");
            s.sync_once(conv, |_| Ok(()), Duration::from_secs(10))
                .await
                .expect("sync");
            s.close(None).await;
        });
    }
}

#[test]
fn gui_connects_prompts_streams_permits_forks_and_runs_the_palette() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me_home = tmp.path().join("me");
    let team_home = tmp.path().join("team");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (_node, ticket) = start_node(&tmp.path().join("node"), &owner);

    let app = GuiApp::new(me.clone()).expect("start the gui");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 900.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    steps(&mut h, 3);

    // Connect by pasting a ticket.
    h.get_by_label("➕ Connect node").click();
    steps(&mut h, 2);
    type_into(&mut h, "Ticket", &ticket);
    type_into(&mut h, "Name (optional)", "box");
    steps(&mut h, 1);
    h.get_by_label("Connect").click();
    wait_until(&mut h, "the node shows as reachable", |h| {
        h.state()
            .state
            .nodes
            .iter()
            .any(|n| n.reachable == Some(true))
    });
    assert_eq!(h.state().state.nodes[0].name, "box");

    // The teammate gets a collaborator ticket through the CLI.
    let team_id = ClientPaths::new(&team_home)
        .identity()
        .expect("identity")
        .node_id()
        .to_string();
    let out = ok(sam(
        &me_home,
        &[
            "--json",
            "share",
            "box",
            "--role",
            "collaborator",
            "--to",
            &team_id,
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let team_ticket = v["ticket"].as_str().expect("ticket").to_string();
    ok(sam(&team_home, &["join", &team_ticket, "--name", "box"]));

    // New conversation.
    h.get_by_label("New conversation").click();
    steps(&mut h, 2);
    type_into(&mut h, "Workspace id", "w1");
    type_into(&mut h, "Title (optional)", "gui test");
    steps(&mut h, 1);
    h.get_by_label("Create").click();
    wait_until(&mut h, "the new conversation is live", |h| {
        let s = &h.state().state;
        s.selected.is_some() && s.online
    });
    let conv_id = h.state().state.selected.clone().expect("selected");
    assert!(
        h.query_all_by_label_contains("gui test").count() >= 2,
        "sidebar + heading"
    );

    // A prompt reaches the node.
    type_into(&mut h, "Prompt", "hello from the gui");
    steps(&mut h, 1);
    h.get_by_label("Send").click();
    wait_until(&mut h, "the prompt shows", |h| {
        h.query_all_by_label_contains("hello from the gui")
            .next()
            .is_some()
    });
    let team = Teammate::new(&team_home);
    let mut doc = Conversation::new_replica();
    team.sync(&mut doc, &conv_id);
    assert!(
        doc.messages()
            .iter()
            .any(|m| m.role == Role::User && m.text == "hello from the gui"),
        "the node did not get the prompt: {:?}",
        doc.messages()
    );

    // The "agent" streams: every chunk shows up live.
    let agent = doc
        .start_message(&team.me, Role::Agent)
        .expect("agent message");
    for i in 0..5 {
        doc.append_chunk(&agent, &format!("Streaming chunk {i}. "))
            .expect("chunk");
        team.sync(&mut doc, &conv_id);
        wait_until(&mut h, &format!("chunk {i} streams in"), |h| {
            h.state()
                .state
                .messages
                .iter()
                .any(|m| m.text.contains(&format!("chunk {i}")))
        });
    }
    assert!(
        h.query_all_by_label_contains("Streaming chunk 4")
            .next()
            .is_some()
    );
    doc.set_status(&agent, Status::Done, None).expect("done");
    team.sync(&mut doc, &conv_id);
    wait_until(&mut h, "an 'agent finished' notification", |h| {
        h.query_by_label("Agent finished").is_some()
    });

    // A permission request: the agent's options are buttons; the answer reaches the node.
    let options = [
        PermissionOption {
            id: "allow".into(),
            name: "Allow once".into(),
            kind: "allow_once".into(),
        },
        PermissionOption {
            id: "reject".into(),
            name: "Reject".into(),
            kind: "reject_once".into(),
        },
    ];
    let perm = doc
        .request_permission(&team.me, "Run the tests?", &options)
        .expect("permission");
    team.sync(&mut doc, &conv_id);
    wait_until(&mut h, "the permission buttons", |h| {
        h.query_by_label("Allow once").is_some()
    });
    assert!(h.query_by_label("Permission requested").is_some(), "toast");
    h.get_by_label("Allow once").click();
    wait_until(&mut h, "the answer shows", |h| {
        h.query_by_label_contains("answered: Allow once").is_some()
    });
    let t0 = Instant::now();
    loop {
        team.sync(&mut doc, &conv_id);
        let chosen = doc
            .message(&perm)
            .and_then(|m| m.permission)
            .and_then(|p| p.chosen);
        if let Some(c) = chosen {
            assert_eq!(c.option, "allow");
            assert_eq!(c.by, owner);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the node never got the answer"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(100));
    }

    // Fork at the first message, then jump back to the parent.
    h.get_all_by_label("🔀 Fork")
        .next()
        .expect("a fork button")
        .click();
    wait_until(&mut h, "the fork is selected", |h| {
        let s = &h.state().state;
        s.selected.as_deref() != Some(conv_id.as_str())
            && s.selected_conv().and_then(|c| c.parent.clone()) == Some(conv_id.clone())
    });
    assert!(h.query_by_label("forked from").is_some());
    h.get_by_label("« gui test").click();
    wait_until(&mut h, "back on the parent", |h| {
        h.state().state.selected.as_deref() == Some(conv_id.as_str())
    });

    // The command palette runs an action.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::K);
    steps(&mut h, 2);
    assert!(h.state().state.palette.open);
    type_into(&mut h, "Search commands", "settings");
    steps(&mut h, 2);
    h.key_press(egui::Key::Enter);
    steps(&mut h, 3);
    assert!(h.state().state.dialogs.settings, "Settings did not open");
    wait_until(&mut h, "the key storage line", |h| {
        h.query_by_label_contains("keyring").is_some()
    });

    // Offline: the prompt is queued locally.
    drop(_node);
    wait_until(&mut h, "the conversation goes offline", |h| {
        !h.state().state.online
    });
    assert!(h.query_by_label_contains("queued — will send").is_some());
}

#[test]
fn terminal_panel_draws_pty_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = GuiApp::new(ClientPaths::new(tmp.path())).expect("start the gui");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1100.0, 700.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    h.step();
    h.get_by_label("Terminal").click();
    steps(&mut h, 2);
    {
        let s = &mut h.state_mut().state;
        s.term_open = true;
        s.term_out
            .extend_from_slice(b"$ echo hi\r\nhi\r\n\x1b[32mgreen\x1b[0m prompt$ ");
    }
    steps(&mut h, 2);
    assert!(h.query_by_label_contains("$ echo hi").is_some());
    assert!(h.query_by_label_contains("green prompt$").is_some());
    assert!(h.query_by_label("Copy screen").is_some());
}
