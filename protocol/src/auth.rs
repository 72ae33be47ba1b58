//! The node's authorisation decision for one connecting peer, as a plain function.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::capability::{
    CapabilityError, Grantee, Role, Scope, SignedCapability, id_hex, invite_hash,
};
use crate::identity::NodeId;

/// What the node knows when a peer says hello.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy<'a> {
    /// This node's key.
    pub node: NodeId,
    /// Its owner's key.
    pub owner: NodeId,
    /// Revoked capability ids.
    pub revoked: &'a BTreeSet<[u8; 16]>,
    /// Invite capability id → the key that redeemed it first.
    pub redeemed: &'a BTreeMap<[u8; 16], NodeId>,
    /// Unix seconds.
    pub now: u64,
}

/// What an authorised peer may do on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub peer: NodeId,
    pub role: Role,
    pub scope: Option<Scope>,
    /// Every capability id the grant rests on (revoking any of them ends it).
    pub capability_ids: Vec<[u8; 16]>,
    pub expires_at: Option<u64>,
    /// Set when this hello redeems an invite: the node must record the binding.
    pub redeems_invite: Option<[u8; 16]>,
}

impl Grant {
    /// The owner's grant.
    pub fn owner(peer: NodeId) -> Self {
        Self {
            peer,
            role: Role::Owner,
            scope: None,
            capability_ids: Vec::new(),
            expires_at: None,
            redeems_invite: None,
        }
    }

    /// Whether this grant has at least `role` for something in `scope`
    /// (`None` = the whole node).
    pub fn allows(&self, role: Role, scope: Option<&Scope>) -> bool {
        self.role >= role
            && match (&self.scope, scope) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(mine), Some(want)) => mine == want,
            }
    }

    /// Whether the grant is still good at `now` with this revocation list.
    pub fn still_valid(&self, revoked: &BTreeSet<[u8; 16]>, now: u64) -> Result<(), AuthError> {
        if let Some(id) = self.capability_ids.iter().find(|id| revoked.contains(*id)) {
            return Err(AuthError::Revoked { id: id_hex(id) });
        }
        if let Some(exp) = self.expires_at
            && exp <= now
        {
            return Err(AuthError::Capability(CapabilityError::Expired {
                id: self.capability_ids.first().map(id_hex).unwrap_or_default(),
                ago: now - exp,
            }));
        }
        Ok(())
    }
}

/// Why a peer is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "peer {peer} is not known to this node: ask the owner to run `sam share NODE --to {peer}` and join with that ticket"
    )]
    UnknownPeer { peer: String },
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error("capability {id} has been revoked by the owner")]
    Revoked { id: String },
    #[error("capability {id} was issued to another key, not to {peer}")]
    NotYours { id: String, peer: String },
    #[error("invite {id} needs its secret: join with the whole ticket")]
    MissingInviteSecret { id: String },
    #[error("the invite secret does not match invite {id}")]
    BadInviteSecret { id: String },
    #[error("invite {id} has already been used by another key; ask the owner for a new one")]
    InviteUsed { id: String },
}

