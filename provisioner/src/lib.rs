//! SAM's provisioner: creates and deletes nodes on a cloud, keeps a warm pool in the cloud's
//! labels, and (later) hands out tickets.
//!
//! - [`config`]: unified [`Size`]s, per-provider types, locations/zones and API bases.
//! - [`provider`]: the [`Provider`] trait, [`Vm`], pool labels, [`ProviderError`].
//! - [`hetzner`], [`scaleway`]: the two clouds over their HTTP APIs (reqwest, rustls).
//! - [`pool`]: the sans-IO warm-pool policy.

pub mod config;
pub mod hetzner;
mod http;
pub mod pool;
pub mod provider;
pub mod scaleway;

pub use config::{HetznerConfig, ProvidersConfig, ScalewayConfig, Size, SizeMap, Timing};
pub use hetzner::Hetzner;
pub use http::rate_limit_delay;
pub use pool::{Placement, PoolPolicy};
pub use provider::{CreateSpec, PoolState, Provider, ProviderError, Vm};
pub use scaleway::Scaleway;
