//! The bootstrap's metadata block, run for real against this machine's dockerd (as root).
//!
//! Two stand-in metadata services, both on this machine (no packet leaves it):
//! - **on the host**: `169.254.169.254` on an interface of ours, a tiny HTTP server bound to it
//!   (a container reaches it through INPUT on `docker0`);
//! - **off the host**, as on a cloud: `169.254.42.42` (Scaleway's address) inside a network
//!   namespace behind a veth pair, so a container's packets are *forwarded* (FORWARD →
//!   `DOCKER-USER`), the path a real cloud's metadata service takes.
//!
//! A container on the default bridge reads both BEFORE the rules (so the attack works on a
//! host without them), cannot after `block-metadata.sh install`, the host itself still can,
//! and `remove` restores the old state. Rules, interfaces, namespace and container are removed
//! at the end, pass or fail (a guard's `Drop`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sam_bootstrap::METADATA_BLOCK_SCRIPT;

const HOST_MD: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const FWD_HOST_SIDE: &str = "169.254.42.41/30";
const FWD_MD: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 42);
const BODY: &str = "instance-secret-user-data";

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {cmd}: {e}")),
    }
}

fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed: {out}");
    out
}

/// Everything the test made, removed on drop (pass or fail).
struct Cleanup {
    script: PathBuf,
    dummy: String,
    veth: String,
    netns: String,
    containers: Vec<String>,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("sh", &[&self.script.to_string_lossy(), "remove"]);
        for c in &self.containers {
            let _ = run("docker", &["rm", "-f", c]);
        }
        let _ = run("docker", &["network", "rm", &self.network]);
        let _ = run("ip", &["link", "del", &self.dummy]);
        let _ = run("ip", &["link", "del", &self.veth]);
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = std::fs::remove_file(&self.script);
    }
}

/// What an earlier run of this test left when it was killed before its [`Cleanup`] ran
/// (another pid, so another tag): its namespace and links hold the same stand-in metadata
/// addresses and routes, and would make this run's "before" half fail. Only names of this
/// test's own shapes are touched.
fn sweep_killed_runs() {
    let tagged = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
    };
    let (_, netns) = run("ip", &["netns", "list"]);
    for ns in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        if tagged(ns, "sam-md-") {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
    let (_, links) = run("ip", &["-o", "link", "show"]);
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if ["samd", "samv", "samq"].iter().any(|p| tagged(name, p)) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
    let (_, ids) = run(
        "docker",
        &["ps", "-aq", "--filter", "label=sam-test=metadata-block"],
    );
    for id in ids.split_whitespace() {
        let _ = run("docker", &["rm", "-f", id]);
    }
    let (_, nets) = run(
        "docker",
        &[
            "network",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            "name=sam-md-net-",
        ],
    );
    for n in nets.split_whitespace().filter(|n| tagged(n, "sam-md-net-")) {
        let _ = run("docker", &["network", "rm", n]);
    }
}

/// Answers every connection with [`BODY`]; counts connections.
fn serve(listener: TcpListener, hits: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        hits.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
    }
}

