//! The warm pool over the Hetzner fake: state only in labels, spec-valid requests.

use std::net::SocketAddr;
use std::time::Duration;

use sam_bootstrap::NodeRelease;
use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use sam_provisioner::pool::now_unix;
use sam_provisioner::{
    EnrollFailure, Hetzner, HetznerConfig, Pool, PoolError, PoolPolicy, PoolState, Probe, Provider,
    ProviderError, Size,
};

use crate::fast_timing;
use crate::hetzner_fake::{self, TOKEN};

/// Every node "answers" (or none does); the fake's IPs are not real. A new node enrolls with a
/// fresh node id at the address it was dialed on.
struct Answers(bool);
impl Probe for Answers {
    async fn reachable(&self, _: &Ticket) -> bool {
        self.0
    }

    async fn enroll(
        &self,
        _: &NodeId,
        _: &NodeId,
        addrs: &[SocketAddr],
    ) -> Result<NodeAddr, EnrollFailure> {
        if !self.0 {
            return Err(EnrollFailure::NotYet("nothing answers".into()));
        }
        Ok(NodeAddr {
            id: SecretKey::generate().node_id(),
            direct: addrs.to_vec(),
            relay: None,
        })
    }
}

/// A new node whose bootstrap is at `step`: still running, or failed there.
struct Bootstrapping(sam_protocol::enroll::BootstrapState);
impl Probe for Bootstrapping {
    async fn reachable(&self, _: &Ticket) -> bool {
        false
    }
    async fn enroll(
        &self,
        _: &NodeId,
        _: &NodeId,
        _: &[SocketAddr],
    ) -> Result<NodeAddr, EnrollFailure> {
        let status = sam_protocol::enroll::BootstrapStatus {
            state: self.0,
            step: "agents".into(),
            message: "npm install failed".into(),
        };
        match self.0 {
            sam_protocol::enroll::BootstrapState::Failed => Err(EnrollFailure::Final(
                sam_protocol::enroll::EnrollError::BootstrapFailed(status),
            )),
            _ => Err(EnrollFailure::NotYet(status.to_string())),
        }
    }
}

fn pool(base: &str) -> Pool<Hetzner> {
    let cfg = HetznerConfig {
        api: base.to_owned(),
        timing: fast_timing(),
        ..HetznerConfig::default()
    };
    let mut pool = Pool::new(
        Hetzner::new(TOKEN.to_owned(), cfg).expect("provider"),
        PoolPolicy {
            idle_ttl_secs: 60,
            ..PoolPolicy::default()
        },
    );
    pool.release = Some(NodeRelease {
        url: "https://releases.example/sam-node".into(),
        sha256: "0".repeat(64),
        pty_hold: None,
    });
    pool.ready_timeout = Duration::from_millis(300);
    pool.probe_interval = Duration::from_millis(20);
    pool
}

