//! The team provisioner: `sam/prov/1` over iroh.
//!
//! Design: the provisioner has its own key, and it is the **owner** of every node it makes
//! (the pool is built with the provisioner's NodeId as owner). A node accepts a capability
//! signed by its owner, so the provisioner can give a member a [`Capability`] for that member's
//! key on the node it hands out: the member connects with the ticket and is let in as
//! [`ServeConfig::role`]. Members are NodeIds in the config; anyone else's connection is
//! closed before a request is read. The cloud token never leaves this process.
//!
//! Which member holds which node is a label too (`sam-member`, base32 NodeId), so a restart
//! loses nothing: no database.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use iroh::endpoint::{Connection, VarInt, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, TransportAddr};
use sam_protocol::capability::{Capability, Grantee, Role};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::frame::{self, HEADER_LEN};
use sam_protocol::prov::{
    HeldConv, MAX_PROV_FIELD, MAX_PROV_REQUEST, MAX_PROV_RESPONSE, PROV_VERSION, ProvNode,
    ProvRequest, ProvRequestFrame, ProvResponse, check_held, peek_version,
};
use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::Size;
use crate::pool::{Pool, now_unix};
use crate::probe::IrohProbe;
use crate::provider::{Provider, Vm, node_label, parse_node_label};

/// Label: the member a node was handed to.
pub const MEMBER_LABEL: &str = "sam-member";
/// The id of the capability the holder got (32 hex digits), revoked on the node when the node
/// is released, so the next holder's node is not open to the previous one.
pub const CAPABILITY_LABEL: &str = "sam-cap";
/// Close code for a peer that is not a member.
pub const NOT_A_MEMBER: u32 = 403;

/// What the service allows.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Who may ask for nodes.
    pub members: BTreeSet<NodeId>,
    /// What a member may do on a node handed to them.
    pub role: Role,
    /// How long a member's capability lasts; none: until revoked.
    pub capability_ttl_secs: Option<u64>,
}

/// The service failed to start or a member's call failed.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot bind the provisioner endpoint on {bind}: {reason}")]
    Bind { bind: SocketAddr, reason: String },
    #[error("cannot reach the provisioner: {0}")]
    Unreachable(String),
    #[error("provisioner protocol error: {0}")]
    Protocol(String),
}

struct Inner<P> {
    pool: Pool<P>,
    key: SecretKey,
    /// The provisioner's own endpoint (its key owns the nodes): revocations go through it.
    ep: Endpoint,
    cfg: ServeConfig,
    probe: IrohProbe,
    /// Held while a node is taken from the pool and labelled for its member: two members
    /// asking at once never get the same idle node.
    hand_out: tokio::sync::Mutex<()>,
}

/// The `sam/prov/1` handler.
pub struct ProvHandler<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for ProvHandler<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<P> std::fmt::Debug for ProvHandler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvHandler")
            .field("id", &self.inner.key.node_id().short())
            .field("members", &self.inner.cfg.members.len())
            .finish()
    }
}

/// A running service.
pub struct ServeHandle {
    router: Router,
    /// Where members reach it.
    pub addr: NodeAddr,
}

impl ServeHandle {
    pub async fn shutdown(self) {
        let _ = self.router.shutdown().await;
    }
}

/// Starts the service on `bind` with the provisioner's `key`. The pool must make nodes owned
/// by `key` (see the module docs). The service's own endpoint (the owner's key) probes and
/// enrolls new nodes.
pub async fn serve<P: Provider + 'static>(
    pool: Pool<P>,
    key: SecretKey,
    cfg: ServeConfig,
    bind: SocketAddr,
) -> Result<ServeHandle, ServeError> {
    let err = |reason: String| ServeError::Bind { bind, reason };
    let ep = Endpoint::builder(presets::Minimal)
        .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
        .clear_ip_transports()
        .bind_addr(bind)
        .map_err(|e| err(e.to_string()))?
        .alpns(vec![sam_protocol::alpn::PROV.to_vec()])
        .bind()
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut direct: Vec<SocketAddr> = ep
        .bound_sockets()
        .into_iter()
        .map(|a| {
            if a.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            } else {
                a
            }
        })
        .collect();
    direct.truncate(sam_protocol::ticket::MAX_DIRECT_ADDRS);
    let addr = NodeAddr {
        id: key.node_id(),
        direct,
        relay: None,
    };
    let handler = ProvHandler {
        inner: Arc::new(Inner {
            pool,
            key,
            ep: ep.clone(),
            cfg,
            probe: IrohProbe::with_endpoint(ep.clone()),
            hand_out: tokio::sync::Mutex::new(()),
        }),
    };
    let router = Router::builder(ep)
        .accept(sam_protocol::alpn::PROV, handler)
        .spawn();
    info!(addrs = ?addr.direct, "team provisioner listening on sam/prov/1");
    Ok(ServeHandle { router, addr })
}

