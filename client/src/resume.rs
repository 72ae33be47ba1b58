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
use sam_protocol::stream::{
    CLOSE_NODE_SHUTDOWN, PTY_RESET_TOO_SLOW, PtyFrame, PtyOpen, PtyOpened, PtyTarget, encode_data,
    pty_reset_reason,
};
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
        Some(ConnectionError::LocallyClosed) => Loss::Final("the connection was closed".into()),
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
