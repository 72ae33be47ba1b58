//! Shared shape of the raw-byte ALPN handlers (`sam/pty/1`, `sam/port/1`,
//! `sam/file/1`): hello once per connection, then each bi stream is handed to a
//! per-ALPN function with the peer's session. Streams end when the session is
//! cancelled (revocation, expiry, shutdown).

use std::future::Future;
use std::sync::Arc;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::stream::OpenReply;

use crate::server::{Node, Session};
use sam_protocol::wire::{read_frame, write_frame};

/// Largest header read by [`NotYet`]. The headers of the built streams each have their
/// own, smaller cap ([`sam_protocol::frame::Bounded`], read with
/// [`sam_protocol::wire::read_bounded`]).
pub const MAX_HEADER: usize = 64 * 1024;

/// Runs the hello, then calls `serve` for every bi stream until the connection ends
/// or the session is cancelled.
pub async fn serve_connection<F, Fut>(node: &Node, conn: Connection, serve: F)
where
    F: Fn(Node, Arc<Session>, SendStream, RecvStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(session) = node.accept_peer(&conn).await else {
        return;
    };
    let session = Arc::new(session);
    loop {
        tokio::select! {
            _ = session.close_when_cancelled(&conn) => break,
            stream = conn.accept_bi() => {
                let Ok((send, recv)) = stream else { break };
                let task = serve(node.clone(), session.clone(), send, recv);
                let cancel = session.cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = task => {}
                        _ = cancel.cancelled() => {}
                    }
                });
            }
        }
    }
}

/// Writes the open reply; `Err` is also sent to the peer.
pub async fn reply(send: &mut SendStream, result: Result<(), ErrorBody>) -> bool {
    let ok = result.is_ok();
    let msg = match result {
        Ok(()) => OpenReply::Ok,
        Err(e) => OpenReply::Error(e),
    };
    let sent = write_frame(send, &msg).await.is_ok();
    if !ok {
        let _ = send.finish();
    }
    sent && ok
}

/// A handler for an ALPN whose feature is not built yet: it authenticates, then
/// answers every stream with a clear "not implemented" error.
#[derive(Debug, Clone)]
pub struct NotYet {
    node: Node,
    what: &'static str,
}

impl NotYet {
    pub fn new(node: Node, what: &'static str) -> Self {
        Self { node, what }
    }
}

impl ProtocolHandler for NotYet {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let what = self.what;
        serve_connection(
            &self.node,
            conn,
            move |_, _, mut send, mut recv| async move {
                let _ = read_frame::<serde::de::IgnoredAny>(&mut recv, MAX_HEADER).await;
                reply(
                    &mut send,
                    Err(ErrorBody::new(
                        ErrorCode::Unimplemented,
                        format!("{what} is not implemented on this node yet"),
                    )),
                )
                .await;
            },
        )
        .await;
        Ok(())
    }
}
