//! Messages of `sam/ctl/1` and the hello that opens a connection on every ALPN.
//!
//! Every connection starts with one bi stream carrying [`Hello`] → [`HelloReply`].
//! On `sam/ctl/1` each later bi stream carries one [`RequestFrame`] and one
//! [`Response`]. Unknown variants from a newer peer fail to decode and are answered
//! with [`ErrorCode::BadRequest`].
//!
//! Bounded reading: a request's version and kind are read from its first bytes
//! ([`peek_request`]) before its body is, and each [`RequestKind`] has its own size
//! cap and least role. A reader ([`crate::wire::read_request`]) refuses a frame longer
//! than anything the peer may send from its length header alone ([`RequestGate`]), then
//! one over its kind's cap or above the peer's role before reading the rest.

use serde::{Deserialize, Serialize};

use crate::agent::{AgentRequest, AgentResponse};
use crate::capability::{Capability, Role, Scope, SignedCapability};
use crate::doc::{ConvRequest, ConvResponse};
use crate::identity::NodeId;
use crate::pr::{PrRequest, PrResponse};
use crate::workspace::{WorkspaceRequest, WorkspaceResponse};

/// Longest client name kept.
pub const MAX_CLIENT_NAME: usize = 64;

/// Largest hello accepted: the widest well-formed capability chain, an invite secret
/// and a client name, with room to spare (a test checks the widest one fits).
pub const MAX_HELLO: usize = 8 * 1024;

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
            Request::Conv(ConvRequest::List | ConvRequest::Heads { .. }) => true,
            Request::Agent(AgentRequest::Status { .. }) => true,
            Request::RegisterShare(_)
            | Request::Revoke { .. }
            | Request::Conv(ConvRequest::Delete { .. })
            | Request::Agent(_)
            | Request::Pr(_) => false,
        }
    }

    /// Its kind, as [`peek_request`] reads it from the frame's first bytes.
    pub fn kind(&self) -> RequestKind {
        use RequestKind as K;
        match self {
            Request::Ping => K::Ping,
            Request::Status => K::Status,
            Request::RegisterShare(_) => K::RegisterShare,
            Request::ListShares => K::ListShares,
            Request::Revoke { .. } => K::Revoke,
            Request::Workspace(w) => match w {
                WorkspaceRequest::Create(_) => K::WorkspaceCreate,
                WorkspaceRequest::List => K::WorkspaceList,
                WorkspaceRequest::Get { .. } => K::WorkspaceGet,
                WorkspaceRequest::Remove { .. } => K::WorkspaceRemove,
                WorkspaceRequest::Ports { .. } => K::WorkspacePorts,
                WorkspaceRequest::WatchPorts { .. } => K::WorkspaceWatchPorts,
                WorkspaceRequest::Files { .. } => K::WorkspaceFiles,
                WorkspaceRequest::Logs { .. } => K::WorkspaceLogs,
                WorkspaceRequest::Recreate { .. } => K::WorkspaceRecreate,
                WorkspaceRequest::WaitCredential => K::WorkspaceWaitCredential,
                WorkspaceRequest::AnswerCredential { .. } => K::WorkspaceAnswerCredential,
                WorkspaceRequest::Teardown { .. } => K::WorkspaceTeardown,
                WorkspaceRequest::Drain => K::WorkspaceDrain,
            },
            Request::Conv(c) => match c {
                ConvRequest::List => K::ConvList,
                ConvRequest::Heads { .. } => K::ConvHeads,
                ConvRequest::Delete { .. } => K::ConvDelete,
            },
            Request::Agent(a) => match a {
                AgentRequest::Cancel { .. } => K::AgentCancel,
                AgentRequest::Permit { .. } => K::AgentPermit,
                AgentRequest::SetPolicy { .. } => K::AgentSetPolicy,
                AgentRequest::Credentials { .. } => K::AgentCredentials,
                AgentRequest::Status { .. } => K::AgentStatus,
            },
            Request::Pr(p) => match p {
                PrRequest::Enable { .. } => K::PrEnable,
                PrRequest::Run { .. } => K::PrRun,
            },
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

/// Every kind of ctl request, down to the variant of the wrapped request: what a
/// reader learns from a frame's first bytes ([`peek_request`]) before it reads the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Ping,
    Status,
    RegisterShare,
    ListShares,
    Revoke,
    WorkspaceCreate,
    WorkspaceList,
    WorkspaceGet,
    WorkspaceRemove,
    WorkspacePorts,
    WorkspaceWatchPorts,
    WorkspaceFiles,
    WorkspaceLogs,
    WorkspaceRecreate,
    WorkspaceWaitCredential,
    WorkspaceAnswerCredential,
    WorkspaceTeardown,
    WorkspaceDrain,
    ConvList,
    ConvHeads,
    ConvDelete,
    AgentCancel,
    AgentPermit,
    AgentSetPolicy,
    AgentCredentials,
    AgentStatus,
    PrEnable,
    PrRun,
}

/// Size caps of request kinds (whole payload: version, tags and body).
mod caps {
    use crate::{agent, capability, pr};

    /// Tags and small numbers only.
    pub const TINY: usize = 64;
    /// One or two ids (workspace, conversation, message, option).
    pub const IDS: usize = 4 * 1024;
    /// Repository URLs, branch names, paths, one git credential.
    pub const TEXT: usize = 16 * 1024;
    /// The listeners a client knows of (`WatchPorts`): thousands of ports.
    pub const PORTS: usize = 256 * 1024;
    pub const SHARE: usize = TINY + capability::MAX_SIGNED_CAPABILITY_LEN;
    /// Every allowed credential at its longest, with its name and lengths.
    pub const CREDENTIALS: usize =
        IDS + agent::MAX_CREDENTIALS * (128 + agent::MAX_CREDENTIAL_VALUE + 16);
    /// An idea, six fields and an API URL at their longest.
    pub const PR: usize = IDS + pr::MAX_IDEA + 7 * (pr::MAX_FIELD + 8);
}

impl RequestKind {
    /// Every kind, for tables and tests.
    pub const ALL: [RequestKind; 28] = [
        RequestKind::Ping,
        RequestKind::Status,
        RequestKind::RegisterShare,
        RequestKind::ListShares,
        RequestKind::Revoke,
        RequestKind::WorkspaceCreate,
        RequestKind::WorkspaceList,
        RequestKind::WorkspaceGet,
        RequestKind::WorkspaceRemove,
        RequestKind::WorkspacePorts,
        RequestKind::WorkspaceWatchPorts,
        RequestKind::WorkspaceFiles,
        RequestKind::WorkspaceLogs,
        RequestKind::WorkspaceRecreate,
        RequestKind::WorkspaceWaitCredential,
        RequestKind::WorkspaceAnswerCredential,
        RequestKind::WorkspaceTeardown,
        RequestKind::WorkspaceDrain,
        RequestKind::ConvList,
        RequestKind::ConvHeads,
        RequestKind::ConvDelete,
        RequestKind::AgentCancel,
        RequestKind::AgentPermit,
        RequestKind::AgentSetPolicy,
        RequestKind::AgentCredentials,
        RequestKind::AgentStatus,
        RequestKind::PrEnable,
        RequestKind::PrRun,
    ];

    /// The kind a frame announces by its variant tags (`Request`'s, and for wrapped
    /// requests the inner enum's). `None`: a tag this build does not know.
    pub fn from_tags(outer: u32, inner: u32) -> Option<RequestKind> {
        use RequestKind as K;
        Some(match (outer, inner) {
            (0, _) => K::Ping,
            (1, _) => K::Status,
            (2, _) => K::RegisterShare,
            (3, _) => K::ListShares,
            (4, _) => K::Revoke,
            (5, 0) => K::WorkspaceCreate,
            (5, 1) => K::WorkspaceList,
            (5, 2) => K::WorkspaceGet,
            (5, 3) => K::WorkspaceRemove,
            (5, 4) => K::WorkspacePorts,
            (5, 5) => K::WorkspaceWatchPorts,
            (5, 6) => K::WorkspaceFiles,
            (5, 7) => K::WorkspaceLogs,
            (5, 8) => K::WorkspaceRecreate,
            (5, 9) => K::WorkspaceWaitCredential,
            (5, 10) => K::WorkspaceAnswerCredential,
            (5, 11) => K::WorkspaceTeardown,
            (5, 12) => K::WorkspaceDrain,
            (6, 0) => K::ConvList,
            (6, 1) => K::ConvHeads,
            (6, 2) => K::ConvDelete,
            (7, 0) => K::AgentCancel,
            (7, 1) => K::AgentPermit,
            (7, 2) => K::AgentSetPolicy,
            (7, 3) => K::AgentCredentials,
            (7, 4) => K::AgentStatus,
            (8, 0) => K::PrEnable,
            (8, 1) => K::PrRun,
            _ => return None,
        })
    }

    /// Whether the `Request` variant with this tag wraps another enum (whose tag follows).
    fn is_wrapper(outer: u32) -> bool {
        (5..=8).contains(&outer)
    }

    /// Largest payload (version, tags and body) a request of this kind may have.
    pub fn max_len(self) -> usize {
        use RequestKind as K;
        match self {
            K::Ping | K::Status | K::ListShares | K::Revoke => caps::TINY,
            K::RegisterShare => caps::SHARE,
            K::WorkspaceList | K::WorkspaceWaitCredential | K::WorkspaceDrain | K::ConvList => {
                caps::TINY
            }
            K::WorkspaceGet
            | K::WorkspaceRemove
            | K::WorkspacePorts
            | K::WorkspaceLogs
            | K::WorkspaceRecreate
            | K::WorkspaceTeardown
            | K::ConvHeads
            | K::ConvDelete
            | K::AgentCancel
            | K::AgentPermit
            | K::AgentSetPolicy
            | K::AgentStatus => caps::IDS,
            K::WorkspaceCreate | K::WorkspaceFiles | K::WorkspaceAnswerCredential => caps::TEXT,
            K::WorkspaceWatchPorts => caps::PORTS,
            K::AgentCredentials => caps::CREDENTIALS,
            K::PrEnable | K::PrRun => caps::PR,
        }
    }

    /// The least role that may make some request of this kind (the exact role is checked
    /// on the decoded request: `Files` needs more for reading than for listing).
    pub fn least_role(self) -> Role {
        use RequestKind as K;
        match self {
            K::Ping | K::Status | K::ConvList | K::AgentStatus => Role::Viewer,
            K::WorkspaceList
            | K::WorkspaceGet
            | K::WorkspacePorts
            | K::WorkspaceWatchPorts
            | K::WorkspaceFiles
            | K::WorkspaceLogs => Role::Viewer,
            K::WorkspaceCreate
            | K::WorkspaceRecreate
            | K::WorkspaceWaitCredential
            | K::WorkspaceAnswerCredential
            | K::AgentCancel
            | K::AgentPermit
            | K::AgentSetPolicy
            | K::AgentCredentials
            | K::PrEnable
            | K::PrRun => Role::Collaborator,
            K::RegisterShare
            | K::ListShares
            | K::Revoke
            | K::WorkspaceRemove
            | K::WorkspaceTeardown
            | K::WorkspaceDrain
            | K::ConvHeads
            | K::ConvDelete => Role::Owner,
        }
    }
}

impl std::fmt::Display for RequestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Largest request a peer with `role` may send: the largest cap of the kinds it may make.
pub fn max_request_len(role: Role) -> usize {
    RequestKind::ALL
        .iter()
        .filter(|k| k.least_role() <= role)
        .map(|k| k.max_len())
        .max()
        .unwrap_or(0)
}

/// Longest head of a request payload: the version and two variant tags, each a varint
/// of at most five bytes.
pub const REQUEST_HEAD_LEN: usize = 15;

/// What the first bytes of a request payload say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub version: u32,
    pub kind: RequestKind,
}

