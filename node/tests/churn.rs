//! The churn test of issue #18: Docker's network churn never reaches the user.
//!
//! A real node (in this process, bound to all interfaces as a VM's node is) serves a real
//! Docker workspace while, in every loop, Docker makes and removes 30 containers and 10
//! networks through its API and builds one devcontainer image (a small Dockerfile `FROM
//! sam-base:1` whose `RUN` step needs no network). Meanwhile the user, through the real
//! `sam` binary and nothing else:
//! - watches a shell print a counter (`sam shell`): every line, none missing or doubled,
//!   across all loops in one terminal;
//! - follows a 3,000-chunk agent answer (`sam prompt --follow`): every chunk, in order;
//! - downloads a big file (`sam files get`): SHA-256 checked against the container's;
//! - downloads a file over HTTP through a forwarded port (`sam forward`): checked too.
//!
//! Zero failures are allowed; the counts (interface changes iroh saw, socket rebinds,
//! lines, chunks, bytes checked, streams that had to resume) are printed.
//!
//! The node's process also starts programs all the while, as a node does (it runs `docker`
//! for agents, `git` for pull requests; here it also runs the `sam` commands and `docker`):
//! before the netwatch patch (`patches/netwatch`, ARCHITECTURE.md "Links") each veth and
//! bridge was a major network change, iroh rebound its socket, and a rebind that met a
//! child holding the old socket between `fork` and `exec` ended the node's QUIC endpoint
//! for good (iroh #4488, #4289).
//!
//! The test runs itself again as a child process (so it can count iroh's own log events
//! with a global subscriber). Everything it makes in Docker carries the label
//! `sam.test.churn=<pid>`; it is removed at the end, on failure too, and a run killed
//! earlier is swept at the start (labels whose process is gone).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use sam_node::workspace::DEFAULT_BASE_IMAGE;
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::{NodeId, SecretKey};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, filter::Targets};

use crate::support::agent_util;

/// Set in the child process that runs the test.
const CHILD_ENV: &str = "SAM_CHURN_CHILD";
/// Loops, and what each makes and removes.
const LOOPS: usize = 10;
const CONTAINERS: usize = 30;
const NETWORKS: usize = 10;
/// Chunks of each loop's agent answer, and the agent's pause after each (ms).
const CHUNKS: usize = 3000;
const CHUNK_DELAY_MS: u64 = 4;
/// The file `sam files get` downloads in each loop (a new one each loop): 1 GiB over the
/// whole test. Not 1 GiB in each loop: in the debug build the tests run in, on 2 busy
/// cores, QUIC and the tar path move about 5 MB/s (measured: one 1 GiB download took
/// 215 s), so ten would take over half an hour; a tenth in each loop keeps a download
/// running through every loop's churn and checks every byte of each.
const DOWNLOAD_BYTES: u64 = (1 << 30) / LOOPS as u64;
/// The file served over HTTP through the forwarded port.
const HTTP_BYTES: u64 = 8 << 20;
/// The label on everything this test makes in Docker; its value is the test's pid.
const LABEL: &str = "sam.test.churn";
/// Failure guard for one loop (a healthy loop takes well under a minute).
const LOOP_GUARD: Duration = Duration::from_secs(600);

#[test]
#[ignore = "open: under Docker's churn on a loaded machine the sam commands' QUIC connections \
            still time out 2-4 times a run ('link lost (timed out)', no rebind seen): forwarded \
            downloads in flight are reset and once the shell lost output older than the \
            scrollback. Run with `cargo test -p sam-node --test node churn:: -- --ignored`"]
fn docker_churn_never_reaches_the_user() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let name = match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::docker_churn_never_reaches_the_user"),
        None => "docker_churn_never_reaches_the_user".to_string(),
    };
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD_ENV, "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "the churn test failed: {}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test (a filter matching nothing also exits 0)"
    );
}

// ------------------------------------------------------------------ iroh's own logs

/// What iroh and netwatch said about the churn, from their own log events.
#[derive(Default)]
struct Seen {
    /// `iroh::_events::link_change` events (interface changes the node's endpoint saw).
    link_changes: AtomicUsize,
    /// Those with `is_major = true`.
    major: AtomicUsize,
    /// netwatch's "rebinding <addr>" (the UDP socket closed and bound again).
    rebinds: AtomicUsize,
    /// netwatch's or iroh's word that a rebind failed.
    failed_rebinds: AtomicUsize,
}

struct CountLayer(Arc<Seen>);

