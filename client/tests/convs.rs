//! Conversations through the real binaries: create, prompt, replay with the node
//! down, queue offline, deliver on restart, fork, list as a tree, export.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

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

fn last(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_node(home: &Path) -> (NodeProc, String) {
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
    let ls = ok(sam(&me, &["convs", "ls", "--offline"]));
    assert!(ls.contains("2 queued"), "{ls}");
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
