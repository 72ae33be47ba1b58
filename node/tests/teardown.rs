//! Graceful teardown with a real node on loopback iroh, real clients and a real container:
//! deleting a workspace is refused while no other peer holds its conversations in sync,
//! allowed once a follower does (after it is asked to announce its heads), forced with
//! `force`, and recorded in the document only after the deletion (hosts entry `removed` and
//! a system note naming the peer).

use crate::support::harness;
use crate::support::ws_common as common;

use std::time::Duration;

use common::{Container, docker_ready};
use harness::TestNode;
use sam_client::conn::{ConnectError, NodeClient};
use sam_client::docs::open_stream;
use sam_crdt::{Conversation, HostEnd, NewConversation, Role as MsgRole};
use sam_protocol::ctl::{ErrorCode, Request, Response};
use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse};
use sam_protocol::{Role, SecretKey};

const T: Duration = Duration::from_secs(60);

async fn adopt(n: &TestNode) -> (Container, String) {
    docker_ready();
    let c = Container::start();
    let ws = n
        .handle
        .node
        .workspaces()
        .adopt(&c.id, "/workspaces/repo", "root")
        .await
        .expect("adopt container");
    (c, ws)
}

async fn conv_in(n: &TestNode, ws: &str) -> String {
    let owner = n.owner.node_id().to_string();
    let mut c = Conversation::create(
        NewConversation {
            id: sam_crdt::MessageId::random().to_string(),
            title: "teardown".into(),
            agent: "custom".into(),
            workspace_node: n.node_key.node_id().to_string(),
            workspace_id: ws.into(),
            created_at: sam_crdt::now_ms(),
        },
        &owner,
    )
    .expect("create");
    c.append_note(&owner, "hello").expect("note");
    let id = c.id();
    n.handle.node.docs().insert(c).await.expect("insert");
    id
}

async fn teardown(n: &TestNode, ws: &str, force: bool) -> Result<Response, ConnectError> {
    let ep = harness::endpoint(&n.owner).await;
    let c = NodeClient::connect(&ep, &n.handle.ticket())
        .await
        .expect("ctl");
    let r = c
        .request(Request::Workspace(WorkspaceRequest::Teardown {
            id: ws.to_string(),
            force,
        }))
        .await;
    c.close();
    ep.close().await;
    r
}

