//! Resume, don't fail (issue #18): a terminal survives a lost link. The node drops every
//! connection mid-stream (as a restart or a network change does); the client reattaches
//! to the same terminal from the byte it had reached, so its output is exactly the
//! shell's, with no gap and no duplicate. And the resume header is a peer's field: it
//! never attaches to another terminal, never invents output, and says what was lost.
//! Real node on loopback, real container under dockerd, real Docker tty exec.

use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::Connection;
use sam_client::conn::connect;
use sam_client::resume::{PtyEvent, PtyIn, PtySession, attach_pty};
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::{PTY_SCROLLBACK, PtyOpen, PtyOpened, PtyTarget};
use sam_protocol::{SecretKey, Ticket, alpn};

use crate::support::ws_common::{Container, docker_ready};

/// Prints `c1`..`c3000`, waits for a line of input, prints `c3001`..`c6000` and `fin42`.
const COUNTER: &str = "stty -echo; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo c$i; done; \
     read x; while [ $i -lt 6000 ]; do i=$((i+1)); echo c$i; done; echo fin$((6*7)); sleep 600";

struct Rig {
    dir: tempfile::TempDir,
    owner: SecretKey,
    node_key: SecretKey,
    handle: Option<NodeHandle>,
    ws: String,
    _container: Container,
}

impl Rig {
    async fn start() -> Self {
        docker_ready();
        let container = Container::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = SecretKey::generate();
        let node_key = SecretKey::generate();
        let handle = start_node(&dir, &owner, &node_key, "127.0.0.1:0").await;
        let ws = handle
            .node
            .workspaces()
            .adopt(&container.id, "/workspaces/repo", "root")
            .await
            .expect("adopt container");
        Self {
            dir,
            owner,
            node_key,
            handle: Some(handle),
            ws,
            _container: container,
        }
    }

    fn handle(&self) -> &NodeHandle {
        self.handle.as_ref().expect("node running")
    }

    /// The owner's ticket.
    fn ticket(&self) -> Ticket {
        self.handle().ticket()
    }

    async fn endpoint(&self) -> Endpoint {
        sam_client::endpoint::bind(&self.owner, Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind")
    }

    async fn pty_conn(&self) -> (Endpoint, Connection) {
        let ep = self.endpoint().await;
        let (c, _) = connect(&ep, &self.ticket(), alpn::PTY)
            .await
            .expect("connect");
        (ep, c)
    }

    /// Stops the node and starts it again on the same address and home.
    async fn restart(&mut self) {
        let old = self.handle.take().expect("node running");
        let addr = old.addr.direct[0].to_string();
        old.shutdown().await.expect("shutdown");
        let handle = start_node(&self.dir, &self.owner, &self.node_key, &addr).await;
        self.handle = Some(handle);
    }

    fn open(&self, target: PtyTarget, shell: Option<&str>) -> PtyOpen {
        PtyOpen {
            workspace: self.ws.clone(),
            target,
            shell: shell.map(|s| vec!["sh".into(), "-c".into(), s.into()]),
            cols: 120,
            rows: 40,
        }
    }
}

async fn start_node(
    dir: &tempfile::TempDir,
    owner: &SecretKey,
    node_key: &SecretKey,
    bind: &str,
) -> NodeHandle {
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = bind.parse().expect("addr");
    Node::start_with(NodePaths::new(dir.path()), cfg, node_key.clone())
        .await
        .expect("node starts")
}

/// What a session has delivered so far.
#[derive(Default)]
struct Seen {
    out: Vec<u8>,
    lost: usize,
    resumed: Vec<(u64, u64)>,
}

impl Seen {
    /// Reads events until the output holds `needle` (the session must not end first).
    async fn until(&mut self, s: &mut PtySession, needle: &str) {
        loop {
            if contains(&self.out, needle.as_bytes()) {
                return;
            }
            let ev = tokio::time::timeout(Duration::from_secs(120), s.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {needle:?} in time; {} bytes so far", self.out.len())
                })
                .unwrap_or_else(|| panic!("the session ended before {needle:?}"));
            self.take(ev);
        }
    }

    /// Reads events until a resume (or panics on the end).
    async fn until_resumed(&mut self, s: &mut PtySession) {
        let before = self.resumed.len();
        while self.resumed.len() == before {
            let ev = tokio::time::timeout(Duration::from_secs(120), s.events.recv())
                .await
                .expect("resumed in time")
                .expect("the session goes on");
            self.take(ev);
        }
    }

