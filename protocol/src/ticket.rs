//! Tickets: `sam` + a version digit + base32 of (node address, optional capability,
//! optional invite secret) + a CRC-32, so a truncated or mistyped ticket is caught.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::capability::SignedCapability;
use crate::identity::NodeId;

/// The ticket format version this build writes and reads. 2: a capability's proof
/// chain is a flat, bounded list (version 1 nested it).
pub const TICKET_VERSION: u8 = 2;
/// Longest ticket text accepted.
pub const MAX_TICKET_LEN: usize = 8 * 1024;
/// Most direct addresses kept in a ticket.
pub const MAX_DIRECT_ADDRS: usize = 16;
const PREFIX: &str = "sam";
const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// Where a node can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub id: NodeId,
    pub direct: Vec<SocketAddr>,
    pub relay: Option<String>,
}

/// A node address with what the holder may do there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub addr: NodeAddr,
    pub capability: Option<SignedCapability>,
    pub invite_secret: Option<[u8; 32]>,
}

/// A ticket could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is empty")]
    Empty,
    #[error("this is not a SAM ticket: a ticket starts with `sam{TICKET_VERSION}`")]
    WrongPrefix,
    #[error(
        "this ticket is format version {0}; this sam reads version {TICKET_VERSION}: update sam or ask for a new ticket"
    )]
    UnsupportedVersion(u32),
    #[error("the ticket is {0} characters long, more than a ticket can be ({MAX_TICKET_LEN})")]
    TooLong(usize),
    #[error("the ticket has characters that do not belong in it (was it copied whole?)")]
    BadEncoding,
    #[error("the ticket is damaged or cut short (checksum mismatch): copy it again, whole")]
    BadChecksum,
    #[error("the ticket's contents are malformed: {0}")]
    Malformed(String),
}

