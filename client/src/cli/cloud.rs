//! `sam provider add`, `sam vm ls|rm`, `sam pool ls|reap`: the user's own clouds (tokens in
//! `$SAM_HOME/providers.toml`, mode `0600`) and the `local` provider (nodes as `sam-node`
//! processes under `$SAM_HOME/provider/local`).
//!
//! Tokens are read from stdin (`--token-stdin`) or the environment, checked with one cheap list
//! call, and stored. They are never printed, logged, or put in an error message.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use sam_provisioner::pool::now_unix;
use sam_provisioner::{
    AnyProvider, Hetzner, HetznerConfig, IrohProbe, Local, PoolPolicy, Provider, Scaleway,
    ScalewayConfig, Size, Vm,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Output;
use crate::paths::ClientPaths;

/// Longest token accepted on stdin.
const MAX_TOKEN: usize = 4096;

/// The clouds, and the `local` provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderName {
    Local,
    Hetzner,
    Scaleway,
}

/// A cloud a token can be added for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Hetzner,
    Scaleway,
}

/// `sam provider …`, `sam vm …`, `sam pool …` (flattened into the top-level commands).
#[derive(Debug, Subcommand)]
pub enum CloudCmd {
    /// Cloud accounts: `sam provider add hetzner|scaleway`.
    Provider {
        #[command(subcommand)]
        cmd: ProviderCmd,
    },
    /// Machines SAM made: `sam vm ls|rm`.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// The warm pool: `sam pool ls|reap`.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// Store a cloud API token (checked with one list call first).
    Add {
        cloud: Cloud,
        /// Read the token from stdin; else HCLOUD_TOKEN / SCW_SECRET_KEY.
        #[arg(long)]
        token_stdin: bool,
        /// Scaleway project id; else SCW_DEFAULT_PROJECT_ID.
        #[arg(long)]
        project: Option<String>,
    },
    /// The providers set up here (never their tokens).
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// SAM's machines on every provider set up (or one).
    Ls {
        #[arg(long, value_enum)]
        provider: Option<ProviderName>,
    },
    /// A node for this peer: a warm idle one of the size, else a new one. Prints its ticket.
    Create {
        #[arg(long, value_enum, default_value = "local")]
        provider: ProviderName,
        #[arg(long, default_value = "small")]
        size: Size,
    },
    /// Put a node back in the warm pool (idle from now; reaped when its time is up).
    Release {
        id: String,
        #[arg(long, value_enum, default_value = "local")]
        provider: ProviderName,
    },
    /// Delete a machine (and its volumes).
    Rm {
        id: String,
        #[arg(long, value_enum)]
        provider: Option<ProviderName>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Idle and busy nodes, and when idle ones expire.
    Ls {
        #[arg(long, value_enum)]
        provider: Option<ProviderName>,
    },
    /// Delete idle nodes whose time is up.
    Reap {
        #[arg(long, value_enum)]
        provider: Option<ProviderName>,
    },
}

/// `$SAM_HOME/providers.toml`.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    pub hetzner: Option<HetznerEntry>,
    pub scaleway: Option<ScalewayEntry>,
    /// `[pool]`: idle time and workspaces per node.
    pub pool: Option<PoolPolicy>,
    /// `[release]`: the `sam-node` binary cloud nodes install (`url`, `sha256`).
    pub release: Option<sam_provisioner::serve::Release>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HetznerEntry {
    pub token: String,
    /// Relays of the nodes made on this cloud (`n0`, URLs of iroh relays, `[]` for none);
    /// n0's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalewayEntry {
    pub token: String,
    pub project_id: String,
    /// Relays of the nodes made on this cloud (`n0`, URLs of iroh relays, `[]` for none);
    /// n0's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<Vec<String>>,
}

impl std::fmt::Debug for ProvidersFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvidersFile")
            .field("hetzner", &self.hetzner.as_ref().map(|_| "<token>"))
            .field("scaleway", &self.scaleway.as_ref().map(|_| "<token>"))
            .field("pool", &self.pool)
            .field("release", &self.release)
            .finish()
    }
}

impl ProvidersFile {
    pub fn path(paths: &ClientPaths) -> PathBuf {
        paths.home.join("providers.toml")
    }

