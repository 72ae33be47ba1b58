//! Conversations through the real binaries: create, prompt, replay with the node
//! down, queue offline, deliver on restart, fork, list as a tree, export.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::bins::{NodeProc, last, node_bin, ok, run_node, sam, sam_bin};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn conversations_work_offline_and_sync_later() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("host");
    let owner = last(&ok(sam(&me, &["id"])));
    let port = free_udp_port().to_string();
    ok(Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .args([
            "init",
            "--owner",
            &owner,
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("init"));
    let (node, ticket) = run_node(&node_home);
    ok(sam(&me, &["connect", &ticket, "--name", "box"]));

    let conv = last(&ok(sam(
        &me,
        &["convs", "new", "--workspace", "w1", "--title", "plans"],
    )));
    let out = ok(sam(&me, &["prompt", &conv[..8], "hello node"]));
    assert!(out.contains("sent to the node"), "{out}");

    // The node is gone: history still replays, a new prompt is queued locally.
    drop(node);
    let log = ok(sam(&me, &["log", &conv]));
    assert!(log.contains("hello node"), "{log}");
    let out = ok(sam(&me, &["prompt", &conv, "written offline"]));
    assert!(out.contains("queued"), "{out}");
    let offline_msg = last(&out);
    // The offline prompt is queued locally. (The first one may already show the node's
    // verdict — this node has no workspace `w1`, so its runner fails it — depending on
    // whether that change reached us before `sam prompt` returned.)
    let log = ok(sam(&me, &["--json", "log", &conv]));
    let msgs: serde_json::Value = serde_json::from_str(log.trim()).expect("json");
    assert_eq!(msgs[1]["id"], offline_msg.as_str());
    assert_eq!(msgs[1]["status"], "queued", "{log}");
    let ls = ok(sam(&me, &["convs", "ls", "--offline"]));
    assert!(ls.contains("1 queued") || ls.contains("2 queued"), "{ls}");
    // Honest status: trying the node marks it unreachable, with since when.
    let ls = ok(sam(&me, &["convs", "ls"]));
    assert!(ls.contains("node box unreachable since"), "{ls}");
    let st = sam(&me, &["status", "box"]);
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("unreachable since"));

    // The node comes back: `sam sync` delivers the queued prompt.
    let (_node, _ticket) = run_node(&node_home);
    let out = ok(sam(&me, &["sync"]));
    assert!(out.contains("1 synced, 0 unreachable"), "{out}");
    let ls = ok(sam(&me, &["convs", "ls"]));
    assert!(!ls.contains("unreachable"), "{ls}");

    // A second client (a collaborator) pulls the conversation with both prompts.
    let other = tmp.path().join("other");
    let other_id = last(&ok(sam(&other, &["id"])));
    let share = last(&ok(sam(
        &me,
        &["share", "box", "--role", "collaborator", "--to", &other_id],
    )));
    ok(sam(&other, &["join", &share]));
    let ls = ok(sam(&other, &["--json", "convs", "ls"]));
    let list: serde_json::Value = serde_json::from_str(ls.trim()).expect("json");
    assert_eq!(list[0]["id"], conv.as_str());
    assert_eq!(list[0]["messages"], 2);
    let log = ok(sam(&other, &["--json", "log", &conv]));
    let msgs: serde_json::Value = serde_json::from_str(log.trim()).expect("json");
    assert_eq!(msgs[1]["id"], offline_msg.as_str());
    assert_eq!(msgs[1]["text"], "written offline");
    assert_eq!(msgs[1]["author"], owner.as_str());

    // Fork at the first message: the fork shares that history and lists under it.
    let first = msgs[0]["id"].as_str().expect("id").to_string();
    let fork = last(&ok(sam(&me, &["fork", &conv, "--at", &first])));
    let tree = ok(sam(&me, &["convs", "ls", "--tree", "--offline"]));
    let parent_line = tree
        .lines()
        .position(|l| l.starts_with(&conv))
        .expect("parent");
    let fork_line = tree
        .lines()
        .position(|l| l.trim_start().starts_with(&fork))
        .expect("fork");
    assert!(fork_line > parent_line, "{tree}");
    assert!(
        tree.lines().nth(fork_line).expect("line").starts_with("  "),
        "{tree}"
    );
    let fork_log = ok(sam(&me, &["log", &fork]));
    assert!(
        fork_log.contains("hello node") && !fork_log.contains("written offline"),
        "{fork_log}"
    );
    // The fork reached the node too: the collaborator sees it.
    let ls = ok(sam(&other, &["convs", "ls", "--tree"]));
    assert!(ls.contains(&fork), "{ls}");

    // Export is plain Automerge that loads back with the documented schema.
    let out_file = tmp.path().join("conv.automerge");
    ok(sam(
        &me,
        &["export", &conv, "--out", out_file.to_str().expect("utf8")],
    ));
    let bytes = std::fs::read(&out_file).expect("read export");
    let doc = sam_crdt::Conversation::load(&bytes).expect("valid document");
    assert_eq!(doc.id(), conv);
    assert_eq!(doc.messages().len(), 2);
}

