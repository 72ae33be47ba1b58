//! A connection to a node: dial by ticket, say hello, then requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::{Connection, ConnectionError};
use sam_protocol::ctl::{ErrorBody, Hello, HelloReply, Request, RequestFrame, Response, Welcome};
use sam_protocol::frame::MAX_FRAME;
use sam_protocol::{PROTOCOL_VERSION, Ticket};

use sam_protocol::wire::{read_frame, write_frame};

/// How long to try reaching a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach node {node} at {addrs}: {reason} (is it running? is the ticket current?)"
    )]
    Unreachable {
        node: String,
        addrs: String,
        reason: String,
    },
    #[error("node refused this peer: {0}")]
    Refused(ErrorBody),
    #[error("node error: {0}")]
    Remote(ErrorBody),
    #[error("protocol error talking to the node: {0}")]
    Protocol(String),
}

/// An authenticated `sam/ctl/1` connection. A connection that died under it (lost, timed
/// out, closed by the transport) is dialled again once, by the same ticket, when a request
/// could not even be sent, or when it was sent but only reads
/// ([`Request::is_read_only`]); a request that changes something is never sent twice.
#[derive(Debug, Clone)]
pub struct NodeClient {
    conn: Arc<Mutex<Connection>>,
    pub welcome: Welcome,
    ep: Endpoint,
    ticket: Ticket,
    /// Set by [`NodeClient::close`]: no redial after the user closed it.
    closed: Arc<AtomicBool>,
}

/// One attempt at a request.
enum Attempt {
    /// The stream could not be opened: nothing reached the node.
    NotSent(ConnectError),
    Failed(ConnectError),
}

/// Dials `ticket`'s node on `alpn` and says hello with the ticket's capability.
pub async fn connect(
    ep: &Endpoint,
    ticket: &Ticket,
    alpn: &[u8],
) -> Result<(Connection, Welcome), ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        node: ticket.addr.id.short(),
        addrs: format!("{:?}", ticket.addr.direct),
        reason,
    };
    let addr =
        crate::endpoint::endpoint_addr(&ticket.addr).map_err(|e| unreachable(e.to_string()))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, ep.connect(addr, alpn))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let welcome = hello(&conn, ticket).await?;
    Ok((conn, welcome))
}

/// The error for a failed stream operation on `conn`: the node's refusal when it closed the
/// connection with a reason, else `e` as a protocol error.
fn closed_reason(conn: &Connection, e: String) -> ConnectError {
    match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(c)) => ConnectError::Refused(ErrorBody::new(
            sam_protocol::ctl::ErrorCode::Unauthorized,
            String::from_utf8_lossy(&c.reason).to_string(),
        )),
        _ => ConnectError::Protocol(e),
    }
}

async fn hello(conn: &Connection, ticket: &Ticket) -> Result<Welcome, ConnectError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| closed_reason(conn, e.to_string()))?;
    let msg = Hello {
        protocol_version: PROTOCOL_VERSION,
        capability: ticket.capability.clone(),
        invite_secret: ticket.invite_secret,
        client: format!("sam {}", crate::CLIENT_VERSION),
    };
    write_frame(&mut send, &msg)
        .await
        .map_err(|e| closed_reason(conn, e.to_string()))?;
    let _ = send.finish();
    match read_frame::<HelloReply>(&mut recv, MAX_FRAME).await {
        Ok(HelloReply::Welcome(w)) => {
            if w.node != ticket.addr.id {
                return Err(ConnectError::Protocol(
                    "node answered with another id".into(),
                ));
            }
            Ok(w)
        }
        Ok(HelloReply::Refused(e)) => Err(ConnectError::Refused(e)),
        Err(e) => Err(closed_reason(conn, e.to_string())),
    }
}

impl NodeClient {
    /// Connects on `sam/ctl/1`.
    pub async fn connect(ep: &Endpoint, ticket: &Ticket) -> Result<Self, ConnectError> {
        let (conn, welcome) = connect(ep, ticket, sam_protocol::alpn::CTL).await?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            welcome,
            ep: ep.clone(),
            ticket: ticket.clone(),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The node's NodeId (hex).
    pub fn node_id(&self) -> String {
        self.ticket.addr.id.to_string()
    }

    /// This client's own NodeId (hex).
    pub fn my_id(&self) -> String {
        self.ep.id().to_string()
    }

    /// The current connection.
    pub fn conn(&self) -> Connection {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One request, one response; a node error becomes [`ConnectError::Remote`].
    pub async fn request(&self, request: Request) -> Result<Response, ConnectError> {
        let conn = self.conn();
        let (e, sent) = match attempt(&conn, request.clone()).await {
            Ok(r) => return Ok(r),
            Err(Attempt::NotSent(e)) => (e, false),
            Err(Attempt::Failed(e)) => (e, true),
        };
        // Dial again only when the transport died under us: not after our own close, not
        // when the node closed the connection with a reason (revocation, refusal), and a
        // request that went out only when it merely reads.
        // A node that restarts closes with CLOSE_NODE_SHUTDOWN: that is a lost link too.
        let shutdown = |r: &ConnectionError| {
            matches!(r, ConnectionError::ApplicationClosed(c)
                if c.error_code.into_inner() == u64::from(sam_protocol::stream::CLOSE_NODE_SHUTDOWN))
        };
        let refused = matches!(e, ConnectError::Refused(_) | ConnectError::Remote(_))
            && !conn.close_reason().is_some_and(|r| shutdown(&r));
        let transport_died = !self.closed.load(Ordering::SeqCst)
            && !refused
            && conn.close_reason().is_some_and(|r| {
                !matches!(r, ConnectionError::ApplicationClosed(_)) || shutdown(&r)
            });
        if !transport_died || (sent && !request.is_read_only()) {
            return Err(e);
        }
        tracing::warn!(node = %self.ticket.addr.id.short(), error = %e, sent, "connection lost; dialling again");
        let (fresh, _) = connect(&self.ep, &self.ticket, sam_protocol::alpn::CTL)
            .await
            .map_err(|again| {
                ConnectError::Protocol(format!("{e}; dialling again failed: {again}"))
            })?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        attempt(&fresh, request).await.map_err(|a| match a {
            Attempt::NotSent(e) | Attempt::Failed(e) => e,
        })
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.conn().close(0u32.into(), b"bye");
    }
}

/// Sends `request` on a new stream of `conn` and reads the response.
async fn attempt(conn: &Connection, request: Request) -> Result<Response, Attempt> {
    let proto = |e: &dyn std::fmt::Display| ConnectError::Protocol(e.to_string());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Attempt::NotSent(closed_reason(conn, e.to_string())))?;
    let frame = RequestFrame {
        version: PROTOCOL_VERSION,
        request,
    };
    write_frame(&mut send, &frame)
        .await
        .map_err(|e| Attempt::Failed(proto(&e)))?;
    let _ = send.finish();
    match read_frame::<Response>(&mut recv, MAX_FRAME).await {
        Ok(Response::Error(e)) => Err(Attempt::Failed(ConnectError::Remote(e))),
        Ok(r) => Ok(r),
        Err(e) => Err(Attempt::Failed(proto(&e))),
    }
}
