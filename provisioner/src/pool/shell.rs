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
use std::time::{Duration, Instant};

use sam_bootstrap::NodeRelease;
use sam_protocol::{NodeId, SecretKey, Ticket};
use thiserror::Error;

use super::{PoolPolicy, now_unix};
use crate::config::Size;
use crate::provider::{
    CreateSpec, PoolState, Provider, ProviderError, Vm, labels, with_pool_state,
};

/// Says whether a node answers at its ticket's address.
pub trait Probe: Send + Sync {
    fn reachable(&self, ticket: &Ticket) -> impl Future<Output = bool> + Send;
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

/// A pool operation failed.
#[derive(Debug, Error)]
pub enum PoolError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("node {id} ({provider}) did not become reachable within {secs} s: it was {cleanup}")]
    Unreachable {
        provider: &'static str,
        id: String,
        secs: u64,
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

    /// A new node, reachable, marked busy.
    pub async fn create(
        &self,
        size: Size,
        owner: &NodeId,
        probe: &impl Probe,
    ) -> Result<Acquired, PoolError> {
        let key = SecretKey::generate();
        let node = key.node_id();
        let user_data = self
            .provider
            .user_data(&key, owner, self.release.as_ref())?;
        drop(key);
        let spec = CreateSpec {
            name: CreateSpec::default_name(&node),
            size,
            node,
            user_data,
            locations: Vec::new(),
        };
        let vm = self.provider.create(&spec).await?;
        let ticket = match self.provider.ticket(&vm) {
            Ok(t) => t,
            Err(e) => {
                let cleanup = self.delete_reason(&vm.id).await;
                tracing::warn!(vm = %vm.id, "new node has no ticket; {cleanup}");
                return Err(e.into());
            }
        };
        if !self
            .wait_reachable(&ticket, self.ready_timeout, probe)
            .await
        {
            return Err(PoolError::Unreachable {
                provider: self.provider.name(),
                id: vm.id.clone(),
                secs: self.ready_timeout.as_secs(),
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
