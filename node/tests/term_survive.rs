//! A shared terminal outlives its node (issue #18, "kill and restart the node mid-shell").
//! The node is a real `sam-node run` process killed with SIGKILL and started again on the
//! same home and address; the terminal's PTY, shell, processes and output are held by
//! `sam-pty-hold` inside the container meanwhile. The client reattaches by the byte it
//! had reached and gets the rest exactly once. And what the node adopts after a restart
//! comes from its own records: a workspace that fakes holder sockets cannot make it serve
//! another workspace's terminal.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sam_client::resume::{PtyEvent, PtySession, attach_pty};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::{PtyOpen, PtyTarget};
use sam_protocol::{SecretKey, Ticket, alpn};

use crate::support::ws_common::{Container, docker_ready, test_image};

fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sam-node"))
}

/// A `sam-node run` process on a fixed loopback port and its own home.
struct NodeProc {
    home: tempfile::TempDir,
    node_id: String,
    child: Option<Child>,
    ticket: Option<Ticket>,
    /// Extra environment of the node process.
    env: Vec<(String, String)>,
}

impl NodeProc {
    fn init(owner: &SecretKey, env: Vec<(String, String)>) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("udp")
            .local_addr()
            .expect("addr")
            .port();
        let bind = format!("127.0.0.1:{port}");
        let out = Command::new(node_bin())
            .env("SAM_HOME", home.path())
            .args([
                "init",
                "--owner",
                &owner.node_id().to_string(),
                "--bind",
                &bind,
            ])
            .output()
            .expect("sam-node init");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Self {
            home,
            node_id,
            child: None,
            ticket: None,
            env,
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join("node")
    }

