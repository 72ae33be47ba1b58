//! A real node on loopback and real clients: who gets in, with what role, and what
//! happens to bad input. Every refusal must leave the node serving others.

use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::ConnectionError;
use sam_client::conn::{ConnectError, NodeClient, connect};
use sam_client::endpoint::endpoint_addr;
use sam_node::server::close;
use sam_protocol::capability::{Capability, Grantee, invite_hash};
use sam_protocol::ctl::{ErrorCode, Hello, HelloReply, Request, RequestFrame, Response};
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::wire::{read_frame, write_frame};
use sam_protocol::{Role, SecretKey, alpn};

use crate::support::harness;
use harness::{TestNode, client, endpoint, now};

async fn owner_still_served(n: &TestNode) {
    let (_ep, c) = client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner connects");
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
}

fn refused_message(r: Result<(Endpoint, NodeClient), ConnectError>) -> String {
    match r {
        Err(ConnectError::Refused(e)) => e.message,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got in"),
    }
}

#[tokio::test]
async fn owner_gets_status_and_stranger_is_refused() {
    let n = TestNode::start().await;
    let (_ep, c) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    assert_eq!(c.welcome.role, Role::Owner);
    let Response::Status(st) = c.request(Request::Status).await.expect("status") else {
        panic!("not a status")
    };
    assert_eq!(st.node, n.node_key.node_id());
    assert_eq!(st.your_role, Role::Owner);
    assert!(st.peers >= 1);

    let stranger = SecretKey::generate();
    let msg = refused_message(client(&stranger, &n.handle.ticket()).await);
    assert!(msg.contains("not known to this node"), "{msg}");
    assert!(msg.contains(&stranger.node_id().to_string()), "{msg}");

    // The owner's open connection still works after the refusal.
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
}

#[tokio::test]
async fn viewer_is_let_in_with_its_role_only() {
    let n = TestNode::start().await;
    let viewer = SecretKey::generate();
    let cap = n.cap(Grantee::Key(viewer.node_id()), Role::Viewer, Some(3600));
    let (_ep, c) = client(&viewer, &n.ticket_with(Some(cap.clone()), None))
        .await
        .expect("viewer gets in");
    assert_eq!(c.welcome.role, Role::Viewer);
    assert!(matches!(
        c.request(Request::Status).await,
        Ok(Response::Status(_))
    ));
    for forbidden in [
        Request::ListShares,
        Request::Revoke { id: cap.cap.id },
        Request::RegisterShare(cap.clone()),
    ] {
        match c.request(forbidden).await {
            Err(ConnectError::Remote(e)) => assert_eq!(e.code, ErrorCode::Forbidden, "{e}"),
            other => panic!("expected forbidden, got {other:?}"),
        }
    }
    // Another key presenting the viewer's capability is refused.
    let thief = SecretKey::generate();
    let msg = refused_message(client(&thief, &n.ticket_with(Some(cap), None)).await);
    assert!(msg.contains("issued to another key"), "{msg}");
}

#[tokio::test]
async fn forged_foreign_and_expired_capabilities_are_refused() {
    let n = TestNode::start().await;
    let peer = SecretKey::generate();

    // Signed by someone who is not the owner.
    let mallory = SecretKey::generate();
    let forged = Capability::new(
        mallory.node_id(),
        n.node_key.node_id(),
        Grantee::Key(peer.node_id()),
        Role::Owner,
        None,
        now(),
        None,
    )
    .sign(&mallory, None);
    let msg = refused_message(client(&peer, &n.ticket_with(Some(forged), None)).await);
    assert!(msg.contains("not the owner"), "{msg}");

    // Tampered after signing.
    let mut tampered = n.cap(Grantee::Key(peer.node_id()), Role::Viewer, None);
    tampered.cap.role = Role::Owner;
    let msg = refused_message(client(&peer, &n.ticket_with(Some(tampered), None)).await);
    assert!(msg.contains("signature"), "{msg}");

    // For another node.
    let other = Capability::new(
        n.owner.node_id(),
        SecretKey::generate().node_id(),
        Grantee::Key(peer.node_id()),
        Role::Viewer,
        None,
        now(),
        None,
    )
    .sign(&n.owner, None);
    let msg = refused_message(client(&peer, &n.ticket_with(Some(other), None)).await);
    assert!(msg.contains("not this node"), "{msg}");

    // Expired.
    let mut expired = Capability::new(
        n.owner.node_id(),
        n.node_key.node_id(),
        Grantee::Key(peer.node_id()),
        Role::Viewer,
        None,
        now() - 100,
        Some(10),
    );
    expired.expires_at = Some(now() - 90);
    let expired = expired.sign(&n.owner, None);
    let msg = refused_message(client(&peer, &n.ticket_with(Some(expired), None)).await);
    assert!(msg.contains("expired"), "{msg}");

    owner_still_served(&n).await;
}

