//! Clients of the raw-byte ALPNs: terminals (`sam/pty/1`), forwarded ports
//! (`sam/port/1`) and file transfers (`sam/file/1`). Each opens a bi stream on a
//! connection made with [`crate::conn::connect`] for that ALPN.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::stream::{
    DownloadInfo, FileOpen, MAX_TRANSFER_BYTES, MAX_TRANSFER_FILES, OpenReply, PortOpen, PtyOpen,
    PtyOpened, UploadPlan,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::io::SyncIoBridge;

use sam_protocol::wire::{read_frame, write_frame};

/// Opens a stream, writes `header`, and waits for the node's [`OpenReply`].
pub async fn open_stream<H: serde::Serialize>(
    conn: &Connection,
    header: &H,
) -> Result<(SendStream, RecvStream)> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .context("cannot open a stream to the node")?;
    write_frame(&mut send, header).await?;
    match read_frame::<OpenReply>(&mut recv, MAX_FRAME).await {
        Ok(OpenReply::Ok) => Ok((send, recv)),
        Ok(OpenReply::Error(e)) => Err(anyhow!(e)),
        Err(e) => Err(anyhow!("the node closed the stream: {e}")),
    }
}

/// Attaches to a terminal. Output follows on `recv` as raw bytes; write
/// [`sam_protocol::stream::PtyFrame`]s to `send`.
pub async fn open_pty(
    conn: &Connection,
    open: &PtyOpen,
) -> Result<(PtyOpened, SendStream, RecvStream)> {
    let (send, mut recv) = open_stream(conn, open).await?;
    let opened = read_frame::<PtyOpened>(&mut recv, MAX_FRAME)
        .await
        .context("the node did not say which terminal this is")?;
    Ok((opened, send, recv))
}

/// Opens one forwarded TCP stream to `port` in `workspace`.
pub async fn open_port(
    conn: &Connection,
    workspace: &str,
    port: u16,
) -> Result<(SendStream, RecvStream)> {
    open_stream(
        conn,
        &PortOpen {
            workspace: workspace.into(),
            port,
        },
    )
    .await
}

/// Forwards every connection accepted on `listener` to `port` in `workspace`,
/// until the QUIC connection ends. Errors of one connection go to `on_error`.
/// [`crate::resume::forward`] dials again when the link is lost.
pub async fn forward(
    conn: Connection,
    workspace: String,
    port: u16,
    listener: &TcpListener,
    on_error: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<()> {
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => a.context("accepting a local connection")?,
            _ = conn.closed() => bail!("the connection to the node closed"),
        };
        let conn = conn.clone();
        let workspace = workspace.clone();
        let on_error = on_error.clone();
        tokio::spawn(async move {
            if let Err(e) = forward_one(&conn, &workspace, port, tcp).await {
                on_error(format!("{e:#}"));
            }
        });
    }
}

async fn forward_one(conn: &Connection, workspace: &str, port: u16, tcp: TcpStream) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let (mut send, mut recv) = open_port(conn, workspace, port).await?;
    let (mut tr, mut tw) = tcp.into_split();
    let (a, b) = {
        let up = std::pin::pin!(async {
            let r = copy_tcp_to_stream(&mut tr, &mut send).await;
            let _ = send.finish();
            r
        });
        let down = std::pin::pin!(async {
            let r = tokio::io::copy(&mut recv, &mut tw).await;
            // Only a clean end of the node's side ends the local connection cleanly.
            if r.is_ok() {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tw).await;
            }
            r
        });
        let (mut up, mut down) = (up, down);
        let mut a = None;
        let b = loop {
            tokio::select! {
                r = &mut up, if a.is_none() => a = Some(r),
                r = &mut down => break r,
            }
        };
        match (&b, a) {
            (Ok(_), None) => (Some(up.await), b),
            (_, a) => (a, b),
        }
    };
    if let Err(e) = b {
        // The stream broke (a lost link): the local program must not take the cut-off
        // answer for a whole one, as it would after a clean end (FIN). Reset it.
        if let Ok(tcp) = tr.reunite(tw) {
            let _ = tcp.set_zero_linger();
        }
        return Err(e).context("forwarded connection");
    }
    if let Some(a) = a {
        a?;
    }
    Ok(())
}

