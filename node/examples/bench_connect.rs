//! Connect-by-ticket benchmark, on loopback with relays off.
//!
//! ```text
//! cargo build --release -p sam-node --bins
//! cargo run --release -p sam-node --example bench_connect -- [--n 1000] [--fresh 200] [--warm 10000]
//! ```
//!
//! Measures, against a node started in this process:
//! - (a) a new QUIC connection by ticket from one client endpoint, hello, and one
//!   `Ping` round trip (what a client that keeps its endpoint pays for a new node);
//! - (b) the same plus binding a fresh client endpoint each time (what one CLI
//!   invocation pays);
//! - (c) a warm `Ping` round trip on one open connection;
//!
//! and (d) the idle RSS of the real `sam-node` binary (`target/release/sam-node`,
//! next to this example, or `SAM_NODE_BIN`) after one client connected.
//!
//! Prints a Markdown table on stdout (progress goes to stderr). With `--json` it
//! prints one JSON object instead, for `scripts/bench.sh`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sam_client::conn::NodeClient;
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::ctl::{Request, Response};
use sam_protocol::{SecretKey, Ticket};

struct Args {
    n: usize,
    fresh: usize,
    warm: usize,
    rss: bool,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        n: 1000,
        fresh: 200,
        warm: 10_000,
        rss: true,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--n" => args.n = num("--n")?,
            "--fresh" => args.fresh = num("--fresh")?,
            "--warm" => args.warm = num("--warm")?,
            "--no-rss" => args.rss = false,
            "--json" => args.json = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: bench_connect [--n 1000] [--fresh 200] [--warm 10000] [--no-rss] [--json]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.n == 0 || args.fresh == 0 || args.warm == 0 {
        bail!("--n, --fresh and --warm must be at least 1");
    }
    Ok(args)
}

/// Latency summary of one series, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: usize,
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| {
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            ms(samples[i])
        };
        let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
        Self {
            count: samples.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            mean,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "count": self.count, "p50_ms": self.p50, "p99_ms": self.p99, "mean_ms": self.mean })
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn ping(client: &NodeClient) -> Result<()> {
    match client.request(Request::Ping).await? {
        Response::Pong => Ok(()),
        other => bail!("expected Pong, got {other:?}"),
    }
}

/// Connect by ticket + hello + one Ping, closing the connection afterwards.
async fn connect_once(ep: &iroh::Endpoint, ticket: &Ticket) -> Result<Duration> {
    let t = Instant::now();
    let client = NodeClient::connect(ep, ticket).await?;
    ping(&client).await?;
    let took = t.elapsed();
    client.close();
    Ok(took)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Runtime::new().context("start tokio")?;
    let (a, b, c) = rt.block_on(in_process(&args))?;
    drop(rt);
    let rss = if args.rss {
        Some(node_idle_rss().context("idle RSS of the sam-node binary")?)
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "connect": a.json(),
                "connect_fresh_endpoint": b.json(),
                "warm_rtt": c.json(),
                "node_idle_rss_kib": rss,
            })
        );
    } else {
        print_table(&a, &b, &c, rss);
    }
    Ok(())
}

