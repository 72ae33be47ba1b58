//! `sam serve`: this client serves the conversations it holds to teammates, so
//! history outlives the node. A teammate connects with the capability the node's
//! owner gave them (for that node); this peer checks it against the node's owner
//! key it learnt when it joined, and serves read-only what the capability covers.
//!
//! Limits, stated: revocations made on the node after this peer last saw it are
//! not known here; one-time invites are only redeemed on the node itself.
//!
//! Bounded like the node: the hello and the doc header have their own caps, a ctl
//! request is refused from its length header or its first bytes unless it is one this
//! peer answers ([`HistoryGate`]), and a teammate's sync messages (read-only: no
//! changes) are capped at [`MAX_READER_SYNC_FRAME`].

use std::sync::Arc;

use anyhow::{Context, Result};
use iroh::endpoint::{Connection, RecvStream, SendStream, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, SecretKey as IrohKey};
use sam_crdt::{Conversation, SyncPeer};
use sam_protocol::auth::{AuthPolicy, Grant, authorize};
use sam_protocol::capability::{Grantee, Role, Scope};
use sam_protocol::ctl::{
    ErrorBody, ErrorCode, Hello, HelloReply, Request, RequestFrame, RequestGate, RequestKind,
    Response, Welcome,
};
use sam_protocol::doc::{
    ConvRequest, ConvResponse, ConvSummary, DocFrame, DocOpen, MAX_READER_SYNC_FRAME,
};
use sam_protocol::stream::OpenReply;
use sam_protocol::{NodeAddr, NodeId, Ticket, alpn};
use tokio::sync::Mutex;

use crate::book::NodeBook;
use crate::docs::Replicas;
use crate::paths::ClientPaths;
use sam_protocol::wire::{RequestError, read_bounded, read_frame, read_request, write_frame};

/// The only ctl requests this peer answers; anything else is refused before its body is
/// read.
pub struct HistoryGate;

impl HistoryGate {
    const KINDS: [RequestKind; 2] = [RequestKind::Ping, RequestKind::ConvList];
}

impl RequestGate for HistoryGate {
    fn max_len(&self) -> usize {
        Self::KINDS.iter().map(|k| k.max_len()).max().unwrap_or(0)
    }

    fn admit(&self, kind: RequestKind) -> Result<(), ErrorBody> {
        if Self::KINDS.contains(&kind) {
            Ok(())
        } else {
            Err(ErrorBody::new(
                ErrorCode::Unimplemented,
                format!(
                    "this peer only serves conversation history; a {kind} request needs the node itself"
                ),
            ))
        }
    }
}

struct State {
    me: NodeId,
    book: NodeBook,
    replicas: Mutex<Replicas>,
}

/// A running history server.
pub struct Server {
    pub router: Router,
    pub ticket: Ticket,
}

/// Starts serving on `bind` (e.g. `0.0.0.0:0`, tests `127.0.0.1:0`).
pub async fn start(paths: &ClientPaths, bind: std::net::SocketAddr) -> Result<Server> {
    let key = paths.identity()?;
    // The client's own relays (`SAM_RELAY`, `relays` in its config): teammates behind NAT
    // reach this peer through them; its ticket names the home relay.
    let relays = crate::endpoint::relays_from_env()?;
    let ep = Endpoint::builder(presets::Minimal)
        .secret_key(IrohKey::from_bytes(&key.to_bytes()))
        .relay_mode(crate::endpoint::relay_mode(&relays)?)
        .alpns(vec![alpn::CTL.to_vec(), alpn::DOC.to_vec()])
        .clear_ip_transports()
        .bind_addr(bind)
        .with_context(|| format!("bad bind address {bind}"))?
        .bind()
        .await
        .context("bind the history server")?;
    if !relays.is_none()
        && tokio::time::timeout(std::time::Duration::from_secs(10), ep.online())
            .await
            .is_err()
    {
        tracing::warn!(
            ?relays,
            "no relay reached yet: teammates reach this peer only directly for now"
        );
    }
    let relay = ep
        .addr()
        .relay_urls()
        .next()
        .map(|u| u.to_string())
        .or_else(|| relays.urls.first().cloned());
    let mut direct: Vec<_> = ep
        .bound_sockets()
        .into_iter()
        .map(|a| {
            if a.ip().is_unspecified() {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
            } else {
                a
            }
        })
        .collect();
    direct.truncate(sam_protocol::ticket::MAX_DIRECT_ADDRS);
    let state = Arc::new(State {
        me: key.node_id(),
        book: NodeBook::load(&paths.nodes())?,
        replicas: Mutex::new(Replicas::open(paths)?),
    });
    let router = Router::builder(ep)
        .accept(alpn::CTL, Peer(state.clone()))
        .accept(alpn::DOC, Peer(state))
        .spawn();
    let ticket = Ticket::new(NodeAddr {
        id: key.node_id(),
        direct,
        relay,
    });
    Ok(Server { router, ticket })
}