impl<P: Provider + 'static> ProtocolHandler for ProvHandler<P> {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = NodeId(*conn.remote_id().as_bytes());
        if !self.inner.cfg.members.contains(&peer) {
            warn!(peer = %peer.short(), "not a member: refused");
            conn.close(
                VarInt::from_u32(NOT_A_MEMBER),
                b"not a member of this team provisioner",
            );
            return Ok(());
        }
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let this = self.clone();
            tokio::spawn(async move {
                let response = match read_request(&mut recv).await {
                    Ok(frame) => this.handle(peer, frame).await,
                    Err(e) => e,
                };
                if let Ok(bytes) = frame::encode(&response) {
                    let _ = send.write_all(&bytes).await;
                    let _ = send.finish();
                }
            });
        }
        Ok(())
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ProvResponse {
    ProvResponse::Error(ErrorBody::new(code, message))
}

impl<P: Provider> ProvHandler<P> {
    async fn handle(&self, peer: NodeId, frame: ProvRequestFrame) -> ProvResponse {
        if frame.version != PROV_VERSION {
            return error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "sam/prov version {} is not supported; this provisioner speaks {PROV_VERSION}",
                    frame.version
                ),
            );
        }
        let pool = &self.inner.pool;
        let result = match frame.request {
            ProvRequest::CreateNode { size } => {
                if size.len() > MAX_PROV_FIELD {
                    return error(ErrorCode::TooLarge, "size name too long");
                }
                let size: Size = match size.parse() {
                    Ok(s) => s,
                    Err(e) => return error(ErrorCode::BadRequest, e),
                };
                self.create(peer, size).await
            }
            ProvRequest::ListNodes => match pool.list().await {
                Ok(vms) => Ok(ProvResponse::Nodes(
                    vms.iter()
                        .filter(|vm| member_of(vm) == Some(peer))
                        .filter_map(|vm| self.node(peer, vm, false).ok())
                        .collect(),
                )),
                Err(e) => Err(e.to_string()),
            },
            ProvRequest::ReleaseNode { id, .. } | ProvRequest::DeleteNode { id, .. }
                if id.len() > MAX_PROV_FIELD =>
            {
                let _ = id;
                return error(ErrorCode::TooLarge, "node id too long");
            }
            ProvRequest::ReleaseNode { held, .. } | ProvRequest::DeleteNode { held, .. }
                if check_held(&held).is_err() =>
            {
                let why = check_held(&held).err().unwrap_or_default();
                return error(ErrorCode::TooLarge, why);
            }
            ProvRequest::ReleaseNode { id, held, force } => match self.owned(peer, &id).await {
                Ok(vm) => {
                    return match self.release(peer, vm, &held, force).await {
                        Ok(()) => ProvResponse::Done { id },
                        Err(e) => {
                            warn!(peer = %peer.short(), "release of {id} refused or failed: {e}");
                            ProvResponse::Error(e)
                        }
                    };
                }
                Err(resp) => return resp,
            },
            ProvRequest::DeleteNode { id, held, force } => match self.owned(peer, &id).await {
                Ok(vm) => {
                    if let Err(e) = self.held_first(&vm, &held, force, "deleted").await {
                        return ProvResponse::Error(e);
                    }
                    pool.provider
                        .delete(&id)
                        .await
                        .map(|_| ProvResponse::Done { id })
                        .map_err(|e| e.to_string())
                }
                Err(resp) => return resp,
            },
        };
        result.unwrap_or_else(|e| {
            warn!(peer = %peer.short(), "request failed: {e}");
            error(ErrorCode::Unavailable, e)
        })
    }

    async fn create(&self, peer: NodeId, size: Size) -> Result<ProvResponse, String> {
        let pool = &self.inner.pool;
        let owner = self.inner.key.node_id();
        let _one_at_a_time = self.inner.hand_out.lock().await;
        let got = pool
            .acquire(size, &owner, &self.inner.probe)
            .await
            .map_err(|e| e.to_string())?;
        let mut labels: BTreeMap<String, String> = got.vm.labels.clone();
        labels.insert(MEMBER_LABEL.to_owned(), node_label(&peer));
        // One capability id per hand-out: every ticket this member gets for the node carries
        // it, so one revocation on release covers them all.
        let cap_id = self.capability(peer, owner).id; // only its fresh random id
        labels.insert(
            CAPABILITY_LABEL.to_owned(),
            data_encoding::HEXLOWER.encode(&cap_id),
        );
        let vm = match pool.provider.set_labels(&got.vm.id, &labels).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = pool.release(&got.vm).await;
                return Err(e.to_string());
            }
        };
        info!(peer = %peer.short(), vm = %vm.id, reused = got.reused, "node handed out");
        self.node(peer, &vm, got.reused)
            .map(|n| ProvResponse::Node(Box::new(n)))
            .map_err(|e| e.to_string())
    }

    /// The VM `id`, when `peer` holds it.
    async fn owned(&self, peer: NodeId, id: &str) -> Result<Vm, ProvResponse> {
        let vms = self
            .inner
            .pool
            .list()
            .await
            .map_err(|e| error(ErrorCode::Unavailable, e.to_string()))?;
        let vm = vms
            .into_iter()
            .find(|v| v.id == id)
            .ok_or_else(|| error(ErrorCode::NotFound, format!("no node {id}")))?;
        if member_of(&vm) != Some(peer) {
            return Err(error(
                ErrorCode::Forbidden,
                format!("node {id} was not handed to you"),
            ));
        }
        Ok(vm)
    }

    /// The member's view of `vm`, with a fresh capability for them.
    fn node(
        &self,
        peer: NodeId,
        vm: &Vm,
        reused: bool,
    ) -> Result<ProvNode, crate::provider::ProviderError> {
        let mut ticket: Ticket = self.inner.pool.provider.ticket(vm)?;
        let key = &self.inner.key;
        let mut cap = self.capability(peer, ticket.addr.id);
        if let Some(id) = capability_of(vm) {
            cap.id = id;
        }
        ticket.capability = Some(cap.sign(key, None));
        Ok(ProvNode {
            id: vm.id.clone(),
            size: vm.size().map(|s| s.to_string()).unwrap_or_default(),
            pool: vm
                .pool_state()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            ticket,
            reused,
        })
    }
}