#[derive(Default)]
struct Fields {
    is_major: bool,
    message: String,
}

impl Visit for Fields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_major" {
            self.is_major = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CountLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let target = event.metadata().target();
        if target == "iroh::_events::link_change" {
            self.0.link_changes.fetch_add(1, Ordering::SeqCst);
            if f.is_major {
                self.0.major.fetch_add(1, Ordering::SeqCst);
            }
        } else if target.starts_with("netwatch::udp") && f.message.starts_with("rebinding") {
            self.0.rebinds.fetch_add(1, Ordering::SeqCst);
        } else if f.message.contains("rebind failed") || f.message.contains("failed to rebind") {
            self.0.failed_rebinds.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Counts {
    link_changes: usize,
    major: usize,
    rebinds: usize,
    failed_rebinds: usize,
}

impl Seen {
    fn snapshot(&self) -> Counts {
        Counts {
            link_changes: self.link_changes.load(Ordering::SeqCst),
            major: self.major.load(Ordering::SeqCst),
            rebinds: self.rebinds.load(Ordering::SeqCst),
            failed_rebinds: self.failed_rebinds.load(Ordering::SeqCst),
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            link_changes: self.link_changes - o.link_changes,
            major: self.major - o.major,
            rebinds: self.rebinds - o.rebinds,
            failed_rebinds: self.failed_rebinds - o.failed_rebinds,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} interface changes seen by the node's endpoint ({} major), {} socket rebinds \
             ({} failed)",
            self.link_changes, self.major, self.rebinds, self.failed_rebinds
        )
    }
}

fn child() {
    let seen = Arc::new(Seen::default());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        );
    let count = CountLayer(seen.clone()).with_filter(
        Targets::new()
            .with_target("iroh::_events::link_change", tracing::Level::DEBUG)
            .with_target("netwatch::udp", tracing::Level::DEBUG)
            .with_target("iroh::socket", tracing::Level::WARN),
    );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(count).with(fmt))
        .expect("subscriber");
    let _cleanup = Cleanup;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(churn(seen));
}

// ------------------------------------------------------------------ Docker

fn own_label() -> String {
    format!("{LABEL}={}", std::process::id())
}

fn labels() -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_string(), std::process::id().to_string()),
        ("sam.test".to_string(), "1".to_string()),
    ])
}

fn label_filter(value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![value.to_string()])])
}

/// Removes what this test (`pid`, or every run whose process is gone when `None`) made.
async fn sweep(docker: &Docker, pid: Option<u32>) {
    let keep = |labels: Option<&HashMap<String, String>>| -> bool {
        let Some(v) = labels.and_then(|l| l.get(LABEL)) else {
            return true;
        };
        match pid {
            Some(p) => v != &p.to_string(),
            // A run still alive (another worktree's, a parallel CI job's) keeps its own.
            None => v
                .parse::<u32>()
                .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists()),
        }
    };
    let filter = label_filter(LABEL);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filter)
        .build();
    for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
        if keep(c.labels.as_ref()) {
            continue;
        }
        if let Some(id) = c.id {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
    }
    let opts = ListNetworksOptionsBuilder::default()
        .filters(&filter)
        .build();
    for n in docker.list_networks(Some(opts)).await.unwrap_or_default() {
        if keep(n.labels.as_ref()) {
            continue;
        }
        if let Some(id) = n.id {
            let _ = docker.remove_network(&id).await;
        }
    }
    let opts = ListImagesOptionsBuilder::default().filters(&filter).build();
    for i in docker.list_images(Some(opts)).await.unwrap_or_default() {
        if keep(Some(&i.labels)) {
            continue;
        }
        let _ = docker
            .remove_image(
                &i.id,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
    }
}

/// Removes everything of this run, also when the test panics (through the docker CLI:
/// it runs while a panic unwinds, outside any runtime).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={}", own_label());
        let ids = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .args(["--filter", &filter])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        for (list, rm) in [
            (&["ps", "-aq"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"], &["network", "rm"]),
            (&["images", "-q"], &["rmi", "-f"]),
        ] {
            let ids = ids(list);
            if !ids.is_empty() {
                let _ = Command::new("docker").args(rm).args(&ids).output();
            }
        }
    }
}

