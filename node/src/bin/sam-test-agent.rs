//! `sam-test-agent`: a scripted ACP agent speaking real ACP (JSON-RPC 2.0, one message per
//! line) over stdio, for tests and benchmarks.
//!
//! Each prompt is a script: commands separated by `;` or newlines.
//!
//! | command | does |
//! |---|---|
//! | `say TEXT` | one agent message chunk |
//! | `chunks N [DELAY_MS]` | N chunks `cI ` (stops early on `session/cancel`) |
//! | `stamps N [RATE]` | N chunks `[MICROS]` carrying the send time, RATE per second or as fast as possible (benchmarks) |
//! | `think TEXT` | a thought chunk |
//! | `tool KIND TITLE…` | a tool call, an update with output, then completed |
//! | `plan` | a plan of two entries |
//! | `commands` | an available-commands update |
//! | `permit [KIND]` | asks permission; says `permission: selected ID` or `permission: cancelled` |
//! | `write PATH TEXT…` / `read PATH` | `fs/write_text_file` / `fs/read_text_file` |
//! | `run CMD ARGS…` | `terminal/create`, `wait_for_exit`, `output`, `release` |
//! | `env NAME` | says whether NAME is set and its length (never the value) |
//! | `whoami` | says the session id and whether it was loaded |
//! | `recall WORD` | says `recall WORD: yes` when the blocks before the script (context given to a restarted or moved agent) contain WORD, else `recall WORD: no` |
//! | `sleep MS` | waits (cancellable) |
//! | `stderr TEXT` | writes to stderr |
//! | `stderr-env NAME` | writes NAME=value to stderr (to test redaction) |
//! | `leak NAME` | a misbehaving agent: NAME's value in its message text (split over three chunks), a thought, a tool title and a tool's output (to test redaction) |
//! | `crash` | writes to stderr and exits 3 mid-turn |
//! | `hang` | never answers (ignores cancel) |
//! | `garbage` / `nonacp` | writes non-JSON / non-ACP JSON lines on stdout |
//! | `big BYTES` | one agent message chunk of BYTES bytes |
//!
//! `SAM_TEST_AGENT_MODE`: `exit-on-init`, `garbage-on-init`, `hang-on-init`, `no-load`
//! (do not advertise `loadSession`).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Agent {
    out: std::io::BufWriter<std::io::Stdout>,
    rx: mpsc::Receiver<Value>,
    /// Messages read while waiting for a response.
    backlog: VecDeque<Value>,
    next_id: u64,
    session: String,
    loaded: bool,
    cancelled: bool,
    cwd: String,
    /// Text of the prompt's blocks before the script (context from the client).
    context: String,
}

