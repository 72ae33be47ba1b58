//! Git credentials, agent keys, credential-bearing URLs and file modes, attacked the way a
//! collaborator, a teammate, a misbehaving agent or another user of the host would.
//!
//! - A collaborator's workspace asks for git credentials: the owner's and a teammate's
//!   long polls are never handed that request, and the owner cannot answer it.
//! - A workspace asks its creator for another host's credential: the creator's client
//!   refuses and says so on stderr.
//! - A peer sets `NODE_OPTIONS` / `LD_PRELOAD` / `BASH_ENV` as agent "keys": refused.
//! - An agent echoes its key in text, thoughts, a tool title and tool output: the
//!   document holds `[redacted]`, never the key.
//! - A repo URL with a token: refused; nothing holds the token.
//! - The node's home, documents, run folder: `0700`; document files `0600`.

use crate::support::agent_util::{self as util, AgentNode};
use crate::support::git_http;
use crate::support::harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sam_client::conn::{ConnectError, NodeClient};
use sam_protocol::agent::{AgentRequest, Credentials};
use sam_protocol::ctl::{ErrorBody, ErrorCode, Request, Response};
use sam_protocol::workspace::{
    CreateWorkspace, CredentialRequest, GitCredential, WorkspaceInfo, WorkspaceRequest,
    WorkspaceResponse, WorkspaceStatus,
};
use sam_protocol::{Role, SecretKey};

const GUARD: Duration = Duration::from_secs(180);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn ws(c: &NodeClient, r: WorkspaceRequest) -> Result<WorkspaceResponse, ConnectError> {
    match c.request(Request::Workspace(r)).await? {
        Response::Workspace(w) => Ok(w),
        other => panic!("not a workspace answer: {other:?}"),
    }
}

