//! `sam/enroll/1`: a new cloud node proves the key it made itself at first boot.
//!
//! The node's secret key never travels in user-data. The provisioner makes a throwaway,
//! one-time **enrollment key** (ed25519, never the node key) and an expiry, and puts those and
//! the owner's NodeId in user-data ([`EnrollFile`], `$SAM_HOME/node/enroll.toml`). At first
//! boot `sam-node` makes its own node key and, while the enrollment is neither used nor
//! expired, also serves a temporary endpoint whose key is the enrollment key, on
//! [`crate::alpn::ENROLL`] only. The provisioner knows the enrollment key's public id (it made
//! it) and the VM's address (from the cloud API), so it dials that endpoint as the owner and
//! sends a fresh nonce ([`EnrollRequest`]); the node answers with its own address and a
//! signature by its own key over ([`PROOF_DOMAIN`], enrollment id, owner id, nonce, node id)
//! ([`EnrollProof`]), which the provisioner checks with [`verify_proof`]. The node then marks
//! the enrollment used, deletes the enrollment key, closes the temporary endpoint and never
//! accepts an enrollment again.
//!
//! The QUIC handshake authenticates the node's side by the enrollment key (only the VM that
//! booted with this user-data holds it) and the dialer by its own key (the node answers only
//! its owner). The signature proves the answer's node id is a key the answering node holds.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ctl::ErrorBody;
use crate::identity::{NodeId, SecretKey};
use crate::ticket::NodeAddr;

/// The `sam/enroll/1` message version.
pub const ENROLL_VERSION: u32 = 1;
/// Largest [`EnrollRequest`] a node reads (it is 40-odd bytes).
pub const MAX_ENROLL_REQUEST: usize = 256;
/// Largest [`EnrollResponse`] the provisioner reads.
pub const MAX_ENROLL_RESPONSE: usize = 8 * 1024;
/// UDP port of the temporary enrollment endpoint on a cloud VM (the node's own is 7447).
pub const DEFAULT_ENROLL_PORT: u16 = 7448;
/// How long an enrollment is valid by default: one hour.
pub const DEFAULT_ENROLL_TTL_SECS: u64 = 3600;
/// Prefix of every signed enrollment proof (domain separation from capabilities and tickets).
pub const PROOF_DOMAIN: &[u8] = b"sam/enroll/1 node proof\0";

/// `$SAM_HOME/node/enroll.toml`, written by the user-data (`0600`) and read by `sam-node`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollFile {
    /// The one-time enrollment secret key, 64 hex digits. Not the node's key.
    pub key: String,
    /// Unix seconds after which the node refuses this enrollment and deletes the key.
    pub expires_unix: u64,
    /// UDP address of the temporary endpoint (`0.0.0.0:7448` on a VM).
    pub bind: std::net::SocketAddr,
}

impl EnrollFile {
    /// The file for `key`, valid until `expires_unix`, served on `bind`.
    pub fn new(key: &SecretKey, expires_unix: u64, bind: std::net::SocketAddr) -> Self {
        Self {
            key: data_encoding::HEXLOWER.encode(&key.to_bytes()),
            expires_unix,
            bind,
        }
    }

    /// The enrollment key, checked.
    pub fn secret_key(&self) -> Result<SecretKey, EnrollError> {
        let bytes: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.key.trim().as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| EnrollError::BadFile("key is not 64 hex digits".into()))?;
        Ok(SecretKey::from_bytes(bytes))
    }
}

impl std::fmt::Debug for EnrollFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollFile")
            .field("key", &"<secret>")
            .field("expires_unix", &self.expires_unix)
            .field("bind", &self.bind)
            .finish()
    }
}

/// The provisioner's one request: a fresh nonce the node must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub version: u32,
    pub nonce: [u8; 32],
}

impl EnrollRequest {
    /// A request with a fresh random nonce.
    pub fn fresh() -> Self {
        Self {
            version: ENROLL_VERSION,
            nonce: rand::random(),
        }
    }
}

impl crate::frame::Bounded for EnrollRequest {
    const MAX_LEN: usize = MAX_ENROLL_REQUEST;
}

/// The node's answer: where it is and who it is, proven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollProof {
    /// The node's own id and addresses.
    pub node: NodeAddr,
    /// The node key's signature over [`proof_message`].
    #[serde(with = "crate::capability::sig_bytes")]
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollResponse {
    Enrolled(EnrollProof),
    Refused(ErrorBody),
    /// The node's first-boot bootstrap has not finished (running) or stopped at a step
    /// (failed): nothing is enrolled yet, and the enrollment stays unused. Only the owner
    /// gets it.
    Bootstrapping(BootstrapStatus),
}