#[tokio::test]
async fn acquire_release_reuse_reap() {
    let (fake, srv) = hetzner_fake::start().await;
    let pool = pool(&srv.base);
    let owner = SecretKey::generate().node_id();
    let first = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("cold");
    assert!(!first.reused);
    assert_eq!(first.vm.machine_type, "cx23");
    assert_eq!(Some(first.ticket.addr.id), first.vm.node_id());
    let ip = first.vm.public_ipv4.expect("ip");
    assert_eq!(first.ticket.addr.direct, vec![(ip, 7447).into()]);

    let idle = pool.release(&first.vm).await.expect("release");
    assert_eq!(idle.pool_state(), Some(PoolState::Idle));
    let second = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("warm");
    assert!(second.reused);
    assert_eq!(second.vm.id, first.vm.id);
    assert_eq!(fake.server_count(), 1);

    pool.release(&second.vm).await.expect("release");
    assert!(pool.reap(now_unix()).await.expect("reap").is_empty());
    assert_eq!(
        pool.reap(now_unix() + 61).await.expect("reap"),
        vec![first.vm.id.clone()]
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn a_node_that_never_answers_is_deleted() {
    let (fake, srv) = hetzner_fake::start().await;
    let pool = pool(&srv.base);
    let owner = SecretKey::generate().node_id();
    let err = pool
        .acquire(Size::Medium, &owner, &Answers(false))
        .await
        .expect_err("unreachable");
    assert!(
        matches!(err, PoolError::Unreachable { ref cleanup, .. } if cleanup == "deleted"),
        "{err}"
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn a_failed_bootstrap_ends_the_wait_with_its_step_and_deletes_the_node() {
    use sam_protocol::enroll::BootstrapState;
    let (fake, srv) = hetzner_fake::start().await;
    let mut pool = pool(&srv.base);
    // far longer than the test: only the node's report can end the wait early
    pool.ready_timeout = Duration::from_secs(600);
    let owner = SecretKey::generate().node_id();
    let err = pool
        .acquire(Size::Small, &owner, &Bootstrapping(BootstrapState::Failed))
        .await
        .expect_err("failed bootstrap");
    let msg = err.to_string();
    assert!(
        matches!(err, PoolError::Enroll { ref cleanup, .. } if cleanup == "deleted"),
        "{msg}"
    );
    assert!(
        msg.contains("bootstrap failed at step agents: npm install failed"),
        "{msg}"
    );
    assert_eq!(fake.server_count(), 0);

    // one that never finishes times out, naming the step it was at
    let pool = self::pool(&srv.base);
    let err = pool
        .acquire(Size::Small, &owner, &Bootstrapping(BootstrapState::Running))
        .await
        .expect_err("still running");
    assert!(
        err.to_string()
            .contains("last: bootstrap running: step agents: npm install failed"),
        "{err}"
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn a_warm_node_that_stopped_answering_is_replaced() {
    let (fake, srv) = hetzner_fake::start().await;
    let pool = pool(&srv.base);
    let owner = SecretKey::generate().node_id();
    let first = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("cold");
    pool.release(&first.vm).await.expect("release");
    let mut pool = pool;
    pool.warm_timeout = Duration::from_millis(100);
    // the warm node is dead, and so is every new one
    let err = pool
        .acquire(Size::Small, &owner, &Answers(false))
        .await
        .expect_err("nothing answers");
    assert!(matches!(err, PoolError::Unreachable { .. }), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn no_release_configured_is_a_clear_error_and_creates_nothing() {
    let (fake, srv) = hetzner_fake::start().await;
    let mut pool = pool(&srv.base);
    pool.release = None;
    let err = pool
        .acquire(
            Size::Small,
            &SecretKey::generate().node_id(),
            &Answers(true),
        )
        .await
        .expect_err("no release");
    assert!(
        matches!(err, PoolError::Provider(ProviderError::Config(ref m)) if m.contains("release")),
        "{err}"
    );
    assert_eq!(fake.server_count(), 0);
    let _ = pool.provider.name();
    srv.assert_clean();
}

#[tokio::test]
async fn scaleway_pool_reuses_by_tags_and_reaps() {
    use crate::scaleway_fake::{self, PROJECT};
    let (fake, srv) = scaleway_fake::start().await;
    let cfg = sam_provisioner::ScalewayConfig {
        api: srv.base.clone(),
        project_id: Some(PROJECT.into()),
        timing: fast_timing(),
        ..sam_provisioner::ScalewayConfig::default()
    };
    let mut pool = Pool::new(
        sam_provisioner::Scaleway::new(scaleway_fake::TOKEN.to_owned(), cfg).expect("provider"),
        PoolPolicy {
            idle_ttl_secs: 60,
            ..PoolPolicy::default()
        },
    );
    pool.release = Some(NodeRelease {
        url: "https://releases.example/sam-node".into(),
        sha256: "0".repeat(64),
        pty_hold: None,
    });
    pool.probe_interval = Duration::from_millis(20);
    let owner = SecretKey::generate().node_id();
    let first = pool
        .acquire(Size::Medium, &owner, &Answers(true))
        .await
        .expect("cold");
    assert!(!first.reused);
    assert_eq!(first.vm.machine_type, "DEV1-XL");
    pool.release(&first.vm).await.expect("release");
    let second = pool
        .acquire(Size::Medium, &owner, &Answers(true))
        .await
        .expect("warm");
    assert!(second.reused);
    assert_eq!(second.vm.id, first.vm.id);
    pool.release(&second.vm).await.expect("release");
    assert_eq!(
        pool.reap(now_unix() + 61).await.expect("reap"),
        vec![first.vm.id.clone()]
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

/// Two acquirers, one idle node: the other one's claim lands right after ours (the fake
/// writes it), so the read-back shows it is theirs: we leave the node to them and make a new
/// one, instead of both holding it.
#[tokio::test]
async fn an_idle_node_claimed_by_another_acquirer_is_left_to_them() {
    let (fake, srv) = hetzner_fake::start().await;
    let pool = pool(&srv.base);
    let owner = SecretKey::generate().node_id();
    let first = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("cold");
    pool.release(&first.vm).await.expect("release");
    assert!(
        !pool.list().await.expect("ls")[0]
            .labels
            .contains_key("sam-claim")
    );
    let theirs = "c0".repeat(16);
    fake.state.lock().expect("state").inject.competing_claim = Some(theirs.clone());
    let second = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("a new node");
    assert!(!second.reused, "took a node another acquirer holds");
    assert_ne!(second.vm.id, first.vm.id);
    assert_eq!(fake.server_count(), 2);
    let vms = pool.list().await.expect("ls");
    let old = vms
        .iter()
        .find(|v| v.id == first.vm.id)
        .expect("still there");
    assert_eq!(old.labels.get("sam-claim"), Some(&theirs));
    assert_eq!(old.pool_state(), Some(PoolState::Busy));
    // without a competitor, our own claim holds
    fake.state.lock().expect("state").inject.competing_claim = None;
    pool.release(&second.vm).await.expect("release");
    let third = pool
        .acquire(Size::Small, &owner, &Answers(true))
        .await
        .expect("warm");
    assert!(third.reused);
    assert_eq!(third.vm.id, second.vm.id);
    assert_eq!(third.vm.labels.get("sam-claim").map(String::len), Some(32));
    for id in [&first.vm.id, &second.vm.id] {
        pool.provider.delete(id).await.expect("delete");
    }
    srv.assert_clean();
}