/// (a), (b), (c) against a node in this process.
async fn in_process(args: &Args) -> Result<(Stats, Stats, Stats)> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let owner = SecretKey::generate();
    let cfg = NodeConfig {
        bind: loopback(),
        ..NodeConfig::new(owner.node_id())
    };
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, SecretKey::generate()).await?;
    let ticket = handle.ticket();

    // Warm up: first connections pay for lazy initialisation on both sides.
    let ep = sam_client::endpoint::bind(&owner, Some(loopback())).await?;
    for _ in 0..20 {
        connect_once(&ep, &ticket).await?;
    }

    eprintln!("(a) {} connects from one endpoint…", args.n);
    let mut samples = Vec::with_capacity(args.n);
    for _ in 0..args.n {
        samples.push(connect_once(&ep, &ticket).await?);
    }
    let a = Stats::of(&mut samples);

    eprintln!("(c) {} warm Ping round trips…", args.warm);
    let client = NodeClient::connect(&ep, &ticket).await?;
    for _ in 0..100 {
        ping(&client).await?;
    }
    let mut samples = Vec::with_capacity(args.warm);
    for _ in 0..args.warm {
        let t = Instant::now();
        ping(&client).await?;
        samples.push(t.elapsed());
    }
    let c = Stats::of(&mut samples);
    client.close();
    ep.close().await;

    eprintln!("(b) {} connects, each from a fresh endpoint…", args.fresh);
    let mut samples = Vec::with_capacity(args.fresh);
    for _ in 0..args.fresh {
        let t = Instant::now();
        let ep = sam_client::endpoint::bind(&owner, Some(loopback())).await?;
        let client = NodeClient::connect(&ep, &ticket).await?;
        ping(&client).await?;
        samples.push(t.elapsed());
        client.close();
        // Not timed: a CLI process exits here; closing keeps sockets from piling up.
        ep.close().await;
    }
    let b = Stats::of(&mut samples);

    handle.shutdown().await?;
    Ok((a, b, c))
}

/// The `sam-node` binary: `SAM_NODE_BIN`, or next to this example (`target/<profile>/`).
fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAM_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("current_exe")?;
    for dir in me.ancestors().skip(1).take(2) {
        let cand = dir.join("sam-node");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "no sam-node binary next to {}: build it with `cargo build --release -p sam-node --bins`, or set SAM_NODE_BIN",
        me.display()
    )
}

/// Kills the node when dropped, so an error path leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (d) Starts the real `sam-node run` with its own SAM_HOME, connects once as the
/// owner, waits 2 s and reads VmRSS (KiB) from /proc.
fn node_idle_rss() -> Result<u64> {
    let bin = node_binary()?;
    eprintln!("(d) idle RSS of {}…", bin.display());
    let home = tempfile::tempdir().context("tempdir")?;
    let owner = SecretKey::generate();
    let status = Command::new(&bin)
        .env("SAM_HOME", home.path())
        .args(["init", "--owner", &owner.node_id().to_string()])
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    if !status.success() {
        bail!("sam-node init failed ({status})");
    }
    let mut child = Child(
        Command::new(&bin)
            .env("SAM_HOME", home.path())
            .args(["run", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?,
    );
    let stdout = child.0.stdout.take().context("node stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("read the node's ticket")?;
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).with_context(|| format!("node printed {line:?}"))?;
    let ticket: Ticket = v["ticket"]
        .as_str()
        .context("no ticket in the node's JSON")?
        .parse()?;

    let rt = tokio::runtime::Runtime::new().context("start tokio")?;
    rt.block_on(async {
        let ep = sam_client::endpoint::bind(&owner, Some(loopback())).await?;
        let client = NodeClient::connect(&ep, &ticket).await?;
        match client.request(Request::Status).await? {
            Response::Status(_) => {}
            other => bail!("expected Status, got {other:?}"),
        }
        client.close();
        ep.close().await;
        anyhow::Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));

    let pid = child.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (Linux only)"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib)
}

fn print_table(a: &Stats, b: &Stats, c: &Stats, rss: Option<u64>) {
    println!("| measurement | n | p50 | p99 | mean |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, s: &Stats| {
        println!(
            "| {name} | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            s.count, s.p50, s.p99, s.mean
        );
    };
    row(
        "connect by ticket → first ctl response (one client endpoint)",
        a,
    );
    row(
        "same, with a fresh client endpoint each time (one CLI run)",
        b,
    );
    row("warm ctl round trip (Ping on an open connection)", c);
    if let Some(kib) = rss {
        println!(
            "| sam-node idle RSS (after one connection, 2 s idle) | 1 | {:.1} MB | | |",
            kib as f64 / 1024.0
        );
    }
}