#[derive(Clone)]
struct Peer(Arc<State>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistoryPeer")
    }
}

/// The capability's node, and the grant it gives.
type Access = (String, Grant);

impl Peer {
    async fn hello(&self, conn: &Connection) -> Option<Access> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let decision = match read_bounded::<Hello>(&mut recv).await {
            Ok(h) => self.decide(peer, &h),
            Err(e) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("bad hello: {e}"),
            )),
        };
        let reply = match &decision {
            Ok((node, g)) => HelloReply::Welcome(Welcome {
                node: self.0.me,
                owner: self.owner_of(node).unwrap_or(self.0.me),
                role: g.role,
                scope: g.scope.clone(),
                protocol_version: sam_protocol::PROTOCOL_VERSION,
                node_version: format!("sam {} (history)", crate::CLIENT_VERSION),
            }),
            Err(e) => HelloReply::Refused(e.clone()),
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        match decision {
            Ok(a) => Some(a),
            Err(e) => {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped()).await;
                conn.close(1u32.into(), e.message.as_bytes());
                None
            }
        }
    }

    fn owner_of(&self, node: &str) -> Option<NodeId> {
        self.0
            .book
            .find(Some(node))
            .ok()
            .and_then(|e| e.owner.as_ref())
            .and_then(|o| o.parse().ok())
    }

    fn decide(&self, peer: NodeId, hello: &Hello) -> Result<Access, ErrorBody> {
        sam_protocol::ctl::check_version(hello.protocol_version)?;
        let refuse = |m: String| ErrorBody::new(ErrorCode::Unauthorized, m);
        let cap = hello.capability.as_ref().ok_or_else(|| {
            refuse("this peer serves conversation history to holders of a capability for their node; none was presented".into())
        })?;
        if matches!(cap.cap.grantee, Grantee::Invite(_)) {
            return Err(refuse(
                "one-time invites are redeemed on the node itself, not by a teammate".into(),
            ));
        }
        let node = cap.cap.node.to_string();
        let owner = self.owner_of(&node).ok_or_else(|| {
            refuse(format!(
                "this peer does not know node {}",
                cap.cap.node.short()
            ))
        })?;
        let none = Default::default();
        let none2 = Default::default();
        let policy = AuthPolicy {
            node: cap.cap.node,
            owner,
            revoked: &none,
            redeemed: &none2,
            now: crate::now_secs(),
        };
        let grant = authorize(&policy, peer, Some(cap), None).map_err(|e| refuse(e.to_string()))?;
        Ok((node, grant))
    }

    fn may(grant: &Grant, conv: &Conversation) -> bool {
        grant.allows(Role::Viewer, Some(&Scope::Conversation(conv.id())))
            || grant.allows(Role::Viewer, Some(&Scope::Workspace(conv.workspace().id)))
    }

    async fn visible(&self, node: &str, grant: &Grant) -> Vec<ConvSummary> {
        let mut replicas = self.0.replicas.lock().await;
        let mut out = Vec::new();
        for id in replicas.ids().unwrap_or_default() {
            let Ok(conv) = replicas.load(&id) else {
                continue;
            };
            if conv.workspace().node == node && Self::may(grant, &conv) {
                out.push(ConvSummary {
                    id: id.clone(),
                    title: conv.title(),
                    agent: conv.agent(),
                    workspace: conv.workspace().id,
                    parent: conv.parent().map(|p| p.conversation),
                    messages: conv.message_count() as u32,
                    updated_at: conv.created_at(),
                    watchers: Vec::new(),
                });
            }
        }
        out
    }

    async fn ctl(&self, node: &str, grant: &Grant, mut send: SendStream, mut recv: RecvStream) {
        // Version and kind are checked from the first bytes (`read_request`).
        let response = match read_request(&mut recv, &HistoryGate).await {
            Ok(RequestFrame {
                request: Request::Ping,
                ..
            }) => Response::Pong,
            Ok(RequestFrame {
                request: Request::Conv(ConvRequest::List),
                ..
            }) => Response::Conv(ConvResponse::List(self.visible(node, grant).await)),
            Ok(_) => Response::Error(ErrorBody::new(
                ErrorCode::Unimplemented,
                "this peer only serves conversation history (the node itself is needed for that)",
            )),
            Err(RequestError::Refused(e)) => Response::Error(e),
            Err(RequestError::Closed | RequestError::Io(_)) => return,
        };
        if write_frame(&mut send, &response).await.is_ok() {
            let _ = send.finish();
        }
    }

    async fn doc(&self, node: &str, grant: &Grant, mut send: SendStream, mut recv: RecvStream) {
        let Ok(open) = read_bounded::<DocOpen>(&mut recv).await else {
            return;
        };
        let conv = {
            let mut replicas = self.0.replicas.lock().await;
            replicas
                .resolve(&open.conversation)
                .ok()
                .and_then(|id| replicas.load(&id).ok())
        };
        let mut conv = match conv {
            Some(c)
                if c.id() == open.conversation
                    && c.workspace().node == node
                    && Self::may(grant, &c) =>
            {
                c
            }
            _ => {
                let e = ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("no conversation {} you may read here", open.conversation),
                );
                let _ = write_frame(&mut send, &OpenReply::Error(e)).await;
                let _ = send.finish();
                return;
            }
        };
        if write_frame(&mut send, &OpenReply::Ok).await.is_err() {
            return;
        }
        // Read-only sync: answer the peer until it has everything.
        let mut sync = SyncPeer::new();
        loop {
            while let Some(m) = sync.generate(&mut conv) {
                if write_frame(&mut send, &DocFrame::Sync(m)).await.is_err() {
                    return;
                }
            }
            match read_frame::<DocFrame>(&mut recv, MAX_READER_SYNC_FRAME).await {
                Ok(DocFrame::Sync(bytes)) => {
                    let has_changes = automerge::sync::Message::decode(&bytes)
                        .map(|m| !m.changes.is_empty())
                        .unwrap_or(true);
                    if has_changes || sync.receive(&mut conv, &bytes).is_err() {
                        let e = ErrorBody::new(
                            ErrorCode::Forbidden,
                            "this peer serves history read-only; send changes to the node",
                        );
                        let _ = write_frame(&mut send, &DocFrame::Error(e)).await;
                        let _ = send.finish();
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

impl ProtocolHandler for Peer {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Some((node, grant)) = self.hello(&conn).await else {
            return Ok(());
        };
        let is_doc = conn.alpn() == alpn::DOC;
        while let Ok((send, recv)) = conn.accept_bi().await {
            let this = self.clone();
            let (node, grant) = (node.clone(), grant.clone());
            tokio::spawn(async move {
                if is_doc {
                    this.doc(&node, &grant, send, recv).await;
                } else {
                    this.ctl(&node, &grant, send, recv).await;
                }
            });
        }
        Ok(())
    }
}
