//! Streams that survive a lost link ("resume, don't fail").
//!
//! A terminal attached with [`attach_pty`] is one task that owns its connection: when the
//! link is lost (the network blinked, the connection timed out, the node restarted) it
//! dials again by the same ticket and reattaches to the same terminal from the absolute
//! byte offset it had reached ([`PtyTarget::Resume`]), so its output has no gap and no
//! duplicate; bytes that fell out of the node's scrollback meanwhile are counted and
//! reported ([`PtyEvent::Resumed::missed`]). What is never retried: input written on a
//! stream that broke (it may or may not have reached the shell; typing it twice could run
//! a command twice), and anything after a final refusal (revoked, expired, the terminal is
//! gone).

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use iroh::Endpoint;
use iroh::endpoint::{Connection, ConnectionError, ReadError, RecvStream, SendStream};
use sam_protocol::Ticket;
use sam_protocol::ctl::ErrorBody;
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::stream::{
    CLOSE_NODE_SHUTDOWN, DownloadFrame, DownloadInfo, FileOpen, PTY_RESET_TOO_SLOW, PtyFrame,
    PtyOpen, PtyOpened, PtyTarget, UploadAt, UploadPlan, encode_data, pty_reset_reason,
};
use sam_protocol::wire::read_frame;
use tokio::sync::mpsc;

use crate::conn::ConnectError;

/// How long a lost link is dialled again before the stream gives up (each attempt waits
/// up to [`crate::conn::CONNECT_TIMEOUT`]).
pub const RESUME_WINDOW: Duration = Duration::from_secs(120);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// Why a stream stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The link went away under it: dial again and resume.
    Link(String),
    /// The node or the user ended it: resuming would be refused or unwanted.
    Final(String),
}

/// What the loss of `conn` (seen as `e` on one of its streams) means.
pub fn classify(conn: &Connection, e: &dyn std::fmt::Display) -> Loss {
    match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(c))
            if c.error_code.into_inner() == u64::from(CLOSE_NODE_SHUTDOWN) =>
        {
            Loss::Link("the node restarted".into())
        }
        Some(ConnectionError::ApplicationClosed(c)) => Loss::Final(format!(
            "the node closed the connection: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        // The resuming streams own their connection and close it only after deciding to
        // stop, so a local close seen here is not ours: iroh closes connections itself
        // when it rebinds at a network change (iroh#4488, seen under Docker's churn).
        Some(ConnectionError::LocallyClosed) => {
            Loss::Link("the connection was closed under us (a network change?)".into())
        }
        Some(ConnectionError::VersionMismatch) => Loss::Final("QUIC version mismatch".into()),
        Some(other) => Loss::Link(other.to_string()),
        // The stream broke while the connection lives: dialling again asks the node.
        None => Loss::Link(e.to_string()),
    }
}

/// What a failed dial or open means: the node's own answer (a refusal, an error body) is
/// final, not reaching it is a lost link.
pub fn classify_open(e: &anyhow::Error) -> Loss {
    if let Some(c) = e.downcast_ref::<ConnectError>() {
        return match c {
            ConnectError::Unreachable { .. } | ConnectError::Protocol(_) => {
                Loss::Link(c.to_string())
            }
            ConnectError::Refused(_) | ConnectError::Remote(_) => Loss::Final(c.to_string()),
        };
    }
    if e.downcast_ref::<ErrorBody>().is_some() {
        return Loss::Final(format!("{e:#}"));
    }
    Loss::Link(format!("{e:#}"))
}

