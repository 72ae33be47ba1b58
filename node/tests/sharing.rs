//! Team sharing: revocation during a live stream, 50 watchers while the node
//! streams, presence, and history served peer to peer after the node is gone.

use crate::support::harness;

use std::time::Duration;

use harness::{TestNode, client, endpoint};
use sam_client::docs::{Replicas, open_stream};
use sam_client::{ClientPaths, NodeBook};
use sam_crdt::{Conversation, MessageId, NewConversation, Role as MsgRole, Status};
use sam_protocol::capability::Grantee;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::{Role, Scope, SecretKey, Ticket};

const T: Duration = Duration::from_secs(60);

async fn published(n: &TestNode, workspace: &str) -> Conversation {
    let author = n.owner.node_id().to_string();
    let mut conv = Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: "shared".into(),
            agent: "custom".into(),
            workspace_node: n.node_key.node_id().to_string(),
            workspace_id: workspace.into(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )
    .expect("create");
    let ep = endpoint(&n.owner).await;
    let mut s = open_stream(&ep, &n.handle.ticket(), &conv.id(), true)
        .await
        .expect("open");
    s.sync_once(&mut conv, |_| Ok(()), T)
        .await
        .expect("publish");
    conv
}

async fn stream_chunks(n: &TestNode, id: &str, count: usize) -> MessageId {
    let docs = n.handle.node.docs().clone();
    let author = n.node_key.node_id().to_string();
    let msg = docs
        .mutate(id, move |c| c.start_message(&author, MsgRole::Agent))
        .await
        .expect("mutate")
        .expect("start");
    for i in 0..count {
        let m = msg.clone();
        docs.mutate(id, move |c| c.append_chunk(&m, &format!("<{i}>")))
            .await
            .expect("mutate")
            .expect("chunk");
    }
    let m = msg.clone();
    docs.mutate(id, move |c| c.set_status(&m, Status::Done, None))
        .await
        .expect("mutate")
        .expect("done");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_watchers_miss_no_chunk_and_show_up_as_present() {
    let n = TestNode::start().await;
    let conv = published(&n, "w1").await;
    let id = conv.id();
    let mut watchers = Vec::new();
    for _ in 0..50 {
        let (key, ticket) = n.member(Role::Viewer);
        let ep = endpoint(&key).await;
        let mut s = open_stream(&ep, &ticket, &id, false).await.expect("open");
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            let _ep = ep;
            let mut replica = Conversation::new_replica();
            let _ = s
                .follow(
                    &mut replica,
                    |_| Ok(()),
                    |c| {
                        let _ = tx.send(c.messages());
                    },
                )
                .await;
        });
        watchers.push(rx);
    }
    // Presence: the node lists all 50 watchers on this conversation.
    let (_ep, owner) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    let Response::Conv(ConvResponse::List(list)) = owner
        .request(Request::Conv(ConvRequest::List))
        .await
        .expect("list")
    else {
        panic!("not a list")
    };
    let summary = list.iter().find(|s| s.id == id).expect("listed");
    assert_eq!(summary.watchers.len(), 50, "presence");
    assert!(summary.watchers.iter().all(|w| w.role == Role::Viewer));

    let msg = stream_chunks(&n, &id, 200).await;
    let want: String = (0..200).map(|i| format!("<{i}>")).collect();
    for mut rx in watchers {
        tokio::time::timeout(T, async {
            loop {
                if rx
                    .borrow_and_update()
                    .iter()
                    .any(|m| m.id == msg && m.status == Status::Done)
                {
                    break;
                }
                rx.changed().await.expect("watcher alive");
            }
        })
        .await
        .expect("watcher got the whole message");
        let msgs = rx.borrow().clone();
        let got = msgs.iter().find(|m| m.id == msg).expect("message");
        assert_eq!(got.text, want, "a watcher missed or reordered chunks");
    }
}

