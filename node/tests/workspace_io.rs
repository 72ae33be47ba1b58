//! Terminal, ports and files of a workspace, end to end: a real node on loopback
//! iroh, real clients, a real container under a real dockerd (made and removed by
//! each test), real PTYs (Docker tty execs) and the real `sam` binary for `sam shell`.
//!
//! Image: `SAM_TEST_IMAGE`, else `sam-test-mini` or `sam-base:1` when present
//! (any Debian with bash, python3, git, coreutils, diffutils).

use std::time::{Duration, Instant};

use iroh::Endpoint;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use sam_client::conn::{NodeClient, connect};
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::{FileOpen, OpenReply, PtyFrame, PtyOpen, PtyTarget, encode_data};
use sam_protocol::wire::{read_frame, write_frame};
use sam_protocol::workspace::{FileKind, FilesOp, FilesResponse};
use sam_protocol::{Role, SecretKey, Ticket, alpn};

use crate::support::ws_common as common;
use common::{Container, docker_ready};

struct Rig {
    _dir: tempfile::TempDir,
    owner: SecretKey,
    node_key: SecretKey,
    handle: NodeHandle,
    ws: String,
    container: Container,
}

impl Rig {
    async fn start() -> Self {
        Self::start_with_owner(SecretKey::generate()).await
    }

    async fn start_with_owner(owner: SecretKey) -> Self {
        docker_ready();
        let container = Container::start();
        let dir = tempfile::tempdir().expect("tempdir");
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
            container,
        }
    }

    fn ticket(&self, role: Option<(Role, &SecretKey)>) -> Ticket {
        let mut t = self.handle.ticket();
        if let Some((role, key)) = role {
            let cap = Capability::new(
                self.owner.node_id(),
                self.node_key.node_id(),
                Grantee::Key(key.node_id()),
                role,
                None,
                sam_client::now_secs(),
                None,
            )
            .sign(&self.owner, None);
            t.capability = Some(cap);
        }
        t
    }

    /// A connection on `alpn` as the owner (`None`) or as `key` with `role`.
    async fn conn(&self, alpn: &[u8], as_: Option<(Role, &SecretKey)>) -> (Endpoint, Connection) {
        let key = as_
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| self.owner.clone());
        let ep = sam_client::endpoint::bind(&key, Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
        let (c, _) = connect(&ep, &self.ticket(as_), alpn)
            .await
            .expect("connect");
        (ep, c)
    }

    async fn ctl(&self, as_: Option<(Role, &SecretKey)>) -> (Endpoint, NodeClient) {
        let key = as_
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| self.owner.clone());
        let ep = sam_client::endpoint::bind(&key, Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
        let c = NodeClient::connect(&ep, &self.ticket(as_))
            .await
            .expect("ctl");
        (ep, c)
    }
}

fn remote_err(e: anyhow::Error) -> ErrorBody {
    if let Some(b) = e.downcast_ref::<ErrorBody>() {
        return b.clone();
    }
    if let Some(sam_client::ConnectError::Remote(b)) = e.downcast_ref::<sam_client::ConnectError>()
    {
        return b.clone();
    }
    panic!("not a node error: {e:#}")
}

// ---------------------------------------------------------------- terminal

struct Term {
    send: SendStream,
    recv: RecvStream,
    seen: Vec<u8>,
    id: String,
    read_only: bool,
}

