//! Docker's interface churn must not drop links (iroh issues #4488 and #4289).
//!
//! On Linux netwatch (iroh's network monitor) counted every new or vanished interface as a
//! "major" network change, and iroh answers a major change by closing its UDP socket and
//! binding the same port again. Docker makes such interfaces at every container start,
//! network create and devcontainer build. When that bind met `EADDRINUSE` — a child process
//! of ours between `fork` and `exec` still held the old socket — the socket stayed closed and
//! iroh shut the whole QUIC endpoint down: every connection lost, every later dial "Unable to
//! connect to remote". SAM patches netwatch (`patches/netwatch/PATCHES.md`): container
//! plumbing is not a major change, and a rebind that meets `EADDRINUSE` is retried.
//!
//! The test makes both kinds of change in a network namespace of its own while a real node
//! serves a long-lived control connection that pings in a loop, while clients dial it afresh,
//! and while the process starts programs in a loop (as a node does while it creates a
//! workspace):
//! 1. Docker's own interfaces (`veth…` pairs, `br-<12 hex>` bridges, `docker0`), with
//!    addresses, up and down, added and deleted: iroh sees every change, none is major, the
//!    socket is never rebound, nothing fails.
//! 2. Other interfaces (a VPN's or a new uplink's look-alike): every change is major and the
//!    socket is rebound each time, racing the spawns; nothing fails either.
//!
//! The test binary runs itself again under `unshare --net`: the interfaces exist only there
//! and vanish with it, no other process on the machine sees the churn, and no packet leaves
//! the namespace. A guard deletes every interface it made even when the test fails. It needs
//! root, as the Docker tests do (it fails, never skips, without).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::Connection;
use sam_client::conn::connect;
use sam_protocol::ctl::{Request, RequestFrame, Response};
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::wire::{read_frame, write_frame};
use sam_protocol::{Role, alpn};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, filter::Targets};

use crate::support::harness::TestNode;

/// Set in the child that runs inside its own network namespace.
const CHILD_ENV: &str = "SAM_LINKS_NETNS_CHILD";
/// Interfaces added (and as many deleted) in each phase.
const STEPS: usize = 15;
/// Failure guard for one request or one wait for iroh to see a change (never a timing
/// assertion: a healthy run takes milliseconds for each).
const GUARD: Duration = Duration::from_secs(30);

