//! `sam shell WORKSPACE [--new | --id T]`: the local terminal attached to a shared
//! terminal in a workspace.
//!
//! The local terminal goes to raw mode for the session and back to how it was on
//! every exit path: normal end, error, Ctrl-C handling by the remote shell, and
//! panics (a panic hook restores it before the message prints). Window size
//! changes (SIGWINCH) are sent as resize frames.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result};
use sam_protocol::stream::{PtyFrame, PtyOpen, PtyTarget, encode_data};
use serde_json::json;
use tokio::sync::mpsc;

use super::Output;
use crate::paths::ClientPaths;

/// Restores the terminal when dropped.
struct RawMode {
    on: bool,
}

impl RawMode {
    fn enter() -> Result<Self> {
        if !std::io::stdin().is_terminal() {
            return Ok(Self { on: false });
        }
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            prev(info);
        }));
        Ok(Self { on: true })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.on {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

fn term_size() -> (u16, u16) {
    match crossterm::terminal::size() {
        Ok((c, r)) if c > 0 && r > 0 => (c, r),
        _ => (80, 24),
    }
}

/// Runs an interactive terminal session.
pub async fn run(
    paths: &ClientPaths,
    node: Option<&str>,
    workspace: &str,
    new: bool,
    id: Option<String>,
) -> Result<Output> {
    let (ep, conn, _entry) = super::dial(paths, node, sam_protocol::alpn::PTY).await?;
    let (cols, rows) = term_size();
    let target = match (new, id) {
        (_, Some(id)) => PtyTarget::Id(id),
        (true, None) => PtyTarget::New,
        (false, None) => PtyTarget::Default,
    };
    let open = PtyOpen {
        workspace: workspace.into(),
        target,
        shell: None,
        cols,
        rows,
    };
    let (opened, mut send, mut recv) = crate::streams::open_pty(&conn, &open).await?;
    let mut note = format!(
        "[sam: terminal {} in {workspace}; {} attached",
        opened.terminal, opened.attached
    );
    if opened.read_only {
        note.push_str("; read-only (viewer)");
    }
    note.push_str("]\r\n");
    eprint!("{note}");

    let raw = RawMode::enter()?;
    // Stdin is read on a plain thread: a blocking read must not hold up the
    // runtime's shutdown when the session ends.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(64);
    std::thread::Builder::new()
        .name("sam-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .context("cannot start the input thread")?;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("cannot watch window size changes")?;

    let input = async {
        let mut frame = Vec::with_capacity(16 * 1024);
        loop {
            tokio::select! {
                data = in_rx.recv() => {
                    let Some(data) = data else {
                        // Local EOF (a pipe): detach, the terminal goes on.
                        frame.clear();
                        PtyFrame::Detach.encode(&mut frame);
                        let _ = send.write_all(&frame).await;
                        let _ = send.finish();
                        return;
                    };
                    frame.clear();
                    encode_data(&data, &mut frame);
                    if send.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                _ = winch.recv() => {
                    let (cols, rows) = term_size();
                    frame.clear();
                    PtyFrame::Resize { cols, rows }.encode(&mut frame);
                    if send.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let output = async {
        let mut stdout = std::io::stdout().lock();
        loop {
            match recv.read_chunk(64 * 1024).await {
                Ok(Some(chunk)) => {
                    if stdout
                        .write_all(&chunk)
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return Err(anyhow::anyhow!("cannot write to the terminal"));
                    }
                }
                Ok(None) => return Ok(()),
                // The node says why it detached us (e.g. too far behind the output).
                Err(iroh::endpoint::ReadError::Reset(code)) => {
                    let code = code.into_inner();
                    return Err(match sam_protocol::stream::pty_reset_reason(code) {
                        Some(why) => anyhow::anyhow!("{why}"),
                        None => anyhow::anyhow!("the node reset the terminal stream (code {code})"),
                    });
                }
                Err(e) => return Err(anyhow::anyhow!("the terminal stream broke: {e}")),
            }
        }
    };
    tokio::pin!(output);
    // Local EOF only detaches: the output runs until the node finishes it.
    let result = tokio::select! {
        r = &mut output => r,
        _ = input => output.await,
    };
    drop(raw);
    conn.close(0u32.into(), b"bye");
    ep.close().await;
    result?;
    eprintln!("\r\n[sam: terminal {} closed]", opened.terminal);
    Ok(Output::new(json!({ "terminal": opened.terminal }), ""))
}