impl<P> ProvHandler<P> {
    /// A capability for `peer` on `node` (unsigned), with a fresh random id.
    fn capability(&self, peer: NodeId, node: NodeId) -> Capability {
        Capability::new(
            self.inner.key.node_id(),
            node,
            Grantee::Key(peer),
            self.inner.cfg.role,
            None,
            now_unix(),
            self.inner.cfg.capability_ttl_secs,
        )
    }
}

fn member_of(vm: &Vm) -> Option<NodeId> {
    parse_node_label(vm.labels.get(MEMBER_LABEL)?)
}

fn capability_of(vm: &Vm) -> Option<[u8; 16]> {
    let hex = vm.labels.get(CAPABILITY_LABEL)?;
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

impl<P: Provider> ProvHandler<P> {
    /// Refuses (`Conflict`) to let `vm` go while the node has something its holder does not
    /// hold: a conversation whose heads are not all among `held`, or a running turn (its
    /// output would be lost), unless `force`. A node that cannot be asked is refused too
    /// (`Unavailable`), unless `force`. `verb`: "released" or "deleted".
    async fn held_first(
        &self,
        vm: &Vm,
        held: &[HeldConv],
        force: bool,
        verb: &str,
    ) -> Result<(), ErrorBody> {
        if force {
            return Ok(());
        }
        let unreachable = |e: String| {
            ErrorBody::new(
                ErrorCode::Unavailable,
                format!(
                    "node {} was not {verb}: it cannot be asked whether you hold its conversations ({e}); force {verb_again} it anyway and loses whatever only it has",
                    vm.id,
                    verb_again = if verb == "deleted" {
                        "deletes"
                    } else {
                        "releases"
                    },
                ),
            )
        };
        let ticket = self
            .inner
            .pool
            .provider
            .ticket(vm)
            .map_err(|e| unreachable(e.to_string()))?;
        let work = async {
            let ctl = OwnerCtl::connect(&self.inner.ep, &ticket, &self.inner.key).await?;
            let r = unheld(&ctl, held).await;
            ctl.conn.close(0u32.into(), b"done");
            r
        };
        let missing = tokio::time::timeout(WIPE_TIMEOUT, work)
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r)
            .map_err(unreachable)?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(refusal(&vm.id, verb, &missing))
    }

    /// Back to the pool for the next member, wiped, once the holder holds everything the
    /// node has ([`Self::held_first`], unless `force`). As the node's owner: the holder's
    /// capability is revoked (which also closes the holder's open connections), the check
    /// is made again (nothing of the holder's can change the node any more; if something did
    /// in between, the release is refused and the holder gets a fresh capability), every
    /// workspace is torn down and every conversation deleted (`force`: a turn is cancelled),
    /// and the node must then report no conversation and no workspace. Only then is it
    /// pooled; a node where any step of the wipe fails is deleted instead: the next member
    /// never sees the previous one's work.
    async fn release(
        &self,
        peer: NodeId,
        vm: Vm,
        held: &[HeldConv],
        force: bool,
    ) -> Result<(), ErrorBody> {
        self.held_first(&vm, held, force, "released").await?;
        let pool = &self.inner.pool;
        let wiped = match pool.provider.ticket(&vm) {
            Ok(ticket) => {
                let check = (!force).then_some(held);
                wipe_node(
                    &self.inner.ep,
                    &ticket,
                    capability_of(&vm),
                    &self.inner.key,
                    check,
                )
                .await
            }
            Err(e) => Err(Wipe::Failed(e.to_string())),
        };
        let reason = match wiped {
            Ok(()) => None,
            Err(Wipe::Changed(missing)) => {
                // Revoked, not wiped: the holder keeps the node with a fresh capability.
                let cap_id = self.capability(peer, self.inner.key.node_id()).id;
                let mut labels = vm.labels.clone();
                labels.insert(
                    CAPABILITY_LABEL.to_owned(),
                    data_encoding::HEXLOWER.encode(&cap_id),
                );
                if let Err(e) = pool.provider.set_labels(&vm.id, &labels).await {
                    warn!(vm = %vm.id, "cannot renew the holder's capability: {e}");
                }
                return Err(refusal(&vm.id, "released", &missing));
            }
            Err(Wipe::Failed(e)) => Some(format!("it could not be wiped ({e})")),
        };
        if let Some(reason) = reason {
            warn!(vm = %vm.id, "released node not pooled: {reason}; deleting it");
            return pool.provider.delete(&vm.id).await.map_err(|d| {
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("{reason}, and deleting the node failed too ({d})"),
                )
            });
        }
        info!(vm = %vm.id, "holder's capability revoked, workspaces and conversations deleted");
        let mut labels = vm.labels.clone();
        labels.remove(MEMBER_LABEL);
        labels.remove(CAPABILITY_LABEL);
        let vm = Vm { labels, ..vm };
        pool.release(&vm)
            .await
            .map(|_| ())
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))
    }
}

