//! `sam move` through the real binaries: two `sam-node` processes on loopback iroh, agents
//! as host processes of `sam-test-agent`. The node under a live conversation is deleted
//! (process killed, its home removed); the conversation continues on another node with the
//! same id, its full history, its fork, a new agent seeded from the document, and the
//! `hosts` history in the document. A move from a node that still answers ends its part
//! cleanly and the old node stops running the conversation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sam_crdt::{Conversation, HostEnd};

use crate::support::bins::{NodeProc, last, ok, sam, sam_bin, sibling, start_node_with};

/// `sam-node init` + `run` with agents as host processes under `ws_root`; returns the
/// process, its ticket and its NodeId.
fn node(home: &Path, owner: &str, ws_root: &Path) -> (NodeProc, String, String) {
    std::fs::create_dir_all(ws_root).expect("ws root");
    let root = ws_root.to_str().expect("utf-8 path");
    let (proc, ticket) = start_node_with(
        home,
        owner,
        &[
            ("SAM_AGENT_LAUNCHER", "host"),
            ("SAM_AGENT_HOST_ROOT", root),
        ],
    );
    let id = ticket
        .parse::<sam_protocol::Ticket>()
        .expect("ticket")
        .addr
        .id
        .to_string();
    (proc, ticket, id)
}

fn messages(home: &Path, conv: &str) -> Vec<serde_json::Value> {
    let log = ok(sam(home, &["--json", "log", conv]));
    serde_json::from_str::<serde_json::Value>(log.trim())
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Syncs until an agent message contains `needle`; returns every message then.
fn wait_for_agent(home: &Path, conv: &str, needle: &str) -> Vec<serde_json::Value> {
    for _ in 0..150 {
        let _ = sam(home, &["sync"]);
        let m = messages(home, conv);
        if m.iter()
            .any(|x| x["role"] == "agent" && x["text"].as_str().unwrap_or("").contains(needle))
        {
            return m;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "no agent message with {needle:?}: {:#?}",
        messages(home, conv)
    );
}

/// Processes whose working directory is under `dir` (agents of a host launcher).
fn agents_in(dir: &Path) -> usize {
    let Ok(dir) = dir.canonicalize() else {
        return 0;
    };
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| {
                    std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&dir))
                })
                .count()
        })
        .unwrap_or(0)
}

fn doc(home: &Path, conv: &str, tmp: &Path) -> Conversation {
    let out = tmp.join(format!("{conv}.am"));
    ok(sam(
        home,
        &["export", conv, "--out", out.to_str().expect("utf8")],
    ));
    Conversation::load(&std::fs::read(&out).expect("read")).expect("valid document")
}