impl Ticket {
    /// A ticket to a node, with no capability (enough for its owner).
    pub fn new(addr: NodeAddr) -> Self {
        Self {
            addr,
            capability: None,
            invite_secret: None,
        }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = postcard::to_allocvec(self).map_err(|_| fmt::Error)?;
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        write!(
            f,
            "{PREFIX}{TICKET_VERSION}{}",
            BASE32.encode(&body).to_ascii_lowercase()
        )
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TicketError::Empty);
        }
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong(s.len()));
        }
        let lower = s.to_ascii_lowercase();
        let rest = lower.strip_prefix(PREFIX).ok_or(TicketError::WrongPrefix)?;
        // Exactly one version digit: base32 payloads may start with a digit too.
        let mut chars = rest.chars();
        let version = chars
            .next()
            .and_then(|c| c.to_digit(10))
            .ok_or(TicketError::WrongPrefix)?;
        if version != u32::from(TICKET_VERSION) {
            return Err(TicketError::UnsupportedVersion(version));
        }
        let payload = chars.as_str();
        let bytes = BASE32
            .decode(payload.to_ascii_uppercase().as_bytes())
            .map_err(|e| match e.kind {
                // A cut-short ticket has a length no base32 text can have.
                data_encoding::DecodeKind::Length | data_encoding::DecodeKind::Trailing => {
                    TicketError::BadChecksum
                }
                _ => TicketError::BadEncoding,
            })?;
        if bytes.len() < 4 {
            return Err(TicketError::BadChecksum);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(TicketError::BadChecksum);
        }
        // Bounded like a frame: no recursion, a proof chain over its limit is refused.
        let ticket: Ticket =
            crate::frame::decode(body).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if ticket.addr.direct.len() > MAX_DIRECT_ADDRS {
            return Err(TicketError::Malformed("too many addresses".into()));
        }
        if let Some(r) = &ticket.addr.relay {
            crate::relay::check_url(r)
                .map_err(|e| TicketError::Malformed(format!("the node's relay: {e}")))?;
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capability, Grantee, Role};
    use crate::identity::SecretKey;
    use proptest::prelude::*;

    fn sample(with_cap: bool) -> Ticket {
        let owner = SecretKey::generate();
        let node = SecretKey::generate();
        let capability = with_cap.then(|| {
            Capability::new(
                owner.node_id(),
                node.node_id(),
                Grantee::Key(SecretKey::generate().node_id()),
                Role::Collaborator,
                None,
                1_800_000_000,
                Some(86_400),
            )
            .sign(&owner, None)
        });
        Ticket {
            addr: NodeAddr {
                id: node.node_id(),
                direct: vec!["127.0.0.1:4433".parse().expect("addr")],
                relay: None,
            },
            capability,
            invite_secret: None,
        }
    }

    #[test]
    fn round_trip() {
        for with_cap in [false, true] {
            let t = sample(with_cap);
            let s = t.to_string();
            assert!(s.starts_with("sam2"));
            assert_eq!(s.parse::<Ticket>().expect("parse"), t);
            assert_eq!(s.to_uppercase().parse::<Ticket>().expect("upper"), t);
        }
    }

    #[test]
    fn wrong_prefix() {
        assert_eq!("".parse::<Ticket>(), Err(TicketError::Empty));
        assert_eq!(
            "ssh-rsa AAAA".parse::<Ticket>(),
            Err(TicketError::WrongPrefix)
        );
        assert_eq!("samxyz".parse::<Ticket>(), Err(TicketError::WrongPrefix));
        assert_eq!(
            "endpointabc".parse::<Ticket>(),
            Err(TicketError::WrongPrefix)
        );
    }

    #[test]
    fn other_versions() {
        let s = sample(false).to_string();
        let old = s.replacen("sam2", "sam1", 1);
        assert_eq!(
            old.parse::<Ticket>(),
            Err(TicketError::UnsupportedVersion(1))
        );
        let new = s.replacen("sam2", "sam3", 1);
        let err = new.parse::<Ticket>().expect_err("newer");
        assert!(err.to_string().contains("update sam"), "{err}");
    }

    #[test]
    fn truncated_and_damaged() {
        let s = sample(true).to_string();
        for cut in [5, s.len() / 2, s.len() - 1] {
            assert!(s[..cut].parse::<Ticket>().is_err(), "cut at {cut}");
        }
        let mut chars: Vec<char> = s.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let damaged: String = chars.into_iter().collect();
        assert!(matches!(
            damaged.parse::<Ticket>(),
            Err(TicketError::BadChecksum | TicketError::BadEncoding)
        ));
        assert_eq!(
            format!("{s}!").parse::<Ticket>(),
            Err(TicketError::BadEncoding)
        );
    }

    #[test]
    fn a_relay_that_is_not_an_iroh_relay_url_is_refused() {
        let mut t = sample(false);
        t.addr.relay = Some("http://10.0.0.1:3340/".into());
        assert_eq!(t.to_string().parse::<Ticket>().expect("relay"), t);
        for bad in [
            "file:///etc/passwd",
            "10.0.0.1:3340",
            "https://",
            "http://a b/",
        ] {
            t.addr.relay = Some(bad.into());
            let err = t.to_string().parse::<Ticket>().expect_err(bad);
            assert!(err.to_string().contains("relay"), "{bad}: {err}");
        }
        t.addr.relay = Some(format!("https://{}", "a".repeat(600)));
        assert!(t.to_string().parse::<Ticket>().is_err());
    }

    #[test]
    fn oversized() {
        let s = format!("sam2{}", "a".repeat(MAX_TICKET_LEN));
        assert!(matches!(s.parse::<Ticket>(), Err(TicketError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(s in "sam2[a-z2-7]{0,200}") {
            let _ = s.parse::<Ticket>();
        }

        #[test]
        fn random_text_never_panics(s in ".{0,300}") {
            let _ = s.parse::<Ticket>();
        }

        #[test]
        fn random_body_with_valid_checksum(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = body.clone();
            b.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
            let s = format!("sam2{}", BASE32.encode(&b).to_ascii_lowercase());
            let _ = s.parse::<Ticket>();
        }
    }
}
