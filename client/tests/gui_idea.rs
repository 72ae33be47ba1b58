//! The "New idea" dialog of `sam gui`, driven headless with egui_kittest: opened from the
//! Ctrl+K palette, filled, and started. The form refuses an empty idea or a bad repository
//! URL without running anything; a start against a real `sam-node` on loopback with an
//! unreachable repository runs `sam idea`'s flow on the tools worker, shows its progress
//! lines live and ends with the failed step in the dialog and a notification.
//!
//! "Continue on another node…": a conversation whose node was killed is moved from its
//! header button to a second node (`sam move`'s flow on the tools worker), and followed
//! live there.
//!
//! The second test needs dockerd and the `sam-base:1` image (or `SAM_BASE_IMAGE`): the
//! workspace step clones inside a container, and `cargo build --bins`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::ClientPaths;
use sam_client::gui::GuiApp;
use sam_client::gui::idea::{Outcome, Place};

fn sam_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sam"))
}

fn node_bin() -> PathBuf {
    let p = sam_bin().with_file_name("sam-node");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

fn sam(home: &Path, args: &[&str]) -> Output {
    Command::new(sam_bin())
        .env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run sam")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Inits and runs a node owned by `owner`; returns it and its ticket.
fn start_node(home: &Path, owner: &str) -> (NodeProc, String) {
    ok(Command::new(node_bin())
        .env("SAM_HOME", home)
        .args(["init", "--owner", owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init"));
    let mut child = Command::new(node_bin())
        .env("SAM_HOME", home)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ticket");
    (NodeProc(child), line.trim().to_string())
}

/// Runs `test` again in a child process of this test binary, with a made-up GitHub token
/// and a git identity of its own in the environment (this crate forbids `unsafe`, so no
/// `set_var` here). Returns `true` in the child, which then runs the test's body.
fn in_child_with_env(test: &str) -> bool {
    if std::env::var_os("SAM_GUI_IDEA_CHILD").is_some() {
        return true;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let gitconfig = dir.path().join("gitconfig");
    std::fs::write(
        &gitconfig,
        "[user]\n\tname = Gui Idea Test\n\temail = gui-idea@example.com\n",
    )
    .expect("gitconfig");
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SAM_GUI_IDEA_CHILD", "1")
        .env("GH_TOKEN", "not-a-real-token-gui-idea")
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .expect("run the test binary");
    assert!(status.success(), "{test} failed in its child: {status}");
    false
}

type H<'a> = Harness<'a, GuiApp>;

fn harness<'a>(paths: &ClientPaths) -> H<'a> {
    let app = GuiApp::new(paths.clone()).expect("start the gui");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 900.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    steps(&mut h, 3);
    h
}

/// Steps the UI until `cond` holds (panics with `what` after `secs`).
fn wait_until(h: &mut H<'_>, what: &str, secs: u64, cond: impl Fn(&H<'_>) -> bool) {
    let t0 = Instant::now();
    loop {
        h.step();
        if cond(h) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let s = &h.state().state;
            panic!(
                "timed out waiting for: {what}\nnodes: {:?}\nidea: {:?}\nnotifications: {:?}",
                s.nodes, s.idea, s.notifications
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn steps(h: &mut H<'_>, n: usize) {
    for _ in 0..n {
        h.step();
    }
}

/// Focuses the text box labelled `label` and types into it.
fn type_into(h: &mut H<'_>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

fn shown(h: &H<'_>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

/// Ctrl+K, "idea", the "New idea…" entry: the dialog is open with its defaults.
fn open_from_palette(h: &mut H<'_>) {
    assert!(!shown(h, "Repository URL"), "the dialog starts closed");
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::K);
    steps(h, 2);
    assert!(h.state().state.palette.open, "Ctrl+K opens the palette");
    type_into(h, "Search commands", "idea");
    steps(h, 2);
    let best = sam_client::gui::palette::filtered(&h.state().state);
    assert_eq!(best[0].label, "New idea…", "the best match of \"idea\"");
    assert!(
        h.query_by_label("New idea…").is_some(),
        "the palette lists it"
    );
    h.key_press(egui::Key::Enter);
    steps(h, 3);
    assert!(!h.state().state.palette.open, "the palette closed");
    for label in ["Idea", "Repository URL", "Base branch", "Start"] {
        assert!(h.query_by_label(label).is_some(), "control {label:?}");
    }
    assert!(shown(h, "Provider: local"));
    let f = h.state().state.idea.form.clone().expect("the form");
    assert_eq!(f.base, "main");
    assert_eq!(f.agent, "claude", "the default agent of the settings");
    assert_eq!(f.place, Place::Provider("local".into()));
}

#[test]
fn idea_form_refuses_an_empty_idea_and_a_bad_repo_url_without_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = ClientPaths::new(tmp.path().join("me"));
    let mut h = harness(&me);
    open_from_palette(&mut h);

    // Nothing typed: Start says why and runs nothing.
    h.get_by_label("Start").click();
    steps(&mut h, 3);
    assert!(shown(&h, "Cannot start: The idea is empty"), "empty idea");
    assert!(h.state().state.idea.running.is_none());
    assert_eq!(h.state().state.idea.runs, 0, "nothing ran");

    // An idea but a repository that is no URL.
    type_into(&mut h, "Idea", "Add a README badge");
    type_into(&mut h, "Repository URL", "github.com/me/repo");
    h.get_by_label("Start").click();
    steps(&mut h, 3);
    assert!(!shown(&h, "The idea is empty"), "the old error is gone");
    assert!(
        shown(&h, "\"github.com/me/repo\" is not a repository URL"),
        "bad url: {:?}",
        h.state().state.idea.invalid
    );
    let s = &h.state().state.idea;
    assert!(s.running.is_none() && s.steps.is_empty() && s.outcome.is_none());
    assert_eq!(s.runs, 0, "nothing ran");
    assert!(
        h.state().state.notifications.is_empty(),
        "validation is not a run: no notification"
    );
}

#[test]
fn idea_start_with_an_unreachable_repo_shows_the_failed_step() {
    if !in_child_with_env("idea_start_with_an_unreachable_repo_shows_the_failed_step") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let me_home = tmp.path().join("me");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (_node, ticket) = start_node(&tmp.path().join("node"), &owner);
    ok(sam(&me_home, &["connect", &ticket, "--name", "box"]));

    let mut h = harness(&me);
    wait_until(&mut h, "the node is known", 30, |h| {
        !h.state().state.nodes.is_empty()
    });
    open_from_palette(&mut h);
    type_into(&mut h, "Idea", "Fix the typo in the README\n\nIt says teh.");
    // Nothing listens on port 9 (discard): the clone fails.
    type_into(
        &mut h,
        "Repository URL",
        "http://127.0.0.1:9/nobody/nothing.git",
    );
    h.get_by_label("Node: box").click();
    h.get_by_label("Lightweight workspace (base image, no devcontainer)")
        .click();
    steps(&mut h, 2);
    let f = h.state().state.idea.form.clone().expect("form");
    assert!(matches!(f.place, Place::Node(_)) && f.lightweight, "{f:?}");
    h.get_by_label("Start").click();
    steps(&mut h, 2);
    assert!(h.state().state.idea.running.is_some(), "the run started");
    assert!(shown(&h, "Running ("), "the running status");

    // Progress comes live from the flow: the node was reached.
    wait_until(&mut h, "the connect step", 60, |h| {
        shown(h, "connect: node box reached by its ticket")
    });
    wait_until(&mut h, "the end of the run", 300, |h| {
        h.state().state.idea.outcome.is_some()
    });
    let s = &h.state().state;
    let Some(Outcome::Failed(e)) = &s.idea.outcome else {
        panic!("expected a failure, got {:?}", s.idea.outcome);
    };
    eprintln!("the error shown: {e}");
    assert!(e.contains("step 'workspace' failed"), "{e}");
    assert!(s.idea.running.is_none());
    steps(&mut h, 2);
    assert!(
        shown(&h, "Failed: step 'workspace' failed"),
        "in the dialog"
    );
    assert!(
        shown(&h, "$ git clone http://127.0.0.1:9/nobody/nothing.git"),
        "the workspace's creation log is in the progress"
    );
    assert!(
        h.query_by_label("Idea failed").is_some(),
        "a notification toast"
    );
    assert!(!shown(&h, "PR opened"));
    assert!(!shown(&h, "Running ("), "no spinner once done");

    // The failed workspace is left for a retry by the flow; clean it up here.
    let out = ok(sam(&me_home, &["--json", "workspace", "ls"]));
    let list: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    for w in list.as_array().into_iter().flatten() {
        if let Some(id) = w["id"].as_str() {
            let _ = sam(&me_home, &["workspace", "rm", id, "--force"]);
        }
    }
}

#[test]
fn a_conversation_of_an_unreachable_node_continues_on_another() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me_home = tmp.path().join("me");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (node_a, ticket_a) = start_node(&tmp.path().join("a"), &owner);
    let (_node_b, ticket_b) = start_node(&tmp.path().join("b"), &owner);
    ok(sam(&me_home, &["connect", &ticket_a, "--name", "a"]));
    ok(sam(&me_home, &["connect", &ticket_b, "--name", "b"]));
    let out = ok(sam(
        &me_home,
        &[
            "convs",
            "new",
            "--node",
            "a",
            "--workspace",
            "w1",
            "--title",
            "moving test",
        ],
    ));
    let conv = out
        .lines()
        .last()
        .expect("conversation id")
        .trim()
        .to_string();
    drop(node_a);

    let mut h = harness(&me);
    wait_until(&mut h, "node a is seen offline", 60, |h| {
        let s = &h.state().state;
        s.nodes
            .iter()
            .any(|n| n.name == "a" && n.reachable == Some(false))
            && s.nodes
                .iter()
                .any(|n| n.name == "b" && n.reachable == Some(true))
            && s.convs.iter().any(|c| c.id == conv)
    });
    let id_a = h
        .state()
        .state
        .nodes
        .iter()
        .find(|n| n.name == "a")
        .expect("a")
        .id
        .clone();
    let id_b = h
        .state()
        .state
        .nodes
        .iter()
        .find(|n| n.name == "b")
        .expect("b")
        .id
        .clone();
    assert!(
        h.query_by_label("Continue on another node…").is_none(),
        "nothing selected yet"
    );
    h.get_by_label("moving test").click();
    steps(&mut h, 3);
    assert_eq!(h.state().state.selected.as_deref(), Some(conv.as_str()));
    let actions: Vec<_> = sam_client::gui::palette::items(&h.state().state)
        .into_iter()
        .map(|i| i.action)
        .collect();
    assert!(
        actions.contains(&sam_client::gui::palette::Action::MoveConv),
        "the palette offers the move too"
    );
    h.get_by_label("Continue on another node…").click();
    steps(&mut h, 3);
    assert!(
        h.query_by_label("Node: a (offline)").is_none(),
        "not back to its own node"
    );
    h.get_by_label("Node: b (reachable)").click();
    type_into(
        &mut h,
        "Workspace on the new node (optional; default: a new one)",
        "w2",
    );
    h.get_by_label("Move").click();
    steps(&mut h, 2);
    assert!(h.state().state.moving.running.is_some(), "the move started");
    assert!(shown(&h, "Moving (sam move)"), "the running status");
    wait_until(&mut h, "the end of the move", 120, |h| {
        h.state().state.moving.outcome.is_some()
    });
    let outcome = h.state().state.moving.outcome.clone();
    assert_eq!(
        outcome,
        Some(Ok("Moved to b (workspace w2)".to_string())),
        "notifications: {:?}",
        h.state().state.notifications
    );
    steps(&mut h, 2);
    assert!(
        h.query_all_by_label("Moved to b (workspace w2)").count() >= 2,
        "in the dialog and as a toast"
    );
    // The sidebar lists it under node b now; nothing left to move.
    wait_until(&mut h, "the conversation is on node b", 60, |h| {
        h.state()
            .state
            .convs
            .iter()
            .any(|c| c.id == conv && c.node == id_b)
    });
    assert_ne!(id_a, id_b);
    // Followed again at its new node: the header says so and the link comes up.
    wait_until(&mut h, "the conversation is live on node b", 60, |h| {
        h.state().state.online
    });
    assert!(shown(&h, "workspace w2 on b"), "the header");
    steps(&mut h, 2);
    assert!(
        h.query_by_label("Continue on another node…").is_none(),
        "its node answers"
    );
}
