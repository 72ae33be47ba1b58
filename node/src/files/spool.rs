//! A download's tar drained from Docker at disk speed, sent to the peer at its own pace.
//!
//! dockerd holds a container's lock for as long as an archive stream
//! (`GET /containers/{id}/archive`) of it is open, and every `docker exec` and inspect of
//! that container waits for the lock. Streamed straight to the peer, a download held it
//! for as long as the peer took to read it: while one user fetched a big file over a slow
//! link, everyone's new terminals, file listings, port-forward connections and agent
//! sessions in that workspace hung (seen in the churn test: an HTTP download through a
//! forwarded port got no byte for minutes while `sam files get` fetched 1 GiB).
//!
//! So the node reads Docker's tar as fast as Docker writes it into a spool file (in
//! `<home>/downloads`, `0700`; the file `0600` and unlinked as soon as it is open, so
//! nothing stays behind even after a crash) and the peer's stream follows it from there.
//! Docker's lock is then held only while Docker makes the tar. When the node's disk has
//! no room for the whole tar, the download streams from Docker as before (the lock held
//! as long as the peer reads: slower for others, never refused).

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tracing::debug;

/// Bytes read from Docker before they are written out in one go.
const WRITE_BATCH: usize = 1 << 20;
/// Largest piece the reader hands on.
const READ_CHUNK: usize = 1 << 20;
/// Room left on the disk on top of the spool.
const DISK_MARGIN: u64 = 1 << 30;

/// How far the spool is.
#[derive(Debug, Clone, Default)]
struct Progress {
    written: u64,
    /// `Some` once Docker's stream ended: `Ok` when whole, else why not.
    done: Option<Result<(), String>>,
}

/// Whether `dir`'s file system has room for `bytes` plus a margin.
fn has_room(dir: &Path, bytes: u64) -> bool {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize) >= bytes.saturating_add(DISK_MARGIN),
        Err(_) => false,
    }
}

/// An unlinked `0600` spool file in the private folder `dir` (made when missing) for up
/// to `bytes` bytes; `None` (said in the debug log) when the disk has no room for them or
/// the file cannot be made: the caller then streams as before.
pub(super) fn file_for(dir: &Path, bytes: u64) -> Option<std::fs::File> {
    // The folder first: its file system is the one measured.
    if let Err(e) = crate::config::create_private_dir(dir) {
        debug!(error = %e, "cannot make a spool folder; streaming instead");
        return None;
    }
    if !has_room(dir, bytes) {
        debug!(bytes, "no room to spool a transfer; streaming instead");
        return None;
    }
    match spool_file(dir) {
        Ok(f) => Some(f),
        Err(e) => {
            debug!(error = %e, "cannot make a spool file; streaming instead");
            None
        }
    }
}

