//! `sam/file/1`: whole files and directories as tar streams, straight from and to
//! Docker's archive API (`GET`/`PUT /containers/{id}/archive`), which already
//! streams tar: the node only checks paths and limits and copies bytes.
//!
//! A resumable download ([`FileOpen::DownloadFrom`]) asks Docker for the same tar again
//! and skips the bytes the client already has (Docker's tar of unchanged files is the
//! same bytes: no access or change times); the SHA-256 of the whole tar, sent at the end,
//! lets the client check that what it joined is one unchanged stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::{
    DownloadFrame, DownloadInfo, FileOpen, MAX_DOWNLOAD_CHUNK, MAX_TRANSFER_BYTES,
    MAX_TRANSFER_FILES, OpenReply, UploadAt, UploadPlan,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tracing::debug;

use super::path;
use crate::inside::{check_role, docker_err, run};
use crate::server::{Node, Session};
use crate::streams::{reply, serve_connection};
use sam_protocol::wire::{read_bounded, write_frame};

/// Tar headers and padding allowed on top of the content size.
const TAR_SLACK_PER_ENTRY: u64 = 3 * 512;

/// Serves `sam/file/1`.
#[derive(Debug, Clone)]
pub struct FileHandler {
    node: Node,
    stages: Stages,
}

/// One lock per staged upload: a resumed stream waits until the stream it replaces has
/// let go of the file.
type Stages = Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// A staged upload not touched for this long is removed (at the next resumable upload).
const STAGE_TTL: Duration = Duration::from_secs(3600);

impl FileHandler {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            stages: Stages::default(),
        }
    }
}

impl ProtocolHandler for FileHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let stages = self.stages.clone();
        serve_connection(&self.node, conn, move |node, session, send, recv| {
            let stages = stages.clone();
            async move { serve_stream(node, session, stages, send, recv).await }
        })
        .await;
        Ok(())
    }
}

/// Refuses transfers over the limits, naming them.
pub fn check_limits(size: u64, count: u64) -> Result<(), ErrorBody> {
    if size > MAX_TRANSFER_BYTES {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!("{size} bytes is over the transfer limit of {MAX_TRANSFER_BYTES} bytes"),
        ));
    }
    if count > MAX_TRANSFER_FILES {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!("{count} files is over the transfer limit of {MAX_TRANSFER_FILES} files"),
        ));
    }
    Ok(())
}

async fn serve_stream(
    node: Node,
    session: Arc<Session>,
    stages: Stages,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let open = match read_bounded::<FileOpen>(&mut recv).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("bad file header ({e}); is one side a newer version?");
            reply(&mut send, Err(ErrorBody::new(ErrorCode::BadRequest, msg))).await;
            return;
        }
    };
    let result = match open {
        FileOpen::Download { workspace, path } => {
            download(&node, &session, &workspace, &path, None, &mut send).await
        }
        FileOpen::DownloadFrom {
            workspace,
            path,
            from,
        } => download(&node, &session, &workspace, &path, Some(from), &mut send).await,
        FileOpen::Upload {
            workspace,
            path,
            name,
            size,
            count,
        } => {
            let up = Upload {
                workspace: &workspace,
                path: &path,
                name: &name,
                size,
                count,
            };
            upload(&node, &session, up, None, &mut send, recv).await
        }
        FileOpen::UploadFrom {
            workspace,
            path,
            name,
            size,
            count,
            upload: id,
        } => {
            let up = Upload {
                workspace: &workspace,
                path: &path,
                name: &name,
                size,
                count,
            };
            let staged = Some((stages, id));
            upload(&node, &session, up, staged, &mut send, recv).await
        }
    };
    if let Err(e) = result {
        reply(&mut send, Err(e)).await;
    }
}

