//! Issue 5's "done when", through the real binaries as a user runs them: `sam up --detach`
//! starts a local node whose lightweight workspaces use `sam-base:1` plus the real Claude
//! adapter; `sam chat --agent claude` (stdin piped, as a user typing) streams the answer
//! of the adapter, pointed at the fake LLM on the Docker bridge; the adapter asks
//! permission for its file edit and a second person (own `SAM_HOME`, a collaborator
//! capability for the conversation) answers it with `sam permit`; the file is then in the
//! workspace container. Needs dockerd, `sam-base:1`, the Claude adapter installed by
//! `bootstrap/agents/install-agents.sh claude` and `cargo build --workspace --bins`.

use crate::support::git_http::bridge_ip;
use crate::support::harness::walk;
use crate::support::real_agents;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sam_node::fake_llm::FakeLlm;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const IMAGE: &str = "sam-claude-test:1";

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_sam-node")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// `sam-base:1` plus the Claude adapter as installed on this host (pure JavaScript and a
/// linux-x64 binary: the same files work in the Debian container). Docker's layer cache
/// makes a rebuild cheap when nothing changed.
fn build_image() {
    real_agents::require_installed("claude");
    let ctx = real_agents::agents_dir().join("claude");
    let dockerfile = "FROM sam-base:1\n\
        COPY . /opt/sam/agents/claude\n\
        RUN ln -sf /opt/sam/agents/claude/node_modules/.bin/claude-agent-acp /usr/local/bin/claude-agent-acp\n";
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE, "-f", "-"])
        .arg(&ctx)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(dockerfile.as_bytes()).expect("dockerfile");
    }
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "building {IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sam` with its own home; no keyring, loopback only.
fn sam(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("sam"));
    c.env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env("SAM_NO_KEYRING", "1")
        .env("SAM_BASE_IMAGE", IMAGE)
        .env("SAM_NODE_BIN", bin("sam-node"))
        .env_remove("RUST_LOG")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .kill_on_drop(true);
    c
}

async fn run_json(mut cmd: tokio::process::Command, what: &str) -> serde_json::Value {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.arg("--json").output())
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

