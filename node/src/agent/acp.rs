//! The node as an ACP client of one agent process: the line transport (with a size cap
//! and a check that stdout carries JSON-RPC only), the handlers for the client-side
//! methods (`fs/*`, `terminal/*`, served through the [`Launcher`]) and the events the
//! conversation runner consumes (session updates and permission requests).
//!
//! Handlers never block the dispatch loop: updates and permission requests are forwarded
//! on a channel, file and terminal work runs in spawned tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use acp::v1::schema::{
    CreateTerminalRequest, CreateTerminalResponse, KillTerminalRequest, KillTerminalResponse,
    ReadTextFileRequest, ReadTextFileResponse, ReleaseTerminalRequest, ReleaseTerminalResponse,
    RequestPermissionRequest, RequestPermissionResponse, SessionNotification, TerminalExitStatus,
    TerminalOutputRequest, TerminalOutputResponse, WaitForTerminalExitRequest,
    WaitForTerminalExitResponse, WriteTextFileRequest, WriteTextFileResponse,
};
use acp::v1::{ConnectionTo, Responder};
use agent_client_protocol as acp;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug};

use super::AgentError;
use super::launcher::{GroupKiller, Launcher, Proc, StderrTail};

pub mod lines;
use lines::{check_line, read_line};

/// Largest JSON-RPC message accepted from an agent.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Default cap of a terminal's kept output.
const TERMINAL_OUTPUT: usize = 1024 * 1024;
/// Most terminals one agent may hold.
const MAX_TERMINALS: usize = 64;

/// What the runner gets from the agent.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Update(Box<SessionNotification>),
    Permission(
        Box<RequestPermissionRequest>,
        Responder<RequestPermissionResponse>,
    ),
}

/// A live connection to one agent process.
pub struct AcpConn {
    pub cx: ConnectionTo<acp::Agent>,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// `Some(reason)` once the connection or the process ended.
    pub ended: watch::Receiver<Option<String>>,
    pub stderr: StderrTail,
    killer: GroupKiller,
    stop: Option<oneshot::Sender<()>>,
}

impl AcpConn {
    /// Why the agent is gone, if it is.
    pub fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }

    /// Waits until the agent is gone; returns why.
    pub async fn wait_ended(&mut self) -> String {
        loop {
            if let Some(r) = self.ended.borrow().clone() {
                return r;
            }
            if self.ended.changed().await.is_err() {
                return "the agent connection ended".into();
            }
        }
    }

    /// Kills the agent's process group and closes the connection.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.killer.kill();
    }
}

impl Drop for AcpConn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the connection ended with `why` unless it already is.
fn set_ended(tx: &watch::Sender<Option<String>>, why: String) {
    tx.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(why);
            true
        } else {
            false
        }
    });
}

fn incoming(
    stdout: ChildStdout,
    ended: Arc<watch::Sender<Option<String>>>,
) -> impl futures_util::Stream<Item = std::io::Result<String>> + Send + 'static {
    let reader = BufReader::with_capacity(64 * 1024, stdout);
    futures_util::stream::unfold(Some(reader), move |state| {
        let ended = ended.clone();
        async move {
            let mut r = state?;
            let e = loop {
                match read_line(&mut r, MAX_MESSAGE).await {
                    Ok(None) => return None,
                    Ok(Some(line)) => match check_line(line) {
                        Ok(None) => continue,
                        Ok(Some(s)) => return Some((Ok(s), Some(r))),
                        Err(e) => break e,
                    },
                    Err(e) => break e,
                }
            };
            // The SDK may not end the connection on a transport error: say it here.
            set_ended(&ended, e.to_string());
            Some((Err(e), None))
        }
    })
}

fn outgoing(
    stdin: ChildStdin,
) -> impl futures_util::Sink<String, Error = std::io::Error> + Send + 'static {
    futures_util::sink::unfold(stdin, |mut stdin, line: String| async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok::<_, std::io::Error>(stdin)
    })
}

fn err(e: AgentError) -> acp::Error {
    match e {
        AgentError::Denied(m) => acp::Error::invalid_params().data(m),
        other => acp::Error::internal_error().data(other.to_string()),
    }
}

