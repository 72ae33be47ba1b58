//! Relay vs direct, in network namespaces (as `client/tests/relay_paths.rs` makes them): a
//! relay namespace with a bridge and iroh's relay server (`sam-relay`), a client and a node
//! namespace on bridge ports that are isolated (relay only) or not (direct route). Measures,
//! from fresh endpoints: bind + connect + hello + first `Status` round trip through the relay
//! and direct (a ticket with the direct address only), the time a relayed connection takes to
//! become direct once the route opens, and an anchor in the same run: a TCP connect plus a
//! one-byte echo between the same two namespaces.
//!
//! `cargo build --workspace --bins` and `tools/sam-relay` (scripts/test.sh builds it), then
//! as root: `cargo run -p sam-client --example bench_relay -- [N] [UPGRADES]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sam_client::NodeClient;
use sam_client::endpoint::{bind_with, path_report};
use sam_protocol::ctl::Request;
use sam_protocol::{SecretKey, Ticket};

const RELAY_ADDR: &str = "10.77.0.1:3340";
const GUARD: Duration = Duration::from_secs(240);

struct Lab {
    r: String,
    c: String,
    n: String,
    procs: Vec<Child>,
}

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Lab {
    fn new() -> Result<Self> {
        let pid = std::process::id();
        let lab = Lab {
            r: format!("samb-r-{pid}"),
            c: format!("samb-c-{pid}"),
            n: format!("samb-n-{pid}"),
            procs: Vec::new(),
        };
        for ns in [&lab.r, &lab.c, &lab.n] {
            sh("ip", &["netns", "add", ns])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        let r = lab.r.as_str();
        sh("ip", &["-n", r, "link", "add", "br0", "type", "bridge"])?;
        sh(
            "ip",
            &["-n", r, "addr", "add", "10.77.0.1/24", "dev", "br0"],
        )?;
        sh("ip", &["-n", r, "link", "set", "br0", "up"])?;
        for (port, ns, ip) in [
            ("pc", &lab.c, "10.77.0.2/24"),
            ("pn", &lab.n, "10.77.0.3/24"),
        ] {
            sh(
                "ip",
                &[
                    "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                    ns,
                ],
            )?;
            sh("ip", &["-n", r, "link", "set", port, "master", "br0", "up"])?;
            sh("ip", &["-n", ns, "addr", "add", ip, "dev", "eth0"])?;
            sh("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    fn isolate(&self, on: bool) -> Result<()> {
        for port in ["pc", "pn"] {
            sh(
                "bridge",
                &[
                    "-n",
                    &self.r,
                    "link",
                    "set",
                    "dev",
                    port,
                    "isolated",
                    if on { "on" } else { "off" },
                ],
            )?;
        }
        Ok(())
    }

    fn spawn_line(
        &mut self,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        self.procs.push(child);
        Ok(line.trim().to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in [&self.r, &self.c, &self.n] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes live there).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns");
            rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            f()
        })
        .join()
        .expect("thread")
    })
}

