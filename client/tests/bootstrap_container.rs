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
        NodeRelease { url, sha256 },
    );
    spec.install_docker = false;
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
    let installed = Command::new("docker")
        .args(["exec", &bad_c.0, "test", "-e", "/usr/local/bin/sam-node"])
        .status()
        .expect("docker exec");
    assert!(
        !installed.success(),
        "a binary with the wrong sha256 was installed"
    );
}
