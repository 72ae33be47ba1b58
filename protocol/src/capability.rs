//! Capability tokens: what a node's owner lets another key (or the holder of a
//! one-time invite secret) do on that node, signed with ed25519.
//!
//! A capability is valid when it is signed by the node's owner or by the node
//! itself, or by a key that holds an owner-role capability for the same node,
//! which it then carries in `proofs` (at most [`MAX_PROOF_DEPTH`] links).
//!
//! The delegation chain is a flat list on the wire, never a nested type: a peer
//! cannot make the decoder recurse, and a list longer than [`MAX_PROOF_DEPTH`] is
//! refused by the decoder from its length alone, before any link is read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::identity::{NodeId, SecretKey};

/// Longest delegation chain accepted: the most links in [`SignedCapability::proofs`].
pub const MAX_PROOF_DEPTH: usize = 4;
/// Largest encoded (postcard) [`SignedCapability`] a well-formed chain can have: five
/// links of at most 332 bytes (a [`MAX_SCOPE_LEN`] scope, every integer at its widest)
/// and the list length. Request and hello caps are derived from it.
pub const MAX_SIGNED_CAPABILITY_LEN: usize = (MAX_PROOF_DEPTH + 1) * 332 + 1;
/// How far in the future `issued_at` may lie (clock skew between peers).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Longest scope name accepted.
pub const MAX_SCOPE_LEN: usize = 128;
const SIGNING_DOMAIN: &[u8] = b"sam/cap/1\0";

/// What a peer may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads documents, watches terminals read-only, lists files.
    Viewer,
    /// Also prompts, cancels, answers permissions, types, uploads, forwards ports.
    Collaborator,
    /// Also shares, revokes and deletes.
    Owner,
}

impl Role {
    /// The lowercase name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Collaborator => "collaborator",
            Role::Owner => "owner",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = CapabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "collaborator" => Ok(Role::Collaborator),
            "owner" => Ok(Role::Owner),
            other => Err(CapabilityError::UnknownRole(other.to_string())),
        }
    }
}

/// Narrows a capability to one workspace or one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    Workspace(String),
    Conversation(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Workspace(w) => write!(f, "workspace {w}"),
            Scope::Conversation(c) => write!(f, "conversation {c}"),
        }
    }
}

/// Who may use a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grantee {
    /// Exactly this key.
    Key(NodeId),
    /// Whoever first presents the secret whose SHA-256 is this; the node then binds
    /// the capability to that key.
    Invite([u8; 32]),
}

/// The signed body of a capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Random id, used to revoke.
    pub id: [u8; 16],
    /// The key that signed it.
    pub issuer: NodeId,
    /// The node it is valid on.
    pub node: NodeId,
    pub grantee: Grantee,
    pub role: Role,
    pub scope: Option<Scope>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<u64>,
}

impl Capability {
    /// A new capability with a random id, issued `now`.
    pub fn new(
        issuer: NodeId,
        node: NodeId,
        grantee: Grantee,
        role: Role,
        scope: Option<Scope>,
        now: u64,
        ttl_secs: Option<u64>,
    ) -> Self {
        Self {
            id: rand::random(),
            issuer,
            node,
            grantee,
            role,
            scope,
            issued_at: now,
            expires_at: ttl_secs.map(|t| now.saturating_add(t)),
        }
    }

    /// The id as 32 hex digits (what `sam shares ls` shows and `sam revoke` takes).
    pub fn id_hex(&self) -> String {
        id_hex(&self.id)
    }

    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_DOMAIN.to_vec();
        // Serialising a plain struct into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Signs this capability. `proof` is the issuer's own owner capability when the
    /// issuer is not the node's owner; its chain is carried on, flat, behind it (a chain
    /// longer than [`MAX_PROOF_DEPTH`] is refused by [`SignedCapability::verify`]).
    pub fn sign(self, key: &SecretKey, proof: Option<SignedCapability>) -> SignedCapability {
        let signature = key.sign(&self.signing_bytes());
        let proofs = match proof {
            None => Vec::new(),
            Some(p) => {
                let mut chain = Vec::with_capacity(1 + p.proofs.len());
                chain.push(ProofLink {
                    cap: p.cap,
                    signature: p.signature,
                });
                chain.extend(p.proofs);
                chain
            }
        };
        SignedCapability {
            cap: self,
            signature,
            proofs,
        }
    }
}