/// A running container from the base image (`sleep infinity`), labelled; on `network`
/// when given, else on Docker's default bridge. Returns its id.
async fn run_container(docker: &Docker, name: &str, network: Option<&str>) -> String {
    let body = ContainerCreateBody {
        image: Some(DEFAULT_BASE_IMAGE.to_string()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        labels: Some(labels()),
        host_config: Some(HostConfig {
            network_mode: network.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let id = docker
        .create_container(Some(opts), body)
        .await
        .unwrap_or_else(|e| panic!("create container {name}: {e}"))
        .id;
    docker
        .start_container(&id, None)
        .await
        .unwrap_or_else(|e| panic!("start container {name}: {e}"));
    id
}

async fn remove_container(docker: &Docker, id: &str) {
    docker
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap_or_else(|e| panic!("remove container {id}: {e}"));
}

/// One loop of churn: 10 networks, 30 containers (a third on Docker's bridge, the rest on
/// the new networks), one devcontainer build, then all of it removed.
async fn churn_once(docker: &Docker, run: &str, lap: usize) {
    let mut networks = Vec::new();
    for n in 0..NETWORKS {
        let name = format!("sam-churn-{run}-{lap}-n{n}");
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create network {name}: {e}"));
        networks.push(name);
    }
    // Four at a time, as a busy node's workspaces come up.
    let made: Vec<String> = futures_util::stream::iter(0..CONTAINERS)
        .map(|c| {
            let net = (c % 3 != 0).then(|| networks[c % NETWORKS].clone());
            async move {
                let name = format!("sam-churn-{run}-{lap}-c{c}");
                run_container(docker, &name, net.as_deref()).await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    build_devcontainer(docker, run, lap).await;
    futures_util::stream::iter(made)
        .for_each_concurrent(4, |id| async move { remove_container(docker, &id).await })
        .await;
    for name in networks {
        docker
            .remove_network(&name)
            .await
            .unwrap_or_else(|e| panic!("remove network {name}: {e}"));
    }
}

/// Builds a devcontainer image as the node does (Docker's classic builder through the
/// API): `FROM sam-base:1` and a `RUN` step (a build container on Docker's bridge) that
/// needs no network; never cached (the loop is in it). Removed afterwards.
async fn build_devcontainer(docker: &Docker, run: &str, lap: usize) {
    let dockerfile =
        format!("FROM {DEFAULT_BASE_IMAGE}\nRUN echo churn {run} {lap} > /churn && cat /churn\n");
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "Dockerfile", dockerfile.as_bytes())
        .expect("tar");
    let context = tar.into_inner().expect("tar");
    let tag = format!("sam-churn-{run}:{lap}");
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels())
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let item = item.unwrap_or_else(|e| panic!("docker build: {e}"));
        if let Some(err) = item.error_detail.and_then(|d| d.message) {
            panic!("docker build: {err}");
        }
    }
    docker
        .remove_image(
            &tag,
            Some(RemoveImageOptionsBuilder::default().force(true).build()),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("remove image {tag}: {e}"));
}

/// Runs `script` in container `id` (`docker exec`), panicking on failure; its stdout.
/// Async: the node runs on this runtime, and a worker blocked for seconds (a 100 MiB file
/// made on a loaded machine) stalls the node's endpoint until its links time out.
async fn exec(id: &str, script: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args(["exec", id, "sh", "-c", script])
        .output()
        .await
        .expect("docker exec");
    assert!(
        out.status.success(),
        "in the workspace: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new file of `bytes` random bytes at `path` in the container; its SHA-256 (hex).
async fn random_file(id: &str, path: &str, bytes: u64) -> String {
    let out = exec(
        id,
        &format!("head -c {bytes} /dev/urandom > {path} && sha256sum {path}"),
    )
    .await;
    out.split_whitespace().next().expect("a sum").to_string()
}

// ------------------------------------------------------------------ the user's side

fn bin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_sam-node")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

/// `sam` as a user runs it (its default bind: all interfaces), with its own home.
fn sam(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("sam"));
    c.env("SAM_HOME", home)
        .env("SAM_NO_KEYRING", "1")
        .env_remove("SAM_BIND")
        .env_remove("SAM_RELAY")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .stdin(Stdio::null());
    c
}

async fn sam_ok(home: &Path, args: &[&str]) -> String {
    let out = sam(home)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("sam {args:?}: {e}"));
    assert!(
        out.status.success(),
        "sam {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

/// Failures the user would have seen, in the order they happened.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<String>>>);

impl Failures {
    fn add(&self, what: String) {
        eprintln!("FAILURE: {what}");
        self.0.lock().expect("lock").push(what);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

/// Lines a `sam` command said on stderr about lost links and resumes.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    fn add(&self, who: &str, line: String) {
        self.0.lock().expect("lock").push(format!("{who}: {line}"));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shell's counter: the lines `c1`, `c2`, … checked as they arrive.
#[derive(Default)]
struct Counter {
    last: AtomicU64,
    bytes: AtomicU64,
    /// What the terminal showed before the counter started (for a failure message).
    before: Mutex<String>,
}

async fn read_counter(
    stdout: tokio::process::ChildStdout,
    counter: Arc<Counter>,
    failures: Failures,
) {
    let mut lines = tokio::io::BufReader::new(stdout).split(b'\n');
    let mut started = false;
    loop {
        let line = match lines.next_segment().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                failures.add(format!("sam shell: reading its output: {e}"));
                return;
            }
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        let last = counter.last.load(Ordering::SeqCst);
        if !started {
            // The prompt and the typed command come first (their echo is still on); the
            // shell's bracketed-paste switch and a carriage return may precede `c1`.
            if text.rsplit('\r').next() == Some("c1") {
                started = true;
                counter.last.store(1, Ordering::SeqCst);
            } else {
                let mut b = counter.before.lock().expect("lock");
                if b.len() < 4096 {
                    b.push_str(text);
                    b.push('\n');
                }
            }
            continue;
        }
        if text != format!("c{}", last + 1) {
            failures.add(format!(
                "sam shell: after c{last} the terminal showed {text:?} (a lost, doubled or \
                 damaged line)"
            ));
            return;
        }
        counter.last.store(last + 1, Ordering::SeqCst);
        counter
            .bytes
            .fetch_add(line.len() as u64 + 1, Ordering::SeqCst);
    }
}

fn collect_notes(
    stderr: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    who: &'static str,
    notes: Notes,
    forwarding: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut forwarding = forwarding;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.strip_prefix("forwarding ")
                && let Some(tx) = forwarding.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().into());
                continue;
            }
            notes.add(who, l);
        }
    });
}

/// One HTTP/1.0 GET through the forward; the body when the answer is whole.
async fn http_get(addr: &str, path: &str) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // A stall guard, not a time limit: the machine may be slow, but not stopped.
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf))
            .await
            .map_err(|_| format!("no byte for 120 s after {} bytes", out.len()))?
            .map_err(|e| format!("read after {} bytes: {e}", out.len()))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {} bytes", out.len()))?;
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("answer {:?}", head.lines().next()));
    }
    Ok(out.split_off(at + 4))
}