#[test]
fn a_viewer_cannot_prompt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("host");
    let owner = last(&ok(sam(&me, &["id"])));
    ok(Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init"));
    let (_node, ticket) = run_node(&node_home);
    ok(sam(&me, &["connect", &ticket, "--name", "box"]));
    let conv = last(&ok(sam(&me, &["convs", "new", "--workspace", "w1"])));
    let viewer = tmp.path().join("viewer");
    let vid = last(&ok(sam(&viewer, &["id"])));
    let share = last(&ok(sam(
        &me,
        &["share", "box", "--role", "viewer", "--to", &vid],
    )));
    ok(sam(&viewer, &["join", &share]));
    ok(sam(&viewer, &["convs", "ls"]));
    let out = sam(&viewer, &["prompt", &conv, "let me"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collaborator role"), "{err}");
}

fn test_agent() -> PathBuf {
    let p = sam_bin().with_file_name("sam-test-agent");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        p.display()
    );
    p
}

#[test]
fn an_agent_turn_streams_and_a_second_client_answers_its_permission() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("host");
    let ws_root = tmp.path().join("ws");
    std::fs::create_dir_all(&ws_root).expect("ws root");
    let owner = last(&ok(sam(&me, &["id"])));
    ok(Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init"));
    let mut child = Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .env("SAM_AGENT_LAUNCHER", "host")
        .env("SAM_AGENT_HOST_ROOT", &ws_root)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ticket");
    let _node = NodeProc(child);
    ok(sam(&me, &["connect", line.trim(), "--name", "box"]));
    let agent = test_agent();
    let conv = last(&ok(sam(
        &me,
        &[
            "convs",
            "new",
            "--workspace",
            "w1",
            "--agent-cmd",
            agent.to_str().expect("utf8"),
        ],
    )));

    // A turn streams to the terminal and ends.
    let out = ok(sam(
        &me,
        &[
            "prompt",
            &conv,
            "say streamed answer; chunks 5; write notes.txt hi",
            "--follow",
        ],
    ));
    assert!(out.contains("streamed answer"), "{out}");
    assert!(out.contains("turn done"), "{out}");
    assert_eq!(
        std::fs::read_to_string(ws_root.join("w1/notes.txt")).expect("the agent wrote the file"),
        "hi"
    );

    // A collaborator and a viewer join.
    let other = tmp.path().join("other");
    let viewer = tmp.path().join("viewer");
    for (home, role) in [(&other, "collaborator"), (&viewer, "viewer")] {
        let id = last(&ok(sam(home, &["id"])));
        let t = last(&ok(sam(
            &me,
            &["share", "box", "--role", role, "--to", &id],
        )));
        ok(sam(home, &["join", &t]));
    }

    // The owner's prompt waits on a permission; the collaborator answers it.
    let follower = Command::new(sam_bin())
        .env("SAM_HOME", &me)
        .env("SAM_BIND", "127.0.0.1:0")
        .args(["prompt", &conv, "permit; say after the answer", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prompt");
    let perm = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            ok(sam(&other, &["sync"]));
            let log = ok(sam(&other, &["--json", "log", &conv]));
            let v: serde_json::Value = serde_json::from_str(log.trim()).ok()?;
            v.as_array()?
                .iter()
                .rev()
                .find(|m| m["role"] == "permission" && m["status"] == "running")
                .and_then(|m| m["id"].as_str().map(String::from))
        })
        .expect("a permission request shows up");
    // The viewer may not answer.
    let denied = sam(&viewer, &["permit", &conv, &perm, "yes-once"]);
    assert!(!denied.status.success(), "a viewer answered a permission");
    let bad = sam(&other, &["permit", &conv, &perm, "no-such-option"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("yes-once"));
    ok(sam(&other, &["permit", &conv, &perm, "yes-once"]));
    let out = follower.wait_with_output().expect("prompt ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("after the answer"), "{stdout}");
    let log = ok(sam(&me, &["log", &conv]));
    let other_id = last(&ok(sam(&other, &["id"])));
    assert!(
        log.contains(&format!("answered yes-once by {}", &other_id[..8])),
        "{log}"
    );
}

/// `sam log --follow` keeps following through a node restart: it says the link was lost,
/// dials again, and shows what was written after the node came back.
#[test]
fn log_follow_survives_a_node_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("host");
    let owner = last(&ok(sam(&me, &["id"])));
    let bind = format!("127.0.0.1:{}", free_udp_port());
    ok(Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", &bind])
        .output()
        .expect("init"));
    let (node, ticket) = run_node(&node_home);
    ok(sam(&me, &["connect", &ticket, "--name", "box"]));
    let conv = last(&ok(sam(
        &me,
        &["convs", "new", "--workspace", "w1", "--title", "follow me"],
    )));
    ok(sam(&me, &["prompt", &conv, "before the restart"]));

    let (_follower, rx) = spawn_lines(&me, &["log", &conv, "--follow"]);
    let mut seen = String::new();
    let mut wait_for = |what: &str, secs: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => panic!("no {what:?} from sam log --follow within {secs} s:\n{seen}"),
            }
        }
    };
    wait_for("before the restart", 30);

    drop(node);
    wait_for("link lost", 60);
    let (_node, _ticket) = run_node(&node_home);
    wait_for("on box again", 60);
    ok(sam(&me, &["prompt", &conv, "after the restart"]));
    wait_for("after the restart", 60);
}

