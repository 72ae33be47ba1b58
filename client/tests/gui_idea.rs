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
//! The whole flow to a pull request runs from the dialog too, against a git server with
//! Basic auth and the fake GitHub API (as `client/tests/idea.rs`): the PR URL shows in the
//! dialog and as a notification, and the idea's conversation opens.
//!
//! All but the validation test need dockerd and the `sam-base:1` image (workspaces are
//! containers), and `cargo build --workspace --bins`. Tests that need a GitHub token and a
//! git identity in the environment run their GUI side in a child process of this binary
//! (the crate forbids `unsafe`, so no `set_var`).

use crate::support::git_http;
use crate::support::github;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::ClientPaths;
use sam_client::gui::GuiApp;
use sam_client::gui::idea::{Outcome, Place};

use crate::support::bins::{NodeProc, ok, sam, sam_bin, start_node, start_node_with};

/// Planted secrets of the PR test (made up; checked never to show in the window).
const TOKEN: &str = "ghp_PLANTED_gui_idea_token_77777";
const PASSWORD: &str = "gui-idea-PLANTED-pw";
/// `sam-base:1` plus the scripted agent (as `client/tests/idea.rs` builds it).
const IMAGE: &str = "sam-idea-test:1";

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
    let mut child = self_test(test);
    child
        .env("SAM_GUI_IDEA_CHILD", "1")
        .env("GH_TOKEN", "not-a-real-token-gui-idea")
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .env("GIT_CONFIG_NOSYSTEM", "1");
    run_self_test(test, child);
    false
}

/// This test binary, set to run exactly `test` of this file and nothing else.
fn self_test(test: &str) -> Command {
    // libtest names a test by its module path inside the crate: `gui_idea::test` when this
    // file is a module of the crate's one test binary.
    let name = match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    };
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([&name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// Runs a [`self_test`] child and fails unless it ran that one test and it passed (a
/// filter matching nothing would also exit 0).
fn run_self_test(test: &str, mut child: Command) {
    let out = child
        .stderr(Stdio::inherit())
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "{test} failed in its child: {}",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child did not run {test}"
    );
}

type H<'a> = Harness<'a, GuiApp>;

/// The app with a home (`<tmp>/me`) that knows one running node, `box`, shown in the
/// sidebar. Returns the home, the node and the app.
fn app_with_box(tmp: &Path) -> (PathBuf, NodeProc, H<'static>) {
    let me_home = tmp.join("me");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (node, ticket) = start_node(&tmp.join("node"), &owner);
    ok(sam(&me_home, &["connect", &ticket, "--name", "box"]));
    let mut h = harness(&me);
    wait_until(&mut h, "the node is known", 30, |h| {
        !h.state().state.nodes.is_empty()
    });
    (me_home, node, h)
}

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
    open_from_palette_agent(h, "claude");
}

fn open_from_palette_agent(h: &mut H<'_>, agent: &str) {
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
    assert_eq!(f.agent, agent, "the default agent of the settings");
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
    let (_me_home, _node, mut h) = app_with_box(tmp.path());
    // The failed workspace is kept by the flow (for a retry): its container goes at the end.
    let _containers = Containers(h.state().state.nodes[0].id.clone());
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
}

