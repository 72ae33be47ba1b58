//! Discovery (issue #17): a node found again by its NodeId after it moved, and a lookup answer
//! accepted only when that NodeId's key signed it.
//!
//! First test, in three network namespaces (support::netns; a direct route, no relay at all):
//! iroh's own pkarr relay and DNS server (`sam-dns`, `iroh-dns-server` from `tools/sam-dns`)
//! runs in `R`; `sam-node` in `N` with relays off publishes its addresses there; `sam` in `C`
//! connects with the node's ticket. The node then restarts on another IP address and port. The
//! client holds only the old ticket (its addresses are stale, it names no relay): without
//! discovery the node cannot be reached; with the pkarr server as its discovery the client
//! reaches it by NodeId, and `sam status` says the path was found by lookup. The node book
//! keeps the new address as a hint: with the server gone, the node is still reached.
//!
//! The same move on the local network with mDNS (`local`) on both sides, no server.
//!
//! Then, on loopback: a stand-in pkarr relay serves, for a victim's NodeId, the
//! victim's own signed record (accepted), the same record with its address changed (refused),
//! and a record with the attacker's address signed by the attacker's key (refused).
//!
//! Waits have generous guards only; no timing is asserted.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sam_protocol::Ticket;

use crate::support::bins::{last, ok, sam_bin, sibling};
use crate::support::netns::{Lab, json, sh, tool_bin};

/// Failure guard for the restarted node to be found (it publishes its new addresses once it
/// has bound; the client asks again until then).
const FIND_GUARD: Duration = Duration::from_secs(60);

/// `sam ARGS` in the client namespace with `home` and `SAM_DISCOVERY=discovery`.
fn sam_d(
    lab: &Lab,
    home: &std::path::Path,
    discovery: &str,
    args: &[&str],
) -> std::process::Output {
    lab.exec(&lab.c, &sam_bin())
        .env("SAM_HOME", home)
        .env("SAM_DISCOVERY", discovery)
        .args(args)
        .output()
        .expect("run sam")
}

#[test]
fn a_moved_node_is_found_by_node_id_through_a_self_hosted_pkarr_server() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates network namespaces, a bridge and veth pairs"
    );
    let dns_bin = tool_bin("sam-dns");
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("node");
    let mut lab = Lab::new("d");
    lab.open_direct_route();

    // iroh's pkarr relay + DNS server, self-hosted in R.
    let mut cmd = lab.exec(&lab.r, &dns_bin);
    cmd.args(["--bind", "10.77.0.1", "--data"])
        .arg(tmp.path().join("dns"));
    let line = lab.spawn_line(cmd);
    let pkarr = line
        .strip_prefix("pkarr ")
        .unwrap_or_else(|| panic!("sam-dns said {line:?}"))
        .to_string();
    let dns_proc = lab.procs.len() - 1;

    let owner = last(&ok(lab.sam(&me, &["id"])));
    let node_id = last(&ok(lab
        .exec(&lab.n, &sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "0.0.0.0:7447"])
        .args(["--relay", "none", "--discovery", &pkarr])
        .output()
        .expect("sam-node init")));
    let cfg = std::fs::read_to_string(node_home.join("node/config.toml")).expect("config");
    assert!(cfg.contains(&pkarr), "{cfg}");

    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", &node_home).arg("run");
    let old_ticket = lab.spawn_line(cmd);
    let old: Ticket = old_ticket.parse().expect("ticket");
    assert_eq!(old.addr.id.to_string(), node_id);
    assert_eq!(old.addr.relay, None, "relays are off");
    assert!(
        old.addr
            .direct
            .contains(&"10.77.0.3:7447".parse().expect("a")),
        "{:?}",
        old.addr.direct
    );

    ok(sam_d(
        &lab,
        &me,
        &pkarr,
        &["connect", &old_ticket, "--name", "box"],
    ));
    let st = json(&ok(sam_d(&lab, &me, &pkarr, &["--json", "status", "box"])));
    assert_eq!(st["path"], "direct", "{st}");
    assert_eq!(st["found_by"], "ticket", "{st}");

    // The node moves: another IP address, another port. The client keeps the old ticket.
    move_node(&mut lab, &node_home, &old);

    // Without discovery the old ticket leads nowhere.
    let out = sam_d(&lab, &me, "none", &["--json", "status", "box"]);
    assert!(
        !out.status.success(),
        "reached a moved node without discovery: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");

    // With the pkarr server as discovery it is found by NodeId (asked again until the
    // restarted node has published its new addresses).
    let st = status_until_found(&lab, &me, &pkarr);
    assert_eq!(st["node"], node_id, "{st}");
    assert_eq!(st["path"], "direct", "{st}");
    assert_eq!(st["remote"], "10.77.0.4:7448", "{st}");
    assert_eq!(st["found_by"], "lookup", "{st}");
    let text = ok(sam_d(&lab, &me, &pkarr, &["status", "box"]));
    assert!(text.contains("found by"), "{text}");

    // The book keeps the NodeId's ticket and the address it was found at as a hint: with the
    // discovery server gone, the node is still reached.
    let book = std::fs::read_to_string(me.join("nodes.toml")).expect("book");
    assert!(book.contains("10.77.0.4:7448"), "{book}");
    let mut dns = lab.procs.remove(dns_proc);
    let _ = dns.kill();
    let _ = dns.wait();
    let st = json(&ok(sam_d(&lab, &me, &pkarr, &["--json", "status", "box"])));
    assert_eq!(st["remote"], "10.77.0.4:7448", "{st}");
    assert_eq!(st["found_by"], "book", "{st}");
}

