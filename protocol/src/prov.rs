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

/// The `sam/prov/1` message version. Version 2: `ReleaseNode` and `DeleteNode` carry the
/// heads the member holds of each conversation, and `force`.
pub const PROV_VERSION: u32 = 2;
/// Most conversations a release names ([`HeldConv`]).
pub const MAX_HELD_CONVS: usize = 1024;
/// Most heads named per conversation (a document has one head per concurrent branch).
pub const MAX_HELD_HEADS: usize = 32;
/// Largest request frame a provisioner reads: a release naming [`MAX_HELD_CONVS`]
/// conversations of [`MAX_HELD_HEADS`] heads each, with room to spare.
pub const MAX_PROV_REQUEST: usize =
    4 * 1024 + MAX_HELD_CONVS * (MAX_PROV_FIELD + 8 + MAX_HELD_HEADS * 32);
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
    /// Back to the warm pool (idle), for someone else, wiped. Refused (`Conflict`) while the
    /// node serves a conversation whose heads are not all in `held`, unless `force`.
    ReleaseNode {
        id: String,
        held: Vec<HeldConv>,
        force: bool,
    },
    /// Delete the node now; the same check as `ReleaseNode`.
    DeleteNode {
        id: String,
        held: Vec<HeldConv>,
        force: bool,
    },
}

/// What a member holds of one conversation: heads (Automerge change hashes) its replica
/// contains. The provisioner lets a node go only when every head the node has of every
/// conversation is among them. The member's word: a member that lies loses its own work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldConv {
    pub conversation: String,
    pub heads: Vec<[u8; 32]>,
}

/// Checks the bounds of a release's `held` list.
pub fn check_held(held: &[HeldConv]) -> Result<(), String> {
    if held.len() > MAX_HELD_CONVS {
        return Err(format!(
            "{} conversations named; at most {MAX_HELD_CONVS}",
            held.len()
        ));
    }
    for h in held {
        if h.conversation.len() > MAX_PROV_FIELD {
            return Err("conversation id too long".into());
        }
        if h.heads.len() > MAX_HELD_HEADS {
            return Err(format!(
                "conversation {}: {} heads named; at most {MAX_HELD_HEADS}",
                h.conversation,
                h.heads.len()
            ));
        }
    }
    Ok(())
}

/// The version of a request payload, read from its first bytes before the rest is decoded
/// (a request of another version may not decode as this one).
pub fn peek_version(payload: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(payload)
        .ok()
        .map(|(v, _)| v)
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

    /// The widest release the bounds allow fits the request cap; one over is refused.
    #[test]
    fn the_widest_release_fits_and_more_is_refused() {
        let widest: Vec<HeldConv> = (0..MAX_HELD_CONVS)
            .map(|i| HeldConv {
                conversation: format!("{i:x>width$}", width = MAX_PROV_FIELD),
                heads: vec![[0xff; 32]; MAX_HELD_HEADS],
            })
            .collect();
        assert_eq!(check_held(&widest), Ok(()));
        let req = ProvRequestFrame::new(ProvRequest::ReleaseNode {
            id: "n".repeat(MAX_PROV_FIELD),
            held: widest.clone(),
            force: true,
        });
        let bytes = frame::encode(&req).expect("encode");
        assert!(bytes.len() <= MAX_PROV_REQUEST, "{}", bytes.len());
        assert_eq!(
            peek_version(&bytes[frame::HEADER_LEN..]),
            Some(PROV_VERSION)
        );
        let mut more = widest.clone();
        more.push(widest[0].clone());
        assert!(check_held(&more).is_err());
        let mut heads = widest;
        heads[3].heads.push([0; 32]);
        assert!(check_held(&heads).is_err());
    }
}
