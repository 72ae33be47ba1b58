//! First boot of a cloud node (`sam/enroll/1`): the node makes its own key, and a one-time,
//! expiring enrollment from its user-data is served to its owner only, once. Written as an
//! attacker would try it: a stranger dialing the enrollment, a second request with the same
//! enrollment, a replayed user-data after enrollment, an expired enrollment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iroh::endpoint::{Connection, VarInt};
use iroh::{Endpoint, EndpointAddr, EndpointId, TransportAddr};
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::enroll::{
    ENROLL_VERSION, EnrollFile, EnrollRequest, EnrollResponse, MAX_ENROLL_RESPONSE, verify_proof,
};
use sam_protocol::wire::{read_frame, write_frame};
use sam_protocol::{NodeId, SecretKey};

use crate::support::harness::{client, endpoint, now};

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A node home as the user-data leaves it: config and enrollment, no node key.
fn first_boot_home(dir: &std::path::Path, owner: &SecretKey, enrollment: &SecretKey, expires: u64) {
    let paths = NodePaths::new(dir);
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = lo();
    cfg.save(&paths.config()).expect("config");
    write_enroll(&paths, enrollment, expires);
}

fn write_enroll(paths: &NodePaths, enrollment: &SecretKey, expires: u64) {
    let text = toml::to_string(&EnrollFile::new(enrollment, expires, lo())).expect("toml");
    sam_node::config::write_private(&paths.enroll(), text.as_bytes()).expect("enroll.toml");
}