/// Cancel while the workspace is still being made (its clone hangs on a server that never
/// answers): the run stops, says it was cancelled, and the half-made workspace is removed
/// from the node (nothing of it is left in Docker).
#[test]
fn cancel_stops_the_idea_and_removes_the_half_made_workspace() {
    if !in_child_with_env("cancel_stops_the_idea_and_removes_the_half_made_workspace") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (me_home, _node, mut h) = app_with_box(tmp.path());
    // A "git server" on the Docker bridge that takes connections and never answers.
    let silent =
        std::net::TcpListener::bind((git_http::bridge_ip(), 0)).expect("bind on the bridge");
    let port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let repo = format!("http://{}:{port}/o/r.git", git_http::bridge_ip());

    let node = h.state().state.nodes[0].id.clone();
    let _containers = Containers(node.clone());
    open_from_palette(&mut h);
    type_into(&mut h, "Idea", "Add a changelog");
    type_into(&mut h, "Repository URL", &repo);
    h.get_by_label("Node: box").click();
    h.get_by_label("Lightweight workspace (base image, no devcontainer)")
        .click();
    steps(&mut h, 2);
    let f = h.state().state.idea.form.clone().expect("form");
    assert!(matches!(f.place, Place::Node(_)) && f.lightweight, "{f:?}");
    h.get_by_label("Start").click();
    steps(&mut h, 2);
    let clone_line = format!("$ git clone {repo}");
    wait_until(&mut h, "the clone has started", 120, |h| {
        shown(h, &clone_line)
    });
    assert_eq!(containers_of(&node), 1, "the workspace's container runs");

    h.get_by_label("Cancel").click();
    steps(&mut h, 2);
    assert!(
        shown(&h, "Stopping: cleaning up"),
        "the dialog says it stops"
    );
    wait_until(&mut h, "the end of the run", 60, |h| {
        h.state().state.idea.outcome.is_some()
    });
    let s = &h.state().state;
    let Some(Outcome::Cancelled(e)) = &s.idea.outcome else {
        panic!("expected a cancelled run, got {:?}", s.idea.outcome);
    };
    assert!(e.contains("interrupted (Cancel)"), "{e}");
    assert!(
        s.idea
            .steps
            .iter()
            .any(|l| l.contains("was not ready yet: removed")),
        "{:#?}",
        s.idea.steps
    );
    steps(&mut h, 2);
    assert!(
        shown(&h, "Cancelled: interrupted (Cancel)"),
        "in the dialog"
    );
    assert!(h.query_by_label("Idea cancelled").is_some(), "a toast");
    // The node stopped the creation: no container comes back (the clone stays hung).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        containers_of(&node),
        0,
        "a container of the cancelled idea is left"
    );
    let out = ok(sam(
        &me_home,
        &["--json", "workspace", "ls", "--node", "box"],
    ));
    assert!(
        !out.contains("\"add-a-changelog\""),
        "the workspace is gone: {out}"
    );
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

/// Removes a node's workspace containers when dropped (also when the test fails).
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        remove_containers_of(&self.0);
    }
}

/// How many containers (running or not) the node made.
fn containers_of(node: &str) -> usize {
    let o = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=sam.node={node}")])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .count()
}