async fn copy_tcp_to_stream(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    send: &mut SendStream,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
    loop {
        buf.reserve(256 * 1024);
        if r.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        send.write_chunk(buf.split().freeze()).await?;
    }
}

/// What a download or upload moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transferred {
    /// Where it landed (local path for a download, container path for an upload).
    pub dest: String,
    pub is_dir: bool,
    /// Bytes of file content.
    pub size: u64,
    pub count: u64,
    /// Bytes on the wire (tar).
    pub wire_bytes: u64,
    /// SHA-256 (hex) of the whole tar, checked against the node's after a resumable
    /// download ([`crate::resume::download`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Downloads `remote` (file or directory) from `workspace` into `local`: an
/// existing local directory receives it under its remote name; else it becomes
/// `local` itself.
pub async fn download(
    conn: &Connection,
    workspace: &str,
    remote: &str,
    local: &Path,
) -> Result<Transferred> {
    let header = FileOpen::Download {
        workspace: workspace.into(),
        path: remote.into(),
    };
    let (_send, mut recv) = open_stream(conn, &header).await?;
    let info = read_frame::<DownloadInfo>(&mut recv, MAX_FRAME).await?;
    let (dir, remote_name, name) = download_dest(&info, local)?;
    let dest = dir.join(&name);
    let counted = CountingReader::new(SyncIoBridge::new(recv));
    let wire = counted.count.clone();
    let limit = download_limit(&info);
    tokio::task::spawn_blocking(move || unpack(counted, &dir, &remote_name, &name, limit))
        .await
        .context("unpacking task")??;
    Ok(Transferred {
        dest: dest.display().to_string(),
        is_dir: info.is_dir,
        size: info.size,
        count: info.count,
        wire_bytes: wire.load(std::sync::atomic::Ordering::Relaxed),
        sha256: None,
    })
}

/// Where a download lands: the local folder, the tar's top name, and the name there.
pub(crate) fn download_dest(
    info: &DownloadInfo,
    local: &Path,
) -> Result<(PathBuf, String, String)> {
    let remote_name = info
        .path
        .rsplit('/')
        .next()
        .unwrap_or("download")
        .to_string();
    if local.is_dir() {
        return Ok((local.to_path_buf(), remote_name.clone(), remote_name));
    }
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} is not a usable local path", local.display()))?
        .to_string();
    Ok((parent, remote_name, name))
}

/// Most tar bytes read for a download of `info`.
pub(crate) fn download_limit(info: &DownloadInfo) -> u64 {
    info.size
        .saturating_add(info.count.saturating_mul(2048))
        .saturating_add(1 << 20)
}

