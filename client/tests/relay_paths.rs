//! Reach through a self-hosted relay, and the visible path (issue #17).
//!
//! Three network namespaces — relay (`R`), client (`C`), node (`N`) — made by the test: `R`
//! holds a bridge with the relay's address; `C` and `N` hang off it on *isolated* bridge
//! ports, so each reaches the relay but not the other. A real iroh relay (`sam-relay`,
//! iroh's own relay server from `tools/sam-relay`, with an allowlist of the two peers) runs
//! in `R`, `sam-node` in `N` configured with `--relay`, `sam` in `C`. Through the relay:
//! `sam connect`, `sam status --json` says `path: relay` with the relay's URL, requests
//! round-trip, a scripted agent turn streams, a file goes up and comes back down from a
//! workspace, a terminal echoes a command. Then the ports stop being
//! isolated (a direct route opens) and a connection that stayed open the whole time becomes
//! `direct`, every request on it answered throughout.
//!
//! Second test: a node restarted on another port is reached again with the old ticket (by
//! NodeId, through the relay the ticket names).
//!
//! A guard kills the processes and deletes the namespaces (and with them every interface)
//! even when the test fails. It needs root, as the Docker tests do (it fails, never skips,
//! without). Waits have generous guards only; no timing is asserted.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use sam_client::NodeClient;
use sam_client::endpoint::{PathReport, bind_with, path_report};
use sam_protocol::Ticket;
use sam_protocol::ctl::{Request, Response};

use crate::support::bins::{last, ok, sibling};
use crate::support::netns::{Lab, json, tool_bin};

/// Failure guard for the relayed connection to become direct once the route is open. iroh
/// retries holepunching at least every 60 s (`UPGRADE_INTERVAL`); a healthy run takes one
/// such round or less.
const UPGRADE_GUARD: Duration = Duration::from_secs(240);
const RELAY_ADDR: &str = "10.77.0.1:3340";

/// A terminal in workspace `ws` on its own connection (`sam/pty/1`): a command typed in,
/// its output read back.
async fn terminal_round_trip(ep: &iroh::Endpoint, ticket: &Ticket, ws: &str) {
    use sam_protocol::stream::{PtyOpen, PtyTarget, encode_data};
    let (conn, _) = sam_client::conn::connect(ep, ticket, sam_protocol::alpn::PTY)
        .await
        .expect("terminal connection");
    let open = PtyOpen {
        workspace: ws.into(),
        target: PtyTarget::New,
        shell: None,
        cols: 80,
        rows: 24,
    };
    let (_, mut send, mut recv) = sam_client::streams::open_pty(&conn, &open)
        .await
        .expect("open a terminal");
    let mut f = Vec::new();
    encode_data(b"echo relayed-$((6*7))\n", &mut f);
    send.write_all(&f).await.expect("type");
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("relayed-42") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no output: {}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => seen.extend_from_slice(&buf[..n]),
            Ok(Ok(None)) => panic!("terminal closed: {}", String::from_utf8_lossy(&seen)),
            Ok(Err(e)) => panic!("terminal read: {e}"),
            Err(_) => {}
        }
    }
    conn.close(0u32.into(), b"bye");
}

fn old_ticket_id(t: &str) -> String {
    t.parse::<Ticket>().expect("ticket").addr.id.to_string()
}