/// Errors before the tar starts are answered with an `OpenReply::Error`.
async fn download(
    node: &Node,
    session: &Session,
    workspace: &str,
    p: &str,
    from: Option<u64>,
    send: &mut SendStream,
) -> Result<(), ErrorBody> {
    node.recheck(&session.grant)?;
    check_role(
        &session.grant,
        Role::Collaborator,
        workspace,
        "downloading files",
    )?;
    let (docker, t) = crate::inside::target(node, workspace).await?;
    let resolved = super::resolve(&docker, &t, &[p]).await?.remove(0);
    let script = r#"p="$1"
if [ -d "$p" ]; then printf 'd\t%s\t%s\n' "$(du -sb -- "$p" | cut -f1)" "$(find "$p" | wc -l)"
elif [ -e "$p" ]; then printf 'f\t%s\t1\n' "$(stat -L -c %s -- "$p")"
else echo "No such file or directory: $p" >&2; exit 2; fi"#;
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        resolved.clone(),
    ];
    let out = run(&docker, &t, Some(&t.user), cmd, 4096).await?;
    if out.exit != 0 {
        return Err(super::failed(&format!("cannot download {p:?}"), &out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.trim().split('\t');
    let bad = || {
        ErrorBody::new(
            ErrorCode::Internal,
            format!("unexpected size output {text:?}"),
        )
    };
    let is_dir = f.next().ok_or_else(bad)? == "d";
    let size: u64 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let count: u64 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    check_limits(size, count)?;
    if !reply(send, Ok(())).await {
        return Ok(());
    }
    let info = DownloadInfo {
        path: resolved.clone(),
        is_dir,
        size,
        count,
    };
    if write_frame(send, &info).await.is_err() {
        return Ok(());
    }
    debug!(path = %resolved, size, count, "download");
    let opts = bollard::query_parameters::DownloadFromContainerOptions { path: resolved };
    // The size was measured just before; growth while streaming is bounded too.
    let cap = size
        .saturating_mul(2)
        .max(1 << 20)
        .saturating_add(count.saturating_mul(TAR_SLACK_PER_ENTRY))
        .min(MAX_TRANSFER_BYTES + MAX_TRANSFER_FILES * TAR_SLACK_PER_ENTRY);
    // Drained from Docker at disk speed: dockerd locks the container while its archive
    // stream is open (super::spool).
    let mut tar = super::spool::spooled(
        &node.home().join("downloads"),
        docker.download_from_container(&t.container_id, Some(opts)),
        cap,
    );
    if let Some(from) = from {
        send_from(&mut tar, from, cap, send).await;
        return Ok(());
    }
    let mut sent = 0u64;
    while let Some(chunk) = tar.next().await {
        let Ok(chunk) = chunk else {
            let _ = send.reset(1u32.into());
            return Ok(());
        };
        sent += chunk.len() as u64;
        if sent > cap || send.write_chunk(chunk).await.is_err() {
            let _ = send.reset(1u32.into());
            return Ok(());
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    Ok(())
}

/// Sends `tar` from byte `from` on in [`DownloadFrame`]s, hashing all of it, and ends
/// with the hash (or an error frame).
async fn send_from<S>(tar: &mut S, from: u64, cap: u64, send: &mut SendStream)
where
    S: futures_util::Stream<Item = Result<Bytes, String>> + Unpin,
{
    let mut hash = Sha256::new();
    let mut at = 0u64;
    let mut head = Vec::with_capacity(8);
    let fail = |msg: String| {
        let mut out = Vec::new();
        DownloadFrame::Error(msg).encode(&mut out);
        Bytes::from(out)
    };
    while let Some(chunk) = tar.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = send
                    .write_chunk(fail(format!("reading the files failed: {e}")))
                    .await;
                let _ = send.finish();
                return;
            }
        };
        hash.update(&chunk);
        let end = at + chunk.len() as u64;
        if end > cap {
            let _ = send
                .write_chunk(fail("the files grew past the size measured before".into()))
                .await;
            let _ = send.finish();
            return;
        }
        // The part of this chunk at or after `from`.
        let skip = usize::try_from(from.saturating_sub(at))
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        at = end;
        let mut rest = chunk.slice(skip..);
        while !rest.is_empty() {
            let part = rest.split_to(rest.len().min(MAX_DOWNLOAD_CHUNK));
            head.clear();
            DownloadFrame::data_header(part.len(), &mut head);
            if send.write_all(&head).await.is_err() || send.write_chunk(part).await.is_err() {
                return;
            }
        }
    }
    let mut out = Vec::with_capacity(33);
    if from > at {
        DownloadFrame::Error(format!(
            "cannot resume at byte {from}: the download is {at} bytes now (it changed)"
        ))
        .encode(&mut out);
    } else {
        DownloadFrame::End(hash.finalize().into()).encode(&mut out);
    }
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    }
}

