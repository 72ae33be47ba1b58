//! The PR step in a real Docker workspace: the repo is cloned in the container with
//! brokered credentials, a file is written into it (standing in for the agent), and the
//! node commits, pushes through the container's credential helper (→ node → client) and
//! opens the PR on the fake GitHub API. Needs dockerd and the `sam-base:1` image.

use crate::support::git_http;
use crate::support::github;
use crate::support::harness;

use std::process::Command;
use std::time::Duration;

use sam_crdt::{Conversation, MessageId, NewConversation};
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::SecretKey;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::pr::{GitIdentity, PrOutcome, PrRequest, PrResponse, PrSettings, branch_for};
use sam_protocol::workspace::{
    CreateWorkspace, GitCredential, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
};

const TOKEN: &str = "ghp_PLANTED_docker_token_987654";
const PASSWORD: &str = "docker-git-PLANTED-pw";

async fn ws(c: &sam_client::conn::NodeClient, r: WorkspaceRequest) -> WorkspaceResponse {
    match c.request(Request::Workspace(r)).await.expect("ws request") {
        Response::Workspace(w) => w,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_workspace_commits_pushes_with_the_container_helper_and_opens_the_pr() {
    let docker_ok = Command::new("docker").arg("info").output();
    assert!(
        docker_ok.is_ok_and(|o| o.status.success()),
        "dockerd is not reachable: this test needs a running Docker engine"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse().expect("addr");
    let handle = Node::start_with_agents(
        NodePaths::new(dir.path()),
        cfg,
        node_key.clone(),
        sam_node::agent::AgentsConfig::default(),
    )
    .await
    .expect("node");
    let repos = tempfile::tempdir().expect("tempdir");
    git_http::make_repo(repos.path());
    let base = git_http::git_server_on(
        git_http::bridge_ip(),
        repos.path().to_path_buf(),
        sam_node::pr::git::base64(format!("sam:{PASSWORD}").as_bytes()),
    )
    .await;
    let remote = format!("{base}/o/r.git");
    let gh = github::FakeGitHub::start(TOKEN).await;
    gh.add_repo("o/r");
    let (_ep, c) = harness::client(&owner, &handle.ticket())
        .await
        .expect("client");
    // A client answering the broker, as `sam` does.
    let (_ep2, c2) = harness::client(&owner, &handle.ticket())
        .await
        .expect("client");
    tokio::spawn(async move {
        loop {
            let WorkspaceResponse::Credential(req) =
                ws(&c2, WorkspaceRequest::WaitCredential).await
            else {
                return;
            };
            let Some(req) = req else { continue };
            let answer = Some(GitCredential {
                username: "sam".into(),
                password: PASSWORD.into(),
            });
            ws(
                &c2,
                WorkspaceRequest::AnswerCredential {
                    request: req.id,
                    answer,
                },
            )
            .await;
        }
    });
    let WorkspaceResponse::Info(info) = ws(
        &c,
        WorkspaceRequest::Create(CreateWorkspace {
            repo: Some(remote.clone()),
            branch: Some("main".into()),
            lightweight: true,
            name: None,
        }),
    )
    .await
    else {
        panic!("create")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let info = loop {
        let WorkspaceResponse::Info(i) = ws(
            &c,
            WorkspaceRequest::Get {
                id: info.id.clone(),
            },
        )
        .await
        else {
            panic!("get")
        };
        if !matches!(i.status, WorkspaceStatus::Creating) {
            break i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workspace still creating"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(matches!(info.status, WorkspaceStatus::Ready), "{info:?}");
    let container = handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("container");
    // The agent's work, written in the container.
    let out = Command::new("docker")
        .args([
            "exec",
            "-u",
            &container.user,
            "-w",
            &container.root,
            &container.container_id,
        ])
        .args(["sh", "-c", "echo from-the-container > feature.txt"])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let author = owner.node_id().to_string();
    let conv = Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: "docker idea".into(),
            agent: "custom".into(),
            workspace_node: node_key.node_id().to_string(),
            workspace_id: info.id.clone(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )
    .expect("conv");
    let conv_id = conv.id();
    handle.node.docs().insert(conv).await.expect("insert");
    let idea = "Add a feature file";
    let settings = PrSettings {
        repo_url: remote,
        base: "main".into(),
        branch: branch_for(idea),
        idea: idea.into(),
        identity: GitIdentity {
            name: "Grace Hopper".into(),
            email: "grace@example.invalid".into(),
        },
        token: TOKEN.into(),
        api: Some(gh.url.clone()),
    };
    let r = c
        .request(Request::Pr(PrRequest::Run {
            conv: conv_id.clone(),
            settings: Some(settings),
        }))
        .await
        .expect("pr");
    let Response::Pr(PrResponse::Outcome(o)) = r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            &o,
            PrOutcome::Opened {
                number: 1,
                reused: false,
                ..
            }
        ),
        "{o:?}"
    );
    let log = git_http::git(
        &repos.path().join("o/r.git"),
        &["log", "--format=%an %s", "sam/add-a-feature-file"],
    );
    assert!(log.starts_with("Grace Hopper Add a feature file"), "{log}");
    assert_eq!(gh.pulls("o/r")[0].head, "sam/add-a-feature-file");
    gh.assert_clean();
    // Clean-up: nobody else holds the conversation, so the graceful teardown needs force.
    ws(
        &c,
        WorkspaceRequest::Teardown {
            id: info.id,
            force: true,
        },
    )
    .await;
}
