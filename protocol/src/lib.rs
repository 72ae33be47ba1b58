//! The SAM wire protocol, with no IO: ALPN names, the frame codec, ctl messages,
//! peer identities, signed capability tokens, tickets and the authorisation check.
//!
//! Everything here is a plain function or value type so it can be tested without
//! sockets or clocks. The one async shell, [`wire`] (reading and writing frames on tokio
//! streams), sits behind the `io` feature: the node and the client both enable it, so
//! neither keeps a copy of its own.

pub mod agent;
pub mod alpn;
pub mod auth;
pub mod bytes;
pub mod capability;
pub mod ctl;
pub mod discovery;
pub mod doc;
pub mod duration;
pub mod enroll;
pub mod frame;
pub mod identity;
pub mod pr;
pub mod prov;
pub mod relay;
pub mod stream;
pub mod ticket;
#[cfg(feature = "io")]
pub mod wire;
pub mod workspace;

pub use auth::{AuthError, AuthPolicy, Grant};
pub use capability::{
    Capability, CapabilityError, Grantee, ProofLink, Role, Scope, SignedCapability,
};
pub use identity::{IdentityError, NodeId, SecretKey};
pub use ticket::{NodeAddr, Ticket, TicketError};

/// Version of the `sam/*` protocol family spoken by this build. Every hello names it.
/// 2: a capability's proof chain is a flat, bounded list (version 1 nested it).
/// 3: terminal output has byte offsets ([`stream::PtyOpened::offset`]) and a client
/// reattaches after a lost link from where it was ([`stream::PtyTarget::Resume`]).
pub const PROTOCOL_VERSION: u32 = 3;
