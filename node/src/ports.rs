//! Ports: TCP listeners inside a workspace, and `sam/port/1` forwarding to them.
//!
//! Listeners are read from `/proc/<pid>/net/tcp{,6}` of the container's main
//! process on the host (the container's network namespace, no exec: ~50 µs), with
//! `docker exec cat` as the fallback when the node may not read that file.
//!
//! A forwarded connection is made from inside the container's network namespace
//! (a short-lived thread `setns`es into `/proc/<pid>/ns/net` and connects to
//! `127.0.0.1:PORT`), so servers bound to loopback in the container are reachable
//! too; without the rights for that, the node dials the container's bridge IP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::capability::Role;
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::PortOpen;
use sam_protocol::workspace::{MAX_WATCH_MS, PortInfo};
use tokio::net::TcpStream;
use tracing::debug;

use crate::inside::{Target, check_role, docker_err};
use crate::server::{Node, Session};
use crate::streams::{reply, serve_connection};
use sam_protocol::wire::read_bounded;

/// How often a watch looks at the listeners.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` text (or both concatenated) into the
/// listening sockets, sorted and without duplicates. Bad lines are skipped.
pub fn parse_listeners(text: &str) -> Vec<PortInfo> {
    let mut out: Vec<PortInfo> = text
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let _sl = cols.next()?;
            let local = cols.next()?;
            let _remote = cols.next()?;
            let state = cols.next()?;
            if state != "0A" {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(PortInfo {
                port,
                addr: parse_ip(ip)?.to_string(),
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The kernel prints addresses as 32-bit words in host (little-endian) order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = word(hex.get(i * 8..i * 8 + 8)?)?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The listeners in a workspace now.
pub async fn listeners(docker: &Docker, t: &Target) -> Result<Vec<PortInfo>, ErrorBody> {
    let pid = crate::inside::host_pid(docker, t).await?;
    if pid <= 0 {
        return Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "the workspace container is not running",
        ));
    }
    let read = |f: &'static str| tokio::fs::read_to_string(format!("/proc/{pid}/net/{f}"));
    if let Ok(v4) = read("tcp").await {
        let v6 = read("tcp6").await.unwrap_or_default();
        return Ok(parse_listeners(&format!("{v4}\n{v6}")));
    }
    let cmd = ["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"];
    let out = crate::inside::run(
        docker,
        t,
        None,
        cmd.iter().map(|s| s.to_string()).collect(),
        4 << 20,
    )
    .await?;
    Ok(parse_listeners(&String::from_utf8_lossy(&out.stdout)))
}

/// Waits until the listeners differ from `known` or the time is up.
pub async fn watch(
    docker: &Docker,
    t: &Target,
    known: &[PortInfo],
    timeout_ms: u32,
) -> Result<Vec<PortInfo>, ErrorBody> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(MAX_WATCH_MS) as u64);
    let mut known = known.to_vec();
    known.sort();
    known.dedup();
    loop {
        let now = listeners(docker, t).await?;
        if now != known || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Serves `sam/port/1`.
#[derive(Debug, Clone)]
pub struct PortHandler {
    node: Node,
}

impl PortHandler {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

impl ProtocolHandler for PortHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        serve_connection(&self.node, conn, serve_stream).await;
        Ok(())
    }
}

async fn serve_stream(
    node: Node,
    session: Arc<Session>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let open = match read_bounded::<PortOpen>(&mut recv).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("bad port header ({e}); is one side a newer version?");
            reply(&mut send, Err(ErrorBody::new(ErrorCode::BadRequest, msg))).await;
            return;
        }
    };
    let tcp = match dial(&node, &session, &open).await {
        Ok(s) => s,
        Err(e) => {
            reply(&mut send, Err(e)).await;
            return;
        }
    };
    if !reply(&mut send, Ok(())).await {
        return;
    }
    debug!(port = open.port, workspace = %open.workspace, "port stream open");
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut recv, &mut tw).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tw).await;
    };
    let down = async {
        let _ = copy_to_stream(&mut tr, &mut send).await;
        let _ = send.finish();
    };
    tokio::join!(up, down);
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Copies a TCP read half into a QUIC stream with big reads.
async fn copy_to_stream(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    send: &mut SendStream,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
    loop {
        buf.reserve(256 * 1024);
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        send.write_chunk(buf.split().freeze())
            .await
            .map_err(std::io::Error::other)?;
    }
}

async fn dial(node: &Node, session: &Session, open: &PortOpen) -> Result<TcpStream, ErrorBody> {
    node.recheck(&session.grant)?;
    check_role(
        &session.grant,
        Role::Collaborator,
        &open.workspace,
        "forwarding a port",
    )?;
    if open.port == 0 {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "port 0 cannot be forwarded",
        ));
    }
    let (docker, t) = crate::inside::target(node, &open.workspace).await?;
    let info = docker
        .inspect_container(&t.container_id, None)
        .await
        .map_err(|e| docker_err("cannot inspect the workspace container", e))?;
    let pid = info.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
    let refused = |e: std::io::Error| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!(
                "nothing answers on port {} in workspace {} ({e}); is the server running? `sam ports {}` lists listeners",
                open.port, open.workspace, open.workspace
            ),
        )
    };
    if pid > 0 {
        match connect_in_netns(pid, open.port).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(refused(e)),
            Err(e) => debug!(error = %e, "netns dial failed; trying the bridge IP"),
        }
    }
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .into_iter()
        .flat_map(|m| m.into_values())
        .filter_map(|n| n.ip_address)
        .find_map(|ip| ip.parse::<IpAddr>().ok())
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Unavailable,
                "the workspace container has no IP address to forward to",
            )
        })?;
    TcpStream::connect(SocketAddr::new(ip, open.port))
        .await
        .map_err(refused)
}

/// Connects to `127.0.0.1:port` inside the network namespace of `pid`.
async fn connect_in_netns(pid: i64, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sam-netns-dial".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                // This thread now lives in the container's network namespace; the
                // socket keeps it after the thread ends.
                let s = std::net::TcpStream::connect_timeout(
                    &SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                    Duration::from_secs(5),
                )
                .or_else(|_| {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
                        Duration::from_secs(5),
                    )
                })?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            })();
            let _ = tx.send(result);
        })?;
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("netns dial thread died"))??;
    TcpStream::from_std(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
garbage line
   3: zz:1F90 00000000:0000 0A
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000
";

    #[test]
    fn listeners_from_proc_net() {
        let got = parse_listeners(&format!("{TCP}\n{TCP6}"));
        let want = [
            (22, "::"),
            (3306, "127.0.0.1"),
            (5000, "::1"),
            (8080, "0.0.0.0"),
        ];
        let got: Vec<_> = got.iter().map(|p| (p.port, p.addr.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn garbage_gives_nothing() {
        assert!(parse_listeners("").is_empty());
        assert!(parse_listeners("a b c 0A\n: : : :").is_empty());
    }
}
