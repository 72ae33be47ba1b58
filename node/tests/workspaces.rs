//! Workspaces on a real dockerd: a real node on loopback, real clients, real
//! containers (created and removed by the tests), real git over HTTP served from
//! this process on the Docker bridge. dockerd must be running and the base image
//! built (scripts/test.sh does both); when it is not, these tests FAIL.

use crate::support::git_http::{self, git};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use iroh::Endpoint;
use sam_client::conn::{ConnectError, NodeClient};
use sam_node::workspace::{DEFAULT_BASE_IMAGE, label};
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::capability::{Capability, Grantee};
use sam_protocol::ctl::{ErrorCode, Request, Response};
use sam_protocol::workspace::{
    CreateWorkspace, GitCredential, WorkspaceInfo, WorkspaceRequest, WorkspaceResponse,
    WorkspaceStatus,
};
use sam_protocol::{Role, SecretKey, Ticket};

// ---------- harness ----------

struct TestNode {
    dir: tempfile::TempDir,
    owner: SecretKey,
    node_key: SecretKey,
    handle: NodeHandle,
}

async fn start_node(
    dir: tempfile::TempDir,
    node_key: SecretKey,
    owner: SecretKey,
    docker_host: Option<&str>,
) -> TestNode {
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse().expect("addr");
    cfg.docker_host = docker_host.map(str::to_string);
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, node_key.clone())
        .await
        .expect("node starts");
    TestNode {
        dir,
        owner,
        node_key,
        handle,
    }
}

impl TestNode {
    async fn start() -> Self {
        require_docker();
        start_node(
            tempfile::tempdir().expect("tempdir"),
            SecretKey::generate(),
            SecretKey::generate(),
            None,
        )
        .await
    }

    fn ticket_for(&self, key: &SecretKey, role: Role) -> Ticket {
        let cap = Capability::new(
            self.owner.node_id(),
            self.node_key.node_id(),
            Grantee::Key(key.node_id()),
            role,
            None,
            sam_node::now_secs(),
            Some(3600),
        )
        .sign(&self.owner, None);
        let mut t = self.handle.ticket();
        t.capability = Some(cap);
        t
    }

    async fn owner(&self) -> (Endpoint, NodeClient) {
        client(&self.owner, &self.handle.ticket()).await
    }
}

async fn client(key: &SecretKey, ticket: &Ticket) -> (Endpoint, NodeClient) {
    let ep = sam_client::endpoint::bind(key, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind client");
    let c = NodeClient::connect(&ep, ticket).await.expect("connects");
    (ep, c)
}

/// dockerd must answer and the base image must exist: fail loudly, never skip.
fn require_docker() {
    let info = Command::new("docker").arg("info").output();
    assert!(
        info.as_ref().is_ok_and(|o| o.status.success()),
        "dockerd is not reachable: these tests need a running Docker engine (scripts/test.sh starts one: `dockerd &`)"
    );
    let image = Command::new("docker")
        .args(["image", "inspect", DEFAULT_BASE_IMAGE])
        .output();
    assert!(
        image.as_ref().is_ok_and(|o| o.status.success()),
        "base image {DEFAULT_BASE_IMAGE} is missing: run bootstrap/images/build-base.sh (scripts/test.sh does)"
    );
}

async fn ws(c: &NodeClient, r: WorkspaceRequest) -> Result<WorkspaceResponse, ConnectError> {
    match c.request(Request::Workspace(r)).await? {
        Response::Workspace(w) => Ok(w),
        other => panic!("not a workspace answer: {other:?}"),
    }
}

async fn create(c: &NodeClient, spec: CreateWorkspace) -> WorkspaceInfo {
    match ws(c, WorkspaceRequest::Create(spec)).await.expect("create") {
        WorkspaceResponse::Info(i) => i,
        other => panic!("{other:?}"),
    }
}

async fn get(c: &NodeClient, id: &str) -> Result<WorkspaceInfo, ConnectError> {
    match ws(c, WorkspaceRequest::Get { id: id.into() }).await? {
        WorkspaceResponse::Info(i) => Ok(i),
        other => panic!("{other:?}"),
    }
}

/// Follows the log until the workspace is no longer creating; returns (info, log).
async fn wait_done(c: &NodeClient, id: &str) -> (WorkspaceInfo, Vec<String>) {
    let mut from = 0;
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workspace {id} still creating after 10 min; log: {log:#?}"
        );
        let WorkspaceResponse::Logs(l) = ws(
            c,
            WorkspaceRequest::Logs {
                id: id.into(),
                from,
            },
        )
        .await
        .expect("logs") else {
            panic!("not logs")
        };
        from = l.next;
        log.extend(l.lines);
        if !matches!(l.status, WorkspaceStatus::Creating) {
            return (get(c, id).await.expect("get"), log);
        }
    }
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker cli");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn in_container(container: &str, user: &str, script: &str) -> String {
    let (ok, out) = docker(&["exec", "-u", user, container, "sh", "-c", script]);
    assert!(ok, "`{script}` failed in {container}: {out}");
    out.trim().to_string()
}

