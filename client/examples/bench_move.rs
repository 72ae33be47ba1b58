//! `sam move` → first streamed token on the new node, through the real binaries:
//! `cargo run -p sam-client --example bench_move -- [ROUNDS]` (build the binaries first:
//! `cargo build --bins`; they are found next to this example's directory).
//!
//! Per round: a conversation with some history on node `a` (agents are host processes of
//! `sam-test-agent`), then a prompt `stamps 1; chunks 3` is written and the conversation is
//! moved with `sam move`. The agent on the new node stamps its first chunk with the time it
//! sent it, so "move → first token" is measured on one clock without polling. Scenarios:
//!
//! - `gone`: node `a` was killed (its disk deleted); the prompt was queued offline; `sam move
//!   --node b` (a second local node).
//! - `alive`: node `a` still answers; `sam move --node b`, then `sam prompt`.
//! - `pool`: node `a` killed; `sam move --provider local` with an empty pool (a new node).
//! - `warm`: the same with an idle node in the local pool (`sam vm create` + `release` first).
//!
//! `bench_move [ROUNDS] [SCENARIO,…]` runs only the scenarios named.
//!
//! Also prints the document size with and without the `hosts` history.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

fn bin(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("exe dir")?;
    for c in [dir.join(name), dir.join("..").join(name)] {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "{name} not found next to {}: cargo build --bins",
        dir.display()
    )
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

struct Rig {
    sam: PathBuf,
    node: PathBuf,
    agent: PathBuf,
    tmp: PathBuf,
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Rig {
    fn sam(&self, home: &Path, args: &[&str]) -> Result<String> {
        let out: Output = Command::new(&self.sam)
            .env("SAM_HOME", home)
            .env("SAM_BIND", "127.0.0.1:0")
            .env("SAM_AGENT_LAUNCHER", "host")
            .env("SAM_AGENT_HOST_ROOT", self.tmp.join("ws-pool"))
            .env("SAM_NODE_BIN", &self.node)
            .env_remove("RUST_LOG")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "sam {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn start_node(&self, home: &Path, owner: &str, ws: &Path) -> Result<(NodeProc, String)> {
        std::fs::create_dir_all(ws)?;
        let init = Command::new(&self.node)
            .env("SAM_HOME", home)
            .args(["init", "--owner", owner, "--bind", "127.0.0.1:0"])
            .output()?;
        if !init.status.success() {
            bail!("sam-node init: {}", String::from_utf8_lossy(&init.stderr));
        }
        let mut child = Command::new(&self.node)
            .env("SAM_HOME", home)
            .env("SAM_AGENT_LAUNCHER", "host")
            .env("SAM_AGENT_HOST_ROOT", ws)
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        Ok((NodeProc(child), line.trim().to_string()))
    }
}

fn last(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

/// Waits for the stamped first chunk; returns (stamp µs, when the client saw it).
fn first_token(rig: &Rig, me: &Path, conv: &str, after_msgs: usize) -> Result<(u128, Instant)> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let _ = rig.sam(me, &["sync"]);
        let log = rig.sam(me, &["--json", "log", conv])?;
        let v: serde_json::Value = serde_json::from_str(log.trim())?;
        let msgs = v.as_array().cloned().unwrap_or_default();
        for m in msgs.iter().skip(after_msgs) {
            let t = m["text"].as_str().unwrap_or("");
            if m["role"] == "agent"
                && let Some(rest) = t.strip_prefix('[')
                && let Some((n, _)) = rest.split_once(']')
                && let Ok(us) = n.parse::<u128>()
            {
                return Ok((us, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no first token on the new node within 60 s")
}

struct Round {
    move_ms: f64,
    first_token_ms: f64,
}

fn round(rig: &Rig, scenario: &str, i: usize, history: usize) -> Result<Round> {
    let base = rig.tmp.join(format!("{scenario}-{i}"));
    let me = base.join("me");
    let owner = last(&rig.sam(&me, &["id"])?);
    let (node_a, ticket_a) = rig.start_node(&base.join("a"), &owner, &base.join("ws-a"))?;
    if scenario == "warm" {
        let out = rig.sam(&me, &["--json", "vm", "create", "--provider", "local"])?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        let id = v["id"].as_str().context("vm id")?.to_string();
        rig.sam(&me, &["vm", "release", &id, "--provider", "local"])?;
    }
    let pooled = matches!(scenario, "pool" | "warm");
    let node_b = if pooled {
        None
    } else {
        let (p, t) = rig.start_node(&base.join("b"), &owner, &base.join("ws-b"))?;
        rig.sam(&me, &["connect", &t, "--name", "b"])?;
        Some(p)
    };
    rig.sam(&me, &["connect", &ticket_a, "--name", "a"])?;
    let conv = last(&rig.sam(
        &me,
        &[
            "convs",
            "new",
            "--node",
            "a",
            "--workspace",
            "w1",
            "--agent-cmd",
            rig.agent.to_str().context("utf8")?,
        ],
    )?);
    for k in 0..history {
        rig.sam(
            &me,
            &[
                "prompt",
                &conv,
                &format!("say answer number {k}"),
                "--follow",
            ],
        )?;
    }
    let to: Vec<&str> = if pooled {
        vec!["--provider", "local"]
    } else {
        vec!["--node", "b"]
    };
    let msgs_before;
    let t0;
    let t_move;
    if scenario == "alive" {
        t0 = (Instant::now(), now_us());
        let mut args = vec!["move", conv.as_str()];
        args.extend(&to);
        args.extend(["--workspace", "w2"]);
        rig.sam(&me, &args)?;
        t_move = t0.0.elapsed();
        let log = rig.sam(&me, &["--json", "log", &conv])?;
        msgs_before = serde_json::from_str::<serde_json::Value>(log.trim())?
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        rig.sam(&me, &["prompt", &conv, "stamps 1; chunks 3"])?;
        drop(node_a);
    } else {
        drop(node_a);
        std::fs::remove_dir_all(base.join("a"))?;
        rig.sam(&me, &["prompt", &conv, "stamps 1; chunks 3"])?;
        let log = rig.sam(&me, &["--json", "log", &conv])?;
        msgs_before = serde_json::from_str::<serde_json::Value>(log.trim())?
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        t0 = (Instant::now(), now_us());
        let mut args = vec!["move", conv.as_str()];
        args.extend(&to);
        args.extend(["--workspace", "w2"]);
        rig.sam(&me, &args)?;
        t_move = t0.0.elapsed();
    }
    let (stamp, _seen) = first_token(rig, &me, &conv, msgs_before)?;
    drop(node_b);
    if pooled {
        // Delete the pool's nodes (sam-node processes under this home).
        let ls = rig.sam(&me, &["--json", "vm", "ls", "--provider", "local"])?;
        let v: serde_json::Value = serde_json::from_str(ls.trim()).unwrap_or_default();
        for vm in v.as_array().cloned().unwrap_or_default() {
            if let Some(id) = vm["id"].as_str() {
                let _ = rig.sam(&me, &["vm", "rm", id, "--provider", "local"]);
            }
        }
    }
    Ok(Round {
        move_ms: t_move.as_secs_f64() * 1e3,
        first_token_ms: (stamp.saturating_sub(t0.1)) as f64 / 1e3,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn hosts_overhead() -> Result<()> {
    use sam_crdt::{Conversation, HostEnd, MoveTo, NewConversation, Status};
    let a = "1".repeat(64);
    let b = "2".repeat(64);
    for msgs in [10usize, 1000] {
        let mut c = Conversation::create(
            NewConversation {
                id: "c0ffee".into(),
                title: "bench".into(),
                agent: "claude".into(),
                workspace_node: a.clone(),
                workspace_id: "0123456789ab".into(),
                created_at: 1_700_000_000_000,
            },
            &a,
        )?;
        for k in 0..msgs {
            c.append_user_message(&a, &format!("prompt number {k}"), Status::Queued)?;
        }
        let plain = c.save().len();
        c.record_host(
            &a,
            &a,
            "0123456789ab",
            Some("https://github.com/example/repo.git"),
            Some("main"),
        )?;
        let one = c.save().len();
        c.move_to(
            &a,
            &MoveTo {
                node: b.clone(),
                workspace: "ba9876543210".into(),
                repo: Some("https://github.com/example/repo.git".into()),
                branch: Some("main".into()),
                end: HostEnd::Lost,
                carried: Some("not recoverable: node a unreachable since 1 min ago".into()),
            },
        )?;
        let two = c.save().len();
        println!(
            "| {msgs} messages | {plain} B | +{} B (1 host) | +{} B (2 hosts, after a move) |",
            one - plain,
            two - plain
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let tmp = tempfile::tempdir()?;
    let rig = Rig {
        sam: bin("sam")?,
        node: bin("sam-node")?,
        agent: bin("sam-test-agent")?,
        tmp: tmp.path().to_path_buf(),
    };
    println!(
        "| scenario | rounds | `sam move` wall time (median) | move start → first token on the new node (median) |"
    );
    println!("|---|---:|---:|---:|");
    let only: Option<Vec<String>> = std::env::args()
        .nth(2)
        .map(|s| s.split(',').map(String::from).collect());
    for scenario in ["alive", "gone", "pool", "warm"] {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|x| x == scenario))
        {
            continue;
        }
        let mut mv = Vec::new();
        let mut ft = Vec::new();
        for i in 0..rounds {
            match round(&rig, scenario, i, 3) {
                Ok(r) => {
                    eprintln!(
                        "{scenario} #{i}: move {:.0} ms, first token {:.0} ms",
                        r.move_ms, r.first_token_ms
                    );
                    mv.push(r.move_ms);
                    ft.push(r.first_token_ms);
                }
                Err(e) => eprintln!("{scenario} #{i}: {e:#}"),
            }
        }
        println!(
            "| {scenario} | {} | {:.0} ms | {:.0} ms |",
            mv.len(),
            median(mv),
            median(ft)
        );
    }
    println!();
    println!("| document | without `hosts` | with the first host recorded | after one move |");
    println!("|---|---:|---:|---:|");
    hosts_overhead()?;
    Ok(())
}
