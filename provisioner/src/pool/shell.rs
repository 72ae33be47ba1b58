//! The warm pool's IO shell: [`PoolPolicy`] decides, this lists, labels, creates and deletes.
//! No database: the pool is whatever the provider lists, with its labels.
//!
//! Labels have no compare-and-swap, so taking an idle node is a claim: the acquirer writes
//! `busy` and a fresh random `sam-claim` token, reads the node back, and takes it only when
//! its own token is still there; otherwise another acquirer's write landed after its own
//! and it leaves the node to them. Within one process (the team provisioner) acquisitions
//! are also serialised, which makes "one node, one holder" exact there; across processes the
//! read-back narrows the race to two writes landing between one acquirer's write and its
//! read-back, in which case the later writer wins and the earlier one sees it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sam_bootstrap::NodeRelease;
use sam_protocol::{NodeAddr, NodeId, Ticket};
use thiserror::Error;

use super::{PoolPolicy, now_unix};
use crate::config::Size;
use crate::enroll::EnrollFailure;
use crate::provider::{
    CreateSpec, Enrollment, PoolState, Provider, ProviderError, Vm, labels, with_node,
    with_pool_state,
};

/// Says whether a node answers at its ticket's address, and enrolls new nodes.
pub trait Probe: Send + Sync {
    fn reachable(&self, ticket: &Ticket) -> impl Future<Output = bool> + Send;

    /// Enrolls the new node serving `enrollment` at `addrs`, as `owner`: its own address, its
    /// id proven by its signature ([`crate::enroll::enroll`]).
    fn enroll(
        &self,
        enrollment: &NodeId,
        owner: &NodeId,
        addrs: &[SocketAddr],
    ) -> impl Future<Output = Result<NodeAddr, EnrollFailure>> + Send;
}

/// What [`Pool::acquire`] hands out.
#[derive(Debug, Clone)]
pub struct Acquired {
    /// Marked busy.
    pub vm: Vm,
    /// For the pool's owner (no capability).
    pub ticket: Ticket,
    /// Taken from the idle pool rather than created.
    pub reused: bool,
}

/// How waiting for an enrollment ended without one.
enum EnrollEnd {
    /// Refused, forged, or a failed bootstrap: final.
    Final(String),
    /// Nothing conclusive in time; what the node last said.
    TimedOut(String),
}

/// A pool operation failed.
#[derive(Debug, Error)]
pub enum PoolError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(
        "node {id} ({provider}) did not become reachable within {secs} s{last}: it was {cleanup}"
    )]
    Unreachable {
        provider: &'static str,
        id: String,
        secs: u64,
        /// What the node last said (`; last: bootstrap running: step …`), or empty.
        last: String,
        /// `deleted` or why deleting failed.
        cleanup: String,
    },
    #[error("node {id} ({provider}) could not be enrolled: {reason}; it was {cleanup}")]
    Enroll {
        provider: &'static str,
        id: String,
        reason: String,
        /// `deleted` or why deleting failed.
        cleanup: String,
    },
}

/// A provider with a pool policy.
pub struct Pool<P> {
    pub provider: P,
    pub policy: PoolPolicy,
    /// The `sam-node` release cloud nodes install (unused by `local`).
    pub release: Option<NodeRelease>,
    /// How long a new node has to answer before it is deleted.
    pub ready_timeout: Duration,
    /// How long a warm node has to answer before it is dropped (deleted) and the next is tried.
    pub warm_timeout: Duration,
    /// Pause between two probes.
    pub probe_interval: Duration,
}

impl<P: Provider> Pool<P> {
    /// Defaults: the policy's time to come up (5 min), 5 s for a warm node, a probe every 500 ms.
    pub fn new(provider: P, policy: PoolPolicy) -> Self {
        Self {
            provider,
            ready_timeout: Duration::from_secs(policy.ready_timeout_secs),
            policy,
            release: None,
            warm_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(500),
        }
    }

    /// The provider's SAM VMs, with the policy's view (for `sam pool ls`).
    pub async fn list(&self) -> Result<Vec<Vm>, PoolError> {
        Ok(self.provider.list().await?)
    }

