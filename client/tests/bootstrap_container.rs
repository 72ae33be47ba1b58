//! The rendered cloud-init user-data, run for real in a plain Debian container (`sam-base:1`):
//! it downloads the freshly built `sam-node` from a tiny HTTP server on the Docker bridge,
//! checks its sha256, writes the one-time enrollment and config, starts the node, which makes
//! its own key; then we enroll it as the owner (the container's bridge IP, port 7448) and
//! connect to it at the node id it proved (port 7447). Docker install is skipped
//! (`install_docker = false`: no registry here). Traffic goes only to that container.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sam_bootstrap::{Advertise, BootstrapSpec, NodeRelease, render_user_data};
use sam_client::NodeClient;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::{NodeAddr, SecretKey, Ticket};

use crate::support::bins::node_bin;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed (is dockerd running?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the container when the test ends, pass or fail.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Serves `file` for every GET, on `ip:0`, from a thread.
fn serve_file(ip: IpAddr, file: &Path) -> SocketAddr {
    let bytes = std::fs::read(file).expect("read sam-node");
    let listener = TcpListener::bind((ip, 0)).expect("bind on the docker bridge");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(&bytes);
        }
    });
    addr
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

fn run_container(name: &str, script: &Path) -> Container {
    let mount = format!("{}:/user-data:ro", script.display());
    docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "sam-test=bootstrap",
        "-v",
        &mount,
        "sam-base:1",
        "sh",
        "-c",
        "sh /user-data >/var/log/user-data.log 2>&1; echo rc=$? >>/var/log/user-data.log; sleep infinity",
    ]);
    Container(name.to_owned())
}

fn spec(owner: &SecretKey, url: String, sha256: String) -> (SecretKey, BootstrapSpec) {
    let key = SecretKey::generate();
    let expires = sam_provisioner::pool::now_unix() + 3600;
    let mut spec = BootstrapSpec::new(
        key.clone(),
        expires,
        owner.node_id(),
        NodeRelease {
            url,
            sha256,
            pty_hold: None,
        },
    );
    spec.install_docker = false;
    spec.workspace_image = false;
    // an unprivileged container has no firewall of its own to change (the metadata block is
    // tested against the host's dockerd in bootstrap/tests/metadata_block.rs)
    spec.block_metadata = false;
    spec.advertise = Advertise::Detect {
        metadata_urls: vec![],
    };
    (key, spec)
}