/// How long the provisioner gives a node to answer a check or a wipe.
const WIPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The refusal naming what the holder does not hold.
fn refusal(id: &str, verb: &str, missing: &[String]) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Conflict,
        format!(
            "node {id} was not {verb}: it has what you do not hold: {}. Bring its conversations to your replica first (`sam team release`/`rm` do), or use force, which loses them",
            missing.join("; ")
        ),
    )
}

/// What the node has that `held` does not cover: each conversation with a head (change
/// hash) the member did not name, or with a turn running. The member's word is trusted for
/// what it names (a member that lies loses its own work).
async fn unheld(ctl: &OwnerCtl, held: &[HeldConv]) -> Result<Vec<String>, String> {
    use sam_protocol::agent::{AgentRequest, AgentResponse};
    use sam_protocol::ctl::{Request, Response};
    use sam_protocol::doc::{ConvRequest, ConvResponse};
    let mut missing = Vec::new();
    for id in ctl.conversations().await? {
        let r = ctl
            .request(Request::Conv(ConvRequest::Heads { id: id.clone() }))
            .await?;
        let Response::Conv(ConvResponse::Heads { heads, .. }) = r else {
            return Err(format!("unexpected answer to the heads of {id}: {r:?}"));
        };
        let mine: BTreeSet<[u8; 32]> = held
            .iter()
            .filter(|h| h.conversation == id)
            .flat_map(|h| h.heads.iter().copied())
            .collect();
        let not_held = heads.iter().filter(|h| !mine.contains(*h)).count();
        if not_held > 0 {
            missing.push(format!(
                "conversation {id} ({not_held} of its {} head(s) on the node not held by you)",
                heads.len()
            ));
            continue;
        }
        let r = ctl
            .request(Request::Agent(AgentRequest::Status { conv: id.clone() }))
            .await?;
        if let Response::Agent(AgentResponse::Status(st)) = r
            && let Some(turn) = st.turn
        {
            missing.push(format!(
                "conversation {id} (a turn is running on the node, prompt {turn}: its output would be lost)"
            ));
        }
    }
    Ok(missing)
}

