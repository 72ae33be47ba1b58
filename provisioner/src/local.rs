//! The `local` provider: nodes on this machine as `sam-node` processes. No cloud account.
//!
//! Each node lives in `<state dir>/<VM id>/`: that directory is the node's `SAM_HOME` (so
//! `node/config.toml`, `node/enroll.toml`, `node/node.key`, `node/node.addr`, `node/node.log`),
//! and `vm.json` (`0600`) next to it holds what a cloud would keep for us: the labels, the pid,
//! the size and the creation time. Like a cloud VM, a local node gets only a one-time
//! enrollment (its user-data): the VM id is the enrollment's public id, and the node makes its
//! own key at start. It binds `127.0.0.1:0` for both endpoints and announces their addresses
//! in `node/enroll.addr` (where [`Local::enroll_addrs`](Provider::enroll_addrs) reads it) and
//! `node/node.addr` (where [`Local::ticket`](Provider::ticket) reads it, checked against the
//! enrolled node id in the labels).
//!
//! The processes outlive the provisioner that started them (like VMs). `list` reports only
//! live ones; `delete` sends SIGTERM, then SIGKILL after a grace period, and removes the
//! directory.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use serde::{Deserialize, Serialize};

use crate::config::Size;
use crate::provider::{CreateSpec, Enrollment, ProviderError, Vm, labels, new_vm_labels};
use crate::{Provider, pool::now_unix};

const NAME: &str = "local";
/// Largest `vm.json` / `node.addr` read.
const MAX_STATE_FILE: u64 = 64 * 1024;

/// What [`Local::user_data`](Provider::user_data) renders: the local provider's "cloud-init".
/// No node key: a one-time enrollment, as on a cloud.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalUserData {
    /// The one-time enrollment key, 64 hex digits.
    enroll_key: String,
    /// Unix seconds after which the node refuses the enrollment.
    enroll_expires_unix: u64,
    owner: NodeId,
}

/// `vm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    name: String,
    /// The VM id: the enrollment's public id (the node's own id is in the labels once it is
    /// enrolled).
    node: NodeId,
    size: Size,
    pid: u32,
    created_unix: u64,
    labels: BTreeMap<String, String>,
}

/// Nodes as local `sam-node` processes.
pub struct Local {
    dir: PathBuf,
    node_bin: PathBuf,
    start_timeout: Duration,
    /// Children this provider started, so a stopped one is reaped (no zombies).
    children: Mutex<HashMap<String, Child>>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("dir", &self.dir)
            .field("node_bin", &self.node_bin)
            .finish()
    }
}

