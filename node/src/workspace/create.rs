//! The creation pipeline, run as one task per workspace.
//!
//! 1. A container from the base image (user `sam`), labelled, with the credential
//!    folder mounted at `/run/sam`; the repo is cloned in it as `sam`.
//! 2. Lightweight, or no devcontainer config in the repo: done.
//! 3. Devcontainer: the clone is read back as a tar (no copy on the node's disk), the
//!    image is built with it as context (`image`, or `build.dockerfile`, then local
//!    features as extra layers), a new container is started from it, the repo tar is
//!    copied in, `postCreateCommand` runs, and the clone container is removed.
//! 4. The marker `/var/lib/sam/ready` is written: from then on the workspace is ready,
//!    also for a node that restarts and finds it by label.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use sam_protocol::ctl::ErrorBody;
use sam_protocol::workspace::{CreateWorkspace, WorkspaceInfo, WorkspaceStatus};
use tracing::{info, warn};

use super::devcontainer::{self, DevContainer};
use super::docker::{ExecOutput, docker_err, exec, has_ready_marker, node_containers};
use super::state::Entry;
use super::{READY_MARKER, Shared, WORKSPACES_DIR, credentials, label};

/// Largest repo copied from the clone container into a devcontainer build.
const MAX_REPO_TAR: usize = 512 * 1024 * 1024;

type Failure = String;

/// Runs the pipeline of workspace `id` in the background; its handle goes into the
/// workspace's entry, so that removing the workspace can abort it (`Workspaces::remove`).
pub fn spawn(shared: Arc<Shared>, id: String) {
    let entry = (shared.clone(), id.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        match run(&shared, &id).await {
            Ok(()) => {
                shared.state.log(
                    &id,
                    &format!(
                        "workspace ready in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                shared.state.set_status(&id, WorkspaceStatus::Ready);
                info!(workspace = %id, secs = started.elapsed().as_secs_f64(), "workspace ready");
            }
            Err(reason) => {
                warn!(workspace = %id, %reason, "workspace failed");
                shared.state.fail(&id, &reason);
            }
        }
    });
    let (shared, id) = entry;
    // The entry is there: the caller made it (or found it) just before.
    let _ = shared.state.with(&id, |e| e.task = Some(task));
}

async fn run(shared: &Shared, id: &str) -> Result<(), Failure> {
    let docker = shared.client().await.map_err(|e| e.message)?;
    let (info, spec) = shared
        .state
        .with(id, |e| (e.info.clone(), e.spec.clone()))
        .map_err(|e| e.message)?;
    let spec = spec.ok_or("this workspace has no recipe to build it from")?;
    let log = |t: &str| shared.state.log(id, t);
    let base = &shared.cfg.base_image;
    match docker.inspect_image(base).await {
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(format!(
                "base image {base} is not on this node: build it with bootstrap/images/build-base.sh"
            ));
        }
        Err(e) => return Err(docker_err(&shared.docker, e, "inspect the base image").message),
    }
    shared.broker.ensure_socket(&shared.cfg.run_dir, id);
    log(&format!("starting a container from {base}"));
    let labels = labels(shared, &info, &spec, base, "sam", &[]);
    let clone_container = start_container(shared, docker, id, base, None, &labels, &[]).await?;
    shared
        .state
        .with(id, |e| e.container_id = Some(clone_container.clone()))
        .map_err(|e| e.message)?;
    prepare(docker, &clone_container, &info.root, "sam", log).await?;
    if let Some(repo) = &spec.repo {
        let mut cmd = vec!["git".to_string(), "clone".into(), "--progress".into()];
        if let Some(b) = &spec.branch {
            cmd.extend(["--branch".into(), b.clone()]);
        }
        cmd.extend(["--".into(), repo.clone(), info.root.clone()]);
        log(&format!("$ git clone {repo}"));
        let out = exec(
            docker,
            &clone_container,
            "sam",
            Some(WORKSPACES_DIR),
            &git_env(),
            cmd,
            log,
        )
        .await
        .map_err(|e| format!("git clone: {e}"))?;
        if out.code != 0 {
            return Err(format!(
                "git clone of {repo} failed (exit code {}): {}",
                out.code,
                last_line(&out.output)
            ));
        }
        if !spec.lightweight
            && let Some((config_dir, text)) =
                read_config(docker, &clone_container, &info.root).await?
        {
            let dc = devcontainer::parse(&text, &config_dir).map_err(|e| e.to_string())?;
            let finished =
                devcontainer_build(shared, docker, id, &info, &spec, &clone_container, &dc).await?;
            return mark_ready(docker, &finished).await;
        }
    }
    mark_ready(docker, &clone_container).await
}