impl Term {
    async fn open(
        conn: &Connection,
        ws: &str,
        target: PtyTarget,
        cols: u16,
        rows: u16,
    ) -> anyhow::Result<Self> {
        let open = PtyOpen {
            workspace: ws.into(),
            target,
            shell: None,
            cols,
            rows,
        };
        let (o, send, recv) = sam_client::streams::open_pty(conn, &open).await?;
        Ok(Self {
            send,
            recv,
            seen: Vec::new(),
            id: o.terminal,
            read_only: o.read_only,
        })
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

    /// Reads until `needle` shows up in everything seen so far.
    async fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.recv.read_chunk(64 * 1024)).await {
                Ok(Ok(Some(c))) => self.seen.extend_from_slice(&c),
                other => panic!(
                    "waiting for {needle:?}: {other:?}; seen: {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_is_shared_live_with_scrollback_resize_and_read_only_viewers() {
    let rig = Rig::start().await;
    let (_ea, ca) = rig.conn(alpn::PTY, None).await;
    let collab = SecretKey::generate();
    let (_eb, cb) = rig
        .conn(alpn::PTY, Some((Role::Collaborator, &collab)))
        .await;

    let mut a = Term::open(&ca, &rig.ws, PtyTarget::Default, 120, 40)
        .await
        .expect("A attaches");
    let mut b = Term::open(&cb, &rig.ws, PtyTarget::Default, 100, 30)
        .await
        .expect("B attaches");
    assert_eq!(a.id, b.id, "both join the same terminal");
    assert!(!a.read_only && !b.read_only);

    // A types; both see the output (the sum, so the echo of the input does not count).
    a.type_("echo hi-$((40+2))\r").await;
    a.expect("hi-42").await;
    b.expect("hi-42").await;
    // B types too.
    b.type_("echo from-b-$((1+1))\r").await;
    a.expect("from-b-2").await;

    // The smallest attached size wins: 100x30.
    a.type_("stty size | sed 's/ /x/'\r").await;
    a.expect("30x100").await;
    // B grows; now A's 120x40 is the smallest... of 120x40 and 150x50.
    b.resize(150, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.type_("stty size | sed 's/ /y/'\r").await;
    a.expect("40y120").await;

    // A late joiner gets the scrollback.
    let (_ec, cc) = rig.conn(alpn::PTY, None).await;
    let mut c = Term::open(&cc, &rig.ws, PtyTarget::Id(a.id.clone()), 120, 40)
        .await
        .expect("C attaches");
    c.expect("hi-42").await;
    c.expect("from-b-2").await;

    // A viewer watches read-only: sees output, cannot type, cannot start terminals.
    let viewer = SecretKey::generate();
    let (_ev, cv) = rig.conn(alpn::PTY, Some((Role::Viewer, &viewer))).await;
    let mut v = Term::open(&cv, &rig.ws, PtyTarget::Default, 120, 40)
        .await
        .expect("viewer attaches");
    assert!(v.read_only);
    v.expect("hi-42").await;
    v.type_("touch /tmp/viewer-typed\r").await;
    v.expect("read-only").await;
    a.type_("ls /tmp/viewer-typed 2>&1 | sed 's/^/LS:/'; echo done-$((3*3))\r")
        .await;
    a.expect("done-9").await;
    v.expect("done-9").await;
    assert!(
        String::from_utf8_lossy(&a.seen).contains("LS:ls: cannot access"),
        "viewer input reached the shell"
    );
    let e = Term::open(&cv, &rig.ws, PtyTarget::New, 80, 24)
        .await
        .map(|_| ())
        .expect_err("viewer cannot start a terminal");
    assert_eq!(remote_err(e).code, ErrorCode::Forbidden);

    // --new opens another terminal; an unknown id is an error.
    let d = Term::open(&ca, &rig.ws, PtyTarget::New, 80, 24)
        .await
        .expect("new terminal");
    assert_ne!(d.id, a.id);
    let e = Term::open(&ca, &rig.ws, PtyTarget::Id("t999".into()), 80, 24)
        .await
        .map(|_| ())
        .expect_err("unknown id");
    assert_eq!(remote_err(e).code, ErrorCode::NotFound);

    // The shell exiting ends every attached stream.
    a.type_("exit\r").await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = b.recv.read_chunk(64 * 1024).await {}
    })
    .await;
    assert!(end.is_ok(), "B's stream ends when the shell exits");
    drop(rig.container);
}

// ---------------------------------------------------------------- ports

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_is_detected_and_forwarded() {
    let rig = Rig::start().await;
    let (_e, ctl) = rig.ctl(None).await;
    let before = sam_client::cli::ports::list(&ctl, &rig.ws)
        .await
        .expect("ports");
    assert!(!before.iter().any(|p| p.port == 8765));

    let t0 = Instant::now();
    rig.container.exec_detached(
        "cd /tmp && echo hello-from-container > index.txt && python3 -m http.server 8765",
    );
    rig.container
        .exec_detached("cd /tmp && python3 -m http.server 8766 --bind 127.0.0.1");
    let mut known = before.clone();
    let mut seen = false;
    while t0.elapsed() < Duration::from_secs(15) {
        known = sam_client::cli::ports::watch(&ctl, &rig.ws, &known, 5_000)
            .await
            .expect("watch");
        if known.iter().any(|p| p.port == 8765) && known.iter().any(|p| p.port == 8766) {
            seen = true;
            break;
        }
    }
    assert!(seen, "listeners not detected: {known:?}");
    eprintln!("listeners detected after {:?}", t0.elapsed());
    assert!(
        known
            .iter()
            .any(|p| p.port == 8766 && p.addr == "127.0.0.1"),
        "{known:?}"
    );

    // Forward through sam/port/1 and GET the file, for a 0.0.0.0 and a loopback server.
    let (_ep, conn) = rig.conn(alpn::PORT, None).await;
    for port in [8765u16, 8766] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let local = listener.local_addr().expect("addr");
        let c = conn.clone();
        let ws = rig.ws.clone();
        let task = tokio::spawn(async move {
            sam_client::streams::forward(c, ws, port, &listener, |e| eprintln!("{e}")).await
        });
        let body = http_get(local, "/index.txt").await;
        assert!(body.starts_with("HTTP/1.0 200"), "{body}");
        assert!(body.contains("hello-from-container"), "{body}");
        task.abort();
    }

    // Nothing listening: a clear error.
    let e = sam_client::streams::open_port(&conn, &rig.ws, 9)
        .await
        .map(|_| ())
        .expect_err("closed port");
    let e = remote_err(e);
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(
        e.message.contains("nothing answers on port 9"),
        "{}",
        e.message
    );

    // A viewer sees the ports but cannot forward.
    let viewer = SecretKey::generate();
    let (_ev, vctl) = rig.ctl(Some((Role::Viewer, &viewer))).await;
    assert!(
        !sam_client::cli::ports::list(&vctl, &rig.ws)
            .await
            .expect("viewer lists")
            .is_empty()
    );
    let (_ev2, vconn) = rig.conn(alpn::PORT, Some((Role::Viewer, &viewer))).await;
    let e = sam_client::streams::open_port(&vconn, &rig.ws, 8765)
        .await
        .map(|_| ())
        .expect_err("viewer forward");
    assert_eq!(remote_err(e).code, ErrorCode::Forbidden);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect forward");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[path = "workspace_io/files.rs"]
mod files;

#[path = "workspace_io/cli.rs"]
mod cli;