/// Reads the head of a request payload from its first bytes (at most
/// [`REQUEST_HEAD_LEN`]; fewer when the payload is shorter), without decoding the body.
/// A version other than [`crate::PROTOCOL_VERSION`] is refused before its tags are read
/// (a newer peer's kinds mean nothing here).
pub fn peek_request(prefix: &[u8]) -> Result<RequestHead, ErrorBody> {
    let malformed = || {
        ErrorBody::new(
            ErrorCode::BadRequest,
            "malformed request: its version and kind could not be read",
        )
    };
    let (version, rest) = take_varint_u32(prefix).ok_or_else(malformed)?;
    check_version(version)?;
    let (outer, rest) = take_varint_u32(rest).ok_or_else(malformed)?;
    let inner = if RequestKind::is_wrapper(outer) {
        take_varint_u32(rest).ok_or_else(malformed)?.0
    } else {
        0
    };
    let kind = RequestKind::from_tags(outer, inner).ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("unknown request (tags {outer}/{inner}); is one side a newer version?"),
        )
    })?;
    Ok(RequestHead { version, kind })
}

/// A postcard varint `u32` (LEB128, at most five bytes, no overflow).
fn take_varint_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (i, b) in bytes.iter().take(5).enumerate() {
        let part = u32::from(b & 0x7f);
        if i == 4 && part > 0x0f {
            return None;
        }
        value |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// What a peer may send on a ctl stream, decided before a request's body is read.
pub trait RequestGate {
    /// Largest request frame this peer may send at all: checked on the length header
    /// alone, so a longer body is never read.
    fn max_len(&self) -> usize;
    /// Whether this peer may send a request of `kind`: checked on the first bytes.
    fn admit(&self, kind: RequestKind) -> Result<(), ErrorBody>;
}

/// The node's gate: what the peer's role lets it ask (scope is checked later, on the
/// decoded request).
#[derive(Debug, Clone, Copy)]
pub struct RoleGate(pub Role);

impl RequestGate for RoleGate {
    fn max_len(&self) -> usize {
        max_request_len(self.0)
    }

    fn admit(&self, kind: RequestKind) -> Result<(), ErrorBody> {
        let needed = kind.least_role();
        if self.0 >= needed {
            Ok(())
        } else {
            Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!(
                    "a {kind} request needs the {needed} role; you have {}",
                    self.0
                ),
            ))
        }
    }
}