/// `$SAM_HOME/node/bootstrap.status`: written by the user-data at each step, read by the node
/// when its owner asks to enroll it. Public data only: a step name and a fixed message.
pub const BOOTSTRAP_STATUS_FILE: &str = "bootstrap.status";
/// Largest status file the node reads.
pub const MAX_STATUS_FILE: usize = 4 * 1024;
/// Longest step name.
pub const MAX_STEP_LEN: usize = 32;
/// Longest status message (longer ones are cut, on a character boundary, with `…`).
pub const MAX_STATUS_MESSAGE: usize = 300;

/// Where the first-boot bootstrap is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootstrapState {
    Running,
    Failed,
    Done,
}

/// One bootstrap step's state, as the node reports it to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapStatus {
    pub state: BootstrapState,
    /// `[a-z0-9-]`, at most [`MAX_STEP_LEN`].
    pub step: String,
    /// Printable text, at most [`MAX_STATUS_MESSAGE`] characters.
    pub message: String,
}

impl BootstrapStatus {
    /// Parses the status file (`state=…`, `step=…`, `message=…` lines; unknown keys are an
    /// error). Bounded and strict: the node refuses to enroll on anything it cannot read.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_STATUS_FILE {
            return Err(format!("the status file is over {MAX_STATUS_FILE} bytes"));
        }
        let (mut state, mut step, mut message) = (None, None, None);
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err("a status line is not key=value".into());
            };
            let slot = match key {
                "state" => &mut state,
                "step" => &mut step,
                "message" => &mut message,
                _ => return Err(format!("unknown status key {:?}", clean_text(key, 32))),
            };
            if slot.replace(value).is_some() {
                return Err(format!("status key {key} given twice"));
            }
        }
        let state = match state {
            Some("running") => BootstrapState::Running,
            Some("failed") => BootstrapState::Failed,
            Some("done") => BootstrapState::Done,
            Some(other) => return Err(format!("unknown state {:?}", clean_text(other, 32))),
            None => return Err("the status has no state".into()),
        };
        let step = step.ok_or("the status has no step")?;
        if step.is_empty()
            || step.len() > MAX_STEP_LEN
            || !step
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("bad step name {:?}", clean_text(step, 40)));
        }
        Ok(Self {
            state,
            step: step.to_owned(),
            message: clean_text(message.unwrap_or(""), MAX_STATUS_MESSAGE),
        })
    }

    /// The status checked again as it arrives from a node (a peer): step and message bounded
    /// and printable, whatever the node sent.
    pub fn sanitized(&self) -> Self {
        let step_ok = !self.step.is_empty()
            && self.step.len() <= MAX_STEP_LEN
            && self
                .step
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        Self {
            state: self.state,
            step: if step_ok {
                self.step.clone()
            } else {
                "unknown".into()
            },
            message: clean_text(&self.message, MAX_STATUS_MESSAGE),
        }
    }
}

impl std::fmt::Display for BootstrapStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.sanitized();
        match s.state {
            BootstrapState::Running => {
                write!(f, "bootstrap running: step {}: {}", s.step, s.message)
            }
            BootstrapState::Failed => {
                write!(f, "bootstrap failed at step {}: {}", s.step, s.message)
            }
            BootstrapState::Done => write!(f, "bootstrap done"),
        }
    }
}

/// `s` with control characters (terminal escapes, newlines) replaced by `?`, cut to `max`
/// characters.
fn clean_text(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// An enrollment failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnrollError {
    #[error("the node refused the enrollment: {0}")]
    Refused(String),
    #[error("the node's enrollment answer is forged or damaged: {0}; the node is not trusted")]
    BadProof(String),
    #[error("invalid enrollment file: {0}")]
    BadFile(String),
    /// The node's first-boot bootstrap stopped at a step (final: the node will not finish).
    #[error("{0}")]
    BootstrapFailed(BootstrapStatus),
}

/// The bytes the node signs: domain, enrollment id, owner id, nonce, node id.
pub fn proof_message(
    enrollment: &NodeId,
    owner: &NodeId,
    nonce: &[u8; 32],
    node: &NodeId,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_DOMAIN.len() + 4 * 32);
    m.extend_from_slice(PROOF_DOMAIN);
    m.extend_from_slice(enrollment.as_bytes());
    m.extend_from_slice(owner.as_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(node.as_bytes());
    m
}

/// The node's proof for this enrollment, owner and nonce.
pub fn sign_proof(
    node_key: &SecretKey,
    addr: NodeAddr,
    enrollment: &NodeId,
    owner: &NodeId,
    nonce: &[u8; 32],
) -> EnrollProof {
    let signature = node_key.sign(&proof_message(
        enrollment,
        owner,
        nonce,
        &node_key.node_id(),
    ));
    EnrollProof {
        node: addr,
        signature,
    }
}