struct Upload<'a> {
    workspace: &'a str,
    path: &'a str,
    name: &'a str,
    size: u64,
    count: u64,
}

async fn upload(
    node: &Node,
    session: &Session,
    up: Upload<'_>,
    staged: Option<(Stages, [u8; 16])>,
    send: &mut SendStream,
    recv: RecvStream,
) -> Result<(), ErrorBody> {
    node.recheck(&session.grant)?;
    check_role(
        &session.grant,
        Role::Collaborator,
        up.workspace,
        "uploading files",
    )?;
    check_limits(up.size, up.count)?;
    if up.name.is_empty()
        || up.name == "."
        || up.name == ".."
        || up.name.contains(['/', '\0'])
        || up.name.len() > 255
    {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{:?} is not a file name", up.name),
        ));
    }
    let (docker, t) = crate::inside::target(node, up.workspace).await?;
    let resolved = super::resolve(&docker, &t, &[up.path]).await?.remove(0);
    // An existing directory receives the upload under its own name; else the
    // upload becomes the path itself, in an existing parent directory.
    let script = r#"if [ -d "$1" ]; then echo dir; elif [ -d "$(dirname -- "$1")" ]; then echo new; else echo "No such directory: $(dirname -- "$1")" >&2; exit 2; fi"#;
    let cmd = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        resolved.clone(),
    ];
    let out = run(&docker, &t, Some(&t.user), cmd, 4096).await?;
    if out.exit != 0 {
        return Err(super::failed(
            &format!("cannot upload to {:?}", up.path),
            &out,
        ));
    }
    let (dir, top) = if String::from_utf8_lossy(&out.stdout).trim() == "dir" {
        (resolved.clone(), up.name.to_string())
    } else {
        if resolved == t.root {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "cannot replace the workspace root",
            ));
        }
        (
            path::parent(&resolved).to_string(),
            path::file_name(&resolved).to_string(),
        )
    };
    let dest = if dir == "/" {
        format!("/{top}")
    } else {
        format!("{dir}/{top}")
    };
    if !reply(send, Ok(())).await {
        return Ok(());
    }
    let plan = UploadPlan {
        top_name: top,
        dest: dest.clone(),
    };
    if write_frame(send, &plan).await.is_err() {
        return Ok(());
    }
    let cap = up
        .size
        .saturating_add((up.count + 2).saturating_mul(TAR_SLACK_PER_ENTRY))
        .saturating_add(1 << 20);
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over2 = over.clone();
    let mut stage_file = None;
    let body = if let Some((stages, id)) = staged {
        let stage = Stage::new(node, &session.grant.peer, &stages, id)?;
        match stage.receive(cap, send, recv).await {
            Ok(Some(file)) => {
                stage_file = Some(stage.path.clone());
                read_file(file).boxed()
            }
            // The link was lost: what arrived waits for the resume.
            Ok(None) => return Ok(()),
            Err(e) => {
                stage.remove();
                let _ = write_frame(send, &OpenReply::Error(e)).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                return Ok(());
            }
        }
    } else if let Some(file) = super::spool::file_for(&node.home().join("uploads"), cap) {
        // Received whole before Docker sees it: dockerd locks the container for as long
        // as an archive upload's body takes, and a peer that sends slowly (or stops)
        // would freeze every `docker exec` in the workspace meanwhile (super::spool).
        match receive_whole(recv, file, cap, &over).await {
            Ok(file) => read_file(file).boxed(),
            Err(e) => {
                return Err(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("cannot keep the upload on the node: {e}"),
                ));
            }
        }
    } else {
        futures_util::stream::unfold((recv, 0u64), move |(mut recv, seen)| {
            let over = over2.clone();
            async move {
                match recv.read_chunk(256 * 1024).await {
                    Ok(Some(c)) => {
                        let seen = seen + c.len() as u64;
                        if seen > cap {
                            over.store(true, std::sync::atomic::Ordering::Relaxed);
                            let _ = recv.stop(1u32.into());
                            return None;
                        }
                        Some((c, (recv, seen)))
                    }
                    _ => None,
                }
            }
        })
        .boxed()
    };
    let opts = bollard::query_parameters::UploadToContainerOptions {
        path: dir,
        no_overwrite_dir_non_dir: Some("true".into()),
        copy_uidgid: None,
    };
    let result = docker
        .upload_to_container(&t.container_id, Some(opts), bollard::body_stream(body))
        .await;
    if let Some(p) = stage_file {
        let _ = std::fs::remove_file(p);
    }
    let final_reply = if over.load(std::sync::atomic::Ordering::Relaxed) {
        Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "the upload sent more than the {} bytes it announced",
                up.size
            ),
        ))
    } else {
        match result {
            Err(e) => Err(docker_err("cannot unpack the upload in the workspace", e)),
            Ok(()) => chown(&docker, &t, &dest).await,
        }
    };
    debug!(dest = %dest, ok = final_reply.is_ok(), "upload");
    let msg = match final_reply {
        Ok(()) => OpenReply::Ok,
        Err(e) => OpenReply::Error(e),
    };
    let _ = write_frame(send, &msg).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    Ok(())
}