/// Starts the ACP connection over a freshly spawned agent process.
pub async fn connect(
    mut proc: Proc,
    launcher: Arc<dyn Launcher>,
    span: tracing::Span,
) -> Result<AcpConn, AgentError> {
    let stdin = proc
        .stdin
        .take()
        .ok_or_else(|| AgentError::Spawn("no stdin".into()))?;
    let stdout = proc
        .stdout
        .take()
        .ok_or_else(|| AgentError::Spawn("no stdout".into()))?;
    let (ev_tx, events) = mpsc::unbounded_channel();
    let (ended_tx, ended) = watch::channel(None);
    let ended_tx = Arc::new(ended_tx);
    let (cx_tx, cx_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let terms = Terminals::default();

    // The process: its exit ends the connection.
    let mut child = proc.child;
    let on_exit = ended_tx.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let why = match status {
            Ok(s) => format!("the agent exited ({s})"),
            Err(e) => format!("the agent process was lost: {e}"),
        };
        on_exit.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    });

    let up_tx = ev_tx.clone();
    let perm_tx = ev_tx;
    let (l1, l2, l3) = (launcher.clone(), launcher.clone(), launcher);
    let (t1, t2, t3, t4, t5) = (
        terms.clone(),
        terms.clone(),
        terms.clone(),
        terms.clone(),
        terms,
    );
    let in_end = ended_tx.clone();
    let on_end = ended_tx;
    let driver = async move {
        let result = acp::Client
            .v1()
            .name("sam-node")
            .on_receive_notification(
                async move |n: SessionNotification, _cx| {
                    let _ = up_tx.send(Event::Update(Box::new(n)));
                    Ok(())
                },
                acp::on_receive_notification!(),
            )
            .on_receive_request(
                async move |r: RequestPermissionRequest, responder, _cx| {
                    if let Err(mpsc::error::SendError(Event::Permission(_, responder))) =
                        perm_tx.send(Event::Permission(Box::new(r), responder))
                    {
                        return responder.respond_with_error(acp::Error::internal_error());
                    }
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: ReadTextFileRequest,
                            responder: Responder<ReadTextFileResponse>,
                            _cx| {
                    let l = l1.clone();
                    tokio::spawn(async move {
                        // A missing file reads as empty: Gemini reads before it creates a file.
                        let r = match l.read_file(r.path.clone()).await {
                            Ok(text) => Ok(ReadTextFileResponse::new(slice_lines(
                                text.unwrap_or_default(),
                                r.line,
                                r.limit,
                            ))),
                            Err(e) => Err(err(e)),
                        };
                        let _ = responder.respond_with_result(r);
                    });
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: WriteTextFileRequest,
                            responder: Responder<WriteTextFileResponse>,
                            _cx| {
                    let l = l2.clone();
                    tokio::spawn(async move {
                        let r = l
                            .write_file(r.path, r.content)
                            .await
                            .map(|()| WriteTextFileResponse::new())
                            .map_err(err);
                        let _ = responder.respond_with_result(r);
                    });
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: CreateTerminalRequest,
                            responder: Responder<CreateTerminalResponse>,
                            _cx| {
                    let _ = responder.respond_with_result(t1.create(&*l3, r).map_err(err));
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: TerminalOutputRequest,
                            responder: Responder<TerminalOutputResponse>,
                            _cx| {
                    let _ = responder
                        .respond_with_result(t2.output(&r.terminal_id.to_string()).map_err(err));
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: WaitForTerminalExitRequest,
                            responder: Responder<WaitForTerminalExitResponse>,
                            _cx| {
                    let t = t3.clone();
                    tokio::spawn(async move {
                        let r = t.wait(&r.terminal_id.to_string()).await.map_err(err);
                        let _ =
                            responder.respond_with_result(r.map(WaitForTerminalExitResponse::new));
                    });
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: KillTerminalRequest,
                            responder: Responder<KillTerminalResponse>,
                            _cx| {
                    t4.kill(&r.terminal_id.to_string(), false);
                    let _ = responder.respond(KillTerminalResponse::new());
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .on_receive_request(
                async move |r: ReleaseTerminalRequest,
                            responder: Responder<ReleaseTerminalResponse>,
                            _cx| {
                    t5.kill(&r.terminal_id.to_string(), true);
                    let _ = responder.respond(ReleaseTerminalResponse::new());
                    Ok(())
                },
                acp::on_receive_request!(),
            )
            .connect_with(
                acp::Lines::new(outgoing(stdin), incoming(stdout, in_end)),
                async move |cx: ConnectionTo<acp::Agent>| {
                    let _ = cx_tx.send(cx);
                    let _ = stop_rx.await;
                    Ok(())
                },
            )
            .await;
        let why = match result {
            Ok(()) => "the agent connection closed".to_string(),
            Err(e) => format!("the ACP connection failed: {}", describe(&e)),
        };
        debug!(%why, "agent connection ended");
        on_end.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    };
    tokio::spawn(driver.instrument(span));
    // `connect_with` hands the connection to its main function before any IO.
    let cx = tokio::time::timeout(std::time::Duration::from_secs(10), cx_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| AgentError::Protocol("the ACP connection did not start".into()))?;
    Ok(AcpConn {
        cx,
        events,
        ended,
        stderr: proc.stderr,
        killer: proc.killer,
        stop: Some(stop_tx),
    })
}

/// An ACP error in one line, with its data when present.
pub fn describe(e: &acp::Error) -> String {
    let mut s = e.message.clone();
    if let Some(d) = &e.data {
        let d = d.to_string();
        s.push_str(": ");
        s.push_str(&d.chars().take(300).collect::<String>());
    }
    s
}

fn slice_lines(text: String, line: Option<u32>, limit: Option<u32>) -> String {
    if line.is_none() && limit.is_none() {
        return text;
    }
    let start = line.map(|l| l.saturating_sub(1) as usize).unwrap_or(0);
    let n = limit.map(|l| l as usize).unwrap_or(usize::MAX);
    text.split_inclusive('\n').skip(start).take(n).collect()
}

struct Term {
    output: Mutex<(String, bool)>,
    limit: usize,
    exit: watch::Receiver<Option<(Option<u32>, Option<String>)>>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
}

/// The terminals of one agent connection.
#[derive(Clone, Default)]
struct Terminals(Arc<Mutex<HashMap<String, Arc<Term>>>>);

impl Terminals {
    fn get(&self, id: &str) -> Result<Arc<Term>, AgentError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::Denied(format!("no terminal {id}")))
    }

    fn create(
        &self,
        launcher: &dyn Launcher,
        r: CreateTerminalRequest,
    ) -> Result<CreateTerminalResponse, AgentError> {
        if self.0.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_TERMINALS {
            return Err(AgentError::Denied(format!(
                "at most {MAX_TERMINALS} terminals"
            )));
        }
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            "exec \"$@\" 2>&1".into(),
            "sh".into(),
            r.command,
        ];
        argv.extend(r.args);
        let env: Vec<(String, String)> = r.env.into_iter().map(|e| (e.name, e.value)).collect();
        let cwd = r.cwd.unwrap_or_else(|| launcher.root());
        let mut proc = launcher.spawn(&argv, &env, &cwd)?;
        drop(proc.stdin.take());
        let limit = r
            .output_byte_limit
            .map(|l| usize::try_from(l).unwrap_or(TERMINAL_OUTPUT))
            .unwrap_or(TERMINAL_OUTPUT)
            .min(TERMINAL_OUTPUT * 16);
        let (exit_tx, exit) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let term = Arc::new(Term {
            output: Mutex::new((String::new(), false)),
            limit,
            exit,
            kill: Mutex::new(Some(kill_tx)),
        });
        let id = format!("term-{:016x}", rand::random::<u64>());
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), term.clone());
        let stdout = proc.stdout.take();
        let t = term.clone();
        tokio::spawn(async move {
            let reader = async {
                if let Some(mut out) = stdout {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = out.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        t.append(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            };
            let mut killer = proc.killer;
            let mut child = proc.child;
            let wait = async {
                tokio::select! {
                    s = child.wait() => s,
                    _ = kill_rx => { killer.kill(); child.wait().await }
                }
            };
            let (status, ()) = tokio::join!(wait, reader);
            let v = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (
                        s.code().and_then(|c| u32::try_from(c).ok()),
                        s.signal().map(|n| format!("signal {n}")),
                    )
                }
                Err(_) => (None, Some("lost".into())),
            };
            let _ = exit_tx.send(Some(v));
        });
        Ok(CreateTerminalResponse::new(id))
    }

    fn output(&self, id: &str) -> Result<TerminalOutputResponse, AgentError> {
        let t = self.get(id)?;
        let (out, truncated) = t.output.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut r = TerminalOutputResponse::new(out, truncated);
        if let Some((code, signal)) = t.exit.borrow().clone() {
            r = r.exit_status(TerminalExitStatus::new().exit_code(code).signal(signal));
        }
        Ok(r)
    }

    async fn wait(&self, id: &str) -> Result<TerminalExitStatus, AgentError> {
        let t = self.get(id)?;
        let mut rx = t.exit.clone();
        let v = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| AgentError::Io("terminal lost".into()))?
            .clone();
        let (code, signal) = v.unwrap_or((None, None));
        Ok(TerminalExitStatus::new().exit_code(code).signal(signal))
    }

    fn kill(&self, id: &str, release: bool) {
        let t = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if release {
                map.remove(id)
            } else {
                map.get(id).cloned()
            }
        };
        if let Some(t) = t
            && let Some(k) = t.kill.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            let _ = k.send(());
        }
    }
}

impl Term {
    fn append(&self, s: &str) {
        let mut o = self.output.lock().unwrap_or_else(|p| p.into_inner());
        o.0.push_str(s);
        if o.0.len() > self.limit {
            let mut cut = o.0.len() - self.limit;
            while !o.0.is_char_boundary(cut) {
                cut += 1;
            }
            o.0.drain(..cut);
            o.1 = true;
        }
    }
}
