//! The SAM client library behind the `sam` CLI and `sam gui`: this peer's identity,
//! the book of known nodes, and connections to nodes over iroh.
//!
//! The client never links the node crate; it talks to nodes only over the wire
//! (and runs a local node as a separate `sam-node` process).

pub mod book;
pub mod cli;
pub mod conn;
pub mod docs;
pub mod endpoint;
pub mod gui;
pub mod made;
pub mod paths;
pub mod resume;
pub mod serve;
pub mod streams;
pub mod voice;

pub use book::{NodeBook, NodeEntry};
pub use conn::{ConnectError, NodeClient};
pub use paths::ClientPaths;

/// The version of this build.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
