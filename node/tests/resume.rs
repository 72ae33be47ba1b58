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

use crate::support::ws_common::{Container, docker_ready, test_image};

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

    /// A node whose workspace is a container labelled as the node's own, so a restarted
    /// node finds it again (as it finds the workspaces it made).
    async fn start_labelled() -> Self {
        docker_ready();
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = SecretKey::generate();
        let node_key = SecretKey::generate();
        let ws = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--rm", "--label", "sam.test=1"])
            .args(["--label", &format!("sam.workspace={ws}")])
            .args(["--label", &format!("sam.node={}", node_key.node_id())])
            .args(["--label", "sam.root=/workspaces/repo", "--label", "sam.user=root"])
            .arg(test_image())
            .args([
                "sh",
                "-c",
                "mkdir -p /var/lib/sam /workspaces/repo && touch /var/lib/sam/ready && exec sleep infinity",
            ])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let container = Container {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        container.sh("until [ -e /var/lib/sam/ready ]; do sleep 0.1; done");
        let handle = start_node(&dir, &owner, &node_key, "127.0.0.1:0").await;
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
    // The old endpoint's socket may take a moment to go after a shutdown.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cfg = NodeConfig::new(owner.node_id());
        cfg.bind = bind.parse().expect("addr");
        match Node::start_with(NodePaths::new(dir.path()), cfg, node_key.clone()).await {
            Ok(h) => return h,
            Err(e)
                if format!("{e:#}").contains("in use") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node starts: {e:#}"),
        }
    }
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

// ---------------------------------------------------------------- downloads

/// 64 MiB of random bytes at /workspaces/repo/big.bin; its SHA-256 (hex).
fn big_file(c: &Container) -> String {
    c.sh("head -c 67108864 /dev/urandom > /workspaces/repo/big.bin && sha256sum /workspaces/repo/big.bin")
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

fn sha256_file(p: &std::path::Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(p).expect("read download"));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

type Transfer = tokio::task::JoinHandle<anyhow::Result<sam_client::streams::Transferred>>;
type Notes = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts a resumable download of big.bin into a new folder; returns the folder, the
/// task and the notes it prints.
fn start_download(rig: &Rig, ep: &Endpoint) -> (tempfile::TempDir, Transfer, Notes) {
    let local = tempfile::tempdir().expect("tempdir");
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ep, ticket, ws, dest, n) = (
        ep.clone(),
        rig.ticket(),
        rig.ws.clone(),
        local.path().to_path_buf(),
        notes.clone(),
    );
    let task = tokio::spawn(async move {
        sam_client::resume::download(
            &ep,
            &ticket,
            &ws,
            "/workspaces/repo/big.bin",
            &dest,
            Duration::from_secs(60),
            move |note| n.lock().expect("notes").push(note),
        )
        .await
    });
    (local, task, notes)
}

/// Waits until the download has written `bytes` locally (it is mid-transfer then).
async fn until_written(path: &std::path::Path, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "the download did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_across_a_node_restart_and_is_checked_end_to_end() {
    let mut rig = Rig::start_labelled().await;
    let want = big_file(&rig._container);
    let ep = rig.endpoint().await;
    let (local, task, notes) = start_download(&rig, &ep);
    let file = local.path().join("big.bin");
    until_written(&file, 4 << 20).await;
    // Killed and started again mid-transfer (same address, same home).
    rig.restart().await;
    let t = tokio::time::timeout(Duration::from_secs(300), task)
        .await
        .expect("the download ends in time")
        .expect("task")
        .expect("the download completes after the restart");
    let notes = notes.lock().expect("notes").clone();
    assert!(
        notes.iter().any(|n| n.starts_with("link lost"))
            && notes.iter().any(|n| n.starts_with("resumed at byte")),
        "the restart was retried and said so: {notes:?}"
    );
    assert_eq!(t.size, 64 << 20);
    assert!(t.sha256.is_some(), "the tar was checked end to end");
    assert_eq!(sha256_file(&file), want, "every byte of the file is right");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_file_changed_while_the_link_was_down_fails_its_check() {
    let mut rig = Rig::start_labelled().await;
    big_file(&rig._container);
    let ep = rig.endpoint().await;
    let (local, task, _notes) = start_download(&rig, &ep);
    until_written(&local.path().join("big.bin"), 4 << 20).await;
    // While the node is down, the file is replaced by other bytes of the same size: the
    // resumed tail would belong to another file.
    let old = rig.handle.take().expect("node running");
    let addr = old.addr.direct[0].to_string();
    old.shutdown().await.expect("shutdown");
    big_file(&rig._container);
    rig.handle = Some(start_node(&rig.dir, &rig.owner, &rig.node_key, &addr).await);
    let e = tokio::time::timeout(Duration::from_secs(300), task)
        .await
        .expect("the download ends in time")
        .expect("task")
        .expect_err("a joined download of two different files is refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("end-to-end check"), "{msg}");
}

// ---------------------------------------------------------------- port forwards

async fn http_get(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /index.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forward_is_re_established_after_lost_links() {
    let rig = Rig::start().await;
    rig._container.exec_detached(
        "cd /tmp && echo hello-from-container > index.txt && python3 -m http.server 8765",
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let local = listener.local_addr().expect("addr");
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(sam_client::resume::forward(
        rig.endpoint().await,
        rig.ticket(),
        rig.ws.clone(),
        8765,
        listener,
        Duration::from_secs(60),
        move |n| {
            let _ = tx.send(n);
        },
    ));
    // The server takes a moment to listen.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(local).await {
            Ok(b) if b.contains("hello-from-container") => break,
            other => {
                assert!(std::time::Instant::now() < deadline, "no answer: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    while notes.try_recv().is_ok() {}
    for round in 0..2 {
        rig.handle().node.drop_all_links();
        // Told, then back: a new connection goes through the new link.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(120), notes.recv())
                .await
                .expect("a note in time")
                .expect("the forward goes on");
            if n == "forward re-established" {
                break;
            }
        }
        let body = http_get(local).await.expect("GET after the drop");
        assert!(
            body.contains("hello-from-container"),
            "round {round}: {body}"
        );
    }
    assert!(!task.is_finished(), "the forward is still running");
    task.abort();
}

// ---------------------------------------------------------------- uploads

/// The staged uploads in the node's home.
fn staged(rig: &Rig) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(rig.dir.path().join("uploads"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_across_a_node_restart_and_is_checked_end_to_end() {
    let mut rig = Rig::start_labelled().await;
    let src = tempfile::tempdir().expect("tempdir");
    let file = src.path().join("up.bin");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).expect("write");
    let want = sha256_file(&file);
    drop(data);
    let ep = rig.endpoint().await;
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ep2, ticket, ws, f2, n) = (
        ep.clone(),
        rig.ticket(),
        rig.ws.clone(),
        file.clone(),
        notes.clone(),
    );
    let task = tokio::spawn(async move {
        sam_client::resume::upload(
            &ep2,
            &ticket,
            &ws,
            &f2,
            "/workspaces/repo/up.bin",
            Duration::from_secs(60),
            move |note| n.lock().expect("notes").push(note),
        )
        .await
    });
    // Mid-transfer: the node holds a part.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let held: u64 = staged(&rig)
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        if held >= 4 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.restart().await;
    let t = tokio::time::timeout(Duration::from_secs(300), task)
        .await
        .expect("the upload ends in time")
        .expect("task")
        .expect("the upload completes after the restart");
    let notes = notes.lock().expect("notes").clone();
    let resumed_at: u64 = notes
        .iter()
        .find_map(|n| n.strip_prefix("resumed at byte ")?.parse().ok())
        .unwrap_or_else(|| panic!("the restart was retried and said so: {notes:?}"));
    assert!(resumed_at > 0, "the node kept what it had: {notes:?}");
    assert!(t.sha256.is_some());
    let got = rig
        ._container
        .sh("sha256sum /workspaces/repo/up.bin")
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    assert_eq!(got, want, "every byte arrived once, in order");
    assert!(staged(&rig).is_empty(), "the stage is gone once unpacked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_resume_or_complete_another_peers_upload() {
    use sam_protocol::capability::{Capability, Grantee};
    use sam_protocol::stream::{DownloadFrame, FileOpen, OpenReply, UploadAt, UploadPlan};
    use sam_protocol::wire::read_frame;
    let rig = Rig::start_labelled().await;
    let header = |name: &str| FileOpen::UploadFrom {
        workspace: rig.ws.clone(),
        path: "/workspaces/repo".into(),
        name: name.into(),
        size: 1 << 20,
        count: 1,
        upload: [7; 16],
    };
    // The owner sends part of an upload and loses the link.
    let (_e, conn) = {
        let ep = rig.endpoint().await;
        let (c, _) = connect(&ep, &rig.ticket(), alpn::FILE)
            .await
            .expect("connect");
        (ep, c)
    };
    let (mut send, mut recv) = sam_client::streams::open_stream(&conn, &header("victim.bin"))
        .await
        .expect("open");
    read_frame::<UploadPlan>(&mut recv, 4096)
        .await
        .expect("plan");
    assert_eq!(
        read_frame::<UploadAt>(&mut recv, 4096)
            .await
            .expect("at")
            .at,
        0
    );
    let mut out = Vec::new();
    DownloadFrame::Data(&[b's'; 1000]).encode(&mut out);
    send.write_all(&out).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while staged(&rig)
        .iter()
        .all(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) < 1000)
    {
        assert!(std::time::Instant::now() < deadline, "nothing staged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.close(0u32.into(), b"gone");

    // A collaborator names the same upload id: it starts from nothing, never from the
    // owner's bytes, and completing "its" upload unpacks only what it sent.
    let mallory = SecretKey::generate();
    let mut t = rig.ticket();
    t.capability = Some(
        Capability::new(
            rig.owner.node_id(),
            rig.node_key.node_id(),
            Grantee::Key(mallory.node_id()),
            sam_protocol::Role::Collaborator,
            None,
            sam_client::now_secs(),
            None,
        )
        .sign(&rig.owner, None),
    );
    let ep = sam_client::endpoint::bind(&mallory, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let (mconn, _) = connect(&ep, &t, alpn::FILE).await.expect("connect");
    let (mut send, mut recv) = sam_client::streams::open_stream(&mconn, &header("mallory.bin"))
        .await
        .expect("open");
    read_frame::<UploadPlan>(&mut recv, 4096)
        .await
        .expect("plan");
    let at = read_frame::<UploadAt>(&mut recv, 4096)
        .await
        .expect("at")
        .at;
    assert_eq!(at, 0, "another peer's upload is not this peer's to resume");
    // An end with a hash that does not match what arrived is refused, nothing unpacked.
    let mut out = Vec::new();
    DownloadFrame::End([0; 32]).encode(&mut out);
    send.write_all(&out).await.expect("send");
    match read_frame::<OpenReply>(&mut recv, 1 << 16)
        .await
        .expect("reply")
    {
        OpenReply::Error(e) => assert!(e.message.contains("SHA-256"), "{}", e.message),
        OpenReply::Ok => panic!("an upload whose hash does not match was unpacked"),
    }
    let ls = rig._container.sh("ls /workspaces/repo");
    assert!(
        !ls.contains("victim.bin") && !ls.contains("mallory.bin"),
        "{ls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_transfers_round_trip_a_directory() {
    let rig = Rig::start_labelled().await;
    let src = tempfile::tempdir().expect("tempdir");
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
    std::fs::write(tree.join("top.txt"), b"top").expect("write");
    std::fs::write(tree.join("a/b/deep.txt"), b"deep").expect("write");
    std::fs::write(tree.join("a/empty"), b"").expect("write");
    let ep = rig.endpoint().await;
    let up = sam_client::resume::upload(
        &ep,
        &rig.ticket(),
        &rig.ws,
        &tree,
        "/workspaces/repo",
        Duration::from_secs(30),
        |n| panic!("nothing to retry: {n}"),
    )
    .await
    .expect("upload");
    assert_eq!(up.dest, "/workspaces/repo/tree");
    let back = tempfile::tempdir().expect("tempdir");
    let down = sam_client::resume::download(
        &ep,
        &rig.ticket(),
        &rig.ws,
        "/workspaces/repo/tree",
        back.path(),
        Duration::from_secs(30),
        |n| panic!("nothing to retry: {n}"),
    )
    .await
    .expect("download");
    assert!(down.is_dir && down.sha256.is_some());
    for (p, want) in [
        ("tree/top.txt", &b"top"[..]),
        ("tree/a/b/deep.txt", b"deep"),
        ("tree/a/empty", b""),
    ] {
        assert_eq!(std::fs::read(back.path().join(p)).expect(p), want, "{p}");
    }
}

// ---------------------------------------------------------------- ctl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctl_client_dials_again_after_a_node_restart_for_a_read() {
    use sam_protocol::ctl::{Request, Response};
    let mut rig = Rig::start_labelled().await;
    let ep = rig.endpoint().await;
    let client = sam_client::NodeClient::connect(&ep, &rig.ticket())
        .await
        .expect("ctl");
    assert!(matches!(
        client.request(Request::Ping).await.expect("ping"),
        Response::Pong
    ));
    // The node restarts (its close says "shutting down", not a refusal): the same client
    // dials again for a request that only reads.
    rig.restart().await;
    let r = client
        .request(Request::Ping)
        .await
        .expect("a read after the restart is sent on a new connection");
    assert!(matches!(r, Response::Pong), "{r:?}");
}