fn git_env() -> Vec<String> {
    vec!["GIT_TERMINAL_PROMPT=0".into()]
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn labels(
    shared: &Shared,
    info: &WorkspaceInfo,
    spec: &CreateWorkspace,
    image: &str,
    user: &str,
    ports: &[u16],
) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (label::WORKSPACE.to_string(), info.id.clone()),
        (label::NODE.to_string(), shared.cfg.node.clone()),
        (label::NAME.to_string(), info.name.clone()),
        (label::ROOT.to_string(), info.root.clone()),
        (label::USER.to_string(), user.to_string()),
        (label::CREATED.to_string(), info.created_at.to_string()),
        (label::IMAGE.to_string(), image.to_string()),
        (label::LIGHTWEIGHT.to_string(), spec.lightweight.to_string()),
        (
            label::PORTS.to_string(),
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    if let Some(r) = &spec.repo {
        l.insert(label::REPO.to_string(), super::state::scrub_url(r));
    }
    if let Ok(Some(c)) = shared.state.with(&info.id, |e| e.creator) {
        l.insert(label::CREATOR.to_string(), c.to_string());
    }
    if let Some(b) = &spec.branch {
        l.insert(label::BRANCH.to_string(), b.clone());
    }
    l
}

async fn start_container(
    shared: &Shared,
    docker: &Docker,
    id: &str,
    image: &str,
    user: Option<&str>,
    labels: &HashMap<String, String>,
    env: &[String],
) -> Result<String, Failure> {
    let run_dir = shared.cfg.run_dir.join(id);
    let name = format!("sam-ws-{id}-{}", &super::state::new_id()[..4]);
    let limits = shared.cfg.limits;
    let host_memory = if limits.memory_mb.is_none() {
        docker.info().await.ok().and_then(|i| i.mem_total)
    } else {
        None
    };
    let mut host_config = HostConfig {
        init: Some(true),
        binds: Some(vec![format!("{}:/run/sam", run_dir.display())]),
        extra_hosts: Some(vec!["host.docker.internal:host-gateway".into()]),
        ..Default::default()
    };
    limits.apply(&mut host_config, host_memory, true);
    let without_disk = {
        let mut h = host_config.clone();
        h.storage_opt = None;
        h
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sleep".into(), "infinity".into()]),
        entrypoint: Some(vec![]),
        user: user.map(str::to_string),
        labels: Some(labels.clone()),
        env: Some(env.to_vec()),
        host_config: Some(host_config),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    // dockerd finishes a create it has received even when this pipeline is aborted (the
    // workspace is being removed): create and start run in a task of their own, holding the
    // workspace's `docker_calls` lock, which `Workspaces::remove` takes before it sweeps.
    let lock = shared
        .state
        .with(id, |e| e.docker_calls.clone())
        .map_err(|e| e.message)?;
    let guard = lock.lock_owned().await;
    let docker = docker.clone();
    let task = tokio::spawn(async move {
        let _guard = guard;
        let mut disk_dropped = None;
        let created = match docker
            .create_container(Some(opts.clone()), body.clone())
            .await
        {
            Err(e) if super::docker::storage_opt_unsupported(&e) => {
                // The driver cannot limit disk: create without it, and say so.
                disk_dropped = Some(e.to_string());
                let body = ContainerCreateBody {
                    host_config: Some(without_disk),
                    ..body
                };
                docker.create_container(Some(opts), body).await
            }
            other => other,
        }
        .map_err(|e| ("create the container", e))?;
        docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| ("start the container", e))?;
        Ok::<_, (&str, bollard::errors::Error)>((created.id, disk_dropped))
    });
    match task.await {
        Ok(Ok((container, disk_dropped))) => {
            if let Some(why) = disk_dropped {
                let msg = format!(
                    "disk limit of {} GiB NOT enforced: this Docker storage driver cannot limit a \
                     container's disk (overlay2 needs xfs mounted with pquota) [{why}]; the pid and \
                     memory limits apply",
                    limits.disk_gb
                );
                warn!(workspace = %id, "{msg}");
                shared.state.log(id, &msg);
            }
            Ok(container)
        }
        Ok(Err((what, e))) => Err(docker_err(&shared.docker, e, what).message),
        Err(e) => Err(format!("starting the container failed: {e}")),
    }
}

/// The repo folder owned by `user`, the credential helper and its git config.
async fn prepare(
    docker: &Docker,
    container: &str,
    root: &str,
    user: &str,
    log: impl Fn(&str),
) -> Result<(), Failure> {
    let script = r#"set -e
mkdir -p /workspaces /var/lib/sam "$ROOT"
chown "$SAM_USER" "$ROOT" 2>/dev/null || true
printf '%s' "$HELPER" > /usr/local/bin/git-credential-sam
chmod 755 /usr/local/bin/git-credential-sam
if command -v git >/dev/null 2>&1; then git config --system credential.helper /usr/local/bin/git-credential-sam; fi
"#;
    let env = vec![
        format!("ROOT={root}"),
        format!("SAM_USER={user}"),
        format!("HELPER={}", credentials::HELPER_SCRIPT),
    ];
    let cmd = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let out = exec(docker, container, "root", None, &env, cmd, &log)
        .await
        .map_err(|e| format!("prepare the container: {e}"))?;
    if out.code != 0 {
        return Err(format!(
            "prepare the container failed: {}",
            last_line(&out.output)
        ));
    }
    Ok(())
}

async fn mark_ready(docker: &Docker, container: &str) -> Result<(), Failure> {
    let cmd = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("mkdir -p /var/lib/sam && touch {READY_MARKER}"),
    ];
    match exec(docker, container, "root", None, &[], cmd, |_| {}).await {
        Ok(ExecOutput { code: 0, .. }) => Ok(()),
        Ok(o) => Err(format!(
            "mark the workspace ready: {}",
            last_line(&o.output)
        )),
        Err(e) => Err(format!("mark the workspace ready: {e}")),
    }
}

