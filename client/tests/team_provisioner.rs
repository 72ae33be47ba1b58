//! The team provisioner on loopback: `sam/prov/1` with the local provider. Members get a
//! ticket with a capability signed by the provisioner (the nodes' owner); strangers are
//! refused; a released node is handed to the next member warm.

use std::net::SocketAddr;
use std::path::PathBuf;

use sam_client::NodeClient;
use sam_crdt::{Conversation, NewConversation};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Request, Response};
use sam_protocol::prov::{HeldConv, ProvNode, ProvRequest, ProvResponse};
use sam_protocol::workspace::{CreateWorkspace, WorkspaceRequest, WorkspaceResponse};
use sam_protocol::{Role, SecretKey};
use sam_provisioner::serve::{ServeConfig, request, serve};
use sam_provisioner::{Local, Pool, PoolPolicy};

use crate::support::bins::node_bin;

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn node(resp: ProvResponse) -> ProvNode {
    match resp {
        ProvResponse::Node(n) => *n,
        other => panic!("expected a node, got {other:?}"),
    }
}

fn code(resp: ProvResponse) -> ErrorCode {
    match resp {
        ProvResponse::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn members_get_nodes_with_their_own_capability() {
    let tmp = tempfile::tempdir().expect("tmp");
    let prov_key = SecretKey::generate();
    let (alice, bob, eve) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let pool = Pool::new(
        Local::new(tmp.path().join("nodes"), node_bin()),
        PoolPolicy::default(),
    );
    let cfg = ServeConfig {
        members: [alice.node_id(), bob.node_id()].into(),
        role: Role::Collaborator,
        capability_ttl_secs: Some(3600),
    };
    let svc = serve(pool, prov_key.clone(), cfg, lo())
        .await
        .expect("serve");

    let a_ep = sam_client::endpoint::bind(&alice, Some(lo()))
        .await
        .expect("ep");
    let b_ep = sam_client::endpoint::bind(&bob, Some(lo()))
        .await
        .expect("ep");
    let e_ep = sam_client::endpoint::bind(&eve, Some(lo()))
        .await
        .expect("ep");

    let got = node(
        request(
            &a_ep,
            &svc.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    assert!(!got.reused);
    assert_eq!(got.pool, "busy");
    let cap = got.ticket.capability.clone().expect("capability");
    assert_eq!(cap.cap.issuer, prov_key.node_id());
    // alice is let in with the capability, as a collaborator
    let client = NodeClient::connect(&a_ep, &got.ticket)
        .await
        .expect("connect");
    assert_eq!(client.welcome.role, Role::Collaborator);
    assert_eq!(client.welcome.owner, prov_key.node_id());
    assert!(matches!(
        client.request(Request::Status).await.expect("status"),
        Response::Status(_)
    ));
    client.close();
    // the ticket is alice's: bob cannot use it
    assert!(NodeClient::connect(&b_ep, &got.ticket).await.is_err());

    match request(&a_ep, &svc.addr, ProvRequest::ListNodes)
        .await
        .expect("ls")
    {
        ProvResponse::Nodes(n) => {
            assert_eq!(n.iter().map(|n| &n.id).collect::<Vec<_>>(), [&got.id])
        }
        other => panic!("{other:?}"),
    }
    match request(&b_ep, &svc.addr, ProvRequest::ListNodes)
        .await
        .expect("ls")
    {
        ProvResponse::Nodes(n) => assert!(n.is_empty()),
        other => panic!("{other:?}"),
    }
    // bob may not delete alice's node; nobody asks for a bad size
    let del = request(
        &b_ep,
        &svc.addr,
        ProvRequest::DeleteNode {
            id: got.id.clone(),
            held: Vec::new(),
            force: false,
        },
    )
    .await
    .expect("rm");
    assert_eq!(code(del), ErrorCode::Forbidden);
    let bad = request(
        &b_ep,
        &svc.addr,
        ProvRequest::CreateNode {
            size: "huge".into(),
        },
    )
    .await
    .expect("bad size");
    assert_eq!(code(bad), ErrorCode::BadRequest);

    // a stranger is refused before any request
    let refused = request(&e_ep, &svc.addr, ProvRequest::ListNodes).await;
    assert!(refused.is_err(), "{refused:?}");

    // alice releases; bob gets the same node warm, with his own capability, and alice's
    // capability is revoked on the node: her old ticket and her open connection stop working
    let alice_live = NodeClient::connect(&a_ep, &got.ticket)
        .await
        .expect("alice connects before the release");
    let rel = request(
        &a_ep,
        &svc.addr,
        ProvRequest::ReleaseNode {
            id: got.id.clone(),
            held: Vec::new(),
            force: false,
        },
    )
    .await
    .expect("release");
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");
    let warm = node(
        request(
            &b_ep,
            &svc.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    assert!(warm.reused);
    assert_eq!(warm.id, got.id);
    let client = NodeClient::connect(&b_ep, &warm.ticket)
        .await
        .expect("bob connects");
    assert_ne!(
        warm.ticket.capability.as_ref().map(|c| c.cap.id),
        got.ticket.capability.as_ref().map(|c| c.cap.id)
    );
    match NodeClient::connect(&a_ep, &got.ticket).await {
        Err(sam_client::conn::ConnectError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{e}")
        }
        other => panic!("alice's old ticket still opens the node: {other:?}"),
    }
    assert!(
        alice_live.request(Request::Status).await.is_err(),
        "alice's open connection survived the release"
    );
    // bob's capability is not touched by alice's revocation
    assert!(matches!(
        client.request(Request::Status).await.expect("bob's status"),
        Response::Status(_)
    ));
    client.close();

    let done = request(
        &b_ep,
        &svc.addr,
        ProvRequest::DeleteNode {
            id: warm.id.clone(),
            held: Vec::new(),
            force: false,
        },
    )
    .await
    .expect("rm");
    assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("nodes"))
            .expect("dir")
            .count(),
        0
    );

    for ep in [a_ep, b_ep, e_ep] {
        ep.close().await;
    }
    svc.shutdown().await;
}

/// `sam-provisioner serve --team FILE` through the binary: prints its ticket, serves a member,
/// stops on SIGTERM.
#[tokio::test]
async fn serve_binary_hands_out_a_node() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sam")).with_file_name("sam-provisioner");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --bins",
        bin.display()
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let alice = SecretKey::generate();
    let team = tmp.path().join("team.toml");
    std::fs::write(
        &team,
        format!(
            "provider = \"local\"\nbind = \"127.0.0.1:0\"\nmembers = [\"{}\"]\n",
            alice.node_id()
        ),
    )
    .expect("team.toml");
    let mut child = Command::new(&bin)
        .env("SAM_HOME", tmp.path())
        .env("SAM_NODE_BIN", node_bin())
        .args(["serve", "--team"])
        .arg(&team)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sam-provisioner");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ticket line");
    let ticket: sam_protocol::Ticket = line.trim().parse().expect("provisioner ticket");

    let ep = sam_client::endpoint::bind(&alice, Some(lo()))
        .await
        .expect("ep");
    let got = node(
        request(
            &ep,
            &ticket.addr,
            ProvRequest::CreateNode {
                size: "small".into(),
            },
        )
        .await
        .expect("create"),
    );
    let client = NodeClient::connect(&ep, &got.ticket)
        .await
        .expect("connect");
    assert_eq!(client.welcome.role, Role::Collaborator);
    client.close();
    let done = request(
        &ep,
        &ticket.addr,
        ProvRequest::DeleteNode {
            id: got.id,
            held: Vec::new(),
            force: false,
        },
    )
    .await
    .expect("rm");
    assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    ep.close().await;

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    // its key stays, its local nodes are gone
    assert!(tmp.path().join("provisioner/identity.key").is_file());
    let left = std::fs::read_dir(tmp.path().join("provisioner/local"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

/// A provisioner on a local pool, and endpoints for `n` members.
async fn team(
    tmp: &std::path::Path,
    n: usize,
) -> (
    sam_provisioner::serve::ServeHandle,
    Vec<(SecretKey, iroh::Endpoint)>,
) {
    let members: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
    let pool = Pool::new(
        Local::new(tmp.join("nodes"), node_bin()),
        PoolPolicy::default(),
    );
    let cfg = ServeConfig {
        members: members.iter().map(SecretKey::node_id).collect(),
        role: Role::Collaborator,
        capability_ttl_secs: Some(3600),
    };
    let svc = serve(pool, SecretKey::generate(), cfg, lo())
        .await
        .expect("serve");
    let mut out = Vec::new();
    for key in members {
        let ep = sam_client::endpoint::bind(&key, Some(lo()))
            .await
            .expect("ep");
        out.push((key, ep));
    }
    (svc, out)
}

async fn ask(
    svc: &sam_provisioner::serve::ServeHandle,
    ep: &iroh::Endpoint,
    r: ProvRequest,
) -> ProvResponse {
    request(ep, &svc.addr, r)
        .await
        .expect("provisioner answers")
}

fn small() -> ProvRequest {
    ProvRequest::CreateNode {
        size: "small".into(),
    }
}

/// The local provider, with a gate that makes the race happen every time: once armed, an
/// acquirer's write of `busy` waits (at most 5 s) until a second acquirer has listed the pool.
/// Without the provisioner's one-at-a-time hand-out and the claim read-back, both members then
/// see the node idle and both take it.
struct Gate {
    inner: Local,
    armed: std::sync::atomic::AtomicBool,
    lists: std::sync::atomic::AtomicUsize,
    listed: tokio::sync::Notify,
}

impl sam_provisioner::Provider for Gate {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn create(
        &self,
        spec: &sam_provisioner::CreateSpec,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        self.inner.create(spec).await
    }
    async fn list(&self) -> Result<Vec<sam_provisioner::Vm>, sam_provisioner::ProviderError> {
        let out = self.inner.list().await;
        self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.listed.notify_waiters();
        out
    }
    async fn delete(&self, id: &str) -> Result<(), sam_provisioner::ProviderError> {
        self.inner.delete(id).await
    }
    async fn set_labels(
        &self,
        id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        use std::sync::atomic::Ordering;
        if labels.get("sam-pool").map(String::as_str) == Some("busy")
            && self.armed.swap(false, Ordering::SeqCst)
        {
            let seen = self.lists.load(Ordering::SeqCst);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while self.lists.load(Ordering::SeqCst) <= seen {
                    let wait = self.listed.notified();
                    if self.lists.load(Ordering::SeqCst) > seen {
                        break;
                    }
                    wait.await;
                }
            })
            .await;
        }
        self.inner.set_labels(id, labels).await
    }
    fn user_data(
        &self,
        enrollment: &sam_provisioner::Enrollment,
        owner: &sam_protocol::NodeId,
        release: Option<&sam_provisioner::NodeRelease>,
    ) -> Result<String, sam_provisioner::ProviderError> {
        self.inner.user_data(enrollment, owner, release)
    }
    fn ticket(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<sam_protocol::Ticket, sam_provisioner::ProviderError> {
        self.inner.ticket(vm)
    }
    fn enroll_addrs(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<Vec<std::net::SocketAddr>, sam_provisioner::ProviderError> {
        self.inner.enroll_addrs(vm)
    }
}

/// Two members ask at the same moment while one node is idle: exactly one of them gets it,
/// the other a node of its own (before: both listed the idle node, both marked it busy, and
/// both held tickets to one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_asking_at_once_never_share_the_idle_node() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tmp");
    let members: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let gate = Gate {
        inner: Local::new(tmp.path().join("nodes"), node_bin()),
        armed: false.into(),
        lists: 0.into(),
        listed: tokio::sync::Notify::new(),
    };
    let cfg = ServeConfig {
        members: members.iter().map(SecretKey::node_id).collect(),
        role: Role::Collaborator,
        capability_ttl_secs: Some(3600),
    };
    let gate = Arc::new(gate);
    let svc = serve(
        Pool::new(GateRef(gate.clone()), PoolPolicy::default()),
        SecretKey::generate(),
        cfg,
        lo(),
    )
    .await
    .expect("serve");
    let mut m = Vec::new();
    for key in members {
        let ep = sam_client::endpoint::bind(&key, Some(lo()))
            .await
            .expect("ep");
        m.push((key, ep));
    }
    let first = node(ask(&svc, &m[0].1, small()).await);
    let rel = ask(
        &svc,
        &m[0].1,
        ProvRequest::ReleaseNode {
            id: first.id.clone(),
            held: Vec::new(),
            force: false,
        },
    )
    .await;
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");

    gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let (b, c) = tokio::join!(ask(&svc, &m[1].1, small()), ask(&svc, &m[2].1, small()));
    let (b, c) = (node(b), node(c));
    assert_ne!(b.id, c.id, "two members hold one node");
    assert_eq!(
        [b.reused, c.reused].iter().filter(|r| **r).count(),
        1,
        "exactly one of them gets the idle node"
    );
    let warm = if b.reused { &b } else { &c };
    assert_eq!(warm.id, first.id);
    for (i, mine) in [(1, &b), (2, &c)] {
        match ask(&svc, &m[i].1, ProvRequest::ListNodes).await {
            ProvResponse::Nodes(n) => {
                assert_eq!(n.iter().map(|n| &n.id).collect::<Vec<_>>(), [&mine.id])
            }
            other => panic!("{other:?}"),
        }
    }
    for (i, mine) in [(1, &b), (2, &c)] {
        let done = ask(
            &svc,
            &m[i].1,
            ProvRequest::DeleteNode {
                id: mine.id.clone(),
                held: Vec::new(),
                force: false,
            },
        )
        .await;
        assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    }
    for (_, ep) in m {
        ep.close().await;
    }
    svc.shutdown().await;
}

/// [`Gate`] shared with the test (the pool owns its provider).
struct GateRef(std::sync::Arc<Gate>);

impl sam_provisioner::Provider for GateRef {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn create(
        &self,
        spec: &sam_provisioner::CreateSpec,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        self.0.create(spec).await
    }
    async fn list(&self) -> Result<Vec<sam_provisioner::Vm>, sam_provisioner::ProviderError> {
        self.0.list().await
    }
    async fn delete(&self, id: &str) -> Result<(), sam_provisioner::ProviderError> {
        self.0.delete(id).await
    }
    async fn set_labels(
        &self,
        id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        self.0.set_labels(id, labels).await
    }
    fn user_data(
        &self,
        enrollment: &sam_provisioner::Enrollment,
        owner: &sam_protocol::NodeId,
        release: Option<&sam_provisioner::NodeRelease>,
    ) -> Result<String, sam_provisioner::ProviderError> {
        self.0.user_data(enrollment, owner, release)
    }
    fn ticket(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<sam_protocol::Ticket, sam_provisioner::ProviderError> {
        self.0.ticket(vm)
    }
    fn enroll_addrs(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<Vec<std::net::SocketAddr>, sam_provisioner::ProviderError> {
        self.0.enroll_addrs(vm)
    }
}

async fn ws(c: &NodeClient, r: WorkspaceRequest) -> WorkspaceResponse {
    match c
        .request(Request::Workspace(r))
        .await
        .expect("workspace request")
    {
        Response::Workspace(w) => w,
        other => panic!("{other:?}"),
    }
}

async fn workspaces(c: &NodeClient) -> Vec<String> {
    match ws(c, WorkspaceRequest::List).await {
        WorkspaceResponse::List(l) => l.into_iter().map(|w| w.id).collect(),
        other => panic!("{other:?}"),
    }
}

async fn conversations(c: &NodeClient) -> Vec<String> {
    match c
        .request(Request::Conv(sam_protocol::doc::ConvRequest::List))
        .await
        .expect("conversations")
    {
        Response::Conv(sam_protocol::doc::ConvResponse::List(l)) => {
            l.into_iter().map(|c| c.id).collect()
        }
        other => panic!("{other:?}"),
    }
}

async fn new_workspace(c: &NodeClient) -> String {
    match ws(
        c,
        WorkspaceRequest::Create(CreateWorkspace {
            repo: None,
            branch: None,
            lightweight: true,
            name: None,
        }),
    )
    .await
    {
        WorkspaceResponse::Info(i) => i.id,
        other => panic!("{other:?}"),
    }
}

fn containers_of(workspace: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=sam.workspace={workspace}"),
        ])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "dockerd is not reachable");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn release(id: &str, held: Vec<HeldConv>, force: bool) -> ProvRequest {
    ProvRequest::ReleaseNode {
        id: id.to_owned(),
        held,
        force,
    }
}

fn refused(resp: ProvResponse) -> ErrorBody {
    match resp {
        ProvResponse::Error(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn hashes(conv: &mut Conversation) -> Vec<[u8; 32]> {
    conv.heads().into_iter().map(|h| h.0).collect()
}

/// A released node is wiped and pooled for the next member: the holder's workspaces are torn
/// down (their containers gone) and its conversations deleted (their files gone), so the
/// next member gets the node warm and sees nothing of the previous one's. Before: a node that
/// had served any conversation was deleted instead of pooled (no warm reuse), and the
/// provisioner released a node whatever its holder held: a raw `ReleaseNode` naming no
/// conversation, or stale heads, wiped work the holder did not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_node_is_wiped_before_the_next_member_gets_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (svc, m) = team(tmp.path(), 3).await;
    let (alice, bob, carol) = (&m[0], &m[1], &m[2]);

    // alice: a workspace, then release
    let a_node = node(ask(&svc, &alice.1, small()).await);
    let a = NodeClient::connect(&alice.1, &a_node.ticket)
        .await
        .expect("alice connects");
    let a_ws = new_workspace(&a).await;
    assert_eq!(workspaces(&a).await, std::slice::from_ref(&a_ws));
    a.close();
    let rel = ask(&svc, &alice.1, release(&a_node.id, Vec::new(), false)).await;
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");
    assert_eq!(
        containers_of(&a_ws),
        "",
        "alice's container survived the release"
    );

    // bob gets the same node warm, and sees nothing of alice's
    let b_node = node(ask(&svc, &bob.1, small()).await);
    assert!(b_node.reused);
    assert_eq!(b_node.id, a_node.id);
    let b = NodeClient::connect(&bob.1, &b_node.ticket)
        .await
        .expect("bob connects");
    assert!(
        workspaces(&b).await.is_empty(),
        "bob sees alice's workspaces"
    );
    assert!(conversations(&b).await.is_empty());

    // bob: a workspace and a conversation in it, pushed to the node
    let b_ws = new_workspace(&b).await;
    let conv_id = "0123abcd-0000-4000-8000-00000000b0b0";
    let mut conv = Conversation::create(
        NewConversation {
            id: conv_id.into(),
            title: "bob's secret plan".into(),
            agent: "claude".into(),
            workspace_node: b_node.ticket.addr.id.to_string(),
            workspace_id: b_ws.clone(),
            created_at: 1,
        },
        &bob.0.node_id().to_string(),
    )
    .expect("conversation");
    let bob_id = bob.0.node_id().to_string();
    let mut s = sam_client::docs::open_stream(&bob.1, &b_node.ticket, conv_id, true)
        .await
        .expect("open doc stream");
    s.sync_once(&mut conv, |_| Ok(()), std::time::Duration::from_secs(30))
        .await
        .expect("push");
    let stale = hashes(&mut conv);
    conv.append_note(&bob_id, "step two").expect("note");
    s.sync_once(&mut conv, |_| Ok(()), std::time::Duration::from_secs(30))
        .await
        .expect("push the second change");
    s.close(None).await;
    assert_eq!(conversations(&b).await, [conv_id.to_owned()]);

    // A release that names no conversation, or only stale heads of it, is refused by the
    // provisioner itself: the node stays bob's, untouched, his capability still good.
    for held in [
        Vec::new(),
        vec![HeldConv {
            conversation: conv_id.into(),
            heads: stale,
        }],
        vec![HeldConv {
            conversation: "0123abcd-0000-4000-8000-00000000ffff".into(),
            heads: hashes(&mut conv),
        }],
    ] {
        let e = refused(ask(&svc, &bob.1, release(&b_node.id, held.clone(), false)).await);
        assert_eq!(e.code, ErrorCode::Conflict, "{held:?}: {e}");
        assert!(e.message.contains(conv_id), "{e}");
        let e = refused(
            ask(
                &svc,
                &bob.1,
                ProvRequest::DeleteNode {
                    id: b_node.id.clone(),
                    held,
                    force: false,
                },
            )
            .await,
        );
        assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    }
    assert_eq!(conversations(&b).await, [conv_id.to_owned()]);
    assert_eq!(workspaces(&b).await, std::slice::from_ref(&b_ws));
    match ask(&svc, &bob.1, ProvRequest::ListNodes).await {
        ProvResponse::Nodes(n) => {
            assert_eq!(n.iter().map(|n| &n.id).collect::<Vec<_>>(), [&b_node.id])
        }
        other => panic!("{other:?}"),
    }
    b.close();

    // Holding its heads, bob releases: the node is wiped and pooled.
    let held = vec![HeldConv {
        conversation: conv_id.into(),
        heads: hashes(&mut conv),
    }];
    let rel = ask(&svc, &bob.1, release(&b_node.id, held, false)).await;
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");
    assert_eq!(containers_of(&b_ws), "");
    let node_dir = tmp.path().join("nodes").join(b_node.id.as_str());
    let left: Vec<_> = walk(&node_dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(conv_id) && !name.ends_with(".deleted")
        })
        .collect();
    assert!(left.is_empty(), "bob's conversation files remain: {left:?}");

    // carol gets bob's node warm, and sees nothing of his
    let c_node = node(ask(&svc, &carol.1, small()).await);
    assert!(
        c_node.reused,
        "the wiped node did not go back to the pool (deleted instead?)"
    );
    assert_eq!(c_node.id, b_node.id);
    let c = NodeClient::connect(&carol.1, &c_node.ticket)
        .await
        .expect("carol connects");
    assert!(
        conversations(&c).await.is_empty(),
        "carol sees bob's conversation"
    );
    assert!(workspaces(&c).await.is_empty());
    // bob still holds his replica, but his capability is revoked: he cannot push it back.
    assert!(
        sam_client::docs::open_stream(&bob.1, &b_node.ticket, conv_id, true)
            .await
            .is_err()
    );
    c.close();
    let done = ask(
        &svc,
        &carol.1,
        ProvRequest::DeleteNode {
            id: c_node.id.clone(),
            held: Vec::new(),
            force: false,
        },
    )
    .await;
    assert!(matches!(done, ProvResponse::Done { .. }), "{done:?}");
    for (_, ep) in m {
        ep.close().await;
    }
    svc.shutdown().await;
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Something run once, inside the provisioner, on the `n`th `ticket()` call after it is armed.
type Hook = Box<dyn FnOnce() + Send>;

/// The local provider with a [`Hook`] on `ticket()`: a release asks for the node's ticket
/// once for its held-first check and once more for the wipe, so the hook lands a change on
/// the node exactly between the check and the revocation.
struct Inject {
    inner: Local,
    left: std::sync::Mutex<Option<(usize, Hook)>>,
}

struct InjectRef(std::sync::Arc<Inject>);

impl sam_provisioner::Provider for InjectRef {
    fn name(&self) -> &'static str {
        self.0.inner.name()
    }
    async fn create(
        &self,
        spec: &sam_provisioner::CreateSpec,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        self.0.inner.create(spec).await
    }
    async fn list(&self) -> Result<Vec<sam_provisioner::Vm>, sam_provisioner::ProviderError> {
        self.0.inner.list().await
    }
    async fn delete(&self, id: &str) -> Result<(), sam_provisioner::ProviderError> {
        self.0.inner.delete(id).await
    }
    async fn set_labels(
        &self,
        id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<sam_provisioner::Vm, sam_provisioner::ProviderError> {
        self.0.inner.set_labels(id, labels).await
    }
    fn user_data(
        &self,
        enrollment: &sam_provisioner::Enrollment,
        owner: &sam_protocol::NodeId,
        release: Option<&sam_provisioner::NodeRelease>,
    ) -> Result<String, sam_provisioner::ProviderError> {
        self.0.inner.user_data(enrollment, owner, release)
    }
    fn ticket(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<sam_protocol::Ticket, sam_provisioner::ProviderError> {
        let hook = {
            let mut left = self.0.left.lock().unwrap_or_else(|p| p.into_inner());
            match left.take() {
                Some((0, hook)) => Some(hook),
                Some((n, hook)) => {
                    *left = Some((n - 1, hook));
                    None
                }
                None => None,
            }
        };
        if let Some(hook) = hook {
            hook();
        }
        self.0.inner.ticket(vm)
    }
    fn enroll_addrs(
        &self,
        vm: &sam_provisioner::Vm,
    ) -> Result<Vec<std::net::SocketAddr>, sam_provisioner::ProviderError> {
        self.0.inner.enroll_addrs(vm)
    }
}

/// The member's conversation changes on the node after the provisioner checked the heads it
/// holds but before it revoked its capability: the provisioner checks again once nothing of
/// the member's can reach the node, wipes nothing, refuses the release naming the
/// conversation, and hands the member a fresh capability (its old tickets are revoked); the
/// member then holds the change and releases. Without the second check the change would be
/// wiped although the member never held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_the_check_and_the_revocation_refuses_the_release() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tmp");
    let bob = SecretKey::generate();
    let inject = Arc::new(Inject {
        inner: Local::new(tmp.path().join("nodes"), node_bin()),
        left: std::sync::Mutex::new(None),
    });
    let cfg = ServeConfig {
        members: [bob.node_id()].into(),
        role: Role::Collaborator,
        capability_ttl_secs: Some(3600),
    };
    let svc = serve(
        Pool::new(InjectRef(inject.clone()), PoolPolicy::default()),
        SecretKey::generate(),
        cfg,
        lo(),
    )
    .await
    .expect("serve");
    let ep = sam_client::endpoint::bind(&bob, Some(lo()))
        .await
        .expect("ep");
    let got = node(ask(&svc, &ep, small()).await);
    let conv_id = "0123abcd-0000-4000-8000-0000000000b2";
    let bob_id = bob.node_id().to_string();
    let mut conv = Conversation::create(
        NewConversation {
            id: conv_id.into(),
            title: "racing".into(),
            agent: "claude".into(),
            workspace_node: got.ticket.addr.id.to_string(),
            workspace_id: "w1".into(),
            created_at: 1,
        },
        &bob_id,
    )
    .expect("conversation");
    let t = std::time::Duration::from_secs(30);
    let mut s = sam_client::docs::open_stream(&ep, &got.ticket, conv_id, true)
        .await
        .expect("open");
    s.sync_once(&mut conv, |_| Ok(()), t).await.expect("push");
    s.close(None).await;
    let held = vec![HeldConv {
        conversation: conv_id.into(),
        heads: hashes(&mut conv),
    }];

    // Between the check and the revocation, another replica of bob's (a second device with
    // the same key) lands a change bob's releasing replica does not hold.
    let (ep2, ticket2) = (ep.clone(), got.ticket.clone());
    let mut other = Conversation::load(&conv.save()).expect("a second replica");
    let author = bob_id.clone();
    let hook: Hook = Box::new(move || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                other
                    .append_note(&author, "written during the release")
                    .expect("note");
                let mut s = sam_client::docs::open_stream(&ep2, &ticket2, conv_id, false)
                    .await
                    .expect("open");
                s.sync_once(&mut other, |_| Ok(()), t).await.expect("push");
                s.close(None).await;
            })
        })
    });
    *inject.left.lock().expect("lock") = Some((1, hook));
    let e = refused(ask(&svc, &ep, release(&got.id, held, false)).await);
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains(conv_id), "{e}");
    assert!(inject.left.lock().expect("lock").is_none(), "the hook ran");

    // Nothing was wiped; the old ticket is revoked, a fresh one from the list works.
    assert!(NodeClient::connect(&ep, &got.ticket).await.is_err());
    let fresh = match ask(&svc, &ep, ProvRequest::ListNodes).await {
        ProvResponse::Nodes(n) => n.into_iter().next().expect("still bob's"),
        other => panic!("{other:?}"),
    };
    assert_eq!(fresh.id, got.id);
    let mut s = sam_client::docs::open_stream(&ep, &fresh.ticket, conv_id, false)
        .await
        .expect("bob is let in again with the fresh ticket");
    s.sync_once(&mut conv, |_| Ok(()), t).await.expect("sync");
    assert!(
        conv.messages()
            .iter()
            .any(|m| m.text == "written during the release")
    );
    let held = vec![HeldConv {
        conversation: conv_id.into(),
        heads: hashes(&mut conv),
    }];
    let rel = ask(&svc, &ep, release(&got.id, held, false)).await;
    s.close(None).await;
    assert!(matches!(rel, ProvResponse::Done { .. }), "{rel:?}");
    ep.close().await;
    svc.shutdown().await;
}