/// An unlinked `0600` file in `dir`.
fn spool_file(dir: &Path) -> std::io::Result<std::fs::File> {
    let path = dir.join(format!("{:032x}.tar", rand::random::<u128>()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Docker's tar stream `tar` (at most `cap` bytes are kept; more ends the spool, and the
/// caller's own limit check sees it) as a stream read from a spool in `dir`; or `tar`
/// itself when the disk has no room for `cap` bytes.
pub fn spooled<S, E>(
    dir: &Path,
    tar: S,
    cap: u64,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let direct = |tar: S| -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>> {
        Box::pin(tar.map(|r| r.map_err(|e| e.to_string())))
    };
    let Some(file) = file_for(dir, cap) else {
        return direct(tar);
    };
    let file = Arc::new(file);
    let (tx, rx) = watch::channel(Progress::default());
    tokio::spawn(drain(Box::pin(tar), file.clone(), cap, tx));
    Box::pin(follow(file, rx))
}

/// Writes `tar` into `file` as fast as it comes, telling `tx` how far it is; stops early
/// when the reader is gone or past `cap`.
async fn drain<S, E>(mut tar: S, file: Arc<std::fs::File>, cap: u64, tx: watch::Sender<Progress>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    let mut written = 0u64;
    let end = loop {
        let next = tar.next().await;
        let last = !matches!(next, Some(Ok(_)));
        if let Some(Ok(chunk)) = &next {
            batch.extend_from_slice(chunk);
        }
        if batch.len() >= WRITE_BATCH || (last && !batch.is_empty()) {
            let data = batch.split().freeze();
            let f = file.clone();
            let len = data.len() as u64;
            let w = tokio::task::spawn_blocking(move || (&*f).write_all(&data)).await;
            match w {
                Ok(Ok(())) => written += len,
                Ok(Err(e)) => break Err(format!("spooling the download on the node: {e}")),
                Err(e) => break Err(format!("spooling the download on the node: {e}")),
            }
            if tx
                .send(Progress {
                    written,
                    done: None,
                })
                .is_err()
            {
                // The peer is gone: let go of Docker's stream (and its lock) now.
                return;
            }
        }
        match next {
            Some(Ok(_)) if written > cap => break Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(e.to_string()),
            None => break Ok(()),
        }
    };
    let _ = tx.send(Progress {
        written,
        done: Some(end),
    });
}

/// The spool's bytes in order, waiting for the writer when the reader catches up.
fn follow(
    file: Arc<std::fs::File>,
    rx: watch::Receiver<Progress>,
) -> impl Stream<Item = Result<Bytes, String>> + Send {
    futures_util::stream::unfold(
        (file, rx, 0u64, false),
        |(file, mut rx, pos, failed)| async move {
            if failed {
                return None;
            }
            let waited = rx
                .wait_for(|p| p.written > pos || p.done.is_some())
                .await
                .map(|p| p.clone());
            let p = match waited {
                Ok(p) => p,
                Err(_) => {
                    return Some((
                        Err("the spool of the download ended".to_string()),
                        (file, rx, pos, true),
                    ));
                }
            };
            if p.written > pos {
                let len = usize::try_from(p.written - pos)
                    .unwrap_or(usize::MAX)
                    .min(READ_CHUNK);
                let f = file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, pos).map(|()| buf)
                })
                .await;
                return match read {
                    Ok(Ok(buf)) => {
                        Some((Ok(Bytes::from(buf)), (file, rx, pos + len as u64, false)))
                    }
                    Ok(Err(e)) => Some((
                        Err(format!("reading the spooled download: {e}")),
                        (file, rx, pos, true),
                    )),
                    Err(e) => Some((
                        Err(format!("reading the spooled download: {e}")),
                        (file, rx, pos, true),
                    )),
                };
            }
            match p.done {
                Some(Err(e)) => Some((Err(e), (file, rx, pos, true))),
                _ => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize, size: usize) -> Vec<Result<Bytes, String>> {
        (0..n)
            .map(|i| Ok(Bytes::from(vec![(i % 251) as u8; size])))
            .collect()
    }

    async fn collect(
        s: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
    ) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn the_spool_gives_every_byte_in_order_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = chunks(300, 7_777);
        let want: Vec<u8> = input
            .iter()
            .flat_map(|c| c.as_ref().expect("ok").to_vec())
            .collect();
        let s = spooled(
            dir.path(),
            futures_util::stream::iter(input),
            want.len() as u64,
        );
        let (got, err) = collect(s).await;
        assert_eq!(err, None);
        assert_eq!(got, want);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the spool file is unlinked"
        );
    }

    #[tokio::test]
    async fn docker_errors_reach_the_reader_after_the_bytes_before_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut input = chunks(3, 1000);
        input.push(Err("docker broke".into()));
        input.extend(chunks(2, 1000));
        let s = spooled(dir.path(), futures_util::stream::iter(input), 1 << 20);
        let (got, err) = collect(s).await;
        assert_eq!(got.len(), 3000);
        assert_eq!(err.as_deref(), Some("docker broke"));
    }

    #[tokio::test]
    async fn the_drain_stops_past_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An endless tar: the spool must stop soon after the cap, not fill the disk.
        let endless =
            futures_util::stream::repeat_with(|| Ok::<_, String>(Bytes::from(vec![1u8; 4096])));
        let s = spooled(dir.path(), Box::pin(endless), 3 << 20);
        let (got, err) = collect(s).await;
        assert_eq!(err, None);
        assert!(
            got.len() as u64 > 3 << 20 && (got.len() as u64) < (3 << 20) + 2 * WRITE_BATCH as u64
        );
    }
}
