//! Identifier types and validation.

use std::fmt;

use crate::CrdtError;

/// Maximum length of a conversation (document) id.
pub const MAX_DOC_ID_LEN: usize = 64;
/// Maximum length of a message id.
pub const MAX_MESSAGE_ID_LEN: usize = 64;

/// Stable id of a message inside a conversation.
///
/// Generated ids are 128 random bits as 32 lowercase hex chars; caller-supplied ids may use
/// `[0-9a-zA-Z_-]`, 1 to 64 chars.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// A new random id (128 bits, lowercase hex).
    pub fn random() -> Self {
        Self(random_hex128())
    }

    /// Wraps a caller-supplied id after checking its syntax.
    pub fn new(id: impl Into<String>) -> Result<Self, CrdtError> {
        let id = id.into();
        if check_message_id(&id) {
            Ok(Self(id))
        } else {
            Err(CrdtError::InvalidArgument(format!(
                "message id {id:?} must be 1..={MAX_MESSAGE_ID_LEN} chars of [0-9a-zA-Z_-]"
            )))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_checked(id: String) -> Self {
        Self(id)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn check_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn random_hex128() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn is_node_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks that `node_id` is a NodeId: 64 lowercase hex chars (an ed25519 public key).
pub fn validate_node_id(node_id: &str) -> Result<(), CrdtError> {
    if is_node_id(node_id) {
        Ok(())
    } else {
        Err(CrdtError::InvalidArgument(format!(
            "author {node_id:?} is not a NodeId (64 lowercase hex chars)"
        )))
    }
}

pub(crate) fn is_doc_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOC_ID_LEN
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}

/// Checks a conversation id: 1 to 64 chars of `[0-9a-f-]`, not starting with `-`.
///
/// Ids become file names in a [`crate::DocStore`], so this is also the path-traversal guard.
pub fn validate_doc_id(id: &str) -> Result<(), CrdtError> {
    if is_doc_id(id) {
        Ok(())
    } else {
        Err(CrdtError::InvalidArgument(format!(
            "conversation id {id:?} must be 1..={MAX_DOC_ID_LEN} chars of [0-9a-f-], not starting with '-'"
        )))
    }
}

/// Decodes 64 lowercase hex chars into 32 bytes.
pub(crate) fn node_id_bytes(s: &str) -> Option<[u8; 32]> {
    if !is_node_id(s) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let txt = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(txt, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids() {
        assert!(validate_doc_id("0123abcd-ef").is_ok());
        for bad in [
            "",
            "../etc",
            "a/b",
            "ABC",
            "-rf",
            "a.b",
            &"a".repeat(65),
            "x",
        ] {
            assert!(validate_doc_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_ids() {
        assert!(validate_node_id(&"ab".repeat(32)).is_ok());
        assert!(validate_node_id(&"AB".repeat(32)).is_err());
        assert!(validate_node_id("abcd").is_err());
        assert_eq!(node_id_bytes(&"0f".repeat(32)), Some([15u8; 32]));
    }

    #[test]
    fn message_ids() {
        assert_eq!(MessageId::random().as_str().len(), 32);
        assert_ne!(MessageId::random(), MessageId::random());
        assert!(MessageId::new("prompt-1_A").is_ok());
        assert!(MessageId::new("a b").is_err());
        assert!(MessageId::new("").is_err());
    }
}
