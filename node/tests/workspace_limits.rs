//! Workspace containers get the node config's pid, memory and disk limits (a real node, a
//! real dockerd, the base image; these tests FAIL when dockerd is missing).

use std::process::Command;
use std::time::Duration;

use sam_client::conn::NodeClient;
use sam_node::workspace::{DEFAULT_BASE_IMAGE, label};
use sam_node::{Node, NodeConfig, NodePaths};
use sam_protocol::SecretKey;
use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{
    CreateWorkspace, WorkspaceInfo, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
};

fn require_docker() {
    let info = Command::new("docker").arg("info").output();
    assert!(
        info.as_ref().is_ok_and(|o| o.status.success()),
        "dockerd is not reachable: these tests need a running Docker engine"
    );
    let image = Command::new("docker")
        .args(["image", "inspect", DEFAULT_BASE_IMAGE])
        .output();
    assert!(
        image.as_ref().is_ok_and(|o| o.status.success()),
        "base image {DEFAULT_BASE_IMAGE} is missing: run bootstrap/images/build-base.sh"
    );
}

async fn ws(c: &NodeClient, r: WorkspaceRequest) -> WorkspaceResponse {
    match c.request(Request::Workspace(r)).await.expect("request") {
        Response::Workspace(w) => w,
        other => panic!("not a workspace answer: {other:?}"),
    }
}

/// Waits until the workspace is no longer creating; returns its info and log.
async fn wait_ready(c: &NodeClient, id: &str) -> (WorkspaceInfo, Vec<String>) {
    let mut from = 0;
    let mut log = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still creating: {log:#?}"
        );
        let WorkspaceResponse::Logs(l) = ws(
            c,
            WorkspaceRequest::Logs {
                id: id.into(),
                from,
            },
        )
        .await
        else {
            panic!("not logs")
        };
        from = l.next;
        log.extend(l.lines);
        if !matches!(l.status, WorkspaceStatus::Creating) {
            let WorkspaceResponse::Info(i) = ws(c, WorkspaceRequest::Get { id: id.into() }).await
            else {
                panic!("not info")
            };
            return (i, log);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_containers_get_the_configured_limits_and_a_fork_bomb_is_stopped() {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = SecretKey::generate();
    let mut cfg = NodeConfig::new(owner.node_id());
    cfg.bind = "127.0.0.1:0".parse().expect("addr");
    cfg.workspace_pids_limit = Some(48);
    cfg.workspace_memory_mb = Some(300);
    cfg.workspace_disk_gb = Some(2);
    let handle = Node::start_with(NodePaths::new(dir.path()), cfg, SecretKey::generate())
        .await
        .expect("node starts");
    let ep = sam_client::endpoint::bind(&owner, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let c = NodeClient::connect(&ep, &handle.ticket())
        .await
        .expect("connect");
    let WorkspaceResponse::Info(info) = ws(
        &c,
        WorkspaceRequest::Create(CreateWorkspace {
            repo: None,
            branch: None,
            lightweight: true,
            name: Some("limits".into()),
        }),
    )
    .await
    else {
        panic!("not info")
    };
    let (ready, log) = wait_ready(&c, &info.id).await;
    assert_eq!(ready.status, WorkspaceStatus::Ready, "{log:#?}");

    // the container the node made, read back through the Docker API
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{}={}", label::WORKSPACE, info.id)],
    );
    let list = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list");
    let container = list
        .first()
        .and_then(|c| c.id.clone())
        .expect("the workspace's container");
    let inspect = docker
        .inspect_container(&container, None)
        .await
        .expect("inspect");
    let host = inspect.host_config.expect("host config");
    assert_eq!(host.pids_limit, Some(48));
    assert_eq!(host.memory, Some(300 << 20));
    assert_eq!(
        host.memory_swap,
        Some(300 << 20),
        "no swap beyond the limit"
    );
    // the disk limit is set, or the workspace's log says honestly it is not enforced here
    let disk = host
        .storage_opt
        .as_ref()
        .and_then(|o| o.get("size").cloned());
    let said = log
        .iter()
        .any(|l| l.contains("disk limit of 2 GiB NOT enforced"));
    assert!(
        disk.as_deref() == Some("2G") || (disk.is_none() && said),
        "disk: {disk:?}, log: {log:#?}"
    );

    // fork bomb-lite: 200 background processes in a container allowed 48
    let out = Command::new("docker")
        .args([
            "exec",
            &container,
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; echo all-200-started",
        ])
        .output()
        .expect("docker exec");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("all-200-started"),
        "200 processes started in a container limited to 48: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("fork"),
        "the shell should have been refused a fork: {text}"
    );
    // the bomb's processes end (5 s), and the workspace is usable again
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ok = Command::new("docker")
            .args(["exec", &container, "true"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container stayed full"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // gone with its workspace
    let WorkspaceResponse::Removed { .. } = ws(
        &c,
        WorkspaceRequest::Teardown {
            id: info.id.clone(),
            force: true,
        },
    )
    .await
    else {
        panic!("not removed")
    };
    c.close();
    ep.close().await;
    let _ = handle.shutdown().await;
}