#[test]
fn the_node_is_deleted_under_a_live_conversation_and_it_continues_on_another() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let owner = last(&ok(sam(&me, &["id"])));
    let (node_a, ticket_a, id_a) = node(&tmp.path().join("a"), &owner, &tmp.path().join("ws-a"));
    let (_node_b, ticket_b, id_b) = node(&tmp.path().join("b"), &owner, &tmp.path().join("ws-b"));
    ok(sam(&me, &["connect", &ticket_a, "--name", "a"]));
    ok(sam(&me, &["connect", &ticket_b, "--name", "b"]));
    // An agent that cannot `session/load`: a new one must get the transcript.
    let agent = format!(
        "env SAM_TEST_AGENT_MODE=no-load {}",
        sibling("sam-test-agent").display()
    );
    let conv = last(&ok(sam(
        &me,
        &[
            "convs",
            "new",
            "--node",
            "a",
            "--workspace",
            "w1",
            "--agent-cmd",
            &agent,
        ],
    )));
    let out = ok(sam(
        &me,
        &["prompt", &conv, "say the password is banana", "--follow"],
    ));
    assert!(out.contains("the password is banana"), "{out}");
    let first = messages(&me, &conv)[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let fork = last(&ok(sam(&me, &["fork", &conv, "--at", &first])));
    // A teammate holds the conversation too (shared on node a).
    let mate = tmp.path().join("mate");
    let mate_id = last(&ok(sam(&mate, &["id"])));
    let t = last(&ok(sam(
        &me,
        &["share", &conv, "--role", "viewer", "--to", &mate_id],
    )));
    ok(sam(&mate, &["join", &t, "--name", "a"]));

    // A long turn is streaming when the VM goes away: the process dies and its disk is
    // deleted.
    let mut follower = Command::new(sam_bin())
        .env("SAM_HOME", &me)
        .env("SAM_BIND", "127.0.0.1:0")
        .args(["prompt", &conv, "chunks 2000 20", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prompt");
    let cut = (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let _ = sam(&me, &["sync"]);
            messages(&me, &conv).into_iter().find(|m| {
                m["role"] == "agent"
                    && m["status"] == "streaming"
                    && m["text"].as_str().unwrap_or("").contains("c3 ")
            })
        })
        .expect("the long turn streams")["id"]
        .as_str()
        .expect("id")
        .to_string();
    drop(node_a);
    let _ = follower.kill();
    let _ = follower.wait();
    std::fs::remove_dir_all(tmp.path().join("a")).expect("delete node a");
    std::fs::remove_dir_all(tmp.path().join("ws-a")).expect("delete its workspaces");

    // The prompt is queued, and the CLI says how to continue.
    let out = ok(sam(&me, &["prompt", &conv, "recall banana; whoami"]));
    assert!(out.contains("queued"), "{out}");
    assert!(
        out.contains(&format!("sam move {}", &conv[..8])) && out.contains("--node b"),
        "{out}"
    );

    // Continue on node b.
    let moved = sam(&me, &["move", &conv, "--node", "b", "--workspace", "w2"]);
    let stdout = ok(moved);
    assert_eq!(last(&stdout), conv, "{stdout}");
    assert!(
        stdout.contains("moved from node a (workspace w1) to node b (workspace w2)"),
        "{stdout}"
    );
    assert!(stdout.contains("not recoverable"), "{stdout}");

    // Node a's shares could not be read: the CLI says to share again.
    assert!(stdout.contains("share the conversation again"), "{stdout}");

    // The turn cut off with node a is interrupted, not "streaming" for ever.
    let cut_msg = messages(&me, &conv)
        .into_iter()
        .find(|m| m["id"] == cut.as_str())
        .expect("cut message");
    assert_eq!(cut_msg["status"], "interrupted", "{cut_msg}");
    assert!(
        cut_msg["reason"]
            .as_str()
            .unwrap_or("")
            .contains("became unreachable during this turn"),
        "{cut_msg}"
    );
    assert!(stdout.contains("marked interrupted"), "{stdout}");

    // The queued prompt runs on b; the new agent got the transcript.
    let m = wait_for_agent(&me, &conv, "recall banana:");
    let texts: Vec<&str> = m.iter().map(|x| x["text"].as_str().unwrap_or("")).collect();
    let all = texts.join("\n");
    assert!(all.contains("recall banana: yes"), "{all}");
    assert!(all.contains("loaded=false"), "{all}");
    // Full history, in order, same ids.
    assert_eq!(m[0]["id"], first.as_str());
    assert_eq!(m[0]["text"], "say the password is banana");
    assert!(texts[1].contains("the password is banana"), "{all}");
    let system: Vec<&str> = m
        .iter()
        .filter(|x| x["role"] == "system")
        .map(|x| x["text"].as_str().unwrap_or(""))
        .collect();
    assert!(
        system
            .iter()
            .any(|t| t.contains("moved from node a") && t.contains("not recoverable")),
        "{system:?}"
    );
    assert!(
        system.iter().any(|t| t.contains("after a move from node")
            && t.contains("given the transcript so far as context")),
        "{system:?}"
    );
    let answer = m
        .iter()
        .find(|x| x["role"] == "agent" && x["text"].as_str().unwrap_or("").contains("recall"))
        .expect("answer");
    assert_eq!(answer["author"], id_b.as_str(), "node b answered");

    // The document: same id, hosts history a (lost) → b (open), workspace on b.
    let d = doc(&me, &conv, tmp.path());
    assert_eq!(d.id(), conv);
    let ws = d.workspace();
    assert_eq!((ws.node.as_str(), ws.id.as_str()), (id_b.as_str(), "w2"));
    let hosts = d.hosts();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(hosts[0].node, id_a);
    assert_eq!(hosts[0].workspace, "w1");
    assert_eq!(hosts[0].end, Some(HostEnd::Lost));
    assert!(hosts[0].ended_at.is_some());
    assert_eq!(hosts[1].node, id_b);
    assert_eq!(hosts[1].ended_at, None);

    // The teammate's copy still names dead node a; a share on node b brings the move.
    let t = last(&ok(sam(
        &me,
        &["share", &conv, "--role", "viewer", "--to", &mate_id],
    )));
    ok(sam(&mate, &["join", &t, "--name", "b"]));
    let theirs = messages(&mate, &conv);
    assert!(
        theirs.iter().any(|x| x["text"]
            .as_str()
            .unwrap_or("")
            .contains("recall banana: yes")),
        "{theirs:?}"
    );

    // The fork still hangs under it, and the listing is honest about where it runs.
    let tree = ok(sam(&me, &["convs", "ls", "--tree", "--offline"]));
    let p = tree
        .lines()
        .position(|l| l.starts_with(&conv))
        .expect("parent");
    let f = tree
        .lines()
        .position(|l| l.trim_start().starts_with(&fork))
        .expect("fork");
    assert!(f > p, "{tree}");
    let ls = ok(sam(&me, &["--json", "convs", "ls", "--offline"]));
    let list: serde_json::Value = serde_json::from_str(ls.trim()).expect("json");
    let row = list
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["id"] == conv.as_str())
        .expect("row");
    assert_eq!(row["node"], id_b.as_str());
}

