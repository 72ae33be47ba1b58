//! `ConvRequest::Delete` and `ConvRequest::Heads` (issue #16, part "release-wipe"), with a real
//! node on loopback iroh, real clients and real `sam-test-agent` processes: only the node's
//! owner (unscoped) may delete a conversation or read its heads; a deletion removes the
//! document and its files, closes its streams, and a stale peer cannot sync it back; a
//! running turn refuses the deletion unless `force`, which cancels the turn first.

use crate::support::agent_util as util;
use crate::support::harness;

use sam_client::conn::ConnectError;
use sam_client::docs::open_stream;
use sam_crdt::{Conversation, Status};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::{Role, Scope, SecretKey, Ticket};
use util::{AgentNode, T, agent_text};

/// A key with `role` on the node (on `scope` only, when given).
fn grantee(n: &AgentNode, role: Role, scope: Option<Scope>) -> (SecretKey, Ticket) {
    let key = SecretKey::generate();
    let cap = Capability::new(
        n.owner.node_id(),
        n.node_key.node_id(),
        Grantee::Key(key.node_id()),
        role,
        scope,
        harness::now(),
        None,
    )
    .sign(&n.owner, None);
    let mut t = n.handle.ticket();
    t.capability = Some(cap);
    (key, t)
}

async fn conv_request(
    key: &SecretKey,
    ticket: &Ticket,
    req: ConvRequest,
) -> Result<ConvResponse, ErrorBody> {
    let (ep, c) = harness::client(key, ticket).await.expect("connect");
    let r = c.request(Request::Conv(req)).await;
    c.close();
    ep.close().await;
    match r {
        Ok(Response::Conv(c)) => Ok(c),
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(ConnectError::Remote(e)) => Err(e),
        Err(e) => panic!("request failed: {e}"),
    }
}

async fn owner_request(n: &AgentNode, req: ConvRequest) -> Result<ConvResponse, ErrorBody> {
    conv_request(&n.owner, &n.handle.ticket(), req).await
}

fn delete(id: &str, force: bool) -> ConvRequest {
    ConvRequest::Delete {
        id: id.to_string(),
        force,
    }
}

/// The files of conversation `id` in the node's store.
fn files_of(n: &AgentNode, id: &str) -> Vec<String> {
    let store = n.dir.path().join("node").join("docs");
    std::fs::read_dir(&store)
        .expect("store dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name == &format!("{id}.am") || name == &format!("{id}.log"))
        .collect()
}

async fn listed(n: &AgentNode) -> Vec<String> {
    n.node()
        .docs()
        .list()
        .await
        .into_iter()
        .map(|s| s.id)
        .collect()
}

/// An unscoped collaborator, an owner scoped to the conversation itself and a viewer each
/// ask to delete it and to read its heads: all are refused, and it stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_nodes_owner_deletes_a_conversation() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let scoped = Some(Scope::Conversation(id.clone()));
    for (who, (key, ticket)) in [
        (
            "an unscoped collaborator",
            grantee(&n, Role::Collaborator, None),
        ),
        (
            "an owner scoped to the conversation",
            grantee(&n, Role::Owner, scoped.clone()),
        ),
        ("a viewer", grantee(&n, Role::Viewer, None)),
    ] {
        for req in [
            delete(&id, true),
            delete(&id, false),
            ConvRequest::Heads { id: id.clone() },
        ] {
            let e = conv_request(&key, &ticket, req.clone())
                .await
                .expect_err(&format!("{who} may not {req:?}"));
            assert_eq!(e.code, ErrorCode::Forbidden, "{who}: {e}");
        }
    }
    assert_eq!(listed(&n).await, std::slice::from_ref(&id));
    assert!(!files_of(&n, &id).is_empty(), "its files are still there");
    // The owner may.
    let heads = match owner_request(&n, ConvRequest::Heads { id: id.clone() }).await {
        Ok(ConvResponse::Heads { heads, .. }) => heads,
        other => panic!("{other:?}"),
    };
    let ours: Vec<[u8; 32]> = n
        .node()
        .docs()
        .heads(&id)
        .await
        .expect("heads")
        .into_iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(heads, ours);
    assert!(matches!(
        owner_request(&n, delete(&id, false)).await,
        Ok(ConvResponse::Deleted { .. })
    ));
}

