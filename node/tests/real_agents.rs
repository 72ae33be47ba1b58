//! The four real ACP adapters — Claude Code (`claude-agent-acp`), Codex (`codex-acp`),
//! Gemini (`gemini --acp`) and Mistral Vibe (`vibe-acp`) — each complete a prompt turn
//! against the fake LLM on 127.0.0.1, including one tool call that writes a file in the
//! workspace, with a throw-away HOME and the API key given only as environment.
//!
//! The adapters come from `bootstrap/agents/install-agents.sh` (scripts/test.sh runs it);
//! a missing adapter fails the test with what to run, it never skips.
//!
//! These tests drive each adapter with a minimal ACP client of their own (newline-delimited
//! JSON-RPC over stdio), so an adapter problem shows up here on its own, apart from the
//! node's runner.

use crate::support::real_agents;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use real_agents::{AFTER_TOOL, WRITE_PROMPT};
use sam_node::fake_llm::FakeLlm;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Longest wait for one answer from an adapter (npm adapters start slowly on a busy CI box).
const TIMEOUT: Duration = Duration::from_secs(180);

/// What one turn produced.
#[derive(Default, Debug)]
struct Turn {
    stop_reason: String,
    agent_text: String,
    tool_calls: Vec<Value>,
    permissions: Vec<Value>,
    fs_reads: Vec<String>,
    fs_writes: Vec<String>,
}

struct Driver {
    /// Held so the wrapper is killed (`kill_on_drop`) and reaped with the driver.
    _child: Child,
    /// The adapter's process group (its pid, taken at spawn: `Child::id` is gone once the
    /// wrapper has been reaped, while the native binary it started may still run).
    pgid: u32,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
    turn: Turn,
    stderr: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Codex does not exit when stdin closes and leaves its native binary behind when
        // only the wrapper dies: kill the whole process group.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Driver {
    fn spawn(argv: &[String], env: &[(String, String)], cwd: &Path, stderr: &Path) -> Self {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .env_clear()
            .envs(
                ["LANG", "TERM", "TMPDIR", "USER"]
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).expect("stderr file"))
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
        let pgid = child.id().expect("a running child has a pid");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            _child: child,
            pgid,
            stdin,
            lines,
            next_id: 0,
            turn: Turn::default(),
            stderr: stderr.to_path_buf(),
        }
    }

    fn stderr_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        s.chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }

    async fn send(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the agent");
        self.stdin.flush().await.expect("flush");
    }

    /// Sends a request and serves the agent's requests until the answer comes.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await;
        loop {
            let line = match tokio::time::timeout(TIMEOUT, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => panic!(
                    "the agent exited during {method}; stderr:\n{}",
                    self.stderr_tail()
                ),
                Ok(Err(e)) => panic!("reading the agent: {e}"),
                Err(_) => panic!(
                    "no answer to {method} within {TIMEOUT:?}; stderr:\n{}",
                    self.stderr_tail()
                ),
            };
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                panic!("the agent wrote a line that is not JSON on stdout: {line:.300}");
            };
            if msg.get("method").is_none() && msg.get("id") == Some(&json!(id)) {
                if let Some(err) = msg.get("error") {
                    panic!("{method} failed: {err}; stderr:\n{}", self.stderr_tail());
                }
                return msg.get("result").cloned().unwrap_or(Value::Null);
            }
            self.serve(msg).await;
        }
    }

    /// Answers one message from the agent (a notification or a client-side request).
    async fn serve(&mut self, msg: Value) {
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let id = msg.get("id").cloned();
        let result = match method.as_str() {
            "session/update" => {
                let u = &params["update"];
                match u["sessionUpdate"].as_str().unwrap_or_default() {
                    "agent_message_chunk" => self
                        .turn
                        .agent_text
                        .push_str(u["content"]["text"].as_str().unwrap_or_default()),
                    "tool_call" | "tool_call_update" => self.turn.tool_calls.push(u.clone()),
                    _ => {}
                }
                return;
            }
            "session/request_permission" => {
                self.turn.permissions.push(params.clone());
                // The agent's own options, never an assumed id: the first "allow" one.
                let options = params["options"].as_array().cloned().unwrap_or_default();
                let pick = options
                    .iter()
                    .find(|o| o["kind"].as_str().is_some_and(|k| k.starts_with("allow")))
                    .or(options.first())
                    .and_then(|o| o["optionId"].as_str())
                    .unwrap_or_default()
                    .to_string();
                Ok(json!({ "outcome": { "outcome": "selected", "optionId": pick } }))
            }
            "fs/read_text_file" => {
                let path = params["path"].as_str().unwrap_or_default().to_string();
                self.turn.fs_reads.push(path.clone());
                // A missing file reads as empty: Gemini 0.61 cannot create files otherwise.
                Ok(json!({ "content": std::fs::read_to_string(&path).unwrap_or_default() }))
            }
            "fs/write_text_file" => {
                let path = params["path"].as_str().unwrap_or_default().to_string();
                self.turn.fs_writes.push(path.clone());
                std::fs::write(&path, params["content"].as_str().unwrap_or_default())
                    .map(|_| Value::Null)
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!("{method} is not supported by this test client")),
        };
        let Some(id) = id else { return };
        let reply = match result {
            Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
            Err(m) => {
                json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": m } })
            }
        };
        self.send(reply).await;
    }
}

