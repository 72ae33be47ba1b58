//! `sam move` (the client library's `relocate::run`) between two in-process nodes on
//! loopback iroh: the old node's workspace is a real container with uncommitted work, the new
//! node runs `sam-test-agent` as a host process in a git checkout of the same repo. The move
//! carries the work as a patch in the document, the new node applies it (`git apply`) before
//! its agent's first turn and says so, the old node learns it no longer serves the
//! conversation, and the `hosts` history records both.

use crate::support::agent_util as util;
use crate::support::harness;
use crate::support::ws_common as common;

use std::process::Command;
use std::time::Duration;

use common::{Container, docker_ready};
use sam_client::cli::relocate::{MoveArgs, run};
use sam_client::docs::{Replicas, open_stream};
use sam_client::paths::ClientPaths;
use sam_crdt::{Conversation, HostEnd, NewConversation, Role as MsgRole, Status};
use util::{T, test_agent};

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_work_moves_as_a_patch_and_is_applied_on_the_new_node() {
    docker_ready();
    let tmp = tempfile::tempdir().expect("tempdir");
    let paths = ClientPaths::new(tmp.path().join("me"));
    let me = paths.identity().expect("identity");
    let author = me.node_id().to_string();

    // Old node: owned by this client, its workspace a container whose repo has a.txt edited.
    let key_a = sam_protocol::SecretKey::generate();
    let node_a = harness::start_in(&tmp.path().join("a"), &me, &key_a, "127.0.0.1:0").await;
    let container = Container::start();
    // Beside the edit of a.txt, new files the agent has not committed (b.txt from the
    // fixture, one in a new folder, one binary); the fixture's big file and links go.
    container.sh(
        "cd /workspaces/repo && rm -f big.bin escape passwd-link inner-link \
         && mkdir -p notes && printf 'draft\\n' > notes/todo.md \
         && printf '\\000\\001\\002bin' > blob.bin",
    );
    let ws_a = node_a
        .node
        .workspaces()
        .adopt(&container.id, "/workspaces/repo", "root")
        .await
        .expect("adopt");
    // New node: agents as host processes; its workspace w2 is a checkout of the same commit.
    let root_b = tmp.path().join("ws-b");
    let key_b = sam_protocol::SecretKey::generate();
    let node_b = util::start_node(
        &tmp.path().join("b"),
        &me,
        &key_b,
        util::config(&root_b, &[]),
    )
    .await;
    let w2 = root_b.join("w2");
    std::fs::create_dir_all(&w2).expect("w2");
    git(&w2, &["init", "-q", "-b", "main", "."]);
    std::fs::write(w2.join("a.txt"), "line one\nline two\n").expect("a.txt");
    git(&w2, &["add", "a.txt"]);
    git(
        &w2,
        &[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-qm",
            "init",
        ],
    );

    let mut book = sam_client::book::NodeBook::default();
    book.upsert(&node_a.ticket(), Some("a")).expect("a");
    book.upsert(&node_b.ticket(), Some("b")).expect("b");
    book.save(&paths.nodes()).expect("save book");

    // The conversation, made here and pushed to the old node.
    let mut conv = Conversation::create(
        NewConversation {
            id: sam_crdt::MessageId::random().to_string(),
            title: "carry".into(),
            agent: "custom".into(),
            workspace_node: key_a.node_id().to_string(),
            workspace_id: ws_a.clone(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )
    .expect("create");
    conv.set_agent_cmd(&author, &test_agent()).expect("cmd");
    conv.append_note(&author, "work in progress").expect("note");
    let id = conv.id();
    let mut replicas = Replicas::open(&paths).expect("replicas");
    replicas.save(&mut conv).expect("save");
    let ep = harness::endpoint(&me).await;
    let mut s = open_stream(&ep, &node_a.ticket(), &id, true)
        .await
        .expect("open");
    s.sync_once(&mut conv, |_| Ok(()), T).await.expect("push");
    s.close(None).await;

    let out = run(
        &paths,
        MoveArgs {
            conv: id[..8].to_string(),
            node: Some("b".into()),
            workspace: Some("w2".into()),
            ..MoveArgs::default()
        },
    )
    .await
    .expect("move");
    assert_eq!(out.json["from"]["reached"], true, "{}", out.text);
    assert!(
        out.json["carried"]
            .as_str()
            .unwrap_or("")
            .starts_with("patch in message "),
        "{}",
        out.json
    );

    // The old node let go: its copy names the new node.
    let ws_on_a = node_a
        .node
        .docs()
        .read(&id, |c| c.workspace())
        .await
        .expect("read on a");
    assert_eq!(ws_on_a.node, key_b.node_id().to_string());

    // A prompt on the new node: the patch is applied before the agent's turn.
    let mut doc = replicas.load(&id).expect("load");
    doc.append_user_message(&author, "read a.txt", Status::Queued)
        .expect("prompt");
    replicas.save(&mut doc).expect("save");
    let mut s = open_stream(&ep, &node_b.ticket(), &id, false)
        .await
        .expect("open b");
    s.sync_once(&mut doc, |_| Ok(()), T).await.expect("sync b");
    s.close(None).await;
    let start = std::time::Instant::now();
    let msgs = loop {
        let m = node_b
            .node
            .docs()
            .read(&id, |c| c.messages())
            .await
            .expect("read on b");
        if m.iter()
            .any(|x| x.role == MsgRole::User && x.status == Status::Done)
        {
            break m;
        }
        assert!(start.elapsed() < T, "the turn did not end: {m:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    let all = all.join("\n");
    assert!(all.contains("line 2 changed"), "{all}");
    assert!(
        all.contains("the uncommitted work carried from there was applied (git apply)"),
        "{all}"
    );
    assert_eq!(
        std::fs::read_to_string(w2.join("a.txt")).expect("a.txt"),
        "line one\nline 2 changed\n"
    );
    // New files came along too (the patch is made with a throw-away index).
    assert_eq!(
        std::fs::read_to_string(w2.join("b.txt")).expect("b.txt"),
        "other one\nline two\n"
    );
    assert_eq!(
        std::fs::read_to_string(w2.join("notes/todo.md")).expect("notes/todo.md"),
        "draft\n"
    );
    assert_eq!(
        std::fs::read(w2.join("blob.bin")).expect("blob.bin"),
        b"\x00\x01\x02bin"
    );
    // ... and the old workspace's own index was left alone (nothing staged there).
    assert_eq!(
        container.sh("cd /workspaces/repo && git diff --cached --name-only"),
        ""
    );
    let agent = msgs
        .iter()
        .find(|m| m.role == MsgRole::Agent)
        .expect("agent answer");
    assert!(agent.text.contains("line 2 changed"), "{}", agent.text);

    let hosts = node_b
        .node
        .docs()
        .read(&id, |c| c.hosts())
        .await
        .expect("hosts");
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(hosts[0].workspace, ws_a);
    assert_eq!(hosts[0].end, Some(HostEnd::Moved));
    assert!(
        hosts[0]
            .carried
            .as_deref()
            .unwrap_or("")
            .starts_with("patch in message"),
        "{hosts:?}"
    );
    assert_eq!(hosts[1].workspace, "w2");
    ep.close().await;
    drop(container);
}