/// Retries `attempt` while it fails with a lost link, for up to `window`; the first
/// final error, or the last lost-link error after the window, is returned.
pub async fn retry_link<T, F, Fut>(window: Duration, mut attempt: F) -> Result<T, Loss>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Loss>>,
{
    let deadline = Instant::now() + window;
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(t) => return Ok(t),
            Err(Loss::Final(e)) => return Err(Loss::Final(e)),
            Err(Loss::Link(e)) if Instant::now() + delay >= deadline => {
                return Err(Loss::Final(format!(
                    "the link did not come back within {}s: {e}",
                    window.as_secs()
                )));
            }
            Err(Loss::Link(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Input to a resuming terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyIn {
    Data(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// Detach (the terminal goes on running); the output ends soon after.
    Detach,
}

/// What a resuming terminal reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Terminal output, the next bytes after everything before.
    Output(Bytes),
    /// The link was lost; dialling again. Input typed meanwhile waits.
    Lost { reason: String },
    /// Reattached: output goes on from absolute byte `at`; `missed` bytes before it fell
    /// out of the node's scrollback while the link was down (0: nothing was lost).
    Resumed { at: u64, missed: u64 },
    /// The user typed in a read-only terminal: nothing was sent (said once).
    ReadOnlyInput,
    /// The last event: `Ok` when the terminal ended or was detached, else why it stopped.
    Ended(Result<(), String>),
}

/// A terminal that reattaches by itself after a lost link.
#[derive(Debug)]
pub struct PtySession {
    /// The first attach's answer.
    pub opened: PtyOpened,
    pub input: mpsc::Sender<PtyIn>,
    pub events: mpsc::Receiver<PtyEvent>,
}

/// Dials `ticket`'s node on `sam/pty/1` and attaches to a terminal (`open`); the task
/// behind the returned session resumes it after a lost link for up to `window` each time.
/// The first attach is not retried: its errors come back as they are.
pub async fn attach_pty(
    ep: Endpoint,
    ticket: Ticket,
    open: PtyOpen,
    window: Duration,
) -> Result<PtySession> {
    let (conn, _) = crate::conn::connect(&ep, &ticket, sam_protocol::alpn::PTY).await?;
    let (opened, send, recv) = match crate::streams::open_pty(&conn, &open).await {
        Ok(x) => x,
        Err(e) => {
            conn.close(0u32.into(), b"bye");
            return Err(e);
        }
    };
    let (in_tx, in_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let run = Run {
        ep,
        ticket,
        id: opened.terminal.clone(),
        instance: opened.instance,
        read_only: opened.read_only,
        open,
        offset: opened.offset,
        window,
        input: in_rx,
        events: ev_tx,
    };
    tokio::spawn(run.run(conn, send, recv));
    Ok(PtySession {
        opened,
        input: in_tx,
        events: ev_rx,
    })
}

struct Run {
    ep: Endpoint,
    ticket: Ticket,
    id: String,
    instance: u64,
    read_only: bool,
    /// The first header; its size is kept current for reattaching.
    open: PtyOpen,
    /// Absolute offset of the next output byte.
    offset: u64,
    window: Duration,
    input: mpsc::Receiver<PtyIn>,
    events: mpsc::Sender<PtyEvent>,
}

/// How one attachment ended.
enum Stop {
    /// The output ended (shell exit or our detach).
    Done,
    /// The user's side went away: nobody reads the events any more.
    Gone,
    Lost(Loss),
}

impl Run {
    async fn run(mut self, mut conn: Connection, mut send: SendStream, mut recv: RecvStream) {
        let mut told = false;
        let mut detached = false;
        loop {
            let stop = self
                .pump(&conn, &mut send, &mut recv, &mut told, &mut detached)
                .await;
            let reason = match stop {
                Stop::Done => {
                    conn.close(0u32.into(), b"bye");
                    let _ = self.events.send(PtyEvent::Ended(Ok(()))).await;
                    return;
                }
                Stop::Gone => {
                    conn.close(0u32.into(), b"bye");
                    return;
                }
                Stop::Lost(Loss::Final(r)) => {
                    conn.close(0u32.into(), b"bye");
                    let _ = self.events.send(PtyEvent::Ended(Err(r))).await;
                    return;
                }
                Stop::Lost(Loss::Link(r)) => r,
            };
            conn.close(0u32.into(), b"bye");
            if detached {
                // We asked to leave; the output's tail is not worth a new connection.
                let _ = self.events.send(PtyEvent::Ended(Ok(()))).await;
                return;
            }
            if self.events.send(PtyEvent::Lost { reason }).await.is_err() {
                return;
            }
            match self.reattach().await {
                Ok((c, opened, s, r)) => {
                    let missed = opened.offset.saturating_sub(self.offset);
                    self.offset = opened.offset;
                    (conn, send, recv) = (c, s, r);
                    let ev = PtyEvent::Resumed {
                        at: self.offset,
                        missed,
                    };
                    if self.events.send(ev).await.is_err() {
                        conn.close(0u32.into(), b"bye");
                        return;
                    }
                }
                Err(loss) => {
                    let why = match loss {
                        Loss::Link(r) | Loss::Final(r) => r,
                    };
                    let _ = self.events.send(PtyEvent::Ended(Err(why))).await;
                    return;
                }
            }
        }
    }

    async fn reattach(&self) -> Result<(Connection, PtyOpened, SendStream, RecvStream), Loss> {
        let mut open = self.open.clone();
        open.target = PtyTarget::Resume {
            id: self.id.clone(),
            instance: self.instance,
            from: self.offset,
        };
        retry_link(self.window, || {
            let open = open.clone();
            async move {
                let (conn, _) =
                    crate::conn::connect(&self.ep, &self.ticket, sam_protocol::alpn::PTY)
                        .await
                        .map_err(|e| classify_open(&e.into()))?;
                match crate::streams::open_pty(&conn, &open).await {
                    Ok((opened, s, r)) => Ok((conn, opened, s, r)),
                    Err(e) => {
                        conn.close(0u32.into(), b"bye");
                        Err(classify_open(&e))
                    }
                }
            }
        })
        .await
    }

    /// Moves bytes both ways on one attachment until it stops.
    async fn pump(
        &mut self,
        conn: &Connection,
        send: &mut SendStream,
        recv: &mut RecvStream,
        told: &mut bool,
        detached: &mut bool,
    ) -> Stop {
        let mut frame = Vec::with_capacity(16 * 1024);
        loop {
            tokio::select! {
                c = recv.read_chunk(64 * 1024) => match c {
                    Ok(Some(chunk)) => {
                        self.offset += chunk.len() as u64;
                        if self.events.send(PtyEvent::Output(chunk)).await.is_err() {
                            return Stop::Gone;
                        }
                    }
                    Ok(None) => return Stop::Done,
                    // Detached for falling behind: catch up from the scrollback.
                    Err(ReadError::Reset(code)) if code.into_inner() == u64::from(PTY_RESET_TOO_SLOW) => {
                        let why = pty_reset_reason(code.into_inner()).unwrap_or("too slow");
                        return Stop::Lost(Loss::Link(why.into()));
                    }
                    Err(e) => return Stop::Lost(classify(conn, &e)),
                },
                i = self.input.recv(), if !*detached => {
                    frame.clear();
                    match i {
                        None | Some(PtyIn::Detach) => {
                            *detached = true;
                            PtyFrame::Detach.encode(&mut frame);
                        }
                        Some(PtyIn::Data(d)) if self.read_only => {
                            // Never sent: the node would answer with a notice outside the
                            // output's byte offsets.
                            if !d.is_empty() && !*told {
                                *told = true;
                                if self.events.send(PtyEvent::ReadOnlyInput).await.is_err() {
                                    return Stop::Gone;
                                }
                            }
                            continue;
                        }
                        Some(PtyIn::Data(d)) => encode_data(&d, &mut frame),
                        Some(PtyIn::Resize { cols, rows }) => {
                            self.open.cols = cols;
                            self.open.rows = rows;
                            PtyFrame::Resize { cols, rows }.encode(&mut frame);
                        }
                    }
                    // Input on a stream that broke is not sent again (it may have
                    // reached the shell).
                    if let Err(e) = send.write_all(&frame).await {
                        return Stop::Lost(classify(conn, &e));
                    }
                    if *detached {
                        let _ = send.finish();
                    }
                }
            }
        }
    }
}

/// A download's bytes, handed from the task that fetches (and resumes) them to the
/// thread that unpacks them.
struct ChanReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    cur: Bytes,
}

impl std::io::Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Opens a resumable download from byte `from`: its connection, stream and info.
async fn open_download(
    ep: &Endpoint,
    ticket: &Ticket,
    workspace: &str,
    remote: &str,
    from: u64,
) -> Result<(Connection, RecvStream, DownloadInfo), Loss> {
    let (conn, _) = crate::conn::connect(ep, ticket, sam_protocol::alpn::FILE)
        .await
        .map_err(|e| classify_open(&e.into()))?;
    let header = FileOpen::DownloadFrom {
        workspace: workspace.into(),
        path: remote.into(),
        from,
    };
    let opened = async {
        let (_send, mut recv) = crate::streams::open_stream(&conn, &header).await?;
        let info = read_frame::<DownloadInfo>(&mut recv, MAX_FRAME).await?;
        anyhow::Ok((recv, info))
    }
    .await;
    match opened {
        Ok((recv, info)) => Ok((conn, recv, info)),
        Err(e) => {
            conn.close(0u32.into(), b"bye");
            Err(classify_open(&e))
        }
    }
}

/// Downloads `remote` (file or directory) from `workspace` into `local` as
/// [`crate::streams::download`] does, but a lost link is dialled again (for up to `window`
/// each time) and the download goes on from the byte it had reached; at the end the
/// SHA-256 of the whole tar is checked against the node's, so the joined pieces are known
/// to be one unchanged stream. Each retry is told to `note` (the CLI prints it on stderr).
pub async fn download(
    ep: &Endpoint,
    ticket: &Ticket,
    workspace: &str,
    remote: &str,
    local: &std::path::Path,
    window: Duration,
    note: impl Fn(String) + Send + Sync + 'static,
) -> Result<crate::streams::Transferred> {
    let (conn, recv, info) = open_download(ep, ticket, workspace, remote, 0)
        .await
        .map_err(|l| match l {
            Loss::Link(e) | Loss::Final(e) => anyhow::anyhow!(e),
        })?;
    let (dir, remote_name, name) = crate::streams::download_dest(&info, local)?;
    let dest = dir.join(&name);
    let limit = crate::streams::download_limit(&info);
    let (tx, rx) = mpsc::channel(16);
    let fetch = Fetch {
        ep: ep.clone(),
        ticket: ticket.clone(),
        workspace: workspace.to_string(),
        remote: remote.to_string(),
        info: info.clone(),
        window,
        tx,
        note: Box::new(note),
    };
    let fetcher = tokio::spawn(fetch.run(conn, recv));
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut reader = ChanReader {
            rx,
            cur: Bytes::new(),
        };
        let r = crate::streams::unpack(&mut reader, &dir, &remote_name, &name, limit);
        // The tar's reader may stop before the end: read on to the node's hash.
        if r.is_ok() {
            std::io::copy(&mut reader, &mut std::io::sink())?;
        }
        r
    })
    .await
    .map_err(|e| anyhow::anyhow!("unpacking task: {e}"))?;
    let fetched = fetcher
        .await
        .map_err(|e| anyhow::anyhow!("download task: {e}"))?;
    let (wire_bytes, hash) = fetched.map_err(|e| anyhow::anyhow!("{e}"))?;
    unpacked?;
    Ok(crate::streams::Transferred {
        dest: dest.display().to_string(),
        is_dir: info.is_dir,
        size: info.size,
        count: info.count,
        wire_bytes,
        sha256: Some(data_encoding::HEXLOWER.encode(&hash)),
    })
}

struct Fetch {
    ep: Endpoint,
    ticket: Ticket,
    workspace: String,
    remote: String,
    info: DownloadInfo,
    window: Duration,
    tx: mpsc::Sender<Result<Bytes, String>>,
    note: Box<dyn Fn(String) + Send + Sync>,
}

impl Fetch {
    /// Reads frames, resuming after a lost link; the tar's length and hash when the
    /// node's hash matched every byte handed on.
    async fn run(
        self,
        mut conn: Connection,
        mut recv: RecvStream,
    ) -> Result<(u64, [u8; 32]), String> {
        let r = self.fetch(&mut conn, &mut recv).await;
        conn.close(0u32.into(), b"bye");
        if let Err(e) = &r {
            let _ = self.tx.send(Err(e.clone())).await;
        }
        r
    }

    async fn fetch(
        &self,
        conn: &mut Connection,
        recv: &mut RecvStream,
    ) -> Result<(u64, [u8; 32]), String> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let mut at = 0u64;
        let mut buf = bytes::BytesMut::new();
        loop {
            // Whole frames first.
            loop {
                let (frame, used) = match DownloadFrame::decode(&buf) {
                    Ok(Some((f, n))) => (f, n),
                    Ok(None) => break,
                    Err(e) => return Err(format!("bad download frame from the node: {e}")),
                };
                match frame {
                    DownloadFrame::Data(d) => {
                        hash.update(d);
                        at += d.len() as u64;
                        let data = buf.split_to(used).freeze().slice(5..);
                        if self.tx.send(Ok(data)).await.is_err() {
                            return Err("the download was not unpacked".into());
                        }
                        continue;
                    }
                    DownloadFrame::End(theirs) => {
                        let ours: [u8; 32] = hash.finalize().into();
                        if ours != theirs {
                            return Err(format!(
                                "the download failed its end-to-end check: the SHA-256 of the {at} bytes received differs from the node's (the files changed while it was resumed?); the local copy is not to be trusted: download it again"
                            ));
                        }
                        return Ok((at, ours));
                    }
                    DownloadFrame::Error(m) => {
                        return Err(format!("the node stopped the download: {m}"));
                    }
                }
            }
            let lost = match recv.read_chunk(256 * 1024).await {
                Ok(Some(c)) => {
                    buf.extend_from_slice(&c);
                    continue;
                }
                Ok(None) => Loss::Final("the node ended the download without its checksum".into()),
                Err(e) => classify(conn, &e),
            };
            let reason = match lost {
                Loss::Final(e) => return Err(e),
                Loss::Link(r) => r,
            };
            conn.close(0u32.into(), b"bye");
            (self.note)(format!("link lost ({reason}); reconnecting…"));
            let (c, r, info) = retry_link(self.window, || {
                open_download(&self.ep, &self.ticket, &self.workspace, &self.remote, at)
            })
            .await
            .map_err(|l| match l {
                Loss::Link(e) | Loss::Final(e) => e,
            })?;
            *conn = c;
            *recv = r;
            buf.clear();
            if info != self.info {
                return Err(format!(
                    "{} changed while the link was down (from {} to {} bytes); download it again",
                    self.info.path, self.info.size, info.size
                ));
            }
            (self.note)(format!("resumed at byte {at}"));
        }
    }
}