/// Unpacks a tar whose top entry is `from` into `dir`, renaming it to `to`.
pub(crate) fn unpack(
    r: impl std::io::Read,
    dir: &Path,
    from: &str,
    to: &str,
    limit: u64,
) -> Result<()> {
    let mut ar = tar::Archive::new(std::io::Read::take(r, limit));
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries().context("reading the download")? {
        let mut entry = entry.context("reading the download")?;
        let path = entry
            .path()
            .context("bad path in the download")?
            .into_owned();
        let mut comps = path.components();
        let first = comps
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        if first.as_deref() != Some(from) {
            bail!("unexpected entry {} in the download", path.display());
        }
        let rest = comps.as_path();
        let target = if rest.as_os_str().is_empty() {
            PathBuf::from(to)
        } else {
            Path::new(to).join(rest)
        };
        // unpack_in refuses paths that would leave `dir` (.., absolute, symlinked parents).
        let dest_path = dir.join(&target);
        if entry.header().entry_type().is_file() && dest_path.is_dir() {
            bail!(
                "{} is a directory; cannot write a file there",
                dest_path.display()
            );
        }
        let ok = unpack_renamed(&mut entry, dir, &target)?;
        if !ok {
            bail!(
                "refused to write {} outside {}",
                target.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn unpack_renamed<R: std::io::Read>(
    entry: &mut tar::Entry<'_, R>,
    dir: &Path,
    target: &Path,
) -> Result<bool> {
    // tar's unpack_in uses the entry's own path; write through a renamed header.
    entry.set_unpack_xattrs(false);
    let full = dir.join(target);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let canon_dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    let canon_parent = full
        .parent()
        .map(|p| p.canonicalize())
        .transpose()?
        .unwrap_or_else(|| canon_dir.clone());
    if !canon_parent.starts_with(&canon_dir) {
        return Ok(false);
    }
    // Never write through a symlink that is already there (a node could send a
    // link first and a file of the same name after it).
    if !entry.header().entry_type().is_dir()
        && std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink())
    {
        std::fs::remove_file(&full).with_context(|| format!("replace {}", full.display()))?;
    }
    entry
        .unpack(&full)
        .with_context(|| format!("write {}", full.display()))?;
    Ok(true)
}

/// Uploads `local` (file or directory) to `remote` in `workspace`: an existing
/// remote directory receives it under its local name; else it becomes `remote`.
pub async fn upload(
    conn: &Connection,
    workspace: &str,
    local: &Path,
    remote: &str,
) -> Result<Transferred> {
    let meta = std::fs::symlink_metadata(local)
        .with_context(|| format!("cannot read {}", local.display()))?;
    let name = local
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| anyhow!("{} has no file name", local.display()))?;
    let (size, count) = local_stats(local)?;
    if size > MAX_TRANSFER_BYTES || count > MAX_TRANSFER_FILES {
        bail!(
            "{} holds {size} bytes in {count} files; the limit is {MAX_TRANSFER_BYTES} bytes and {MAX_TRANSFER_FILES} files",
            local.display()
        );
    }
    let header = FileOpen::Upload {
        workspace: workspace.into(),
        path: remote.into(),
        name,
        size,
        count,
    };
    let (send, mut recv) = open_stream(conn, &header).await?;
    let plan = read_frame::<UploadPlan>(&mut recv, MAX_FRAME).await?;
    let local2 = local.to_path_buf();
    let is_dir = meta.is_dir();
    let top = plan.top_name.clone();
    let writer = CountingWriter::new(SyncIoBridge::new(send));
    let wire = writer.count.clone();
    let mut send = tokio::task::spawn_blocking(move || -> Result<SendStream> {
        let mut b = tar::Builder::new(writer);
        b.follow_symlinks(false);
        if is_dir {
            b.append_dir_all(&top, &local2)?;
        } else {
            b.append_path_with_name(&local2, &top)?;
        }
        let w = b.into_inner()?;
        Ok(w.inner.into_inner())
    })
    .await
    .context("packing task")?
    .context("packing the upload")?;
    send.finish()?;
    match read_frame::<OpenReply>(&mut recv, MAX_FRAME).await {
        Ok(OpenReply::Ok) => {}
        Ok(OpenReply::Error(e)) => return Err(anyhow!(e)),
        Err(e) => bail!("the node did not confirm the upload: {e}"),
    }
    Ok(Transferred {
        dest: plan.dest,
        is_dir,
        size,
        count,
        wire_bytes: wire.load(std::sync::atomic::Ordering::Relaxed),
        sha256: None,
    })
}

/// Bytes and entries under `path` (symlinks not followed).
pub fn local_stats(path: &Path) -> Result<(u64, u64)> {
    let (mut size, mut count) = (0u64, 0u64);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        count += 1;
        if m.is_dir() {
            for e in
                std::fs::read_dir(&p).with_context(|| format!("cannot list {}", p.display()))?
            {
                stack.push(e?.path());
            }
        } else if m.is_file() {
            size += m.len();
        }
        if count > MAX_TRANSFER_FILES {
            break;
        }
    }
    Ok((size, count))
}

struct CountingReader<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> CountingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            count: Default::default(),
        }
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

struct CountingWriter<W> {
    inner: W,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            count: Default::default(),
        }
    }
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
