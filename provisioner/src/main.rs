//! `sam-provisioner`: list a cloud's SAM VMs; `serve` (team provisioner) comes later.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sam_provisioner::serve::TeamConfig;
use sam_provisioner::{AnyProvider, Local, Pool};
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
    /// Team provisioner on sam/prov/1: holds the cloud token, hands members tickets.
    /// Files in $SAM_HOME/provisioner (its key; local nodes).
    Serve {
        /// Team config (TOML): members, provider, bind, role, [pool], [release].
        #[arg(long)]
        team: std::path::PathBuf,
    },
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
        Cmd::Serve { team } => serve(&team, cfg, cli.json),
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

fn sam_home() -> Result<std::path::PathBuf> {
    if let Some(h) = std::env::var_os("SAM_HOME").filter(|h| !h.is_empty()) {
        return Ok(h.into());
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("set SAM_HOME (or HOME)")?;
    Ok(std::path::PathBuf::from(home).join(".sam"))
}

fn node_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SAM_NODE_BIN") {
        return p.into();
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
        && dir.join("sam-node").is_file()
    {
        return dir.join("sam-node");
    }
    "sam-node".into()
}

fn serve(team: &std::path::Path, mut cfg: ProvidersConfig, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(team)
        .with_context(|| format!("cannot read team config {}", team.display()))?;
    let tc = TeamConfig::from_toml(&text)
        .with_context(|| format!("invalid team config {}", team.display()))?;
    let sc = tc.serve_config().map_err(anyhow::Error::msg)?;
    if sc.members.is_empty() {
        bail!(
            "no members in {}: add their NodeIds (`sam id`) to `members`",
            team.display()
        );
    }
    let dir = sam_home()?.join("provisioner");
    let key = sam_protocol::SecretKey::load_or_create(&dir.join("identity.key"))
        .context("load the provisioner key")?;
    let provider = match tc.provider.as_str() {
        "local" => AnyProvider::Local(Local::new(dir.join("local"), node_binary())),
        "hetzner" => {
            let token =
                env("HCLOUD_TOKEN").context("set HCLOUD_TOKEN to a Hetzner Cloud API token")?;
            AnyProvider::Hetzner(Hetzner::new(token, cfg.hetzner)?)
        }
        "scaleway" => {
            let token =
                env("SCW_SECRET_KEY").context("set SCW_SECRET_KEY to a Scaleway secret key")?;
            if cfg.scaleway.project_id.is_none() {
                cfg.scaleway.project_id = env("SCW_DEFAULT_PROJECT_ID");
            }
            AnyProvider::Scaleway(Scaleway::new(token, cfg.scaleway)?)
        }
        other => bail!("unknown provider {other:?}: use local, hetzner or scaleway"),
    };
    let mut pool = Pool::new(provider, tc.pool.clone());
    pool.release = tc
        .release
        .as_ref()
        .map(|r| r.node_release())
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new().context("start tokio")?;
    rt.block_on(async move {
        let handle = sam_provisioner::serve::serve(pool, key, sc, tc.bind).await?;
        let ticket = sam_protocol::Ticket::new(handle.addr.clone());
        if json {
            println!("{}", serde_json::json!({ "provisioner": handle.addr.id.to_string(), "ticket": ticket.to_string() }));
        } else {
            eprintln!("team provisioner {} on sam/prov/1 ({:?})", handle.addr.id.short(), handle.addr.direct);
            println!("{ticket}");
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown().await;
        Ok(())
    })
}
