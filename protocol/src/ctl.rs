//! Messages of `sam/ctl/1` and the hello that opens a connection on every ALPN.
//!
//! Every connection starts with one bi stream carrying [`Hello`] → [`HelloReply`].
//! On `sam/ctl/1` each later bi stream carries one [`RequestFrame`] and one
//! [`Response`]. Unknown variants from a newer peer fail to decode and are answered
//! with [`ErrorCode::BadRequest`].

use serde::{Deserialize, Serialize};

use crate::agent::{AgentRequest, AgentResponse};
use crate::capability::{Capability, Role, Scope, SignedCapability};
use crate::doc::{ConvRequest, ConvResponse};
use crate::identity::NodeId;
use crate::pr::{PrRequest, PrResponse};
use crate::workspace::{WorkspaceRequest, WorkspaceResponse};

/// Longest client name kept.
pub const MAX_CLIENT_NAME: usize = 64;

/// First frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub capability: Option<SignedCapability>,
    pub invite_secret: Option<[u8; 32]>,
    /// Free text, e.g. `sam 0.1.0`; cut to [`MAX_CLIENT_NAME`].
    pub client: String,
}

/// What the node grants the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub node: NodeId,
    pub owner: NodeId,
    pub role: Role,
    pub scope: Option<Scope>,
    pub protocol_version: u32,
    pub node_version: String,
}

/// Answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome(Welcome),
    Refused(ErrorBody),
}

/// One request with the protocol version it is written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub version: u32,
    pub request: Request,
}

/// Requests on `sam/ctl/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Cheapest round trip.
    Ping,
    /// Node version, uptime, peers.
    Status,
    /// Owner only: record a capability the owner's client signed, so it is listed
    /// and can be revoked.
    RegisterShare(SignedCapability),
    /// Owner only.
    ListShares,
    /// Owner only: revoke a capability; open streams that rest on it close.
    Revoke { id: [u8; 16] },
    /// Workspaces on this node.
    Workspace(WorkspaceRequest),
    /// Conversations on this node.
    Conv(ConvRequest),
    /// Agents answering conversations: cancel, permissions, credentials.
    Agent(AgentRequest),
    /// Commit, push and open a pull request for a conversation's work.
    Pr(PrRequest),
}

impl Request {
    /// Whether asking again has no effect beyond the first answer (it only reads), so a
    /// client may send it once more on a new connection when the first one died before the
    /// answer came.
    pub fn is_read_only(&self) -> bool {
        match self {
            Request::Ping | Request::Status | Request::ListShares => true,
            Request::Workspace(w) => matches!(
                w,
                WorkspaceRequest::List
                    | WorkspaceRequest::Get { .. }
                    | WorkspaceRequest::Logs { .. }
                    | WorkspaceRequest::Ports { .. }
                    | WorkspaceRequest::WatchPorts { .. }
                    | WorkspaceRequest::Files { .. }
            ),
            Request::Conv(ConvRequest::List) => true,
            Request::Agent(AgentRequest::Status { .. }) => true,
            Request::RegisterShare(_)
            | Request::Revoke { .. }
            | Request::Agent(_)
            | Request::Pr(_) => false,
        }
    }

    /// The least role that may make this request.
    pub fn required_role(&self) -> Role {
        match self {
            Request::Ping | Request::Status => Role::Viewer,
            Request::RegisterShare(_) | Request::ListShares | Request::Revoke { .. } => Role::Owner,
            Request::Workspace(w) => w.required_role(),
            Request::Conv(c) => c.required_role(),
            Request::Agent(a) => a.required_role(),
            Request::Pr(p) => p.required_role(),
        }
    }
}

/// Responses on `sam/ctl/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Ok,
    Status(NodeStatus),
    Shares(Vec<ShareInfo>),
    Error(ErrorBody),
    Workspace(WorkspaceResponse),
    Conv(ConvResponse),
    Agent(AgentResponse),
    Pr(PrResponse),
}

/// What `sam status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub owner: NodeId,
    pub node_version: String,
    pub protocol_version: u32,
    pub uptime_secs: u64,
    /// Peers connected now.
    pub peers: u32,
    pub your_role: Role,
    /// Problems the node's owner must act on (a damaged share file, revocations in
    /// force but not saved); empty for everyone else.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One capability the node knows of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    pub capability: Capability,
    pub redeemed_by: Option<NodeId>,
    pub revoked: bool,
}

/// Machine-readable error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    UnsupportedVersion,
    TooLarge,
    Conflict,
    Unavailable,
    Unimplemented,
    Internal,
}

/// An error with its class and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

impl std::error::Error for ErrorBody {}

/// Checks the version a peer speaks.
pub fn check_version(version: u32) -> Result<(), ErrorBody> {
    if version == crate::PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this node speaks version {}: update the older side",
                crate::PROTOCOL_VERSION
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use proptest::prelude::*;

    #[test]
    fn only_reads_may_be_sent_twice() {
        use crate::workspace::{CreateWorkspace, FilesOp};
        let ws = |w| Request::Workspace(w);
        for r in [
            Request::Ping,
            Request::Status,
            ws(WorkspaceRequest::Logs {
                id: "w".into(),
                from: 0,
            }),
            ws(WorkspaceRequest::Files {
                id: "w".into(),
                op: FilesOp::WorkPatch,
            }),
            Request::Conv(ConvRequest::List),
        ] {
            assert!(r.is_read_only(), "{r:?}");
        }
        for r in [
            ws(WorkspaceRequest::Create(CreateWorkspace {
                repo: None,
                branch: None,
                lightweight: true,
                name: None,
            })),
            ws(WorkspaceRequest::Remove { id: "w".into() }),
            ws(WorkspaceRequest::WaitCredential),
            Request::Revoke { id: [0; 16] },
            Request::Agent(AgentRequest::Cancel { conv: "c".into() }),
        ] {
            assert!(!r.is_read_only(), "{r:?}");
        }
    }

    #[test]
    fn unknown_version_is_clear() {
        assert!(check_version(crate::PROTOCOL_VERSION).is_ok());
        let err = check_version(99).expect_err("refused");
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(err.message.contains("99"));
    }

    #[test]
    fn roles_required() {
        assert_eq!(Request::Status.required_role(), Role::Viewer);
        assert_eq!(Request::ListShares.required_role(), Role::Owner);
    }

    proptest! {
        #[test]
        fn hello_round_trip(name in ".{0,64}", secret in proptest::option::of(any::<[u8; 32]>()), v in any::<u32>()) {
            let h = Hello { protocol_version: v, capability: None, invite_secret: secret, client: name };
            let f = frame::encode(&h).expect("encode");
            prop_assert_eq!(frame::decode_frame::<Hello>(&f, frame::MAX_FRAME).expect("decode"), h);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = frame::decode::<Hello>(&bytes);
            let _ = frame::decode::<HelloReply>(&bytes);
            let _ = frame::decode::<RequestFrame>(&bytes);
            let _ = frame::decode::<Response>(&bytes);
        }
    }
}