#[tokio::test]
async fn user_data_boots_a_node_in_debian_and_its_ticket_works() {
    // docker0's own address: a fresh Docker leaves the bridge's IPAM `Gateway` empty.
    let gw: IpAddr = crate::support::git_http::bridge_ip();
    let bin = node_bin();
    let http = serve_file(gw, &bin);
    let owner = SecretKey::generate();
    let tmp = tempfile::tempdir().expect("tmp");
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());

    // a wrong sha256 is refused: nothing installed, nothing started
    let (_, bad) = spec(&owner, format!("http://{http}/sam-node"), "ab".repeat(32));
    let bad_path = tmp.path().join("bad.sh");
    std::fs::write(&bad_path, render_user_data(&bad).expect("render")).expect("write");
    let bad_c = run_container(&format!("sam-boot-bad-{suffix}"), &bad_path);

    let (key, good) = spec(&owner, format!("http://{http}/sam-node"), sha256(&bin));
    let ud = render_user_data(&good).expect("render");
    assert!(ud.len() <= sam_bootstrap::USER_DATA_LIMIT);
    let path = tmp.path().join("user-data.sh");
    std::fs::write(&path, &ud).expect("write");
    let c = run_container(&format!("sam-boot-{suffix}"), &path);
    let ip: IpAddr = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &c.0])
        .parse()
        .expect("container ip");

    let ep = sam_client::endpoint::bind(&owner, Some(SocketAddr::new(gw, 0)))
        .await
        .expect("bind");
    let t0 = Instant::now();
    let enroll_at = [SocketAddr::new(
        ip,
        sam_protocol::enroll::DEFAULT_ENROLL_PORT,
    )];
    let node = loop {
        match sam_provisioner::enroll::enroll(&ep, &key.node_id(), &owner.node_id(), &enroll_at)
            .await
        {
            Ok(node) => break node,
            Err(sam_provisioner::EnrollFailure::NotYet(e))
                if t0.elapsed() < Duration::from_secs(90) =>
            {
                tracing::debug!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!(
                "node in the container was never enrolled: {e}\nuser-data log:\n{}\nnode log:\n{}",
                docker(&["exec", &c.0, "cat", "/var/log/user-data.log"]),
                docker(&[
                    "exec",
                    &c.0,
                    "sh",
                    "-c",
                    "cat /var/log/sam-node.log || true"
                ]),
            ),
        }
    };
    assert_ne!(node.id, key.node_id());
    let ticket = Ticket::new(NodeAddr {
        id: node.id,
        direct: vec![SocketAddr::new(ip, sam_bootstrap::DEFAULT_PORT)],
        relay: None,
    });
    let client = loop {
        match NodeClient::connect(&ep, &ticket).await {
            Ok(c) => break c,
            Err(e) if t0.elapsed() < Duration::from_secs(90) => {
                tracing::debug!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!(
                "node in the container never answered: {e}\nuser-data log:\n{}\nnode log:\n{}",
                docker(&["exec", &c.0, "cat", "/var/log/user-data.log"]),
                docker(&[
                    "exec",
                    &c.0,
                    "sh",
                    "-c",
                    "cat /var/log/sam-node.log || true"
                ]),
            ),
        }
    };
    match client.request(Request::Status).await.expect("status") {
        Response::Status(s) => {
            assert_eq!(s.node, node.id);
            assert_eq!(s.owner, owner.node_id());
        }
        other => panic!("unexpected {other:?}"),
    }
    client.close();
    ep.close().await;

    // the script did what it says: key 0600, the container's address advertised
    let mode = docker(&[
        "exec",
        &c.0,
        "stat",
        "-c",
        "%a",
        "/var/lib/sam/node/node.key",
    ]);
    assert_eq!(mode, "600");
    // the node made that key itself: it is nowhere in the user-data, and the one-time
    // enrollment is gone
    let node_key = docker(&["exec", &c.0, "cat", "/var/lib/sam/node/node.key"]);
    assert_eq!(node_key.len(), 64);
    assert!(
        !ud.contains(&node_key),
        "the node's key is in its user-data"
    );
    let gone = Command::new("docker")
        .args(["exec", &c.0, "test", "-e", "/var/lib/sam/node/enroll.toml"])
        .status()
        .expect("docker exec");
    assert!(!gone.success(), "the used enrollment is still on disk");
    let cfg = docker(&["exec", &c.0, "cat", "/var/lib/sam/node/config.toml"]);
    assert!(cfg.contains(&format!("{ip}:7447")), "{cfg}");

    let bad_log = loop {
        let log = docker(&["exec", &bad_c.0, "cat", "/var/log/user-data.log"]);
        if log.contains("rc=") || t0.elapsed() > Duration::from_secs(90) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(bad_log.contains("checksum mismatch"), "{bad_log}");
    assert!(bad_log.contains("rc=1"), "{bad_log}");
    // the step is on disk (no node runs to report it: see docs/security/cloud-node.md)
    let status = docker(&[
        "exec",
        &bad_c.0,
        "cat",
        "/var/lib/sam/node/bootstrap.status",
    ]);
    assert!(
        status.starts_with("state=failed\nstep=sam-node\nmessage=sam-node checksum mismatch"),
        "{status}"
    );
    let installed = Command::new("docker")
        .args(["exec", &bad_c.0, "test", "-e", "/usr/local/bin/sam-node"])
        .status()
        .expect("docker exec");
    assert!(
        !installed.success(),
        "a binary with the wrong sha256 was installed"
    );
}

/// `docker` inside the test container. A container cannot run dockerd (no docker-in-docker
/// here, and the host's socket would let the script change the host's shared `sam-base:1`),
/// so this stand-in records every call in `/var/log/fake-docker.calls` and keeps the state
/// the scripts look at (which images exist, whether the agents were committed into one) in
/// `/var/lib/fake-docker`. Everything else in the user-data runs for real. `build` fails when
/// `/etc/fake-docker-fail-build` exists.
const FAKE_DOCKER: &str = r#"#!/bin/sh
printf '%s\n' "$*" >>/var/log/fake-docker.calls
state=/var/lib/fake-docker
mkdir -p "$state"
key() { printf '%s' "$1" | tr '/:' '__'; }
case "$1" in
info|pull|start|rm) exit 0 ;;
image) [ -e "$state/image-$(key "$3")" ] ;;
build)
  [ -e /etc/fake-docker-fail-build ] && { echo 'fake docker: build failed' >&2; exit 1; }
  cp "$5/Dockerfile" /var/log/fake-docker.Dockerfile
  touch "$state/image-$(key "$4")" ;;
run)
  # install-agents.sh's check: are the pinned agents in the image already?
  ls "$state" | grep -q '^agents-' ;;