/// Local SHA-256 of a file by `sha256sum` (fast in any build).
async fn sha256_file(p: &Path) -> String {
    let out = tokio::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .await
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

// ------------------------------------------------------------------ the test

/// `f`'s result and how long it took (s).
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, f64) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed().as_secs_f64())
}

async fn churn(seen: Arc<Seen>) {
    // Docker's own timeout (2 min by default) is a failure guard too: a loaded CI machine
    // can take longer for one call.
    let docker = Docker::connect_with_defaults()
        .expect("docker client")
        .with_timeout(Duration::from_secs(600));
    docker
        .ping()
        .await
        .expect("dockerd answers (scripts/test.sh starts it)");
    docker
        .inspect_image(DEFAULT_BASE_IMAGE)
        .await
        .unwrap_or_else(|e| {
            panic!("base image {DEFAULT_BASE_IMAGE}: {e} (scripts/test.sh builds it)")
        });
    sweep(&docker, None).await;
    let run = format!("{:x}", std::process::id());

    // The user's `sam` home and the node (owned by the user's key), its agents host
    // processes of the scripted test agent.
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("me");
    let owner: NodeId = last_line(&sam_ok(&home, &["id"]).await)
        .parse()
        .expect("sam id prints the user's id");
    let ws_root = tmp.path().join("agents");
    std::fs::create_dir_all(ws_root.join("w1")).expect("agent workspace");
    let mut cfg = NodeConfig::new(owner);
    cfg.bind = "0.0.0.0:0".parse().expect("addr");
    let handle: NodeHandle = Node::start_with_agents(
        NodePaths::new(tmp.path().join("node")),
        cfg,
        SecretKey::generate(),
        agent_util::config(&ws_root, &[]),
    )
    .await
    .expect("node starts");
    let ticket = handle.ticket().to_string();
    sam_ok(&home, &["connect", &ticket, "--name", "box"]).await;

    // The workspace: a container of the base image, served by the node.
    let ws_container = run_container(&docker, &format!("sam-churn-{run}-ws"), None).await;
    exec(
        &ws_container,
        "mkdir -p /workspaces/repo /srv && cd /srv && \
         (nohup python3 -m http.server 8765 >/dev/null 2>&1 &)",
    )
    .await;
    let http_sum = random_file(&ws_container, "/srv/f.bin", HTTP_BYTES).await;
    let ws = handle
        .node
        .workspaces()
        .adopt(&ws_container, "/workspaces/repo", "root")
        .await
        .expect("adopt the workspace container");

    let failures = Failures::default();
    let notes = Notes::default();

    // A shell printing a counter, read through `sam shell` for the whole test.
    let mut shell = sam(&home)
        .args(["shell", &ws])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sam shell");
    let counter = Arc::new(Counter::default());
    let reader = tokio::spawn(read_counter(
        shell.stdout.take().expect("stdout"),
        counter.clone(),
        failures.clone(),
    ));
    collect_notes(
        shell.stderr.take().expect("stderr"),
        "sam shell",
        notes.clone(),
        None,
    );
    let mut shell_in = shell.stdin.take().expect("stdin");
    shell_in
        .write_all(
            b"stty -echo; i=0; while :; do i=$((i+1)); echo c$i; \
              if [ $((i % 50)) -eq 0 ]; then sleep 0.1; fi; done\n",
        )
        .await
        .expect("type in the shell");
    shell_in.flush().await.expect("flush");

    // A forwarded port, for the whole test.
    let mut forward = sam(&home)
        .args(["forward", &ws, "8765", "--local", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sam forward");
    let (tx, rx) = tokio::sync::oneshot::channel();
    collect_notes(
        forward.stderr.take().expect("stderr"),
        "sam forward",
        notes.clone(),
        Some(tx),
    );
    let local = tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .expect("sam forward says where it listens")
        .expect("sam forward runs");

    // The conversation the follower reads.
    let agent = agent_util::test_agent();
    let conv = last_line(
        &sam_ok(
            &home,
            &[
                "convs",
                "new",
                "--workspace",
                "w1",
                "--agent-cmd",
                agent.as_str(),
            ],
        )
        .await,
    );

    // The node's process starts programs all the while, as a node does (see the top).
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let st = Command::new("true").status().expect("run `true`");
                assert!(st.success());
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };

    // The counter must be running before the first loop.
    let t0 = Instant::now();
    while counter.last.load(Ordering::SeqCst) < 100 {
        assert!(
            t0.elapsed() < Duration::from_secs(120) && failures.all().is_empty(),
            "the shell's counter did not start: {:?}; the terminal showed {:?}; notes {:?}",
            failures.all(),
            counter.before.lock().expect("lock"),
            notes.0.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dl_dir = tmp.path().join("downloads");
    std::fs::create_dir_all(&dl_dir).expect("mkdir");
    let start = seen.snapshot();
    let t_all = Instant::now();
    let mut totals = (0u64, 0u64, 0usize, 0u64); // download bytes, http bytes, chunks, http gets
    for lap in 0..LOOPS {
        let before = seen.snapshot();
        let lines_before = counter.last.load(Ordering::SeqCst);
        let t_lap = Instant::now();
        // A new file for this loop's download (made before the churn starts).
        let dl_sum = random_file(&ws_container, "/workspaces/repo/dl.bin", DOWNLOAD_BYTES).await;
        let done = Arc::new(AtomicBool::new(false));

        let churn = async {
            let t = Instant::now();
            churn_once(&docker, &run, lap).await;
            t.elapsed().as_secs_f64()
        };
        let follow = {
            let (home, conv, failures) = (home.clone(), conv.clone(), failures.clone());
            async move {
                let out = sam(&home)
                    .args([
                        "prompt",
                        &conv,
                        &format!("chunks {CHUNKS} {CHUNK_DELAY_MS}"),
                        "--follow",
                    ])
                    .output()
                    .await
                    .expect("sam prompt --follow");
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    failures.add(format!(
                        "loop {lap}: sam prompt --follow failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                    return 0;
                }
                // Every chunk, in order, once: `c0 c1 … c2999`.
                let got: Vec<&str> = stdout
                    .split_whitespace()
                    .filter(|t| {
                        t.len() > 1
                            && t.starts_with('c')
                            && t[1..].bytes().all(|b| b.is_ascii_digit())
                    })
                    .collect();
                let bad = got.iter().enumerate().find(|(i, t)| **t != format!("c{i}"));
                if got.len() != CHUNKS || bad.is_some() {
                    failures.add(format!(
                        "loop {lap}: sam prompt --follow showed {} chunks, first wrong: {bad:?}",
                        got.len()
                    ));
                    return 0;
                }
                got.len()
            }
        };
        let download = {
            let (home, ws, dir, failures) =
                (home.clone(), ws.clone(), dl_dir.clone(), failures.clone());
            async move {
                let out = sam(&home)
                    .args(["files", "get", &ws, "/workspaces/repo/dl.bin"])
                    .arg(&dir)
                    .output()
                    .await
                    .expect("sam files get");
                if !out.status.success() {
                    failures.add(format!(
                        "loop {lap}: sam files get failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                    return 0;
                }
                let file = dir.join("dl.bin");
                let got = sha256_file(&file).await;
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(&file);
                if got != dl_sum || size != DOWNLOAD_BYTES {
                    failures.add(format!(
                        "loop {lap}: the download's SHA-256 is {got} ({size} bytes), the \
                         workspace's {dl_sum}"
                    ));
                    return 0;
                }
                size
            }
        };
        // HTTP downloads through the forward, one after another until the rest is done
        // (at least one).
        let http = {
            let (local, sum, failures, done) = (
                local.clone(),
                http_sum.clone(),
                failures.clone(),
                done.clone(),
            );
            async move {
                let (mut bytes, mut gets) = (0u64, 0u64);
                loop {
                    // Hashed off the runtime: seconds of CPU on a worker (a debug build,
                    // a loaded machine) would stall the node's tasks queued behind it.
                    let got = match http_get(&local, "/f.bin").await {
                        Ok(body) => tokio::task::spawn_blocking(move || {
                            let sum = sha256_hex(&body);
                            (body, sum)
                        })
                        .await
                        .map(Ok)
                        .expect("hash"),
                        Err(e) => Err(e),
                    };
                    match got {
                        Ok((body, got)) if got == sum => {
                            bytes += body.len() as u64;
                            gets += 1;
                        }
                        Ok((body, _)) => {
                            failures.add(format!(
                                "loop {lap}: HTTP through the forward: {} bytes whose SHA-256 \
                                 is not the file's",
                                body.len()
                            ));
                            break;
                        }
                        Err(e) => {
                            failures.add(format!("loop {lap}: HTTP through the forward: {e}"));
                            break;
                        }
                    }
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                }
                (bytes, gets)
            }
        };
        let work = async {
            let (churn_s, (chunks, follow_s), (dl, dl_s)) =
                tokio::join!(churn, timed(follow), timed(download));
            done.store(true, Ordering::SeqCst);
            (chunks, dl, [churn_s, follow_s, dl_s])
        };
        let ((chunks, dl, secs), (http_bytes, gets)) =
            tokio::time::timeout(LOOP_GUARD, async { tokio::join!(work, http) })
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "loop {lap} did not end within {LOOP_GUARD:?}; failures: {:#?}",
                        failures.all()
                    )
                });
        totals.0 += dl;
        totals.1 += http_bytes;
        totals.2 += chunks;
        totals.3 += gets;
        let d = seen.snapshot() - before;
        println!(
            "churn loop {}/{LOOPS}: {CONTAINERS} containers, {NETWORKS} networks, 1 devcontainer \
             build; {d}; shell lines c{}..c{} checked; {chunks} answer chunks checked; \
             {dl} download bytes checked; {gets} HTTP downloads ({http_bytes} bytes) checked; \
             {} failures so far ({:.1} s; churn {:.1} s, answer {:.1} s, download {:.1} s)",
            lap + 1,
            lines_before + 1,
            counter.last.load(Ordering::SeqCst),
            failures.all().len(),
            t_lap.elapsed().as_secs_f64(),
            secs[0],
            secs[1],
            secs[2],
        );
    }
    stop.store(true, Ordering::SeqCst);
    let spawned = spawner.join().expect("spawner");
    // The counter goes on after the last loop: the terminal is still alive.
    let end = counter.last.load(Ordering::SeqCst);
    let t0 = Instant::now();
    while counter.last.load(Ordering::SeqCst) < end + 50 && failures.all().is_empty() {
        if t0.elapsed() > Duration::from_secs(120) {
            failures.add(format!("sam shell: the counter stopped at c{end}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = shell.start_kill();
    let _ = forward.start_kill();
    let _ = shell.wait().await;
    let _ = forward.wait().await;
    let _ = reader.await;

    let total = seen.snapshot() - start;
    let failures = failures.all();
    let notes = notes.0.lock().expect("lock").clone();
    let resumed = notes
        .iter()
        .filter(|n| {
            let n = n.to_ascii_lowercase();
            n.contains("lost") || n.contains("resum") || n.contains("re-established")
        })
        .count();
    println!(
        "churn: {LOOPS} loops in {:.0} s, {} failures; {total}; {} shell lines ({} bytes) \
         checked in one terminal; {} answer chunks checked; {} download bytes checked; \
         {} HTTP downloads ({} bytes) checked through the forward; {resumed} lost-link or \
         resume notes from the sam commands; {spawned} programs started by the node's process",
        t_all.elapsed().as_secs_f64(),
        failures.len(),
        counter.last.load(Ordering::SeqCst),
        counter.bytes.load(Ordering::SeqCst),
        totals.2,
        totals.0,
        totals.3,
        totals.1,
    );
    for n in &notes {
        println!("  note {n}");
    }
    assert!(
        failures.is_empty(),
        "{} user-visible failures, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        total.link_changes > 0,
        "the node's endpoint saw no interface change: the churn did not reach it ({total})"
    );
    assert_eq!(totals.2, LOOPS * CHUNKS, "every answer was checked");
    assert_eq!(
        totals.0,
        LOOPS as u64 * DOWNLOAD_BYTES,
        "every download was checked"
    );
    handle.shutdown().await.expect("shutdown");
    remove_container(&docker, &ws_container).await;
    sweep(&docker, Some(std::process::id())).await;
}

// ------------------------------------------------------------------ a stalled download

/// Found by the churn test: dockerd locks a container while an archive stream of it is
/// open, and the node streamed downloads straight from that archive at the peer's pace.
/// A collaborator who opens a download and stops reading (a slow link, or on purpose)
/// froze the workspace for everyone: every new terminal, file listing, forwarded
/// connection and agent session (`docker exec`, inspect) waited until the download ended.
/// The node now drains Docker's tar into a spool at disk speed (node/src/files/spool.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_does_not_freeze_the_workspace() {
    use crate::support::ws_common::{Container, docker_ready};
    use sam_protocol::stream::{DownloadInfo, FileOpen};
    use sam_protocol::wire::read_frame;

    docker_ready();
    let c = Container::start();
    let want = c
        .sh("head -c 134217728 /dev/urandom > /workspaces/repo/huge.bin && sha256sum /workspaces/repo/huge.bin")
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    let n = crate::support::harness::TestNode::start().await;
    let ws = n
        .handle
        .node
        .workspaces()
        .adopt(&c.id, "/workspaces/repo", "root")
        .await
        .expect("adopt");
    let (key, ticket) = n.member(sam_protocol::Role::Collaborator);
    let ep = crate::support::harness::endpoint(&key).await;
    let (conn, _) = sam_client::conn::connect(&ep, &ticket, sam_protocol::alpn::FILE)
        .await
        .expect("connect");
    let (_send, mut recv) = sam_client::streams::open_stream(
        &conn,
        &FileOpen::Download {
            workspace: ws.clone(),
            path: "/workspaces/repo/huge.bin".into(),
        },
    )
    .await
    .expect("open the download");
    let info = read_frame::<DownloadInfo>(&mut recv, 1 << 16)
        .await
        .expect("info");
    assert_eq!(info.size, 128 << 20);
    let mut tar = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let n0 = recv.read(&mut buf).await.expect("read").expect("bytes");
    tar.extend_from_slice(&buf[..n0]);

    // The peer reads no more. Anyone else's `docker exec` in that workspace (what a new
    // terminal, a file listing or an agent session runs) still answers.
    let exec = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("docker")
            .args(["exec", &c.id, "true"])
            .status(),
    )
    .await;
    assert!(
        matches!(exec, Ok(Ok(s)) if s.success()),
        "docker exec in the workspace waited while a peer held a download open: {exec:?}"
    );

    // The stalled download goes on when the peer reads again, every byte right.
    while let Some(n) = recv.read(&mut buf).await.expect("read") {
        tar.extend_from_slice(&buf[..n]);
    }
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
    let mut entries = archive.entries().expect("a tar");
    let mut entry = entries.next().expect("one entry").expect("entry");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut body).expect("read entry");
    assert_eq!(
        sha256_hex(&body),
        want,
        "the file arrived whole and unchanged"
    );
    conn.close(0u32.into(), b"bye");
}

/// The same lock on the way in: dockerd holds it while an archive upload's body arrives.
/// A collaborator who starts a plain upload and stops sending froze every `docker exec`
/// in the workspace; the node now receives the whole tar into a spool before Docker sees
/// it. The upload still completes once the peer sends the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_does_not_freeze_the_workspace() {
    use crate::support::ws_common::{Container, docker_ready};
    use sam_protocol::stream::{FileOpen, OpenReply, UploadPlan};
    use sam_protocol::wire::read_frame;

    docker_ready();
    let c = Container::start();
    let n = crate::support::harness::TestNode::start().await;
    let ws = n
        .handle
        .node
        .workspaces()
        .adopt(&c.id, "/workspaces/repo", "root")
        .await
        .expect("adopt");
    let (key, ticket) = n.member(sam_protocol::Role::Collaborator);
    let ep = crate::support::harness::endpoint(&key).await;
    let (conn, _) = sam_client::conn::connect(&ep, &ticket, sam_protocol::alpn::FILE)
        .await
        .expect("connect");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "up.bin", &data[..]).expect("tar");
    let tar = tar.into_inner().expect("tar");
    let (mut send, mut recv) = sam_client::streams::open_stream(
        &conn,
        &FileOpen::Upload {
            workspace: ws.clone(),
            path: "/workspaces/repo".into(),
            name: "up.bin".into(),
            size: data.len() as u64,
            count: 1,
        },
    )
    .await
    .expect("open the upload");
    read_frame::<UploadPlan>(&mut recv, 1 << 16)
        .await
        .expect("plan");
    // The header and a little: then nothing for a while.
    send.write_all(&tar[..4096]).await.expect("send");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exec = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("docker")
            .args(["exec", &c.id, "true"])
            .status(),
    )
    .await;
    assert!(
        matches!(exec, Ok(Ok(s)) if s.success()),
        "docker exec in the workspace waited while a peer held an upload open: {exec:?}"
    );
    send.write_all(&tar[4096..]).await.expect("send the rest");
    send.finish().expect("finish");
    match read_frame::<OpenReply>(&mut recv, 1 << 16)
        .await
        .expect("reply")
    {
        OpenReply::Ok => {}
        OpenReply::Error(e) => panic!("the upload failed: {}", e.message),
    }
    let got = c
        .sh("sha256sum /workspaces/repo/up.bin")
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    assert_eq!(got, sha256_hex(&data), "every byte arrived");
    conn.close(0u32.into(), b"bye");
}

/// Found by the churn test: a forwarded connection whose stream broke (the link lost
/// mid-answer) was ended locally like a finished one (FIN), so the program on the user's
/// side — a browser, `curl` — saw a clean end and kept a cut-off download as whole. It
/// may end (the issue allows in-flight connections to end with the link), but as what it
/// is: the client now resets the local connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_download_cut_by_a_lost_link_never_ends_cleanly() {
    use crate::support::ws_common::{Container, docker_ready};

    docker_ready();
    let c = Container::start();
    c.sh("mkdir -p /srv && head -c 67108864 /dev/urandom > /srv/f.bin && echo ok > /srv/ok.txt");
    c.exec_detached("cd /srv && python3 -m http.server 8766");
    let n = crate::support::harness::TestNode::start().await;
    let ws = n
        .handle
        .node
        .workspaces()
        .adopt(&c.id, "/workspaces/repo", "root")
        .await
        .expect("adopt");
    let (key, ticket) = n.member(sam_protocol::Role::Collaborator);
    let ep = crate::support::harness::endpoint(&key).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let local = listener.local_addr().expect("addr").to_string();
    let fwd = tokio::spawn(sam_client::resume::forward(
        ep,
        ticket,
        ws,
        8766,
        listener,
        Duration::from_secs(60),
        |_| {},
    ));
    // The server takes a moment to listen.
    let t0 = Instant::now();
    while http_get(&local, "/ok.txt").await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut s = tokio::net::TcpStream::connect(&local)
        .await
        .expect("connect");
    s.write_all(b"GET /f.bin HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut got = vec![0u8; 1 << 20];
    s.read_exact(&mut got).await.expect("the first MiB");
    // The link goes mid-answer (most of the 64 MiB still on the node's side).
    n.handle.node.drop_all_links();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut rest))
        .await
        .expect("the connection ends");
    assert!(
        end.is_err(),
        "a download cut by the lost link ended like a whole one after {} of 64 MiB",
        got.len() + rest.len()
    );
    fwd.abort();
}