#[test]
fn a_move_from_a_live_node_reloads_the_session_and_the_old_node_lets_go() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let owner = last(&ok(sam(&me, &["id"])));
    let (_node_a, ticket_a, id_a) = node(&tmp.path().join("a"), &owner, &tmp.path().join("ws-a"));
    let (_node_b, ticket_b, id_b) = node(&tmp.path().join("b"), &owner, &tmp.path().join("ws-b"));
    ok(sam(&me, &["connect", &ticket_a, "--name", "a"]));
    ok(sam(&me, &["connect", &ticket_b, "--name", "b"]));
    let agent = sibling("sam-test-agent");
    let conv = last(&ok(sam(
        &me,
        &[
            "convs",
            "new",
            "--node",
            "a",
            "--workspace",
            "w1",
            "--agent-cmd",
            agent.to_str().expect("utf8"),
        ],
    )));
    ok(sam(&me, &["prompt", &conv, "say first answer", "--follow"]));
    // A teammate has this conversation shared with them (scoped to it) on node a.
    let mate = tmp.path().join("mate");
    let mate_id = last(&ok(sam(&mate, &["id"])));
    let t = last(&ok(sam(
        &me,
        &["share", &conv, "--role", "collaborator", "--to", &mate_id],
    )));
    ok(sam(&mate, &["join", &t, "--name", "a"]));

    // Without a repo to rebuild from, the move needs a workspace named.
    let refused = sam(&me, &["move", &conv, "--node", "b"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--repo URL") && err.contains("--workspace"),
        "{err}"
    );
    // Nowhere to go: refused with the reason.
    let same = sam(&me, &["move", &conv, "--node", "a", "--workspace", "w1"]);
    assert!(!same.status.success());

    // Node a keeps the agent of the first turn, idle.
    assert!(
        agents_in(&tmp.path().join("ws-a")) >= 1,
        "no agent on node a"
    );
    let out = ok(sam(
        &me,
        &["--json", "move", &conv, "--node", "b", "--workspace", "w9"],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["from"]["reached"], true, "{v}");
    assert_eq!(v["to"]["node"], id_b.as_str());
    assert_eq!(v["sent"], true);
    // The share moved too: the teammate joins the new node with the ticket printed for them
    // and sees the same conversation there.
    let shares = v["shares"].as_array().cloned().unwrap_or_default();
    assert_eq!(shares.len(), 1, "{v}");
    assert_eq!(shares[0]["grantee"], mate_id.as_str());
    assert_eq!(shares[0]["role"], "collaborator");
    let new_ticket = shares[0]["ticket"].as_str().expect("ticket").to_string();
    // Node a stops the agent it kept for the conversation.
    let ws_a = tmp.path().join("ws-a");
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        agents_in(&ws_a) == 0
    });
    assert!(
        stopped,
        "node a still runs an agent for the moved conversation"
    );
    ok(sam(&mate, &["join", &new_ticket, "--name", "b"]));

    let out = ok(sam(
        &me,
        &["prompt", &conv, "whoami; say second answer", "--follow"],
    ));
    assert!(out.contains("second answer"), "{out}");
    let m = wait_for_agent(&me, &conv, "second answer");
    let all: Vec<&str> = m.iter().map(|x| x["text"].as_str().unwrap_or("")).collect();
    let all = all.join("\n");
    // The agent on b reloaded the session the document names (ACP session/load).
    assert!(all.contains("loaded=true"), "{all}");
    assert!(
        all.contains("reloaded its earlier session with ACP session/load"),
        "{all}"
    );
    let second = m
        .iter()
        .find(|x| x["role"] == "agent" && x["text"].as_str().unwrap_or("").contains("second"))
        .expect("second");
    assert_eq!(second["author"], id_b.as_str());
    let d = doc(&me, &conv, tmp.path());
    let hosts = d.hosts();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(hosts[0].node, id_a);
    assert_eq!(hosts[0].end, Some(HostEnd::Moved));
    assert_eq!(hosts[1].node, id_b);
    assert_eq!(hosts[1].workspace, "w9");
    // The teammate reads the whole conversation from node b and may prompt there.
    let theirs = wait_for_agent(&mate, &conv, "second answer");
    assert!(
        theirs.iter().any(|x| x["text"] == "first answer"),
        "{theirs:?}"
    );
    ok(sam(&mate, &["prompt", &conv, "say from the teammate"]));
    wait_for_agent(&me, &conv, "from the teammate");
    // Node a let go: it never started an agent for the second prompt.
    assert!(
        !m.iter()
            .any(|x| x["author"] == id_a.as_str()
                && x["text"].as_str().unwrap_or("").contains("second")),
        "{all}"
    );
}