/// The provisioner's owner connection to a node on `sam/ctl/1`.
struct OwnerCtl {
    conn: Connection,
}

impl OwnerCtl {
    async fn connect(ep: &Endpoint, ticket: &Ticket, key: &SecretKey) -> Result<Self, String> {
        use sam_protocol::ctl::{Hello, HelloReply};
        let addr = crate::probe::endpoint_addr(ticket).ok_or("bad node address")?;
        let conn = ep
            .connect(addr, sam_protocol::alpn::CTL)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let this = Self { conn };
        let hello = Hello {
            protocol_version: sam_protocol::PROTOCOL_VERSION,
            capability: None,
            invite_secret: None,
            client: "sam-provisioner".into(),
        };
        match this.exchange::<_, HelloReply>(&hello).await? {
            HelloReply::Welcome(w) if w.owner == key.node_id() => Ok(this),
            HelloReply::Welcome(_) => Err("the node has another owner".to_owned()),
            HelloReply::Refused(e) => Err(format!("refused: {e}")),
        }
    }

    async fn exchange<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        msg: &Q,
    ) -> Result<A, String> {
        let bytes = frame::encode(msg).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        read::<A>(&mut recv, frame::MAX_FRAME).await
    }

    /// Every conversation on the node (the owner sees all).
    async fn conversations(&self) -> Result<Vec<String>, String> {
        use sam_protocol::ctl::{Request, Response};
        use sam_protocol::doc::{ConvRequest, ConvResponse};
        match self.request(Request::Conv(ConvRequest::List)).await? {
            Response::Conv(ConvResponse::List(l)) => Ok(l.into_iter().map(|c| c.id).collect()),
            other => Err(format!(
                "unexpected answer to a conversation list: {other:?}"
            )),
        }
    }

    /// Every workspace on the node.
    async fn workspaces(&self) -> Result<Vec<String>, String> {
        use sam_protocol::ctl::{Request, Response};
        use sam_protocol::workspace::{WorkspaceRequest, WorkspaceResponse};
        match self
            .request(Request::Workspace(WorkspaceRequest::List))
            .await?
        {
            Response::Workspace(WorkspaceResponse::List(l)) => {
                Ok(l.into_iter().map(|w| w.id).collect())
            }
            other => Err(format!("unexpected answer to a workspace list: {other:?}")),
        }
    }

    async fn request(
        &self,
        request: sam_protocol::ctl::Request,
    ) -> Result<sam_protocol::ctl::Response, String> {
        use sam_protocol::ctl::{RequestFrame, Response};
        let req = RequestFrame {
            version: sam_protocol::PROTOCOL_VERSION,
            request,
        };
        match self.exchange::<_, Response>(&req).await? {
            Response::Error(e) => Err(format!("node: {e}")),
            other => Ok(other),
        }
    }
}

