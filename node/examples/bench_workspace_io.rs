//! Terminal, port-forward and file-download benchmark against OpenSSH, on loopback.
//!
//! ```text
//! scripts/bench-workspace-io.sh        # starts a private sshd, runs this, updates BENCHMARKS.md
//! SAM_BENCH_SSH="-p 2222 -i KEY root@127.0.0.1" cargo run --release -p sam-node --example bench_workspace_io -- [--term-mib 256] [--mib 1024]
//! ```
//!
//! A node runs in this process with relays off; a throwaway container
//! (`SAM_TEST_IMAGE`, else `sam-test-mini` or `sam-base:1`) is adopted as the
//! workspace. ssh runs the same work on this host through `SAM_BENCH_SSH`.
//! Prints a Markdown table on stdout; progress on stderr.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sam_client::conn::connect;
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::stream::{PtyOpen, PtyTarget, encode_data};
use sam_protocol::{SecretKey, alpn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn image() -> String {
    std::env::var("SAM_TEST_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            if sh("docker image inspect sam-test-mini >/dev/null 2>&1").is_ok() {
                "sam-test-mini".into()
            } else {
                "sam-base:1".into()
            }
        })
}

struct Row {
    what: String,
    sam: String,
    ssh: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut term_mib = 256u64;
    let mut mib = 1024u64;
    let mut echo_n = 2000usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().context("a number after each flag")?;
        match a.as_str() {
            "--term-mib" => term_mib = v.parse()?,
            "--mib" => mib = v.parse()?,
            "--echo" => echo_n = v.parse()?,
            _ => bail!("unknown flag {a}"),
        }
    }
    let ssh: Option<Vec<String>> = std::env::var("SAM_BENCH_SSH")
        .ok()
        .map(|s| s.split_whitespace().map(String::from).collect());
    let ssh_base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(ssh.clone().unwrap_or_default());
        v
    };

    let cid = sh(&format!("docker run -d --rm {} sleep infinity", image()))?;
    let _guard = Guard(cid.clone());
    sh(&format!(
        "docker exec {cid} sh -c 'mkdir -p /workspaces/repo && head -c {mib}M /dev/urandom > /workspaces/repo/big.bin'"
    ))?;
    let dir = tempfile::tempdir()?;
    let owner = SecretKey::generate();
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse()?;
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, SecretKey::generate()).await?;
    let ws = handle
        .node
        .workspaces()
        .adopt(&cid, "/workspaces/repo", "root")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let ep = sam_client::endpoint::bind(&owner, Some("127.0.0.1:0".parse()?)).await?;
    let ticket = handle.ticket();
    let mut rows = Vec::new();

    // 1. Terminal throughput.
    eprintln!("terminal throughput ({term_mib} MiB of base64)…");
    let (pty, _) = connect(&ep, &ticket, alpn::PTY).await?;
    let cmd = format!("head -c {term_mib}M /dev/zero | base64");
    let open = PtyOpen {
        workspace: ws.clone(),
        target: PtyTarget::New,
        shell: Some(vec!["sh".into(), "-c".into(), cmd.clone()]),
        cols: 200,
        rows: 50,
    };
    let t0 = Instant::now();
    let (_o, _send, mut recv) = sam_client::streams::open_pty(&pty, &open).await?;
    let mut n = 0u64;
    while let Some(c) = recv.read_chunk(1 << 20).await? {
        n += c.len() as u64;
    }
    let sam_mbs = n as f64 / t0.elapsed().as_secs_f64() / 1e6;
    let ssh_mbs = match &ssh {
        Some(_) => {
            let t0 = Instant::now();
            let mut args = ssh_base(&["-tt"]);
            args.push(cmd.clone());
            let out = Command::new("ssh")
                .args(&args)
                .stdin(Stdio::null())
                .output()?;
            Some(out.stdout.len() as f64 / t0.elapsed().as_secs_f64() / 1e6)
        }
        None => None,
    };
    rows.push(Row {
        what: format!(
            "terminal: `head -c {term_mib}M /dev/zero | base64` to the client (MB/s received)"
        ),
        sam: format!("{sam_mbs:.0} MB/s ({n} bytes)"),
        ssh: ssh_mbs
            .map(|v| format!("{v:.0} MB/s"))
            .unwrap_or("-".into()),
    });

    // 2. Keystroke echo.
    eprintln!("keystroke echo ({echo_n} round trips)…");
    let open = PtyOpen {
        workspace: ws.clone(),
        target: PtyTarget::New,
        shell: Some(vec!["cat".into()]),
        cols: 80,
        rows: 24,
    };
    let (_o, mut send, mut recv) = sam_client::streams::open_pty(&pty, &open).await?;
    let mut lat = Vec::with_capacity(echo_n);
    let mut frame = Vec::new();
    for i in 0..echo_n + 50 {
        frame.clear();
        encode_data(b"a", &mut frame);
        let t = Instant::now();
        send.write_all(&frame).await?;
        let c = recv.read_chunk(64).await?.context("echo stream ended")?;
        if i >= 50 {
            lat.push(t.elapsed());
        }
        // The warm-up may also read the old path's "will not survive a restart" line.
        if !c.contains(&b'a') && i >= 50 {
            bail!("unexpected echo {c:?}");
        }
    }
    let sam_echo = median(&mut lat);
    let ssh_echo = match &ssh {
        Some(_) => Some(ssh_echo(ssh_base(&["-tt"]), echo_n).await?),
        None => None,
    };
    rows.push(Row {
        what: "terminal: keystroke echo round trip (median)".into(),
        sam: format!("{:.0} µs", sam_echo.as_secs_f64() * 1e6),
        ssh: ssh_echo
            .map(|d| format!("{:.0} µs", d.as_secs_f64() * 1e6))
            .unwrap_or("-".into()),
    });

    // 3. Port forward: a server in the container sends `mib` MiB per connection.
    eprintln!("port forward ({mib} MiB)…");
    let server = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',PORT));s.listen(8)\nb=bytes(1<<20)\nwhile True:\n  c,_=s.accept()\n  for _ in range({mib}): c.sendall(b)\n  c.close()\n"
    );
    sh(&format!(
        "docker exec -d {cid} python3 -c \"{}\"",
        server.replace("PORT", "9400").replace('"', "\\\"")
    ))?;
    let (pconn, _) = connect(&ep, &ticket, alpn::PORT).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let fws = ws.clone();
    tokio::spawn(async move {
        sam_client::streams::forward(pconn, fws, 9400, &listener, |e| eprintln!("{e}")).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sam_fwd = pull(local).await?;
    let ssh_fwd = match &ssh {
        Some(_) => {
            let host_server = server.replace("PORT", "9401");
            let mut py = Command::new("python3").args(["-c", &host_server]).spawn()?;
            let mut args = ssh_base(&["-N", "-L", "127.0.0.1:9402:127.0.0.1:9401"]);
            args.retain(|a| !a.is_empty());
            let mut tunnel = Command::new("ssh").args(&args).spawn()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let r = pull("127.0.0.1:9402".parse()?).await;
            let _ = tunnel.kill();
            let _ = py.kill();
            Some(r?)
        }
        None => None,
    };
    rows.push(Row {
        what: format!("port forward: {mib} MiB bulk TCP through the tunnel (MiB/s)"),
        sam: format!("{sam_fwd:.0} MiB/s"),
        ssh: ssh_fwd
            .map(|v| format!("{v:.0} MiB/s (ssh -L)"))
            .unwrap_or("-".into()),
    });

    // 4. File download.
    eprintln!("file download ({mib} MiB)…");
    let (fconn, _) = connect(&ep, &ticket, alpn::FILE).await?;
    let out = tempfile::tempdir_in("/tmp")?;
    let t0 = Instant::now();
    let t = sam_client::streams::download(&fconn, &ws, "big.bin", out.path()).await?;
    let sam_dl = t.size as f64 / t0.elapsed().as_secs_f64() / 1e6;
    drop(out);
    let scp_dl = match &ssh {
        Some(s) => {
            sh(&format!(
                "head -c {mib}M /dev/urandom > /tmp/sam-bench-big.bin"
            ))?;
            let port = s
                .iter()
                .skip_while(|a| *a != "-p")
                .nth(1)
                .cloned()
                .unwrap_or("22".into());
            let key = s
                .iter()
                .skip_while(|a| *a != "-i")
                .nth(1)
                .cloned()
                .unwrap_or_default();
            let host = s.last().cloned().unwrap_or_default();
            let t0 = Instant::now();
            let ok = Command::new("scp")
                .args([
                    "-q",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-P",
                    &port,
                    "-i",
                    &key,
                ])
                .arg(format!("{host}:/tmp/sam-bench-big.bin"))
                .arg("/tmp/sam-bench-big.out")
                .status()?;
            let secs = t0.elapsed().as_secs_f64();
            let _ = std::fs::remove_file("/tmp/sam-bench-big.bin");
            let _ = std::fs::remove_file("/tmp/sam-bench-big.out");
            ok.success().then(|| (mib << 20) as f64 / secs / 1e6)
        }
        None => None,
    };
    rows.push(Row {
        what: format!("file download: {mib} MiB file (MB/s)"),
        sam: format!("{sam_dl:.0} MB/s"),
        ssh: scp_dl
            .map(|v| format!("{v:.0} MB/s (scp)"))
            .unwrap_or("-".into()),
    });

    println!("| measure | sam | ssh (same run) |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.sam, r.ssh);
    }
    ep.close().await;
    handle.shutdown().await?;
    Ok(())
}

async fn pull(addr: std::net::SocketAddr) -> Result<f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    Ok(n as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64())
}

async fn ssh_echo(mut args: Vec<String>, n: usize) -> Result<Duration> {
    args.push("cat".into());
    let mut child = tokio::process::Command::new("ssh")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut buf = [0u8; 64];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        stdin.write_all(b"a").await?;
        stdin.flush().await?;
        let k = stdout.read(&mut buf).await?;
        if k == 0 {
            bail!("ssh ended");
        }
        if i >= 50 {
            lat.push(t.elapsed());
        }
    }
    let _ = child.kill().await;
    Ok(median(&mut lat))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
