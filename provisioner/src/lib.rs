//! SAM's provisioner: creates and deletes nodes on a cloud, keeps a warm pool in the cloud's
//! labels, and (later) hands out tickets.
//!
//! - [`config`]: unified [`Size`]s, per-provider types, locations/zones and API bases.
//! - [`provider`]: the [`Provider`] trait, [`Vm`], pool labels, [`ProviderError`].
//! - [`hetzner`], [`scaleway`]: the two clouds over their HTTP APIs (reqwest, rustls).
//! - [`local`]: nodes on this machine as `sam-node` processes (no cloud).
//! - [`pool`]: the sans-IO warm-pool policy and its IO shell ([`Pool`]: acquire, release, reap).
//! - [`serve`]: the team provisioner on `sam/prov/1` (it owns the nodes, members get capabilities).
//! - [`probe`]: is a node reachable at its ticket (iroh).
//! - [`enroll`]: learning a new node's id from the node itself (`sam/enroll/1`): the node key
//!   never travels in user-data.

pub mod any;
pub mod config;
pub mod enroll;
pub mod hetzner;
mod http;
pub mod local;
pub mod pool;
pub mod probe;
pub mod provider;
pub mod scaleway;
pub mod serve;

pub use any::AnyProvider;
pub use config::{HetznerConfig, ProvidersConfig, ScalewayConfig, Size, SizeMap, Timing};
pub use enroll::EnrollFailure;
pub use hetzner::Hetzner;
pub use http::rate_limit_delay;
pub use local::Local;
pub use pool::{Acquired, Placement, Pool, PoolError, PoolPolicy, Probe};
pub use probe::IrohProbe;
pub use provider::{CreateSpec, Enrollment, PoolState, Provider, ProviderError, Vm};
pub use sam_bootstrap::NodeRelease;
pub use scaleway::Scaleway;