/// Why a wipe did not finish.
enum Wipe {
    /// After the revocation the node had what the holder does not hold (nothing wiped).
    Changed(Vec<String>),
    /// A step failed: the node must not be pooled.
    Failed(String),
}

/// Wipes a released node as its owner: revokes capability `cap` (the holder's); with
/// `check`, checks again that the holder holds every conversation (nothing of the holder's
/// can change the node now); tears down every workspace (`force`), deletes every
/// conversation (`force`: a running turn is cancelled first), and verifies that the node
/// then reports no workspace and no conversation.
async fn wipe_node(
    ep: &Endpoint,
    ticket: &Ticket,
    cap: Option<[u8; 16]>,
    key: &SecretKey,
    check: Option<&[HeldConv]>,
) -> Result<(), Wipe> {
    use sam_protocol::ctl::{Request, Response};
    use sam_protocol::doc::{ConvRequest, ConvResponse};
    use sam_protocol::workspace::WorkspaceRequest;
    let work = async {
        let ctl = OwnerCtl::connect(ep, ticket, key)
            .await
            .map_err(Wipe::Failed)?;
        if let Some(id) = cap {
            ctl.request(Request::Revoke { id })
                .await
                .map_err(Wipe::Failed)?;
        }
        if let Some(held) = check {
            let missing = unheld(&ctl, held).await.map_err(Wipe::Failed)?;
            if !missing.is_empty() {
                ctl.conn.close(0u32.into(), b"done");
                return Err(Wipe::Changed(missing));
            }
        }
        let work = async {
            for ws in ctl.workspaces().await? {
                ctl.request(Request::Workspace(WorkspaceRequest::Teardown {
                    id: ws.clone(),
                    force: true,
                }))
                .await
                .map_err(|e| format!("remove workspace {ws}: {e}"))?;
            }
            for id in ctl.conversations().await? {
                let r = ctl
                    .request(Request::Conv(ConvRequest::Delete {
                        id: id.clone(),
                        force: true,
                    }))
                    .await
                    .map_err(|e| format!("delete conversation {id}: {e}"))?;
                if !matches!(r, Response::Conv(ConvResponse::Deleted { .. })) {
                    return Err(format!("unexpected answer to deleting {id}: {r:?}"));
                }
            }
            let (ws, convs) = (ctl.workspaces().await?, ctl.conversations().await?);
            if !ws.is_empty() || !convs.is_empty() {
                return Err(format!(
                    "after the wipe the node still reports {} workspace(s) and {} conversation(s)",
                    ws.len(),
                    convs.len()
                ));
            }
            Ok(())
        };
        let r = work.await.map_err(Wipe::Failed);
        ctl.conn.close(0u32.into(), b"done");
        r
    };
    tokio::time::timeout(WIPE_TIMEOUT, work)
        .await
        .map_err(|_| Wipe::Failed("timed out".to_owned()))?
}

/// Reads one member's request: its version first (a request of another version may not
/// decode as this one's), then the rest.
async fn read_request(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<ProvRequestFrame, ProvResponse> {
    let bad = |e: String| error(ErrorCode::BadRequest, format!("malformed request: {e}"));
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let len = frame::payload_len(header, MAX_PROV_REQUEST)
        .map_err(|e| error(ErrorCode::TooLarge, e.to_string()))?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| bad(e.to_string()))?;
    match peek_version(&payload) {
        Some(PROV_VERSION) => frame::decode(&payload).map_err(|e| bad(e.to_string())),
        Some(v) => Err(error(
            ErrorCode::UnsupportedVersion,
            format!(
                "sam/prov version {v} is not supported; this provisioner speaks {PROV_VERSION}: update the older side"
            ),
        )),
        None => Err(bad("no version".into())),
    }
}

async fn read<T: serde::de::DeserializeOwned>(
    recv: &mut iroh::endpoint::RecvStream,
    max: usize,
) -> Result<T, String> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let len = frame::payload_len(header, max).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    frame::decode(&payload).map_err(|e| e.to_string())
}