/// Removes the workspace containers a node made (only that node's, by label).
fn remove_containers_of(node: &str) {
    if let Ok(o) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=sam.node={node}")])
        .output()
    {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// The whole flow from the dialog: a real node on Docker (a lightweight workspace with the
/// scripted agent), a git server with Basic auth and the fake GitHub API. The servers run in
/// this process; the GUI runs in a child with the token, git credentials and identity in its
/// environment. Needs dockerd, `sam-base:1` and `cargo build --workspace --bins`.
#[test]
fn idea_runs_to_a_pull_request_and_opens_its_conversation() {
    if std::env::var_os("SAM_GUI_IDEA_PR_CHILD").is_some() {
        return pr_child();
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    // The image with the scripted agent.
    let ctx = tmp.path().join("image");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::copy(
        sam_bin().with_file_name("sam-test-agent"),
        ctx.join("sam-test-agent"),
    )
    .expect("copy sam-test-agent (cargo build --workspace --bins)");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM sam-base:1\nCOPY sam-test-agent /usr/local/bin/sam-test-agent\n",
    )
    .expect("dockerfile");
    let built = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(&ctx)
        .output()
        .expect("docker build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).expect("mkdir");
    git_http::make_repo(&repos);
    let git_base = rt.block_on(git_http::git_server_on(
        git_http::bridge_ip(),
        repos.clone(),
        git_http::base64(format!("sam:{PASSWORD}").as_bytes()),
    ));
    let gh = rt.block_on(github::FakeGitHub::start(TOKEN));
    gh.add_repo("o/r");
    let gitconfig = tmp.path().join("gitconfig");
    std::fs::write(
        &gitconfig,
        "[user]\n\tname = Ada Lovelace\n\temail = ada@example.invalid\n",
    )
    .expect("gitconfig");
    let test = "idea_runs_to_a_pull_request_and_opens_its_conversation";
    let mut child = self_test(test);
    child
        .env("SAM_GUI_IDEA_PR_CHILD", "1")
        .env("SAM_GUI_IDEA_TMP", tmp.path())
        .env("SAM_GUI_IDEA_REPO", format!("{git_base}/o/r.git"))
        .env("GH_TOKEN", TOKEN)
        .env("SAM_GITHUB_API", &gh.url)
        .env("SAM_GIT_USERNAME", "sam")
        .env("SAM_GIT_PASSWORD", PASSWORD)
        .env("SAM_NO_KEYRING", "1")
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("RUST_LOG");
    run_self_test(test, child);
    let pulls = gh.pulls("o/r");
    assert_eq!(pulls.len(), 1, "one pull request");
    assert_eq!(pulls[0].head, "sam/write-greeting-txt-hello-world");
    assert_eq!(pulls[0].base, "main");
    let log = git_http::git(
        &repos.join("o/r.git"),
        &[
            "log",
            "--format=%an %s",
            "sam/write-greeting-txt-hello-world",
        ],
    );
    assert!(log.starts_with("Ada Lovelace write greeting.txt"), "{log}");
    gh.assert_clean();
}

/// The GUI side of the PR test (in the child process).
fn pr_child() {
    let tmp = PathBuf::from(std::env::var_os("SAM_GUI_IDEA_TMP").expect("tmp"));
    let repo = std::env::var("SAM_GUI_IDEA_REPO").expect("repo");
    let me_home = tmp.join("me");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (_node, ticket) = start_node_with(&tmp.join("node"), &owner, &[("SAM_BASE_IMAGE", IMAGE)]);
    ok(sam(&me_home, &["connect", &ticket, "--name", "box"]));
    // The settings' default agent is the custom one (an ACP command).
    std::fs::write(me_home.join("gui.toml"), "default_agent = \"custom\"\n").expect("prefs");

    let mut h = harness(&me);
    wait_until(&mut h, "the node is known", 30, |h| {
        !h.state().state.nodes.is_empty()
    });
    let _containers = Containers(h.state().state.nodes[0].id.clone());
    open_from_palette_agent(&mut h, "custom");
    // The scripted agent reads the idea as its script.
    type_into(&mut h, "Idea", "write greeting.txt hello world");
    type_into(&mut h, "Repository URL", &repo);
    type_into(&mut h, "Agent command", "sam-test-agent");
    h.get_by_label("Node: box").click();
    h.get_by_label("Lightweight workspace (base image, no devcontainer)")
        .click();
    steps(&mut h, 2);
    h.get_by_label("Start").click();
    steps(&mut h, 2);
    assert!(h.state().state.idea.running.is_some(), "the run started");
    wait_until(&mut h, "the end of the run", 300, |h| {
        h.state().state.idea.outcome.is_some()
    });
    let s = &h.state().state;
    let Some(Outcome::Opened { url, conv, .. }) = s.idea.outcome.clone() else {
        panic!(
            "expected a PR, got {:?}\nsteps: {:#?}",
            s.idea.outcome, s.idea.steps
        );
    };
    assert!(url.ends_with("/o/r/pull/1"), "{url}");
    let conv = conv.expect("the idea's conversation");
    assert!(
        s.idea
            .steps
            .iter()
            .any(|l| l.contains("pr: pull request opened")),
        "{:#?}",
        s.idea.steps
    );
    steps(&mut h, 2);
    let opened = format!("PR opened: {url}");
    assert!(
        h.query_all_by_label(&opened).count() >= 2,
        "in the dialog and as a toast"
    );
    assert!(
        h.query_by_label("Open the pull request").is_some(),
        "the link"
    );
    // The idea's conversation is open, and listed in the sidebar.
    assert_eq!(h.state().state.selected.as_deref(), Some(conv.as_str()));
    wait_until(&mut h, "the conversation in the sidebar", 30, |h| {
        h.state().state.convs.iter().any(|c| c.id == conv)
    });
    assert!(
        !shown(&h, TOKEN) && !shown(&h, PASSWORD),
        "no secret on screen"
    );
}
