//! Bounded decoding, attacked over real QUIC on 127.0.0.1: requests of nested
//! capability proofs (the old, recursive encoding of a proof chain) big enough to
//! overflow a recursive decoder's stack, sent by a viewer, an owner and a teammate's
//! `sam serve` peer. Each is refused with a clear error, and the node (or the history
//! peer) goes on serving everyone else.
//!
//! The bytes are built by hand, so the tests say exactly what an attacker sends and run
//! unchanged against any version of the decoder.

use std::time::Duration;

use iroh::endpoint::Connection;
use sam_client::conn::{NodeClient, connect};
use sam_client::{ClientPaths, NodeBook};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Request, Response};
use sam_protocol::doc::{ConvRequest, ConvResponse};
use sam_protocol::frame::{self, MAX_FRAME};
use sam_protocol::wire::read_frame;
use sam_protocol::{NodeAddr, Role, SecretKey, SignedCapability, Ticket, alpn};

use crate::support::harness;
use harness::{TestNode, client, endpoint, now};

/// Failure guard only: how long an answer may take on a loaded CI machine.
const T: Duration = Duration::from_secs(120);
/// `Request::RegisterShare`'s variant tag.
const REGISTER_SHARE: u8 = 2;

/// One capability link as the old encoding had it: the capability, its signature.
fn link_bytes() -> Vec<u8> {
    let key = SecretKey::generate();
    let cap = Capability::new(
        key.node_id(),
        key.node_id(),
        Grantee::Key(key.node_id()),
        Role::Owner,
        None,
        now(),
        Some(3600),
    );
    let mut link = frame::encode(&cap).expect("encode")[frame::HEADER_LEN..].to_vec();
    link.push(64);
    link.extend_from_slice(&[7u8; 64]);
    link
}

/// A ctl request payload `RegisterShare(chain)` whose chain is `depth` links deep in
/// the nested encoding `proof: Option<Box<SignedCapability>>`.
fn nested_register_share(depth: usize) -> Vec<u8> {
    let link = link_bytes();
    let mut out = vec![sam_protocol::PROTOCOL_VERSION as u8, REGISTER_SHARE];
    out.reserve((link.len() + 1) * depth);
    for _ in 1..depth {
        out.extend_from_slice(&link);
        out.push(1); // Some(proof)
    }
    out.extend_from_slice(&link);
    out.push(0); // None
    out
}

/// The deepest nested chain that fits a 16 MiB frame.
fn nested_16_mib() -> Vec<u8> {
    let per_link = link_bytes().len() + 1;
    let payload = nested_register_share((MAX_FRAME - 16) / per_link);
    assert!(payload.len() <= MAX_FRAME && payload.len() > MAX_FRAME - 1024);
    payload
}

/// Sends `payload` as one ctl frame on a new stream of `conn` (from a task: the peer may
/// stop reading, and must answer anyway) and returns the answer.
async fn send_raw(conn: &Connection, payload: Vec<u8>) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let writer = tokio::spawn(async move {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        drop(payload);
        // The receiver may stop the stream once it has refused the frame.
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
        }
        // Keep the stream open until the answer is read.
        let _ = send.stopped().await;
    });
    let answer = tokio::time::timeout(T, read_frame::<Response>(&mut recv, MAX_FRAME))
        .await
        .expect("an answer in time")
        .expect("an answer frame");
    writer.abort();
    answer
}

