//! One of the providers, chosen at run time (the trait's `async fn`s are not object-safe).

use std::collections::BTreeMap;

use sam_bootstrap::NodeRelease;
use sam_protocol::{NodeId, Ticket};

use crate::provider::{CreateSpec, Enrollment, PoolState, Provider, ProviderError, Vm};
use crate::{Hetzner, Local, Scaleway};

/// `local`, `hetzner` or `scaleway`.
#[derive(Debug)]
pub enum AnyProvider {
    Local(Local),
    Hetzner(Hetzner),
    Scaleway(Scaleway),
}

macro_rules! each {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyProvider::Local($p) => $e,
            AnyProvider::Hetzner($p) => $e,
            AnyProvider::Scaleway($p) => $e,
        }
    };
}

impl Provider for AnyProvider {
    fn name(&self) -> &'static str {
        each!(self, p => p.name())
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Vm, ProviderError> {
        each!(self, p => p.create(spec).await)
    }

    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        each!(self, p => p.list().await)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        each!(self, p => p.delete(id).await)
    }

    async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vm, ProviderError> {
        each!(self, p => p.set_labels(id, labels).await)
    }

    fn user_data(
        &self,
        enrollment: &Enrollment,
        owner: &NodeId,
        release: Option<&NodeRelease>,
    ) -> Result<String, ProviderError> {
        each!(self, p => p.user_data(enrollment, owner, release))
    }

    fn ticket(&self, vm: &Vm) -> Result<Ticket, ProviderError> {
        each!(self, p => p.ticket(vm))
    }

    fn relays(&self) -> Vec<String> {
        each!(self, p => p.relays())
    }

    fn enroll_addrs(&self, vm: &Vm) -> Result<Vec<std::net::SocketAddr>, ProviderError> {
        each!(self, p => p.enroll_addrs(vm))
    }

    async fn mark(&self, vm: &Vm, state: PoolState, now_unix: u64) -> Result<Vm, ProviderError> {
        each!(self, p => p.mark(vm, state, now_unix).await)
    }
}