/// A resumable upload's bytes on the node's disk (`<home>/uploads/<peer>-<id>.tar`,
/// `0600` in a `0700` folder) until they are complete and checked.
struct Stage {
    path: std::path::PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Stage {
    fn new(
        node: &Node,
        peer: &sam_protocol::NodeId,
        stages: &Stages,
        id: [u8; 16],
    ) -> Result<Self, ErrorBody> {
        let dir = node.home().join("uploads");
        crate::config::create_private_dir(&dir).map_err(|e| {
            ErrorBody::new(ErrorCode::Internal, format!("cannot keep uploads: {e:#}"))
        })?;
        sweep(&dir);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        // The peer is part of the name: nobody resumes (or reads) another peer's upload.
        let key = format!("{peer}-{hex}");
        let lock = stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        Ok(Self {
            path: dir.join(format!("{key}.tar")),
            lock,
        })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Tells the client where to go on, appends what it sends, and checks the end: the
    /// file, rewound, when complete and its hash matches; `None` when the link was lost.
    async fn receive(
        &self,
        cap: u64,
        send: &mut SendStream,
        mut recv: RecvStream,
    ) -> Result<Option<tokio::fs::File>, ErrorBody> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let io = |e: std::io::Error| {
            ErrorBody::new(ErrorCode::Internal, format!("cannot keep the upload: {e}"))
        };
        let _guard = tokio::time::timeout(Duration::from_secs(30), self.lock.clone().lock_owned())
            .await
            .map_err(|_| {
                ErrorBody::new(
                    ErrorCode::Conflict,
                    "this upload is still being received on another stream",
                )
            })?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .await
            .map_err(io)?;
        let mut at = file.metadata().await.map_err(io)?.len();
        let too_large = || {
            ErrorBody::new(
                ErrorCode::TooLarge,
                "the upload sent more than the bytes it announced",
            )
        };
        if at > cap {
            return Err(too_large());
        }
        if write_frame(send, &UploadAt { at }).await.is_err() {
            return Ok(None);
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            loop {
                let (frame, used) = match DownloadFrame::decode(&buf) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("bad upload frame: {e}"),
                        ));
                    }
                };
                match frame {
                    DownloadFrame::Data(d) => {
                        at += d.len() as u64;
                        if at > cap {
                            return Err(too_large());
                        }
                        file.write_all(d).await.map_err(io)?;
                    }
                    DownloadFrame::End(theirs) => {
                        file.flush().await.map_err(io)?;
                        let path = self.path.clone();
                        let ours = tokio::task::spawn_blocking(move || sha256_of(&path))
                            .await
                            .map_err(|e| io(std::io::Error::other(e)))?
                            .map_err(io)?;
                        if ours != theirs {
                            return Err(ErrorBody::new(
                                ErrorCode::BadRequest,
                                "the upload's SHA-256 does not match the bytes that arrived; nothing was unpacked: upload it again",
                            ));
                        }
                        file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                        return Ok(Some(file));
                    }
                    DownloadFrame::Error(m) => {
                        return Err(ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!("the client gave the upload up: {m}"),
                        ));
                    }
                }
                let _ = buf.split_to(used);
            }
            match recv.read_chunk(256 * 1024).await {
                Ok(Some(c)) => buf.extend_from_slice(&c),
                // Cut off before its end: keep what arrived for a resume.
                _ => {
                    let _ = file.flush().await;
                    return Ok(None);
                }
            }
        }
    }
}