fn error_of<T: std::fmt::Debug>(r: Result<T, ConnectError>) -> sam_protocol::ctl::ErrorBody {
    match r {
        Err(ConnectError::Remote(e)) => e,
        other => panic!("expected a node error, got {other:?}"),
    }
}

// ---------- a git server on the Docker bridge ----------

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A bare repo `<root>/repo.git` with branch `main` (README) and more branches made by `extra`.
fn make_repo(root: &Path, extra: impl FnOnce(&Path)) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    write(&work, "README.md", "hello from the test repo\n");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "first"]);
    extra(&work);
    git(root, &["clone", "-q", "--bare", "work", "repo.git"]);
}

struct GitServer {
    url: String,
    hits_with_auth: Arc<AtomicUsize>,
}

/// `git http-backend` on the Docker bridge (support/git_http.rs); with `auth`, Basic
/// auth is required.
async fn git_server(root: PathBuf, auth: Option<&'static str>) -> GitServer {
    let s = git_http::serve(git_http::bridge_ip(), root, auth.map(String::from)).await;
    GitServer {
        url: format!("{}/repo.git", s.base),
        hits_with_auth: s.hits_with_auth,
    }
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightweight_ready_killed_recreated_survives_restart_removed() {
    let n = TestNode::start().await;
    let repo_dir = tempfile::tempdir().expect("tempdir");
    make_repo(repo_dir.path(), |w| {
        git(w, &["checkout", "-qb", "feature"]);
        write(w, "FEATURE", "on the branch\n");
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "feature"]);
    });
    let server = git_server(repo_dir.path().to_path_buf(), None).await;
    let (_ep, c) = n.owner().await;
    let info = create(
        &c,
        CreateWorkspace {
            repo: Some(server.url.clone()),
            branch: Some("feature".into()),
            lightweight: true,
            name: Some("light".into()),
        },
    )
    .await;
    assert_eq!(info.status, WorkspaceStatus::Creating);
    let (info, log) = wait_done(&c, &info.id).await;
    assert_eq!(info.status, WorkspaceStatus::Ready, "log: {log:#?}");
    assert!(log.iter().any(|l| l.contains("git clone")), "{log:#?}");
    assert_eq!(info.root, "/workspaces/light");
    assert_eq!(info.user, "sam");

    let ws_ref = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("container ref");
    assert_eq!(ws_ref.root, "/workspaces/light");
    let cid = ws_ref.container_id.clone();
    assert_eq!(
        in_container(&cid, "sam", "cat /workspaces/light/FEATURE"),
        "on the branch"
    );
    assert_eq!(
        in_container(
            &cid,
            "sam",
            "cd /workspaces/light && git branch --show-current"
        ),
        "feature"
    );
    let (_, labels) = docker(&[
        "inspect",
        "-f",
        &format!("{{{{index .Config.Labels \"{}\"}}}}", label::NODE),
        &cid,
    ]);
    assert_eq!(labels.trim(), n.node_key.node_id().to_string());

    // Killed behind SAM's back: Stopped, and not handed to terminals.
    assert!(docker(&["kill", &cid]).0);
    assert_eq!(
        get(&c, &info.id).await.expect("get").status,
        WorkspaceStatus::Stopped
    );
    let WorkspaceResponse::List(list) = ws(&c, WorkspaceRequest::List).await.expect("list") else {
        panic!()
    };
    assert_eq!(
        list.iter()
            .find(|w| w.id == info.id)
            .expect("listed")
            .status,
        WorkspaceStatus::Stopped
    );
    let err = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect_err("stopped");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(
        n.handle
            .node
            .workspaces()
            .container("nope")
            .await
            .expect_err("unknown")
            .code,
        ErrorCode::NotFound
    );

    // Create with the same name brings it back, with the checkout intact.
    let again = create(
        &c,
        CreateWorkspace {
            repo: Some(server.url.clone()),
            branch: None,
            lightweight: true,
            name: Some("light".into()),
        },
    )
    .await;
    assert_eq!(again.id, info.id);
    let (again, _) = wait_done(&c, &info.id).await;
    assert_eq!(again.status, WorkspaceStatus::Ready);
    let cid = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("running again")
        .container_id;
    assert_eq!(
        in_container(&cid, "sam", "cat /workspaces/light/README.md"),
        "hello from the test repo"
    );

    // Removed behind SAM's back: Stopped; an explicit recreate builds it anew.
    assert!(docker(&["rm", "-f", &cid]).0);
    assert_eq!(
        get(&c, &info.id).await.expect("get").status,
        WorkspaceStatus::Stopped
    );
    ws(
        &c,
        WorkspaceRequest::Recreate {
            id: info.id.clone(),
        },
    )
    .await
    .expect("recreate");
    let (rebuilt, log) = wait_done(&c, &info.id).await;
    assert_eq!(rebuilt.status, WorkspaceStatus::Ready, "{log:#?}");

    // A restarted node finds it again by label.
    drop(c);
    let TestNode {
        dir,
        owner,
        node_key,
        handle,
    } = n;
    handle.shutdown().await.expect("shutdown");
    let n = start_node(dir, node_key, owner, None).await;
    let (_ep2, c) = n.owner().await;
    let found = get(&c, &info.id).await.expect("found after restart");
    assert_eq!(found.status, WorkspaceStatus::Ready);
    assert_eq!(found.name, "light");
    assert_eq!(found.repo.as_deref(), Some(server.url.as_str()));
    let cid = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("ref")
        .container_id;

    // rm deletes the container.
    let WorkspaceResponse::Removed { id } = ws(
        &c,
        WorkspaceRequest::Remove {
            id: info.id.clone(),
        },
    )
    .await
    .expect("rm") else {
        panic!()
    };
    assert_eq!(id, info.id);
    assert!(!docker(&["inspect", &cid]).0, "container still there");
    assert_eq!(error_of(get(&c, &info.id).await).code, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repo_clones_with_credentials_brokered_from_the_client() {
    let n = TestNode::start().await;
    let repo_dir = tempfile::tempdir().expect("tempdir");
    make_repo(repo_dir.path(), |_| {});
    // base64("sam:s3cret")
    let server = git_server(repo_dir.path().to_path_buf(), Some("c2FtOnMzY3JldA==")).await;
    let (mut _ep, mut c) = n.owner().await;
    let info = create(
        &c,
        CreateWorkspace {
            repo: Some(server.url.clone()),
            branch: None,
            lightweight: true,
            name: None,
        },
    )
    .await;
    // The client answers the node's credential request, as `sam workspace create` does. A
    // control connection lost during the long poll (seen once in a loaded CI run) is dialled
    // again: an unclaimed request waits for the next poll, a claimed one is handed out again
    // after its lease.
    let mut tries = 0;
    let req = loop {
        tries += 1;
        match ws(&c, WorkspaceRequest::WaitCredential).await {
            Ok(WorkspaceResponse::Credential(Some(req))) => break req,
            Ok(WorkspaceResponse::Credential(None)) if tries < 4 => {}
            Err(ConnectError::Protocol(e)) if e.contains("connection lost") && tries < 4 => {
                eprintln!("control connection lost during the long poll ({e}); dialling again");
                (_ep, c) = n.owner().await;
            }
            other => panic!("no credential request came: {other:?}"),
        }
    };
    assert_eq!(req.workspace, info.id);
    assert_eq!(req.protocol, "http");
    assert!(
        server.url.contains(&req.host),
        "{} vs {}",
        req.host,
        server.url
    );
    let answer = GitCredential {
        username: "sam".into(),
        password: "s3cret".into(),
    };
    ws(
        &c,
        WorkspaceRequest::AnswerCredential {
            request: req.id,
            answer: Some(answer),
        },
    )
    .await
    .expect("answer");
    let (info, log) = wait_done(&c, &info.id).await;
    assert_eq!(info.status, WorkspaceStatus::Ready, "{log:#?}");
    assert!(server.hits_with_auth.load(Ordering::Relaxed) > 0);
    let cid = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("ref")
        .container_id;
    assert_eq!(
        in_container(&cid, "sam", &format!("cat {}/README.md", info.root)),
        "hello from the test repo"
    );
    // Nothing was stored: no credential file in the container, none on the node.
    let (ok, _) = docker(&[
        "exec",
        &cid,
        "sh",
        "-c",
        "grep -rs s3cret /home/sam /root /etc/gitconfig",
    ]);
    assert!(!ok, "the secret was written in the container");
    ws(
        &c,
        WorkspaceRequest::Remove {
            id: info.id.clone(),
        },
    )
    .await
    .expect("rm");
}

/// `sam workspace rm` while the devcontainer image is still building: the creation
/// pipeline stops, and nothing of the workspace (container, image) shows up afterwards
/// (before the fix, the build finished and started the devcontainer after the removal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_workspace_while_its_image_builds_leaves_nothing_behind() {
    let n = TestNode::start().await;
    let repo_dir = tempfile::tempdir().expect("tempdir");
    // A build step that is never cached, so the build is still running when we remove.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    make_repo(repo_dir.path(), |w| {
        write(
            w,
            ".devcontainer/devcontainer.json",
            r#"{ "build": { "dockerfile": "Dockerfile" } }"#,
        );
        write(
            w,
            ".devcontainer/Dockerfile",
            &format!("FROM {DEFAULT_BASE_IMAGE}\nRUN sleep 6 && echo {nonce} > /slow\n"),
        );
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "slow devcontainer"]);
    });
    let server = git_server(repo_dir.path().to_path_buf(), None).await;
    let (_ep, c) = n.owner().await;
    let info = create(
        &c,
        CreateWorkspace {
            repo: Some(server.url.clone()),
            branch: None,
            lightweight: false,
            name: Some("slow".into()),
        },
    )
    .await;

    // Follow the log until the image build has started.
    let mut from = 0;
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !log
        .iter()
        .any(|l: &String| l.contains("devcontainer found"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no image build: {log:#?}"
        );
        let WorkspaceResponse::Logs(l) = ws(
            &c,
            WorkspaceRequest::Logs {
                id: info.id.clone(),
                from,
            },
        )
        .await
        .expect("logs") else {
            panic!("not logs")
        };
        assert!(
            matches!(l.status, WorkspaceStatus::Creating),
            "finished before it could be removed: {:?} {log:#?}",
            l.status
        );
        from = l.next;
        log.extend(l.lines);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let WorkspaceResponse::Removed { id } = ws(
        &c,
        WorkspaceRequest::Remove {
            id: info.id.clone(),
        },
    )
    .await
    .expect("rm while creating") else {
        panic!("not removed")
    };
    assert_eq!(id, info.id);
    assert_eq!(error_of(get(&c, &info.id).await).code, ErrorCode::NotFound);

    // Past the end of the build step and the sweep after it: nothing came back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let label = format!("label=sam.workspace={}", info.id);
    let (_, containers) = docker(&["ps", "-aq", "--filter", &label]);
    assert!(
        containers.trim().is_empty(),
        "containers of the removed workspace: {containers}"
    );
    let (_, images) = docker(&["images", "-q", &format!("sam-ws-{}", info.id)]);
    assert!(
        images.trim().is_empty(),
        "images of the removed workspace: {images}"
    );
    assert_eq!(error_of(get(&c, &info.id).await).code, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devcontainer_dockerfile_feature_env_post_create_and_bad_config() {
    let n = TestNode::start().await;
    let repo_dir = tempfile::tempdir().expect("tempdir");
    make_repo(repo_dir.path(), |w| {
        write(
            w,
            ".devcontainer/devcontainer.json",
            r#"{
            // JSON with comments
            "build": { "dockerfile": "Dockerfile", "args": { "MARK": "built-by-arg" } },
            "features": { "./features/hello": { "greeting": "hi there" } },
            "containerEnv": { "FOO": "bar" },
            "remoteUser": "sam",
            "postCreateCommand": "echo \"$FOO\" > /tmp/post && pwd >> /tmp/post",
            "forwardPorts": [3000, "db:5432"], /* trailing comma */
        }"#,
        );
        write(
            w,
            ".devcontainer/Dockerfile",
            &format!("FROM {DEFAULT_BASE_IMAGE}\nARG MARK\nRUN echo \"$MARK\" > /built\n"),
        );
        write(
            w,
            ".devcontainer/features/hello/devcontainer-feature.json",
            r#"{ "id": "hello", "options": { "greeting": { "type": "string", "default": "hello" }, "who": { "type": "string", "default": "world" } } }"#,
        );
        write(
            w,
            ".devcontainer/features/hello/install.sh",
            "#!/bin/sh\nset -e\necho \"$GREETING $WHO\" > /etc/hello\n",
        );
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "devcontainer"]);
        git(w, &["checkout", "-qb", "image-only", "main"]);
        git(w, &["rm", "-rq", ".devcontainer"]);
        write(
            w,
            ".devcontainer.json",
            &format!(
                "{{ \"image\": \"{DEFAULT_BASE_IMAGE}\", \"containerEnv\": {{ \"ONLY\": \"image\" }} }}"
            ),
        );
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "image only"]);
        git(w, &["checkout", "-qb", "bad", "main"]);
        git(w, &["rm", "-rq", ".devcontainer"]);
        write(w, ".devcontainer.json", "{ \"image\": ");
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "bad"]);
        git(w, &["checkout", "-qb", "oci", "main"]);
        git(w, &["rm", "-rq", ".devcontainer"]);
        write(
            w,
            ".devcontainer.json",
            r#"{ "image": "x", "features": { "ghcr.io/devcontainers/features/node:1": {} } }"#,
        );
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "oci"]);
    });
    let server = git_server(repo_dir.path().to_path_buf(), None).await;
    let (_ep, c) = n.owner().await;
    let spec = |branch: &str, name: &str| CreateWorkspace {
        repo: Some(server.url.clone()),
        branch: Some(branch.into()),
        lightweight: false,
        name: Some(name.into()),
    };

    let info = create(&c, spec("main", "dc")).await;
    let (info, log) = wait_done(&c, &info.id).await;
    assert_eq!(info.status, WorkspaceStatus::Ready, "{log:#?}");
    assert_eq!(info.forward_ports, [3000, 5432]);
    assert_eq!(info.user, "sam");
    assert!(
        log.iter().any(|l| l.contains("devcontainer found")),
        "{log:#?}"
    );
    let r = n
        .handle
        .node
        .workspaces()
        .container(&info.id)
        .await
        .expect("ref");
    assert_eq!(r.user, "sam");
    assert_eq!(
        in_container(&r.container_id, "sam", "cat /built"),
        "built-by-arg"
    );
    assert_eq!(
        in_container(&r.container_id, "sam", "cat /etc/hello"),
        "hi there world"
    );
    assert_eq!(in_container(&r.container_id, "sam", "echo $FOO"), "bar");
    assert_eq!(
        in_container(&r.container_id, "sam", "cat /tmp/post"),
        "bar\n/workspaces/dc"
    );
    assert_eq!(
        in_container(
            &r.container_id,
            "sam",
            "cd /workspaces/dc && git log --format=%s -1"
        ),
        "devcontainer"
    );
    assert_eq!(
        in_container(
            &r.container_id,
            "sam",
            "stat -c %U /workspaces/dc/README.md"
        ),
        "sam"
    );
    let (_, count) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=sam.workspace={}", info.id),
    ]);
    assert_eq!(
        count.lines().count(),
        1,
        "the clone container was not removed"
    );

    let img = create(&c, spec("image-only", "img")).await;
    let (img, log) = wait_done(&c, &img.id).await;
    assert_eq!(img.status, WorkspaceStatus::Ready, "{log:#?}");
    let r2 = n
        .handle
        .node
        .workspaces()
        .container(&img.id)
        .await
        .expect("ref");
    assert_eq!(
        in_container(&r2.container_id, "root", "echo $ONLY"),
        "image"
    );

    for (branch, needle) in [
        ("bad", "devcontainer.json is not valid JSON"),
        ("oci", "OCI features are not supported yet"),
    ] {
        let bad = create(&c, spec(branch, branch)).await;
        let (bad, _) = wait_done(&c, &bad.id).await;
        match &bad.status {
            WorkspaceStatus::Failed { reason, log_tail } => {
                assert!(reason.contains(needle), "{reason}");
                assert!(log_tail.contains(needle), "{log_tail}");
            }
            s => panic!("expected Failed, got {s:?}"),
        }
        assert_eq!(
            n.handle
                .node
                .workspaces()
                .container(&bad.id)
                .await
                .expect_err("failed")
                .code,
            ErrorCode::Unavailable
        );
        ws(&c, WorkspaceRequest::Remove { id: bad.id.clone() })
            .await
            .expect("rm");
    }
    for id in [&info.id, &img.id] {
        ws(&c, WorkspaceRequest::Remove { id: id.clone() })
            .await
            .expect("rm");
    }
    // Remove also deletes the images built for the devcontainer.
    let (still, _) = docker(&["image", "inspect", &format!("sam-ws-{}:latest", info.id)]);
    assert!(!still, "the devcontainer image was not removed");
}