fn bin(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("exe dir")?;
    for c in [dir.join(name), dir.join("..").join(name)] {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("{name} not found next to this example: build it first")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// Fresh endpoint, connect, hello, one `Status`; the path the connection used.
async fn connect_once(key: &SecretKey, ticket: &Ticket) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let ep = bind_with(key, None, &Default::default()).await?;
    let c = NodeClient::connect(&ep, ticket).await?;
    c.request(Request::Status).await?;
    let dt = t0.elapsed();
    let path = path_report(&c.conn(), &ticket.addr).path;
    c.close();
    ep.close().await;
    Ok((dt, path))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let upgrades: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    lab.isolate(true)?;
    let owner = SecretKey::generate();
    let node_home = tmp.path().join("node");
    let relay_line = lab.spawn_line(
        &lab.r.clone(),
        &bin("sam-relay")?,
        &["--bind", RELAY_ADDR, "--open"],
        &[],
    )?;
    let relay_url = relay_line
        .strip_prefix("relay ")
        .context("relay line")?
        .to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.n])
        .arg(bin("sam-node")?)
        .env("SAM_HOME", &node_home)
        .args([
            "init",
            "--owner",
            &owner.node_id().to_string(),
            "--bind",
            "0.0.0.0:7447",
            "--relay",
            &relay_url,
        ])
        .output()?;
    if !out.status.success() {
        bail!("sam-node init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ticket: Ticket = lab
        .spawn_line(
            &lab.n.clone(),
            &bin("sam-node")?,
            &["run"],
            &[("SAM_HOME", &node_home)],
        )?
        .parse()?;
    let mut direct_only = ticket.clone();
    direct_only.addr.relay = None;
    direct_only
        .addr
        .direct
        .retain(|a| a.ip().to_string() == "10.77.0.3");

    let c_ns = lab.c.clone();
    let n_ns = lab.n.clone();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };

    // Through the relay (ports isolated).
    let mut relay = in_ns(&c_ns, || {
        rt().block_on(async {
            let mut v = Vec::new();
            for i in 0..n + 3 {
                let (dt, path) = connect_once(&owner, &ticket).await?;
                anyhow::ensure!(path == "relay", "isolated, yet the path was {path}");
                if i >= 3 {
                    v.push(dt);
                }
            }
            anyhow::Ok(v)
        })
    })?;

    // Relayed → direct: connect through the relay, open the route, wait for `direct`.
    let mut upgrade = Vec::new();
    for _ in 0..upgrades {
        lab.isolate(true)?;
        let dt = in_ns(&c_ns, || {
            rt().block_on(async {
                let ep = bind_with(&owner, None, &Default::default()).await?;
                let c = NodeClient::connect(&ep, &ticket).await?;
                c.request(Request::Status).await?;
                anyhow::ensure!(path_report(&c.conn(), &ticket.addr).path == "relay");
                lab.isolate(false)?;
                let t0 = Instant::now();
                loop {
                    c.request(Request::Status).await?;
                    if path_report(&c.conn(), &ticket.addr).path == "direct" {
                        break;
                    }
                    anyhow::ensure!(t0.elapsed() < GUARD, "no upgrade within the guard");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let dt = t0.elapsed();
                c.close();
                ep.close().await;
                anyhow::Ok(dt)
            })
        })?;
        upgrade.push(dt);
    }

    // Direct (route open, a ticket with the direct address only).
    lab.isolate(false)?;
    let mut direct = in_ns(&c_ns, || {
        rt().block_on(async {
            let mut v = Vec::new();
            for i in 0..n + 3 {
                let (dt, path) = connect_once(&owner, &direct_only).await?;
                anyhow::ensure!(path == "direct", "the path was {path}");
                if i >= 3 {
                    v.push(dt);
                }
            }
            anyhow::Ok(v)
        })
    })?;

    // Anchor: TCP connect + one-byte echo, client namespace → node namespace, direct route.
    let listener = in_ns(&n_ns, || TcpListener::bind("10.77.0.3:7450"))?;
    let server = std::thread::spawn(move || {
        for s in listener.incoming().take(n + 3) {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    let mut tcp = in_ns(&c_ns, || {
        let mut v = Vec::new();
        for i in 0..n + 3 {
            let t0 = Instant::now();
            let mut s = TcpStream::connect(SocketAddr::from(([10, 77, 0, 3], 7450)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            if i >= 3 {
                v.push(t0.elapsed());
            }
        }
        anyhow::Ok(v)
    })?;
    let _ = server.join();

    let (rp50, rp99) = (pct(&mut relay, 0.5), pct(&mut relay, 0.99));
    let (dp50, dp99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (tp50, tp99) = (pct(&mut tcp, 0.5), pct(&mut tcp, 0.99));
    let (up50, up99) = (pct(&mut upgrade, 0.5), pct(&mut upgrade, 0.99));
    println!("| measurement (namespaces, fresh endpoint each) | n | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("| SAM connect + first RPC through the relay | {n} | {rp50:.1} ms | {rp99:.1} ms |");
    println!("| SAM connect + first RPC direct | {n} | {dp50:.1} ms | {dp99:.1} ms |");
    println!(
        "| anchor: TCP connect + 1-byte echo, same namespaces | {n} | {tp50:.2} ms | {tp99:.2} ms |"
    );
    println!(
        "| relayed → direct after the route opens | {upgrades} | {up50:.0} ms | {up99:.0} ms |"
    );
    println!(
        "\nratios (p50): relay/direct {:.2}×, direct/TCP anchor {:.1}×",
        rp50 / dp50,
        dp50 / tp50
    );
    Ok(())
}
