//! `sam-provisioner`: list a cloud's SAM VMs; `serve` (team provisioner) comes later.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sam_provisioner::{Hetzner, Provider, ProvidersConfig, Scaleway, Vm};

#[derive(Parser)]
#[command(name = "sam-provisioner", version, about = "SAM provisioner")]
struct Cli {
    /// Provider settings (TOML with [hetzner] and [scaleway]).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// More logs.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Cloud {
    Hetzner,
    Scaleway,
}

#[derive(Subcommand)]
enum Cmd {
    /// List SAM VMs (label/tag sam=1). Tokens: HCLOUD_TOKEN, SCW_SECRET_KEY (+ SCW_DEFAULT_PROJECT_ID).
    Vms {
        #[arg(long, value_enum)]
        provider: Cloud,
    },
    /// Team provisioner on sam/prov/1.
    Serve,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn print(vms: &[Vm], json: bool) {
    if json {
        let rows: Vec<serde_json::Value> = vms
            .iter()
            .map(|v| {
                serde_json::json!({
                    "id": v.id, "name": v.name, "location": v.location, "type": v.machine_type,
                    "status": v.status, "ipv4": v.public_ipv4.map(|ip| ip.to_string()),
                    "size": v.size().map(|s| s.to_string()),
                    "pool": v.pool_state().map(|p| p.as_str()),
                    "node": v.node_id().map(|n| n.to_string()), "labels": v.labels,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    for v in vms {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            v.id,
            v.name,
            v.location,
            v.machine_type,
            v.status,
            v.public_ipv4
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into()),
            v.pool_state().map(|p| p.as_str()).unwrap_or("-"),
        );
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(if cli.verbose { "debug" } else { "warn" })
        .init();
    let mut cfg = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            ProvidersConfig::from_toml(&text)
                .with_context(|| format!("invalid provider config {}", path.display()))?
        }
        None => ProvidersConfig::default(),
    };
    match cli.cmd {
        Cmd::Serve => bail!(
            "`serve` (team provisioner on sam/prov/1) is not implemented yet: use `sam-provisioner vms` or the `sam` CLI with your own token"
        ),
        Cmd::Vms { provider } => {
            let rt = tokio::runtime::Runtime::new().context("start tokio")?;
            let vms = rt.block_on(async {
                match provider {
                    Cloud::Hetzner => {
                        let token = env("HCLOUD_TOKEN")
                            .context("set HCLOUD_TOKEN to a Hetzner Cloud API token")?;
                        Ok::<_, anyhow::Error>(Hetzner::new(token, cfg.hetzner)?.list().await?)
                    }
                    Cloud::Scaleway => {
                        let token = env("SCW_SECRET_KEY")
                            .context("set SCW_SECRET_KEY to a Scaleway secret key")?;
                        if cfg.scaleway.project_id.is_none() {
                            cfg.scaleway.project_id = env("SCW_DEFAULT_PROJECT_ID");
                        }
                        Ok(Scaleway::new(token, cfg.scaleway)?.list().await?)
                    }
                }
            })?;
            print(&vms, cli.json);
            Ok(())
        }
    }
}