impl Local {
    /// Nodes under `dir` (created if missing), started from the `sam-node` binary `node_bin`.
    pub fn new(dir: impl Into<PathBuf>, node_bin: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            node_bin: node_bin.into(),
            start_timeout: Duration::from_secs(30),
            children: Mutex::new(HashMap::new()),
        }
    }

    /// How long `create` waits for a node to announce its address.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vm_dir(&self, id: &str) -> Result<PathBuf, ProviderError> {
        // The id is a node id: 64 hex digits, never a path.
        let node: NodeId = id.parse().map_err(|_| ProviderError::NotFound {
            provider: NAME,
            id: id.to_owned(),
        })?;
        Ok(self.dir.join(node.to_string()))
    }

    /// The node's run folder (credential sockets): `<dir>/run/<first 12 hex of the id>`, short
    /// because a unix socket path holds at most 107 bytes and the node's home is deep.
    fn run_dir(&self, vm_dir: &Path) -> PathBuf {
        let id = vm_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.dir.join("run").join(id.get(..12).unwrap_or(&id))
    }

    fn read_state(dir: &Path) -> Result<VmState, String> {
        let bytes = read_small(&dir.join("vm.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("vm.json: {e}"))
    }

    fn write_state(dir: &Path, state: &VmState) -> Result<(), ProviderError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| ProviderError::Config(format!("serialise vm.json: {e}")))?;
        write_private(&dir.join("vm.json"), &bytes).map_err(|e| io_err("write vm.json", dir, e))
    }

    fn vm(state: &VmState, status: &str) -> Vm {
        Vm {
            id: state.node.to_string(),
            name: state.name.clone(),
            location: NAME.to_owned(),
            machine_type: "process".to_owned(),
            status: status.to_owned(),
            public_ipv4: None,
            labels: state.labels.clone(),
            created_unix: Some(state.created_unix),
        }
    }

    /// The address the node announced, if it is up.
    pub fn node_addr(&self, id: &str) -> Result<NodeAddr, ProviderError> {
        let dir = self.vm_dir(id)?;
        let bytes = read_small(&dir.join("node").join("node.addr")).map_err(|detail| {
            ProviderError::Malformed {
                provider: NAME,
                what: format!("node {id}"),
                detail: format!("no address yet ({detail})"),
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
            provider: NAME,
            what: format!("node {id}"),
            detail: format!("node.addr: {e}"),
        })
    }

    /// Where the node serving enrollment `id` announced that endpoint.
    fn read_enroll_addrs(&self, id: &str) -> Result<Vec<SocketAddr>, ProviderError> {
        let dir = self.vm_dir(id)?;
        let bytes = read_small(&dir.join("node").join("enroll.addr")).map_err(|detail| {
            ProviderError::Malformed {
                provider: NAME,
                what: format!("node {id}"),
                detail: format!("no enrollment address yet ({detail})"),
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
            provider: NAME,
            what: format!("node {id}"),
            detail: format!("enroll.addr: {e}"),
        })
    }

    fn spawn(
        &self,
        dir: &Path,
        enroll_key: &SecretKey,
        ud: &LocalUserData,
    ) -> Result<Child, String> {
        let owner = &ud.owner;
        let node_dir = dir.join("node");
        fs::create_dir_all(&node_dir).map_err(|e| format!("create {}: {e}", node_dir.display()))?;
        let enroll = sam_protocol::enroll::EnrollFile::new(
            enroll_key,
            ud.enroll_expires_unix,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        let text = toml::to_string(&enroll).map_err(|e| e.to_string())?;
        write_private(&node_dir.join("enroll.toml"), text.as_bytes())
            .map_err(|e| format!("write enroll.toml: {e}"))?;
        let cfg = sam_bootstrap::NodeConfigFile {
            owner: owner.to_string(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: vec![],
            relays: Vec::new(),
            discovery: vec![],
        };
        let text = sam_bootstrap::node_config_toml(&cfg).map_err(|e| e.to_string())?;
        write_private(&node_dir.join("config.toml"), text.as_bytes())
            .map_err(|e| format!("write config.toml: {e}"))?;
        let log_path = node_dir.join("node.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&self.node_bin);
        cmd.env("SAM_HOME", dir)
            .env("SAM_RUN_DIR", self.run_dir(dir))
            .args(["run", "-v"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.node_bin.display()))
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s) and reaps it when it is ours.
    async fn stop(&self, id: &str, pid: u32) {
        let child = self.children.lock().ok().and_then(|mut c| c.remove(id));
        if !is_node_process(pid) {
            return;
        }
        signal(pid, "-TERM");
        let t0 = Instant::now();
        let mut child = child;
        loop {
            let gone = match child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => !is_node_process(pid),
            };
            if gone {
                return;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                signal(pid, "-KILL");
                if let Some(c) = child.as_mut() {
                    let _ = c.wait();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Provider for Local {
    fn name(&self) -> &'static str {
        NAME
    }

    fn user_data(
        &self,
        enrollment: &Enrollment,
        owner: &NodeId,
        _release: Option<&sam_bootstrap::NodeRelease>,
    ) -> Result<String, ProviderError> {
        serde_json::to_string(&LocalUserData {
            enroll_key: data_encoding::HEXLOWER.encode(&enrollment.key.to_bytes()),
            enroll_expires_unix: enrollment.expires_unix,
            owner: *owner,
        })
        .map_err(|e| ProviderError::Config(e.to_string()))
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Vm, ProviderError> {
        let fail = |reason: String, cleanup: &str| ProviderError::CreateFailed {
            provider: NAME,
            name: spec.name.clone(),
            reason,
            cleanup: cleanup.to_owned(),
        };
        let ud: LocalUserData = serde_json::from_str(&spec.user_data).map_err(|e| {
            fail(
                format!("the local provider needs its own user-data (Local::user_data): {e}"),
                "",
            )
        })?;
        let key_bytes: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(ud.enroll_key.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| fail("enroll_key is not 64 hex digits".into(), ""))?;
        let key = SecretKey::from_bytes(key_bytes);
        if key.node_id() != spec.enrollment {
            return Err(fail(
                "the enrollment key does not match spec.enrollment".into(),
                "",
            ));
        }
        let id = spec.enrollment.to_string();
        let dir = self.dir.join(&id);
        if dir.exists() {
            return Err(fail(format!("{} exists already", dir.display()), ""));
        }
        fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // the node's keys live inside
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        let cleanup = |reason: String| {
            let _ = fs::remove_dir_all(&dir);
            fail(reason, " (its directory was removed)")
        };
        let mut child = match self.spawn(&dir, &key, &ud) {
            Ok(c) => c,
            Err(e) => return Err(cleanup(e)),
        };
        let state = VmState {
            name: spec.name.clone(),
            node: spec.enrollment,
            size: spec.size,
            pid: child.id(),
            created_unix: now_unix(),
            labels: new_vm_labels(spec.size, &spec.enrollment),
        };
        if let Err(e) = Self::write_state(&dir, &state) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(cleanup(e.to_string()));
        }
        let t0 = Instant::now();
        let log = dir.join("node").join("node.log");
        loop {
            if self.read_enroll_addrs(&id).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = read_small(&log)
                    .map(|b| {
                        String::from_utf8_lossy(&b)
                            .lines()
                            .last()
                            .unwrap_or("")
                            .to_owned()
                    })
                    .unwrap_or_default();
                return Err(cleanup(format!(
                    "sam-node exited at start ({status}): {tail}"
                )));
            }
            if t0.elapsed() > self.start_timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cleanup(format!(
                    "sam-node did not announce its enrollment address within {:?}",
                    self.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Ok(mut c) = self.children.lock() {
            c.insert(id, child);
        }
        Ok(Self::vm(&state, "running"))
    }

    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.parse::<NodeId>().is_err() {
                continue;
            }
            let Ok(state) = Self::read_state(&path) else {
                continue;
            };
            // A child of ours that exited is reaped here, so its pid reads as gone.
            if let Ok(mut c) = self.children.lock()
                && let Some(child) = c.get_mut(name)
                && !matches!(child.try_wait(), Ok(None))
            {
                c.remove(name);
            }
            if is_node_process(state.pid) {
                out.push(Self::vm(&state, "running"));
            }
        }
        out.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let dir = match self.vm_dir(id) {
            Ok(d) => d,
            Err(_) => return Ok(()),
        };
        if let Ok(state) = Self::read_state(&dir) {
            self.stop(id, state.pid).await;
        }
        let _ = fs::remove_dir_all(self.run_dir(&dir));
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir, e)),
        }
    }

    async fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vm, ProviderError> {
        let dir = self.vm_dir(id)?;
        let not_found = || ProviderError::NotFound {
            provider: NAME,
            id: id.to_owned(),
        };
        let mut state = Self::read_state(&dir).map_err(|_| not_found())?;
        if !is_node_process(state.pid) {
            return Err(not_found());
        }
        state.labels = labels.clone();
        Self::write_state(&dir, &state)?;
        Ok(Self::vm(&state, "running"))
    }

    /// The node's announced address, when it is the node the labels name (enrolled).
    fn ticket(&self, vm: &Vm) -> Result<Ticket, ProviderError> {
        let malformed = |detail: String| ProviderError::Malformed {
            provider: NAME,
            what: format!("node {}", vm.id),
            detail,
        };
        let Some(enrolled) = vm.node_id() else {
            return Err(malformed(format!(
                "not enrolled (no readable {} label)",
                labels::NODE
            )));
        };
        let addr = self.node_addr(&vm.id)?;
        if addr.id != enrolled {
            return Err(malformed(format!(
                "node.addr names node {}, not the enrolled node {}",
                addr.id.short(),
                enrolled.short()
            )));
        }
        Ok(Ticket::new(addr))
    }

    fn enroll_addrs(&self, vm: &Vm) -> Result<Vec<SocketAddr>, ProviderError> {
        self.read_enroll_addrs(&vm.id)
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Config(format!("local: cannot {what} {}: {e}", path.display()))
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_STATE_FILE {
        return Err(format!("{} is too large", path.display()));
    }
    fs::read(path).map_err(|e| e.to_string())
}

/// Atomic write (temp file + rename), mode `0600`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Whether `pid` is a live (not zombie) `sam-node` process: guards against pid reuse.
fn is_node_process(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .and_then(|s| s.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|arg0| arg0.ends_with(b"sam-node"))
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