fn error_of<T: std::fmt::Debug>(r: Result<T, ConnectError>) -> ErrorBody {
    match r {
        Err(ConnectError::Remote(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

async fn poll(c: &NodeClient) -> Option<CredentialRequest> {
    match ws(c, WorkspaceRequest::WaitCredential).await {
        Ok(WorkspaceResponse::Credential(r)) => r,
        other => panic!("credential poll: {other:?}"),
    }
}

async fn wait_done(c: &NodeClient, id: &str) -> WorkspaceInfo {
    let start = std::time::Instant::now();
    loop {
        let WorkspaceResponse::Info(i) = ws(c, WorkspaceRequest::Get { id: id.into() })
            .await
            .expect("get")
        else {
            panic!("not info")
        };
        if i.status != WorkspaceStatus::Creating {
            return i;
        }
        assert!(start.elapsed() < GUARD, "workspace {id} still creating");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn docker_ready() {
    crate::support::ws_common::docker_ready();
}

/// The attack of issue #16: a collaborator makes a workspace whose git asks for a
/// credential. Before, every collaborator's and the owner's `WaitCredential` could be handed
/// it, and the owner's client answered with the owner's GitHub token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collaborators_workspace_never_asks_the_owner_or_a_teammate_for_credentials() {
    docker_ready();
    let n = harness::TestNode::start().await;
    let repo = tempfile::tempdir().expect("tempdir");
    git_http::make_repo(repo.path());
    let server = git_http::serve(
        git_http::bridge_ip(),
        repo.path().to_path_buf(),
        Some(git_http::base64(b"collab:right")),
    )
    .await;
    let url = format!("{}/o/r.git", server.base);
    let (_oep, owner) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner");
    let (ck, ct) = n.member(Role::Collaborator);
    let (_cep, collab) = harness::client(&ck, &ct).await.expect("collaborator");
    let (tk, tt) = n.member(Role::Collaborator);
    let (_tep, teammate) = harness::client(&tk, &tt).await.expect("teammate");

    // The collaborator creates the workspace the way `sam workspace create` does.
    let WorkspaceResponse::Info(info) = sam_client::cli::workspace::ws(
        &collab,
        WorkspaceRequest::Create(CreateWorkspace {
            repo: Some(url.clone()),
            branch: None,
            lightweight: true,
            name: None,
        }),
    )
    .await
    .expect("create") else {
        panic!("not info")
    };
    // Its clone asks for a credential.
    let broker = n.handle.node.workspaces().broker().clone();
    let start = std::time::Instant::now();
    while !broker.waiting().contains(&info.id) {
        assert!(
            start.elapsed() < GUARD,
            "the clone never asked for a credential"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The owner's and the teammate's long polls run their full course and get nothing.
    let (o, t) = tokio::join!(poll(&owner), poll(&teammate));
    assert_eq!(
        o, None,
        "the owner's client was asked for a collaborator's workspace"
    );
    assert_eq!(t, None, "a teammate was asked for another's workspace");
    // The creator gets it.
    let req = poll(&collab).await.expect("the creator is asked");
    assert_eq!(req.workspace, info.id);
    // The owner cannot slip its own credential in either.
    let e = error_of(
        ws(
            &owner,
            WorkspaceRequest::AnswerCredential {
                request: req.id,
                answer: Some(GitCredential {
                    username: "owner".into(),
                    password: "ghp_owner_token".into(),
                }),
            },
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    ws(
        &collab,
        WorkspaceRequest::AnswerCredential {
            request: req.id,
            answer: Some(GitCredential {
                username: "collab".into(),
                password: "right".into(),
            }),
        },
    )
    .await
    .expect("answer");
    let done = wait_done(&collab, &info.id).await;
    assert_eq!(done.status, WorkspaceStatus::Ready, "{done:?}");

    // The creator is kept across restarts in a label.
    let labels = docker_labels(&n.handle.node.id().to_string());
    assert!(
        labels.contains(&format!("sam.creator={}", ck.node_id())),
        "{labels}"
    );

    // Now git in that workspace asks for another host (github.com, where the collaborator
    // has credentials too): the collaborator's own client refuses, and says so.
    let cid = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("container")
        .container_id;
    let fill = std::thread::spawn(move || {
        Command::new("docker")
            .args([
                "exec",
                "-u",
                "sam",
                &cid,
                "sh",
                "-c",
                "printf 'protocol=https\\nhost=github.com\\npath=victim/private.git\\n\\n' | GIT_TERMINAL_PROMPT=0 git credential fill",
            ])
            .output()
            .expect("docker exec")
    });
    let line = loop {
        if let Some(line) = sam_client::cli::workspace::serve_one_credential(&collab)
            .await
            .expect("serve")
        {
            break line;
        }
    };
    assert!(line.contains("github.com"), "{line}");
    assert!(line.contains("refused"), "{line}");
    assert!(line.contains("not github.com"), "{line}");
    let out = tokio::task::spawn_blocking(move || fill.join().expect("join"))
        .await
        .expect("join");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("password="),
        "a credential was handed out: {out:?}"
    );
    ws(&owner, WorkspaceRequest::Remove { id: info.id })
        .await
        .expect("rm");
}

fn docker_labels(node: &str) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=sam.node={node}"),
            "--format",
            "{{.Labels}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repo URL with a token would land in labels, logs, `sam workspace ls` and documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_url_with_credentials_is_refused_and_stored_nowhere() {
    docker_ready();
    let n = harness::TestNode::start().await;
    let (_ep, c) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner");
    let token = "ghp_Planted0123456789";
    for url in [
        format!("https://sam:{token}@github.com/o/r.git"),
        format!("https://{token}@github.com/o/r.git"),
    ] {
        let e = error_of(
            ws(
                &c,
                WorkspaceRequest::Create(CreateWorkspace {
                    repo: Some(url),
                    branch: None,
                    lightweight: true,
                    name: None,
                }),
            )
            .await,
        );
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("credentials"), "{}", e.message);
        assert!(!e.message.contains(token), "the error repeats the token");
    }
    let WorkspaceResponse::List(list) = ws(&c, WorkspaceRequest::List).await.expect("list") else {
        panic!("not a list")
    };
    assert!(list.is_empty(), "{list:?}");
    assert!(!docker_labels(&n.handle.node.id().to_string()).contains(token));
    let hits = grep_dir(n.dir.path(), token.as_bytes());
    assert!(hits.is_empty(), "the token is on disk: {hits:?}");
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep_dir(&p, needle));
        } else if let Ok(b) = std::fs::read(&p)
            && b.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p);
        }
    }
    hits
}

async fn send_env(
    n: &AgentNode,
    key: &SecretKey,
    ticket: &sam_protocol::Ticket,
    conv: &str,
    env: &[(&str, &str)],
) -> Result<Response, ConnectError> {
    let (ep, c) = harness::client(key, ticket).await.expect("connect");
    let r = c
        .request(Request::Agent(AgentRequest::Credentials {
            conv: Some(conv.to_string()),
            workspace: None,
            credentials: Credentials {
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        }))
        .await;
    c.close();
    ep.close().await;
    let _ = n;
    r
}

/// Before, any name but `PATH`/`LD_*` was taken: `NODE_OPTIONS=--require /tmp/x.js` runs
/// a peer's code inside Claude Code, Gemini and Codex's Node processes; `BASH_ENV` in
/// every shell the agent starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_env_other_than_agent_keys_is_refused() {
    let n = AgentNode::start(&[]).await;
    let conv = n.conv(&[]).await;
    let ticket = n.handle.ticket();
    for name in [
        "NODE_OPTIONS",
        "BASH_ENV",
        "GIT_SSH_COMMAND",
        "LD_PRELOAD",
        "HOME",
    ] {
        let r = send_env(
            &n,
            &n.owner,
            &ticket,
            &conv,
            &[("ANTHROPIC_API_KEY", "sk-fine-123456"), (name, "/tmp/evil")],
        )
        .await;
        match r {
            Err(ConnectError::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{name}: {e:?}");
                assert!(e.message.contains(name), "{name}: {}", e.message);
            }
            other => panic!("{name} was accepted: {other:?}"),
        }
    }
    // The refused sets were not kept: the agent has no key at all.
    let p = n
        .prompt(&conv, "env ANTHROPIC_API_KEY; env NODE_OPTIONS")
        .await;
    n.ended(&conv, &p).await;
    let text = util::agent_text(&n.messages(&conv).await);
    assert!(text.contains("ANTHROPIC_API_KEY is not set"), "{text}");
    assert!(text.contains("NODE_OPTIONS is not set"), "{text}");
    // Known keys are taken.
    let r = send_env(
        &n,
        &n.owner,
        &ticket,
        &conv,
        &[("ANTHROPIC_API_KEY", "sk-fine-123456")],
    )
    .await;
    assert!(matches!(r, Ok(Response::Agent(_))), "{r:?}");
}

/// A node whose owner allows a name in `agent_env` takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_may_allow_more_agent_env_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let mut cfg = sam_node::NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse().expect("addr");
    cfg.agent_env = vec!["CORP_PROXY_TOKEN".into()];
    let agents = util::config(&dir.path().join("ws"), &[]);
    let handle = sam_node::Node::start_with_agents(
        sam_node::NodePaths::new(dir.path().join("node")),
        cfg,
        node_key,
        agents,
    )
    .await
    .expect("start");
    let (ep, c) = harness::client(&owner, &handle.ticket())
        .await
        .expect("connect");
    let send = |name: &str| {
        Request::Agent(AgentRequest::Credentials {
            conv: None,
            workspace: Some("w1".into()),
            credentials: Credentials {
                env: vec![(name.to_string(), "value-123456".into())],
            },
        })
    };
    assert!(matches!(
        c.request(send("CORP_PROXY_TOKEN")).await,
        Ok(Response::Agent(_))
    ));
    let e = error_of(c.request(send("OTHER_TOKEN")).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("agent_env"), "{}", e.message);
    c.close();
    ep.close().await;
}

