//! ALPN identifiers. One iroh `ProtocolHandler` per ALPN; each name ends in its version.

/// Request/response RPC: hello + auth, status, shares, workspaces, agents.
pub const CTL: &[u8] = b"sam/ctl/1";
/// Automerge sync of one conversation document per stream.
pub const DOC: &[u8] = b"sam/doc/1";
/// A PTY in a workspace: header, then raw bytes both ways.
pub const PTY: &[u8] = b"sam/pty/1";
/// A forwarded TCP port in a workspace.
pub const PORT: &[u8] = b"sam/port/1";
/// Upload and download of files and directories.
pub const FILE: &[u8] = b"sam/file/1";
/// The team provisioner service.
pub const PROV: &[u8] = b"sam/prov/1";
/// Enrollment of a new cloud node: served on a temporary endpoint whose key is the one-time
/// enrollment key from user-data, never by the node's own endpoint (see [`crate::enroll`]).
pub const ENROLL: &[u8] = b"sam/enroll/1";

/// Every ALPN a node serves.
pub const NODE_ALPNS: &[&[u8]] = &[CTL, DOC, PTY, PORT, FILE];