/// A `sam/prov` version 1 client's `ReleaseNode { id }` (no held heads: it would not decode as
/// version 2's) is refused from its version, clearly, and releases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_clients_release_is_refused_by_its_version() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (svc, m) = team(tmp.path(), 1).await;
    let ep = &m[0].1;
    let got = node(ask(&svc, ep, small()).await);
    // version 1, `ReleaseNode` (tag 2), the id: what a version 1 client sends.
    let mut payload = vec![1u8, 2, got.id.len() as u8];
    payload.extend_from_slice(got.id.as_bytes());
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let id = iroh::EndpointId::from_bytes(svc.addr.id.as_bytes()).expect("id");
    let target = iroh::EndpointAddr::from_parts(
        id,
        svc.addr.direct.iter().map(|a| iroh::TransportAddr::Ip(*a)),
    );
    let conn = ep
        .connect(target, sam_protocol::alpn::PROV)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&bytes).await.expect("write");
    let _ = send.finish();
    let answer = recv.read_to_end(1024 * 1024).await.expect("answer");
    let resp: ProvResponse =
        sam_protocol::frame::decode_frame(&answer, 1024 * 1024).expect("a response");
    let e = refused(resp);
    assert_eq!(e.code, ErrorCode::UnsupportedVersion, "{e}");
    assert!(e.message.contains("version 1"), "{e}");
    conn.close(0u32.into(), b"done");
    match ask(&svc, ep, ProvRequest::ListNodes).await {
        ProvResponse::Nodes(n) => assert_eq!(n.len(), 1, "the node was released"),
        other => panic!("{other:?}"),
    }
    for (_, ep) in m {
        ep.close().await;
    }
    svc.shutdown().await;
}