/// A misbehaving (or prompt-injected) agent prints its key in its answer, split over
/// chunks, in a thought, a tool title, a tool's input and its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_echoing_its_key_never_puts_it_in_the_document() {
    let n = AgentNode::start(&[]).await;
    let conv = n.conv(&[]).await;
    let key = format!(
        "sk-ant-planted-{:016x}",
        std::process::id() as u64 * 7919 + 3
    );
    let r = send_env(
        &n,
        &n.owner,
        &n.handle.ticket(),
        &conv,
        &[("ANTHROPIC_API_KEY", &key)],
    )
    .await;
    assert!(matches!(r, Ok(Response::Agent(_))), "{r:?}");
    let p = n.prompt(&conv, "leak ANTHROPIC_API_KEY; say done").await;
    let end = n.ended(&conv, &p).await;
    assert_eq!(end.status, sam_crdt::Status::Done, "{end:?}");
    let msgs = n.messages(&conv).await;
    let mut all = String::new();
    for m in &msgs {
        all.push_str(&m.text);
        all.push('\n');
        all.extend(m.reason.clone());
        if let Some(t) = &m.tool {
            for s in [&t.title, &t.input, &t.output] {
                all.push_str(s);
                all.push('\n');
            }
        }
    }
    assert!(!all.contains(&key), "the key is in the document:\n{all}");
    // Nor any piece of it long enough to matter (the split chunks were joined first).
    assert!(
        !all.contains(&key[..key.len() - 4]),
        "part of the key:\n{all}"
    );
    assert!(all.contains("my key is [redacted] (leaked)"), "{all}");
    assert!(all.contains("thinking about [redacted]"), "{all}");
    assert!(all.contains("x-api-key: [redacted]"), "{all}");
    assert!(all.contains("ANTHROPIC_API_KEY=[redacted]"), "{all}");
    let hits = grep_dir(n.dir.path(), key.as_bytes());
    assert!(hits.is_empty(), "the key is on disk: {hits:?}");
}