create) echo fakecid ;;
inspect) echo 0 ;;
commit) touch "$state/agents-image-$(key "$3")" ;;
*) exit 0 ;;
esac
"#;

fn exec(c: &Container, script: &str) -> String {
    docker(&["exec", &c.0, "sh", "-c", script])
}

fn run_container_with(
    name: &str,
    script: &Path,
    fake_docker: &Path,
    fail_build: bool,
) -> Container {
    let mount = format!("{}:/user-data:ro", script.display());
    let fake = format!("{}:/usr/local/bin/docker:ro", fake_docker.display());
    let prep = if fail_build {
        "touch /etc/fake-docker-fail-build; "
    } else {
        ""
    };
    let cmd = format!(
        "{prep}sh /user-data >/var/log/user-data.log 2>&1; echo rc=$? >>/var/log/user-data.log; sleep infinity"
    );
    docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "sam-test=bootstrap",
        "-v",
        &mount,
        "-v",
        &fake,
        "sam-base:1",
        "sh",
        "-c",
        &cmd,
    ]);
    Container(name.to_owned())
}

/// Enrolls until it works, fails for good, or 120 s pass (then panics with the logs).
async fn enroll_until(
    ep: &iroh::Endpoint,
    key: &SecretKey,
    owner: &SecretKey,
    c: &Container,
    ip: IpAddr,
) -> Result<NodeAddr, sam_protocol::enroll::EnrollError> {
    let t0 = Instant::now();
    let at = [SocketAddr::new(
        ip,
        sam_protocol::enroll::DEFAULT_ENROLL_PORT,
    )];
    loop {
        match sam_provisioner::enroll::enroll(ep, &key.node_id(), &owner.node_id(), &at).await {
            Ok(node) => return Ok(node),
            Err(sam_provisioner::EnrollFailure::Final(e)) => return Err(e),
            Err(sam_provisioner::EnrollFailure::NotYet(e))
                if t0.elapsed() < Duration::from_secs(120) =>
            {
                tracing::debug!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!(
                "no enrollment answer: {e}\nuser-data log:\n{}\nnode log:\n{}",
                exec(c, "cat /var/log/user-data.log || true"),
                exec(c, "cat /var/log/sam-node.log || true"),
            ),
        }
    }
}

fn calls(c: &Container, verb: &str) -> usize {
    exec(c, "cat /var/log/fake-docker.calls || true")
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(verb))
        .count()
}