async fn wait_closed(c: &NodeClient) -> u32 {
    let err = tokio::time::timeout(Duration::from_secs(5), c.conn().closed())
        .await
        .expect("connection closed in time");
    match err {
        ConnectionError::ApplicationClosed(a) => a.error_code.into_inner() as u32,
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test]
async fn revocation_cuts_a_live_connection_and_later_ones() {
    let n = TestNode::start().await;
    let collab = SecretKey::generate();
    let cap = n.cap(Grantee::Key(collab.node_id()), Role::Collaborator, None);
    let ticket = n.ticket_with(Some(cap.clone()), None);
    let (_ep, c) = client(&collab, &ticket).await.expect("collaborator");
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );

    let (_oep, owner) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    // The node knows the share once registered; revoke it.
    owner
        .request(Request::RegisterShare(cap.clone()))
        .await
        .expect("register");
    let Response::Shares(list) = owner.request(Request::ListShares).await.expect("ls") else {
        panic!("not shares")
    };
    assert!(
        list.iter()
            .any(|s| s.capability.id == cap.cap.id && !s.revoked)
    );
    owner
        .request(Request::Revoke { id: cap.cap.id })
        .await
        .expect("revoke");

    assert_eq!(wait_closed(&c).await, close::REVOKED);
    let msg = refused_message(client(&collab, &ticket).await);
    assert!(msg.contains("revoked"), "{msg}");
    let Response::Shares(list) = owner.request(Request::ListShares).await.expect("ls") else {
        panic!("not shares")
    };
    assert!(
        list.iter()
            .any(|s| s.capability.id == cap.cap.id && s.revoked)
    );
}

#[tokio::test]
async fn expiry_cuts_a_live_connection() {
    let n = TestNode::start().await;
    let viewer = SecretKey::generate();
    let cap = n.cap(Grantee::Key(viewer.node_id()), Role::Viewer, Some(2));
    let (_ep, c) = client(&viewer, &n.ticket_with(Some(cap), None))
        .await
        .expect("viewer");
    assert_eq!(wait_closed(&c).await, close::EXPIRED);
}