/// Kills the detached local node when the test ends.
struct NodeGuard(Option<u32>);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_chat_with_claude_in_a_docker_workspace_and_a_permission_from_a_teammate() {
    let docker_ok = Command::new("docker").arg("info").output();
    assert!(
        docker_ok.is_ok_and(|o| o.status.success()),
        "dockerd is not reachable: this test needs a running Docker engine"
    );
    build_image();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));

    // Alice: a local node, a lightweight workspace named `chat` (repo root /workspaces/chat).
    let up = run_json(
        {
            let mut c = sam(&alice);
            c.args(["up", "--detach"]);
            c
        },
        "sam up --detach",
    )
    .await;
    let _node = NodeGuard(up["pid"].as_u64().map(|p| p as u32));
    let ws = run_json(
        {
            let mut c = sam(&alice);
            c.args(["workspace", "create", "--lightweight", "--name", "chat"]);
            c
        },
        "sam workspace create",
    )
    .await;
    let ws_id = ws["id"].as_str().expect("workspace id").to_string();
    let target = "/workspaces/chat/hello.txt";
    let content = "hello from claude in a container\n";

    // The fake LLM on the bridge, where the container reaches it.
    let llm = FakeLlm::start_on(
        SocketAddr::new(bridge_ip(), 0),
        real_agents::write_script(Path::new(target), content),
        None,
    )
    .await
    .expect("fake LLM");

    // `sam chat` with Claude: the key and base URL go with the session, as a user's would.
    let mut chat = sam(&alice);
    chat.args(["chat", "--agent", "claude", "--workspace", &ws_id])
        .env("ANTHROPIC_API_KEY", real_agents::planted_key("claude"))
        .env("ANTHROPIC_BASE_URL", llm.base_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut chat = chat.spawn().expect("sam chat");
    let mut stdin = chat.stdin.take().expect("stdin");
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for pipe in [
        Box::new(chat.stdout.take().expect("stdout"))
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(chat.stderr.take().expect("stderr")),
    ] {
        let tx = out_tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    let mut seen = String::new();
    let conv = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), out_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("sam chat did not start:\n{seen}"))
            .unwrap_or_else(|| panic!("sam chat ended:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("chatting in conversation ").nth(1) {
            break rest.split_whitespace().next().expect("id").to_string();
        }
    };
    stdin
        .write_all(b"please write the greeting file\n")
        .await
        .expect("type");
    stdin.flush().await.expect("flush");

    // Bob: a collaborator on this conversation, with his own key and home.
    let bob_id = run_json(
        {
            let mut c = sam(&bob);
            c.arg("id");
            c
        },
        "sam id (bob)",
    )
    .await;
    let bob_id = bob_id["id"]
        .as_str()
        .or_else(|| bob_id.as_str())
        .expect("bob's id")
        .to_string();
    let share = run_json(
        {
            let mut c = sam(&alice);
            c.args(["share", &conv, "--role", "collaborator", "--to", &bob_id]);
            c
        },
        "sam share",
    )
    .await;
    let ticket = share["ticket"].as_str().expect("ticket").to_string();
    run_json(
        {
            let mut c = sam(&bob);
            c.args(["join", &ticket]);
            c
        },
        "sam join (bob)",
    )
    .await;

    // Bob waits for the adapter's permission request and allows it once.
    let t0 = Instant::now();
    let (msg, option) = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no permission request reached bob; sam chat said:\n{seen}"
        );
        while let Ok(l) = out_rx.try_recv() {
            seen.push_str(&l);
            seen.push('\n');
        }
        let mut sync = sam(&bob);
        sync.arg("sync");
        let _ = sync.output().await;
        let log = run_json(
            {
                let mut c = sam(&bob);
                c.args(["log", &conv]);
                c
            },
            "sam log (bob)",
        )
        .await;
        let found = log.as_array().into_iter().flatten().find_map(|m| {
            let p = m.get("permission")?.as_object()?;
            if !p.get("chosen")?.is_null() {
                return None;
            }
            let opt = p
                .get("options")?
                .as_array()?
                .iter()
                .find(|o| o["kind"] == "allow_once")
                .or_else(|| p.get("options")?.as_array()?.first())?;
            Some((
                m["id"].as_str()?.to_string(),
                opt["id"].as_str()?.to_string(),
            ))
        });
        if let Some(f) = found {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    run_json(
        {
            let mut c = sam(&bob);
            c.args(["permit", &conv, &msg, &option]);
            c
        },
        "sam permit (bob)",
    )
    .await;

    // Alice's chat streams the rest of the turn; the file is in the container.
    let t1 = Instant::now();
    while !seen.contains(real_agents::AFTER_TOOL) {
        let line = tokio::time::timeout(
            Duration::from_secs(120).saturating_sub(t1.elapsed()),
            out_rx.recv(),
        )
        .await
        .unwrap_or_else(|_| panic!("the turn did not finish after the permission:\n{seen}"))
        .unwrap_or_else(|| panic!("sam chat ended early:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(
        seen.contains("Writing the file now."),
        "the streamed answer is missing from sam chat:\n{seen}"
    );
    drop(stdin); // Ctrl-D ends the chat
    let status = tokio::time::timeout(Duration::from_secs(30), chat.wait())
        .await
        .expect("sam chat exits on end of input")
        .expect("wait");
    assert!(status.success(), "sam chat: {status}\n{seen}");

    let ps = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("name=sam-ws-{ws_id}-"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    let container = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no container for workspace {ws_id}"))
        .to_string();
    let cat = Command::new("docker")
        .args(["exec", &container, "cat", target])
        .output()
        .expect("docker exec");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        content,
        "the edit is not in the workspace ({container}): {}",
        String::from_utf8_lossy(&cat.stderr)
    );

    // The planted key reached the fake LLM and nothing on the node's disk.
    real_agents::check_requests("claude", &llm);
    let node_dir = alice.join("node");
    let planted = real_agents::planted_key("claude");
    for entry in walk(&node_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(planted.len())
                .any(|w| w == planted.as_bytes()),
            "the agent key landed in {}",
            entry.display()
        );
    }
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
}