/// `(config dir, text)` of the repo's devcontainer config, if it has one.
async fn read_config(
    docker: &Docker,
    container: &str,
    root: &str,
) -> Result<Option<(String, String)>, Failure> {
    for (dir, file) in [
        (".devcontainer", ".devcontainer/devcontainer.json"),
        ("", ".devcontainer.json"),
    ] {
        let path = format!("{root}/{file}");
        let cmd = vec!["cat".into(), "--".into(), path];
        let out = exec(docker, container, "root", None, &[], cmd, |_| {})
            .await
            .map_err(|e| format!("read {file}: {e}"))?;
        if out.code == 0 {
            if out.output.len() > devcontainer::MAX_CONFIG {
                return Err(devcontainer::DevcontainerError::TooLarge.to_string());
            }
            return Ok(Some((dir.to_string(), out.output)));
        }
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
async fn devcontainer_build(
    shared: &Shared,
    docker: &Docker,
    id: &str,
    info: &WorkspaceInfo,
    spec: &CreateWorkspace,
    clone_container: &str,
    dc: &DevContainer,
) -> Result<String, Failure> {
    let log = |t: &str| shared.state.log(id, t);
    log("devcontainer found: building its image");
    let repo_tar = download(shared, docker, clone_container, &info.root).await?;
    let prefix = format!("{}/", info.name);
    let tag = format!("sam-ws-{id}:latest");
    let mut image = match (&dc.build, &dc.image) {
        (Some(b), _) => {
            let dockerfile =
                super::tarball::read_file(&repo_tar, &format!("{prefix}{}", b.dockerfile))
                    .ok_or_else(|| {
                        format!("build.dockerfile {} is not in the repository", b.dockerfile)
                    })?;
            let context_prefix = if b.context.is_empty() {
                prefix.clone()
            } else {
                format!("{prefix}{}/", b.context)
            };
            let ctx = super::tarball::retar(
                &repo_tar,
                &context_prefix,
                &[(".sam.Dockerfile", dockerfile)],
            )
            .map_err(|e| format!("build context: {e}"))?;
            build(shared, docker, id, ctx, ".sam.Dockerfile", &tag, &b.args).await?;
            tag.clone()
        }
        (None, Some(image)) => {
            ensure_image(shared, docker, id, image).await?;
            image.clone()
        }
        (None, None) => return Err(devcontainer::DevcontainerError::NoImage.to_string()),
    };
    let image_user = docker
        .inspect_image(&image)
        .await
        .ok()
        .and_then(|i| i.config)
        .and_then(|c| c.user)
        .filter(|u| !u.is_empty());
    let remote_user = dc
        .remote_user
        .clone()
        .or_else(|| dc.container_user.clone())
        .or_else(|| image_user.clone())
        .unwrap_or_else(|| "root".into());
    if !dc.features.is_empty() {
        let mut merged = Vec::new();
        for f in &dc.features {
            let json = super::tarball::read_file(
                &repo_tar,
                &format!("{prefix}{}/devcontainer-feature.json", f.path),
            )
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
            if super::tarball::read_file(&repo_tar, &format!("{prefix}{}/install.sh", f.path))
                .is_none()
            {
                return Err(format!("feature {} has no install.sh", f.path));
            }
            let mut options: BTreeMap<String, String> = devcontainer::feature_defaults(&json);
            options.extend(f.options.clone());
            merged.push((f.clone(), options));
        }
        let dockerfile =
            devcontainer::features_dockerfile(&image, image_user.as_deref(), &remote_user, &merged);
        let ctx = super::tarball::retar(
            &repo_tar,
            &prefix,
            &[(".sam.features.Dockerfile", dockerfile.into_bytes())],
        )
        .map_err(|e| format!("features context: {e}"))?;
        log(&format!("installing {} feature(s)", merged.len()));
        let features_tag = format!("sam-ws-{id}:features");
        build(
            shared,
            docker,
            id,
            ctx,
            ".sam.features.Dockerfile",
            &features_tag,
            &BTreeMap::new(),
        )
        .await?;
        image = features_tag;
    }
    let mut env: Vec<String> = dc
        .container_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend(git_env());
    let labels = labels(shared, info, spec, &image, &remote_user, &dc.forward_ports);
    log(&format!("starting the devcontainer from {image}"));
    let container = start_container(
        shared,
        docker,
        id,
        &image,
        dc.container_user.as_deref(),
        &labels,
        &env,
    )
    .await?;
    shared
        .state
        .with(id, |e| {
            e.container_id = Some(container.clone());
            e.info.image = image.clone();
            e.info.user = remote_user.clone();
            e.info.forward_ports = dc.forward_ports.clone();
        })
        .map_err(|e| e.message)?;
    prepare(docker, &container, &info.root, &remote_user, log).await?;
    docker
        .upload_to_container(
            &container,
            Some(
                UploadToContainerOptionsBuilder::default()
                    .path(WORKSPACES_DIR)
                    .build(),
            ),
            bollard::body_full(repo_tar.into()),
        )
        .await
        .map_err(|e| {
            docker_err(&shared.docker, e, "copy the repo into the devcontainer").message
        })?;
    let chown = vec![
        "chown".into(),
        "-R".into(),
        format!("{remote_user}:"),
        info.root.clone(),
    ];
    let out = exec(docker, &container, "root", None, &[], chown, log)
        .await
        .map_err(|e| format!("chown the repo: {e}"))?;
    if out.code != 0 {
        return Err(format!(
            "chown the repo to {remote_user} failed: {}",
            last_line(&out.output)
        ));
    }
    remove_one(docker, clone_container).await;
    for (i, cmd) in dc.post_create.iter().enumerate() {
        log(&format!("$ postCreateCommand {}", cmd.argv().join(" ")));
        let out = exec(
            docker,
            &container,
            &remote_user,
            Some(&info.root),
            &env,
            cmd.argv(),
            log,
        )
        .await
        .map_err(|e| format!("postCreateCommand: {e}"))?;
        if out.code != 0 {
            return Err(format!(
                "postCreateCommand #{} failed with exit code {}: {}",
                i + 1,
                out.code,
                last_line(&out.output)
            ));
        }
    }
    Ok(container)
}

async fn download(
    shared: &Shared,
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<Vec<u8>, Failure> {
    let opts = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(container, Some(opts));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| docker_err(&shared.docker, e, "read the repo").message)?;
        tar.extend_from_slice(&chunk);
        if tar.len() > MAX_REPO_TAR {
            return Err(
                "the repository is larger than 512 MiB: too large for a devcontainer build".into(),
            );
        }
    }
    Ok(tar)
}

async fn build(
    shared: &Shared,
    docker: &Docker,
    id: &str,
    context: Vec<u8>,
    dockerfile: &str,
    tag: &str,
    args: &BTreeMap<String, String>,
) -> Result<(), Failure> {
    let args: HashMap<String, String> = args.clone().into_iter().collect();
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&args)
        .build();
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let item = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => {
                format!("docker build failed: {error}")
            }
            e => docker_err(&shared.docker, e, "docker build").message,
        })?;
        if let Some(s) = item.stream.as_deref().or(item.status.as_deref()) {
            shared.state.log(id, s);
        }
        if let Some(err) = item.error_detail.and_then(|d| d.message) {
            return Err(format!("docker build failed: {err}"));
        }
    }
    Ok(())
}

