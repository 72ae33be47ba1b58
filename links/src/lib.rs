//! SAM's UDP transport for iroh: one socket per endpoint, bound once, never closed and
//! bound again while the endpoint lives.
//!
//! Why: iroh's own IP transport closes its UDP socket and binds the same address again at
//! every "major" network change, and on Linux every veth or bridge Docker adds is one
//! (iroh issue #4488). When the process starts a program at that moment (the node runs
//! `docker` and `git` exactly while Docker adds interfaces), the child holds a copy of the
//! old socket between its fork and its exec, the new bind fails with `EADDRINUSE`, the
//! socket stays closed and iroh shuts its QUIC endpoint down for good: every connection
//! is lost and every dial fails with "Unable to connect to remote" (iroh #4289). On Linux
//! a socket bound to a wildcard or loopback address needs no rebind at all when
//! interfaces come and go, so SAM owns it: this transport, plugged in with
//! `Builder::add_custom_transport` after `clear_ip_transports`, speaks plain UDP on the
//! wire (the same datagrams iroh's IP transport sends), so peers running either interwork.
//!
//! Addresses of this transport are [`CustomAddr`]s with [`TRANSPORT_ID`] holding an IP
//! socket address; tickets keep carrying plain socket addresses ([`transport_addr`] maps
//! one for a dial).
//!
//! What it gives up against iroh's IP transport: NAT hole punching and address discovery
//! (SAM dials the direct addresses of a ticket, or its relay), GSO/GRO batching (one
//! datagram per system call), and ECN.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use iroh::TransportAddr;
use iroh::endpoint::transports::{
    CustomEndpoint, CustomSender, CustomTransport, RecvInfo, Transmit,
};
use iroh_base::CustomAddr;
use n0_watcher::Watchable;
use noq_udp::RecvMeta;
use tokio::net::UdpSocket;

/// The transport id in this transport's [`CustomAddr`]s ("SAMUDP").
pub const TRANSPORT_ID: u64 = 0x0053_414d_5544_5001;

/// The [`CustomAddr`] of a UDP socket address (IPv4-mapped IPv6 as IPv4).
pub fn custom_addr(a: SocketAddr) -> CustomAddr {
    let mut data = Vec::with_capacity(18);
    match a.ip().to_canonical() {
        IpAddr::V4(ip) => data.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => data.extend_from_slice(&ip.octets()),
    }
    data.extend_from_slice(&a.port().to_be_bytes());
    CustomAddr::from_parts(TRANSPORT_ID, &data)
}

/// The UDP socket address in `c`, when it is one of this transport's.
pub fn socket_addr(c: &CustomAddr) -> Option<SocketAddr> {
    if c.id() != TRANSPORT_ID {
        return None;
    }
    let d = c.data();
    let port = |p: &[u8]| u16::from_be_bytes([p[0], p[1]]);
    match d.len() {
        6 => {
            let ip = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
            Some(SocketAddr::new(ip.into(), port(&d[4..])))
        }
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&d[..16]);
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), port(&d[16..])))
        }
        _ => None,
    }
}

/// The address to dial `a` on this transport.
pub fn transport_addr(a: SocketAddr) -> TransportAddr {
    TransportAddr::Custom(custom_addr(a))
}

/// The transport: add it with `Builder::add_custom_transport` (after
/// `clear_ip_transports`); [`Udp::local_addr`] says where it bound.
#[derive(Debug)]
pub struct Udp {
    bind: SocketAddr,
    bound: Mutex<Option<SocketAddr>>,
    direct: Mutex<Vec<SocketAddr>>,
}

impl Udp {
    /// A transport that will bind `bind` (port 0: any free port).
    pub fn new(bind: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            bind,
            bound: Mutex::new(None),
            direct: Mutex::new(Vec::new()),
        })
    }

    /// The address the socket is bound to, once the endpoint is.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where peers can reach the socket, once the endpoint is bound: its address, or for
    /// a wildcard one loopback and the address of the default route's interface.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        self.direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where peers can reach a socket bound to `a`: `a` itself, or for a wildcard address
/// loopback and the address of the interface carrying the default route (found by
/// `connect` on a throwaway UDP socket, which sends nothing).
fn reachable(a: SocketAddr) -> Vec<SocketAddr> {
    let (loopback, probe): (IpAddr, SocketAddr) = match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (
            Ipv4Addr::LOCALHOST.into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        ),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            let doc = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
            (Ipv6Addr::LOCALHOST.into(), (doc, 9).into())
        }
        _ => return vec![a],
    };
    let mut out = vec![SocketAddr::new(loopback, a.port())];
    let unspecified = SocketAddr::new(a.ip(), 0);
    if let Ok(s) = std::net::UdpSocket::bind(unspecified)
        && s.connect(probe).is_ok()
        && let Ok(l) = s.local_addr()
        && !l.ip().is_unspecified()
        && !l.ip().is_loopback()
    {
        out.push(SocketAddr::new(l.ip(), a.port()));
    }
    out
}

