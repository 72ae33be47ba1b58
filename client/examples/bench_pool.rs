//! Warm vs cold node acquisition with the `local` provider, step by step:
//! `cargo run -p sam-client --example bench_pool -- [ROUNDS]` (build `sam-node` first;
//! `SAM_NODE_BIN` overrides where it is found). Prints a Markdown table of medians.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sam_client::NodeClient;
use sam_protocol::SecretKey;
use sam_protocol::ctl::Request;
use sam_provisioner::pool::now_unix;
use sam_provisioner::{IrohProbe, Local, Pool, PoolPolicy, PoolState, Provider, Size};

fn node_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAM_NODE_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("exe dir")?;
    for c in [dir.join("sam-node"), dir.join("../sam-node")] {
        if c.is_file() {
            return Ok(c);
        }
    }
    anyhow::bail!("sam-node not found: cargo build --bin sam-node, or set SAM_NODE_BIN")
}

#[derive(Default)]
struct Steps {
    list_and_take: Vec<Duration>,
    create: Vec<Duration>,
    probe: Vec<Duration>,
    connect_status: Vec<Duration>,
    total: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort();
    format!("{:.1} ms", v[v.len() / 2].as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let tmp = tempfile::tempdir()?;
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let pool = Pool::new(Local::new(tmp.path(), node_bin()?), PoolPolicy::default());
    let owner = SecretKey::generate();
    let probe = IrohProbe::bind_as(&owner, lo)
        .await
        .map_err(anyhow::Error::msg)?;
    let ep = sam_client::endpoint::bind(&owner, Some(lo)).await?;
    let (mut cold, mut warm) = (Steps::default(), Steps::default());

    for _ in 0..rounds {
        // cold: nothing idle → create (spawn, key, config, address) → probe → connect+status
        let t0 = Instant::now();
        let vms = pool.list().await?;
        assert!(
            pool.policy
                .reusable(&vms, Size::Small, now_unix())
                .is_empty()
        );
        let t_list = t0.elapsed();
        let t1 = Instant::now();
        let got = pool.create(Size::Small, &owner.node_id(), &probe).await?;
        let t_create_probe = t1.elapsed();
        let t2 = Instant::now();
        let c = NodeClient::connect(&ep, &got.ticket).await?;
        c.request(Request::Status).await?;
        c.close();
        let t_conn = t2.elapsed();
        cold.list_and_take.push(t_list);
        cold.create.push(t_create_probe);
        cold.connect_status.push(t_conn);
        cold.total.push(t0.elapsed());

        // warm: release, then list → mark busy → ticket → probe → connect+status
        pool.release(&got.vm).await?;
        let t0 = Instant::now();
        let vms = pool.list().await?;
        let vm = pool
            .policy
            .reusable(&vms, Size::Small, now_unix())
            .first()
            .map(|v| (*v).clone())
            .context("no warm node")?;
        let vm = pool.provider.mark(&vm, PoolState::Busy, now_unix()).await?;
        let ticket = pool.provider.ticket(&vm)?;
        let t_take = t0.elapsed();
        let t1 = Instant::now();
        anyhow::ensure!(sam_provisioner::Probe::reachable(&probe, &ticket).await);
        let t_probe = t1.elapsed();
        let t2 = Instant::now();
        let c = NodeClient::connect(&ep, &ticket).await?;
        c.request(Request::Status).await?;
        c.close();
        let t_conn = t2.elapsed();
        warm.list_and_take.push(t_take);
        warm.probe.push(t_probe);
        warm.connect_status.push(t_conn);
        warm.total.push(t0.elapsed());
        pool.provider.delete(&vm.id).await?;
    }
    probe.close().await;
    ep.close().await;

    println!("| step | cold (no idle node) | warm (idle node reused) |");
    println!("|---|---|---|");
    println!(
        "| list nodes (+ warm: mark busy, read ticket) | {} | {} |",
        median(&mut cold.list_and_take),
        median(&mut warm.list_and_take)
    );
    println!(
        "| create: key, config, spawn `sam-node`, address announced, first probe answered | {} | – |",
        median(&mut cold.create)
    );
    println!(
        "| probe (QUIC handshake) | (in create) | {} |",
        median(&mut warm.probe)
    );
    println!(
        "| connect as owner + hello + `status` | {} | {} |",
        median(&mut cold.connect_status),
        median(&mut warm.connect_status)
    );
    println!(
        "| **total: acquire → first answer** | **{}** | **{}** |",
        median(&mut cold.total),
        median(&mut warm.total)
    );
    println!("\n{rounds} rounds, medians.");
    Ok(())
}
