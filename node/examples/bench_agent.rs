//! The scripted ACP agent streaming as fast as it can through `sam-node` into a
//! conversation followed by 10 clients over loopback iroh (release build):
//! chunks/s into the document, agent → client latency per chunk (p50/p99), and the
//! process CPU time and RSS while streaming.
//!
//! `cargo build --release -p sam-node --bins && cargo run --release -p sam-node --example bench_agent -- [--chunks 100000] [--followers 10] [--rate CHUNKS_PER_S]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sam_client::docs::open_stream;
use sam_crdt::{Conversation, MessageId, NewConversation, Role, Status};
use sam_node::agent::{AgentsConfig, LauncherMode};
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::SecretKey;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

/// (user+system CPU seconds, RSS MB) of this process.
fn cpu_rss() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, rss)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chunks = arg("--chunks", 100_000);
    let followers = arg("--followers", 10);
    // Chunks per second from the agent; 0 = as fast as it can.
    let rate = arg("--rate", 0);
    let agent = std::env::current_exe()?
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("sam-test-agent"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("build sam-test-agent first: cargo build --release -p sam-node --bins")
        })?;

    let dir = tempfile::tempdir()?;
    let root = dir.path().join("ws");
    std::fs::create_dir_all(root.join("w"))?;
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse()?;
    let agents = AgentsConfig {
        launcher: LauncherMode::Host { root: root.clone() },
        idle_timeout: Duration::from_secs(120),
        ..AgentsConfig::default()
    };
    let handle = Node::start_with_agents(
        NodePaths::new(dir.path().join("node")),
        cfg,
        node_key.clone(),
        agents,
    )
    .await?;
    let me = owner.node_id().to_string();
    let mut conv = Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: "bench".into(),
            agent: "custom".into(),
            workspace_node: node_key.node_id().to_string(),
            workspace_id: "w".into(),
            created_at: sam_crdt::now_ms(),
        },
        &me,
    )?;
    conv.set_agent_cmd(&me, &agent.display().to_string())?;
    let id = conv.id();
    let docs = handle.node.docs().clone();
    docs.insert(conv)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Followers record agent → client latency from the stamps in the text.
    let lat: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..followers {
        let key = SecretKey::generate();
        let cap = sam_protocol::Capability::new(
            owner.node_id(),
            node_key.node_id(),
            sam_protocol::Grantee::Key(key.node_id()),
            sam_protocol::Role::Viewer,
            None,
            sam_node::now_secs(),
            None,
        )
        .sign(&owner, None);
        let mut t = handle.ticket();
        t.capability = Some(cap);
        let ep = sam_client::endpoint::bind(&key, Some("127.0.0.1:0".parse()?)).await?;
        let mut stream = open_stream(&ep, &t, &id, false).await?;
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let _ep = ep;
            let mut replica = Conversation::new_replica();
            let mut agent_msg: Option<MessageId> = None;
            let mut seen = 0usize;
            let _ = stream
                .follow(
                    &mut replica,
                    |_| Ok(()),
                    |c| {
                        let now = now_micros();
                        if agent_msg.is_none() {
                            agent_msg = c
                                .messages()
                                .into_iter()
                                .find(|m| m.role == Role::Agent)
                                .map(|m| m.id);
                        }
                        // Read only the new tail (as a streaming view would).
                        let Some((new, len)) = agent_msg
                            .as_ref()
                            .and_then(|id| c.message_text_from(id, seen))
                        else {
                            return;
                        };
                        let mut l = lat.lock().expect("lat");
                        for stamp in new.split(']').filter_map(|s| s.strip_prefix('[')) {
                            if let Ok(t) = stamp.parse::<u128>() {
                                l.push(now.saturating_sub(t) as f64 / 1000.0);
                            }
                        }
                        // Keep any half stamp for the next round (stamps are ASCII).
                        seen = match new.rfind(']') {
                            Some(i) => len - (new.len() - i - 1),
                            None => seen,
                        };
                    },
                )
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (cpu0, _) = cpu_rss();
    let t0 = Instant::now();
    let me2 = me.clone();
    let prompt = docs
        .mutate(&id, move |c| {
            c.append_user_message(&me2, &format!("stamps {chunks} {rate}"), Status::Queued)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    let mut peak_rss = 0.0f64;
    loop {
        let p = prompt.clone();
        let status = docs
            .read(&id, move |c| c.message(&p).map(|m| m.status))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        peak_rss = peak_rss.max(cpu_rss().1);
        match status {
            Some(Status::Done) => break,
            Some(Status::Failed | Status::Cancelled | Status::Interrupted) => {
                anyhow::bail!("the turn ended {status:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let took = t0.elapsed();
    let (cpu1, _) = cpu_rss();
    // Every follower must see every chunk: wait for the stragglers (they are the p99).
    let expected = chunks * followers;
    let t_wait = Instant::now();
    while lat.lock().expect("lat").len() < expected && t_wait.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut l = lat.lock().expect("lat").clone();
    if l.len() < expected {
        println!(
            "warning: {} of {expected} samples arrived within 120 s after the turn",
            l.len()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| {chunks} agent chunks into the document (spawn → turn done) | {:.0} chunks/s ({:.1} s) | – |",
        chunks as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    println!(
        "| agent → node → {followers} clients, per chunk ({} samples) | p50 {:.1} ms, p99 {:.1} ms | p99 ≤ 20 ms |",
        l.len(),
        pct(&mut l, 0.5),
        pct(&mut l, 0.99)
    );
    println!(
        "| CPU of node + {followers} clients while streaming | {:.1} s ({:.0}% of one core) | – |",
        cpu1 - cpu0,
        100.0 * (cpu1 - cpu0) / took.as_secs_f64()
    );
    println!("| peak RSS of node + {followers} clients | {peak_rss:.0} MB | – |");
    println!("\nload average: {}", load.trim());
    for t in tasks {
        t.abort();
    }
    handle.shutdown().await?;
    Ok(())
}