/// A member's side: one request to the provisioner at `addr`, over `ep` (the member's
/// endpoint, whose key is the member's NodeId).
pub async fn request(
    ep: &Endpoint,
    addr: &NodeAddr,
    request: ProvRequest,
) -> Result<ProvResponse, ServeError> {
    let id = iroh::EndpointId::from_bytes(addr.id.as_bytes())
        .map_err(|e| ServeError::Unreachable(format!("bad provisioner id: {e}")))?;
    let target = EndpointAddr::from_parts(id, addr.direct.iter().map(|a| TransportAddr::Ip(*a)));
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ep.connect(target, sam_protocol::alpn::PROV),
    )
    .await
    .map_err(|_| ServeError::Unreachable("timed out".into()))?
    .map_err(|e| ServeError::Unreachable(e.to_string()))?;
    let refused = |conn: &Connection, e: String| match conn.close_reason() {
        Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
            ServeError::Protocol(format!("refused: {}", String::from_utf8_lossy(&c.reason)))
        }
        _ => ServeError::Protocol(e),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| refused(&conn, e.to_string()))?;
    let bytes = frame::encode(&ProvRequestFrame::new(request))
        .map_err(|e| ServeError::Protocol(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| refused(&conn, e.to_string()))?;
    let _ = send.finish();
    let resp = read::<ProvResponse>(&mut recv, MAX_PROV_RESPONSE)
        .await
        .map_err(|e| refused(&conn, e));
    conn.close(0u32.into(), b"done");
    resp
}

/// `sam-provisioner serve --team FILE`: the team service's TOML.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// `local`, `hetzner` or `scaleway`.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// UDP address of the service.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Members' NodeIds (hex, from `sam id`).
    pub members: Vec<NodeId>,
    /// `viewer`, `collaborator` (default) or `owner`.
    #[serde(default = "default_role")]
    pub role: String,
    /// Capability lifetime (s); none: until revoked.
    #[serde(default)]
    pub capability_ttl_secs: Option<u64>,
    #[serde(default)]
    pub pool: crate::PoolPolicy,
    /// The `sam-node` release cloud nodes install.
    #[serde(default)]
    pub release: Option<Release>,
}

/// `[release]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub url: String,
    pub sha256: String,
    /// `sam-pty-hold` of the same release (URL and sha256, both or neither): installed
    /// beside sam-node so terminals outlive a node restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty_hold_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty_hold_sha256: Option<String>,
}

impl Release {
    /// What the bootstrap installs; both `pty_hold_*` keys or neither.
    pub fn node_release(&self) -> Result<sam_bootstrap::NodeRelease, String> {
        let pty_hold = match (&self.pty_hold_url, &self.pty_hold_sha256) {
            (Some(url), Some(sha256)) => Some(sam_bootstrap::Artifact {
                url: url.clone(),
                sha256: sha256.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "[release]: give both pty_hold_url and pty_hold_sha256, or neither".into(),
                );
            }
        };
        Ok(sam_bootstrap::NodeRelease {
            url: self.url.clone(),
            sha256: self.sha256.clone(),
            pty_hold,
        })
    }
}

fn default_provider() -> String {
    "local".into()
}
fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7448))
}
fn default_role() -> String {
    "collaborator".into()
}

impl TeamConfig {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn serve_config(&self) -> Result<ServeConfig, String> {
        let role: Role = self.role.parse().map_err(|e| format!("role: {e}"))?;
        Ok(ServeConfig {
            members: self.members.iter().copied().collect(),
            role,
            capability_ttl_secs: self.capability_ttl_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_config() {
        let id = SecretKey::generate().node_id();
        let cfg = TeamConfig::from_toml(&format!("members = [\"{id}\"]\n")).expect("parse");
        assert_eq!(cfg.provider, "local");
        let sc = cfg.serve_config().expect("serve config");
        assert_eq!(sc.role, Role::Collaborator);
        assert_eq!(sc.members.len(), 1);
        assert!(TeamConfig::from_toml("members = [\"nope\"]").is_err());
        assert!(TeamConfig::from_toml("members = []\nbogus = 1").is_err());
    }
}