/// Formats a capability id.
pub fn id_hex(id: &[u8; 16]) -> String {
    data_encoding::HEXLOWER.encode(id)
}

/// Parses a capability id.
pub fn parse_id(s: &str) -> Result<[u8; 16], CapabilityError> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.trim().as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CapabilityError::BadId(s.to_string()))
}

/// The hash an invite capability names; the secret itself travels only in the ticket.
pub fn invite_hash(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A capability with its signature and, for delegated ones, the issuer's proof chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCapability {
    pub cap: Capability,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
    /// The owner capabilities the issuer rests on, nearest first: `proofs[0]` is held
    /// by `cap.issuer`, `proofs[i + 1]` by `proofs[i].cap.issuer`, and the last one is
    /// signed by the node's owner (or the node). Empty when the owner signed `cap`.
    /// Decoding refuses more than [`MAX_PROOF_DEPTH`] links before reading any of them.
    #[serde(default, with = "bounded_proofs")]
    pub proofs: Vec<ProofLink>,
}

/// One link of a delegation chain: a capability and its issuer's signature. It holds
/// no further proof: the chain is the flat list [`SignedCapability::proofs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofLink {
    pub cap: Capability,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// Why a capability is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapabilityError {
    #[error("capability is for node {got}, not this node ({want})")]
    WrongNode { want: String, got: String },
    #[error("capability signature does not verify (forged or damaged)")]
    BadSignature,
    #[error("capability {id} was signed by {issuer}, who is not the owner of this node")]
    NotOwner { id: String, issuer: String },
    #[error("capability {id} expired {ago} seconds ago; ask the owner for a new one")]
    Expired { id: String, ago: u64 },
    #[error("capability {id} is issued in the future (check this machine's clock)")]
    NotYetValid { id: String },
    #[error("capability delegation chain is longer than {MAX_PROOF_DEPTH}")]
    ChainTooLong,
    #[error("capability {id} widens the scope or role of the capability that delegates it")]
    Escalation { id: String },
    #[error("scope name is longer than {MAX_SCOPE_LEN} bytes")]
    ScopeTooLong,
    #[error("unknown role {0:?}: use viewer, collaborator or owner")]
    UnknownRole(String),
    #[error("not a capability id: {0:?} (expected 32 hex digits)")]
    BadId(String),
}

impl SignedCapability {
    /// Checks signature, target node, time window and delegation chain.
    /// Revocation and grantee binding are the node's business ([`crate::auth`]).
    ///
    /// Iterative, never recursive: each link is checked on its own, then against the
    /// link that delegates it (the issuer must hold an owner capability for at least
    /// the scope it grants, and what it grants may not outlive that capability).
    pub fn verify(&self, node: NodeId, owner: NodeId, now: u64) -> Result<(), CapabilityError> {
        if self.proofs.len() > MAX_PROOF_DEPTH {
            return Err(CapabilityError::ChainTooLong);
        }
        let mut child = &self.cap;
        verify_link(child, &self.signature, node, now)?;
        for link in &self.proofs {
            if child.issuer == owner || child.issuer == node {
                // The chain ends here; links beyond are not needed (and not trusted).
                return Ok(());
            }
            verify_link(&link.cap, &link.signature, node, now)?;
            check_delegation(&link.cap, child)?;
            child = &link.cap;
        }
        if child.issuer == owner || child.issuer == node {
            return Ok(());
        }
        Err(CapabilityError::NotOwner {
            id: child.id_hex(),
            issuer: child.issuer.to_string(),
        })
    }