/// Decides whether `peer` may connect, and with what role.
pub fn authorize(
    policy: &AuthPolicy<'_>,
    peer: NodeId,
    capability: Option<&SignedCapability>,
    invite_secret: Option<&[u8; 32]>,
) -> Result<Grant, AuthError> {
    if peer == policy.owner {
        return Ok(Grant::owner(peer));
    }
    let Some(signed) = capability else {
        return Err(AuthError::UnknownPeer {
            peer: peer.to_string(),
        });
    };
    signed.verify(policy.node, policy.owner, policy.now)?;
    let ids = signed.chain_ids();
    if let Some(id) = ids.iter().find(|id| policy.revoked.contains(*id)) {
        return Err(AuthError::Revoked { id: id_hex(id) });
    }
    let cap = &signed.cap;
    let id = cap.id_hex();
    let mut redeems_invite = None;
    match &cap.grantee {
        Grantee::Key(k) if *k == peer => {}
        Grantee::Key(_) => {
            return Err(AuthError::NotYours {
                id,
                peer: peer.to_string(),
            });
        }
        Grantee::Invite(hash) => match policy.redeemed.get(&cap.id) {
            Some(bound) if *bound == peer => {}
            Some(_) => return Err(AuthError::InviteUsed { id }),
            None => {
                let secret =
                    invite_secret.ok_or(AuthError::MissingInviteSecret { id: id.clone() })?;
                if invite_hash(secret) != *hash {
                    return Err(AuthError::BadInviteSecret { id });
                }
                redeems_invite = Some(cap.id);
            }
        },
    }
    // A chain is only as long-lived as its shortest link.
    let expires_at = signed.chain_expires_at();
    Ok(Grant {
        peer,
        role: cap.role,
        scope: cap.scope.clone(),
        capability_ids: ids,
        expires_at,
        redeems_invite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capability;
    use crate::identity::SecretKey;

    const NOW: u64 = 1_800_000_000;

    struct World {
        owner: SecretKey,
        node: SecretKey,
        revoked: BTreeSet<[u8; 16]>,
        redeemed: BTreeMap<[u8; 16], NodeId>,
    }

    impl World {
        fn new() -> Self {
            Self {
                owner: SecretKey::generate(),
                node: SecretKey::generate(),
                revoked: BTreeSet::new(),
                redeemed: BTreeMap::new(),
            }
        }
        fn policy(&self) -> AuthPolicy<'_> {
            AuthPolicy {
                node: self.node.node_id(),
                owner: self.owner.node_id(),
                revoked: &self.revoked,
                redeemed: &self.redeemed,
                now: NOW,
            }
        }
        fn grant(&self, grantee: Grantee, role: Role) -> SignedCapability {
            Capability::new(
                self.owner.node_id(),
                self.node.node_id(),
                grantee,
                role,
                None,
                NOW,
                Some(60),
            )
            .sign(&self.owner, None)
        }
    }

    #[test]
    fn owner_needs_no_capability() {
        let w = World::new();
        let g = authorize(&w.policy(), w.owner.node_id(), None, None).expect("owner");
        assert_eq!(g.role, Role::Owner);
    }

    #[test]
    fn unknown_peer_refused_with_advice() {
        let w = World::new();
        let err = authorize(&w.policy(), SecretKey::generate().node_id(), None, None)
            .expect_err("refused");
        assert!(err.to_string().contains("sam share"), "{err}");
    }

    #[test]
    fn keyed_capability() {
        let w = World::new();
        let peer = SecretKey::generate().node_id();
        let cap = w.grant(Grantee::Key(peer), Role::Viewer);
        let g = authorize(&w.policy(), peer, Some(&cap), None).expect("ok");
        assert_eq!(g.role, Role::Viewer);
        assert!(g.allows(Role::Viewer, None));
        assert!(!g.allows(Role::Collaborator, None));
        // Someone else presenting it is refused.
        let thief = SecretKey::generate().node_id();
        assert!(matches!(
            authorize(&w.policy(), thief, Some(&cap), None),
            Err(AuthError::NotYours { .. })
        ));
    }

    #[test]
    fn revoked() {
        let mut w = World::new();
        let peer = SecretKey::generate().node_id();
        let cap = w.grant(Grantee::Key(peer), Role::Collaborator);
        let g = authorize(&w.policy(), peer, Some(&cap), None).expect("ok");
        w.revoked.insert(cap.cap.id);
        assert!(matches!(
            authorize(&w.policy(), peer, Some(&cap), None),
            Err(AuthError::Revoked { .. })
        ));
        assert!(g.still_valid(&w.revoked, NOW).is_err());
    }

    #[test]
    fn expiry_of_live_grant() {
        let w = World::new();
        let peer = SecretKey::generate().node_id();
        let cap = w.grant(Grantee::Key(peer), Role::Collaborator);
        let g = authorize(&w.policy(), peer, Some(&cap), None).expect("ok");
        assert!(g.still_valid(&w.revoked, NOW + 59).is_ok());
        assert!(g.still_valid(&w.revoked, NOW + 60).is_err());
    }

    #[test]
    fn invite_binds_to_first_key() {
        let mut w = World::new();
        let secret: [u8; 32] = rand::random();
        let cap = w.grant(Grantee::Invite(invite_hash(&secret)), Role::Viewer);
        let alice = SecretKey::generate().node_id();
        let bob = SecretKey::generate().node_id();

        assert!(matches!(
            authorize(&w.policy(), alice, Some(&cap), None),
            Err(AuthError::MissingInviteSecret { .. })
        ));
        assert!(matches!(
            authorize(&w.policy(), alice, Some(&cap), Some(&[7; 32])),
            Err(AuthError::BadInviteSecret { .. })
        ));
        let g = authorize(&w.policy(), alice, Some(&cap), Some(&secret)).expect("redeem");
        assert_eq!(g.redeems_invite, Some(cap.cap.id));
        w.redeemed.insert(cap.cap.id, alice);

        let again = authorize(&w.policy(), alice, Some(&cap), Some(&secret)).expect("again");
        assert_eq!(again.redeems_invite, None);
        assert!(matches!(
            authorize(&w.policy(), bob, Some(&cap), Some(&secret)),
            Err(AuthError::InviteUsed { .. })
        ));
    }

    #[test]
    fn scoped_grant() {
        let g = Grant {
            scope: Some(Scope::Conversation("c1".into())),
            ..Grant::owner(SecretKey::generate().node_id())
        };
        assert!(g.allows(Role::Owner, Some(&Scope::Conversation("c1".into()))));
        assert!(!g.allows(Role::Viewer, Some(&Scope::Conversation("c2".into()))));
        assert!(!g.allows(Role::Viewer, None));
    }
}