    /// Starts `sam-node run` and reads its ticket (tries again while the port is still
    /// held by the killed one).
    fn start(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.home.path().join("node.log"))
                .expect("log");
            let mut child = Command::new(node_bin())
                .env("SAM_HOME", self.home.path())
                .env("RUST_LOG", "info,iroh=warn,noq=warn")
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .args(["run", "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("sam-node run");
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout");
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(t) = v["ticket"].as_str()
            {
                self.ticket = Some(t.parse().expect("ticket"));
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                std::time::Instant::now() < deadline,
                "sam-node did not start: {}",
                std::fs::read_to_string(self.home.path().join("node.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("kill -9");
        let _ = c.wait();
    }

    fn ticket(&self) -> Ticket {
        self.ticket.clone().expect("started")
    }

    /// A workspace container labelled as this node's, so a restarted node finds it.
    fn workspace(&self) -> (String, Container) {
        let ws = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let out = Command::new("docker")
            .args(["run", "-d", "--rm", "--label", "sam.test=1"])
            .args(["--label", &format!("sam.workspace={ws}")])
            .args(["--label", &format!("sam.node={}", self.node_id)])
            .args([
                "--label",
                "sam.root=/workspaces/repo",
                "--label",
                "sam.user=root",
            ])
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
        let c = Container {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        c.sh("until [ -e /var/lib/sam/ready ]; do sleep 0.1; done");
        (ws, c)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn open(ws: &str, target: PtyTarget, script: Option<&str>) -> PtyOpen {
    PtyOpen {
        workspace: ws.to_string(),
        target,
        shell: script.map(|s| vec!["sh".into(), "-c".into(), s.into()]),
        cols: 100,
        rows: 30,
    }
}

async fn endpoint(owner: &SecretKey) -> iroh::Endpoint {
    sam_client::endpoint::bind(owner, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind")
}

/// What a session delivered.
#[derive(Default)]
struct Seen {
    out: Vec<u8>,
    lost: usize,
    resumed: Vec<(u64, u64)>,
}

impl Seen {
    async fn until(&mut self, s: &mut PtySession, needle: &str) {
        while !self.has(needle) {
            let ev = tokio::time::timeout(Duration::from_secs(180), s.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {needle:?} in time; got {:?}",
                        String::from_utf8_lossy(&self.out)
                    )
                })
                .unwrap_or_else(|| panic!("the session ended before {needle:?}"));
            match ev {
                PtyEvent::Output(b) => self.out.extend_from_slice(&b),
                PtyEvent::Lost { .. } => self.lost += 1,
                PtyEvent::Resumed { at, missed } => {
                    assert_eq!(at, self.out.len() as u64, "resumed at another byte");
                    self.resumed.push((at, missed));
                }
                PtyEvent::ReadOnlyInput => panic!("the owner is not read-only"),
                PtyEvent::Ended(r) => panic!(
                    "the session ended: {r:?}; output so far {:?}",
                    String::from_utf8_lossy(&self.out)
                ),
            }
        }
    }

    fn has(&self, needle: &str) -> bool {
        self.out
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// Starts a background `sleep`, says its pid, then counts to 400 every 50 ms.
const COUNTER: &str = "stty -echo; sleep 1000 & echo pid=$!; i=0; \
    while [ $i -lt 400 ]; do i=$((i+1)); echo c$i; sleep 0.05; done; echo fin$((6*7)); sleep 600";

fn want_counter(pid: &str) -> String {
    let mut want = format!("pid={pid}\r\n");
    for i in 1..=400 {
        want.push_str(&format!("c{i}\r\n"));
    }
    want.push_str("fin42\r\n");
    want
}

fn pid_of(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    s.split("pid=")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .expect("pid line")
        .to_string()
}

fn assert_same(got: &[u8], want: &str) {
    let got = String::from_utf8_lossy(got);
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let from = at.saturating_sub(40);
        panic!(
            "the output differs from the shell's at byte {at} (got {} bytes, want {}): got {:?}, want {:?}",
            got.len(),
            want.len(),
            &got[from..(at + 40).min(got.len())],
            &want[from..(at + 40).min(want.len())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_survives_a_node_killed_with_sigkill_with_no_lost_or_doubled_byte() {
    docker_ready();
    let owner = SecretKey::generate();
    let mut node = NodeProc::init(&owner, Vec::new());
    let (ws, c) = node.workspace();
    node.start();
    let ep = endpoint(&owner).await;
    let mut s = attach_pty(
        ep.clone(),
        node.ticket(),
        open(&ws, PtyTarget::New, Some(COUNTER)),
        Duration::from_secs(150),
    )
    .await
    .expect("attach");
    assert_eq!(s.opened.offset, 0);
    let mut seen = Seen::default();
    seen.until(&mut s, "c20\r\n").await;
    let pid = pid_of(&seen.out);

    // Mid-shell: the node dies at once (no shutdown code), the counter goes on in the
    // container, and the node comes back on the same home and address.
    node.kill9();
    c.sh("sleep 1");
    node.start();
    seen.until(&mut s, "fin42\r\n").await;

    assert_same(&seen.out, &want_counter(&pid));
    assert!(seen.lost >= 1, "the restart was a lost link");
    assert!(
        !seen.resumed.is_empty() && seen.resumed.iter().all(|(_, missed)| *missed == 0),
        "resumed with nothing missed: {:?}",
        seen.resumed
    );
    // The process started before the restart is the same one, still running.
    c.sh(&format!("kill -0 {pid}"));
    let comm = c.sh(&format!("cat /proc/{pid}/cmdline | tr '\\0' ' '"));
    assert!(comm.starts_with("sleep 1000"), "{comm}");

    // The terminal is the same one: typing reaches the same shell after the restart.
    let _ = s.input.send(sam_client::resume::PtyIn::Detach).await;
    let mut s2 = attach_pty(
        ep.clone(),
        node.ticket(),
        open(&ws, PtyTarget::Id(s.opened.terminal.clone()), None),
        Duration::from_secs(60),
    )
    .await
    .expect("attach by id after the restart");
    assert_eq!(s2.opened.instance, s.opened.instance, "the same terminal");
    let mut again = Seen::default();
    again.until(&mut s2, "fin42\r\n").await;
}

/// A fake holder: answers any attach with a hello, bytes of its own, then a frame longer
/// than any the node takes.
const FAKE_HOLDER: &str = r#"
import os, socket, struct, sys, threading
def serve(path):
    try: os.unlink(path)
    except OSError: pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
    while True:
        c, _ = s.accept()
        try:
            c.recv(64)
            data = b"FAKE-HOLDER\r\n"
            c.sendall(bytes([11]) + struct.pack(">IIQQ", 20, 1, 0, len(data)))
            c.sendall(bytes([12]) + struct.pack(">IQ", 8 + len(data), 0) + data)
            c.sendall(bytes([12]) + struct.pack(">I", 0xffffffff))
        except OSError:
            pass
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
"#;

fn saved(dir: &Path) -> Vec<serde_json::Value> {
    let b = std::fs::read(dir.join("terminals.json")).expect("terminals.json");
    serde_json::from_slice(&b).expect("json")
}

fn code(e: anyhow::Error) -> ErrorCode {
    e.downcast_ref::<ErrorBody>()
        .unwrap_or_else(|| panic!("not a node error: {e:#}"))
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_faking_holder_sockets_cannot_get_another_workspaces_terminal_served() {
    docker_ready();
    let owner = SecretKey::generate();
    let mut node = NodeProc::init(&owner, Vec::new());
    let (ws_a, a) = node.workspace();
    let (ws_b, b) = node.workspace();
    node.start();
    let ep = endpoint(&owner).await;
    let mut sa = attach_pty(
        ep.clone(),
        node.ticket(),
        open(&ws_a, PtyTarget::New, Some(COUNTER)),
        Duration::from_secs(150),
    )
    .await
    .expect("attach a");
    let mut sb = attach_pty(
        ep.clone(),
        node.ticket(),
        open(&ws_b, PtyTarget::New, Some("echo b-ready; sleep 600")),
        Duration::from_secs(150),
    )
    .await
    .expect("attach b");
    let (id_a, inst_a) = (sa.opened.terminal.clone(), sa.opened.instance);
    let (id_b, inst_b) = (sb.opened.terminal.clone(), sb.opened.instance);
    let mut seen_a = Seen::default();
    seen_a.until(&mut sa, "c10\r\n").await;
    let pid = pid_of(&seen_a.out);
    Seen::default().until(&mut sb, "b-ready").await;
    drop(sb);

    // The node's own records: where each terminal's holder is.
    let recs = saved(&node.dir());
    let sock_of = |id: &str| {
        recs.iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["sock"].as_str())
            .unwrap_or_else(|| panic!("{id} recorded: {recs:?}"))
            .to_string()
    };
    let (sock_a, sock_b) = (sock_of(&id_a), sock_of(&id_b));

    node.kill9();
    // While the node is down, workspace B's processes kill B's holder and put fakes in
    // its place, at A's socket path and at names that look like terminal ids.
    b.sh("pkill -f '^/opt/sam/sam-pty-hold' || true");
    let dir_b = Path::new(&sock_b)
        .parent()
        .expect("dir")
        .to_string_lossy()
        .to_string();
    b.exec_detached(&format!(
        "python3 -c '{}' {sock_b} {sock_a} {dir_b}/t1.sock {dir_b}/{id_a}.sock",
        FAKE_HOLDER.replace('\'', "'\\''")
    ));
    b.sh(&format!(
        "until [ -S {sock_a} ] && [ -S {sock_b} ]; do sleep 0.1; done"
    ));
    node.start();

    // A's terminal is A's: it resumes at its byte with its own output only.
    seen_a.until(&mut sa, "fin42\r\n").await;
    assert_same(&seen_a.out, &want_counter(&pid));
    assert!(
        !seen_a.has("FAKE"),
        "bytes from B's fake holder in A's terminal"
    );

    // Naming A's terminal in workspace B never reaches it (nor B's fakes).
    let (conn, _) = sam_client::conn::connect(&ep, &node.ticket(), alpn::PTY)
        .await
        .expect("connect");
    for target in [
        PtyTarget::Resume {
            id: id_a.clone(),
            instance: inst_a,
            from: 0,
        },
        PtyTarget::Id(id_a.clone()),
        PtyTarget::Id("t9".into()),
    ] {
        let r = sam_client::streams::open_pty(&conn, &open(&ws_b, target.clone(), None)).await;
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{target:?} in B was served"));
        assert_eq!(code(e), ErrorCode::NotFound, "{target:?}");
    }
    // B's own terminal, now behind a faked socket that sends a frame over the limit: the
    // node drops it (no panic, no unbounded read) and forgets it.
    let r = sam_client::streams::open_pty(
        &conn,
        &open(
            &ws_b,
            PtyTarget::Resume {
                id: id_b.clone(),
                instance: inst_b,
                from: 0,
            },
            None,
        ),
    )
    .await;
    if let Ok((opened, _send, mut recv)) = r {
        // Served at most what B's own container sent, then ended.
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(c)) = recv.read_chunk(64 * 1024).await {
                got.extend_from_slice(&c);
            }
        })
        .await;
        assert_eq!(opened.terminal, id_b);
        let got = String::from_utf8_lossy(&got);
        assert!(!got.contains("c1\r\n") && !got.contains("pid="), "{got}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while saved(&node.dir()).iter().any(|r| r["id"] == id_b) {
        assert!(
            std::time::Instant::now() < deadline,
            "B's faked terminal is still recorded: {:?}",
            saved(&node.dir())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A's shell and its process lived through all of it.
    a.sh(&format!("kill -0 {pid}"));
    assert!(
        saved(&node.dir()).iter().any(|r| r["id"] == id_a),
        "A's terminal is still recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_cannot_run_the_holder_gets_the_old_terminal_and_is_told() {
    docker_ready();
    let owner = SecretKey::generate();
    // A node without the holder binary: every terminal takes the old path.
    let mut node = NodeProc::init(
        &owner,
        vec![("SAM_PTY_HOLD".into(), "/nonexistent/sam-pty-hold".into())],
    );
    let (ws, _c) = node.workspace();
    node.start();
    let ep = endpoint(&owner).await;
    let mut s = attach_pty(
        ep.clone(),
        node.ticket(),
        open(&ws, PtyTarget::New, Some("echo old-path-works; sleep 600")),
        Duration::from_secs(60),
    )
    .await
    .expect("attach");
    let mut seen = Seen::default();
    seen.until(&mut s, "old-path-works").await;
    assert!(
        seen.has("[sam: this terminal will not survive a node restart"),
        "{:?}",
        String::from_utf8_lossy(&seen.out)
    );
}

/// Transfers already resumed across a graceful restart (`resume.rs`); this checks the same
/// under SIGKILL, where no shutdown close reaches the client (it finds out by timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_across_a_node_killed_with_sigkill() {
    use sha2::Digest;
    docker_ready();
    let owner = SecretKey::generate();
    let mut node = NodeProc::init(&owner, Vec::new());
    let (ws, c) = node.workspace();
    let want = c
        .sh("head -c 67108864 /dev/urandom > /workspaces/repo/big.bin && sha256sum /workspaces/repo/big.bin")
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    node.start();
    let ep = endpoint(&owner).await;
    let local = tempfile::tempdir().expect("tempdir");
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (ep2, ticket, ws2, dest, n) = (
        ep.clone(),
        node.ticket(),
        ws.clone(),
        local.path().to_path_buf(),
        notes.clone(),
    );
    let task = tokio::spawn(async move {
        sam_client::resume::download(
            &ep2,
            &ticket,
            &ws2,
            "/workspaces/repo/big.bin",
            &dest,
            Duration::from_secs(150),
            move |note| n.lock().expect("notes").push(note),
        )
        .await
    });
    let file = local.path().join("big.bin");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill9();
    node.start();
    let t = tokio::time::timeout(Duration::from_secs(300), task)
        .await
        .expect("the download ends in time")
        .expect("task")
        .expect("the download completes after the restart");
    let notes = notes.lock().expect("notes").clone();
    assert!(
        notes.iter().any(|n| n.starts_with("resumed at byte")),
        "the kill was retried and said so: {notes:?}"
    );
    assert!(t.sha256.is_some(), "checked end to end");
    let got: String = sha2::Sha256::digest(std::fs::read(&file).expect("read"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, want, "every byte of the file is right");
}

/// The holder makes its socket only in a folder of its own user: never through a link,
/// never in a folder somebody else made first (who could then reach the shell).
#[test]
fn the_holder_refuses_a_socket_folder_it_does_not_own() {
    let hold = PathBuf::from(env!("CARGO_BIN_EXE_sam-pty-hold"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let serve = |sock: &Path| {
        Command::new(&hold)
            .arg("serve")
            .arg(sock)
            .args(["80", "24", "--", "sh", "-c", "sleep 600"])
            .output()
            .expect("run sam-pty-hold")
    };
    // A link to a folder (even one of ours) in place of the socket folder.
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let out = serve(&link.join("t.sock"));
    assert!(!out.status.success(), "served through a link");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a folder of this user"), "{err}");
    assert!(!real.join("t.sock").exists());
    // A folder another user made first (as root, the test can make one).
    if my_uid() == 0 {
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        let ok = Command::new("chown")
            .arg("4242:4242")
            .arg(&theirs)
            .status()
            .expect("chown");
        assert!(ok.success());
        let out = serve(&theirs.join("t.sock"));
        assert!(!out.status.success(), "served in another user's folder");
        assert!(!theirs.join("t.sock").exists());
    }
    // Its own folder is made 0700.
    let mine = tmp.path().join("mine");
    let sock = mine.join("t.sock");
    let mut child = Command::new(&hold)
        .arg("serve")
        .arg(&sock)
        .args(["80", "24", "--", "sh", "-c", "sleep 600"])
        .spawn()
        .expect("run sam-pty-hold");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&mine).expect("meta").permissions().mode() & 0o777;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o700);
}

fn my_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid")
}

/// Reads `recv` until `needle` shows up.
async fn read_until(recv: &mut iroh::endpoint::RecvStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !seen.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        let c = tokio::time::timeout_at(deadline, recv.read_chunk(64 * 1024))
            .await
            .unwrap_or_else(|_| {
                panic!("no {needle:?} in time: {:?}", String::from_utf8_lossy(seen))
            })
            .expect("read")
            .unwrap_or_else(|| panic!("ended before {needle:?}"));
        seen.extend_from_slice(&c);
    }
}

async fn send_frame(send: &mut iroh::endpoint::SendStream, f: sam_protocol::stream::PtyFrame) {
    let mut b = Vec::new();
    f.encode(&mut b);
    send.write_all(&b).await.expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_can_neither_type_nor_resize_a_terminal_adopted_after_a_restart() {
    use sam_protocol::capability::{Capability, Grantee};
    use sam_protocol::stream::PtyFrame;
    docker_ready();
    let owner = SecretKey::generate();
    let mut node = NodeProc::init(&owner, Vec::new());
    let (ws, c) = node.workspace();
    node.start();
    let ep = endpoint(&owner).await;
    let (conn, _) = sam_client::conn::connect(&ep, &node.ticket(), alpn::PTY)
        .await
        .expect("connect");
    let (opened, mut send, mut recv) =
        sam_client::streams::open_pty(&conn, &open(&ws, PtyTarget::New, None))
            .await
            .expect("open");
    let mut seen = Vec::new();
    send_frame(
        &mut send,
        PtyFrame::Data(b"stty size | sed 's/ /x/'\r".to_vec()),
    )
    .await;
    read_until(&mut recv, &mut seen, "30x100").await;
    drop((send, recv));
    conn.close(0u32.into(), b"bye");

    node.kill9();
    node.start();

    // The collaborator is back on the adopted terminal; a viewer of it types and resizes.
    let (conn, _) = sam_client::conn::connect(&ep, &node.ticket(), alpn::PTY)
        .await
        .expect("connect");
    let (_o, mut send, mut recv) = sam_client::streams::open_pty(
        &conn,
        &open(&ws, PtyTarget::Id(opened.terminal.clone()), None),
    )
    .await
    .expect("open");
    let viewer = SecretKey::generate();
    let mut t = node.ticket();
    t.capability = Some(
        Capability::new(
            owner.node_id(),
            node.node_id.parse().expect("node id"),
            Grantee::Key(viewer.node_id()),
            sam_protocol::Role::Viewer,
            None,
            sam_client::now_secs(),
            None,
        )
        .sign(&owner, None),
    );
    let vep = endpoint(&viewer).await;
    let (vconn, _) = sam_client::conn::connect(&vep, &t, alpn::PTY)
        .await
        .expect("viewer connects");
    let (vo, mut vsend, mut vrecv) = sam_client::streams::open_pty(
        &vconn,
        &open(&ws, PtyTarget::Id(opened.terminal.clone()), None),
    )
    .await
    .expect("viewer attaches");
    assert!(vo.read_only);
    assert_eq!(vo.instance, opened.instance, "the adopted terminal");
    send_frame(&mut vsend, PtyFrame::Resize { cols: 20, rows: 5 }).await;
    send_frame(&mut vsend, PtyFrame::Data(b"touch /tmp/pwned\r".to_vec())).await;
    let mut vseen = Vec::new();
    // The notice comes after both frames were handled (in order).
    read_until(&mut vrecv, &mut vseen, "read-only").await;

    // The collaborator's terminal kept its size; the viewer's command never ran.
    let mut seen = Vec::new();
    send_frame(
        &mut send,
        PtyFrame::Data(b"stty size | sed 's/ /y/'\r".to_vec()),
    )
    .await;
    read_until(&mut recv, &mut seen, "30y100").await;
    let ls = c.sh("ls /tmp");
    assert!(
        !ls.contains("pwned"),
        "the viewer's input reached the shell"
    );
}
