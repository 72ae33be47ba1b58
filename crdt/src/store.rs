//! Crash-safe persistence of conversations with `std::fs`.
//!
//! Per document `<id>` the store keeps, in its directory:
//! - `<id>.am`: a full Automerge save (a plain Automerge file any implementation can load),
//!   replaced atomically (write `<id>.am.tmp`, fsync, rename, fsync the directory);
//! - `<id>.log`: an append-only log of incremental saves, each record length-prefixed and
//!   CRC-32 checked (see `store/log.rs`), truncated after each compaction.
//!
//! Loading reads the snapshot then replays the log. A torn last record (a write cut by
//! `kill -9` or power loss) is cut off, after copying the torn bytes aside; any other damage
//! moves the file aside to `<name>.corrupt-<unix-ts>` and returns [`CrdtError::Corrupt`].
//! Nothing is ever deleted except by [`DocStore::remove`].

mod log;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use automerge::{AutoCommit, ChangeHash};

use crate::ids::validate_doc_id;
use crate::{Conversation, CrdtError};

/// When [`DocStore::append`] calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append: a change is durable once `append` returns (the node's default: it
    /// acknowledges a chunk only after that).
    Always,
    /// After every `n` appends (and on compaction): up to `n - 1` appends may be lost on a
    /// power failure (not on a process crash: the data is in the OS page cache).
    EveryN(u32),
    /// Never on append (compaction still fsyncs); for tests and caches.
    Never,
}

/// Options of a [`DocStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Durability of appends.
    pub fsync: FsyncPolicy,
    /// Compact (rewrite the snapshot, truncate the log) when the log grows past this size.
    ///
    /// The store also compacts as soon as the log is larger than both the snapshot and
    /// [`MIN_RELATIVE_COMPACTION_BYTES`]: replaying a log is several times slower per byte than
    /// loading a snapshot (each record holds full Automerge changes), so this bounds the extra
    /// cold-load time to about one snapshot load, at an amortized cost of one `save` per
    /// snapshot-size of appended changes.
    pub compact_after_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            compact_after_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The log is never compacted for being larger than the snapshot below this size.
pub const MIN_RELATIVE_COMPACTION_BYTES: u64 = 256 * 1024;

struct OpenDoc {
    saved_heads: Vec<ChangeHash>,
    /// Size of `<id>.am` (0 if none).
    snapshot_len: u64,
    log: File,
    log_len: u64,
    unsynced: u32,
}

/// A directory of conversation documents.
pub struct DocStore {
    dir: PathBuf,
    opts: StoreOptions,
    open: HashMap<String, OpenDoc>,
}

impl std::fmt::Debug for DocStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocStore")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CrdtError + use<> {
    let path = path.to_owned();
    move |source| CrdtError::Io { op, path, source }
}

fn unix_ts() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Moves `path` to `<path>.corrupt-<unix-ts>[-n]` and returns the new path.
fn move_aside(path: &Path) -> Result<PathBuf, CrdtError> {
    let ts = unix_ts();
    let mut n = 0u32;
    loop {
        let suffix = if n == 0 {
            format!(".corrupt-{ts}")
        } else {
            format!(".corrupt-{ts}-{n}")
        };
        let mut target = path.as_os_str().to_owned();
        target.push(suffix);
        let target = PathBuf::from(target);
        if !target.exists() {
            fs::rename(path, &target).map_err(io("move aside", path))?;
            tracing::error!(
                "moved corrupt file {} to {}",
                path.display(),
                target.display()
            );
            return Ok(target);
        }
        n += 1;
    }
}

