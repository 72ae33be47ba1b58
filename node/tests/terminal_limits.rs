//! A shared terminal with a bad viewer (issue #16): a viewer that stops reading never
//! stalls the collaborator (it is detached with a reason the client can print), and a
//! viewer cannot shrink the terminal the collaborator works in. Real node on loopback,
//! real container under dockerd, real Docker tty exec.

use std::time::{Duration, Instant};

use iroh::Endpoint;
use iroh::endpoint::{Connection, ReadError, RecvStream, SendStream};
use sam_client::conn::connect;
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::stream::{
    PTY_RESET_TOO_SLOW, PTY_VIEWER_BUFFER, PtyFrame, PtyOpen, PtyTarget, encode_data,
    pty_reset_reason,
};
use sam_protocol::{Role, SecretKey, Ticket, alpn};

use crate::support::ws_common::{Container, docker_ready};

struct Rig {
    _dir: tempfile::TempDir,
    owner: SecretKey,
    node_key: SecretKey,
    handle: NodeHandle,
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
        let mut cfg = NodeConfig::new(owner.node_id());
        cfg.bind = "127.0.0.1:0".parse().expect("addr");
        let handle = Node::start_with(NodePaths::new(dir.path()), cfg, node_key.clone())
            .await
            .expect("node starts");
        let ws = handle
            .node
            .workspaces()
            .adopt(&container.id, "/workspaces/repo", "root")
            .await
            .expect("adopt container");
        Self {
            _dir: dir,
            owner,
            node_key,
            handle,
            ws,
            _container: container,
        }
    }

    fn ticket(&self, role: Role, key: &SecretKey) -> Ticket {
        let mut t = self.handle.ticket();
        t.capability = Some(
            Capability::new(
                self.owner.node_id(),
                self.node_key.node_id(),
                Grantee::Key(key.node_id()),
                role,
                None,
                sam_client::now_secs(),
                None,
            )
            .sign(&self.owner, None),
        );
        t
    }

    /// A new key with `role`, connected on `sam/pty/1`.
    async fn pty_conn(&self, role: Role) -> (Endpoint, Connection) {
        let key = SecretKey::generate();
        let ep = sam_client::endpoint::bind(&key, Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
        let (c, _) = connect(&ep, &self.ticket(role, &key), alpn::PTY)
            .await
            .expect("connect");
        (ep, c)
    }
}

struct Term {
    send: SendStream,
    recv: RecvStream,
    /// The last bytes seen (enough to find a marker).
    tail: Vec<u8>,
    /// Every `x` seen so far.
    xs: usize,
    read_only: bool,
}

impl Term {
    async fn open(conn: &Connection, ws: &str, cols: u16, rows: u16) -> Self {
        let open = PtyOpen {
            workspace: ws.into(),
            target: PtyTarget::Default,
            shell: None,
            cols,
            rows,
        };
        let (o, send, recv) = sam_client::streams::open_pty(conn, &open)
            .await
            .expect("attach");
        Self {
            send,
            recv,
            tail: Vec::new(),
            xs: 0,
            read_only: o.read_only,
        }
    }

    async fn type_(&mut self, s: &str) {
        let mut f = Vec::new();
        encode_data(s.as_bytes(), &mut f);
        self.send.write_all(&f).await.expect("type");
    }

    async fn resize(&mut self, cols: u16, rows: u16) {
        let mut f = Vec::new();
        PtyFrame::Resize { cols, rows }.encode(&mut f);
        self.send.write_all(&f).await.expect("resize");
    }

    /// Reads until `needle` shows up; counts the `x`s on the way.
    async fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if String::from_utf8_lossy(&self.tail).contains(needle) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.recv.read_chunk(64 * 1024)).await {
                Ok(Ok(Some(c))) => {
                    self.xs += c.iter().filter(|b| **b == b'x').count();
                    self.tail.extend_from_slice(&c);
                    let keep = 4096.min(self.tail.len());
                    self.tail.drain(..self.tail.len() - keep);
                }
                other => panic!(
                    "waiting for {needle:?}: {other:?}; tail: {:?}",
                    String::from_utf8_lossy(&self.tail)
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_dropped_with_a_reason_and_never_stalls_the_writer() {
    let rig = Rig::start().await;
    let (_ea, ca) = rig.pty_conn(Role::Collaborator).await;
    let (_ev, cv) = rig.pty_conn(Role::Viewer).await;
    let mut a = Term::open(&ca, &rig.ws, 100, 30).await;
    let mut v = Term::open(&cv, &rig.ws, 100, 30).await;
    assert!(!a.read_only && v.read_only);
    a.type_("stty -echo; echo ready-$((2*3))\r").await;
    a.expect("ready-6").await;

    // Far more output than the viewer's buffer plus every QUIC window; the viewer
    // reads nothing.
    const XS: usize = 24 * 1024 * 1024;
    const { assert!(XS > 8 * PTY_VIEWER_BUFFER) };
    a.type_(&format!(
        "head -c {XS} /dev/zero | tr '\\0' x; echo; echo end-$((6*7))\r"
    ))
    .await;
    a.expect("end-42").await;
    // Every byte (a prompt could add an `x` or two, never take one away).
    assert!(a.xs >= XS, "the collaborator got {} of {XS} bytes", a.xs);

    // The viewer was detached with a reason its client can print.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(60), v.recv.read_chunk(64 * 1024))
            .await
            .expect("the viewer's stream ends")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the slow viewer's stream was finished without a reason"),
            Err(ReadError::Reset(code)) => break code.into_inner(),
            Err(e) => panic!("the slow viewer's stream ended with {e}, not the reason"),
        }
    };
    assert_eq!(code, u64::from(PTY_RESET_TOO_SLOW));
    assert!(pty_reset_reason(code).is_some_and(|r| r.contains("behind")));

    // The writer goes on.
    a.type_("echo still-$((5+5))\r").await;
    a.expect("still-10").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_resize_the_shared_terminal() {
    let rig = Rig::start().await;
    let (_ea, ca) = rig.pty_conn(Role::Collaborator).await;
    let (_ev, cv) = rig.pty_conn(Role::Viewer).await;
    let mut a = Term::open(&ca, &rig.ws, 100, 30).await;
    a.type_("stty size | sed 's/ /x/'\r").await;
    a.expect("30x100").await;

    // The viewer attaches smaller, then asks to shrink further.
    let mut v = Term::open(&cv, &rig.ws, 40, 10).await;
    assert!(v.read_only);
    v.resize(20, 5).await;
    // Barrier: the node handles a viewer's frames in order, so once the read-only
    // notice (for this keystroke) is back, the resize before it was handled.
    v.type_("q").await;
    v.expect("read-only").await;

    a.type_("stty size | sed 's/ /y/'\r").await;
    a.expect("30y100").await;
}