/// Another user of the host must not read conversations, keys or reach the credential
/// sockets. Before, the node's folders were made with the umask (0755).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_home_documents_and_sockets_are_private() {
    let n = AgentNode::start(&[]).await;
    let conv = n.conv(&["say hi"]).await;
    let home = n.dir.path().join("node");
    let docs = home.join("docs");
    // The document is written (snapshot or log) by now.
    let start = std::time::Instant::now();
    let files = loop {
        let files: Vec<_> = std::fs::read_dir(&docs)
            .expect("docs")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&conv))
            })
            .collect();
        if !files.is_empty() {
            break files;
        }
        assert!(start.elapsed() < GUARD, "no document file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(mode(&home), 0o700, "node home");
    assert_eq!(mode(&docs), 0o700, "docs");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&home.join("node.addr")), 0o600);
    // The credential sockets live in a run folder only the node's user can enter.
    let run = home.join("run");
    n.node()
        .workspaces()
        .broker()
        .ensure_socket(&run, "permtest");
    assert!(run.join("permtest").join("cred.sock").exists());
    assert_eq!(mode(&run), 0o700, "run folder");
    n.node().workspaces().broker().stop_socket("permtest");

    // A client's replicas: the same store, the same modes.
    let client_home = tempfile::tempdir().expect("tempdir");
    let paths = sam_client::ClientPaths::new(client_home.path().join("sam"));
    let mut replicas = sam_client::docs::Replicas::open(&paths).expect("replicas");
    let mut c = util::new_conv(&n.node_key.node_id().to_string(), &n.owner_id());
    replicas.save(&mut c).expect("save");
    assert_eq!(mode(&paths.docs()), 0o700);
    for e in std::fs::read_dir(paths.docs()).expect("ls").flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
}

/// Before, a collaborator's conversation-level `ANTHROPIC_BASE_URL` was laid over the
/// owner's workspace-level key: the agent sent the owner's key to the collaborator's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peers_base_url_never_carries_another_peers_key() {
    let n = AgentNode::start(&[]).await;
    let conv = n.conv(&[]).await;
    let workspace = n
        .node()
        .docs()
        .read(&conv, |c| c.workspace().id)
        .await
        .expect("read");
    let (ep, owner) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("owner");
    owner
        .request(Request::Agent(AgentRequest::Credentials {
            conv: None,
            workspace: Some(workspace),
            credentials: Credentials {
                env: vec![("ANTHROPIC_API_KEY".into(), "sk-owner-key-0123".into())],
            },
        }))
        .await
        .expect("owner's key");
    owner.close();
    ep.close().await;
    let collab = SecretKey::generate();
    let cap = sam_protocol::capability::Capability::new(
        n.owner.node_id(),
        n.node_key.node_id(),
        sam_protocol::capability::Grantee::Key(collab.node_id()),
        Role::Collaborator,
        None,
        harness::now(),
        Some(3600),
    )
    .sign(&n.owner, None);
    let mut ticket = n.handle.ticket();
    ticket.capability = Some(cap);
    let r = send_env(
        &n,
        &collab,
        &ticket,
        &conv,
        &[("ANTHROPIC_BASE_URL", "http://attacker.invalid")],
    )
    .await;
    assert!(matches!(r, Ok(Response::Agent(_))), "{r:?}");
    let p = n
        .prompt(&conv, "env ANTHROPIC_BASE_URL; env ANTHROPIC_API_KEY")
        .await;
    n.ended(&conv, &p).await;
    let text = util::agent_text(&n.messages(&conv).await);
    assert!(text.contains("ANTHROPIC_BASE_URL is set"), "{text}");
    assert!(
        text.contains("ANTHROPIC_API_KEY is not set"),
        "the owner's key went with the collaborator's base URL: {text}"
    );
}