/// Forwards every connection accepted on `listener` to `port` in `workspace`
/// ([`crate::streams::forward`]); when the link is lost it dials again (for up to
/// `window` each time) and goes on: TCP connections that were open through the old
/// link end, new ones go through the new one. Errors of one connection and each retry
/// are told to `note`.
pub async fn forward(
    ep: Endpoint,
    ticket: Ticket,
    workspace: String,
    port: u16,
    listener: tokio::net::TcpListener,
    window: Duration,
    note: impl Fn(String) + Send + Sync + Clone + 'static,
) -> Result<()> {
    let (mut conn, _) = crate::conn::connect(&ep, &ticket, sam_protocol::alpn::PORT).await?;
    loop {
        let e = match crate::streams::forward(
            conn.clone(),
            workspace.clone(),
            port,
            &listener,
            note.clone(),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reason = match classify(&conn, &e) {
            Loss::Final(r) => anyhow::bail!("{e:#} ({r})"),
            Loss::Link(r) => r,
        };
        conn.close(0u32.into(), b"bye");
        note(format!("link lost ({reason}); reconnecting…"));
        conn = retry_link(window, || async {
            crate::conn::connect(&ep, &ticket, sam_protocol::alpn::PORT)
                .await
                .map(|(c, _)| c)
                .map_err(|e| classify_open(&e.into()))
        })
        .await
        .map_err(|l| match l {
            Loss::Link(e) | Loss::Final(e) => anyhow::anyhow!(e),
        })?;
        note("forward re-established".into());
    }
}

/// Writes a tar as [`DownloadFrame`]s, leaving out its first `skip` bytes (the node has
/// them) but hashing all of it.
struct FrameWriter<W> {
    inner: W,
    skip: u64,
    pos: u64,
    hash: sha2::Sha256,
    head: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        self.hash.update(buf);
        let start = usize::try_from(self.skip.saturating_sub(self.pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.pos += buf.len() as u64;
        for chunk in buf[start..].chunks(sam_protocol::stream::MAX_DOWNLOAD_CHUNK) {
            self.head.clear();
            DownloadFrame::data_header(chunk.len(), &mut self.head);
            self.inner.write_all(&self.head)?;
            self.inner.write_all(chunk)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Opens a resumable upload: its connection, streams, plan and the byte to go on from.
async fn open_upload(
    ep: &Endpoint,
    ticket: &Ticket,
    header: &FileOpen,
) -> Result<(Connection, SendStream, RecvStream, UploadPlan, u64), Loss> {
    let (conn, _) = crate::conn::connect(ep, ticket, sam_protocol::alpn::FILE)
        .await
        .map_err(|e| classify_open(&e.into()))?;
    let opened = async {
        let (send, mut recv) = crate::streams::open_stream(&conn, header).await?;
        let plan = read_frame::<UploadPlan>(&mut recv, MAX_FRAME).await?;
        let at = read_frame::<UploadAt>(&mut recv, MAX_FRAME).await?;
        anyhow::Ok((send, recv, plan, at.at))
    }
    .await;
    match opened {
        Ok((send, recv, plan, at)) => Ok((conn, send, recv, plan, at)),
        Err(e) => {
            conn.close(0u32.into(), b"bye");
            Err(classify_open(&e))
        }
    }
}

/// Uploads `local` (file or directory) to `remote` in `workspace` as
/// [`crate::streams::upload`] does, but a lost link is dialled again (for up to `window`
/// each time) and the upload goes on from the byte the node holds; the node unpacks it
/// only when the SHA-256 of the whole tar matches. When the link is lost after the whole
/// tar went out, nothing is sent again (the node may have unpacked it): the error says so.
pub async fn upload(
    ep: &Endpoint,
    ticket: &Ticket,
    workspace: &str,
    local: &std::path::Path,
    remote: &str,
    window: Duration,
    note: impl Fn(String),
) -> Result<crate::streams::Transferred> {
    use sam_protocol::stream::{MAX_TRANSFER_BYTES, MAX_TRANSFER_FILES, OpenReply};
    let meta = std::fs::symlink_metadata(local)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", local.display()))?;
    let name = local
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", local.display()))?;
    let (size, count) = crate::streams::local_stats(local)?;
    if size > MAX_TRANSFER_BYTES || count > MAX_TRANSFER_FILES {
        anyhow::bail!(
            "{} holds {size} bytes in {count} files; the limit is {MAX_TRANSFER_BYTES} bytes and {MAX_TRANSFER_FILES} files",
            local.display()
        );
    }
    let header = FileOpen::UploadFrom {
        workspace: workspace.into(),
        path: remote.into(),
        name,
        size,
        count,
        upload: rand::random(),
    };
    let is_dir = meta.is_dir();
    let mut opened = open_upload(ep, ticket, &header)
        .await
        .map_err(|l| match l {
            Loss::Link(e) | Loss::Final(e) => anyhow::anyhow!(e),
        })?;
    loop {
        let (conn, send, mut recv, plan, at) = opened;
        let local2 = local.to_path_buf();
        let top = plan.top_name.clone();
        let sent =
            tokio::task::spawn_blocking(move || -> std::io::Result<(SendStream, u64, [u8; 32])> {
                use sha2::Digest;
                let w = FrameWriter {
                    inner: tokio_util::io::SyncIoBridge::new(send),
                    skip: at,
                    pos: 0,
                    hash: sha2::Sha256::new(),
                    head: Vec::new(),
                };
                let mut b = tar::Builder::new(w);
                b.follow_symlinks(false);
                if is_dir {
                    b.append_dir_all(&top, &local2)?;
                } else {
                    b.append_path_with_name(&local2, &top)?;
                }
                let mut w = b.into_inner()?;
                if w.pos < at {
                    return Err(std::io::Error::other(format!(
                        "{} shrank while the link was down; upload it again",
                        local2.display()
                    )));
                }
                let hash: [u8; 32] = w.hash.finalize().into();
                let mut end = Vec::with_capacity(33);
                DownloadFrame::End(hash).encode(&mut end);
                std::io::Write::write_all(&mut w.inner, &end)?;
                std::io::Write::flush(&mut w.inner)?;
                Ok((w.inner.into_inner(), w.pos, hash))
            })
            .await
            .map_err(|e| anyhow::anyhow!("packing task: {e}"))?;
        let (mut send, wire_bytes, hash) = match sent {
            Ok(x) => x,
            Err(e) => {
                let reason = match classify(&conn, &e) {
                    Loss::Final(r) => {
                        conn.close(0u32.into(), b"bye");
                        anyhow::bail!("the upload failed: {e} ({r})");
                    }
                    // The link is fine: the node refused (its reason is on the stream) or
                    // a local error; final either way.
                    Loss::Link(_) if conn.close_reason().is_none() => {
                        let why = tokio::time::timeout(
                            Duration::from_secs(5),
                            read_frame::<OpenReply>(&mut recv, MAX_FRAME),
                        )
                        .await;
                        conn.close(0u32.into(), b"bye");
                        if let Ok(Ok(OpenReply::Error(body))) = why {
                            return Err(anyhow::anyhow!(body));
                        }
                        anyhow::bail!("the upload failed: {e}");
                    }
                    Loss::Link(r) => r,
                };
                conn.close(0u32.into(), b"bye");
                note(format!("link lost ({reason}); reconnecting…"));
                opened = retry_link(window, || open_upload(ep, ticket, &header))
                    .await
                    .map_err(|l| match l {
                        Loss::Link(e) | Loss::Final(e) => anyhow::anyhow!(e),
                    })?;
                note(format!("resumed at byte {}", opened.4));
                continue;
            }
        };
        let _ = send.finish();
        let reply = read_frame::<OpenReply>(&mut recv, MAX_FRAME).await;
        conn.close(0u32.into(), b"bye");
        return match reply {
            Ok(OpenReply::Ok) => Ok(crate::streams::Transferred {
                dest: plan.dest,
                is_dir,
                size,
                count,
                wire_bytes,
                sha256: Some(data_encoding::HEXLOWER.encode(&hash)),
            }),
            Ok(OpenReply::Error(e)) => Err(anyhow::anyhow!(e)),
            Err(e) => Err(anyhow::anyhow!(
                "the link was lost after the whole upload was sent ({e}): whether the node unpacked it is unknown, and it is not sent twice; check with `sam files ls`"
            )),
        };
    }
}
