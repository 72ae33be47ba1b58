//! `sam-node`: the daemon on each machine that hosts workspaces.
//!
//! It owns one iroh endpoint with one `Router`; each ALPN has one handler. Every
//! connection opens with a hello that [`sam_protocol::auth::authorize`] decides on;
//! the [`server::Node`] keeps the live connections so a revocation or an expiry
//! closes them at once.

pub mod agent;
pub mod config;
pub mod ctl;
pub mod docs;
pub mod endpoint;
pub mod enroll;
pub mod fake_llm;
pub mod files;
pub mod inside;
pub mod ports;
pub mod pr;
pub mod pty;
pub mod pty_hold;
pub mod server;
pub mod shares;
pub mod streams;
pub mod teardown;
pub mod tickets;
pub mod workspace;

pub use config::{NodeConfig, NodePaths};
pub use server::{Node, NodeHandle};

/// The version of this build, shown by `sam status`.
pub const NODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