fn docker_ready() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs a running dockerd and the sam-base:1 image (bootstrap/images)"
    );
}

#[test]
fn sam_workspace_rm_takes_the_history_along_and_records_the_teardown() {
    docker_ready();
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let owner = last(&ok(sam(&me, &["id"])));
    let home = tmp.path().join("n");
    ok(Command::new(sibling("sam-node"))
        .env("SAM_HOME", &home)
        .args(["init", "--owner", &owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init"));
    let mut child = Command::new(sibling("sam-node"))
        .env("SAM_HOME", &home)
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
    ok(sam(&me, &["connect", line.trim(), "--name", "n"]));
    let name = format!("td{}", std::process::id());
    let ws = last(&ok(sam(
        &me,
        &["workspace", "create", "--lightweight", "--name", &name],
    )));
    let conv = last(&ok(sam(
        &me,
        &["convs", "new", "--workspace", &ws, "--title", "keep me"],
    )));
    // Another client's conversation in the same workspace: this client never had it.
    let other = tmp.path().join("other");
    let other_id = last(&ok(sam(&other, &["id"])));
    let t = last(&ok(sam(
        &me,
        &["share", "n", "--role", "collaborator", "--to", &other_id],
    )));
    ok(sam(&other, &["join", &t]));
    let theirs = last(&ok(sam(
        &other,
        &["convs", "new", "--workspace", &ws, "--title", "theirs"],
    )));

    let out = ok(sam(&me, &["--json", "workspace", "rm", &ws]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["removed"], ws.as_str(), "{v}");
    assert_eq!(v["held_here"], 2, "{v}");
    let gone = ok(Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=sam.workspace={ws}"),
        ])
        .output()
        .expect("docker ps"));
    assert!(gone.trim().is_empty(), "container left: {gone}");
    // Both conversations are here, and (after a sync) say the workspace is gone.
    for c in [&conv, &theirs] {
        ok(sam(&me, &["sync"]));
        let d = doc(&me, c, tmp.path());
        assert_eq!(d.hosts().last().and_then(|h| h.end), Some(HostEnd::Removed));
        assert!(
            d.messages().iter().any(|m| m
                .text
                .contains("was deleted after this conversation was flushed to")),
            "{:?}",
            d.messages()
        );
    }
}

#[test]
fn a_conversation_moves_to_a_node_from_the_local_pool() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let owner = last(&ok(sam(&me, &["id"])));
    let (node_a, ticket_a, _) = node(&tmp.path().join("a"), &owner, &tmp.path().join("ws-a"));
    ok(sam(&me, &["connect", &ticket_a, "--name", "a"]));
    let agent = sibling("sam-test-agent");
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
    ok(sam(
        &me,
        &["prompt", &conv, "say before the move", "--follow"],
    ));
    drop(node_a);
    // The pool's node runs agents as host processes too (it inherits this environment).
    let pool_ws = tmp.path().join("ws-pool");
    std::fs::create_dir_all(&pool_ws).expect("pool ws");
    let run = |args: &[&str]| {
        Command::new(sam_bin())
            .env("SAM_HOME", &me)
            .env("SAM_BIND", "127.0.0.1:0")
            .env("SAM_AGENT_LAUNCHER", "host")
            .env("SAM_AGENT_HOST_ROOT", &pool_ws)
            .env("SAM_NODE_BIN", sibling("sam-node"))
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .expect("run sam")
    };
    let out = ok(run(&[
        "--json",
        "move",
        &conv,
        "--provider",
        "local",
        "--workspace",
        "w2",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["from"]["reached"], false, "{v}");
    let new_node = v["to"]["node"].as_str().expect("node").to_string();
    let result = std::panic::catch_unwind(|| {
        ok(sam(&me, &["prompt", &conv, "say after the move"]));
        let m = wait_for_agent(&me, &conv, "after the move");
        let answer = m
            .iter()
            .find(|x| x["role"] == "agent" && x["text"] == "after the move")
            .expect("answer");
        assert_eq!(answer["author"], new_node.as_str());
        assert!(
            m.iter().any(|x| x["text"] == "before the move"),
            "history kept"
        );
    });
    // The pool's node is a process under this home: delete it whatever happened.
    let ls = run(&["--json", "vm", "ls", "--provider", "local"]);
    let vms: serde_json::Value =
        serde_json::from_slice(&ls.stdout).unwrap_or(serde_json::Value::Null);
    for vm in vms.as_array().cloned().unwrap_or_default() {
        if let Some(id) = vm["id"].as_str() {
            let _ = run(&["vm", "rm", id, "--provider", "local"]);
        }
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn pool_shrink_brings_the_nodes_conversations_here_before_deleting_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let owner_out = ok(sam(&me, &["id"]));
    let _ = owner_out;
    std::fs::write(me.join("providers.toml"), "[pool]\nidle_ttl_secs = 0\n").expect("config");
    let run = |home: &Path, args: &[&str]| {
        Command::new(sam_bin())
            .env("SAM_HOME", home)
            .env("SAM_BIND", "127.0.0.1:0")
            .env("SAM_NODE_BIN", sibling("sam-node"))
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .expect("run sam")
    };
    let out = ok(run(&me, &["--json", "vm", "create", "--provider", "local"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let vm = v["id"].as_str().expect("id").to_string();
    let ticket = v["ticket"].as_str().expect("ticket").to_string();
    let result = std::panic::catch_unwind(|| {
        ok(sam(&me, &["connect", &ticket, "--name", "p"]));
        let mine = last(&ok(sam(&me, &["convs", "new", "--workspace", "w1"])));
        // A teammate's conversation on that node, never seen here.
        let other = tmp.path().join("other");
        let other_id = last(&ok(sam(&other, &["id"])));
        let t = last(&ok(sam(
            &me,
            &["share", "p", "--role", "collaborator", "--to", &other_id],
        )));
        ok(sam(&other, &["join", &t]));
        let theirs = last(&ok(sam(
            &other,
            &["convs", "new", "--workspace", "w2", "--title", "theirs"],
        )));
        ok(sam(
            &other,
            &["prompt", &theirs, "only on the node and with them"],
        ));
        ok(run(&me, &["vm", "release", &vm, "--provider", "local"]));
        let out = ok(run(&me, &["--json", "pool", "reap", "--provider", "local"]));
        let reaped: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(reaped[0]["id"], vm.as_str(), "{reaped}");
        // Both conversations are held here now, with the teammate's prompt.
        let log = ok(sam(&me, &["log", &theirs]));
        assert!(log.contains("only on the node and with them"), "{log}");
        ok(sam(&me, &["log", &mine]));
    });
    let ls = run(&me, &["--json", "vm", "ls", "--provider", "local"]);
    let vms: serde_json::Value =
        serde_json::from_slice(&ls.stdout).unwrap_or(serde_json::Value::Null);
    let left: Vec<String> = vms
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v["id"].as_str().map(String::from))
        .collect();
    for id in &left {
        let _ = run(&me, &["vm", "rm", id, "--provider", "local"]);
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(left.is_empty(), "the reaped node is still listed: {left:?}");
}