fn main() {
    let mode = std::env::var("SAM_TEST_AGENT_MODE").unwrap_or_default();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("sam-test-agent: bad input line: {e}"),
            }
        }
    });
    let mut a = Agent {
        out: std::io::BufWriter::new(std::io::stdout()),
        rx,
        backlog: VecDeque::new(),
        next_id: 1000,
        session: String::new(),
        loaded: false,
        cancelled: false,
        cwd: String::new(),
        context: String::new(),
    };
    while let Some(msg) = a.next() {
        let method = msg["method"].as_str().unwrap_or_default().to_string();
        let id = msg.get("id").cloned();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        match (method.as_str(), id) {
            ("initialize", Some(id)) => match mode.as_str() {
                "exit-on-init" => {
                    eprintln!("sam-test-agent: exiting during initialize as asked");
                    std::process::exit(2);
                }
                "garbage-on-init" => {
                    a.raw("this is not json at all");
                    a.raw("{\"hello\": \"not acp\"}");
                }
                "hang-on-init" => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
                _ => {
                    let caps = json!({ "loadSession": mode != "no-load" });
                    a.respond(
                        id,
                        json!({ "protocolVersion": 1, "agentCapabilities": caps, "authMethods": [],
                            "agentInfo": { "name": "sam-test-agent", "version": "1" } }),
                    );
                }
            },
            ("session/new", Some(id)) => {
                a.session = format!("test-{}-{}", std::process::id(), now_micros());
                a.loaded = false;
                a.cwd = params["cwd"].as_str().unwrap_or_default().to_string();
                let s = a.session.clone();
                a.respond(id, json!({ "sessionId": s }));
            }
            ("session/load", Some(id)) => {
                a.session = params["sessionId"].as_str().unwrap_or_default().to_string();
                a.loaded = true;
                a.cwd = params["cwd"].as_str().unwrap_or_default().to_string();
                a.respond(id, json!({}));
            }
            ("session/prompt", Some(id)) => {
                // A restarted agent may get the transcript as earlier blocks: the script is
                // the last block.
                let script: String = params["prompt"]
                    .as_array()
                    .and_then(|blocks| blocks.iter().rev().find_map(|b| b["text"].as_str()))
                    .unwrap_or_default()
                    .to_string();
                let texts: Vec<&str> = params["prompt"]
                    .as_array()
                    .map(|blocks| blocks.iter().filter_map(|b| b["text"].as_str()).collect())
                    .unwrap_or_default();
                a.context = texts[..texts.len().saturating_sub(1)].join("\n");
                a.cancelled = false;
                for cmd in script.split([';', '\n']) {
                    if a.cancelled {
                        break;
                    }
                    a.run(cmd.trim());
                }
                let reason = if a.cancelled { "cancelled" } else { "end_turn" };
                a.respond(id, json!({ "stopReason": reason }));
            }
            ("session/cancel", None) => a.cancelled = true,
            (_, Some(id)) => a.error(id, -32601, &format!("method not found: {method}")),
            (_, None) => {}
        }
    }
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