/// The image must be on the node; else it is pulled (with progress).
async fn ensure_image(
    shared: &Shared,
    docker: &Docker,
    id: &str,
    image: &str,
) -> Result<(), Failure> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    shared.state.log(id, &format!("pulling {image}"));
    let opts = CreateImageOptionsBuilder::default()
        .from_image(image)
        .build();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        let item = item
            .map_err(|e| format!("image {image} is not on this node and pulling it failed: {e}"))?;
        if let Some(s) = item.status {
            shared.state.log(id, &s);
        }
    }
    Ok(())
}

async fn remove_one(docker: &Docker, container: &str) {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = docker.remove_container(container, Some(opts)).await {
        warn!(container, error = %e, "could not remove a container");
    }
}

/// Removes every container of workspace `id` and the images built for its
/// devcontainer (the features layer first: it is a child of `latest`).
pub async fn remove_all(shared: &Shared, docker: &Docker, id: &str) -> Result<(), ErrorBody> {
    remove_containers(shared, docker, id).await?;
    for tag in ["features", "latest"] {
        let _ = docker
            .remove_image(
                &format!("sam-ws-{id}:{tag}"),
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
    }
    Ok(())
}

/// Removes every container of workspace `id`.
pub async fn remove_containers(
    shared: &Shared,
    docker: &Docker,
    id: &str,
) -> Result<(), ErrorBody> {
    for c in node_containers(shared, docker, true).await? {
        let mine = c
            .labels
            .as_ref()
            .and_then(|l| l.get(label::WORKSPACE))
            .is_some_and(|w| w == id);
        if let (true, Some(cid)) = (mine, c.id) {
            let opts = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match docker.remove_container(&cid, Some(opts)).await {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(docker_err(&shared.docker, e, "remove the container")),
            }
        }
    }
    Ok(())
}

/// Workspaces of this node found by label (after a restart).
pub async fn discover(shared: &Shared, docker: &Docker) -> Result<Vec<Entry>, ErrorBody> {
    let mut by_ws: HashMap<String, Vec<bollard::models::ContainerSummary>> = HashMap::new();
    for c in node_containers(shared, docker, true).await? {
        if let Some(ws) = c
            .labels
            .as_ref()
            .and_then(|l| l.get(label::WORKSPACE))
            .cloned()
        {
            by_ws.entry(ws).or_default().push(c);
        }
    }
    let mut entries = Vec::new();
    for (id, mut containers) in by_ws {
        // The newest container is the workspace (an older one is a leftover clone step).
        containers.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
        let Some(c) = containers.into_iter().next() else {
            continue;
        };
        let labels = c.labels.clone().unwrap_or_default();
        let get = |k: &str| labels.get(k).cloned().filter(|v| !v.is_empty());
        let running = matches!(
            c.state,
            Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
        );
        let Some(cid) = c.id.clone() else { continue };
        let status = if !running || has_ready_marker(docker, &cid).await {
            WorkspaceStatus::Ready
        } else {
            WorkspaceStatus::Failed {
                reason: "the node restarted while this workspace was being created: recreate it"
                    .into(),
                log_tail: String::new(),
            }
        };
        let name = get(label::NAME).unwrap_or_else(|| id.clone());
        let info = WorkspaceInfo {
            id: id.clone(),
            name: name.clone(),
            repo: get(label::REPO),
            branch: get(label::BRANCH),
            status,
            created_at: get(label::CREATED)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            image: get(label::IMAGE).unwrap_or_default(),
            root: get(label::ROOT).unwrap_or_else(|| format!("{WORKSPACES_DIR}/{name}")),
            user: get(label::USER).unwrap_or_else(|| "root".into()),
            forward_ports: get(label::PORTS)
                .map(|p| p.split(',').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default(),
        };
        let spec = CreateWorkspace {
            repo: info.repo.clone(),
            branch: info.branch.clone(),
            lightweight: get(label::LIGHTWEIGHT).is_some_and(|v| v == "true"),
            name: Some(name),
        };
        let mut entry = Entry::new(info, Some(spec));
        entry.container_id = Some(cid);
        entry.creator = get(label::CREATOR).and_then(|c| c.parse().ok());
        entries.push(entry);
    }
    Ok(entries)
}