async fn connect(
    ep: &Endpoint,
    enrollment: NodeId,
    addrs: &[SocketAddr],
) -> Result<Connection, String> {
    let id = EndpointId::from_bytes(enrollment.as_bytes()).expect("id");
    let target = EndpointAddr::from_parts(
        id,
        addrs
            .iter()
            .map(|a| TransportAddr::Ip(*a))
            .collect::<Vec<_>>(),
    );
    match tokio::time::timeout(
        Duration::from_secs(10),
        ep.connect(target, sam_protocol::alpn::ENROLL),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// Sends one enrollment request on `conn` and reads the answer.
async fn ask_on(conn: &Connection, nonce: [u8; 32]) -> EnrollResponse {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_frame(
        &mut send,
        &EnrollRequest {
            version: ENROLL_VERSION,
            nonce,
        },
    )
    .await
    .expect("request");
    send.finish().expect("finish");
    read_frame(&mut recv, MAX_ENROLL_RESPONSE)
        .await
        .expect("an answer")
}

/// Dials the enrollment as `dialer` and asks once.
async fn ask(
    dialer: &SecretKey,
    enrollment: NodeId,
    addrs: &[SocketAddr],
    nonce: [u8; 32],
) -> EnrollResponse {
    let ep = endpoint(dialer).await;
    let conn = connect(&ep, enrollment, addrs).await.expect("connect");
    let answer = ask_on(&conn, nonce).await;
    conn.close(VarInt::from_u32(0), b"done");
    ep.close().await;
    answer
}

fn refusal(answer: EnrollResponse) -> String {
    match answer {
        EnrollResponse::Refused(body) => body.message,
        EnrollResponse::Enrolled(p) => panic!("enrolled although it must be refused: {p:?}"),
        EnrollResponse::Bootstrapping(s) => panic!("a bootstrap status, not a refusal: {s}"),
    }
}

#[tokio::test]
async fn the_node_makes_its_own_key_and_only_its_owner_enrolls_it_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let owner = SecretKey::generate();
    let enrollment = SecretKey::generate();
    first_boot_home(dir.path(), &owner, &enrollment, now() + 3600);
    let paths = NodePaths::new(dir.path());
    assert!(!paths.key().exists());

    let mut handle = Node::start(paths.clone()).await.expect("first boot");
    // its own key, private, and the node runs as it
    let on_disk = SecretKey::load(&paths.key()).expect("the node made its key");
    assert_eq!(on_disk.node_id(), handle.node.id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&paths.key()), 0o600);
        assert_eq!(mode(&paths.dir), 0o700);
    }
    let served = handle.enroll.as_ref().expect("the enrollment is served");
    assert_eq!(served.id, enrollment.node_id());
    let addrs = served.addrs.clone();
    let enroll_id = enrollment.node_id();

    // a stranger is refused before its request is read, and burns nothing
    let stranger = SecretKey::generate();
    let msg = refusal(ask(&stranger, enroll_id, &addrs, [1; 32]).await);
    assert!(msg.contains("only this node's owner"), "{msg}");
    assert!(
        paths.enroll().exists(),
        "a stranger's dial must not use the enrollment"
    );

    // a second owner connection opened before the enrollment is used…
    let late_ep = endpoint(&owner).await;
    let late = connect(&late_ep, enroll_id, &addrs)
        .await
        .expect("second connection");

    // …the owner enrolls: the node proves the key it made on its own disk
    let nonce: [u8; 32] = rand::random();
    let proof = match ask(&owner, enroll_id, &addrs, nonce).await {
        EnrollResponse::Enrolled(p) => p,
        EnrollResponse::Refused(b) => panic!("the owner was refused: {}", b.message),
        EnrollResponse::Bootstrapping(s) => panic!("no bootstrap status was written: {s}"),
    };
    let node = verify_proof(&proof, &enroll_id, &owner.node_id(), &nonce).expect("valid proof");
    assert_eq!(node, on_disk.node_id());
    assert_eq!(proof.node, handle.addr);

    // …and the same enrollment asked again is refused
    let msg = refusal(ask_on(&late, [2; 32]).await);
    assert!(msg.contains("used already"), "{msg}");
    late.close(VarInt::from_u32(0), b"done");
    late_ep.close().await;

    // the enrollment is gone: key deleted, use recorded, endpoint closed
    let mut served = handle.enroll.take().expect("served");
    tokio::time::timeout(Duration::from_secs(60), served.closed())
        .await
        .expect("the enrollment endpoint closes once used");
    assert!(
        !paths.enroll().exists(),
        "the enrollment key is still on disk"
    );
    assert!(!paths.enroll_addr().exists());
    assert!(paths.enrolled().exists());
    let ep = endpoint(&owner).await;
    let again = tokio::time::timeout(Duration::from_secs(5), connect(&ep, enroll_id, &addrs)).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "the enrollment endpoint still answers after its use"
    );
    ep.close().await;

    // the node serves its owner at its own id
    let (cep, c) = client(&owner, &handle.ticket())
        .await
        .expect("owner connects");
    match c.request(Request::Status).await.expect("status") {
        Response::Status(s) => assert_eq!(s.node, node),
        other => panic!("unexpected {other:?}"),
    }
    c.close();
    cep.close().await;
    handle.shutdown().await.expect("shutdown");

    // user-data replayed onto the enrolled node (a fresh enrollment, as an attacker who can
    // write the file would): never served, deleted at start; the node keeps its key
    let replay = SecretKey::generate();
    write_enroll(&paths, &replay, now() + 3600);
    let handle = Node::start(paths.clone()).await.expect("restart");
    assert!(
        handle.enroll.is_none(),
        "an enrolled node served a new enrollment"
    );
    assert!(!paths.enroll().exists());
    assert_eq!(handle.node.id(), node);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_expired_enrollment_is_refused_and_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let owner = SecretKey::generate();
    let enrollment = SecretKey::generate();
    let expires = 1_000_000;
    first_boot_home(dir.path(), &owner, &enrollment, expires);
    let paths = NodePaths::new(dir.path());
    let node_key = SecretKey::generate();
    let addr = sam_protocol::NodeAddr {
        id: node_key.node_id(),
        direct: vec![],
        relay: None,
    };
    let clock = Arc::new(AtomicU64::new(expires - 100));
    let c = clock.clone();
    let mut served = sam_node::enroll::start(
        &paths,
        &node_key,
        owner.node_id(),
        addr.clone(),
        Arc::new(move || c.load(Ordering::SeqCst)),
    )
    .await
    .expect("start")
    .expect("valid until its expiry: served");
    let addrs = served.addrs.clone();

    // the expiry passes before the owner comes
    clock.store(expires + 1, Ordering::SeqCst);
    let msg = refusal(ask(&owner, enrollment.node_id(), &addrs, [3; 32]).await);
    assert!(msg.contains("expired"), "{msg}");
    tokio::time::timeout(Duration::from_secs(60), served.closed())
        .await
        .expect("the expired enrollment's endpoint closes");
    assert!(
        !paths.enroll().exists(),
        "the expired enrollment key is still on disk"
    );
    assert!(
        !paths.enrolled().exists(),
        "an expired enrollment was recorded as used"
    );

    // an enrollment that expired before the node started is never served
    write_enroll(&paths, &enrollment, expires);
    let c = clock.clone();
    let none = sam_node::enroll::start(
        &paths,
        &node_key,
        owner.node_id(),
        addr,
        Arc::new(move || c.load(Ordering::SeqCst)),
    )
    .await
    .expect("start");
    assert!(none.is_none(), "an expired enrollment was served");
    assert!(!paths.enroll().exists());
}