fn sha256_of(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Removes staged uploads nobody resumed within [`STAGE_TTL`].
fn sweep(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STAGE_TTL);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes what the peer sends into `file` (unlinked) until the stream ends or passes
/// `cap` (then `over` is set and the rest refused, as the streamed path does); the file,
/// rewound.
async fn receive_whole(
    mut recv: RecvStream,
    file: std::fs::File,
    cap: u64,
    over: &std::sync::atomic::AtomicBool,
) -> std::io::Result<tokio::fs::File> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let mut f = tokio::fs::File::from_std(file);
    let mut seen = 0u64;
    while let Ok(Some(c)) = recv.read_chunk(256 * 1024).await {
        seen += c.len() as u64;
        if seen > cap {
            over.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = recv.stop(1u32.into());
            break;
        }
        f.write_all(&c).await?;
    }
    f.flush().await?;
    f.seek(std::io::SeekFrom::Start(0)).await?;
    Ok(f)
}

/// The bytes of `file` as a body stream.
fn read_file(file: tokio::fs::File) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buf).await {
            Ok(n) if n > 0 => Some((buf.freeze(), file)),
            _ => None,
        }
    })
}

/// Uploaded files belong to the workspace user, not to whoever the tar named.
async fn chown(
    docker: &bollard::Docker,
    t: &crate::inside::Target,
    dest: &str,
) -> Result<(), ErrorBody> {
    if t.user.is_empty() || t.user == "root" || t.user == "0" {
        return Ok(());
    }
    let cmd = vec![
        "chown".into(),
        "-R".into(),
        "-h".into(),
        format!("{}:", t.user),
        dest.into(),
    ];
    let out = run(docker, t, None, cmd, 4096).await?;
    if out.exit != 0 {
        return Err(super::failed(
            "cannot hand the upload to the workspace user",
            &out,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_numbers() {
        assert!(check_limits(1, 1).is_ok());
        let e = check_limits(MAX_TRANSFER_BYTES + 1, 1).expect_err("too big");
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("transfer limit"), "{}", e.message);
        let e = check_limits(1, MAX_TRANSFER_FILES + 1).expect_err("too many");
        assert!(e.message.contains("files"), "{}", e.message);
    }
}