/// The owner deletes a conversation a collaborator holds in sync: it leaves the node (list,
/// heads, files), the collaborator's open stream is told, and the collaborator's stale
/// replica cannot create it again through sync; the owner's own copy may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversation_is_gone_and_a_stale_peer_cannot_sync_it_back() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let (collab, ct) = grantee(&n, Role::Collaborator, None);
    let ep = harness::endpoint(&collab).await;
    let mut replica = Conversation::new_replica();
    let mut s = open_stream(&ep, &ct, &id, false).await.expect("open");
    s.sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect("sync");
    assert!(!replica.is_empty());

    match owner_request(&n, delete(&id, false)).await {
        Ok(ConvResponse::Deleted {
            id: gone,
            cancelled_turn: None,
        }) => assert_eq!(gone, id),
        other => panic!("{other:?}"),
    }
    assert!(listed(&n).await.is_empty());
    assert!(files_of(&n, &id).is_empty(), "{:?}", files_of(&n, &id));
    let e = owner_request(&n, ConvRequest::Heads { id: id.clone() })
        .await
        .expect_err("no heads of a deleted conversation");
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = owner_request(&n, delete(&id, false))
        .await
        .expect_err("deleted twice");
    assert_eq!(e.code, ErrorCode::NotFound);
    // The stream that was open ends with the reason.
    let r = s
        .sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect_err("the stream of a deleted conversation ends");
    assert!(format!("{r:#}").contains(&id), "{r:#}");

    // The collaborator still holds it: pushing it back as a new document is refused.
    let e = match open_stream(&ep, &ct, &id, true).await {
        Err(ConnectError::Remote(e)) => e,
        Ok(mut s2) => {
            let _ = s2.sync_once(&mut replica, |_| Ok(()), T).await;
            panic!(
                "the stale replica was let in; the node now lists {:?}",
                listed(&n).await
            )
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains("deleted"), "{e}");
    assert!(listed(&n).await.is_empty());
    ep.close().await;

    // The owner's say brings it back.
    let oep = harness::endpoint(&n.owner).await;
    let mut mine = replica;
    let mut s3 = open_stream(&oep, &n.handle.ticket(), &id, true)
        .await
        .expect("the owner may re-create it");
    s3.sync_once(&mut mine, |_| Ok(()), T)
        .await
        .expect("owner's push");
    s3.close(None).await;
    assert_eq!(listed(&n).await, std::slice::from_ref(&id));
    oep.close().await;
}

/// A turn is running: the deletion is refused (`Conflict`, naming the prompt) and the turn
/// goes on; with `force` the turn is cancelled first and the conversation, with a prompt
/// still queued behind it, is gone. The node keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_during_a_turn_needs_force_and_cancels_the_turn_first() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "chunks 100000 5").await;
    n.wait(&id, "some output", |m| agent_text(m).contains("c3 "))
        .await;
    let queued = n.prompt(&id, "say never").await;

    let e = owner_request(&n, delete(&id, false))
        .await
        .expect_err("refused while the turn runs");
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains(&p.to_string()), "{e}");
    // Nothing was touched: the turn goes on writing.
    let before = agent_text(&n.messages(&id).await).len();
    n.wait(&id, "more output", |m| agent_text(m).len() > before)
        .await;
    let m = n.messages(&id).await;
    assert!(m.iter().any(|x| x.id == p && x.status == Status::Running));
    assert!(
        m.iter()
            .any(|x| x.id == queued && x.status == Status::Queued)
    );

    match owner_request(&n, delete(&id, true)).await {
        Ok(ConvResponse::Deleted { cancelled_turn, .. }) => {
            assert_eq!(cancelled_turn, Some(p.to_string()))
        }
        other => panic!("{other:?}"),
    }
    assert!(listed(&n).await.is_empty());
    assert!(files_of(&n, &id).is_empty());
    let e = owner_request(&n, ConvRequest::Heads { id: id.clone() })
        .await
        .expect_err("gone");
    assert_eq!(e.code, ErrorCode::NotFound);

    // Another conversation still runs its turns.
    let other = n.conv(&[]).await;
    let q = n.prompt(&other, "say hi").await;
    assert_eq!(n.ended(&other, &q).await.status, Status::Done);
    assert_eq!(listed(&n).await, std::slice::from_ref(&other));
}

/// The agent keys sent for a conversation go with it: when the owner brings the
/// conversation back (same id), its agent runs without them. Before: credentials stayed in
/// the node's memory under the conversation id after anything happened to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_conversations_agent_keys_are_dropped() {
    use sam_protocol::agent::{AgentRequest, Credentials};
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let (ep, c) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("connect");
    c.request(Request::Agent(AgentRequest::Credentials {
        conv: Some(id.clone()),
        workspace: None,
        credentials: Credentials {
            env: vec![("ANTHROPIC_API_KEY".into(), "sk-previous-holder".into())],
        },
    }))
    .await
    .expect("credentials");
    c.close();
    let p = n.prompt(&id, "env ANTHROPIC_API_KEY").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
    assert!(agent_text(&n.messages(&id).await).contains("is set"));
    let mut copy = Conversation::new_replica();
    let mut s = open_stream(&ep, &n.handle.ticket(), &id, false)
        .await
        .expect("open");
    s.sync_once(&mut copy, |_| Ok(()), T).await.expect("sync");
    s.close(None).await;

    assert!(matches!(
        owner_request(&n, delete(&id, false)).await,
        Ok(ConvResponse::Deleted { .. })
    ));
    let mut s = open_stream(&ep, &n.handle.ticket(), &id, true)
        .await
        .expect("the owner brings it back");
    s.sync_once(&mut copy, |_| Ok(()), T).await.expect("push");
    s.close(None).await;
    ep.close().await;
    let q = n.prompt(&id, "env ANTHROPIC_API_KEY").await;
    assert_eq!(n.ended(&id, &q).await.status, Status::Done);
    let text = agent_text(&n.messages(&id).await);
    assert!(
        text.ends_with("ANTHROPIC_API_KEY is not set"),
        "the deleted conversation's key survived: {text}"
    );
}
