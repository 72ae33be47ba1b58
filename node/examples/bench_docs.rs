//! Conversation sync benchmarks over loopback iroh (release build):
//!
//! - fresh replica: a client with nothing syncs a conversation of N streamed chunks;
//! - live latency: node append → each of K following clients sees the chunk;
//! - node append throughput through the document actor (fsync per batch).
//!
//! `cargo run --release -p sam-node --example bench_docs -- [--messages 10000] [--chunks 100] [--followers 10] [--live 2000]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sam_client::docs::open_stream;
use sam_crdt::{Conversation, NewConversation, Role, Status};
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::SecretKey;
use tokio::sync::Mutex;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages = arg("--messages", 10_000);
    let chunks = arg("--chunks", 100);
    let followers = arg("--followers", 10);
    let live = arg("--live", 2_000);

    let dir = tempfile::tempdir()?;
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse()?;
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, node_key.clone()).await?;
    let ticket = handle.ticket();
    let author = node_key.node_id().to_string();
    let docs = handle.node.docs().clone();

    // 1. Build the big conversation on the node (in memory, then insert).
    let t = Instant::now();
    let mut conv = Conversation::create(
        NewConversation {
            id: "b16".into(),
            title: "bench".into(),
            agent: "custom".into(),
            workspace_node: author.clone(),
            workspace_id: "w".into(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )?;
    for m in 0..messages {
        let id = conv.start_message(&author, Role::Agent)?;
        for c in 0..chunks {
            conv.append_chunk(&id, if c % 2 == 0 { "tok " } else { "en. " })?;
        }
        conv.set_status(&id, Status::Done, None)?;
        if m % 1000 == 999 {
            eprintln!("built {} messages", m + 1);
        }
    }
    let build = t.elapsed();
    let total_chunks = messages * chunks;
    let saved = conv.save().len();
    docs.insert(conv)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // 2. Fresh replica over loopback iroh.
    let ep = sam_client::endpoint::bind(&owner, Some("127.0.0.1:0".parse()?)).await?;
    let t = Instant::now();
    let mut replica = Conversation::new_replica();
    let mut s = open_stream(&ep, &ticket, "b16", false).await?;
    s.sync_once(&mut replica, |_| Ok(()), Duration::from_secs(600))
        .await?;
    let fresh = t.elapsed();
    assert_eq!(replica.message_count(), messages);

    // 3. Live latency to K followers on a small conversation.
    let small = Conversation::create(
        NewConversation {
            id: "11fe".into(),
            title: "live".into(),
            agent: "custom".into(),
            workspace_node: author.clone(),
            workspace_id: "w".into(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )?;
    docs.insert(small)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let a = author.clone();
    let msg = docs
        .mutate("11fe", move |c| c.start_message(&a, Role::Agent))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; live]));
    let lat: Arc<std::sync::Mutex<Vec<f64>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
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
        let mut t = ticket.clone();
        t.capability = Some(cap);
        let ep = sam_client::endpoint::bind(&key, Some("127.0.0.1:0".parse()?)).await?;
        let mut stream = open_stream(&ep, &t, "11fe", false).await?;
        let sent = sent.clone();
        let lat = lat.clone();
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let _ep = ep;
            let mut conv = Conversation::new_replica();
            let mut seen = 0usize;
            let _ = stream
                .follow(
                    &mut conv,
                    |_| Ok(()),
                    |c| {
                        let now = Instant::now();
                        let Some(m) = c.message(&msg) else { return };
                        // Each chunk is 8 bytes: "{i:07};".
                        let n = m.text.len() / 8;
                        if let Ok(s) = sent.try_lock() {
                            for i in seen..n.min(s.len()) {
                                if let Some(t0) = s[i] {
                                    lat.lock()
                                        .expect("lat")
                                        .push((now - t0).as_secs_f64() * 1e3);
                                }
                            }
                        }
                        seen = n;
                    },
                )
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    for i in 0..live {
        sent.lock().await[i] = Some(Instant::now());
        let m = msg.clone();
        docs.mutate("11fe", move |c| c.append_chunk(&m, &format!("{i:07};")))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))??;
        // ~1,000 chunks/s, an agent streaming fast.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let live_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut l = lat.lock().expect("lat").clone();
    let rss = rss_mb();

    // 4. Append throughput through the actor (one mutate per chunk, durable each).
    let n = 5_000;
    let m = msg.clone();
    let t = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let m = m.clone();
        let docs = docs.clone();
        pending.push(tokio::spawn(async move {
            docs.mutate("11fe", move |c| c.append_chunk(&m, &format!("{i:07};")))
                .await
        }));
    }
    for p in pending {
        p.await??.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let thr = n as f64 / t.elapsed().as_secs_f64();

    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| build {total_chunks} chunks ({messages} msgs × {chunks}) in memory | {:.0} chunks/s ({:.1} s) | ≥ 50,000 chunks/s |",
        total_chunks as f64 / build.as_secs_f64(),
        build.as_secs_f64()
    );
    println!("| saved size | {:.2} MiB | - |", saved as f64 / 1048576.0);
    println!(
        "| fresh replica sync over loopback iroh | {:.0} ms | ≤ 1 s |",
        fresh.as_secs_f64() * 1e3
    );
    println!(
        "| live chunk latency node → {followers} clients ({} samples, {live} chunks in {:.1} s) | p50 {:.2} ms, p99 {:.2} ms | p99 ≤ 20 ms |",
        l.len(),
        live_time.as_secs_f64(),
        pct(&mut l, 0.5),
        pct(&mut l, 0.99)
    );
    println!(
        "| node append through the doc actor, durable (concurrent writers) | {thr:.0} chunks/s | - |"
    );
    println!("| process RSS (node + {followers} clients + 1M-chunk doc ×2) | {rss:.0} MB | - |");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
