//! `sam/doc/1` over real loopback iroh: live streaming to several clients, roles,
//! scopes, bad peers, offline prompts and durability across `kill -9`.

use crate::support::harness;

use std::time::Duration;

use harness::{TestNode, client, endpoint, start_in};
use sam_client::docs::{DocStream, open_stream};
use sam_crdt::{Conversation, MessageId, NewConversation, Role as MsgRole, Status};
use sam_protocol::capability::Grantee;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse, DocFrame, DocOpen};
use sam_protocol::{Role, Scope, SecretKey, Ticket};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(30);

fn new_conv(node: &TestNode, author: &SecretKey, workspace: &str) -> Conversation {
    Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: "test".into(),
            agent: "custom".into(),
            workspace_node: node.node_key.node_id().to_string(),
            workspace_id: workspace.into(),
            created_at: sam_crdt::now_ms(),
        },
        &author.node_id().to_string(),
    )
    .expect("create")
}

/// Pushes a locally created conversation to the node.
async fn publish(node: &TestNode, key: &SecretKey, ticket: &Ticket, conv: &mut Conversation) {
    let ep = endpoint(key).await;
    let mut s = open_stream(&ep, ticket, &conv.id(), true)
        .await
        .expect("open create");
    s.sync_once(conv, |_| Ok(()), T).await.expect("sync");
    s.close(None).await;
    let _ = node;
}

/// Follows a conversation in the background; the watch shows the latest messages.
async fn follow(
    key: &SecretKey,
    ticket: &Ticket,
    id: &str,
) -> (iroh::Endpoint, watch::Receiver<Vec<sam_crdt::MessageView>>) {
    let ep = endpoint(key).await;
    let mut stream: DocStream = open_stream(&ep, ticket, id, false).await.expect("open");
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut conv = Conversation::new_replica();
        let _ = stream
            .follow(
                &mut conv,
                |_| Ok(()),
                |c| {
                    let _ = tx.send(c.messages());
                },
            )
            .await;
    });
    (ep, rx)
}