/// Socket buffers as large as iroh's own UDP transport asks for (7 MiB; the kernel may
/// clamp them), so a fast transfer is not throttled by drops at the socket.
const SOCKET_BUFFER: usize = 7 << 20;

/// A non-blocking UDP socket bound to `addr` (IPv6 only for an IPv6 address).
fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!("sam-links: receive buffer: {e}");
    }
    if let Err(e) = s.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!("sam-links: send buffer: {e}");
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl CustomTransport for Udp {
    fn bind(&self) -> io::Result<Box<dyn CustomEndpoint>> {
        let sock = UdpSocket::from_std(bind_socket(self.bind)?)?;
        let local = sock.local_addr()?;
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
        let direct = reachable(local);
        let addrs: Vec<CustomAddr> = direct.iter().copied().map(custom_addr).collect();
        *self.direct.lock().unwrap_or_else(|e| e.into_inner()) = direct;
        tracing::debug!(%local, ?addrs, "sam-links: UDP transport bound");
        Ok(Box::new(UdpEndpoint {
            sock: Arc::new(sock),
            me: custom_addr(local),
            addrs: Watchable::new(addrs),
        }))
    }
}

#[derive(Debug)]
struct UdpEndpoint {
    sock: Arc<UdpSocket>,
    me: CustomAddr,
    addrs: Watchable<Vec<CustomAddr>>,
}

impl CustomEndpoint for UdpEndpoint {
    fn watch_local_addrs(&self) -> n0_watcher::Direct<Vec<CustomAddr>> {
        self.addrs.watch()
    }

    fn create_sender(&self) -> Arc<dyn CustomSender> {
        Arc::new(UdpSender {
            sock: self.sock.clone(),
        })
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        metas: &mut [RecvMeta],
        recv_infos: &mut [RecvInfo],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta), Some(info)) =
            (bufs.first_mut(), metas.first_mut(), recv_infos.first_mut())
        else {
            return Poll::Ready(Ok(0));
        };
        loop {
            match self.sock.poll_recv_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.sock.try_recv_from(buf) {
                Ok((len, from)) => {
                    let mut m = RecvMeta::default();
                    m.addr = from;
                    m.len = len;
                    m.stride = len;
                    *meta = m;
                    *info = RecvInfo::new(custom_addr(from), Some(self.me.clone()));
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The fate of an earlier datagram (an ICMP answer), not of the socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[derive(Debug)]
struct UdpSender {
    sock: Arc<UdpSocket>,
}

impl CustomSender for UdpSender {
    fn is_valid_send_addr(&self, addr: &CustomAddr) -> bool {
        socket_addr(addr).is_some()
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        dst: &CustomAddr,
        _src: Option<&CustomAddr>,
        transmit: &Transmit<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(dst) = socket_addr(dst) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a sam-links address",
            )));
        };
        let contents = transmit.contents;
        let seg = transmit
            .segment_size
            .filter(|s| *s > 0)
            .unwrap_or(contents.len().max(1));
        for datagram in contents.chunks(seg) {
            loop {
                match self.sock.poll_send_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                match self.sock.try_send_to(datagram, dst) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // UDP: a datagram that cannot leave is a lost datagram (no route to a
                    // peer's address, for one), which QUIC recovers from; never a reason
                    // to fail the endpoint.
                    Err(e) => {
                        tracing::trace!(%dst, "sam-links: send failed: {e}");
                        break;
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for a in ["127.0.0.1:7447", "[::1]:9", "10.1.2.3:0", "[fd00::5]:65535"] {
            let a: SocketAddr = a.parse().expect("addr");
            assert_eq!(socket_addr(&custom_addr(a)), Some(a));
        }
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().expect("addr");
        assert_eq!(
            socket_addr(&custom_addr(mapped)),
            Some("127.0.0.1:5".parse().expect("addr"))
        );
    }

    #[test]
    fn foreign_or_malformed_addresses_are_refused() {
        assert_eq!(
            socket_addr(&CustomAddr::from_parts(7, &[127, 0, 0, 1, 0, 1])),
            None
        );
        assert_eq!(
            socket_addr(&CustomAddr::from_parts(TRANSPORT_ID, &[1, 2, 3])),
            None
        );
        assert_eq!(
            socket_addr(&CustomAddr::from_parts(TRANSPORT_ID, &[])),
            None
        );
    }
}
