//! The `local` provider and the warm pool on loopback: real `sam-node` processes, a real
//! iroh connection as the owner, `status`, reuse of a warm node, the reaper.

use std::net::SocketAddr;
use std::time::Duration;

use sam_client::NodeClient;
use sam_protocol::SecretKey;
use sam_protocol::ctl::{Request, Response};
use sam_provisioner::pool::now_unix;
use sam_provisioner::provider::with_node;
use sam_provisioner::{
    CreateSpec, EnrollFailure, Enrollment, IrohProbe, Local, Pool, PoolError, PoolPolicy,
    PoolState, Probe, Provider, ProviderError, Size, Vm,
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
async fn local_provider_create_enroll_ticket_connect_delete() {
    let tmp = tempfile::tempdir().expect("tmp");
    let local = Local::new(tmp.path().join("nodes"), node_bin());
    let owner = SecretKey::generate();
    let enrollment = Enrollment::new(now_unix(), 3600);
    let enroll_id = enrollment.id();
    let spec = CreateSpec {
        name: CreateSpec::default_name(&enroll_id),
        size: Size::Small,
        enrollment: enroll_id,
        user_data: local
            .user_data(&enrollment, &owner.node_id(), None)
            .expect("user-data"),
        locations: vec![],
    };
    let vm = local.create(&spec).await.expect("create");
    assert_eq!(vm.id, enroll_id.to_string());
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

    // not enrolled yet: no node id, no ticket
    assert_eq!(vm.node_id(), None);
    assert!(local.ticket(&vm).is_err());
    let probe = IrohProbe::bind_as(&owner, loopback()).await.expect("probe");
    let node = probe
        .enroll(
            &enroll_id,
            &owner.node_id(),
            &local.enroll_addrs(&vm).expect("enroll addrs"),
        )
        .await
        .expect("enroll");
    probe.close().await;
    let vm = local
        .set_labels(&vm.id, &with_node(vm.labels.clone(), &node.id))
        .await
        .expect("label");
    assert_eq!(vm.node_id(), Some(node.id));

    let ticket = local.ticket(&vm).expect("ticket");
    assert_eq!(ticket.addr.id, node.id);
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
    let probe = IrohProbe::bind_as(&owner, loopback()).await.expect("probe");

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
    async fn enroll(
        &self,
        _: &sam_protocol::NodeId,
        _: &sam_protocol::NodeId,
        _: &[SocketAddr],
    ) -> Result<sam_protocol::NodeAddr, EnrollFailure> {
        Err(EnrollFailure::NotYet("never".into()))
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

/// The local provider, recording the user-data of every create.
struct Recording {
    inner: Local,
    seen: std::sync::Mutex<Vec<String>>,
}

impl Provider for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn create(&self, spec: &CreateSpec) -> Result<Vm, ProviderError> {
        self.seen.lock().expect("lock").push(spec.user_data.clone());
        self.inner.create(spec).await
    }
    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        self.inner.list().await
    }
    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.delete(id).await
    }
    async fn set_labels(
        &self,
        id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vm, ProviderError> {
        self.inner.set_labels(id, labels).await
    }
    fn user_data(
        &self,
        enrollment: &Enrollment,
        owner: &sam_protocol::NodeId,
        release: Option<&sam_provisioner::NodeRelease>,
    ) -> Result<String, ProviderError> {
        self.inner.user_data(enrollment, owner, release)
    }
    fn ticket(&self, vm: &Vm) -> Result<sam_protocol::Ticket, ProviderError> {
        self.inner.ticket(vm)
    }
    fn enroll_addrs(&self, vm: &Vm) -> Result<Vec<SocketAddr>, ProviderError> {
        self.inner.enroll_addrs(vm)
    }
}

/// Every run of 64 hex digits in `text`, decoded: each 32-byte key written in it.
fn hex_keys(text: &str) -> Vec<[u8; 32]> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 64 <= b.len() {
        let run = &b[i..i + 64];
        if run.iter().all(u8::is_ascii_hexdigit) {
            let mut key = [0u8; 32];
            for (k, pair) in key.iter_mut().zip(run.chunks(2)) {
                let s = std::str::from_utf8(pair).expect("ascii");
                *k = u8::from_str_radix(s, 16).expect("hex");
            }
            out.push(key);
        }
        i += 1;
    }
    out
}

/// The node key never travels in user-data: a node made by the pool makes its own key, the
/// id the client learns by enrolling it is that key's, and nothing in the user-data (or the
/// labels) is that key. Before, the provisioner made the key and wrote it into the user-data.
#[tokio::test]
async fn a_provisioned_nodes_user_data_holds_no_node_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let nodes = tmp.path().join("nodes");
    let pool = Pool::new(
        Recording {
            inner: Local::new(&nodes, node_bin()),
            seen: Default::default(),
        },
        PoolPolicy::default(),
    );
    let owner = SecretKey::generate();
    let probe = IrohProbe::bind_as(&owner, loopback()).await.expect("probe");
    let got = pool
        .acquire(Size::Small, &owner.node_id(), &probe)
        .await
        .expect("acquire");
    probe.close().await;

    // the key the node made on its own disk is the one the client learnt
    let key_file = nodes.join(&got.vm.id).join("node").join("node.key");
    let node_key = SecretKey::load(&key_file).expect("the node made its own key");
    assert_eq!(got.ticket.addr.id, node_key.node_id());
    assert_eq!(got.vm.node_id(), Some(node_key.node_id()));
    status_as_owner(&owner, &got.ticket).await;

    // no 32-byte key written anywhere in the user-data is the node's secret (nor its
    // public id: the node is not known before it boots)
    let seen = pool.provider.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let ud = &seen[0];
    let keys = hex_keys(ud);
    assert!(
        !keys.is_empty(),
        "the enrollment key is in the user-data: {ud}"
    );
    assert!(
        !keys.contains(&node_key.to_bytes()),
        "the node's secret key is in its user-data"
    );
    assert!(
        !keys.contains(node_key.node_id().as_bytes()),
        "the node's id was known before it booted: it was not made on the node"
    );
    // and the enrollment in it is used up: the node deleted its key
    assert!(
        !nodes
            .join(&got.vm.id)
            .join("node")
            .join("enroll.toml")
            .exists()
    );
    for v in got.vm.labels.values() {
        assert!(!hex_keys(v).contains(&node_key.to_bytes()));
    }
    pool.provider.delete(&got.vm.id).await.expect("delete");
}