    fn take(&mut self, ev: PtyEvent) {
        match ev {
            PtyEvent::Output(b) => self.out.extend_from_slice(&b),
            PtyEvent::Lost { .. } => self.lost += 1,
            PtyEvent::Resumed { at, missed } => {
                assert_eq!(
                    at,
                    self.out.len() as u64,
                    "resumed at another byte than the client had reached"
                );
                self.resumed.push((at, missed));
            }
            PtyEvent::ReadOnlyInput => panic!("the owner is not read-only"),
            PtyEvent::Ended(r) => panic!("the session ended: {r:?}"),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_resumes_after_lost_links_without_a_lost_or_doubled_byte() {
    let rig = Rig::start().await;
    let ep = rig.endpoint().await;
    let mut s = attach_pty(
        ep.clone(),
        rig.ticket(),
        rig.open(PtyTarget::New, Some(COUNTER)),
        Duration::from_secs(60),
    )
    .await
    .expect("attach");
    assert_eq!(s.opened.offset, 0, "a new terminal starts at byte 0");
    let mut seen = Seen::default();

    // Mid-stream: the client has read to c1500 and more is in flight; every link drops.
    seen.until(&mut s, "c1500\r\n").await;
    rig.handle().node.drop_all_links();
    seen.until_resumed(&mut s).await;
    seen.until(&mut s, "c3000\r\n").await;
    // Input after a resume reaches the same shell.
    s.input
        .send(PtyIn::Data(b"go\r".to_vec()))
        .await
        .expect("type");
    seen.until(&mut s, "c4500\r\n").await;
    rig.handle().node.drop_all_links();
    seen.until_resumed(&mut s).await;
    seen.until(&mut s, "fin42\r\n").await;

    let mut want = String::new();
    for i in 1..=6000 {
        want.push_str(&format!("c{i}\r\n"));
    }
    want.push_str("fin42\r\n");
    let got = String::from_utf8_lossy(&seen.out);
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let from = at.saturating_sub(40);
        panic!(
            "the output differs from the shell's at byte {at}: got {:?}, want {:?}",
            &got[from..(at + 40).min(got.len())],
            &want[from..(at + 40).min(want.len())]
        );
    }
    assert!(seen.lost >= 2, "two lost links were reported");
    assert!(
        seen.resumed.iter().all(|(_, missed)| *missed == 0),
        "nothing fell out of the scrollback: {:?}",
        seen.resumed
    );
    let _ = s.input.send(PtyIn::Detach).await;
}

/// Attaches raw, with `target`.
async fn raw_open(conn: &Connection, rig: &Rig, target: PtyTarget) -> anyhow::Result<PtyOpened> {
    let (o, _send, _recv) = sam_client::streams::open_pty(conn, &rig.open(target, None)).await?;
    Ok(o)
}

fn code(e: anyhow::Error) -> ErrorCode {
    e.downcast_ref::<ErrorBody>()
        .unwrap_or_else(|| panic!("not a node error: {e:#}"))
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_never_takes_another_terminal_invents_output_or_hides_a_loss() {
    let mut rig = Rig::start().await;
    // Far more output than the scrollback holds, then a marker.
    const BIG: usize = 3 * PTY_SCROLLBACK;
    let script = format!("head -c {BIG} /dev/zero | tr '\\0' x; echo; echo big$((6*7)); sleep 600");
    let ep = rig.endpoint().await;
    let mut s = attach_pty(
        ep.clone(),
        rig.ticket(),
        rig.open(PtyTarget::New, Some(&script)),
        Duration::from_secs(60),
    )
    .await
    .expect("attach");
    let (id, instance) = (s.opened.terminal.clone(), s.opened.instance);
    let mut seen = Seen::default();
    seen.until(&mut s, "big42").await;
    let end = seen.out.len() as u64;
    assert!(end > BIG as u64);

    let (_e, conn) = rig.pty_conn().await;
    // A client that was away since byte 0 is told where the replay starts: what it
    // missed is counted, never silently skipped.
    let o = raw_open(
        &conn,
        &rig,
        PtyTarget::Resume {
            id: id.clone(),
            instance,
            from: 0,
        },
    )
    .await
    .expect("resume from 0");
    assert_eq!(o.terminal, id);
    assert!(
        o.offset > 0 && o.offset <= end - PTY_SCROLLBACK as u64,
        "the replay starts at {} (end {end})",
        o.offset
    );
    // Exactly where it was: the replay starts at the byte asked for.
    let o = raw_open(
        &conn,
        &rig,
        PtyTarget::Resume {
            id: id.clone(),
            instance,
            from: end - 10,
        },
    )
    .await
    .expect("resume near the end");
    assert_eq!(o.offset, end - 10);
    // Past the output: refused, never served from somewhere else.
    let e = raw_open(
        &conn,
        &rig,
        PtyTarget::Resume {
            id: id.clone(),
            instance,
            from: u64::MAX,
        },
    )
    .await
    .expect_err("past the end");
    assert_eq!(code(e), ErrorCode::BadRequest);
    // Another instance of the same id is not this terminal.
    let e = raw_open(
        &conn,
        &rig,
        PtyTarget::Resume {
            id: id.clone(),
            instance: instance ^ 1,
            from: 0,
        },
    )
    .await
    .expect_err("another instance");
    assert_eq!(code(e), ErrorCode::NotFound);
    drop(conn);

    // The node restarts: its terminals are gone (an adopted container is not even
    // remembered). The session dials again and ends with the node's reason: it never
    // hangs, and never shows output from anywhere else.
    rig.restart().await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(120), s.events.recv())
            .await
            .expect("the session reports in time")
            .expect("the session ends with a reason")
        {
            PtyEvent::Ended(r) => break r,
            PtyEvent::Resumed { .. } => panic!("resumed into another terminal"),
            PtyEvent::Output(b) => panic!(
                "output after the restart: {:?}",
                String::from_utf8_lossy(&b)
            ),
            PtyEvent::Lost { .. } | PtyEvent::ReadOnlyInput => {}
        }
    };
    let why = ended.expect_err("the terminal is gone");
    assert!(why.contains("NotFound") || why.contains("no "), "{why}");
}