#[test]
fn relayed_connection_works_and_becomes_direct() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates network namespaces, a bridge and veth pairs"
    );
    let relay_bin = tool_bin("sam-relay");
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("node");
    let mut lab = Lab::new("r");

    let owner = last(&ok(lab.sam(&me, &["id"])));
    let node_id = last(&ok(lab
        .exec(&lab.n, &sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "0.0.0.0:7447"])
        .args(["--relay", &format!("http://{RELAY_ADDR}/")])
        .output()
        .expect("sam-node init")));

    // iroh's relay server with its access control: only these two peers may use it.
    let mut cmd = lab.exec(&lab.r, &relay_bin);
    cmd.args(["--bind", RELAY_ADDR, "--allow", &owner, "--allow", &node_id]);
    let line = lab.spawn_line(cmd);
    let relay_url = line
        .strip_prefix("relay ")
        .unwrap_or_else(|| panic!("sam-relay said {line:?}"))
        .to_string();

    // Agents run on the node's host (scripted `sam-test-agent`) for the streamed turn.
    let ws_root = tmp.path().join("agent-ws");
    std::fs::create_dir_all(&ws_root).expect("agent ws root");
    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", &node_home)
        .env("SAM_AGENT_LAUNCHER", "host")
        .env("SAM_AGENT_HOST_ROOT", &ws_root)
        .arg("run");
    let ticket_text = lab.spawn_line(cmd);
    let ticket: Ticket = ticket_text.parse().expect("node ticket");
    assert_eq!(ticket.addr.relay.as_deref(), Some(relay_url.as_str()));
    assert!(
        ticket
            .addr
            .direct
            .iter()
            .any(|a| a.ip().to_string() == "10.77.0.3"),
        "the ticket names the node's direct address too: {:?}",
        ticket.addr.direct
    );

    // Through the relay: connect, status, a workspace, a file up and down.
    ok(lab.sam(&me, &["connect", &ticket_text, "--name", "box"]));
    let st = json(&ok(lab.sam(&me, &["--json", "status", "box"])));
    assert_eq!(st["path"], "relay", "{st}");
    assert_eq!(st["relay_url"], relay_url.as_str(), "{st}");
    assert!(st["path_rtt_ms"].as_f64().is_some(), "{st}");
    assert!(
        st["why_not_direct"]
            .as_str()
            .is_some_and(|w| w.contains("10.77.0.3")),
        "{st}"
    );
    let text = ok(lab.sam(&me, &["status", "box"]));
    assert!(text.contains("path      relay"), "{text}");

    // The relay's access control (an allowlist of NodeIds): a key not on it gets no path to
    // the node at all — the node never sees it (a refusal by the node would say "refused").
    let stranger = tmp.path().join("stranger");
    let out = lab.sam(&stranger, &["connect", &ticket_text]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a key not on the relay's allowlist got through"
    );
    assert!(err.contains("cannot reach node"), "{err}");

    // A streamed agent turn through the relay.
    let agent = sibling("sam-test-agent");
    let conv = last(&ok(lab.sam(
        &me,
        &[
            "convs",
            "new",
            "--workspace",
            "w1",
            "--agent-cmd",
            agent.to_str().expect("utf8"),
        ],
    )));
    let out = ok(lab.sam(
        &me,
        &["prompt", &conv, "say relayed answer; chunks 5", "--follow"],
    ));
    assert!(out.contains("relayed answer"), "{out}");
    assert!(out.contains("turn done"), "{out}");

    let ws_name = format!("relay{}", std::process::id());
    lab.workspace = Some(ws_name.clone());
    let ws = last(&ok(lab.sam(
        &me,
        &["workspace", "create", "--lightweight", "--name", &ws_name],
    )));
    lab.workspace = Some(ws.clone());
    let up = tmp.path().join("up.bin");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&up, &body).expect("write");
    ok(lab.sam(
        &me,
        &[
            "files",
            "put",
            &ws,
            up.to_str().expect("utf8"),
            "relayed.bin",
        ],
    ));
    let down = tmp.path().join("down.bin");
    ok(lab.sam(
        &me,
        &[
            "files",
            "get",
            &ws,
            "relayed.bin",
            down.to_str().expect("utf8"),
        ],
    ));
    assert!(
        std::fs::read(&down).expect("downloaded") == body,
        "the file came back different"
    );
    let st = json(&ok(lab.sam(&me, &["--json", "status", "box"])));
    assert_eq!(st["path"], "relay", "still no direct route: {st}");

    // One connection held open in the client's namespace: relayed, then direct once the
    // route opens, answering every request throughout.
    let key = sam_client::ClientPaths::new(&me)
        .identity()
        .expect("identity");
    let c_ns = format!("/run/netns/{}", lab.c);
    let lab_ref = &lab;
    let ws_ref = ws.as_str();
    let (before, after, requests) = std::thread::scope(|s| {
        s.spawn(move || {
            let f = std::fs::File::open(&c_ns).expect("open the client's namespace");
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the client's namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let ep = bind_with(&key, None, &Default::default())
                    .await
                    .expect("bind");
                let client = NodeClient::connect(&ep, &ticket).await.expect("connect");
                let status = |c: NodeClient| async move {
                    match c.request(Request::Status).await.expect("status request") {
                        Response::Status(_) => {}
                        other => panic!("status answered {other:?}"),
                    }
                };
                status(client.clone()).await;
                let before: PathReport = path_report(&client.conn(), &ticket.addr);
                terminal_round_trip(&ep, &ticket, ws_ref).await;
                lab_ref.open_direct_route();
                let t0 = Instant::now();
                let mut requests = 0;
                let after = loop {
                    status(client.clone()).await;
                    requests += 1;
                    let p = path_report(&client.conn(), &ticket.addr);
                    if p.path == "direct" {
                        break p;
                    }
                    assert!(
                        t0.elapsed() < UPGRADE_GUARD,
                        "the path stayed {p:?} with the route open"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                client.close();
                ep.close().await;
                (before, after, requests)
            })
        })
        .join()
        .expect("client thread")
    });
    ok(lab.sam(&me, &["workspace", "rm", &ws]));
    eprintln!("before the route opened: {before:?}\nafter: {after:?} ({requests} requests)");
    assert_eq!(before.path, "relay", "{before:?}");
    assert_eq!(before.relay_url.as_deref(), Some(relay_url.as_str()));
    assert_eq!(after.path, "direct", "{after:?}");
    assert_eq!(after.remote.as_deref(), Some("10.77.0.3:7447"), "{after:?}");
    assert!(after.why_not_direct.is_none());
    assert!(requests > 0);

    // A fresh `sam status` goes direct as well (a fresh connection may be carried by the
    // relay for its first moments when the relay answers first: asked again until direct,
    // under a failure guard).
    let t0 = Instant::now();
    loop {
        let st = json(&ok(lab.sam(&me, &["--json", "status", "box"])));
        if st["path"] == "direct" {
            assert_eq!(st["remote"], "10.77.0.3:7447", "{st}");
            break;
        }
        assert!(t0.elapsed() < UPGRADE_GUARD, "never direct: {st}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A node restarted on another port is found again by its NodeId with the old ticket: the
/// ticket names the node's relay, the relay forwards by NodeId, and iroh then learns the
/// node's new direct address. Without a relay the old ticket names only the old port.
#[test]
fn a_node_restarted_on_another_port_is_reached_with_the_old_ticket() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates network namespaces, a bridge and veth pairs"
    );
    let relay_bin = tool_bin("sam-relay");
    let tmp = tempfile::tempdir().expect("tempdir");
    let me = tmp.path().join("me");
    let node_home = tmp.path().join("node");
    let mut lab = Lab::new("m");
    // A direct route this time: only the node's address changes.
    lab.open_direct_route();
    let owner = last(&ok(lab.sam(&me, &["id"])));
    ok(lab
        .exec(&lab.n, &sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "0.0.0.0:7447"])
        .args(["--relay", &format!("http://{RELAY_ADDR}/")])
        .output()
        .expect("sam-node init"));
    let mut cmd = lab.exec(&lab.r, &relay_bin);
    cmd.args(["--bind", RELAY_ADDR, "--open"]);
    lab.spawn_line(cmd);
    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", &node_home).arg("run");
    let old_ticket = lab.spawn_line(cmd);
    ok(lab.sam(&me, &["connect", &old_ticket, "--name", "box"]));
    let st = json(&ok(lab.sam(&me, &["--json", "status", "box"])));
    assert_eq!(st["node"], old_ticket_id(&old_ticket), "{st}");

    // The node restarts on port 7448; the client still has only the old ticket.
    let mut node = lab.procs.pop().expect("node process");
    let _ = node.kill();
    let _ = node.wait();
    let cfg_path = node_home.join("node/config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(cfg.contains("0.0.0.0:7447"), "{cfg}");
    std::fs::write(&cfg_path, cfg.replace("0.0.0.0:7447", "0.0.0.0:7448")).expect("config");
    let mut cmd = lab.exec(&lab.n, &sibling("sam-node"));
    cmd.env("SAM_HOME", &node_home).arg("run");
    let new_ticket: Ticket = lab.spawn_line(cmd).parse().expect("ticket");
    assert!(new_ticket.addr.direct.iter().all(|a| a.port() != 7447));

    let st = json(&ok(lab.sam(&me, &["--json", "status", "box"])));
    assert_eq!(st["node"], new_ticket.addr.id.to_string(), "{st}");
    assert!(
        st["path"] == "relay" || st["remote"] == "10.77.0.3:7448",
        "reached neither through the relay nor at the new port: {st}"
    );
}