fn refusal(r: Response) -> ErrorBody {
    match r {
        Response::Error(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn ping(c: &NodeClient) {
    assert_eq!(
        tokio::time::timeout(T, c.request(Request::Ping))
            .await
            .expect("in time")
            .expect("ping"),
        Response::Pong
    );
}

/// A viewer sends a 16 MiB `RegisterShare` of nested proofs (≈ 90,000 links). A decoder
/// that reads it before the role and recurses per link overflows its stack and takes
/// the node down. Here it is refused from its length header alone, and the viewer, a
/// second client and the owner are all still served.
#[tokio::test]
async fn a_viewers_16_mib_request_of_nested_proofs_is_refused_and_the_node_goes_on() {
    let n = TestNode::start().await;
    let (viewer, ticket) = n.member(Role::Viewer);
    let ep = endpoint(&viewer).await;
    let (conn, welcome) = connect(&ep, &ticket, alpn::CTL).await.expect("hello");
    assert_eq!(welcome.role, Role::Viewer);

    let e = refusal(send_raw(&conn, nested_16_mib()).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    assert!(e.message.contains("over the limit"), "{e}");
    assert!(e.message.contains("refused unread"), "{e}");

    // The attacker's own connection still works for what it may do.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    sam_protocol::wire::write_frame(
        &mut send,
        &sam_protocol::ctl::RequestFrame {
            version: sam_protocol::PROTOCOL_VERSION,
            request: Request::Ping,
        },
    )
    .await
    .expect("write");
    send.finish().expect("finish");
    assert_eq!(
        read_frame::<Response>(&mut recv, MAX_FRAME)
            .await
            .expect("pong"),
        Response::Pong
    );

    // A second client and the owner are served.
    let (k2, t2) = n.member(Role::Viewer);
    let (_ep2, second) = client(&k2, &t2).await.expect("second client");
    ping(&second).await;
    let (_ep3, owner) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    ping(&owner).await;
}

/// The 5,000-link chain of issue #16 (≈ 915 KB), as a request from a viewer and from
/// the owner (whose role allows `RegisterShare`): refused from the header or the head
/// (the RegisterShare cap), never decoded; a 2,000-link one too (under every length
/// limit but the RegisterShare cap); and in a hello. The node goes on.
#[tokio::test]
async fn a_5000_link_chain_is_refused_without_a_crash() {
    let n = TestNode::start().await;
    let deep = nested_register_share(5_000);
    assert!(deep.len() > 900_000, "{}", deep.len());

    let (viewer, ticket) = n.member(Role::Viewer);
    let vep = endpoint(&viewer).await;
    let (vconn, _) = connect(&vep, &ticket, alpn::CTL).await.expect("hello");
    let e = refusal(send_raw(&vconn, deep.clone()).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e}");

    let oep = endpoint(&n.owner).await;
    let (oconn, _) = connect(&oep, &n.handle.ticket(), alpn::CTL)
        .await
        .expect("owner hello");
    let e = refusal(send_raw(&oconn, deep).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    let e = refusal(send_raw(&oconn, nested_register_share(2_000)).await);
    assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    assert!(e.message.contains("RegisterShare"), "{e}");

    // In a hello, before anything is known of the peer.
    let stranger = SecretKey::generate();
    let sep = endpoint(&stranger).await;
    let conn = sep
        .connect(
            sam_client::endpoint::endpoint_addr(&n.handle.addr).expect("addr"),
            alpn::CTL,
        )
        .await
        .expect("quic");
    let mut hello = vec![sam_protocol::PROTOCOL_VERSION as u8, 1]; // capability: Some(
    hello.extend_from_slice(&nested_register_share(5_000)[2..]);
    hello.extend_from_slice(&[0, 0]); // ), invite_secret: None, client: ""
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    let writer = tokio::spawn(async move {
        let mut bytes = (hello.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&hello);
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
        }
        let _ = send.stopped().await;
    });
    match tokio::time::timeout(
        T,
        read_frame::<sam_protocol::ctl::HelloReply>(&mut recv, MAX_FRAME),
    )
    .await
    .expect("in time")
    {
        Ok(sam_protocol::ctl::HelloReply::Refused(e)) => {
            assert!(e.message.contains("over the limit"), "{e}")
        }
        Ok(sam_protocol::ctl::HelloReply::Welcome(_)) => panic!("welcomed"),
        Err(_) => {} // closed with the reason
    }
    writer.abort();

    let (_ep, owner) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    ping(&owner).await;
    let (k2, t2) = n.member(Role::Viewer);
    let (_ep2, second) = client(&k2, &t2).await.expect("second client");
    ping(&second).await;
}

/// A delegation chain of `len` links for `grantee`, each key handing owner rights on.
fn chain(n: &TestNode, len: usize, grantee: &SecretKey) -> SignedCapability {
    let mut holder = n.owner.clone();
    let mut held: Option<SignedCapability> = None;
    for _ in 0..len {
        let next = SecretKey::generate();
        let mut c = Capability::new(
            holder.node_id(),
            n.node_key.node_id(),
            Grantee::Key(next.node_id()),
            Role::Owner,
            None,
            now(),
            Some(3600),
        );
        c.issuer = holder.node_id();
        held = Some(c.sign(&holder, held));
        holder = next;
    }
    Capability::new(
        holder.node_id(),
        n.node_key.node_id(),
        Grantee::Key(grantee.node_id()),
        Role::Viewer,
        None,
        now(),
        Some(600),
    )
    .sign(&holder, held)
}

/// A well-formed chain one link over the limit (4) is refused in a hello with the
/// reason; one at the limit gets in.
#[tokio::test]
async fn a_chain_one_link_too_long_is_refused_with_the_reason() {
    let n = TestNode::start().await;
    let peer = SecretKey::generate();
    let (_ep, c) = client(&peer, &n.ticket_with(Some(chain(&n, 4, &peer)), None))
        .await
        .expect("a chain of four delegations gets in");
    assert_eq!(c.welcome.role, Role::Viewer);
    let too_long = n.ticket_with(Some(chain(&n, 5, &peer)), None);
    let err = client(&peer, &too_long)
        .await
        .expect_err("a chain of five is refused");
    let msg = err.to_string();
    assert!(msg.contains("at most 4"), "{msg}");
}

/// A client paths folder whose book knows `node` and its `owner` (what `sam serve` checks
/// capabilities against), with no node running.
fn history_paths(dir: &std::path::Path, node: &SecretKey, owner: &SecretKey) -> ClientPaths {
    let paths = ClientPaths::new(dir);
    let mut book = NodeBook::default();
    let ticket = Ticket::new(NodeAddr {
        id: node.node_id(),
        direct: vec!["127.0.0.1:9".parse().expect("addr")],
        relay: None,
    });
    book.upsert(&ticket, Some("gone")).expect("upsert");
    book.set_owner(&node.node_id().to_string(), &owner.node_id());
    book.save(&paths.nodes()).expect("save");
    paths
}

/// `sam serve` (a teammate serving history read-only) under the same attack: the 5,000-link
/// and the 16 MiB requests of nested proofs are refused from the header; a request
/// it does not serve is refused from its head; the attacker and a second teammate are
/// still served.
#[tokio::test]
async fn sam_serve_refuses_nested_proofs_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SecretKey::generate();
    let node = SecretKey::generate();
    let paths = history_paths(dir.path(), &node, &owner);
    let server = sam_client::serve::start(&paths, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let ticket_for = |who: &SecretKey| Ticket {
        addr: server.ticket.addr.clone(),
        capability: Some(
            Capability::new(
                owner.node_id(),
                node.node_id(),
                Grantee::Key(who.node_id()),
                Role::Viewer,
                None,
                now(),
                None,
            )
            .sign(&owner, None),
        ),
        invite_secret: None,
    };

    let mallory = SecretKey::generate();
    let mep = endpoint(&mallory).await;
    let (conn, _) = connect(&mep, &ticket_for(&mallory), alpn::CTL)
        .await
        .expect("hello");
    for payload in [nested_register_share(5_000), nested_16_mib()] {
        let e = refusal(send_raw(&conn, payload).await);
        assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    }
    // `Status`: small, but not something a history peer answers.
    let e = refusal(send_raw(&conn, vec![sam_protocol::PROTOCOL_VERSION as u8, 1]).await);
    assert_eq!(e.code, ErrorCode::Unimplemented, "{e}");

    let mallory_client = NodeClient::connect(&mep, &ticket_for(&mallory))
        .await
        .expect("mallory again");
    ping(&mallory_client).await;
    let carol = SecretKey::generate();
    let cep = endpoint(&carol).await;
    let c = NodeClient::connect(&cep, &ticket_for(&carol))
        .await
        .expect("carol");
    ping(&c).await;
    assert_eq!(
        tokio::time::timeout(T, c.request(Request::Conv(ConvRequest::List)))
            .await
            .expect("in time")
            .expect("list"),
        Response::Conv(ConvResponse::List(Vec::new()))
    );
    let _ = server.router.shutdown().await;
}

/// A conversation the owner created and published on the node.
async fn published(n: &TestNode) -> String {
    let author = n.owner.node_id().to_string();
    let mut conv = sam_crdt::Conversation::create(
        sam_crdt::NewConversation {
            id: sam_crdt::MessageId::random().to_string(),
            title: "attacked".into(),
            agent: "custom".into(),
            workspace_node: n.node_key.node_id().to_string(),
            workspace_id: "w1".into(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )
    .expect("create");
    let ep = endpoint(&n.owner).await;
    let mut s = sam_client::docs::open_stream(&ep, &n.handle.ticket(), &conv.id(), true)
        .await
        .expect("open");
    s.sync_once(&mut conv, |_| Ok(()), T)
        .await
        .expect("publish");
    conv.id()
}

/// A viewer's sync messages carry no changes, so on `sam/doc/1` a viewer's frame over
/// the reader cap (4 MiB) is refused from its header, before its body is read; the
/// owner still syncs the document afterwards.
#[tokio::test]
async fn a_viewers_oversized_sync_frame_is_refused_from_its_header() {
    use sam_protocol::doc::{DocFrame, DocOpen};
    let n = TestNode::start().await;
    let id = published(&n).await;
    let (viewer, ticket) = n.member(Role::Viewer);
    let ep = endpoint(&viewer).await;
    let (conn, _) = connect(&ep, &ticket, alpn::DOC).await.expect("hello");
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
    match read_frame::<sam_protocol::stream::OpenReply>(&mut recv, MAX_FRAME)
        .await
        .expect("reply")
    {
        sam_protocol::stream::OpenReply::Ok => {}
        sam_protocol::stream::OpenReply::Error(e) => panic!("viewer refused: {e}"),
    }
    // 6 MiB of "sync message" (a DocFrame::Sync byte string).
    let body = vec![0u8; 6 * 1024 * 1024];
    let writer = tokio::spawn(async move {
        let mut payload = vec![0u8]; // DocFrame::Sync
        payload.extend(
            frame::encode(&(body.len() as u32)).expect("varint")[frame::HEADER_LEN..].iter(),
        );
        payload.extend_from_slice(&body);
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        if send.write_all(&bytes).await.is_ok() {
            let _ = send.finish();
        }
        let _ = send.stopped().await;
    });
    let refusal = tokio::time::timeout(T, async {
        loop {
            match read_frame::<DocFrame>(&mut recv, MAX_FRAME).await {
                Ok(DocFrame::Error(e)) => return e,
                Ok(_) => continue,
                Err(e) => panic!("stream ended without a reason: {e}"),
            }
        }
    })
    .await
    .expect("in time");
    writer.abort();
    assert!(refusal.message.contains("over the limit"), "{refusal}");

    let oep = endpoint(&n.owner).await;
    let mut replica = sam_crdt::Conversation::new_replica();
    let mut s = sam_client::docs::open_stream(&oep, &n.handle.ticket(), &id, false)
        .await
        .expect("owner opens");
    s.sync_once(&mut replica, |_| Ok(()), T)
        .await
        .expect("owner syncs");
    assert_eq!(replica.id(), id);
}
