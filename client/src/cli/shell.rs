//! `sam shell WORKSPACE [--new | --id T]`: the local terminal attached to a shared
//! terminal in a workspace.
//!
//! The local terminal goes to raw mode for the session and back to how it was on
//! every exit path: normal end, error, Ctrl-C handling by the remote shell, and
//! panics (a panic hook restores it before the message prints). Window size
//! changes (SIGWINCH) are sent as resize frames.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result};
use sam_protocol::stream::{PtyOpen, PtyTarget};
use serde_json::json;
use tokio::sync::mpsc;

use super::Output;
use crate::paths::ClientPaths;
use crate::resume::{PtyEvent, PtyIn, PtySession, RESUME_WINDOW, attach_pty};

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
    let book = crate::NodeBook::load(&paths.nodes())?;
    let entry = book.find(node)?.clone();
    let ep = crate::endpoint::bind(&paths.identity()?, None).await?;
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
    // The session reattaches by itself after a lost link (crate::resume).
    let session = attach_pty(ep.clone(), entry.ticket()?, open, RESUME_WINDOW)
        .await
        .with_context(|| format!("node {}", entry.name))?;
    let PtySession {
        opened,
        input: send,
        mut events,
    } = session;
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
        loop {
            tokio::select! {
                data = in_rx.recv() => {
                    let Some(data) = data else {
                        // Local EOF (a pipe): detach, the terminal goes on.
                        let _ = send.send(PtyIn::Detach).await;
                        return;
                    };
                    if send.send(PtyIn::Data(data)).await.is_err() {
                        return;
                    }
                }
                _ = winch.recv() => {
                    let (cols, rows) = term_size();
                    if send.send(PtyIn::Resize { cols, rows }).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let output = async {
        let mut stdout = std::io::stdout().lock();
        while let Some(ev) = events.recv().await {
            match ev {
                PtyEvent::Output(chunk) => {
                    if stdout
                        .write_all(&chunk)
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return Err(anyhow::anyhow!("cannot write to the terminal"));
                    }
                }
                // What was retried goes to stderr, never into the terminal's output.
                PtyEvent::Lost { reason } => {
                    eprint!("\r\n[sam: link lost ({reason}); reconnecting…]\r\n");
                }
                PtyEvent::Resumed { at, missed: 0 } => {
                    eprint!("[sam: resumed at byte {at}]\r\n");
                }
                PtyEvent::Resumed { at, missed } => {
                    eprint!(
                        "[sam: resumed at byte {at}; {missed} bytes of output were lost (older than the node's scrollback)]\r\n"
                    );
                }
                PtyEvent::ReadOnlyInput => {
                    eprint!("\r\n[sam: read-only: viewers cannot type in this terminal]\r\n");
                }
                PtyEvent::Ended(r) => return r.map_err(|e| anyhow::anyhow!("{e}")),
            }
        }
        Ok(())
    };
    tokio::pin!(output);
    // Local EOF only detaches: the output runs until the node finishes it.
    let result = tokio::select! {
        r = &mut output => r,
        _ = input => output.await,
    };
    drop(raw);
    ep.close().await;
    result?;
    eprintln!("\r\n[sam: terminal {} closed]", opened.terminal);
    Ok(Output::new(json!({ "terminal": opened.terminal }), ""))
}