/// Checks a node's answer to our `nonce`; the node's id on success.
pub fn verify_proof(
    proof: &EnrollProof,
    enrollment: &NodeId,
    owner: &NodeId,
    nonce: &[u8; 32],
) -> Result<NodeId, EnrollError> {
    let node = proof.node.id;
    if node == *enrollment {
        return Err(EnrollError::BadProof(
            "the node id is the enrollment key's: a node never keeps that key".into(),
        ));
    }
    node.verify(
        &proof_message(enrollment, owner, nonce, &node),
        &proof.signature,
    )
    .map_err(|_| {
        EnrollError::BadProof(format!(
            "the signature is not node {}'s over this enrollment, owner and nonce",
            node.short()
        ))
    })?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn addr(key: &SecretKey) -> NodeAddr {
        NodeAddr {
            id: key.node_id(),
            direct: vec!["127.0.0.1:7447".parse().expect("addr")],
            relay: None,
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_enrollment_owner_and_nonce() {
        let node = SecretKey::generate();
        let enr = SecretKey::generate().node_id();
        let owner = SecretKey::generate().node_id();
        let nonce = [7u8; 32];
        let proof = sign_proof(&node, addr(&node), &enr, &owner, &nonce);
        assert_eq!(
            verify_proof(&proof, &enr, &owner, &nonce),
            Ok(node.node_id())
        );
        let other = SecretKey::generate().node_id();
        assert!(verify_proof(&proof, &other, &owner, &nonce).is_err());
        assert!(verify_proof(&proof, &enr, &other, &nonce).is_err());
        assert!(verify_proof(&proof, &enr, &owner, &[8u8; 32]).is_err());
        // another key's id with this signature
        let mut swapped = proof.clone();
        swapped.node.id = other;
        assert!(matches!(
            verify_proof(&swapped, &enr, &owner, &nonce),
            Err(EnrollError::BadProof(_))
        ));
    }

    #[test]
    fn messages_round_trip_and_requests_are_bounded() {
        let node = SecretKey::generate();
        let req = EnrollRequest::fresh();
        let bytes = frame::encode(&req).expect("encode");
        assert!(bytes.len() - frame::HEADER_LEN <= MAX_ENROLL_REQUEST);
        let back: EnrollRequest = frame::decode(&bytes[frame::HEADER_LEN..]).expect("decode");
        assert_eq!(back, req);
        let resp = EnrollResponse::Enrolled(sign_proof(
            &node,
            addr(&node),
            &node.node_id(),
            &node.node_id(),
            &req.nonce,
        ));
        let bytes = frame::encode_with_limit(&resp, MAX_ENROLL_RESPONSE).expect("encode");
        let back: EnrollResponse = frame::decode(&bytes[frame::HEADER_LEN..]).expect("decode");
        assert_eq!(back, resp);
    }

    #[test]
    fn the_file_hides_its_key_from_debug() {
        let key = SecretKey::generate();
        let f = EnrollFile::new(&key, 5, "0.0.0.0:7448".parse().expect("addr"));
        assert!(!format!("{f:?}").contains(&f.key));
        assert_eq!(f.secret_key().expect("key").to_bytes(), key.to_bytes());
    }

    #[test]
    fn the_bootstrap_status_file_is_read_strictly() {
        let ok = BootstrapStatus::parse("state=failed\nstep=base-image\nmessage=build failed\n")
            .expect("parse");
        assert_eq!(ok.state, BootstrapState::Failed);
        assert_eq!(ok.step, "base-image");
        assert_eq!(
            ok.to_string(),
            "bootstrap failed at step base-image: build failed"
        );
        let done = BootstrapStatus::parse("state=done\nstep=done\nmessage=ready\n").expect("done");
        assert_eq!(done.state, BootstrapState::Done);
        for bad in [
            "",
            "state=ok\nstep=a\n",
            "state=done\n",
            "state=done\nstep=A B\n",
            "state=done\nstep=done\nstate=running\n",
            "state=done\nstep=done\nkey=x\n",
            "state=done\nstep=done\ngarbage\n",
        ] {
            assert!(BootstrapStatus::parse(bad).is_err(), "{bad:?}");
        }
        let huge = format!(
            "state=done\nstep=done\nmessage={}\n",
            "x".repeat(MAX_STATUS_FILE)
        );
        assert!(BootstrapStatus::parse(&huge).is_err());
        let long = format!(
            "state=running\nstep=agents\nmessage=\x1b[31m{}\n",
            "y".repeat(1000)
        );
        let s = BootstrapStatus::parse(&long).expect("long message");
        assert!(s.message.chars().count() <= MAX_STATUS_MESSAGE + 1);
        assert!(!s.message.contains('\x1b'));
        // what a node sends is cleaned again on arrival
        let sent = BootstrapStatus {
            state: BootstrapState::Failed,
            step: "x\x1b]0;evil\x07".into(),
            message: "a\rb".into(),
        };
        assert_eq!(sent.to_string(), "bootstrap failed at step unknown: a?b");
    }
}