#[tokio::test]
async fn missing_docker_is_a_clear_error_and_the_node_still_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("unix://{}", dir.path().join("no-docker.sock").display());
    let n = start_node(
        dir,
        SecretKey::generate(),
        SecretKey::generate(),
        Some(&dead),
    )
    .await;
    let (_ep, c) = n.owner().await;
    let e = error_of(
        ws(
            &c,
            WorkspaceRequest::Create(CreateWorkspace {
                repo: None,
                branch: None,
                lightweight: true,
                name: None,
            }),
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(
        e.message.contains("cannot reach dockerd at"),
        "{}",
        e.message
    );
    assert!(e.message.contains("no-docker.sock"), "{}", e.message);
    assert!(e.message.contains("is dockerd running?"), "{}", e.message);
    let e = error_of(ws(&c, WorkspaceRequest::List).await);
    assert!(e.message.contains("cannot reach dockerd"), "{}", e.message);
    assert_eq!(
        c.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    assert!(matches!(
        c.request(Request::Status).await.expect("status"),
        Response::Status(_)
    ));
}

#[tokio::test]
async fn viewer_cannot_create_and_collaborator_cannot_remove() {
    let n = TestNode::start().await;
    let viewer = SecretKey::generate();
    let (_e1, v) = client(&viewer, &n.ticket_for(&viewer, Role::Viewer)).await;
    let e = error_of(
        ws(
            &v,
            WorkspaceRequest::Create(CreateWorkspace {
                repo: None,
                branch: None,
                lightweight: true,
                name: None,
            }),
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(matches!(
        ws(&v, WorkspaceRequest::List).await,
        Ok(WorkspaceResponse::List(_))
    ));
    assert_eq!(
        error_of(ws(&v, WorkspaceRequest::WaitCredential).await).code,
        ErrorCode::Forbidden
    );

    let collab = SecretKey::generate();
    let (_e2, col) = client(&collab, &n.ticket_for(&collab, Role::Collaborator)).await;
    let info = create(
        &col,
        CreateWorkspace {
            repo: None,
            branch: None,
            lightweight: true,
            name: None,
        },
    )
    .await;
    let (info, log) = wait_done(&col, &info.id).await;
    assert_eq!(info.status, WorkspaceStatus::Ready, "{log:#?}");
    let e = error_of(
        ws(
            &col,
            WorkspaceRequest::Remove {
                id: info.id.clone(),
            },
        )
        .await,
    );
    assert_eq!(e.code, ErrorCode::Forbidden);
    let (_e3, owner) = n.owner().await;
    ws(
        &owner,
        WorkspaceRequest::Remove {
            id: info.id.clone(),
        },
    )
    .await
    .expect("owner removes");
}