/// Stops the node (the last process started), moves its namespace from `10.77.0.3` to
/// `10.77.0.4` and its port from 7447 to 7448, and starts it again; checks its new ticket names
/// none of the old addresses.
fn move_node(lab: &mut Lab, node_home: &std::path::Path, old: &Ticket) {
    let mut node = lab.procs.pop().expect("node process");
    let _ = node.kill();
    let _ = node.wait();
    sh(
        "ip",
        &["-n", &lab.n, "addr", "del", "10.77.0.3/24", "dev", "eth0"],
    );
    sh(
        "ip",
        &["-n", &lab.n, "addr", "add", "10.77.0.4/24", "dev", "eth0"],
    );
    // The kernel dropped the link's routes with its last address: the multicast one (mDNS)
    // comes back with the new address, as on a host that changed networks.
    sh(
        "ip",
        &[
            "-n",
            &lab.n,
            "route",
            "replace",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ],
    );
    let cfg_path = node_home.join("node/config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(cfg.contains("0.0.0.0:7447"), "{cfg}");
    std::fs::write(&cfg_path, cfg.replace("0.0.0.0:7447", "0.0.0.0:7448")).expect("config");
    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", node_home).arg("run");
    let new: Ticket = lab.spawn_line(cmd).parse().expect("ticket");
    assert_eq!(new.addr.id, old.addr.id, "same node, same NodeId");
    assert!(
        new.addr
            .direct
            .contains(&"10.77.0.4:7448".parse().expect("a"))
            && !new.addr.direct.iter().any(|a| old.addr.direct.contains(a)),
        "old {:?}, new {:?}",
        old.addr.direct,
        new.addr.direct
    );
}

/// `sam --json status box` with `discovery` until it answers (the moved node announces or
/// publishes itself shortly after it starts), under a failure guard.
fn status_until_found(lab: &Lab, me: &std::path::Path, discovery: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let out = sam_d(lab, me, discovery, &["--json", "status", "box"]);
        if out.status.success() {
            return json(&String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            t0.elapsed() < FIND_GUARD,
            "the moved node was not found by its NodeId: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The same move on the local network, with mDNS (`local`) on both sides and no server.
#[test]
fn a_moved_node_is_found_by_node_id_on_the_local_network() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates network namespaces, a bridge and veth pairs"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("node");
    let mut lab = Lab::new("l");
    lab.open_direct_route();
    // Multicast (mDNS, 224.0.0.251) leaves by the namespaces' only link.
    for ns in [&lab.c, &lab.n] {
        sh(
            "ip",
            &["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"],
        );
    }
    let owner = last(&ok(lab.sam(&me, &["id"])));
    let node_id = last(&ok(lab
        .exec(&lab.n, &sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "0.0.0.0:7447"])
        .args(["--relay", "none", "--discovery", "local"])
        .output()
        .expect("sam-node init")));
    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", &node_home).arg("run");
    let old_ticket = lab.spawn_line(cmd);
    let old: Ticket = old_ticket.parse().expect("ticket");
    ok(sam_d(
        &lab,
        &me,
        "local",
        &["connect", &old_ticket, "--name", "box"],
    ));
    move_node(&mut lab, &node_home, &old);
    let st = status_until_found(&lab, &me, "local");
    assert_eq!(st["node"], node_id, "{st}");
    assert_eq!(st["remote"], "10.77.0.4:7448", "{st}");
    assert_eq!(st["found_by"], "lookup", "{st}");
}

/// A stand-in pkarr relay on loopback: answers every `GET` with `body` and records the paths
/// asked for. Ends with the runtime.
async fn fake_pkarr(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/pkarr", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.lock().expect("body").clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(path);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/pkarr.org/relays#payload\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, rx)
}

/// What the client's discovery makes of the answer it gets for `id`: the addresses of every
/// record it accepted.
async fn resolve(ep: &iroh::Endpoint, id: iroh::EndpointId) -> Vec<SocketAddr> {
    let mut stream = Box::pin(ep.address_lookup().expect("open").resolve(id));
    let mut addrs = Vec::new();
    let guard = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = stream.next().await {
            if let Ok(Ok(item)) = item {
                assert_eq!(item.endpoint_id(), id, "an answer for another NodeId");
                addrs.extend(item.endpoint_info().ip_addrs().copied());
            }
        }
    });
    guard.await.expect("the lookup never ended");
    addrs
}