impl DocStore {
    /// Opens (creating if needed) a store rooted at `dir`.
    pub fn open(dir: impl Into<PathBuf>, opts: StoreOptions) -> Result<Self, CrdtError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        private_dir(&dir).map_err(io("make private", &dir))?;
        Ok(Self {
            dir,
            opts,
            open: HashMap::new(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.am"))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// True if the store has files for `id`.
    pub fn contains(&self, id: &str) -> Result<bool, CrdtError> {
        validate_doc_id(id)?;
        Ok(self.snapshot_path(id).exists() || self.log_path(id).exists())
    }

    /// Ids of the stored documents, sorted.
    pub fn list(&self) -> Result<Vec<String>, CrdtError> {
        let mut ids = std::collections::BTreeSet::new();
        for entry in fs::read_dir(&self.dir).map_err(io("read directory", &self.dir))? {
            let entry = entry.map_err(io("read directory", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stem = name
                .strip_suffix(".am")
                .or_else(|| name.strip_suffix(".log"));
            if let Some(stem) = stem
                && validate_doc_id(stem).is_ok()
            {
                ids.insert(stem.to_owned());
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Deletes a document's files.
    pub fn remove(&mut self, id: &str) -> Result<(), CrdtError> {
        validate_doc_id(id)?;
        self.open.remove(id);
        let mut found = false;
        for p in [self.snapshot_path(id), self.log_path(id)] {
            match fs::remove_file(&p) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
        }
        if found {
            self.fsync_dir()?;
            Ok(())
        } else {
            Err(CrdtError::NotFound(id.to_owned()))
        }
    }

    fn fsync_dir(&self) -> Result<(), CrdtError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", &self.dir))
    }

    /// Persists the changes of `conv` not yet in the store (the first time: a full snapshot),
    /// fsyncs per the [`FsyncPolicy`], and compacts when the log is large. Returns the number of
    /// bytes written.
    pub fn append(&mut self, conv: &mut Conversation) -> Result<usize, CrdtError> {
        let id = conv.id();
        self.append_as(&id, conv)
    }

    /// [`Self::append`] for a document held under `id` (the id of the stream it arrived on,
    /// the file it was loaded from): refused with [`CrdtError::IdMismatch`], writing nothing,
    /// when the document's own `id` field says otherwise, so a peer that rewrites `id` can
    /// never make the store file its document over another one.
    pub fn append_as(&mut self, id: &str, conv: &mut Conversation) -> Result<usize, CrdtError> {
        let found = conv.id();
        if found != id {
            return Err(CrdtError::IdMismatch {
                expected: id.to_owned(),
                found,
            });
        }
        let id = found;
        validate_doc_id(&id).map_err(|_| CrdtError::EmptyReplica)?;
        if !self.open.contains_key(&id) {
            if !self.contains(&id)? {
                return self.compact(conv);
            }
            // Files exist but were not loaded by this store: append everything; duplicate
            // changes are ignored by Automerge when loading.
            let all = conv.save();
            let n = self.write_record(&id, &all, conv.heads())?;
            return Ok(n);
        }
        let saved = self
            .open
            .get(&id)
            .map(|d| d.saved_heads.clone())
            .unwrap_or_default();
        let heads = conv.heads();
        if heads == saved {
            return Ok(0);
        }
        let bytes = conv.save_after(&saved);
        let n = self.write_record(&id, &bytes, heads)?;
        let too_big = self.open.get(&id).is_some_and(|d| {
            d.log_len > self.opts.compact_after_bytes
                || (d.log_len > MIN_RELATIVE_COMPACTION_BYTES && d.log_len > d.snapshot_len)
        });
        if too_big {
            self.compact(conv)?;
        }
        Ok(n)
    }

    fn open_log(&mut self, id: &str) -> Result<&mut OpenDoc, CrdtError> {
        if !self.open.contains_key(id) {
            let path = self.log_path(id);
            let mut log = private_file()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io("open log", &path))?;
            let mut len = log.metadata().map_err(io("stat log", &path))?.len();
            let snapshot_len = fs::metadata(self.snapshot_path(id))
                .map(|m| m.len())
                .unwrap_or(0);
            if len == 0 {
                log.write_all(log::MAGIC).map_err(io("write log", &path))?;
                len = log::MAGIC.len() as u64;
            }
            self.open.insert(
                id.to_owned(),
                OpenDoc {
                    saved_heads: Vec::new(),
                    snapshot_len,
                    log,
                    log_len: len,
                    unsynced: 0,
                },
            );
        }
        self.open
            .get_mut(id)
            .ok_or_else(|| CrdtError::NotFound(id.to_owned()))
    }

    fn write_record(
        &mut self,
        id: &str,
        payload: &[u8],
        heads: Vec<ChangeHash>,
    ) -> Result<usize, CrdtError> {
        let path = self.log_path(id);
        let record = log::encode_record(payload).ok_or_else(|| {
            CrdtError::InvalidArgument(format!("change batch of {} bytes too large", payload.len()))
        })?;
        let fsync = self.opts.fsync;
        let d = self.open_log(id)?;
        d.log.write_all(&record).map_err(io("write log", &path))?;
        d.log_len += record.len() as u64;
        d.unsynced += 1;
        let sync = match fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => d.unsynced >= n.max(1),
            FsyncPolicy::Never => false,
        };
        if sync {
            d.log.sync_data().map_err(io("fsync log", &path))?;
            d.unsynced = 0;
        }
        d.saved_heads = heads;
        Ok(record.len())
    }

    /// Rewrites `<id>.am` from `conv` atomically and empties the log. Returns bytes written.
    pub fn compact(&mut self, conv: &mut Conversation) -> Result<usize, CrdtError> {
        let id = conv.id();
        validate_doc_id(&id).map_err(|_| CrdtError::EmptyReplica)?;
        let bytes = conv.save();
        let heads = conv.heads();
        let path = self.snapshot_path(&id);
        let tmp = self.dir.join(format!("{id}.am.tmp"));
        {
            let mut f = private_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(&bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        self.fsync_dir()?;
        let log_path = self.log_path(&id);
        let d = self.open_log(&id)?;
        d.log.set_len(0).map_err(io("truncate log", &log_path))?;
        d.log
            .write_all(log::MAGIC)
            .map_err(io("write log", &log_path))?;
        d.log.sync_all().map_err(io("fsync log", &log_path))?;
        d.log_len = log::MAGIC.len() as u64;
        d.unsynced = 0;
        d.saved_heads = heads;
        d.snapshot_len = bytes.len() as u64;
        Ok(bytes.len())
    }

    /// Flushes pending appends to disk (for [`FsyncPolicy::EveryN`] / [`FsyncPolicy::Never`]).
    pub fn flush(&mut self) -> Result<(), CrdtError> {
        for (id, d) in &mut self.open {
            if d.unsynced > 0 {
                let p = self.dir.join(format!("{id}.log"));
                d.log.sync_data().map_err(io("fsync log", &p))?;
                d.unsynced = 0;
            }
        }
        Ok(())
    }

    /// Loads a document: snapshot, then every valid log record; checks the schema.
    pub fn load(&mut self, id: &str) -> Result<Conversation, CrdtError> {
        validate_doc_id(id)?;
        let snap = self.snapshot_path(id);
        let log_path = self.log_path(id);
        if !snap.exists() && !log_path.exists() {
            return Err(CrdtError::NotFound(id.to_owned()));
        }
        self.open.remove(id);
        let mut doc = if snap.exists() {
            let bytes = fs::read(&snap).map_err(io("read", &snap))?;
            match AutoCommit::load(&bytes) {
                Ok(d) => d,
                Err(e) => return Err(corrupt("snapshot", &snap, e.to_string())?),
            }
        } else {
            AutoCommit::new()
        };
        if log_path.exists() {
            let data = fs::read(&log_path).map_err(io("read", &log_path))?;
            let scan = log::scan(&data);
            match &scan.end {
                log::ScanEnd::Clean => {}
                log::ScanEnd::TornTail(why) => {
                    tracing::warn!("{}: torn tail ({why}), truncating", log_path.display());
                    let mut aside = log_path.as_os_str().to_owned();
                    aside.push(format!(".torn-{}", unix_ts()));
                    let aside = PathBuf::from(aside);
                    private_file()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&aside)
                        .and_then(|mut f| f.write_all(&data[scan.valid_len..]))
                        .map_err(io("write", &aside))?;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&log_path)
                        .map_err(io("open log", &log_path))?;
                    f.set_len(scan.valid_len as u64)
                        .map_err(io("truncate log", &log_path))?;
                    f.sync_all().map_err(io("fsync log", &log_path))?;
                }
                log::ScanEnd::Corrupt(why) => {
                    return Err(corrupt("log", &log_path, why.clone())?);
                }
            }
            // All records in one `load_incremental`: Automerge applies the changes as one batch,
            // far cheaper than one call per record (each call has a cost that grows with the
            // document). Only if that fails, replay one by one to name the bad record.
            let all: Vec<u8> = scan.records.concat();
            let before = doc.get_heads();
            if let Err(batch_err) = doc.load_incremental(&all) {
                doc = if before.is_empty() {
                    AutoCommit::new()
                } else {
                    doc.fork_at(&before)?
                };
                tracing::warn!(
                    "{}: batched replay failed ({batch_err}), replaying records one by one",
                    log_path.display()
                );
                for (i, rec) in scan.records.iter().enumerate() {
                    if let Err(e) = doc.load_incremental(rec) {
                        return Err(corrupt("log", &log_path, format!("record {i}: {e}"))?);
                    }
                }
            }
        }
        let mut conv = match Conversation::from_automerge(doc) {
            Ok(c) => c,
            Err(e) => {
                let what = if log_path.exists() { "log" } else { "snapshot" };
                let path = if log_path.exists() { &log_path } else { &snap };
                return Err(corrupt(what, path, e.to_string())?);
            }
        };
        if conv.id() != id {
            return Err(corrupt(
                "snapshot",
                &snap,
                format!("it holds conversation {:?}", conv.id()),
            )?);
        }
        let heads = conv.heads();
        self.open_log(id)?.saved_heads = heads;
        Ok(conv)
    }
}

/// Options for a new store file: readable by the node's (or client's) user alone (`0600`).
fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// The store's directory is its user's alone (`0700`): conversations are private even
/// where files were made by an older version with wider modes.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn corrupt(what: &'static str, path: &Path, reason: String) -> Result<CrdtError, CrdtError> {
    let moved_to = move_aside(path)?;
    Ok(CrdtError::Corrupt {
        what,
        path: path.to_owned(),
        reason,
        moved_to,
    })
}
