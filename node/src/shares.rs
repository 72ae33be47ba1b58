//! The node's record of capabilities: registered shares, revocations and which
//! key redeemed each invite. Kept in `shares.json` (mode `0600`).
//!
//! Every change is load → modify → save under an exclusive lock on `shares.json.lock`
//! (so a running node and `sam-node ticket` never interleave), and the save is a new
//! file fsynced, renamed over the old one, then the directory fsynced: a crash leaves
//! either the old or the new file, never half of one.
//!
//! A file that does not parse is [`LoadError::Damaged`]: the node then admits only its
//! owner (see `server.rs`), never treats it as "no shares" (that would forget every
//! revocation).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sam_protocol::ctl::ShareInfo;
use sam_protocol::{NodeId, SignedCapability};
use serde::{Deserialize, Serialize};

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

/// Why the share file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but is not a share file (truncated, garbage, hand-edited).
    #[error(
        "{path} is damaged ({reason}); fix it or restore it from a copy (deleting it would forget every revocation)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

    /// The lock file that serialises writers across processes.
    pub fn lock_path(&self) -> PathBuf {
        sibling(&self.path, ".lock")
    }

    /// Reads the file; a missing file is an empty store.
    pub fn load(&self) -> Result<ShareFile, LoadError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LoadError::Damaged {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShareFile::default()),
            Err(source) => Err(LoadError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Load, apply `f`, save: all under the exclusive file lock. A damaged file is
    /// never overwritten (the error says so).
    pub fn update<R>(&self, f: impl FnOnce(&mut ShareFile) -> R) -> Result<R> {
        let _lock = self.lock()?;
        let mut file = self.load()?;
        let r = f(&mut file);
        let json = serde_json::to_vec_pretty(&file).context("serialise shares")?;
        write_durable(&self.path, &json)?;
        Ok(r)
    }

    /// Takes the exclusive lock (blocking until another writer is done).
    fn lock(&self) -> Result<fs::File> {
        let path = self.lock_path();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let mut opts = fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts
            .open(&path)
            .with_context(|| format!("open the lock file {}", path.display()))?;
        file.lock()
            .with_context(|| format!("lock {}", path.display()))?;
        Ok(file)
    }

    /// Copies the (damaged) file to `shares.json.corrupt-<unix seconds>` and returns
    /// that path. The original stays in place, so the node stays closed to everyone
    /// but the owner after a restart too, until someone repairs it.
    pub fn keep_damaged_copy(&self) -> Result<PathBuf> {
        let ts = crate::now_secs();
        let mut aside = sibling(&self.path, &format!(".corrupt-{ts}"));
        let mut n = 1;
        while aside.exists() {
            aside = sibling(&self.path, &format!(".corrupt-{ts}-{n}"));
            n += 1;
        }
        let bytes =
            fs::read(&self.path).with_context(|| format!("read {}", self.path.display()))?;
        write_durable(&aside, &bytes)?;
        Ok(aside)
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content: a
/// `0600` temp file in the same directory, fsynced, renamed over `path`, then the
/// directory fsynced (so the rename itself is on disk). The temp file is removed when
/// any step fails (a full disk must not keep a half-written copy).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = sibling(path, &format!(".tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot save {}", path.display()));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    Ok(())
}