    /// The links the chain rests on, this capability first: the ones [`Self::verify`]
    /// follows until it reaches the owner.
    fn links(&self) -> impl Iterator<Item = &Capability> {
        std::iter::once(&self.cap).chain(self.proofs.iter().map(|l| &l.cap))
    }

    /// Ids of this capability and every capability in its proof chain.
    pub fn chain_ids(&self) -> Vec<[u8; 16]> {
        self.links().map(|c| c.id).collect()
    }

    /// When the chain stops being valid: the earliest expiry of all its links.
    pub fn chain_expires_at(&self) -> Option<u64> {
        self.links().filter_map(|c| c.expires_at).min()
    }
}

/// Checks one link on its own: node, scope size, signature, time window.
fn verify_link(
    cap: &Capability,
    signature: &[u8; 64],
    node: NodeId,
    now: u64,
) -> Result<(), CapabilityError> {
    if cap.node != node {
        return Err(CapabilityError::WrongNode {
            want: node.to_string(),
            got: cap.node.to_string(),
        });
    }
    if let Some(Scope::Workspace(s) | Scope::Conversation(s)) = &cap.scope
        && s.len() > MAX_SCOPE_LEN
    {
        return Err(CapabilityError::ScopeTooLong);
    }
    cap.issuer
        .verify(&cap.signing_bytes(), signature)
        .map_err(|_| CapabilityError::BadSignature)?;
    if cap.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(CapabilityError::NotYetValid { id: cap.id_hex() });
    }
    if let Some(exp) = cap.expires_at
        && exp <= now
    {
        return Err(CapabilityError::Expired {
            id: cap.id_hex(),
            ago: now - exp,
        });
    }
    Ok(())
}

/// Checks that `proof` lets `cap.issuer` issue `cap`: it is an owner capability of that
/// very key, for a scope at least as wide, living at least as long.
fn check_delegation(proof: &Capability, cap: &Capability) -> Result<(), CapabilityError> {
    if proof.grantee != Grantee::Key(cap.issuer) || proof.role != Role::Owner {
        return Err(CapabilityError::NotOwner {
            id: cap.id_hex(),
            issuer: cap.issuer.to_string(),
        });
    }
    let scope_ok = proof.scope.is_none() || proof.scope == cap.scope;
    let expiry_ok = match (proof.expires_at, cap.expires_at) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pe), Some(ce)) => ce <= pe,
    };
    if !scope_ok || !expiry_ok {
        return Err(CapabilityError::Escalation { id: cap.id_hex() });
    }
    Ok(())
}

/// Serde for [`SignedCapability::proofs`]: a plain sequence, refused while decoding
/// when it announces (or holds) more than [`MAX_PROOF_DEPTH`] links.
mod bounded_proofs {
    use super::{MAX_PROOF_DEPTH, ProofLink};
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[ProofLink], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ProofLink>, D::Error> {
        d.deserialize_seq(Bounded)
    }

    struct Bounded;

    fn too_long<E: Error>(n: usize) -> E {
        crate::frame::over_limit(format!(
            "a capability proof chain of {n} links was refused: at most {MAX_PROOF_DEPTH} are accepted"
        ))
    }

    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<ProofLink>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_PROOF_DEPTH} proof links")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // postcard announces the length first: a long chain is refused before any
            // link is read or any memory is set aside for it.
            if let Some(n) = seq.size_hint()
                && n > MAX_PROOF_DEPTH
            {
                return Err(too_long(n));
            }
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(link) = seq.next_element::<ProofLink>()? {
                if out.len() == MAX_PROOF_DEPTH {
                    return Err(too_long(MAX_PROOF_DEPTH + 1));
                }
                out.push(link);
            }
            Ok(out)
        }
    }
}