#[tokio::test]
async fn a_lookup_answer_is_accepted_only_when_signed_by_the_node_id() {
    use iroh::endpoint_info::EndpointInfo;
    let victim = iroh::SecretKey::from_bytes(&[7u8; 32]);
    let attacker = iroh::SecretKey::from_bytes(&[9u8; 32]);
    let real: SocketAddr = "127.0.0.1:5555".parse().expect("a");
    let evil: SocketAddr = "127.0.0.1:6666".parse().expect("a");
    let genuine = EndpointInfo::new(victim.public())
        .with_ip_addrs(vec![real])
        .to_pkarr_signed_packet(&victim, 30)
        .expect("sign")
        .to_relay_payload();
    // The victim's record with its address changed on the way (same length, same place).
    let mut tampered = genuine.clone();
    let pos = tampered
        .windows(14)
        .position(|w| w == b"127.0.0.1:5555")
        .expect("the address is in the record");
    tampered[pos..pos + 14].copy_from_slice(b"127.0.0.1:6666");
    // A record naming the victim's NodeId with the attacker's address, signed by the attacker.
    let forged = EndpointInfo::new(victim.public())
        .with_ip_addrs(vec![evil])
        .to_pkarr_signed_packet(&attacker, 30)
        .expect("sign")
        .to_relay_payload();

    let body = std::sync::Arc::new(std::sync::Mutex::new(genuine));
    let (url, mut asked) = fake_pkarr(body.clone()).await;
    let key = sam_protocol::SecretKey::generate();
    let discovery = sam_protocol::discovery::parse(&[url.as_str()]).expect("discovery");
    let ep = sam_client::endpoint::bind_full(
        &key,
        Some("127.0.0.1:0".parse().expect("a")),
        &Default::default(),
        &discovery,
    )
    .await
    .expect("bind");

    assert_eq!(
        resolve(&ep, victim.public()).await,
        vec![real],
        "the victim's own signed record is accepted"
    );
    let path = asked.recv().await.expect("the relay was asked");
    assert!(path.ends_with(&victim.public().to_z32()), "{path}");

    *body.lock().expect("body") = tampered;
    assert_eq!(
        resolve(&ep, victim.public()).await,
        Vec::<SocketAddr>::new(),
        "a record changed on the way is refused"
    );
    *body.lock().expect("body") = forged;
    assert_eq!(
        resolve(&ep, victim.public()).await,
        Vec::<SocketAddr>::new(),
        "a record signed by another key is refused"
    );
    assert!(asked.recv().await.is_some() && asked.recv().await.is_some());
    ep.close().await;
}

/// `sam-node init --discovery` refuses what is not a discovery service (nothing written), and
/// the client refuses a bad `SAM_DISCOVERY` with a clear error rather than dialling without.
#[test]
fn bad_discovery_settings_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let owner = sam_protocol::SecretKey::generate().node_id().to_string();
    let out = Command::new(sibling("sam-node"))
        .env("SAM_HOME", tmp.path().join("node"))
        .args(["init", "--owner", &owner, "--discovery", "dns.example.org"])
        .output()
        .expect("sam-node init");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--discovery"), "{err}");
    assert!(!tmp.path().join("node/node/config.toml").exists());
    let ticket = Ticket::new(sam_protocol::NodeAddr {
        id: sam_protocol::SecretKey::generate().node_id(),
        direct: vec!["127.0.0.1:9".parse().expect("a")],
        relay: None,
    })
    .to_string();
    let out = Command::new(sam_bin())
        .env("SAM_HOME", tmp.path().join("me"))
        .env("SAM_BIND", "127.0.0.1:0")
        .env("SAM_DISCOVERY", "https://user:s3cret@dns.example.org/pkarr")
        .args(["connect", &ticket])
        .output()
        .expect("sam");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SAM_DISCOVERY"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}