/// First boot with a clock that is off and not yet synchronised: an enrollment that only
/// *looks* expired is kept and answered "not yet" (nothing is used up or deleted); once the
/// clock is synchronised it is judged again — granted while still valid by the right time,
/// and refused and deleted when really expired.
#[tokio::test]
async fn an_enrollment_that_looks_expired_by_an_unsynchronised_clock_is_kept() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().expect("tmp");
    let owner = SecretKey::generate();
    let enrollment = SecretKey::generate();
    let expires = 1_000_000;
    first_boot_home(dir.path(), &owner, &enrollment, expires);
    let paths = NodePaths::new(dir.path());
    let node_key = SecretKey::generate();
    let addr = sam_protocol::NodeAddr {
        id: node_key.node_id(),
        direct: vec![],
        relay: None,
    };
    // the VM booted with its clock a day ahead, before NTP ran
    let clock = Arc::new(AtomicU64::new(expires + 86_400));
    let synced = Arc::new(AtomicBool::new(false));
    let (c, s) = (clock.clone(), synced.clone());
    let served = sam_node::enroll::start_judged(
        &paths,
        &node_key,
        owner.node_id(),
        addr.clone(),
        Arc::new(move || c.load(Ordering::SeqCst)),
        Arc::new(move || s.load(Ordering::SeqCst)),
    )
    .await
    .expect("start")
    .expect("an enrollment that only looks expired is served");
    let addrs = served.addrs.clone();
    let answer = ask(&owner, enrollment.node_id(), &addrs, [5; 32]).await;
    let EnrollResponse::Refused(body) = answer else {
        panic!("not refused by a clock that cannot judge the expiry: {answer:?}")
    };
    assert_eq!(
        body.code,
        sam_protocol::ctl::ErrorCode::Unavailable,
        "{}",
        body.message
    );
    assert!(
        body.message.contains("not synchronised"),
        "{}",
        body.message
    );
    assert!(paths.enroll().exists(), "the enrollment was deleted");
    assert!(!paths.enrolled().exists(), "the enrollment was used up");

    // NTP runs: the right time is within the enrollment's life, so it is granted
    clock.store(expires - 600, Ordering::SeqCst);
    synced.store(true, Ordering::SeqCst);
    match ask(&owner, enrollment.node_id(), &addrs, [6; 32]).await {
        EnrollResponse::Enrolled(proof) => {
            let node = verify_proof(&proof, &enrollment.node_id(), &owner.node_id(), &[6; 32])
                .expect("proof");
            assert_eq!(node, node_key.node_id());
        }
        other => panic!("not enrolled after the clock synchronised: {other:?}"),
    }

    // and with a synchronised clock, an enrollment that is really expired is deleted at start
    let dir = tempfile::tempdir().expect("tmp");
    first_boot_home(dir.path(), &owner, &enrollment, expires);
    let paths = NodePaths::new(dir.path());
    let c = clock.clone();
    clock.store(expires + 86_400, Ordering::SeqCst);
    let none = sam_node::enroll::start_judged(
        &paths,
        &node_key,
        owner.node_id(),
        addr,
        Arc::new(move || c.load(Ordering::SeqCst)),
        Arc::new(|| true),
    )
    .await
    .expect("start");
    assert!(none.is_none(), "an expired enrollment was served");
    assert!(!paths.enroll().exists());
}

#[tokio::test]
async fn the_node_enrolls_only_once_its_bootstrap_is_done_and_tells_only_its_owner_why_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let owner = SecretKey::generate();
    let enrollment = SecretKey::generate();
    first_boot_home(dir.path(), &owner, &enrollment, now() + 3600);
    let paths = NodePaths::new(dir.path());
    let status = |text: &str| {
        sam_node::config::write_private(&paths.dir.join("bootstrap.status"), text.as_bytes())
            .expect("status")
    };
    status("state=running\nstep=base-image\nmessage=building the workspace image\n");
    let handle = Node::start(paths.clone()).await.expect("first boot");
    let served = handle.enroll.as_ref().expect("the enrollment is served");
    let (addrs, enroll_id) = (served.addrs.clone(), enrollment.node_id());

    // a stranger learns nothing of the bootstrap
    let stranger = SecretKey::generate();
    let msg = refusal(ask(&stranger, enroll_id, &addrs, [1; 32]).await);
    assert!(msg.contains("only this node's owner"), "{msg}");
    // the owner gets the step, and the enrollment stays unused, while it runs, when it
    // failed, and when the file cannot be read
    for (text, want) in [
        (
            "state=running\nstep=base-image\nmessage=building the workspace image\n",
            "bootstrap running: step base-image: building the workspace image",
        ),
        (
            "state=failed\nstep=agents\nmessage=npm install failed\n",
            "bootstrap failed at step agents: npm install failed",
        ),
        (
            "state=done\nstep=done\nstate=done\n",
            "bootstrap failed at step status: the node cannot read its bootstrap status",
        ),
    ] {
        status(text);
        match ask(&owner, enroll_id, &addrs, [3; 32]).await {
            EnrollResponse::Bootstrapping(s) => {
                assert!(s.to_string().starts_with(want), "{s}")
            }
            other => panic!("enrolled or refused during the bootstrap ({text:?}): {other:?}"),
        }
        assert!(paths.enroll().exists(), "the enrollment was used up");
        assert!(!paths.enrolled().exists());
    }
    // done: the owner enrolls
    status("state=done\nstep=done\nmessage=the node is ready\n");
    let nonce: [u8; 32] = rand::random();
    match ask(&owner, enroll_id, &addrs, nonce).await {
        EnrollResponse::Enrolled(p) => {
            verify_proof(&p, &enroll_id, &owner.node_id(), &nonce).expect("valid proof");
        }
        other => panic!("not enrolled once done: {other:?}"),
    }
    handle.shutdown().await.expect("shutdown");
}