async fn listed(n: &TestNode, ws: &str) -> bool {
    n.handle
        .node
        .workspaces()
        .list()
        .await
        .expect("list")
        .iter()
        .any(|w| w.id == ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_waits_for_a_peer_in_sync_and_is_recorded_after_it_happened() {
    let n = TestNode::start().await;
    let (_container, ws) = adopt(&n).await;
    let conv = conv_in(&n, &ws).await;
    let docs = n.handle.node.docs().clone();
    let before = docs.read(&conv, |c| c.hosts()).await.expect("read");

    // Nobody else holds the conversation: refused, with the reason and the way out.
    let e = match teardown(&n, &ws, false).await {
        Err(ConnectError::Remote(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains(&conv), "{e}");
    assert!(e.message.contains("not held in sync"), "{e}");
    assert!(e.message.contains("--force"), "{e}");
    assert!(listed(&n, &ws).await, "the workspace is still there");
    assert_eq!(
        docs.read(&conv, |c| c.hosts()).await.expect("read"),
        before,
        "nothing recorded for a teardown that did not happen"
    );

    // A collaborator follows the conversation live.
    let (key, ticket) = n.member(Role::Collaborator);
    let ep = harness::endpoint(&key).await;
    let mut stream = open_stream(&ep, &ticket, &conv, false).await.expect("open");
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let follower = tokio::spawn(async move {
        let mut c = Conversation::new_replica();
        let _ = stream
            .follow(
                &mut c,
                |_| Ok(()),
                |c| {
                    let _ = tx.send(c.messages());
                },
            )
            .await;
    });
    tokio::time::timeout(T, rx.wait_for(|m| m.len() == 1))
        .await
        .expect("follower synced")
        .expect("follower");
    // A change the follower only gets as a live batch (which it does not answer): the node
    // must ask it to announce its heads before it counts as holding everything.
    let me = n.node_key.node_id().to_string();
    docs.mutate(&conv, move |c| c.append_note(&me, "one more"))
        .await
        .expect("mutate")
        .expect("note");
    tokio::time::timeout(T, rx.wait_for(|m| m.len() == 2))
        .await
        .expect("live batch")
        .expect("follower");

    match teardown(&n, &ws, false).await {
        Ok(Response::Workspace(WorkspaceResponse::Removed { id })) => assert_eq!(id, ws),
        other => panic!("expected the workspace removed, got {other:?}"),
    }
    assert!(!listed(&n, &ws).await, "the workspace is gone");
    let (hosts, msgs) = docs
        .read(&conv, |c| (c.hosts(), c.messages()))
        .await
        .expect("read");
    let last = hosts.last().expect("a hosts entry");
    assert_eq!(last.workspace, ws);
    assert_eq!(last.end, Some(HostEnd::Removed));
    assert!(last.ended_at.is_some());
    let note = msgs
        .iter()
        .rev()
        .find(|m| m.role == MsgRole::System)
        .expect("note");
    assert!(
        note.text
            .contains("was deleted after this conversation was flushed to")
            && note.text.contains(&key.node_id().short().to_string()),
        "{}",
        note.text
    );
    // The follower got the record too.
    tokio::time::timeout(
        T,
        rx.wait_for(|m| m.iter().any(|x| x.text.contains("flushed to"))),
    )
    .await
    .expect("record reaches the follower")
    .expect("follower");
    follower.abort();
    ep.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_deletes_without_a_replica_and_says_so_and_viewers_cannot() {
    let n = TestNode::start().await;
    let (_container, ws) = adopt(&n).await;
    let conv = conv_in(&n, &ws).await;
    // Only the owner deletes workspaces.
    let (key, ticket) = n.member(Role::Collaborator);
    let ep = harness::endpoint(&key).await;
    let c = NodeClient::connect(&ep, &ticket).await.expect("ctl");
    let r = c
        .request(Request::Workspace(WorkspaceRequest::Teardown {
            id: ws.clone(),
            force: true,
        }))
        .await;
    assert!(
        matches!(&r, Err(ConnectError::Remote(e)) if e.code == ErrorCode::Forbidden),
        "{r:?}"
    );
    c.close();
    ep.close().await;

    match teardown(&n, &ws, true).await {
        Ok(Response::Workspace(WorkspaceResponse::Removed { id })) => assert_eq!(id, ws),
        other => panic!("expected the workspace removed, got {other:?}"),
    }
    let (hosts, msgs) = n
        .handle
        .node
        .docs()
        .read(&conv, |c| (c.hosts(), c.messages()))
        .await
        .expect("read");
    assert_eq!(hosts.last().and_then(|h| h.end), Some(HostEnd::Removed));
    assert!(
        msgs.iter()
            .any(|m| m.role == MsgRole::System && m.text.contains("deleted with --force")),
        "{msgs:?}"
    );
    // A workspace without conversations goes at once (the plain `Remove` too).
    let (_c2, ws2) = adopt(&n).await;
    let _ = SecretKey::generate();
    let ep = harness::endpoint(&n.owner).await;
    let c = NodeClient::connect(&ep, &n.handle.ticket())
        .await
        .expect("ctl");
    let r = c
        .request(Request::Workspace(WorkspaceRequest::Remove {
            id: ws2.clone(),
        }))
        .await;
    assert!(
        matches!(
            r,
            Ok(Response::Workspace(WorkspaceResponse::Removed { .. }))
        ),
        "{r:?}"
    );
    c.close();
    ep.close().await;
}

async fn drain(n: &TestNode) -> Result<Response, ConnectError> {
    let ep = harness::endpoint(&n.owner).await;
    let c = NodeClient::connect(&ep, &n.handle.ticket())
        .await
        .expect("ctl");
    let r = c.request(Request::Workspace(WorkspaceRequest::Drain)).await;
    c.close();
    ep.close().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_drained_only_when_what_it_serves_is_held_elsewhere() {
    let n = TestNode::start().await;
    // Nothing served: drained at once.
    assert!(matches!(
        drain(&n).await,
        Ok(Response::Workspace(WorkspaceResponse::Drained {
            conversations: 0
        }))
    ));
    let conv = conv_in(&n, "w-live").await;
    let done = conv_in(&n, "w-gone").await;
    // A conversation whose workspace was torn down already does not count.
    let me = n.node_key.node_id().to_string();
    n.handle
        .node
        .docs()
        .mutate(&done, move |c| {
            c.end_host(&me, &me, "w-gone", HostEnd::Removed, None)
        })
        .await
        .expect("mutate")
        .expect("end");
    let e = match drain(&n).await {
        Err(ConnectError::Remote(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(
        e.message.contains(&conv) && !e.message.contains(&done),
        "{e}"
    );
    // Held by a follower: drained.
    let (key, ticket) = n.member(Role::Viewer);
    let ep = harness::endpoint(&key).await;
    let mut stream = open_stream(&ep, &ticket, &conv, false).await.expect("open");
    let mut c = Conversation::new_replica();
    stream.sync_once(&mut c, |_| Ok(()), T).await.expect("sync");
    assert!(matches!(
        drain(&n).await,
        Ok(Response::Workspace(WorkspaceResponse::Drained {
            conversations: 1
        }))
    ));
    stream.close(None).await;
    ep.close().await;
}
