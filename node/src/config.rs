//! The node's files under `$SAM_HOME/node/` and its TOML config.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sam_protocol::NodeId;
use serde::{Deserialize, Serialize};

/// Every file the node reads or writes.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    /// `$SAM_HOME/node`, with `SAM_HOME` defaulting to `~/.sam`.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(sam_home()?.join("node")))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Where a running node writes its current address for `sam-node ticket`.
    pub fn addr(&self) -> PathBuf {
        self.dir.join("node.addr")
    }

    /// A cloud node's pending one-time enrollment, written by the user-data (`0600`); deleted
    /// once used or expired (see [`crate::enroll`]).
    pub fn enroll(&self) -> PathBuf {
        self.dir.join("enroll.toml")
    }

    /// Where a node serving its enrollment writes that endpoint's address (local provider).
    pub fn enroll_addr(&self) -> PathBuf {
        self.dir.join("enroll.addr")
    }

    /// The record of the enrollment this node used: it never serves another.
    pub fn enrolled(&self) -> PathBuf {
        self.dir.join("enrolled.json")
    }

    pub fn shares(&self) -> PathBuf {
        self.dir.join("shares.json")
    }

    pub fn docs(&self) -> PathBuf {
        self.dir.join("docs")
    }
}

/// `SAM_HOME`, or `~/.sam`.
pub fn sam_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("SAM_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither SAM_HOME nor HOME is set: set SAM_HOME to a directory for SAM's files")?;
    Ok(PathBuf::from(home).join(".sam"))
}

/// `config.toml` of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The owner's NodeId (hex).
    pub owner: String,
    /// UDP address to bind, e.g. `0.0.0.0:7447` on a VM or `127.0.0.1:0` in tests.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Extra addresses to put in tickets (a VM's public IP and port).
    #[serde(default)]
    pub advertise: Vec<SocketAddr>,
    /// Relays: URLs of iroh relays, or `n0` for n0's public relays. Empty: no relay (the node
    /// is reached only at its direct addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// The single relay of configs written before `relays` (still read; new configs write
    /// `relays`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Discovery: where the node publishes its current addresses under its NodeId, signed
    /// with its key, so a client holding an old ticket finds it again (`n0`: n0's public
    /// DNS/pkarr; the URL of a self-hosted pkarr relay such as `iroh-dns-server`; `local`:
    /// mDNS on the LAN). Empty: none (`sam up`'s loopback node); cloud nodes get `n0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<String>,
    /// Where dockerd listens (`unix:///var/run/docker.sock`, `tcp://…`); default:
    /// `DOCKER_HOST`, else the standard socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Base image of lightweight workspaces; default `SAM_BASE_IMAGE` or `sam-base:1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    /// Most processes (and threads) in one workspace container; default 4096, `0`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_pids_limit: Option<u64>,
    /// Memory of one workspace container in MiB (no swap beyond it); default three quarters of
    /// the Docker host's memory, so a runaway workspace is killed before the node is; `0`: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_memory_mb: Option<u64>,
    /// Size of one workspace container's writable layer in GiB (Docker `--storage-opt size`);
    /// default 32, `0`: no limit. Only some storage drivers enforce it (overlay2 on xfs mounted
    /// with `pquota`, devicemapper, btrfs, zfs); elsewhere the workspace's log says it is not
    /// enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_disk_gb: Option<u64>,
    /// Environment variable names peers may set for agents, besides the known agent keys
    /// (`sam_node::agent::registry::AGENT_ENV`). Anything else a peer sends is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_env: Vec<String>,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7447))
}

impl NodeConfig {
    pub fn new(owner: NodeId) -> Self {
        Self {
            owner: owner.to_string(),
            bind: default_bind(),
            advertise: Vec::new(),
            relays: Vec::new(),
            relay: None,
            discovery: Vec::new(),
            docker_host: None,
            base_image: None,
            workspace_pids_limit: None,
            workspace_memory_mb: None,
            workspace_disk_gb: None,
            agent_env: Vec::new(),
        }
    }

    /// The owner key, checked.
    pub fn owner_id(&self) -> Result<NodeId> {
        self.owner
            .parse()
            .with_context(|| format!("owner {:?} in the node config is not a NodeId", self.owner))
    }

    /// The relays this node uses: `relays` plus the old single `relay`, checked.
    pub fn relay_setting(&self) -> Result<sam_protocol::relay::Relays> {
        let mut items = self.relays.clone();
        items.extend(self.relay.clone());
        sam_protocol::relay::parse(&items).context("relays in the node config")
    }

    /// The discovery services this node publishes to, checked.
    pub fn discovery_setting(&self) -> Result<sam_protocol::discovery::Discovery> {
        sam_protocol::discovery::parse(&self.discovery).context("discovery in the node config")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read node config {}: run `sam-node init --owner <NodeId>` first",
                path.display()
            )
        })?;
        let cfg: Self = toml::from_str(&text)
            .with_context(|| format!("node config {} is not valid", path.display()))?;
        cfg.owner_id()?;
        cfg.relay_setting()
            .with_context(|| format!("node config {}", path.display()))?;
        cfg.discovery_setting()
            .with_context(|| format!("node config {}", path.display()))?;
        Ok(cfg)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serialise node config")?;
        write_private(path, text.as_bytes())
    }
}