/// One agent, one turn that writes `hello.txt` in a fresh workspace directory.
async fn turn_with_a_file_write(agent: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("workspace");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&ws).expect("workspace");
    std::fs::create_dir_all(&home).expect("home");
    let target = ws.join("hello.txt");
    let content = format!("hello from {agent}\n");
    let llm = FakeLlm::start(real_agents::write_script(&target, &content))
        .await
        .expect("fake LLM");
    let setup = real_agents::setup(agent, &home, &llm);

    let mut argv: Vec<String> = match agent {
        "claude" => vec!["claude-agent-acp".into()],
        "codex" => vec!["codex-acp".into()],
        "gemini" => vec!["gemini".into(), "--acp".into(), "--skip-trust".into()],
        "vibe" => vec!["vibe-acp".into()],
        other => panic!("unknown agent {other}"),
    };
    argv[0] = real_agents::agents_dir()
        .join("bin")
        .join(&argv[0])
        .display()
        .to_string();
    argv.extend(setup.args.iter().cloned());
    let mut env = setup.env.clone();
    // What the node's registry sets for every agent, plus Claude's root switch.
    env.extend(
        [
            ("IS_SANDBOX", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DO_NOT_TRACK", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.extend(setup.credentials.iter().cloned());

    let started = std::time::Instant::now();
    let mut d = Driver::spawn(&argv, &env, &ws, &dir.path().join("stderr.log"));
    let init = d
        .request(
            "initialize",
            json!({ "protocolVersion": 1,
                    "clientCapabilities": { "fs": { "readTextFile": true, "writeTextFile": true }, "terminal": false } }),
        )
        .await;
    assert_eq!(init["protocolVersion"], json!(1), "{agent}: {init}");
    let session = d
        .request("session/new", json!({ "cwd": ws, "mcpServers": [] }))
        .await;
    let sid = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{agent}: no session id in {session}"))
        .to_string();
    let done = d
        .request(
            "session/prompt",
            json!({ "sessionId": sid, "prompt": [{ "type": "text", "text": WRITE_PROMPT }] }),
        )
        .await;
    d.turn.stop_reason = done["stopReason"].as_str().unwrap_or_default().to_string();
    let took = started.elapsed();
    eprintln!(
        "{agent}: spawn -> end of turn in {took:?}; {} tool updates, {} permission requests, fs reads {:?}, fs writes {:?}",
        d.turn.tool_calls.len(),
        d.turn.permissions.len(),
        d.turn.fs_reads,
        d.turn.fs_writes
    );

    let turn = &d.turn;
    assert_eq!(
        turn.stop_reason,
        "end_turn",
        "{agent}: {turn:#?}\nstderr:\n{}",
        d.stderr_tail()
    );
    assert!(
        turn.agent_text.contains(AFTER_TOOL),
        "{agent}: the final text is missing: {:?}",
        turn.agent_text
    );
    assert!(
        !turn.tool_calls.is_empty(),
        "{agent}: no tool call was reported"
    );
    assert!(
        turn.tool_calls
            .iter()
            .any(|t| t["status"] == json!("completed")),
        "{agent}: the tool call never completed: {:#?}",
        turn.tool_calls
    );
    let written = std::fs::read_to_string(&target)
        .unwrap_or_else(|e| panic!("{agent}: {} was not written: {e}", target.display()));
    assert_eq!(written, content, "{agent}: wrong file content");
    real_agents::check_requests(agent, &llm);
    // The key went to the fake LLM only as a header: never on the agent's command line.
    assert!(
        !argv
            .iter()
            .any(|a| a.contains(&real_agents::planted_key(agent)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_completes_a_turn_with_a_file_write() {
    turn_with_a_file_write("claude").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_completes_a_turn_with_a_file_write() {
    turn_with_a_file_write("codex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_completes_a_turn_with_a_file_write() {
    turn_with_a_file_write("gemini").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vibe_completes_a_turn_with_a_file_write() {
    turn_with_a_file_write("vibe").await;
}