/// `sam prompt --follow` (and so `sam chat`, which prompts the same way) rides over a lost
/// link as `sam log --follow` does: the node restarts mid-turn, the follower says so,
/// dials again and reports how the turn really ended, instead of failing with the link.
#[test]
fn prompt_follow_rides_over_a_node_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("host");
    let ws_root = tmp.path().join("ws");
    std::fs::create_dir_all(ws_root.join("w1")).expect("ws root");
    let owner = last(&ok(sam(&me, &["id"])));
    let bind = format!("127.0.0.1:{}", free_udp_port());
    ok(Command::new(node_bin())
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", &bind])
        .output()
        .expect("init"));
    let start = || {
        let mut child = Command::new(node_bin())
            .env("SAM_HOME", &node_home)
            .env("SAM_AGENT_LAUNCHER", "host")
            .env("SAM_AGENT_HOST_ROOT", &ws_root)
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
    };
    let (node, ticket) = start();
    ok(sam(&me, &["connect", &ticket, "--name", "box"]));
    let agent = test_agent();
    let conv = last(&ok(sam(
        &me,
        &[
            "convs",
            "new",
            "--workspace",
            "w1",
            "--agent-cmd",
            agent.to_str().expect("utf8"),
        ],
    )));
    let (mut follower, rx) = spawn_lines(
        &me,
        &["prompt", &conv, "permit; say after the answer", "--follow"],
    );
    let running_permission = || {
        let log = ok(sam(&me, &["--json", "log", &conv]));
        let v: serde_json::Value = serde_json::from_str(log.trim()).ok()?;
        v.as_array()?
            .iter()
            .rev()
            .find(|m| m["role"] == "permission" && m["status"] == "running")
            .and_then(|m| m["id"].as_str().map(String::from))
    };
    // Mid-turn: the agent waits on a permission.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while running_permission().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no permission request"
        );
        ok(sam(&me, &["sync"]));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut seen = String::new();
    let mut wait_for = |what: &str, secs: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => panic!("no {what:?} from sam prompt --follow within {secs} s:\n{seen}"),
            }
        }
        seen.clone()
    };
    drop(node);
    wait_for("link lost", 60);
    let (_node, _ticket) = start();
    wait_for("on box again", 60);
    // Whatever the restarted node made of the turn, the follower reports its end: answer
    // any permission it asks again until the follower is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(st) = follower.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never ended"
        );
        if let Some(perm) = running_permission() {
            let _ = sam(&me, &["permit", &conv, &perm, "yes-once"]);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let out = rx.iter().collect::<Vec<_>>().join("\n");
    let all = format!("{seen}{out}");
    assert!(
        !all.contains("before the turn ended"),
        "the follower gave up with the link: {all}"
    );
    assert!(
        all.contains("turn done") || all.contains("the turn failed"),
        "the follower reports the turn's end ({status}): {all}"
    );
}

/// `sam ARGS` with `SAM_HOME=home` on loopback, and every line it prints (stdout and stderr
/// merged, in arrival order) on a channel.
fn spawn_lines(
    home: &std::path::Path,
    args: &[&str],
) -> (NodeProc, std::sync::mpsc::Receiver<String>) {
    let mut proc = NodeProc(
        Command::new(sam_bin())
            .env("SAM_HOME", home)
            .env("SAM_BIND", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sam {args:?}: {e}")),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(proc.0.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(proc.0.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (proc, rx)
}
