//! Peer identities: an ed25519 secret key kept in a `0600` file, and its public
//! half, the [`NodeId`], shown as 64 lowercase hex digits (as iroh shows it).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The public key of a peer; also its iroh `EndpointId`. Serialised as hex in
/// human-readable formats (JSON, TOML) and as 32 raw bytes in postcard.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(NodeId)
        }
    }
}

impl NodeId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 10 hex digits, for logs and tables.
    pub fn short(&self) -> String {
        self.to_string()[..10].to_string()
    }

    /// Checks `signature` over `msg` with this key (strict ed25519).
    pub fn verify(&self, msg: &[u8], signature: &[u8; 64]) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::NotAKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(msg, &sig)
            .map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(IdentityError::BadNodeId(format!(
                "expected 64 hex digits, got {} characters",
                s.len()
            )));
        }
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| IdentityError::BadNodeId("not hex".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadNodeId("wrong length".into()))?;
        VerifyingKey::from_bytes(&arr).map_err(|_| IdentityError::NotAKey)?;
        Ok(NodeId(arr))
    }
}

/// An identity could not be read, written or used.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("not a node id: {0}")]
    BadNodeId(String),
    #[error("not a valid ed25519 public key")]
    NotAKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("secret key file {path} is damaged: {reason}")]
    BadKeyFile { path: String, reason: String },
    #[error(
        "secret key file {path} can be read by other users (mode {mode:o}): run `chmod 600 {path}`"
    )]
    KeyFileTooOpen { path: String, mode: u32 },
    #[error("cannot access secret key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An ed25519 secret key. Never printed, never serialised except to its own file.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// From the 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&bytes))
    }

    /// The 32 secret bytes (to hand to iroh).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// Loads the key at `path`, or creates it (mode `0600`) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Err(IdentityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let key = Self::generate();
                key.write_new(path)?;
                Ok(key)
            }
            other => other,
        }
    }

    /// Loads the key at `path`: 64 hex digits. Refuses files readable by others.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::KeyFileTooOpen {
                    path: path.display().to_string(),
                    mode,
                });
            }
        }
        if meta.len() > 1024 {
            return Err(IdentityError::BadKeyFile {
                path: path.display().to_string(),
                reason: "file is too large to be a key".into(),
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| IdentityError::BadKeyFile {
                path: path.display().to_string(),
                reason: "expected 64 hex digits".into(),
            })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::BadKeyFile {
            path: path.display().to_string(),
            reason: "expected 32 bytes".into(),
        })?;
        Ok(Self::from_bytes(arr))
    }

    /// Writes the key to a new file created with mode `0600` (fails if it exists).
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(io)?;
        let text = data_encoding::HEXLOWER.encode(&self.to_bytes());
        file.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}…)", self.node_id().short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/key");
        let key = SecretKey::load_or_create(&path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = SecretKey::load_or_create(&path).expect("load");
        assert_eq!(key.node_id(), again.node_id());
    }

    #[cfg(unix)]
    #[test]
    fn open_key_file_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        SecretKey::generate().write_new(&path).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretKey::load(&path).expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn damaged_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(&path)
            .expect("open")
            .write_all(b"zz not a key")
            .expect("write");
        assert!(matches!(
            SecretKey::load(&path),
            Err(IdentityError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn sign_verify() {
        let key = SecretKey::generate();
        let sig = key.sign(b"hello");
        key.node_id().verify(b"hello", &sig).expect("verifies");
        assert!(key.node_id().verify(b"hellO", &sig).is_err());
        assert!(
            SecretKey::generate()
                .node_id()
                .verify(b"hello", &sig)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn node_id_display_parse(bytes in any::<[u8; 32]>()) {
            let id = SecretKey::from_bytes(bytes).node_id();
            let back: NodeId = id.to_string().parse().expect("parse");
            prop_assert_eq!(back, id);
        }

        #[test]
        fn node_id_parse_garbage(s in ".{0,80}") {
            let _ = s.parse::<NodeId>();
        }
    }
}
