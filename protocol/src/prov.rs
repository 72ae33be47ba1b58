//! Messages of `sam/prov/1`, the team provisioner.
//!
//! The provisioner holds the cloud tokens and its own key. It is the **owner** of every node it
//! makes (its key is the `owner` in their config), which is what lets it hand a team member a
//! [`SignedCapability`] for a node: a capability must be signed by the node's owner (or by
//! someone the owner delegated to). Members are listed by NodeId in the provisioner's config;
//! a connection from anyone else is closed before any request is read. Members never see a
//! cloud token: they get tickets.
//!
//! Each bi stream carries one [`ProvRequestFrame`] and one [`ProvResponse`], as framed by
//! [`crate::frame`]. An unknown version or a malformed frame gets [`ProvResponse::Error`].

use serde::{Deserialize, Serialize};

use crate::ctl::ErrorBody;
use crate::ticket::Ticket;

/// The `sam/prov/1` message version.
pub const PROV_VERSION: u32 = 1;
/// Largest request frame a provisioner reads.
pub const MAX_PROV_REQUEST: usize = 4 * 1024;
/// Largest response frame a member reads.
pub const MAX_PROV_RESPONSE: usize = 1024 * 1024;
/// Longest size name or node id in a request.
pub const MAX_PROV_FIELD: usize = 128;

/// One request with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvRequestFrame {
    pub version: u32,
    pub request: ProvRequest,
}

impl ProvRequestFrame {
    pub fn new(request: ProvRequest) -> Self {
        Self {
            version: PROV_VERSION,
            request,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvRequest {
    /// A node of `size` (`small`, `medium`, `large`): a warm one when there is one.
    CreateNode { size: String },
    /// The nodes this member asked for and has not deleted or released.
    ListNodes,
    /// Back to the warm pool (idle), for someone else.
    ReleaseNode { id: String },
    /// Delete the node now.
    DeleteNode { id: String },
}

/// A node as a member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvNode {
    /// The provider's VM id.
    pub id: String,
    pub size: String,
    /// `idle` or `busy`.
    pub pool: String,
    /// With a capability for the member who asked.
    pub ticket: Ticket,
    /// Taken warm from the pool.
    pub reused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvResponse {
    Node(Box<ProvNode>),
    Nodes(Vec<ProvNode>),
    Done { id: String },
    Error(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::ErrorCode;
    use crate::frame;

    #[test]
    fn round_trip_and_garbage() {
        let req = ProvRequestFrame::new(ProvRequest::CreateNode {
            size: "small".into(),
        });
        let bytes = frame::encode(&req).expect("encode");
        let back: ProvRequestFrame = frame::decode_frame(&bytes, MAX_PROV_REQUEST).expect("decode");
        assert_eq!(back, req);
        let resp = ProvResponse::Error(ErrorBody::new(ErrorCode::BadRequest, "no"));
        let bytes = frame::encode(&resp).expect("encode");
        let back: ProvResponse = frame::decode_frame(&bytes, MAX_PROV_RESPONSE).expect("decode");
        assert_eq!(back, resp);
        for garbage in [&b""[..], b"\0\0\0\x05hello", b"\xff\xff\xff\xff"] {
            assert!(frame::decode_frame::<ProvRequestFrame>(garbage, MAX_PROV_REQUEST).is_err());
        }
    }
}