#[tokio::test]
async fn invite_binds_to_the_first_key() {
    let n = TestNode::start().await;
    let secret: [u8; 32] = rand_bytes();
    let cap = n.cap(
        Grantee::Invite(invite_hash(&secret)),
        Role::Collaborator,
        None,
    );
    let ticket = n.ticket_with(Some(cap), Some(secret));
    let alice = SecretKey::generate();
    let bob = SecretKey::generate();
    let (_a, c) = client(&alice, &ticket).await.expect("alice redeems");
    assert_eq!(c.welcome.role, Role::Collaborator);
    let msg = refused_message(client(&bob, &ticket).await);
    assert!(msg.contains("already been used"), "{msg}");
    // Alice can come back.
    client(&alice, &ticket).await.expect("alice again");
    // A wrong secret is refused too.
    let mut wrong = ticket.clone();
    wrong.invite_secret = Some([9; 32]);
    let msg = refused_message(client(&SecretKey::generate(), &wrong).await);
    assert!(msg.contains("already been used"), "{msg}");
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

async fn raw_conn(n: &TestNode, key: &SecretKey) -> (Endpoint, iroh::endpoint::Connection) {
    let ep = endpoint(key).await;
    let conn = ep
        .connect(endpoint_addr(&n.handle.addr).expect("addr"), alpn::CTL)
        .await
        .expect("quic connect");
    (ep, conn)
}

#[tokio::test]
async fn garbage_and_oversized_hellos_are_refused_and_node_goes_on() {
    let n = TestNode::start().await;
    let cases: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb],
        u32::MAX.to_be_bytes().to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for bytes in cases {
        let (_ep, conn) = raw_conn(&n, &n.owner).await;
        let (mut send, mut recv) = conn.open_bi().await.expect("bi");
        send.write_all(&bytes).await.expect("write");
        send.finish().expect("finish");
        match read_frame::<HelloReply>(&mut recv, MAX_FRAME).await {
            Ok(HelloReply::Refused(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e}"),
            Ok(HelloReply::Welcome(_)) => panic!("garbage was welcomed"),
            Err(_) => {} // closed with a reason: also a refusal
        }
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("closed");
        assert!(
            matches!(reason, ConnectionError::ApplicationClosed(_)),
            "{reason}"
        );
    }
    owner_still_served(&n).await;
}

#[tokio::test]
async fn unknown_protocol_version_gets_a_clear_error() {
    let n = TestNode::start().await;
    let (_ep, conn) = raw_conn(&n, &n.owner).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let hello = Hello {
        protocol_version: 99,
        capability: None,
        invite_secret: None,
        client: "future".into(),
    };
    write_frame(&mut send, &hello).await.expect("write");
    send.finish().expect("finish");
    match read_frame::<HelloReply>(&mut recv, MAX_FRAME)
        .await
        .expect("reply")
    {
        HelloReply::Refused(e) => {
            assert_eq!(e.code, ErrorCode::UnsupportedVersion);
            assert!(e.message.contains("99"), "{e}");
        }
        HelloReply::Welcome(_) => panic!("version 99 welcomed"),
    }
    owner_still_served(&n).await;
}

#[tokio::test]
async fn bad_requests_after_hello_get_error_frames_on_a_live_connection() {
    let n = TestNode::start().await;
    let ep = endpoint(&n.owner).await;
    let (conn, _welcome) = connect(&ep, &n.handle.ticket(), alpn::CTL)
        .await
        .expect("hello");

    // Oversized frame header: refused before reading the body.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .await
        .expect("write");
    send.finish().expect("finish");
    match read_frame::<Response>(&mut recv, MAX_FRAME)
        .await
        .expect("answer")
    {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains("over the limit"), "{e}");
        }
        other => panic!("expected error, got {other:?}"),
    }

    // Malformed body.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&[0, 0, 0, 3, 200, 200, 200])
        .await
        .expect("write");
    send.finish().expect("finish");
    assert!(matches!(
        read_frame::<Response>(&mut recv, MAX_FRAME).await,
        Ok(Response::Error(_))
    ));

    // A request in an unknown version.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let frame = RequestFrame {
        version: 7,
        request: Request::Ping,
    };
    write_frame(&mut send, &frame).await.expect("write");
    send.finish().expect("finish");
    match read_frame::<Response>(&mut recv, MAX_FRAME)
        .await
        .expect("answer")
    {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::UnsupportedVersion),
        other => panic!("expected error, got {other:?}"),
    }

    // The same connection still works.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let frame = RequestFrame {
        version: sam_protocol::PROTOCOL_VERSION,
        request: Request::Ping,
    };
    write_frame(&mut send, &frame).await.expect("write");
    send.finish().expect("finish");
    assert_eq!(
        read_frame::<Response>(&mut recv, MAX_FRAME)
            .await
            .expect("pong"),
        Response::Pong
    );
}

/// A control connection that died under the client before a request went out (the
/// transport closed it, as iroh did once under CI load) is dialled again by the same
/// ticket; one the user closed stays closed; one the node closed (revocation) is refused.
#[tokio::test]
async fn a_connection_that_died_before_a_request_is_dialled_again() {
    let n = TestNode::start().await;
    let (_ep, c) = client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner connects");
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    let old = c.conn();
    old.close(0u32.into(), b"transport gone");
    assert_eq!(
        c.request(Request::Ping).await.expect("dialled again"),
        Response::Pong
    );
    assert_ne!(c.conn().stable_id(), old.stable_id(), "a new connection");

    c.close();
    let err = c
        .request(Request::Ping)
        .await
        .expect_err("closed by the user");
    assert!(
        matches!(err, ConnectError::Protocol(ref e) if e == "closed"),
        "{err:?}"
    );
    owner_still_served(&n).await;
}

/// A request that changes something is never sent twice: when the connection dies while
/// it waits for the answer (here the credential long poll), it fails instead of being
/// re-sent on a new connection; a read (`Status`) on the same client then dials again.
#[tokio::test]
async fn a_write_in_flight_is_not_sent_again_when_the_connection_dies() {
    use sam_protocol::workspace::WorkspaceRequest;
    let n = TestNode::start().await;
    let (_ep, c) = client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner connects");
    let conn = c.conn();
    let poll = tokio::spawn({
        let c = c.clone();
        async move {
            c.request(Request::Workspace(WorkspaceRequest::WaitCredential))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.close(0u32.into(), b"transport gone");
    let r = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll ends at once")
        .expect("task");
    assert!(
        matches!(r, Err(ConnectError::Protocol(_))),
        "a write in flight must fail, not be re-sent: {r:?}"
    );
    assert!(
        matches!(c.request(Request::Status).await, Ok(Response::Status(_))),
        "a read dials again"
    );
}
