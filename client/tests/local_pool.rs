//! The `local` provider and the warm pool on loopback: real `sam-node` processes, a real
//! iroh connection as the owner, `status`, reuse of a warm node, the reaper.

use std::net::SocketAddr;
use std::time::Duration;

use sam_client::NodeClient;
use sam_protocol::SecretKey;
use sam_protocol::ctl::{Request, Response};
use sam_provisioner::pool::now_unix;
use sam_provisioner::{
    CreateSpec, IrohProbe, Local, Pool, PoolError, PoolPolicy, PoolState, Probe, Provider,
    ProviderError, Size,
};

use crate::support::bins::node_bin;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn status_as_owner(owner: &SecretKey, ticket: &sam_protocol::Ticket) {
    let ep = sam_client::endpoint::bind(owner, Some(loopback()))
        .await
        .expect("bind");
    let client = NodeClient::connect(&ep, ticket).await.expect("connect");
    match client.request(Request::Status).await.expect("status") {
        Response::Status(s) => assert_eq!(s.node, ticket.addr.id),
        other => panic!("unexpected {other:?}"),
    }
    client.close();
    ep.close().await;
}

#[tokio::test]
async fn local_provider_create_ticket_connect_delete() {
    let tmp = tempfile::tempdir().expect("tmp");
    let local = Local::new(tmp.path().join("nodes"), node_bin());
    let owner = SecretKey::generate();
    let key = SecretKey::generate();
    let node = key.node_id();
    let spec = CreateSpec {
        name: CreateSpec::default_name(&node),
        size: Size::Small,
        node,
        user_data: local
            .user_data(&key, &owner.node_id(), None)
            .expect("user-data"),
        locations: vec![],
    };
    let vm = local.create(&spec).await.expect("create");
    assert_eq!(vm.id, node.to_string());
    assert_eq!(vm.node_id(), Some(node));
    assert_eq!(vm.pool_state(), Some(PoolState::Busy));
    let state = tmp.path().join("nodes").join(&vm.id).join("vm.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state)
            .expect("vm.json")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let ticket = local.ticket(&vm).expect("ticket");
    assert_eq!(ticket.addr.id, node);
    status_as_owner(&owner, &ticket).await;

    assert_eq!(local.list().await.expect("list"), vec![vm.clone()]);
    let idle = local.mark(&vm, PoolState::Idle, 1_000).await.expect("mark");
    assert_eq!(idle.idle_since(), Some(1_000));
    assert_eq!(local.list().await.expect("list"), vec![idle]);

    // a cloud's user-data is refused, and nothing is left behind
    let err = local
        .create(&CreateSpec {
            user_data: "#!/bin/sh\n".into(),
            ..spec.clone()
        })
        .await
        .expect_err("cloud user-data");
    assert!(matches!(err, ProviderError::CreateFailed { .. }), "{err}");

    local.delete(&vm.id).await.expect("delete");
    assert!(local.list().await.expect("list").is_empty());
    assert!(!tmp.path().join("nodes").join(&vm.id).exists());
    local.delete(&vm.id).await.expect("delete again");
    local.delete("not-a-node-id").await.expect("bad id is gone");
}

#[tokio::test]
async fn warm_pool_reuses_and_reaps() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pool = Pool::new(
        Local::new(tmp.path().join("nodes"), node_bin()),
        PoolPolicy {
            idle_ttl_secs: 600,
            ..PoolPolicy::default()
        },
    );
    let owner = SecretKey::generate();
    let probe = IrohProbe::bind(loopback()).await.expect("probe");

    let first = pool
        .acquire(Size::Small, &owner.node_id(), &probe)
        .await
        .expect("cold acquire");
    assert!(!first.reused);
    status_as_owner(&owner, &first.ticket).await;
    pool.release(&first.vm).await.expect("release");

    // another size does not take the small node
    let medium = pool
        .acquire(Size::Medium, &owner.node_id(), &probe)
        .await
        .expect("medium");
    assert!(!medium.reused);

    let second = pool
        .acquire(Size::Small, &owner.node_id(), &probe)
        .await
        .expect("warm acquire");
    assert!(second.reused);
    assert_eq!(second.vm.id, first.vm.id);
    assert_eq!(second.vm.pool_state(), Some(PoolState::Busy));
    status_as_owner(&owner, &second.ticket).await;

    // busy nodes are never reaped; idle ones are once their time is up
    pool.release(&second.vm).await.expect("release");
    assert!(pool.reap(now_unix()).await.expect("reap").is_empty());
    let gone = pool.reap(now_unix() + 601).await.expect("reap");
    assert_eq!(gone, vec![first.vm.id.clone()]);
    let left: Vec<String> = pool
        .list()
        .await
        .expect("ls")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(left, vec![medium.vm.id.clone()]);
    pool.provider.delete(&medium.vm.id).await.expect("delete");
    probe.close().await;
}

/// A probe that never gets an answer: the node is up but "unreachable".
struct Never;
impl Probe for Never {
    async fn reachable(&self, _: &sam_protocol::Ticket) -> bool {
        false
    }
}

#[tokio::test]
async fn unreachable_new_node_is_deleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut pool = Pool::new(
        Local::new(tmp.path().join("nodes"), node_bin()),
        PoolPolicy::default(),
    );
    pool.ready_timeout = Duration::from_millis(300);
    pool.probe_interval = Duration::from_millis(50);
    let owner = SecretKey::generate().node_id();
    let err = pool
        .acquire(Size::Small, &owner, &Never)
        .await
        .expect_err("unreachable");
    assert!(
        matches!(err, PoolError::Unreachable { ref cleanup, .. } if cleanup == "deleted"),
        "{err}"
    );
    assert!(pool.list().await.expect("ls").is_empty());
    let dirs = std::fs::read_dir(tmp.path().join("nodes"))
        .expect("dir")
        .count();
    assert_eq!(dirs, 0);
}

#[tokio::test]
async fn a_node_binary_that_fails_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pool = Pool::new(
        Local::new(tmp.path().join("nodes"), "/bin/false"),
        PoolPolicy::default(),
    );
    let owner = SecretKey::generate().node_id();
    let err = pool
        .acquire(Size::Small, &owner, &Never)
        .await
        .expect_err("bad binary");
    assert!(err.to_string().contains("exited at start"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("nodes"))
            .expect("dir")
            .count(),
        0
    );
}