#[tokio::test]
async fn revoking_during_a_live_stream_cuts_the_watcher_off() {
    let n = TestNode::start().await;
    let conv = published(&n, "w1").await;
    let id = conv.id();
    let key = SecretKey::generate();
    let cap = n.cap(Grantee::Key(key.node_id()), Role::Collaborator, None);
    let ticket = n.ticket_with(Some(cap.clone()), None);
    let ep = endpoint(&key).await;
    let mut s = open_stream(&ep, &ticket, &id, false).await.expect("open");
    let follower = tokio::spawn(async move {
        let mut replica = Conversation::new_replica();
        let r = s.follow(&mut replica, |_| Ok(()), |_| {}).await;
        (r, replica)
    });
    let streamer = {
        let docs = n.handle.node.docs().clone();
        let author = n.node_key.node_id().to_string();
        let id = id.clone();
        tokio::spawn(async move {
            let msg = docs
                .mutate(&id, move |c| c.start_message(&author, MsgRole::Agent))
                .await
                .expect("mutate")
                .expect("start");
            for i in 0..100_000 {
                let m = msg.clone();
                if docs
                    .mutate(&id, move |c| c.append_chunk(&m, &format!("<{i}>")))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.handle.node.revoke(cap.cap.id).expect("revoke");
    let (result, _replica) = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the revoked watcher's stream ends at once")
        .expect("task");
    let _ = result; // an error or a clean end: either way it stopped
    let err = open_stream(&ep, &ticket, &id, false)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("revoked"), "{err}");
    streamer.abort();
}

fn paths_with_node(dir: &std::path::Path, n: &TestNode, ticket: &Ticket) -> ClientPaths {
    let paths = ClientPaths::new(dir);
    let mut book = NodeBook::default();
    book.upsert(ticket, Some("team")).expect("upsert");
    book.set_owner(&n.node_key.node_id().to_string(), &n.owner.node_id());
    book.save(&paths.nodes()).expect("save book");
    paths
}

#[tokio::test]
async fn history_outlives_the_node_through_a_teammate() {
    let n = TestNode::start().await;
    let conv = published(&n, "w1").await;
    let other = published(&n, "w2").await;
    let id = conv.id();
    let msg = stream_chunks(&n, &id, 50).await;

    // Bob (collaborator) holds replicas of both conversations.
    let bob_dir = tempfile::tempdir().expect("tempdir");
    let bob_paths = ClientPaths::new(bob_dir.path());
    let bob = bob_paths.identity().expect("bob key");
    let bob_cap = n.cap(Grantee::Key(bob.node_id()), Role::Collaborator, None);
    let bob_ticket = n.ticket_with(Some(bob_cap), None);
    let bob_paths = paths_with_node(bob_dir.path(), &n, &bob_ticket);
    let ep = endpoint(&bob).await;
    let mut replicas = Replicas::open(&bob_paths).expect("replicas");
    for cid in [id.clone(), other.id()] {
        let mut r = Conversation::new_replica();
        let mut s = open_stream(&ep, &bob_ticket, &cid, false)
            .await
            .expect("open");
        s.sync_once(&mut r, |_| Ok(()), T).await.expect("sync");
        replicas.save(&mut r).expect("save");
    }
    drop(replicas);

    // The node is deleted.
    let node_id = n.node_key.node_id();
    let TestNode {
        handle,
        owner,
        node_key,
        ..
    } = n;
    handle.shutdown().await.expect("node gone");

    // Bob serves what he holds.
    let server = sam_client::serve::start(&bob_paths, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");

    // Carol joins later with a capability scoped to one conversation.
    let carol = SecretKey::generate();
    let carol_cap = sam_protocol::Capability::new(
        owner.node_id(),
        node_id,
        Grantee::Key(carol.node_id()),
        Role::Viewer,
        Some(Scope::Conversation(id.clone())),
        sam_node::now_secs(),
        None,
    )
    .sign(&owner, None);
    let via = Ticket {
        addr: server.ticket.addr.clone(),
        capability: Some(carol_cap),
        invite_secret: None,
    };
    let carol_ep = endpoint(&carol).await;
    let (c, _) = (
        sam_client::conn::NodeClient::connect(&carol_ep, &via)
            .await
            .expect("carol is let in by bob"),
        (),
    );
    let Response::Conv(ConvResponse::List(list)) = c
        .request(Request::Conv(ConvRequest::List))
        .await
        .expect("list")
    else {
        panic!("not a list")
    };
    assert_eq!(
        list.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let mut replica = Conversation::new_replica();
    let mut s = open_stream(&carol_ep, &via, &id, false)
        .await
        .expect("open via bob");
    s.sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect("history from bob");
    let got = replica.message(&msg).expect("the streamed message");
    let want: String = (0..50).map(|i| format!("<{i}>")).collect();
    assert_eq!(got.text, want);
    // Out of scope, and strangers, are refused.
    assert!(
        open_stream(&carol_ep, &via, &other.id(), false)
            .await
            .is_err()
    );
    let stranger = SecretKey::generate();
    let forged = Ticket {
        capability: None,
        ..via.clone()
    };
    let sep = endpoint(&stranger).await;
    assert!(
        sam_client::conn::NodeClient::connect(&sep, &forged)
            .await
            .is_err()
    );
    let mallory_cap = sam_protocol::Capability::new(
        stranger.node_id(),
        node_id,
        Grantee::Key(stranger.node_id()),
        Role::Owner,
        None,
        sam_node::now_secs(),
        None,
    )
    .sign(&stranger, None);
    let forged = Ticket {
        capability: Some(mallory_cap),
        ..via.clone()
    };
    let err = sam_client::conn::NodeClient::connect(&sep, &forged)
        .await
        .expect_err("self-signed capability refused");
    assert!(err.to_string().contains("not the owner"), "{err}");
    let _ = node_key;
    let _ = server.router.shutdown().await;
}