#[tokio::test]
async fn a_cloud_node_bootstrap_installs_everything_reports_its_steps_and_runs_twice() {
    let gw: IpAddr = crate::support::git_http::bridge_ip();
    let bin = node_bin();
    let http = serve_file(gw, &bin);
    let owner = SecretKey::generate();
    let tmp = tempfile::tempdir().expect("tmp");
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let fake = tmp.path().join("docker");
    std::fs::write(&fake, FAKE_DOCKER).expect("write fake docker");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let cloud_spec = || {
        let (key, mut s) = spec(&owner, format!("http://{http}/sam-node"), sha256(&bin));
        // what a cloud node gets: Docker (present, through the stand-in), the workspace image
        // and the agent CLIs; the metadata block needs a firewall the container lacks
        s.install_docker = true;
        s.workspace_image = true;
        (key, s)
    };

    // a node whose image build fails: the owner is told the step and why, not left waiting
    let (bad_key, bad) = cloud_spec();
    let bad_path = tmp.path().join("bad.sh");
    std::fs::write(&bad_path, render_user_data(&bad).expect("render")).expect("write");
    let bad_c = run_container_with(&format!("sam-cloud-bad-{suffix}"), &bad_path, &fake, true);

    let (key, good) = cloud_spec();
    let ud = render_user_data(&good).expect("render");
    let path = tmp.path().join("user-data.sh");
    std::fs::write(&path, &ud).expect("write");
    let c = run_container_with(&format!("sam-cloud-{suffix}"), &path, &fake, false);
    let ip_of = |c: &Container| -> IpAddr {
        docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &c.0])
            .parse()
            .expect("container ip")
    };
    let (ip, bad_ip) = (ip_of(&c), ip_of(&bad_c));
    let ep = sam_client::endpoint::bind(&owner, Some(SocketAddr::new(gw, 0)))
        .await
        .expect("bind");

    match enroll_until(&ep, &bad_key, &owner, &bad_c, bad_ip).await {
        Err(e @ sam_protocol::enroll::EnrollError::BootstrapFailed(_)) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(
                    "bootstrap failed at step base-image: building the workspace image failed"
                ),
                "{msg}"
            );
        }
        other => panic!(
            "a node whose image build failed was {other:?}\nuser-data log:\n{}",
            exec(&bad_c, "cat /var/log/user-data.log")
        ),
    }
    // the failure did not use up the enrollment, and nothing after the failed step ran
    exec(&bad_c, "test -e /var/lib/sam/node/enroll.toml");
    assert_eq!(calls(&bad_c, "create"), 0);

    let node = enroll_until(&ep, &key, &owner, &c, ip)
        .await
        .expect("the complete node enrolls");
    let log = exec(&c, "cat /var/log/user-data.log");
    // every step ran, in order, with the scripts scripts/up.sh runs
    let mut at = 0;
    for step in [
        "[sam-node]",
        "[config]",
        "[node]",
        "[docker]",
        "[base-image]",
        "[agents]",
        "[service]",
    ] {
        let i = log[at..]
            .find(step)
            .unwrap_or_else(|| panic!("{step} missing or out of order:\n{log}"));
        at += i;
    }
    let status = exec(&c, "cat /var/lib/sam/node/bootstrap.status");
    assert!(status.starts_with("state=done\n"), "{status}");
    let docker_calls = exec(&c, "cat /var/log/fake-docker.calls");
    for want in [
        "info",
        "image inspect sam-base:1",
        "build -q -t sam-base:1",
        "commit fakecid sam-base:1",
    ] {
        assert!(
            docker_calls.lines().any(|l| l.starts_with(want)),
            "no `docker {want}`:\n{docker_calls}"
        );
    }
    // the agents container runs the embedded install-agents.sh on the pinned versions
    assert!(
        docker_calls
            .contains("create -u root -v /usr/local/lib/sam/agents:/tmp/sam-agents:ro sam-base:1")
            && docker_calls.contains("sam-agents claude codex gemini vibe\n"),
        "{docker_calls}"
    );
    let embedded = exec(&c, "cat /usr/local/lib/sam/agents/install-agents.sh");
    assert_eq!(
        embedded.trim_end(),
        include_str!("../../bootstrap/agents/install-agents.sh").trim_end()
    );
    let dockerfile = exec(&c, "cat /var/log/fake-docker.Dockerfile");
    assert!(dockerfile.starts_with("FROM debian:trixie"), "{dockerfile}");

    let ticket = Ticket::new(NodeAddr {
        id: node.id,
        direct: vec![SocketAddr::new(ip, sam_bootstrap::DEFAULT_PORT)],
        relay: None,
    });
    let status_ok = |client: &NodeClient| {
        let client = client.clone();
        async move {
            match client.request(Request::Status).await.expect("status") {
                Response::Status(s) => assert_eq!(s.node, node.id),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let client = connect_until(&ep, &ticket, &c).await;
    status_ok(&client).await;

    // a second run changes nothing that is done: no download, no new image or layer, the
    // enrollment is not written again, the same node keeps running
    let (builds, commits, creates) = (calls(&c, "build"), calls(&c, "commit"), calls(&c, "create"));
    let second = exec(
        &c,
        "sh /user-data >/var/log/second.log 2>&1; echo rc=$?; cat /var/log/second.log",
    );
    assert!(second.starts_with("rc=0"), "{second}");
    assert!(
        second.contains("the pinned release is installed already"),
        "{second}"
    );
    assert!(second.contains("enrolled already"), "{second}");
    assert!(second.contains("sam-node runs already"), "{second}");
    assert!(second.contains("base image sam-base:1 exists"), "{second}");
    assert!(
        second.contains("are the pinned versions already"),
        "{second}"
    );
    assert_eq!(
        (calls(&c, "build"), calls(&c, "commit"), calls(&c, "create")),
        (builds, commits, creates),
        "{}",
        exec(&c, "cat /var/log/fake-docker.calls")
    );
    exec(&c, "test ! -e /var/lib/sam/node/enroll.toml");
    assert_eq!(exec(&c, "pgrep -c -x sam-node"), "1");
    status_ok(&client).await;
    client.close();
    ep.close().await;
}

async fn connect_until(ep: &iroh::Endpoint, ticket: &Ticket, c: &Container) -> NodeClient {
    let t0 = Instant::now();
    loop {
        match NodeClient::connect(ep, ticket).await {
            Ok(client) => return client,
            Err(e) if t0.elapsed() < Duration::from_secs(90) => {
                tracing::debug!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!(
                "node never answered: {e}\nnode log:\n{}",
                exec(c, "cat /var/log/sam-node.log || true")
            ),
        }
    }
}
