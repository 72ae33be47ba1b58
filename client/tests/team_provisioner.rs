//! The team provisioner on loopback: `sam/prov/1` with the local provider. Members get a
//! ticket with a capability signed by the provisioner (the nodes' owner); strangers are
//! refused; a released node is handed to the next member warm.

use std::net::SocketAddr;
use std::path::PathBuf;

use sam_client::NodeClient;
use sam_protocol::ctl::{ErrorCode, Request, Response};
use sam_protocol::prov::{ProvNode, ProvRequest, ProvResponse};
use sam_protocol::{Role, SecretKey};
use sam_provisioner::serve::{ServeConfig, request, serve};
use sam_provisioner::{IrohProbe, Local, Pool, PoolPolicy};

use crate::support::bins::node_bin;

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn node(resp: ProvResponse) -> ProvNode {
    match resp {
        ProvResponse::Node(n) => *n,
        other => panic!("expected a node, got {other:?}"),
    }
}

fn code(resp: ProvResponse) -> ErrorCode {
    match resp {
        ProvResponse::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn members_get_nodes_with_their_own_capability() {
    let tmp = tempfile::tempdir().expect("tmp");
    let prov_key = SecretKey::generate();
    let (alice, bob, eve) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let pool = Pool::new(
        Local::new(tmp.path().join("nodes"), node_bin()),
        PoolPolicy::default(),
    );
    let cfg = ServeConfig {
        members: [alice.node_id(), bob.node_id()].into(),
        role: Role::Collaborator,
        capability_ttl_secs: Some(3600),
    };
    let probe = IrohProbe::bind(lo()).await.expect("probe");
    let svc = serve(pool, prov_key.clone(), cfg, lo(), probe)
        .await
        .expect("serve");

    let a_ep = sam_client::endpoint::bind(&alice, Some(lo()))
        .await
        .expect("ep");
    let b_ep = sam_client::endpoint::bind(&bob, Some(lo()))
        .await
        .expect("ep");
    let e_ep = sam_client::endpoint::bind(&eve, Some(lo()))
        .await
        .expect("ep");

    let got = node(
        request(
            &a_ep,
            &svc.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    assert!(!got.reused);
    assert_eq!(got.pool, "busy");
    let cap = got.ticket.capability.clone().expect("capability");
    assert_eq!(cap.cap.issuer, prov_key.node_id());
    // alice is let in with the capability, as a collaborator
    let client = NodeClient::connect(&a_ep, &got.ticket)
        .await
        .expect("connect");
    assert_eq!(client.welcome.role, Role::Collaborator);
    assert_eq!(client.welcome.owner, prov_key.node_id());
    assert!(matches!(
        client.request(Request::Status).await.expect("status"),
        Response::Status(_)
    ));
    client.close();
    // the ticket is alice's: bob cannot use it
    assert!(NodeClient::connect(&b_ep, &got.ticket).await.is_err());

    match request(&a_ep, &svc.addr, ProvRequest::ListNodes)
        .await
        .expect("ls")
    {
        ProvResponse::Nodes(n) => {
            assert_eq!(n.iter().map(|n| &n.id).collect::<Vec<_>>(), [&got.id])
        }
        other => panic!("{other:?}"),
    }
    match request(&b_ep, &svc.addr, ProvRequest::ListNodes)
        .await
        .expect("ls")
    {
        ProvResponse::Nodes(n) => assert!(n.is_empty()),
        other => panic!("{other:?}"),
    }
    // bob may not delete alice's node; nobody asks for a bad size
    let del = request(
        &b_ep,
        &svc.addr,
        ProvRequest::DeleteNode { id: got.id.clone() },
    )
    .await
    .expect("rm");
    assert_eq!(code(del), ErrorCode::Forbidden);
    let bad = request(
        &b_ep,
        &svc.addr,
        ProvRequest::CreateNode {
            size: "huge".into(),
        },
    )
    .await
    .expect("bad size");
    assert_eq!(code(bad), ErrorCode::BadRequest);

    // a stranger is refused before any request
    let refused = request(&e_ep, &svc.addr, ProvRequest::ListNodes).await;
    assert!(refused.is_err(), "{refused:?}");

    // alice releases; bob gets the same node warm, with his own capability, and alice's
    // capability is revoked on the node: her old ticket and her open connection stop working
    let alice_live = NodeClient::connect(&a_ep, &got.ticket)
        .await
        .expect("alice connects before the release");
    let rel = request(
        &a_ep,
        &svc.addr,
        ProvRequest::ReleaseNode { id: got.id.clone() },
    )
    .await
    .expect("release");
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");
    let warm = node(
        request(
            &b_ep,
            &svc.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    assert!(warm.reused);
    assert_eq!(warm.id, got.id);
    let client = NodeClient::connect(&b_ep, &warm.ticket)
        .await
        .expect("bob connects");
    assert_ne!(
        warm.ticket.capability.as_ref().map(|c| c.cap.id),
        got.ticket.capability.as_ref().map(|c| c.cap.id)
    );
    match NodeClient::connect(&a_ep, &got.ticket).await {
        Err(sam_client::conn::ConnectError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{e}")
        }
        other => panic!("alice's old ticket still opens the node: {other:?}"),
    }
    assert!(
        alice_live.request(Request::Status).await.is_err(),
        "alice's open connection survived the release"
    );
    // bob's capability is not touched by alice's revocation
    assert!(matches!(
        client.request(Request::Status).await.expect("bob's status"),
        Response::Status(_)
    ));
    client.close();

    let done = request(
        &b_ep,
        &svc.addr,
        ProvRequest::DeleteNode {
            id: warm.id.clone(),
        },
    )
    .await
    .expect("rm");
    assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("nodes"))
            .expect("dir")
            .count(),
        0
    );

    for ep in [a_ep, b_ep, e_ep] {
        ep.close().await;
    }
    svc.shutdown().await;
}

/// `sam-provisioner serve --team FILE` through the binary: prints its ticket, serves a member,
/// stops on SIGTERM.
#[tokio::test]
async fn serve_binary_hands_out_a_node() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sam")).with_file_name("sam-provisioner");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --bins",
        bin.display()
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let alice = SecretKey::generate();
    let team = tmp.path().join("team.toml");
    std::fs::write(
        &team,
        format!(
            "provider = \"local\"\nbind = \"127.0.0.1:0\"\nmembers = [\"{}\"]\n",
            alice.node_id()
        ),
    )
    .expect("team.toml");
    let mut child = Command::new(&bin)
        .env("SAM_HOME", tmp.path())
        .env("SAM_NODE_BIN", node_bin())
        .args(["serve", "--team"])
        .arg(&team)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sam-provisioner");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ticket line");
    let ticket: sam_protocol::Ticket = line.trim().parse().expect("provisioner ticket");

    let ep = sam_client::endpoint::bind(&alice, Some(lo()))
        .await
        .expect("ep");
    let got = node(
        request(
            &ep,
            &ticket.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    let client = NodeClient::connect(&ep, &got.ticket)
        .await
        .expect("connect");
    assert_eq!(client.welcome.role, Role::Collaborator);
    client.close();
    let done = request(&ep, &ticket.addr, ProvRequest::DeleteNode { id: got.id })
        .await
        .expect("rm");
    assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    ep.close().await;

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    // its key stays, its local nodes are gone
    assert!(tmp.path().join("provisioner/identity.key").is_file());
    let left = std::fs::read_dir(tmp.path().join("provisioner/local"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}