#[test]
fn links_survive_docker_interface_churn() {
    if std::env::var_os(CHILD_ENV).is_some() {
        churn_in_this_namespace();
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates a network namespace and veth pairs and bridges in it"
    );
    let name = match module_path!().split_once("::") {
        Some((_crate, module)) => format!("{module}::links_survive_docker_interface_churn"),
        None => "links_survive_docker_interface_churn".to_string(),
    };
    let out = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(std::env::current_exe().expect("test binary"))
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stderr(Stdio::inherit())
        .output()
        .expect("run `unshare` (util-linux) to give the test a network namespace");
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

/// What iroh and netwatch said about the churn, counted from their own log events.
#[derive(Default)]
struct Seen {
    /// `iroh::_events::link_change` events (one per endpoint per observed change).
    link_changes: AtomicUsize,
    /// Those of them with `is_major = true`.
    major: AtomicUsize,
    /// netwatch's "rebinding <addr>" (the UDP socket closed and bound again).
    rebinds: AtomicUsize,
    /// The interface state of the last link change each watched endpoint (bound inside a
    /// span named in [`WATCHED`]) logged.
    states: Mutex<std::collections::HashMap<&'static str, String>>,
}

/// Spans the node's and the client's endpoints are bound in: iroh logs their link changes
/// inside them, so the test knows which endpoint saw which interfaces.
const WATCHED: [&str; 2] = ["sam_links_node", "sam_links_client"];

struct CountLayer(Arc<Seen>);

#[derive(Default)]
struct Fields {
    is_major: bool,
    message: String,
    state: String,
}

impl Visit for Fields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_major" {
            self.is_major = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "state" => self.state = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S> Layer<S> for CountLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let target = event.metadata().target();
        if target == "iroh::_events::link_change" {
            self.0.link_changes.fetch_add(1, Ordering::SeqCst);
            if f.is_major {
                self.0.major.fetch_add(1, Ordering::SeqCst);
            }
            let who = ctx.event_scope(event).and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| WATCHED.into_iter().find(|w| *w == span.name()))
            });
            if let Some(who) = who {
                self.0.states.lock().expect("lock").insert(who, f.state);
            }
        } else if target.starts_with("netwatch::udp") && f.message.starts_with("rebinding") {
            self.0.rebinds.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Seen {
    /// Waits until the last link change both watched endpoints logged lists interface
    /// `name` (`present`) or does not; `false` when they did not within the guard time.
    async fn wait_for(&self, name: &str, present: bool) -> bool {
        let quoted = format!("{name:?}");
        tokio::time::timeout(GUARD, async {
            loop {
                let done = {
                    let states = self.states.lock().expect("lock");
                    WATCHED.iter().all(|w| {
                        states
                            .get(w)
                            .is_some_and(|s| s.contains(&quoted) == present)
                    })
                };
                if done {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    }
}

/// What the counters said at the end of a phase.
struct Counts {
    link_changes: usize,
    major: usize,
    rebinds: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} link changes seen by iroh ({} major), {} socket rebinds",
            self.link_changes, self.major, self.rebinds
        )
    }
}

impl Seen {
    fn snapshot(&self) -> Counts {
        Counts {
            link_changes: self.link_changes.load(Ordering::SeqCst),
            major: self.major.load(Ordering::SeqCst),
            rebinds: self.rebinds.load(Ordering::SeqCst),
        }
    }

    fn reset(&self) {
        self.link_changes.store(0, Ordering::SeqCst);
        self.major.store(0, Ordering::SeqCst);
        self.rebinds.store(0, Ordering::SeqCst);
    }
}

/// Waits until both endpoints saw interface `name` (just added), removes it, and waits
/// until both saw it go.
async fn step(links: &mut Links, seen: &Seen, failures: &Mutex<Vec<String>>, name: &str) {
    let fail = |what: String| {
        eprintln!("FAILURE: {what}");
        failures.lock().expect("lock").push(what);
    };
    if !seen.wait_for(name, true).await {
        fail(format!("iroh never noticed {name} appearing"));
    }
    links.remove(name);
    if !seen.wait_for(name, false).await {
        fail(format!("iroh never noticed {name} going away"));
    }
}

/// Interfaces this test made; deleted on drop, also when the test fails.
#[derive(Default)]
struct Links {
    names: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Links {
    fn ip(&self, args: &[&str]) {
        ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A veth pair `a`/`b`, both up, `a` holding `addr` (a private test range).
    fn add_veth(&mut self, a: &str, b: &str, addr: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.names.push(a.to_string());
        self.ip(&["addr", "add", addr, "dev", a]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// A bridge holding `addr`, up (what `docker network create` makes).
    fn add_bridge(&mut self, name: &str, addr: &str) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        self.names.push(name.to_string());
        self.ip(&["addr", "add", addr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// Down, then deleted (a veth's peer goes with it).
    fn remove(&mut self, name: &str) {
        self.ip(&["link", "set", name, "down"]);
        self.ip(&["link", "del", name]);
        self.names.retain(|n| n != name);
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            if let Err(e) = ip(&["link", "del", &n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn churn_in_this_namespace() {
    let seen = Arc::new(Seen::default());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        );
    // Spans too: iroh's endpoint actor span (`iroh::socket`) and this file's
    // `sam_links_*` spans, so a link change can be traced to the endpoint that saw it.
    let count = CountLayer(seen.clone()).with_filter(
        Targets::new()
            .with_target("iroh::_events::link_change", tracing::Level::DEBUG)
            .with_target("netwatch::udp", tracing::Level::DEBUG)
            .with_target("iroh::socket", tracing::Level::INFO)
            .with_target(module_path!(), tracing::Level::INFO),
    );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(count).with(fmt))
        .expect("subscriber");

    // A fresh namespace has only `lo`, down. Make it look like a host: loopback up and an
    // uplink with a default route (a veth whose peer stays here: nothing leaves).
    let mut links = Links::default();
    links.ip(&["link", "set", "lo", "up"]);
    links.add_veth("sam-up0", "sam-up1", "10.250.0.2/24");
    links.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.250.0.1",
        "dev",
        "sam-up0",
    ]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(churn(&mut links, &seen));
    drop(rt);
    drop(links);
}

/// A client endpoint as `sam` and the GUI bind it by default (all interfaces, any port:
/// inside this namespace that reaches nothing beyond it).
async fn client_endpoint(key: &sam_protocol::SecretKey) -> iroh::Endpoint {
    sam_client::endpoint::bind(key, Some("0.0.0.0:0".parse().expect("addr")))
        .await
        .expect("bind client")
}

/// One `sam/ctl/1` ping on a new stream of `conn`, no redial.
async fn ping(conn: &Connection) -> Result<(), String> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("open stream: {e}"))?;
    let frame = RequestFrame {
        version: sam_protocol::PROTOCOL_VERSION,
        request: Request::Ping,
    };
    write_frame(&mut send, &frame)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    match read_frame::<Response>(&mut recv, MAX_FRAME).await {
        Ok(Response::Pong) => Ok(()),
        Ok(other) => Err(format!("answer {other:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

async fn churn(links: &mut Links, seen: &Arc<Seen>) {
    use tracing::Instrument as _;
    let n = TestNode::start()
        .instrument(tracing::info_span!("sam_links_node"))
        .await;
    let (key, ticket) = n.member(Role::Viewer);
    let ep = client_endpoint(&key)
        .instrument(tracing::info_span!("sam_links_client"))
        .await;
    let (conn, _) = connect(&ep, &ticket, alpn::CTL).await.expect("first dial");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let fail = |f: &Arc<Mutex<Vec<String>>>, what: String| {
        eprintln!("FAILURE: {what}");
        f.lock().expect("lock").push(what);
    };

    // The live link: one connection, pinged in a loop for the whole churn.
    let pinger = {
        let (conn, stop, failures) = (conn.clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut ok = 0usize;
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(GUARD, ping(&conn)).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => {
                        fail(&failures, format!("ping after {ok} on the live link: {e}"));
                        if conn.close_reason().is_some() {
                            break;
                        }
                    }
                    Err(_) => fail(
                        &failures,
                        format!("ping after {ok}: no answer in {GUARD:?}"),
                    ),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };
    // New dials: from the client's endpoint, and from a new endpoint (a new CLI run).
    let dialler = {
        let (ep, ticket, key, stop, failures) = (
            ep.clone(),
            ticket.clone(),
            key.clone(),
            stop.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            let mut ok = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let fresh = client_endpoint(&key).await;
                for (which, e) in [("same endpoint", &ep), ("new endpoint", &fresh)] {
                    match connect(e, &ticket, alpn::CTL).await {
                        Ok((c, _)) => {
                            match tokio::time::timeout(GUARD, ping(&c)).await {
                                Ok(Ok(())) => ok += 1,
                                Ok(Err(err)) => {
                                    fail(&failures, format!("ping on a new dial ({which}): {err}"))
                                }
                                Err(_) => fail(&failures, format!("new dial ({which}): no pong")),
                            }
                            c.close(0u32.into(), b"bye");
                        }
                        Err(err) => fail(&failures, format!("dial ({which}): {err}")),
                    }
                }
                fresh.close().await;
            }
            ok
        })
    };

    // The process starts programs all the while, as a node does while it creates a
    // workspace (docker, git) and as the test process of the GUI tests does (docker).
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let st = Command::new("true").status().expect("run `true`");
                assert!(st.success(), "`true` failed: {st}");
                spawned += 1;
            }
            spawned
        })
    };
    // Phase 1, Docker's interfaces: a bridge of a user-defined network or a container's
    // veth pair appears with an address, iroh notices; it goes away, iroh notices. Each
    // wait needs both long-lived endpoints (node and client) to have seen it.
    links.add_bridge("docker0", "172.31.0.1/16");
    if !seen.wait_for("docker0", true).await {
        fail(&failures, "iroh never noticed docker0 appearing".into());
    }
    for i in 0..STEPS {
        let name = if i % 2 == 0 {
            let name = format!("br-{:012x}", 0x5a0_0000_0000u64 + i as u64);
            links.add_bridge(&name, &format!("10.252.{i}.1/24"));
            name
        } else {
            // Docker moves the other end into the container; here it stays, named as
            // the host end is.
            let name = format!("veth{:07x}", 0x5a0_0000u32 + i as u32);
            links.add_veth(&name, &format!("{name}c"), &format!("10.251.{i}.1/30"));
            name
        };
        step(links, seen, &failures, &name).await;
    }
    let docker = seen.snapshot();
    println!("links, Docker's interfaces: {docker}");

    // Phase 2, any other interface: each change is major, and iroh rebinds its socket while
    // the spawner keeps a child between fork and exec most of the time.
    seen.reset();
    for i in 0..STEPS {
        let name = if i % 2 == 0 {
            let name = format!("sam-lb{i}");
            links.add_bridge(&name, &format!("10.253.{i}.1/24"));
            name
        } else {
            let name = format!("sam-lv{i}a");
            links.add_veth(&name, &format!("sam-lv{i}b"), &format!("10.254.{i}.1/30"));
            name
        };
        step(links, seen, &failures, &name).await;
    }
    let other = seen.snapshot();
    println!("links, other interfaces: {other}");

    stop.store(true, Ordering::SeqCst);
    let pings = pinger.await.expect("pinger");
    let dials = dialler.await.expect("dialler");
    let spawned = spawner.join().expect("spawner");

    let live = conn.close_reason();
    let failures = failures.lock().expect("lock").clone();
    println!(
        "links: {pings} pings on the live link, {dials} fresh dials, {spawned} programs run; \
         {} failures; live link closed: {live:?}",
        failures.len()
    );
    assert!(
        docker.link_changes >= 2 * STEPS,
        "iroh did not see Docker's interfaces come and go: {docker}"
    );
    assert_eq!(
        (docker.major, docker.rebinds),
        (0, 0),
        "Docker's interfaces made iroh see major changes and rebind its socket: {docker}"
    );
    assert!(
        other.major >= 2 * STEPS && other.rebinds >= 2 * STEPS,
        "the other interfaces did not reach iroh as major changes with rebinds: {other}"
    );
    assert!(
        failures.is_empty(),
        "{} requests failed, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(live.is_none(), "the live link was lost: {live:?}");
    assert!(pings > 0 && dials > 0, "nothing ran during the churn");
    conn.close(0u32.into(), b"bye");
    ep.close().await;
    n.handle.shutdown().await.expect("shutdown");
}
