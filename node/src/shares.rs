//! The node's record of capabilities: registered shares, revocations and which
//! key redeemed each invite. Kept in `shares.json` (mode `0600`); every change is
//! load → modify → atomic save, so `sam-node ticket` and a running node agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sam_protocol::ctl::ShareInfo;
use sam_protocol::{NodeId, SignedCapability};
use serde::{Deserialize, Serialize};

use crate::config::write_private;

/// One capability the node knows of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRecord {
    pub capability: SignedCapability,
    pub redeemed_by: Option<NodeId>,
    pub revoked: bool,
}

/// The contents of `shares.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareFile {
    #[serde(default)]
    pub shares: Vec<ShareRecord>,
    /// Revoked ids of capabilities that were never registered here (hex).
    #[serde(default)]
    pub revoked_unknown: Vec<String>,
}

impl ShareFile {
    pub fn revoked_set(&self) -> BTreeSet<[u8; 16]> {
        let mut set: BTreeSet<[u8; 16]> = self
            .shares
            .iter()
            .filter(|s| s.revoked)
            .map(|s| s.capability.cap.id)
            .collect();
        set.extend(
            self.revoked_unknown
                .iter()
                .filter_map(|h| sam_protocol::capability::parse_id(h).ok()),
        );
        set
    }

    pub fn redeemed_map(&self) -> BTreeMap<[u8; 16], NodeId> {
        self.shares
            .iter()
            .filter_map(|s| s.redeemed_by.map(|k| (s.capability.cap.id, k)))
            .collect()
    }

    /// Adds (or keeps) a capability.
    pub fn register(&mut self, cap: SignedCapability) {
        if !self
            .shares
            .iter()
            .any(|s| s.capability.cap.id == cap.cap.id)
        {
            self.shares.push(ShareRecord {
                capability: cap,
                redeemed_by: None,
                revoked: false,
            });
        }
    }

    /// Marks `id` revoked. Returns whether it was a registered share.
    pub fn revoke(&mut self, id: [u8; 16]) -> bool {
        if let Some(s) = self.shares.iter_mut().find(|s| s.capability.cap.id == id) {
            s.revoked = true;
            true
        } else {
            let hex = sam_protocol::capability::id_hex(&id);
            if !self.revoked_unknown.contains(&hex) {
                self.revoked_unknown.push(hex);
            }
            false
        }
    }

    /// Binds an invite to the key that redeemed it, registering it if needed.
    pub fn redeem(&mut self, cap: &SignedCapability, peer: NodeId) {
        self.register(cap.clone());
        if let Some(s) = self
            .shares
            .iter_mut()
            .find(|s| s.capability.cap.id == cap.cap.id)
        {
            s.redeemed_by.get_or_insert(peer);
        }
    }

    pub fn infos(&self) -> Vec<ShareInfo> {
        self.shares
            .iter()
            .map(|s| ShareInfo {
                capability: s.capability.cap.clone(),
                redeemed_by: s.redeemed_by,
                revoked: s.revoked,
            })
            .collect()
    }
}

/// `shares.json` on disk.
#[derive(Debug, Clone)]
pub struct ShareStore {
    path: PathBuf,
}

impl ShareStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is an empty store.
    pub fn load(&self) -> Result<ShareFile> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; fix or move it aside (all shares would be lost if deleted)",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShareFile::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    /// Load, apply `f`, save.
    pub fn update<R>(&self, f: impl FnOnce(&mut ShareFile) -> R) -> Result<R> {
        let mut file = self.load()?;
        let r = f(&mut file);
        let json = serde_json::to_vec_pretty(&file).context("serialise shares")?;
        write_private(&self.path, &json)?;
        Ok(r)
    }
}