/// A server on `ip:0` inside network namespace `netns` (a thread that joined it: the network
/// namespace is per thread, and a socket stays in the namespace it was made in).
fn serve_in_netns(netns: &str, ip: Ipv4Addr, hits: Arc<AtomicUsize>) -> u16 {
    let path = format!("/run/netns/{netns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind((ip, 0)).expect("bind in the netns");
        tx.send(l.local_addr().expect("addr").port()).expect("send");
        serve(l, hits);
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("netns server")
}

/// Whether the container got the body from `ip:port` (curl gives up after 5 s, a failure
/// guard: a dropped packet never answers).
fn container_reads(container: &str, ip: Ipv4Addr, port: u16) -> bool {
    let url = format!("http://{ip}:{port}/latest/user-data");
    let (ok, out) = run(
        "docker",
        &[
            "exec",
            container,
            "curl",
            "-sS",
            "--connect-timeout",
            "5",
            "--max-time",
            "8",
            &url,
        ],
    );
    ok && out.contains(BODY)
}

fn host_reads(ip: Ipv4Addr, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::new(IpAddr::V4(ip), port),
        Duration::from_secs(5),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains(BODY)
}

fn rule_count() -> usize {
    let user = must("iptables", &["-w", "10", "-S", "DOCKER-USER"]);
    let input = must("iptables", &["-w", "10", "-S", "INPUT"]);
    format!("{user}{input}")
        .lines()
        .filter(|l| l.contains("169.254.0.0/16") && l.contains("DROP"))
        .count()
}

#[test]
fn containers_cannot_reach_the_metadata_service_after_the_bootstrap_rules() {
    let (docker_ok, info) = run("docker", &["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        docker_ok,
        "dockerd is not reachable: this test needs a running Docker engine and root ({info})"
    );
    let (root, uid) = run("id", &["-u"]);
    assert!(
        root && uid.trim() == "0",
        "this test changes the firewall: run it as root"
    );
    let (img, out) = run("docker", &["image", "inspect", "sam-base:1"]);
    assert!(
        img,
        "image sam-base:1 is missing: run bootstrap/images/build-base.sh ({out})"
    );

    sweep_killed_runs();
    let tag = format!("{}", std::process::id() % 100_000);
    let script = std::env::temp_dir().join(format!("sam-block-metadata-{tag}.sh"));
    std::fs::write(&script, METADATA_BLOCK_SCRIPT).expect("write script");
    let guard = Cleanup {
        script: script.clone(),
        dummy: format!("samd{tag}"),
        veth: format!("samv{tag}"),
        netns: format!("sam-md-{tag}"),
        containers: vec![
            format!("sam-md-test-{tag}"),
            format!("sam-md-test-net-{tag}"),
        ],
        network: format!("sam-md-net-{tag}"),
    };
    // Leftovers of a killed run with the same pid: gone first.
    let _ = run("sh", &[&script.to_string_lossy(), "remove"]);
    assert_eq!(
        rule_count(),
        0,
        "the rules are already installed on this host"
    );

    // the metadata service on the host
    // (on the host end of a veth pair of ours: this kernel may lack the dummy driver, and
    // deleting the pair takes the address with it)
    must(
        "ip",
        &[
            "link",
            "add",
            &guard.dummy,
            "type",
            "veth",
            "peer",
            "name",
            &format!("samq{tag}"),
        ],
    );
    must(
        "ip",
        &["addr", "add", &format!("{HOST_MD}/32"), "dev", &guard.dummy],
    );
    must("ip", &["link", "set", &guard.dummy, "up"]);
    must("ip", &["link", "set", &format!("samq{tag}"), "up"]);
    let host_hits = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind((HOST_MD, 0)).expect("bind on the dummy interface");
    let host_port = l.local_addr().expect("addr").port();
    let h = host_hits.clone();
    std::thread::spawn(move || serve(l, h));

    // the metadata service off the host (forwarded), in a namespace
    let peer = format!("samp{tag}");
    must("ip", &["netns", "add", &guard.netns]);
    must(
        "ip",
        &[
            "link",
            "add",
            &guard.veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ],
    );
    must("ip", &["link", "set", &peer, "netns", &guard.netns]);
    must("ip", &["addr", "add", FWD_HOST_SIDE, "dev", &guard.veth]);
    must("ip", &["link", "set", &guard.veth, "up"]);
    let ns = |args: &[&str]| {
        let mut all = vec!["netns", "exec", guard.netns.as_str(), "ip"];
        all.extend_from_slice(args);
        must("ip", &all);
    };
    ns(&["addr", "add", &format!("{FWD_MD}/30"), "dev", &peer]);
    ns(&["link", "set", &peer, "up"]);
    ns(&["link", "set", "lo", "up"]);
    let fwd_hits = Arc::new(AtomicUsize::new(0));
    let fwd_port = serve_in_netns(&guard.netns, FWD_MD, fwd_hits.clone());

    // a container on the default bridge
    let name = format!("sam-md-test-{tag}");
    must(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "sam-test=metadata-block",
            "sam-base:1",
            "sleep",
            "infinity",
        ],
    );

    // BEFORE: the attack works
    assert!(
        container_reads(&name, HOST_MD, host_port),
        "without the rules a container should reach the metadata address on the host (test setup broken?)"
    );
    assert!(
        container_reads(&name, FWD_MD, fwd_port),
        "without the rules a container should reach the off-host metadata address (test setup broken?)"
    );

    // the bootstrap's rules, twice (idempotent)
    for _ in 0..2 {
        let (ok, out) = run("sh", &[&script.to_string_lossy(), "install"]);
        assert!(ok, "block-metadata.sh install failed: {out}");
    }
    assert_eq!(
        rule_count(),
        3,
        "one DOCKER-USER and two INPUT rules, once each"
    );

    // AFTER: no packet of the container gets there
    let (h0, f0) = (
        host_hits.load(Ordering::SeqCst),
        fwd_hits.load(Ordering::SeqCst),
    );
    assert!(
        !container_reads(&name, HOST_MD, host_port),
        "a container read the metadata address on the host through the rules"
    );
    assert!(
        !container_reads(&name, FWD_MD, fwd_port),
        "a container read the off-host metadata address through the rules"
    );
    assert_eq!(host_hits.load(Ordering::SeqCst), h0, "a connection got in");
    assert_eq!(fwd_hits.load(Ordering::SeqCst), f0, "a connection got in");
    // a container on a user-defined network (br-<id>) is held back too
    let net = guard.network.clone();
    must("docker", &["network", "create", &net]);
    let user_net = container_on(&net, &tag);
    let blocked_user_net = !container_reads(&user_net, HOST_MD, host_port)
        && !container_reads(&user_net, FWD_MD, fwd_port);
    let _ = run("docker", &["rm", "-f", &user_net]);
    let _ = run("docker", &["network", "rm", &net]);
    assert!(
        blocked_user_net,
        "a container on a user-defined network reached the metadata service"
    );
    // the host's own processes still can (the bootstrap reads its public IPv4 there)
    assert!(
        host_reads(HOST_MD, host_port),
        "the host lost its metadata service"
    );

    // `remove` takes exactly these rules out
    let (ok, out) = run("sh", &[&script.to_string_lossy(), "remove"]);
    assert!(ok, "block-metadata.sh remove failed: {out}");
    assert_eq!(rule_count(), 0);
    assert!(container_reads(&name, HOST_MD, host_port));
    drop(guard);
    let (_, links) = run("ip", &["-o", "link"]);
    assert!(!links.contains(&format!("samd{tag}")), "{links}");
}

fn container_on(net: &str, tag: &str) -> String {
    let name = format!("sam-md-test-net-{tag}");
    must(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            net,
            "--label",
            "sam-test=metadata-block",
            "sam-base:1",
            "sleep",
            "infinity",
        ],
    );
    name
}