async fn wait_for(
    rx: &mut watch::Receiver<Vec<sam_crdt::MessageView>>,
    what: &str,
    pred: impl Fn(&[sam_crdt::MessageView]) -> bool,
) -> Vec<sam_crdt::MessageView> {
    tokio::time::timeout(T, async {
        loop {
            {
                let v = rx.borrow_and_update();
                if pred(&v) {
                    return v.clone();
                }
            }
            rx.changed().await.expect("follower ended");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn a_streamed_message_reaches_every_follower_live() {
    let n = TestNode::start().await;
    let owner_ticket = n.handle.ticket();
    let mut conv = new_conv(&n, &n.owner, "w1");
    let id = conv.id();
    publish(&n, &n.owner, &owner_ticket, &mut conv).await;

    let (collab, collab_ticket) = n.member(Role::Collaborator);
    let (viewer, viewer_ticket) = n.member(Role::Viewer);
    let (_e1, mut rx1) = follow(&collab, &collab_ticket, &id).await;
    let (_e2, mut rx2) = follow(&viewer, &viewer_ticket, &id).await;

    let node_author = n.node_key.node_id().to_string();
    let msg = n
        .handle
        .node
        .docs()
        .mutate(&id, move |c| c.start_message(&node_author, MsgRole::Agent))
        .await
        .expect("mutate")
        .expect("start");
    let mut expected = String::new();
    for i in 0..200 {
        let chunk = format!("tok{i} ");
        expected.push_str(&chunk);
        let m = msg.clone();
        n.handle
            .node
            .docs()
            .mutate(&id, move |c| c.append_chunk(&m, &chunk))
            .await
            .expect("mutate")
            .expect("chunk");
    }
    let m = msg.clone();
    n.handle
        .node
        .docs()
        .mutate(&id, move |c| c.set_status(&m, Status::Done, None))
        .await
        .expect("mutate")
        .expect("done");

    for rx in [&mut rx1, &mut rx2] {
        let msgs = wait_for(rx, "the whole agent message", |v| {
            v.iter().any(|m| m.id == msg && m.status == Status::Done)
        })
        .await;
        let got = msgs.iter().find(|m| m.id == msg).expect("message");
        assert_eq!(got.text, expected);
        assert_eq!(got.author, n.node_key.node_id().to_string());
    }
}

#[tokio::test]
async fn viewers_read_but_cannot_write() {
    let n = TestNode::start().await;
    let mut conv = new_conv(&n, &n.owner, "w1");
    let id = conv.id();
    publish(&n, &n.owner, &n.handle.ticket(), &mut conv).await;

    let (viewer, ticket) = n.member(Role::Viewer);
    let ep = endpoint(&viewer).await;
    let mut replica = Conversation::new_replica();
    let mut s = open_stream(&ep, &ticket, &id, false)
        .await
        .expect("viewer opens");
    s.sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect("viewer reads");
    assert_eq!(replica.id(), id);

    replica
        .append_user_message(&viewer.node_id().to_string(), "let me in", Status::Queued)
        .expect("local write");
    let mut s = open_stream(&ep, &ticket, &id, false).await.expect("reopen");
    let err = s
        .sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect_err("the node refuses the change");
    assert!(
        format!("{err:#}").contains("viewers cannot change"),
        "{err:#}"
    );

    let count = n
        .handle
        .node
        .docs()
        .mutate(&id, |c| c.messages().len())
        .await
        .expect("read");
    assert_eq!(
        count, 0,
        "the viewer's prompt must not reach the node's document"
    );

    // Viewers cannot add conversations either.
    let mut theirs = new_conv(&n, &viewer, "w1");
    let r = open_stream(&ep, &ticket, &theirs.id(), true).await;
    assert!(r.is_err(), "viewer created a conversation");
    let _ = theirs.heads();
}

#[tokio::test]
async fn a_scoped_capability_sees_only_its_conversation() {
    let n = TestNode::start().await;
    let mut a = new_conv(&n, &n.owner, "w1");
    let mut b = new_conv(&n, &n.owner, "w2");
    publish(&n, &n.owner, &n.handle.ticket(), &mut a).await;
    publish(&n, &n.owner, &n.handle.ticket(), &mut b).await;

    let key = SecretKey::generate();
    let cap = n.scoped_cap(
        Grantee::Key(key.node_id()),
        Role::Collaborator,
        Some(Scope::Conversation(a.id())),
        None,
    );
    let ticket = n.ticket_with(Some(cap), None);
    let ep = endpoint(&key).await;
    let mut r = Conversation::new_replica();
    let mut s = open_stream(&ep, &ticket, &a.id(), false)
        .await
        .expect("own scope");
    s.sync_once(&mut r, |_| Ok(()), T).await.expect("sync a");
    let err = open_stream(&ep, &ticket, &b.id(), false)
        .await
        .err()
        .expect("b refused");
    assert!(err.to_string().contains("does not cover"), "{err}");

    let (_ep, c) = client(&key, &ticket).await.expect("ctl");
    let Response::Conv(ConvResponse::List(list)) = c
        .request(Request::Conv(ConvRequest::List))
        .await
        .expect("list")
    else {
        panic!("not a list")
    };
    assert_eq!(
        list.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![a.id()]
    );

    // A workspace scope covers the conversations of that workspace.
    let key2 = SecretKey::generate();
    let cap = n.scoped_cap(
        Grantee::Key(key2.node_id()),
        Role::Viewer,
        Some(Scope::Workspace("w2".into())),
        None,
    );
    let ticket2 = n.ticket_with(Some(cap), None);
    let ep2 = endpoint(&key2).await;
    assert!(open_stream(&ep2, &ticket2, &b.id(), false).await.is_ok());
    assert!(open_stream(&ep2, &ticket2, &a.id(), false).await.is_err());
}

#[tokio::test]
async fn a_bad_peer_is_cut_off_and_others_keep_streaming() {
    let n = TestNode::start().await;
    let mut conv = new_conv(&n, &n.owner, "w1");
    let id = conv.id();
    publish(&n, &n.owner, &n.handle.ticket(), &mut conv).await;
    let (good, good_ticket) = n.member(Role::Viewer);
    let (_e, mut rx) = follow(&good, &good_ticket, &id).await;

    // A collaborator sends garbage sync messages, then an oversized frame.
    let (bad, bad_ticket) = n.member(Role::Collaborator);
    let bad_ep = endpoint(&bad).await;
    for (frame, expect) in [
        (DocFrame::Sync(vec![0x42, 1, 2, 3]), "sync rejected"),
        (DocFrame::Sync(vec![0u8; 1000]), "sync rejected"),
        (DocFrame::Live(vec![0x42, 1, 2]), "node to peers only"),
    ] {
        let (conn, _) = sam_client::conn::connect(&bad_ep, &bad_ticket, sam_protocol::alpn::DOC)
            .await
            .expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("bi");
        sam_protocol::wire::write_frame(
            &mut send,
            &DocOpen {
                conversation: id.clone(),
                create: false,
            },
        )
        .await
        .expect("open");
        let _: sam_protocol::stream::OpenReply = sam_protocol::wire::read_frame(&mut recv, 1 << 16)
            .await
            .expect("reply");
        sam_protocol::wire::write_frame(&mut send, &frame)
            .await
            .expect("send garbage");
        // The node answers with an error frame (after any sync message of its own).
        let mut got_error = false;
        for _ in 0..4 {
            match sam_protocol::wire::read_frame::<DocFrame>(&mut recv, 1 << 24).await {
                Ok(DocFrame::Error(e)) => {
                    assert!(e.message.contains(expect), "{e}");
                    got_error = true;
                    break;
                }
                Ok(DocFrame::Sync(_) | DocFrame::Live(_)) => continue,
                Err(_) => break,
            }
        }
        assert!(got_error, "garbage was not refused");
    }
    {
        let (conn, _) = sam_client::conn::connect(&bad_ep, &bad_ticket, sam_protocol::alpn::DOC)
            .await
            .expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("bi");
        sam_protocol::wire::write_frame(
            &mut send,
            &DocOpen {
                conversation: id.clone(),
                create: false,
            },
        )
        .await
        .expect("open");
        let _: sam_protocol::stream::OpenReply = sam_protocol::wire::read_frame(&mut recv, 1 << 16)
            .await
            .expect("reply");
        send.write_all(&(64u32 << 20).to_be_bytes())
            .await
            .expect("huge header");
        let mut closed = false;
        for _ in 0..4 {
            match sam_protocol::wire::read_frame::<DocFrame>(&mut recv, 1 << 24).await {
                Ok(DocFrame::Error(e)) => {
                    assert!(e.message.contains("over the limit"), "{e}");
                    closed = true;
                    break;
                }
                Ok(DocFrame::Sync(_) | DocFrame::Live(_)) => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed);
    }

    // The good follower still gets new changes.
    let author = n.node_key.node_id().to_string();
    let msg = n
        .handle
        .node
        .docs()
        .mutate(&id, move |c| {
            let m = c.start_message(&author, MsgRole::Agent)?;
            c.append_chunk(&m, "still here")?;
            Ok::<_, sam_crdt::CrdtError>(m)
        })
        .await
        .expect("mutate")
        .expect("write");
    wait_for(&mut rx, "the follower to see new text", |v| {
        v.iter().any(|m| m.id == msg && m.text == "still here")
    })
    .await;
}

#[tokio::test]
async fn a_prompt_written_offline_reaches_the_node_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let handle = start_in(dir.path(), &owner, &node_key, "127.0.0.1:0").await;
    let n = TestNode {
        dir: tempfile::tempdir().expect("unused"),
        owner: owner.clone(),
        node_key: node_key.clone(),
        handle,
    };
    let mut conv = new_conv(&n, &owner, "w1");
    let id = conv.id();
    publish(&n, &owner, &n.handle.ticket(), &mut conv).await;
    let TestNode { handle, .. } = n;
    handle.shutdown().await.expect("stop node");

    // Offline: the prompt is a queued message in the local replica only.
    let me = owner.node_id().to_string();
    let p1 = conv
        .append_user_message(&me, "first", Status::Queued)
        .expect("p1");
    let p2 = conv
        .append_user_message(&me, "second", Status::Queued)
        .expect("p2");

    let handle = start_in(dir.path(), &owner, &node_key, "127.0.0.1:0").await;
    let ep = endpoint(&owner).await;
    let mut s = open_stream(&ep, &handle.ticket(), &id, false)
        .await
        .expect("open");
    s.sync_once(&mut conv, |_| Ok(()), T).await.expect("sync");
    // Both prompts reached the node's document, in order (the node's agent runner may
    // already have picked them up, so their status is not checked here).
    let users: Vec<_> = handle
        .node
        .docs()
        .read(&id, |c| {
            c.messages()
                .into_iter()
                .filter(|m| m.role == MsgRole::User)
                .map(|m| (m.id, m.text))
                .collect::<Vec<_>>()
        })
        .await
        .expect("read");
    assert_eq!(
        users,
        vec![(p1, "first".to_string()), (p2, "second".to_string())],
        "offline prompts arrive in order"
    );
}

/// Child half of the kill -9 test: streams chunks through the node's document
/// actor and prints `ack N` after each one the node has made durable.
#[tokio::test]
async fn kill9_child() {
    let Ok(dir) = std::env::var("SAM_KILL9_DIR") else {
        return; // only runs when spawned by `acknowledged_chunks_survive_kill_9`
    };
    use std::io::Write;
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    std::fs::write(
        format!("{dir}/keys"),
        format!("{}\n{}\n", hex(&owner), hex(&node_key)),
    )
    .expect("keys");
    let handle = start_in(std::path::Path::new(&dir), &owner, &node_key, "127.0.0.1:0").await;
    let author = node_key.node_id().to_string();
    let conv = Conversation::create(
        NewConversation {
            id: "c0ffee".into(),
            title: "kill".into(),
            agent: "custom".into(),
            workspace_node: author.clone(),
            workspace_id: "w".into(),
            created_at: 0,
        },
        &author,
    )
    .expect("create");
    let docs = handle.node.docs().clone();
    docs.insert(conv).expect_done().await;
    let a = author.clone();
    let msg = docs
        .mutate("c0ffee", move |c| c.start_message(&a, MsgRole::Agent))
        .await
        .expect("mutate")
        .expect("start");
    let mut out = std::io::stdout();
    for i in 0..100_000u32 {
        let m = msg.clone();
        docs.mutate("c0ffee", move |c| c.append_chunk(&m, &format!("<{i}>")))
            .await
            .expect("mutate")
            .expect("chunk");
        writeln!(out, "ack {i}").expect("stdout");
        out.flush().expect("flush");
    }
}

trait ExpectDone {
    async fn expect_done(self);
}

impl<F: std::future::Future<Output = Result<(), sam_protocol::ctl::ErrorBody>>> ExpectDone for F {
    async fn expect_done(self) {
        self.await.expect("done");
    }
}

fn hex(k: &SecretKey) -> String {
    k.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> SecretKey {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect();
    SecretKey::from_bytes(bytes.try_into().expect("32 bytes"))
}

/// The libtest name of `test` in this file (`docs::test` when this file is a module of
/// the crate's one test binary).
fn this_module_test(test: &str) -> String {
    match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    }
}

#[tokio::test]
async fn acknowledged_chunks_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            &this_module_test("kill9_child"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SAM_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut last_ack = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("ack ") {
            let n: u32 = n.trim().parse().expect("number");
            last_ack = Some(n);
            if n >= 150 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, no compaction.
    child.kill().expect("kill -9");
    let _ = child.wait();
    let last = last_ack.expect("the child acknowledged chunks");

    // Everything acknowledged is on disk.
    let mut store =
        sam_crdt::DocStore::open(dir.path().join("docs"), Default::default()).expect("store");
    let conv = store.load("c0ffee").expect("load after kill -9");
    let text = conv.messages().last().expect("message").text.clone();
    let want: String = (0..=last).map(|i| format!("<{i}>")).collect();
    assert!(
        text.starts_with(&want),
        "acknowledged chunks lost: have {} bytes, need a prefix of {}",
        text.len(),
        want.len()
    );

    // The node restarts on the same files and a client replica converges to it.
    let keys = std::fs::read_to_string(dir.path().join("keys")).expect("keys");
    let mut lines = keys.lines();
    let owner = unhex(lines.next().expect("owner"));
    let node_key = unhex(lines.next().expect("node"));
    let handle = start_in(dir.path(), &owner, &node_key, "127.0.0.1:0").await;
    let ep = endpoint(&owner).await;
    let mut replica = Conversation::new_replica();
    let mut s = open_stream(&ep, &handle.ticket(), "c0ffee", false)
        .await
        .expect("open");
    s.sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect("sync");
    // The restarted node may have marked the cut-off turn `interrupted`: compare with
    // its current document, which must still hold every acknowledged chunk.
    let node_msgs = handle
        .node
        .docs()
        .read("c0ffee", |c| c.messages())
        .await
        .expect("read");
    let mut node_heads = handle
        .node
        .docs()
        .mutate("c0ffee", |c| c.heads())
        .await
        .expect("heads");
    node_heads.sort();
    let mut replica_heads = replica.heads();
    replica_heads.sort();
    assert_eq!(replica_heads, node_heads);
    assert_eq!(replica.messages(), node_msgs);
    let text = &node_msgs.last().expect("message").text;
    assert!(
        text.starts_with(&want),
        "acknowledged chunks lost after restart"
    );
}