/// Creates `dir` (and its parents) and makes `dir` itself `0700`: the node's home, its run
/// folder and its documents are for the node's user alone.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temp file + rename) with mode `0600`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    create_private_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
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
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// `sam-node init`: writes the key and config; refuses to overwrite an existing node.
/// `relays` are `--relay` values (`n0`, `none`, URLs); empty: no relay. `discovery` are
/// `--discovery` values (`n0`, `local`, `none`, pkarr URLs); empty: none.
pub fn init(
    paths: &NodePaths,
    owner: NodeId,
    bind: Option<SocketAddr>,
    relays: &[String],
    discovery: &[String],
) -> Result<NodeId> {
    let setting = sam_protocol::relay::parse(relays).context("--relay")?;
    let discovery = sam_protocol::discovery::parse(discovery).context("--discovery")?;
    if paths.config().exists() {
        bail!(
            "a node is already set up in {} (delete that directory to start over)",
            paths.dir.display()
        );
    }
    create_private_dir(&paths.dir).with_context(|| format!("create {}", paths.dir.display()))?;
    let key = sam_protocol::SecretKey::load_or_create(&paths.key())?;
    let mut cfg = NodeConfig::new(owner);
    if let Some(b) = bind {
        cfg.bind = b;
    }
    if setting.n0 {
        cfg.relays.push("n0".into());
    }
    cfg.relays.extend(setting.urls);
    cfg.discovery = discovery.items();
    cfg.save(&paths.config())?;
    Ok(key.node_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> NodeId {
        sam_protocol::SecretKey::generate().node_id()
    }

    #[test]
    fn relays_are_read_from_both_keys_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let o = owner();
        // A config written before `relays`: its single `relay` is still used.
        std::fs::write(
            &path,
            format!("owner = \"{o}\"\nrelay = \"https://r.example/\"\n"),
        )
        .expect("write");
        let cfg = NodeConfig::load(&path).expect("old config");
        assert_eq!(
            cfg.relay_setting().expect("relays").urls,
            vec!["https://r.example/"]
        );
        std::fs::write(
            &path,
            format!("owner = \"{o}\"\nrelays = [\"n0\", \"http://10.0.0.1:3340/\"]\n"),
        )
        .expect("write");
        let r = NodeConfig::load(&path)
            .expect("new config")
            .relay_setting()
            .expect("relays");
        assert!(r.n0);
        assert_eq!(r.urls, vec!["http://10.0.0.1:3340/"]);
        for bad in [
            "relays = [\"relay.example\"]",
            "relay = \"file:///x\"",
            "relays = [\"none\", \"n0\"]",
        ] {
            std::fs::write(&path, format!("owner = \"{o}\"\n{bad}\n")).expect("write");
            let err = NodeConfig::load(&path).expect_err(bad);
            assert!(format!("{err:#}").contains("relay"), "{bad}: {err:#}");
        }
    }

    #[test]
    fn init_writes_the_relays_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = NodePaths::new(dir.path().join("a"));
        init(
            &paths,
            owner(),
            None,
            &["n0".into(), "https://r.example/".into()],
            &[],
        )
        .expect("init");
        let cfg = NodeConfig::load(&paths.config()).expect("load");
        assert_eq!(cfg.relays, vec!["n0", "https://r.example/"]);
        let paths = NodePaths::new(dir.path().join("b"));
        init(&paths, owner(), None, &["none".into()], &[]).expect("init none");
        assert!(
            NodeConfig::load(&paths.config())
                .expect("load")
                .relays
                .is_empty()
        );
        let paths = NodePaths::new(dir.path().join("c"));
        assert!(init(&paths, owner(), None, &["not a relay".into()], &[]).is_err());
        assert!(
            !paths.config().exists(),
            "nothing written for a bad --relay"
        );
    }

    #[test]
    fn init_writes_the_discovery_given_and_load_checks_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = NodePaths::new(dir.path().join("a"));
        init(
            &paths,
            owner(),
            None,
            &[],
            &["n0,local".into(), "https://dns.example.org/pkarr".into()],
        )
        .expect("init");
        let cfg = NodeConfig::load(&paths.config()).expect("load");
        assert_eq!(
            cfg.discovery,
            vec!["n0", "local", "https://dns.example.org/pkarr"]
        );
        let paths = NodePaths::new(dir.path().join("b"));
        init(&paths, owner(), None, &[], &[]).expect("init default");
        let cfg = NodeConfig::load(&paths.config()).expect("load");
        assert!(cfg.discovery_setting().expect("setting").is_none());
        let paths = NodePaths::new(dir.path().join("c"));
        assert!(init(&paths, owner(), None, &[], &["dns.example.org".into()]).is_err());
        assert!(!paths.config().exists());
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("owner = \"{}\"\ndiscovery = [\"gopher://x\"]\n", owner()),
        )
        .expect("write");
        let err = NodeConfig::load(&path).expect_err("bad discovery");
        assert!(format!("{err:#}").contains("discovery"), "{err:#}");
    }
}