    /// An idle node of `size` (marked busy), else a new one owned by `owner`; either way
    /// reachable by its ticket. A new node that fails to come up is deleted.
    pub async fn acquire(
        &self,
        size: Size,
        owner: &NodeId,
        probe: &impl Probe,
    ) -> Result<Acquired, PoolError> {
        let vms = self.provider.list().await?;
        let now = now_unix();
        for warm in self.policy.reusable(&vms, size, now) {
            let Some(vm) = self.claim(warm).await? else {
                tracing::info!(vm = %warm.id, "another acquirer claimed this idle node first");
                continue;
            };
            let ticket = match self.provider.ticket(&vm) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(vm = %vm.id, "warm node has no ticket ({e}): deleting it");
                    let _ = self.provider.delete(&vm.id).await;
                    continue;
                }
            };
            if self.wait_reachable(&ticket, self.warm_timeout, probe).await {
                return Ok(Acquired {
                    vm,
                    ticket,
                    reused: true,
                });
            }
            tracing::warn!(vm = %vm.id, "warm node does not answer: deleting it");
            let _ = self.provider.delete(&vm.id).await;
        }
        self.create(size, owner, probe).await
    }

    /// Marks `warm` busy with a fresh claim token, reads it back, and returns it when the
    /// token is still ours (else `None`: someone else's claim landed after ours).
    async fn claim(&self, warm: &Vm) -> Result<Option<Vm>, PoolError> {
        let token = data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>());
        let mut labels = with_pool_state(warm.labels.clone(), PoolState::Busy, now_unix());
        labels.insert(labels::CLAIM.to_owned(), token.clone());
        self.provider.set_labels(&warm.id, &labels).await?;
        let now = self.provider.list().await?;
        Ok(now.into_iter().find(|v| {
            v.id == warm.id
                && v.labels.get(labels::CLAIM) == Some(&token)
                && v.pool_state() == Some(PoolState::Busy)
        }))
    }

    /// A new node, enrolled, reachable, marked busy. Its user-data holds a one-time enrollment
    /// (valid [`PoolPolicy::enroll_ttl_secs`]), never a node key: the node makes its own, and
    /// its id is learnt by enrolling it as `owner` (`probe`'s key must be the owner's).
    pub async fn create(
        &self,
        size: Size,
        owner: &NodeId,
        probe: &impl Probe,
    ) -> Result<Acquired, PoolError> {
        let enrollment = Enrollment::new(now_unix(), self.policy.enroll_ttl_secs);
        let enroll_id = enrollment.id();
        let user_data = self
            .provider
            .user_data(&enrollment, owner, self.release.as_ref())?;
        // Only the public id is needed from here on.
        drop(enrollment);
        let spec = CreateSpec {
            name: CreateSpec::default_name(&enroll_id),
            size,
            enrollment: enroll_id,
            user_data,
            locations: Vec::new(),
        };
        let vm = self.provider.create(&spec).await?;
        let t0 = Instant::now();
        let node = match self.enroll(&vm, &enroll_id, owner, probe).await {
            Ok(node) => node,
            Err(EnrollEnd::Final(reason)) => {
                return Err(PoolError::Enroll {
                    provider: self.provider.name(),
                    id: vm.id.clone(),
                    reason,
                    cleanup: self.delete_reason(&vm.id).await,
                });
            }
            Err(EnrollEnd::TimedOut(last)) => {
                return Err(PoolError::Unreachable {
                    provider: self.provider.name(),
                    id: vm.id.clone(),
                    secs: self.ready_timeout.as_secs(),
                    last: if last.starts_with("bootstrap") {
                        format!("; last: {last}")
                    } else {
                        "; its enrollment endpoint never answered (a bootstrap that stops \
                         before sam-node runs, e.g. a wrong release sha256, shows only in the \
                         VM's cloud-init log)"
                            .to_owned()
                    },
                    cleanup: self.delete_reason(&vm.id).await,
                });
            }
        };
        // The node id is public: it goes in the labels (the pool's only state).
        let vm = match self
            .provider
            .set_labels(&vm.id, &with_node(vm.labels.clone(), &node.id))
            .await
        {
            Ok(vm) => vm,
            Err(e) => {
                let cleanup = self.delete_reason(&vm.id).await;
                tracing::warn!(vm = %vm.id, "cannot label the enrolled node; {cleanup}");
                return Err(e.into());
            }
        };
        let ticket = match self.provider.ticket(&vm) {
            Ok(t) => t,
            Err(e) => {
                let cleanup = self.delete_reason(&vm.id).await;
                tracing::warn!(vm = %vm.id, "new node has no ticket; {cleanup}");
                return Err(e.into());
            }
        };
        if ticket.addr.id != node.id {
            return Err(PoolError::Enroll {
                provider: self.provider.name(),
                id: vm.id.clone(),
                reason: format!(
                    "the provider's ticket names node {}, the enrolled node is {}",
                    ticket.addr.id.short(),
                    node.id.short()
                ),
                cleanup: self.delete_reason(&vm.id).await,
            });
        }
        let left = self.ready_timeout.saturating_sub(t0.elapsed());
        if !self.wait_reachable(&ticket, left, probe).await {
            return Err(PoolError::Unreachable {
                provider: self.provider.name(),
                id: vm.id.clone(),
                secs: self.ready_timeout.as_secs(),
                last: String::new(),
                cleanup: self.delete_reason(&vm.id).await,
            });
        }
        Ok(Acquired {
            vm,
            ticket,
            reused: false,
        })
    }

    /// Puts a node back in the pool: idle since now.
    pub async fn release(&self, vm: &Vm) -> Result<Vm, PoolError> {
        Ok(self.provider.mark(vm, PoolState::Idle, now_unix()).await?)
    }

    /// Deletes idle nodes whose time is up at `now_unix`; returns their ids.
    pub async fn reap(&self, now_unix: u64) -> Result<Vec<String>, PoolError> {
        let vms = self.provider.list().await?;
        let mut gone = Vec::new();
        for vm in self.policy.expired(&vms, now_unix) {
            self.provider.delete(&vm.id).await?;
            gone.push(vm.id.clone());
        }
        Ok(gone)
    }

    async fn delete_reason(&self, id: &str) -> String {
        match self.provider.delete(id).await {
            Ok(()) => "deleted".to_owned(),
            Err(e) => format!("NOT deleted ({e}): delete it by hand"),
        }
    }

    /// Enrolls the new `vm` until [`Self::ready_timeout`]: the node's address, or why not
    /// (final: refused, forged or a failed bootstrap; or timed out, with what the node last said).
    async fn enroll(
        &self,
        vm: &Vm,
        enrollment: &NodeId,
        owner: &NodeId,
        probe: &impl Probe,
    ) -> Result<NodeAddr, EnrollEnd> {
        let t0 = Instant::now();
        let mut vm = vm.clone();
        let mut last = String::new();
        loop {
            let addrs = match self.provider.enroll_addrs(&vm) {
                Ok(a) => Some(a),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            if let Some(addrs) = addrs {
                let left = self.ready_timeout.saturating_sub(t0.elapsed());
                match tokio::time::timeout(left, probe.enroll(enrollment, owner, &addrs)).await {
                    Ok(Ok(node)) => {
                        tracing::info!(vm = %vm.id, node = %node.id, "node enrolled");
                        return Ok(node);
                    }
                    Ok(Err(EnrollFailure::Final(e))) => {
                        return Err(EnrollEnd::Final(e.to_string()));
                    }
                    Ok(Err(EnrollFailure::NotYet(e))) => {
                        if e.starts_with("bootstrap") && e != last {
                            tracing::info!(vm = %vm.id, "{e}");
                        }
                        last = e;
                    }
                    Err(_) => {}
                }
            }
            let left = self.ready_timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                tracing::warn!(vm = %vm.id, "not enrolled in time; last: {last}");
                return Err(EnrollEnd::TimedOut(last));
            }
            tokio::time::sleep(self.probe_interval.min(left)).await;
            // a cloud may give the VM its address only after the create answer
            if vm.public_ipv4.is_none()
                && let Ok(vms) = self.provider.list().await
                && let Some(fresh) = vms.into_iter().find(|v| v.id == vm.id)
            {
                vm = fresh;
            }
        }
    }

    async fn wait_reachable(&self, ticket: &Ticket, limit: Duration, probe: &impl Probe) -> bool {
        let t0 = Instant::now();
        loop {
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return false;
            }
            if let Ok(true) = tokio::time::timeout(left, probe.reachable(ticket)).await {
                return true;
            }
            let left = limit.saturating_sub(t0.elapsed());
            tokio::time::sleep(self.probe_interval.min(left)).await;
        }
    }
}