/// Checks a request frame of `len` payload bytes against `gate` from its length alone.
pub fn check_request_len(gate: &impl RequestGate, len: usize) -> Result<(), ErrorBody> {
    let max = gate.max_len();
    if len > max {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "request of {len} bytes refused unread: it is over the limit of {max} bytes for what you may ask here"
            ),
        ));
    }
    Ok(())
}

/// Checks a request's head (kind and length) against `gate` and its kind's own cap.
pub fn check_request_head(
    gate: &impl RequestGate,
    head: &RequestHead,
    len: usize,
) -> Result<(), ErrorBody> {
    gate.admit(head.kind)?;
    let cap = head.kind.max_len();
    if len > cap {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "{} request of {len} bytes refused unread: it is over the limit of {cap} bytes for that request",
                head.kind
            ),
        ));
    }
    Ok(())
}

/// Decodes one request payload in memory with every check [`crate::wire::read_request`]
/// makes on a stream (length, head, then body), for tests and fuzzing.
pub fn decode_request(gate: &impl RequestGate, payload: &[u8]) -> Result<RequestFrame, ErrorBody> {
    check_request_len(gate, payload.len())?;
    let head = peek_request(&payload[..payload.len().min(REQUEST_HEAD_LEN)])?;
    check_request_head(gate, &head, payload.len())?;
    crate::frame::decode(payload).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("malformed or unknown request ({e}); is one side a newer version?"),
        )
    })
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
            Request::Conv(ConvRequest::Heads { id: "c".into() }),
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
            Request::Conv(ConvRequest::Delete {
                id: "c".into(),
                force: false,
            }),
        ] {
            assert!(!r.is_read_only(), "{r:?}");
        }
    }

    /// One request of every kind, each at its widest where a field has a documented cap.
    fn one_of_each_kind() -> Vec<Request> {
        use crate::agent::{Credentials, PermissionPolicy};
        use crate::pr::{GitIdentity, PrSettings};
        use crate::workspace::{CreateWorkspace, FilesOp, GitCredential};
        let ws = Request::Workspace;
        let id = || "w".repeat(64);
        let settings = PrSettings {
            repo_url: "u".repeat(crate::pr::MAX_FIELD),
            base: "b".repeat(crate::pr::MAX_FIELD),
            branch: "r".repeat(crate::pr::MAX_FIELD),
            idea: "i".repeat(crate::pr::MAX_IDEA),
            identity: GitIdentity {
                name: "n".repeat(crate::pr::MAX_FIELD),
                email: "e".repeat(crate::pr::MAX_FIELD),
            },
            token: "t".repeat(crate::pr::MAX_FIELD),
            api: Some("a".repeat(crate::pr::MAX_FIELD)),
        };
        vec![
            Request::Ping,
            Request::Status,
            Request::RegisterShare(crate::capability::tests_support::widest_chain()),
            Request::ListShares,
            Request::Revoke { id: [0xff; 16] },
            ws(WorkspaceRequest::Create(CreateWorkspace {
                repo: Some("r".repeat(4096)),
                branch: Some("b".repeat(1024)),
                lightweight: true,
                name: Some("n".repeat(1024)),
            })),
            ws(WorkspaceRequest::List),
            ws(WorkspaceRequest::Get { id: id() }),
            ws(WorkspaceRequest::Remove { id: id() }),
            ws(WorkspaceRequest::Ports { id: id() }),
            ws(WorkspaceRequest::WatchPorts {
                id: id(),
                known: (0..4000)
                    .map(|p| crate::workspace::PortInfo {
                        port: p,
                        addr: "0000:0000:0000:0000:0000:0000:0000:0001".into(),
                    })
                    .collect(),
                timeout_ms: u32::MAX,
            }),
            ws(WorkspaceRequest::Files {
                id: id(),
                op: FilesOp::Diff {
                    a: "a".repeat(4096),
                    b: "b".repeat(4096),
                },
            }),
            ws(WorkspaceRequest::Logs {
                id: id(),
                from: u64::MAX,
            }),
            ws(WorkspaceRequest::Recreate { id: id() }),
            ws(WorkspaceRequest::WaitCredential),
            ws(WorkspaceRequest::AnswerCredential {
                request: u64::MAX,
                answer: Some(GitCredential {
                    username: "u".repeat(1024),
                    password: "p".repeat(8192),
                }),
            }),
            ws(WorkspaceRequest::Teardown {
                id: id(),
                force: true,
            }),
            ws(WorkspaceRequest::Drain),
            Request::Conv(ConvRequest::List),
            Request::Conv(ConvRequest::Heads { id: id() }),
            Request::Conv(ConvRequest::Delete {
                id: id(),
                force: true,
            }),
            Request::Agent(AgentRequest::Cancel { conv: id() }),
            Request::Agent(AgentRequest::Permit {
                conv: id(),
                message: id(),
                option: id(),
            }),
            Request::Agent(AgentRequest::SetPolicy {
                conv: id(),
                policy: PermissionPolicy::AllowAll,
            }),
            Request::Agent(AgentRequest::Credentials {
                conv: Some(id()),
                workspace: Some(id()),
                credentials: Credentials {
                    env: (0..crate::agent::MAX_CREDENTIALS)
                        .map(|i| {
                            (
                                format!("{i:0>128}"),
                                "v".repeat(crate::agent::MAX_CREDENTIAL_VALUE),
                            )
                        })
                        .collect(),
                },
            }),
            Request::Agent(AgentRequest::Status { conv: id() }),
            Request::Pr(PrRequest::Enable {
                conv: id(),
                settings: settings.clone(),
            }),
            Request::Pr(PrRequest::Run {
                conv: id(),
                settings: Some(settings),
            }),
        ]
    }

    fn payload(request: Request) -> Vec<u8> {
        postcard::to_allocvec(&RequestFrame {
            version: crate::PROTOCOL_VERSION,
            request,
        })
        .expect("encode")
    }

    /// The head read from the first bytes names the same kind as the decoded request, for
    /// every kind (so the tag table matches serde's variant order), the widest legitimate
    /// request of each kind fits its cap, and the cheap role is never above the exact one.
    #[test]
    fn every_kind_is_read_from_the_head_and_fits_its_cap() {
        let mut seen = std::collections::HashSet::new();
        for request in one_of_each_kind() {
            let kind = request.kind();
            let bytes = payload(request.clone());
            let head = peek_request(&bytes[..bytes.len().min(REQUEST_HEAD_LEN)]).expect("head");
            assert_eq!(head.kind, kind);
            assert!(
                bytes.len() <= kind.max_len(),
                "{kind}: {} > {}",
                bytes.len(),
                kind.max_len()
            );
            assert!(kind.least_role() <= request.required_role(), "{kind}");
            let back = decode_request(&RoleGate(Role::Owner), &bytes).expect("decode");
            assert_eq!(back.request, request);
            seen.insert(kind);
        }
        assert_eq!(seen.len(), RequestKind::ALL.len(), "one sample per kind");
    }

    /// The attack of issue #16 against the ctl reader: a viewer's 16 MiB request is refused
    /// from its length alone; a 5,000-link nested chain (≈ 915 KB) from an owner, over the
    /// RegisterShare cap, from its head; from a viewer, by its role too.
    #[test]
    fn oversized_and_out_of_role_requests_are_refused_before_the_body() {
        let viewer = RoleGate(Role::Viewer);
        let err = check_request_len(&viewer, 16 * 1024 * 1024).expect_err("refused");
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("over the limit"), "{err}");
        assert!(max_request_len(Role::Viewer) < max_request_len(Role::Collaborator));
        assert!(max_request_len(Role::Owner) < 1024 * 1024);

        let mut nested = vec![crate::PROTOCOL_VERSION as u8, 2];
        nested.extend(crate::capability::tests_support::nested_chain_bytes(5_000));
        let head = peek_request(&nested[..REQUEST_HEAD_LEN]).expect("head");
        assert_eq!(head.kind, RequestKind::RegisterShare);
        let err = check_request_head(&RoleGate(Role::Owner), &head, nested.len())
            .expect_err("over the RegisterShare cap");
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("RegisterShare"), "{err}");
        let err = decode_request(&viewer, &nested).expect_err("refused");
        assert_eq!(err.code, ErrorCode::TooLarge);

        // Small enough for a viewer's length, but a viewer may not register shares.
        let small = payload(Request::RegisterShare(
            crate::capability::tests_support::widest_chain(),
        ));
        let err = decode_request(&viewer, &small).expect_err("forbidden");
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(err.message.contains("owner"), "{err}");
    }

    #[test]
    fn heads_of_other_versions_and_unknown_kinds_are_refused() {
        let mut p = payload(Request::Ping);
        p[0] = 99;
        assert_eq!(
            peek_request(&p).expect_err("version").code,
            ErrorCode::UnsupportedVersion
        );
        let unknown = [crate::PROTOCOL_VERSION as u8, 9];
        let err = peek_request(&unknown).expect_err("kind");
        assert!(err.message.contains("unknown request"), "{err}");
        let unknown = [crate::PROTOCOL_VERSION as u8, 5, 13];
        assert!(peek_request(&unknown).is_err());
        // Cut short, or varints that never end or overflow.
        for bad in [&[][..], &[0x80][..], &[0xff, 0xff, 0xff, 0xff, 0x7f, 0]] {
            assert_eq!(
                peek_request(bad).expect_err("malformed").code,
                ErrorCode::BadRequest
            );
        }
        assert_eq!(
            peek_request(&[crate::PROTOCOL_VERSION as u8, 5])
                .expect_err("no inner tag")
                .code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn the_widest_hello_fits_its_cap() {
        let hello = Hello {
            protocol_version: u32::MAX,
            capability: Some(crate::capability::tests_support::widest_chain()),
            invite_secret: Some([0xff; 32]),
            client: "\u{10ffff}".repeat(MAX_CLIENT_NAME),
        };
        let len = postcard::to_allocvec(&hello).expect("encode").len();
        assert!(len <= MAX_HELLO, "{len}");
    }

    #[test]
    fn unknown_version_is_clear() {
        assert!(check_version(crate::PROTOCOL_VERSION).is_ok());
        let err = check_version(99).expect_err("refused");
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(err.message.contains("99"));
    }

    /// Deleting a conversation or reading its heads is the owner's: a collaborator's
    /// request is refused from its head, before its body is read.
    #[test]
    fn conversation_delete_and_heads_are_the_owners() {
        for request in [
            Request::Conv(ConvRequest::Delete {
                id: "c".into(),
                force: true,
            }),
            Request::Conv(ConvRequest::Heads { id: "c".into() }),
        ] {
            assert_eq!(request.required_role(), Role::Owner);
            let bytes = payload(request.clone());
            let err = decode_request(&RoleGate(Role::Collaborator), &bytes).expect_err("refused");
            assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
            assert!(decode_request(&RoleGate(Role::Owner), &bytes).is_ok());
        }
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
            for role in [Role::Viewer, Role::Collaborator, Role::Owner] {
                if let Ok(f) = decode_request(&RoleGate(role), &bytes) {
                    // Whatever decodes was announced by its head.
                    prop_assert_eq!(peek_request(&bytes).map(|h| h.kind), Ok(f.request.kind()));
                }
            }
            let _ = frame::decode::<Hello>(&bytes);
            let _ = frame::decode::<HelloReply>(&bytes);
            let _ = frame::decode::<RequestFrame>(&bytes);
            let _ = frame::decode::<Response>(&bytes);
        }
    }
}