impl Agent {
    fn next(&mut self) -> Option<Value> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        self.rx.recv().ok()
    }

    fn raw(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn send(&mut self, v: &Value) {
        if let Ok(s) = serde_json::to_string(v) {
            self.raw(&s);
        }
    }

    fn respond(&mut self, id: Value, result: Value) {
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "result": result }));
    }

    fn error(&mut self, id: Value, code: i64, message: &str) {
        self.send(
            &json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
        );
    }

    fn update(&mut self, update: Value) {
        let s = self.session.clone();
        self.send(&json!({ "jsonrpc": "2.0", "method": "session/update",
            "params": { "sessionId": s, "update": update } }));
    }

    fn say(&mut self, text: &str) {
        self.update(json!({ "sessionUpdate": "agent_message_chunk",
            "content": { "type": "text", "text": text } }));
    }

    /// Handles what arrived so far without waiting (notices `session/cancel`).
    fn poll_incoming(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            if m["method"] == "session/cancel" {
                self.cancelled = true;
            } else {
                self.backlog.push_back(m);
            }
        }
    }

    /// Sends a request to the client and waits for its answer.
    fn request(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let m = self.rx.recv().map_err(|_| "stdin closed".to_string())?;
            if m.get("method").is_none() && m["id"] == json!(id) {
                if let Some(e) = m.get("error") {
                    return Err(e.to_string());
                }
                return Ok(m.get("result").cloned().unwrap_or(Value::Null));
            }
            if m["method"] == "session/cancel" {
                self.cancelled = true;
            } else {
                self.backlog.push_back(m);
            }
        }
    }

    fn sleep(&mut self, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end && !self.cancelled {
            std::thread::sleep(Duration::from_millis(5).min(end - Instant::now()));
            self.poll_incoming();
        }
    }

    fn run(&mut self, cmd: &str) {
        let (verb, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        let rest = rest.trim();
        let num = |s: &str, d: u64| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(d)
        };
        let sid = self.session.clone();
        match verb {
            "" => {}
            "say" => self.say(rest),
            "chunks" => {
                let n = num(rest, 10);
                let delay = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                for i in 0..n {
                    self.say(&format!("c{i} "));
                    if delay > 0 {
                        self.sleep(delay);
                    } else if i % 256 == 0 {
                        self.poll_incoming();
                    }
                    if self.cancelled {
                        break;
                    }
                }
            }
            "stamps" => {
                // `stamps N [RATE]`: N chunks, as fast as possible or RATE per second.
                let (n, rate) = rest.split_once(' ').unwrap_or((rest, ""));
                let rate = rate.trim().parse::<u64>().ok().filter(|r| *r > 0);
                let t0 = Instant::now();
                for i in 0..num(n, 10) {
                    if let Some(r) = rate {
                        let due = t0 + Duration::from_micros(i * 1_000_000 / r);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    self.say(&format!("[{}]", now_micros()));
                }
            }
            "think" => self.update(json!({ "sessionUpdate": "agent_thought_chunk",
                "content": { "type": "text", "text": rest } })),
            "tool" => {
                let (kind, title) = rest.split_once(' ').unwrap_or((rest, "a tool"));
                let id = format!("tool-{}", now_micros());
                self.update(
                    json!({ "sessionUpdate": "tool_call", "toolCallId": id, "title": title,
                    "kind": kind, "status": "pending", "rawInput": { "title": title },
                    "locations": [{ "path": "src/main.rs" }] }),
                );
                self.update(
                    json!({ "sessionUpdate": "tool_call_update", "toolCallId": id,
                    "status": "in_progress" }),
                );
                self.update(json!({ "sessionUpdate": "tool_call_update", "toolCallId": id,
                    "content": [{ "type": "content", "content": { "type": "text", "text": "tool output" } }] }));
                self.update(
                    json!({ "sessionUpdate": "tool_call_update", "toolCallId": id,
                    "status": "completed" }),
                );
            }
            "plan" => self.update(json!({ "sessionUpdate": "plan", "entries": [
                { "content": "read the code", "priority": "high", "status": "completed" },
                { "content": "write the fix", "priority": "medium", "status": "in_progress" } ] })),
            "commands" => self.update(json!({ "sessionUpdate": "available_commands_update",
                "availableCommands": [{ "name": "test", "description": "run the tests" }] })),
            "permit" => {
                let kind = if rest.is_empty() { "edit" } else { rest };
                let tool = format!("perm-{}", now_micros());
                let r = self.request("session/request_permission", json!({ "sessionId": sid,
                    "toolCall": { "toolCallId": tool, "title": format!("{kind} something"), "kind": kind },
                    "options": [
                        { "optionId": "yes-once", "name": "Allow once", "kind": "allow_once" },
                        { "optionId": "no-once", "name": "Reject", "kind": "reject_once" } ] }));
                let text = match r {
                    Ok(v) if v["outcome"]["outcome"] == "selected" => format!(
                        "permission: selected {}",
                        v["outcome"]["optionId"].as_str().unwrap_or("?")
                    ),
                    Ok(v) if v["outcome"]["outcome"] == "cancelled" => {
                        "permission: cancelled".into()
                    }
                    Ok(v) => format!("permission: odd answer {v}"),
                    Err(e) => format!("permission: error {e}"),
                };
                self.say(&text);
            }
            "write" => {
                let (path, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let path = self.abs(path);
                let r = self.request(
                    "fs/write_text_file",
                    json!({ "sessionId": sid, "path": path, "content": text }),
                );
                let msg = match r {
                    Ok(_) => format!("wrote {path}"),
                    Err(e) => format!("write failed: {e}"),
                };
                self.say(&msg);
            }
            "read" => {
                let path = self.abs(rest);
                let msg = match self.request(
                    "fs/read_text_file",
                    json!({ "sessionId": sid, "path": path }),
                ) {
                    Ok(v) => format!("read: {}", v["content"].as_str().unwrap_or("?")),
                    Err(e) => format!("read failed: {e}"),
                };
                self.say(&msg);
            }
            "run" => {
                let mut parts = rest.split_whitespace();
                let command = parts.next().unwrap_or("true").to_string();
                let args: Vec<&str> = parts.collect();
                let msg = match self.terminal(&sid, &command, &args) {
                    Ok(m) => m,
                    Err(e) => format!("run failed: {e}"),
                };
                self.say(&msg);
            }
            "env" => {
                let msg = match std::env::var(rest) {
                    Ok(v) => format!("{rest} is set ({} bytes)", v.len()),
                    Err(_) => format!("{rest} is not set"),
                };
                self.say(&msg);
            }
            "whoami" => {
                let msg = format!("session {} loaded={}", self.session, self.loaded);
                self.say(&msg);
            }
            "recall" => {
                let hit = !rest.is_empty() && self.context.contains(rest);
                let msg = format!("recall {rest}: {}", if hit { "yes" } else { "no" });
                self.say(&msg);
            }
            "sleep" => self.sleep(num(rest, 100)),
            "stderr" => eprintln!("{rest}"),
            "stderr-env" => eprintln!("{rest}={}", std::env::var(rest).unwrap_or_default()),
            "leak" => {
                let v = std::env::var(rest).unwrap_or_default();
                let (a, b) = v.split_at(v.len() / 3);
                let (b, c) = b.split_at(b.len() / 2);
                self.say(&format!("my key is {a}"));
                self.say(b);
                self.say(&format!("{c} (leaked)"));
                self.update(json!({ "sessionUpdate": "agent_thought_chunk",
                    "content": { "type": "text", "text": format!("thinking about {v}") } }));
                let id = format!("tool-{}", now_micros());
                self.update(json!({ "sessionUpdate": "tool_call", "toolCallId": id,
                    "title": format!("curl -H 'x-api-key: {v}'"), "kind": "execute",
                    "status": "pending", "rawInput": { "command": format!("echo {v}") } }));
                self.update(json!({ "sessionUpdate": "tool_call_update", "toolCallId": id,
                    "content": [{ "type": "content", "content": { "type": "text", "text": format!("{rest}={v}\n") } }] }));
                self.update(
                    json!({ "sessionUpdate": "tool_call_update", "toolCallId": id,
                    "status": "completed" }),
                );
            }
            "crash" => {
                eprintln!("sam-test-agent: crashing on purpose: {rest}");
                let _ = self.out.flush();
                std::process::exit(3);
            }
            "hang" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "garbage" => {
                for _ in 0..3 {
                    self.raw("garbage garbage ~~~ not json");
                }
            }
            "nonacp" => self.raw("{\"some\": \"json\", \"but\": \"not json-rpc\"}"),
            "big" => {
                let n = num(rest, 1024) as usize;
                self.say(&"x".repeat(n));
            }
            other => self.say(&format!("unknown command {other:?}")),
        }
    }

    fn abs(&self, path: &str) -> String {
        if path.starts_with('/') || self.cwd.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.cwd.trim_end_matches('/'))
        }
    }

    fn terminal(&mut self, sid: &str, command: &str, args: &[&str]) -> Result<String, String> {
        let t = self.request(
            "terminal/create",
            json!({ "sessionId": sid, "command": command, "args": args }),
        )?;
        let tid = t["terminalId"].as_str().unwrap_or_default().to_string();
        let exit = self.request(
            "terminal/wait_for_exit",
            json!({ "sessionId": sid, "terminalId": tid }),
        )?;
        let out = self.request(
            "terminal/output",
            json!({ "sessionId": sid, "terminalId": tid }),
        )?;
        self.request(
            "terminal/release",
            json!({ "sessionId": sid, "terminalId": tid }),
        )?;
        Ok(format!(
            "ran: exit {} output: {}",
            exit["exitCode"],
            out["output"].as_str().unwrap_or("").trim_end()
        ))
    }
}
