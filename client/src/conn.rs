//! A connection to a node: dial by ticket, say hello, then requests.

use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::Connection;
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

/// An authenticated `sam/ctl/1` connection.
#[derive(Debug, Clone)]
pub struct NodeClient {
    pub conn: Connection,
    pub welcome: Welcome,
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

async fn hello(conn: &Connection, ticket: &Ticket) -> Result<Welcome, ConnectError> {
    let closed_reason = |conn: &Connection, e: String| match conn.close_reason() {
        Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
            ConnectError::Refused(ErrorBody::new(
                sam_protocol::ctl::ErrorCode::Unauthorized,
                String::from_utf8_lossy(&c.reason).to_string(),
            ))
        }
        _ => ConnectError::Protocol(e),
    };
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
        Ok(Self { conn, welcome })
    }

    /// One request, one response; a node error becomes [`ConnectError::Remote`].
    pub async fn request(&self, request: Request) -> Result<Response, ConnectError> {
        let proto = |e: &dyn std::fmt::Display| ConnectError::Protocol(e.to_string());
        let (mut send, mut recv) =
            self.conn
                .open_bi()
                .await
                .map_err(|e| match self.conn.close_reason() {
                    Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
                        ConnectError::Refused(ErrorBody::new(
                            sam_protocol::ctl::ErrorCode::Unauthorized,
                            String::from_utf8_lossy(&c.reason).to_string(),
                        ))
                    }
                    _ => proto(&e),
                })?;
        let frame = RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        };
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| proto(&e))?;
        let _ = send.finish();
        match read_frame::<Response>(&mut recv, MAX_FRAME).await {
            Ok(Response::Error(e)) => Err(ConnectError::Remote(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(proto(&e)),
        }
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
