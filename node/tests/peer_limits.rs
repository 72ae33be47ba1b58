//! One bad peer cannot hurt others (issue #16): a peer that opens connection after
//! connection, or stream after stream, hits its own limit with a clear reason while
//! the owner and other peers go on being served.

use std::time::{Duration, Instant};

use sam_client::conn::{ConnectError, connect};
use sam_node::endpoint::MAX_STREAMS_PER_CONN;
use sam_node::server::MAX_CONNS_PER_PEER;
use sam_protocol::ctl::{Request, RequestFrame, Response};
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::wire::read_frame;
use sam_protocol::{PROTOCOL_VERSION, Role, alpn};

use crate::support::harness::{TestNode, client, endpoint};

async fn served(n: &TestNode, key: &sam_protocol::SecretKey, ticket: &sam_protocol::Ticket) {
    let (_ep, c) = client(key, ticket).await.expect("connects");
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    let _ = n;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_connection_limit_is_refused_with_the_reason_and_others_go_on() {
    let n = TestNode::start().await;
    let (mallory, ticket) = n.member(Role::Collaborator);
    let ep = endpoint(&mallory).await;
    let mut held = Vec::new();
    for i in 0..MAX_CONNS_PER_PEER {
        // Spread over the ALPNs: the limit is per key, not per protocol.
        let alpn = [alpn::CTL, alpn::DOC, alpn::PTY][i % 3];
        held.push(
            connect(&ep, &ticket, alpn)
                .await
                .unwrap_or_else(|e| panic!("connection {i} is within the limit: {e}"))
                .0,
        );
    }
    for alpn in [alpn::CTL, alpn::FILE] {
        match connect(&ep, &ticket, alpn).await {
            Err(ConnectError::Refused(e)) => assert!(
                e.message.contains("too many connections")
                    && e.message.contains(&MAX_CONNS_PER_PEER.to_string()),
                "{e}"
            ),
            Err(other) => panic!("expected a refusal with the reason, got {other}"),
            Ok(_) => panic!(
                "connection {} over the limit was let in",
                MAX_CONNS_PER_PEER + 1
            ),
        }
    }
    // Nobody else is affected: the owner and another collaborator are served.
    served(&n, &n.owner, &n.handle.ticket()).await;
    let (other, other_ticket) = n.member(Role::Collaborator);
    served(&n, &other, &other_ticket).await;
    // Mallory's own live connections still work.
    let (mut send, mut recv) = held[0].open_bi().await.expect("stream on a held conn");
    sam_protocol::wire::write_frame(
        &mut send,
        &RequestFrame {
            version: PROTOCOL_VERSION,
            request: Request::Ping,
        },
    )
    .await
    .expect("ping");
    send.finish().expect("finish");
    assert_eq!(
        read_frame::<Response>(&mut recv, MAX_FRAME)
            .await
            .expect("pong"),
        Response::Pong
    );

    // Closing one frees its slot.
    held.pop().expect("held").close(0u32.into(), b"bye");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(&ep, &ticket, alpn::CTL).await {
            Ok(_) => break,
            Err(ConnectError::Refused(e)) if e.message.contains("too many") => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cannot_hold_more_open_streams_than_the_limit() {
    let n = TestNode::start().await;
    let (mallory, ticket) = n.member(Role::Collaborator);
    let ep = endpoint(&mallory).await;
    let (conn, _) = connect(&ep, &ticket, alpn::CTL).await.expect("connect");
    let ping = sam_protocol::frame::encode(&RequestFrame {
        version: PROTOCOL_VERSION,
        request: Request::Ping,
    })
    .expect("encode");
    // Every stream is held open by half a request the node waits on. Open them until
    // QUIC flow control stops us (the node has not granted more): never past the limit.
    let mut streams = Vec::new();
    loop {
        let Ok(opened) = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await else {
            break;
        };
        let (mut send, recv) = opened.expect("open");
        send.write_all(&ping[..2]).await.expect("half a header");
        streams.push((send, recv));
        assert!(
            streams.len() <= MAX_STREAMS_PER_CONN as usize,
            "stream {} was opened over the limit of {MAX_STREAMS_PER_CONN}",
            streams.len()
        );
    }
    // (The hello's stream may still hold one credit when the last is tried.)
    assert!(
        streams.len() + 1 >= MAX_STREAMS_PER_CONN as usize,
        "only {} streams opened",
        streams.len()
    );
    // Others are served meanwhile, and so is a second connection of the same peer.
    served(&n, &n.owner, &n.handle.ticket()).await;
    served(&n, &mallory, &ticket).await;
    // The limit is on streams open at once: a client making request after request on
    // one connection (as the CLI and the GUI do) is never held up by it.
    let (_oep, o) = client(&n.owner, &n.handle.ticket()).await.expect("owner");
    for _ in 0..3 * MAX_STREAMS_PER_CONN {
        assert_eq!(
            o.request(Request::Ping).await.expect("ping"),
            Response::Pong
        );
    }

    // Finishing requests gives their streams back (QUIC announces new credit once an
    // eighth of the window is free): then the next stream opens.
    for _ in 0..=MAX_STREAMS_PER_CONN / 8 {
        let (mut send, mut recv) = streams.remove(0);
        send.write_all(&ping[2..])
            .await
            .expect("rest of the request");
        send.finish().expect("finish");
        assert_eq!(
            read_frame::<Response>(&mut recv, MAX_FRAME)
                .await
                .expect("pong"),
            Response::Pong
        );
    }
    tokio::time::timeout(Duration::from_secs(30), conn.open_bi())
        .await
        .expect("a stream is free again")
        .expect("open");
}

/// Keys cost nothing: a stranger who opens connections under many fresh keys and never says
/// hello is bounded by one limit for everyone but the owner, so the node cannot be made to
/// hold unbounded half-open sessions; the owner is still served while they wait, and others
/// are again once they are gone. 160 silent connections: exactly the 32 over the limit are
/// closed "busy" (which ones depends on the order the node takes them up), the rest wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_that_never_say_hello_are_bounded_and_the_owner_is_still_served() {
    use iroh::endpoint::ConnectionError;
    use sam_node::server::{HELLO_TIMEOUT, MAX_PENDING_HELLOS, close};
    let n = TestNode::start().await;
    let ticket = n.handle.ticket();
    let addr = sam_client::endpoint::endpoint_addr(&ticket.addr).expect("addr");
    let keys = 8;
    let per_key = (MAX_PENDING_HELLOS + 32) / keys;
    let over = keys * per_key - MAX_PENDING_HELLOS;
    let mut rounds = 0;
    let held = loop {
        rounds += 1;
        assert!(
            rounds <= 3,
            "could not open {} connections within the hello timeout",
            keys * per_key
        );
        let started = Instant::now();
        let mut eps = Vec::new();
        for _ in 0..keys {
            eps.push(endpoint(&sam_protocol::SecretKey::generate()).await);
        }
        let addr = &addr;
        let dials = eps.iter().flat_map(|ep| {
            (0..per_key).map(move |_| {
                let addr = addr.clone();
                async move { ep.connect(addr, alpn::CTL).await.expect("handshake") }
            })
        });
        let held: Vec<_> = futures_util::future::join_all(dials).await;
        let busy = |held: &[iroh::endpoint::Connection]| {
            held.iter()
                .filter(|c| {
                    matches!(c.close_reason(), Some(ConnectionError::ApplicationClosed(a))
                        if a.error_code == close::BUSY.into()
                            && String::from_utf8_lossy(&a.reason).contains("busy"))
                })
                .count()
        };
        // until the node has taken them all up, within the hello timeout of the first
        let deadline = started + HELLO_TIMEOUT - Duration::from_secs(2);
        while busy(&held) < over && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = busy(&held);
        if Instant::now() >= deadline && got < over {
            // too slow a machine to tell: the first may time out before the last arrive
            drop(held);
            tokio::time::sleep(HELLO_TIMEOUT).await;
            continue;
        }
        assert_eq!(
            got,
            over,
            "{got} of {} silent connections were refused busy; the limit is {MAX_PENDING_HELLOS}",
            keys * per_key
        );
        break (eps, held);
    };
    // the owner is not counted: served while they all still wait
    served(&n, &n.owner, &ticket).await;
    drop(held);
    // once they are gone (closed by us, or by the node at the hello timeout) a member is in
    let (member, member_ticket) = n.member(Role::Collaborator);
    let deadline = Instant::now() + HELLO_TIMEOUT * 3;
    loop {
        match client(&member, &member_ticket).await {
            Ok((_ep, c)) => {
                assert_eq!(
                    c.request(Request::Ping).await.expect("ping"),
                    Response::Pong
                );
                break;
            }
            Err(ConnectError::Refused(e)) if e.message.contains("busy") => {
                assert!(
                    Instant::now() < deadline,
                    "the hello slots were never freed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}