    pub fn load(paths: &ClientPaths) -> Result<Self> {
        let path = Self::path(paths);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    fn save(&self, paths: &ClientPaths) -> Result<()> {
        let text = toml::to_string(self).context("serialise providers.toml")?;
        write_private(&Self::path(paths), text.as_bytes())
    }

    /// The providers to use: `only`, or `local` and every cloud set up here.
    pub fn providers(
        &self,
        paths: &ClientPaths,
        only: Option<ProviderName>,
    ) -> Result<Vec<AnyProvider>> {
        let names = match only {
            Some(n) => vec![n],
            None => {
                let mut v = vec![ProviderName::Local];
                if self.hetzner.is_some() {
                    v.push(ProviderName::Hetzner);
                }
                if self.scaleway.is_some() {
                    v.push(ProviderName::Scaleway);
                }
                v
            }
        };
        names.into_iter().map(|n| self.provider(paths, n)).collect()
    }

    pub fn provider(&self, paths: &ClientPaths, name: ProviderName) -> Result<AnyProvider> {
        Ok(match name {
            ProviderName::Local => AnyProvider::Local(local_provider(paths)),
            ProviderName::Hetzner => {
                let e = self.hetzner.as_ref().context(
                    "no Hetzner token here: run `sam provider add hetzner --token-stdin`",
                )?;
                let cfg = HetznerConfig {
                    relays: checked_relays(e.relays.as_ref(), "hetzner")?,
                    ..HetznerConfig::default()
                };
                AnyProvider::Hetzner(Hetzner::new(e.token.clone(), cfg)?)
            }
            ProviderName::Scaleway => {
                let e = self.scaleway.as_ref().context(
                    "no Scaleway key here: run `sam provider add scaleway --token-stdin`",
                )?;
                let cfg = ScalewayConfig {
                    project_id: Some(e.project_id.clone()),
                    relays: checked_relays(e.relays.as_ref(), "scaleway")?,
                    ..ScalewayConfig::default()
                };
                AnyProvider::Scaleway(Scaleway::new(e.token.clone(), cfg)?)
            }
        })
    }
}

/// A provider entry's `relays` (n0's when absent), checked as the node will read them.
fn checked_relays(relays: Option<&Vec<String>>, provider: &str) -> Result<Vec<String>> {
    let Some(relays) = relays else {
        return Ok(sam_provisioner::config::default_relays());
    };
    sam_protocol::relay::parse(relays)
        .with_context(|| format!("`relays` of [{provider}] in providers.toml"))?;
    Ok(relays.clone())
}

/// The `local` provider of this SAM home.
pub fn local_provider(paths: &ClientPaths) -> Local {
    let bin = super::up::node_binary().unwrap_or_else(|_| PathBuf::from("sam-node"));
    Local::new(paths.home.join("provider").join("local"), bin)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_token(stdin: bool, var: &str) -> Result<String> {
    let token = if stdin {
        let mut buf = String::new();
        std::io::stdin()
            .take(MAX_TOKEN as u64 + 1)
            .read_to_string(&mut buf)
            .context("read the token from stdin")?;
        if buf.len() > MAX_TOKEN {
            bail!("the token on stdin is longer than {MAX_TOKEN} bytes");
        }
        buf.trim().to_owned()
    } else {
        env(var).with_context(|| format!("no token: pass --token-stdin, or set {var}"))?
    };
    if token.is_empty() {
        bail!("the token is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the token has spaces or control characters: paste only the token");
    }
    Ok(token)
}

/// Runs `sam provider|vm|pool …`.
pub async fn run(paths: &ClientPaths, cmd: CloudCmd) -> Result<Output> {
    match cmd {
        CloudCmd::Provider {
            cmd:
                ProviderCmd::Add {
                    cloud,
                    token_stdin,
                    project,
                },
        } => add(paths, cloud, token_stdin, project).await,
        CloudCmd::Provider {
            cmd: ProviderCmd::Ls,
        } => {
            let file = ProvidersFile::load(paths)?;
            let mut names = vec!["local"];
            if file.hetzner.is_some() {
                names.push("hetzner");
            }
            if file.scaleway.is_some() {
                names.push("scaleway");
            }
            Ok(Output::new(json!(names), names.join("\n")))
        }
        CloudCmd::Vm {
            cmd: VmCmd::Ls { provider },
        } => {
            let rows = list_all(paths, provider).await?;
            let json_rows: Vec<_> = rows.iter().map(|(p, vm)| vm_json(p, vm, None)).collect();
            let text = rows
                .iter()
                .map(|(p, v)| {
                    format!(
                        "{p}\t{}\t{}\t{}\t{}\t{}\t{}",
                        v.id,
                        v.name,
                        v.location,
                        v.status,
                        v.public_ipv4
                            .map(|ip| ip.to_string())
                            .unwrap_or_else(|| "-".into()),
                        v.pool_state().map(|s| s.as_str()).unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Output::new(json!(json_rows), text))
        }
        CloudCmd::Vm {
            cmd: VmCmd::Create { provider, size },
        } => create(paths, provider, size).await,
        CloudCmd::Vm {
            cmd: VmCmd::Release { id, provider },
        } => {
            let file = ProvidersFile::load(paths)?;
            let p = file.provider(paths, provider)?;
            let vm = p
                .list()
                .await?
                .into_iter()
                .find(|v| v.id == id)
                .with_context(|| format!("no {} machine {id} (see `sam vm ls`)", p.name()))?;
            let pool = sam_provisioner::Pool::new(p, file.pool.unwrap_or_default());
            let vm = pool.release(&vm).await?;
            Ok(Output::new(
                vm_json(pool.provider.name(), &vm, pool.policy.expires_at(&vm)),
                format!("{id} is idle in the warm pool\n{id}"),
            ))
        }
        CloudCmd::Vm {
            cmd: VmCmd::Rm { id, provider },
        } => {
            let file = ProvidersFile::load(paths)?;
            for p in file.providers(paths, provider)? {
                let listed = p
                    .list()
                    .await
                    .with_context(|| format!("list {} machines", p.name()))?
                    .into_iter()
                    .find(|v| v.id == id);
                if provider.is_some() || listed.is_some() {
                    p.delete(&id)
                        .await
                        .with_context(|| format!("delete {} machine {id}", p.name()))?;
                    let forgot = match &listed {
                        Some(vm) => forget_machine(paths, vm)?,
                        None => None,
                    };
                    return Ok(Output::new(
                        json!({ "provider": p.name(), "deleted": id, "forgot": forgot }),
                        format!("deleted {} machine\n{id}", p.name()),
                    ));
                }
            }
            bail!("no SAM machine {id} on any provider set up here (see `sam vm ls`)")
        }
        CloudCmd::Pool {
            cmd: PoolCmd::Ls { provider },
        } => {
            let policy = ProvidersFile::load(paths)?.pool.unwrap_or_default();
            let rows = list_all(paths, provider).await?;
            let json_rows: Vec<_> = rows
                .iter()
                .map(|(p, vm)| vm_json(p, vm, policy.expires_at(vm)))
                .collect();
            let text = rows
                .iter()
                .map(|(p, v)| {
                    let expires = policy
                        .expires_at(v)
                        .map(|t| format!("expires in {}s", t.saturating_sub(now_unix())))
                        .unwrap_or_default();
                    format!(
                        "{p}\t{}\t{}\t{}\t{expires}",
                        v.id,
                        v.size().map(|s| s.as_str()).unwrap_or("-"),
                        v.pool_state().map(|s| s.as_str()).unwrap_or("-"),
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Output::new(json!(json_rows), text))
        }
        CloudCmd::Pool {
            cmd: PoolCmd::Reap { provider },
        } => {
            let file = ProvidersFile::load(paths)?;
            let policy = file.pool.clone().unwrap_or_default();
            let mut gone = Vec::new();
            let mut kept = 0;
            for p in file.providers(paths, provider)? {
                let name = p.name();
                let pool = sam_provisioner::Pool::new(p, policy.clone());
                // Graceful teardown: each expired node is asked first (super::teardown).
                let vms = pool.list().await.with_context(|| format!("reap {name}"))?;
                for vm in pool.policy.expired(&vms, now_unix()) {
                    if let Err(e) = super::teardown::drain_node(paths, &pool.provider, vm).await {
                        eprintln!("node {} kept: {e:#}", vm.id);
                        kept += 1;
                        continue;
                    }
                    sam_provisioner::Provider::delete(&pool.provider, &vm.id)
                        .await
                        .with_context(|| format!("reap {name}: delete {}", vm.id))?;
                    let forgot = forget_machine(paths, vm)?;
                    gone.push(json!({ "provider": name, "id": vm.id, "forgot": forgot }));
                }
            }
            let mut text = format!("{} idle machine(s) deleted", gone.len());
            if kept > 0 {
                text.push_str(&format!(
                    "; {kept} kept: they serve conversations no other peer holds (see above)"
                ));
            }
            Ok(Output::new(json!(gone), text))
        }
    }
}

/// Drops a deleted machine's node from the node book (it can never answer again); returns
/// the name it had there.
pub(crate) fn forget_machine(
    paths: &ClientPaths,
    vm: &sam_provisioner::Vm,
) -> Result<Option<String>> {
    let Some(node) = vm.node_id() else {
        return Ok(None);
    };
    let mut book = crate::book::NodeBook::load(&paths.nodes())?;
    let Some(entry) = book.forget_id(&node.to_string()) else {
        return Ok(None);
    };
    book.save(&paths.nodes())?;
    Ok(Some(entry.name))
}

/// The warm pool of one provider set up here (with this home's pool policy and release).
pub(crate) fn pool_for(
    paths: &ClientPaths,
    provider: ProviderName,
) -> Result<sam_provisioner::Pool<AnyProvider>> {
    let file = ProvidersFile::load(paths)?;
    let p = file.provider(paths, provider)?;
    if let AnyProvider::Local(_) = p {
        // fail early with the clear message when sam-node is missing
        super::up::node_binary()?;
    }
    let mut pool = sam_provisioner::Pool::new(p, file.pool.unwrap_or_default());
    pool.release = file
        .release
        .map(|r| sam_bootstrap_release(&r))
        .transpose()?;
    Ok(pool)
}

async fn create(paths: &ClientPaths, provider: ProviderName, size: Size) -> Result<Output> {
    let pool = pool_for(paths, provider)?;
    let key = paths.identity()?;
    let owner = key.node_id();
    // the owner's key: new nodes are enrolled by their owner only
    let probe = IrohProbe::bind_as(&key, probe_bind()?)
        .await
        .map_err(anyhow::Error::msg)?;
    let got = pool.acquire(size, &owner, &probe).await;
    probe.close().await;
    let got = got?;
    let ticket = got.ticket.to_string();
    let mut j = vm_json(pool.provider.name(), &got.vm, None);
    j["reused"] = json!(got.reused);
    j["ticket"] = json!(ticket);
    Ok(Output::new(
        j,
        format!(
            "{} node {} ({})\n{ticket}",
            if got.reused { "warm" } else { "new" },
            got.vm.id,
            pool.provider.name()
        ),
    ))
}

fn sam_bootstrap_release(
    r: &sam_provisioner::serve::Release,
) -> Result<sam_provisioner::NodeRelease> {
    r.node_release().map_err(anyhow::Error::msg)
}

pub(crate) fn probe_bind() -> Result<std::net::SocketAddr> {
    match env("SAM_BIND") {
        Some(s) => s
            .parse()
            .with_context(|| format!("SAM_BIND={s:?} is not an address like 127.0.0.1:0")),
        None => Ok(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
    }
}

async fn add(
    paths: &ClientPaths,
    cloud: Cloud,
    token_stdin: bool,
    project: Option<String>,
) -> Result<Output> {
    let mut file = ProvidersFile::load(paths)?;
    let (name, count) = match cloud {
        Cloud::Hetzner => {
            let token = read_token(token_stdin, "HCLOUD_TOKEN")?;
            let p = Hetzner::new(token.clone(), HetznerConfig::default())?;
            let n = p
                .list()
                .await
                .context("the Hetzner token was not stored")?
                .len();
            let relays = file.hetzner.as_ref().and_then(|e| e.relays.clone());
            file.hetzner = Some(HetznerEntry { token, relays });
            ("hetzner", n)
        }
        Cloud::Scaleway => {
            let token = read_token(token_stdin, "SCW_SECRET_KEY")?;
            let project_id = project
                .or_else(|| env("SCW_DEFAULT_PROJECT_ID"))
                .context("no Scaleway project: pass --project or set SCW_DEFAULT_PROJECT_ID")?;
            let cfg = ScalewayConfig {
                project_id: Some(project_id.clone()),
                ..ScalewayConfig::default()
            };
            let n = Scaleway::new(token.clone(), cfg)?
                .list()
                .await
                .context("the Scaleway key was not stored")?
                .len();
            let relays = file.scaleway.as_ref().and_then(|e| e.relays.clone());
            file.scaleway = Some(ScalewayEntry {
                token,
                project_id,
                relays,
            });
            ("scaleway", n)
        }
    };
    file.save(paths)?;
    let path = ProvidersFile::path(paths);
    Ok(Output::new(
        json!({ "provider": name, "vms": count, "stored": path }),
        format!(
            "{name} token is valid ({count} SAM machine(s) there); stored in {} (mode 0600)\n{name}",
            path.display()
        ),
    ))
}

async fn list_all(
    paths: &ClientPaths,
    only: Option<ProviderName>,
) -> Result<Vec<(&'static str, Vm)>> {
    let file = ProvidersFile::load(paths)?;
    let mut rows = Vec::new();
    for p in file.providers(paths, only)? {
        let vms = p
            .list()
            .await
            .with_context(|| format!("list {} machines", p.name()))?;
        rows.extend(vms.into_iter().map(|v| (p.name(), v)));
    }
    Ok(rows)
}

fn vm_json(provider: &str, v: &Vm, expires: Option<u64>) -> serde_json::Value {
    json!({
        "provider": provider, "id": v.id, "name": v.name, "location": v.location,
        "type": v.machine_type, "status": v.status,
        "ipv4": v.public_ipv4.map(|ip| ip.to_string()),
        "size": v.size().map(|s| s.as_str()),
        "pool": v.pool_state().map(|s| s.as_str()),
        "idle_since": v.idle_since(), "expires_at": expires,
        "node": v.node_id().map(|n| n.to_string()),
    })
}

/// Atomic write (temp file + rename), mode `0600` from the start.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}