pub(crate) mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        v.try_into()
            .map_err(|_| D::Error::custom("signature must be 64 bytes"))
    }
}

/// Chains for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The old (protocol version 1) nested encoding, `proof: Option<Box<Self>>`, of a
    /// `depth`-link chain: what an attacker sends to make a recursive decoder overflow.
    pub(crate) fn nested_chain_bytes(depth: usize) -> Vec<u8> {
        let key = SecretKey::generate();
        let c = Capability::new(
            key.node_id(),
            key.node_id(),
            Grantee::Key(key.node_id()),
            Role::Owner,
            None,
            1_800_000_000,
            Some(3600),
        );
        let mut link = postcard::to_allocvec(&c).expect("cap");
        link.push(64);
        link.extend_from_slice(&[7u8; 64]);
        let mut out = Vec::with_capacity((link.len() + 1) * depth);
        for _ in 1..depth {
            out.extend_from_slice(&link);
            out.push(1); // Some(proof)
        }
        out.extend_from_slice(&link);
        out.push(0); // None
        out
    }

    /// The widest well-formed chain: the most links, each with the longest scope and
    /// every integer at its widest encoding.
    pub(crate) fn widest_chain() -> SignedCapability {
        let owner = SecretKey::generate();
        let node = SecretKey::generate().node_id();
        let wide = || Capability {
            id: [0xff; 16],
            issuer: owner.node_id(),
            node,
            grantee: Grantee::Invite([0xff; 32]),
            role: Role::Owner,
            scope: Some(Scope::Conversation("x".repeat(MAX_SCOPE_LEN))),
            issued_at: u64::MAX,
            expires_at: Some(u64::MAX),
        };
        let mut held = None;
        for _ in 0..=MAX_PROOF_DEPTH {
            held = Some(wide().sign(&owner, held));
        }
        held.expect("chain")
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{nested_chain_bytes, widest_chain};
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (SecretKey, SecretKey, SecretKey) {
        (
            SecretKey::generate(), // owner
            SecretKey::generate(), // node
            SecretKey::generate(), // grantee
        )
    }

    fn cap(owner: &SecretKey, node: &SecretKey, who: NodeId, role: Role) -> Capability {
        Capability::new(
            owner.node_id(),
            node.node_id(),
            Grantee::Key(who),
            role,
            None,
            NOW,
            Some(3600),
        )
    }

    #[test]
    fn owner_signed_verifies() {
        let (owner, node, g) = setup();
        let signed = cap(&owner, &node, g.node_id(), Role::Viewer).sign(&owner, None);
        signed
            .verify(node.node_id(), owner.node_id(), NOW)
            .expect("valid");
    }

    #[test]
    fn signed_by_someone_else() {
        let (owner, node, g) = setup();
        let stranger = SecretKey::generate();
        let mut c = cap(&owner, &node, g.node_id(), Role::Owner);
        c.issuer = stranger.node_id();
        let signed = c.sign(&stranger, None);
        assert!(matches!(
            signed.verify(node.node_id(), owner.node_id(), NOW),
            Err(CapabilityError::NotOwner { .. })
        ));
    }

    #[test]
    fn forged_signature() {
        let (owner, node, g) = setup();
        let mut signed = cap(&owner, &node, g.node_id(), Role::Viewer).sign(&owner, None);
        signed.cap.role = Role::Owner; // tamper after signing
        assert_eq!(
            signed.verify(node.node_id(), owner.node_id(), NOW),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn other_node() {
        let (owner, node, g) = setup();
        let signed = cap(&owner, &node, g.node_id(), Role::Viewer).sign(&owner, None);
        let other = SecretKey::generate().node_id();
        assert!(matches!(
            signed.verify(other, owner.node_id(), NOW),
            Err(CapabilityError::WrongNode { .. })
        ));
    }

    #[test]
    fn expired_and_future() {
        let (owner, node, g) = setup();
        let signed = cap(&owner, &node, g.node_id(), Role::Viewer).sign(&owner, None);
        let err = signed
            .verify(node.node_id(), owner.node_id(), NOW + 3601)
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(matches!(
            signed.verify(node.node_id(), owner.node_id(), NOW - 1000),
            Err(CapabilityError::NotYetValid { .. })
        ));
    }

    #[test]
    fn delegation_chain() {
        let (owner, node, admin) = setup();
        let user = SecretKey::generate();
        let admin_cap = cap(&owner, &node, admin.node_id(), Role::Owner).sign(&owner, None);
        let mut c = cap(&owner, &node, user.node_id(), Role::Collaborator);
        c.issuer = admin.node_id();
        let delegated = c.clone().sign(&admin, Some(admin_cap.clone()));
        delegated
            .verify(node.node_id(), owner.node_id(), NOW)
            .expect("delegated");
        assert_eq!(delegated.chain_ids().len(), 2);

        // A collaborator cannot delegate.
        let collab_cap = cap(&owner, &node, admin.node_id(), Role::Collaborator).sign(&owner, None);
        let bad = c.clone().sign(&admin, Some(collab_cap));
        assert!(bad.verify(node.node_id(), owner.node_id(), NOW).is_err());

        // A delegated capability may not outlive its proof.
        let mut long = c.clone();
        long.expires_at = None;
        let bad = long.sign(&admin, Some(admin_cap.clone()));
        assert!(matches!(
            bad.verify(node.node_id(), owner.node_id(), NOW),
            Err(CapabilityError::Escalation { .. })
        ));

        // A scoped owner cannot grant the whole node.
        let mut scoped = cap(&owner, &node, admin.node_id(), Role::Owner);
        scoped.scope = Some(Scope::Workspace("w1".into()));
        let scoped = scoped.sign(&owner, None);
        let bad = c.sign(&admin, Some(scoped));
        assert!(matches!(
            bad.verify(node.node_id(), owner.node_id(), NOW),
            Err(CapabilityError::Escalation { .. })
        ));
    }

    /// A chain of `len` proofs: each key delegates owner rights to the next one.
    /// Returns the leaf (a viewer capability for `leaf`) and the owner/node keys.
    fn chain(len: usize, owner: &SecretKey, node: &SecretKey) -> SignedCapability {
        let mut holder_key = owner.clone();
        let mut held: Option<SignedCapability> = None;
        for _ in 0..len {
            let next = SecretKey::generate();
            let mut c = cap(owner, node, next.node_id(), Role::Owner);
            c.issuer = holder_key.node_id();
            held = Some(c.sign(&holder_key, held));
            holder_key = next;
        }
        let mut leaf = cap(owner, node, SecretKey::generate().node_id(), Role::Viewer);
        leaf.issuer = holder_key.node_id();
        leaf.sign(&holder_key, held)
    }

    #[test]
    fn chains_up_to_the_limit_verify_and_round_trip() {
        let (owner, node, _) = setup();
        for len in 0..=MAX_PROOF_DEPTH {
            let signed = chain(len, &owner, &node);
            assert_eq!(signed.proofs.len(), len);
            signed
                .verify(node.node_id(), owner.node_id(), NOW)
                .unwrap_or_else(|e| panic!("chain of {len}: {e}"));
            let bytes = postcard::to_allocvec(&signed).expect("encode");
            let back: SignedCapability = crate::frame::decode(&bytes).expect("decode");
            assert_eq!(back, signed);
            assert_eq!(back.chain_ids().len(), len + 1);
        }
    }

    #[test]
    fn a_chain_over_the_limit_is_refused_by_verify_and_by_the_decoder() {
        let (owner, node, _) = setup();
        let signed = chain(MAX_PROOF_DEPTH + 1, &owner, &node);
        assert_eq!(
            signed.verify(node.node_id(), owner.node_id(), NOW),
            Err(CapabilityError::ChainTooLong)
        );
        let bytes = postcard::to_allocvec(&signed).expect("encode");
        let err = crate::frame::decode::<SignedCapability>(&bytes).expect_err("refused");
        assert!(
            matches!(&err, crate::frame::FrameError::OverLimit(m) if m.contains("5 links") && m.contains("at most 4")),
            "{err}"
        );
    }

    /// The decoder refuses from the announced length alone: a list that says it has a
    /// million links (followed by a megabyte of junk, so the length is plausible) is
    /// refused as too long, not read link after link.
    #[test]
    fn an_announced_million_links_is_refused_before_any_is_read() {
        let (owner, node, g) = setup();
        let signed = cap(&owner, &node, g.node_id(), Role::Viewer).sign(&owner, None);
        let mut bytes = postcard::to_allocvec(&signed).expect("encode");
        assert_eq!(bytes.pop(), Some(0), "empty proof list is the last byte");
        bytes.extend(postcard::to_allocvec(&1_000_000u32).expect("varint"));
        bytes.resize(bytes.len() + 1_000_000, 0xff);
        let err = crate::frame::decode::<SignedCapability>(&bytes).expect_err("refused");
        assert!(
            err.to_string().contains("1000000 links"),
            "refused from the length: {err}"
        );
    }

    /// The attack of issue #16: the old nested encoding (`proof: Option<Box<Self>>`),
    /// 5,000 links deep (≈ 915 KB). The old decoder recursed once per link and
    /// overflowed its stack (an abort, no unwinding). Decoded here on a thread with a
    /// 128 KiB stack: the flat decoder reads one link past the first and stops with an
    /// error, whatever the depth.
    #[test]
    fn the_old_nested_5000_link_encoding_is_refused_on_a_small_stack() {
        let bytes = nested_chain_bytes(5_000);
        assert!(bytes.len() > 900_000, "{}", bytes.len());
        let result = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let cap = crate::frame::decode::<SignedCapability>(&bytes).map(|_| ());
                let mut req = vec![crate::PROTOCOL_VERSION as u8, 2];
                req.extend_from_slice(&bytes);
                let request = crate::frame::decode::<crate::ctl::RequestFrame>(&req).map(|_| ());
                (cap.is_err(), request.is_err())
            })
            .expect("spawn")
            .join()
            .expect("no crash");
        assert_eq!(result, (true, true));
    }

    #[test]
    fn the_widest_chain_fits_its_bound() {
        let signed = widest_chain();
        assert_eq!(signed.proofs.len(), MAX_PROOF_DEPTH);
        let len = postcard::to_allocvec(&signed).expect("encode").len();
        assert!(len <= MAX_SIGNED_CAPABILITY_LEN, "{len}");
        assert!(
            len + 64 > MAX_SIGNED_CAPABILITY_LEN,
            "the bound is tight: {len}"
        );
    }

    #[test]
    fn role_parse() {
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("admin".parse::<Role>().is_err());
        assert!(Role::Owner > Role::Collaborator && Role::Collaborator > Role::Viewer);
    }

    proptest! {
        #[test]
        fn round_trip_and_garbage(role in 0u8..3, ttl in proptest::option::of(1u64..1_000_000), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (owner, node, g) = setup();
            let role = [Role::Viewer, Role::Collaborator, Role::Owner][role as usize];
            let mut c = cap(&owner, &node, g.node_id(), role);
            c.expires_at = ttl.map(|t| NOW + t);
            let signed = c.sign(&owner, None);
            let bytes2 = postcard::to_allocvec(&signed).expect("encode");
            let back: SignedCapability = postcard::from_bytes(&bytes2).expect("decode");
            prop_assert_eq!(&back, &signed);
            prop_assert!(back.verify(node.node_id(), owner.node_id(), NOW).is_ok());
            let _ = postcard::from_bytes::<SignedCapability>(&bytes);
        }
    }
}
