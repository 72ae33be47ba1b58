//! The holder-backed terminal: installing `sam-pty-hold` in a container, starting it,
//! attaching to it and decoding its frames.

use super::*;

/// Where a holder lives.
#[derive(Clone)]
pub(super) struct HolderAt {
    pub(super) docker: Docker,
    pub(super) container: String,
    pub(super) user: String,
    pub(super) sock: String,
    pub(super) holder: String,
}

/// Where the node lets a holder make its socket: a folder only the terminal's user can
/// enter (the holder refuses one owned by anybody else).
pub(super) fn sock_dir(user: &str) -> String {
    if user == "root" || user == "0" || user.is_empty() {
        return "/run/sam/term".into();
    }
    let safe: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    format!("/tmp/sam-term-{safe}")
}

/// Copies the holder into the container (a name per content, so a running one is never
/// overwritten) unless it is there, and checks it runs there.
pub(super) async fn install_holder(docker: &Docker, t: &Target) -> Result<String, String> {
    let local = holder_binary().ok_or_else(|| {
        "the node has no sam-pty-hold binary beside it (or at SAM_PTY_HOLD)".to_string()
    })?;
    let bytes = tokio::fs::read(&local)
        .await
        .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
    let sum = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(&bytes);
        d.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let path = format!("{HOLDER_PATH}-{sum}");
    if probe(docker, t, &path).await.is_ok() {
        return Ok(path);
    }
    let mut tar = tar::Builder::new(Vec::new());
    let dir = std::path::Path::new(path.trim_start_matches('/'))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, &dir, std::io::empty())
        .map_err(|e| e.to_string())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bytes.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path.trim_start_matches('/'), &bytes[..])
        .map_err(|e| e.to_string())?;
    let tar = tar.into_inner().map_err(|e| e.to_string())?;
    let opts = bollard::query_parameters::UploadToContainerOptions {
        path: "/".into(),
        no_overwrite_dir_non_dir: None,
        copy_uidgid: None,
    };
    docker
        .upload_to_container(&t.container_id, Some(opts), bollard::body_full(tar.into()))
        .await
        .map_err(|e| format!("cannot copy the terminal holder into the container: {e}"))?;
    probe(docker, t, &path).await?;
    Ok(path)
}

/// Runs `path probe` in the container as the terminal's user.
pub(super) async fn probe(docker: &Docker, t: &Target, path: &str) -> Result<(), String> {
    let out = crate::inside::run(
        docker,
        t,
        Some(&t.user),
        vec![path.to_string(), "probe".into()],
        1024,
    )
    .await
    .map_err(|e| e.message)?;
    if out.exit == 0 && String::from_utf8_lossy(&out.stdout).trim() == PROBE {
        Ok(())
    } else {
        Err(format!(
            "the terminal holder does not run in this container (exit {}): {}",
            out.exit,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The holder binary on this machine: `SAM_PTY_HOLD`, else beside the node's binary (or
/// one folder up: cargo's test layout).
pub(super) fn holder_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SAM_PTY_HOLD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("sam-pty-hold"))
        .find(|p| p.is_file())
}

/// Starts a holder running the terminal's command (a detached exec) and attaches to it.
pub(super) async fn start_holder(
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
    id: &str,
    holder: &str,
) -> Result<(HolderAt, Link), String> {
    let sock = format!("{}/{:032x}.sock", sock_dir(&t.user), rand::random::<u128>());
    let mut cmd = vec![
        holder.to_string(),
        "serve".into(),
        sock.clone(),
        open.cols.to_string(),
        open.rows.to_string(),
        "--".into(),
    ];
    cmd.extend(shell_cmd(open));
    let config = ExecConfig {
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        env: Some(vec![
            "TERM=xterm-256color".into(),
            format!("SAM_TERMINAL={id}"),
        ]),
        cmd: Some(cmd),
        user: Some(t.user.clone()),
        working_dir: Some(t.root.clone()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(&t.container_id, config)
        .await
        .map_err(|e| format!("cannot start the terminal holder: {e}"))?;
    docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("cannot start the terminal holder: {e}"))?;
    let at = HolderAt {
        docker: docker.clone(),
        container: t.container_id.clone(),
        user: t.user.clone(),
        sock,
        holder: holder.to_string(),
    };
    let link = attach_holder(&at, 0, true).await?;
    Ok((at, link))
}

/// What feeds an actor: output events and where input goes.
pub(super) struct Link {
    pub(super) events: mpsc::Receiver<Ev>,
    pub(super) input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The absolute offset of the first output byte that follows.
    pub(super) start: u64,
    /// The output the holder had when attached: attaches wait until the node has it.
    pub(super) end: u64,
    /// Bytes the node writes first (the old path's warning).
    pub(super) notice: Option<Bytes>,
}

pub(super) enum Ev {
    /// Output; `offset` is its first byte's absolute offset when the source says it.
    Output { offset: Option<u64>, data: Bytes },
    /// The shell exited.
    Exit,
    /// Another attach took the holder over.
    Replaced,
    /// The link broke (the shell may go on).
    Broken(String),
}

/// Attaches to a holder through a relay exec, from absolute byte `from`; `wait`: the holder
/// may still be starting.
pub(super) async fn attach_holder(at: &HolderAt, from: u64, wait: bool) -> Result<Link, String> {
    let mut cmd = vec![at.holder.clone(), "attach".into(), at.sock.clone()];
    if !wait {
        cmd.push("0".into());
    }
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(cmd),
        user: Some(at.user.clone()),
        ..Default::default()
    };
    let exec = at
        .docker
        .create_exec(&at.container, config)
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let started = at
        .docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                output_capacity: Some(256 * 1024),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let StartExecResults::Attached { output, mut input } = started else {
        return Err("docker did not attach the terminal holder".into());
    };
    let mut f = Vec::new();
    ToHolder::Attach {
        version: VERSION,
        from,
    }
    .encode(&mut f);
    input
        .write_all(&f)
        .await
        .map_err(|e| format!("cannot reach the terminal holder: {e}"))?;
    let _ = input.flush().await;
    let (hello_tx, hello_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(decode_holder(output, hello_tx, tx));
    let (start, end) = match tokio::time::timeout(HOLDER_HELLO, hello_rx).await {
        Ok(Ok(Ok(x))) => x,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err("the terminal holder link ended".into()),
        Err(_) => return Err("the terminal holder did not answer".into()),
    };
    Ok(Link {
        events: rx,
        input,
        start,
        end,
        notice: None,
    })
}

pub(super) type Output =
    Pin<Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// Decodes a relay's stdout into events; its first frame must be a hello.
pub(super) async fn decode_holder(
    mut output: Output,
    hello: oneshot::Sender<Result<(u64, u64), String>>,
    tx: mpsc::Sender<Ev>,
) {
    let mut hello = Some(hello);
    let mut buf: Vec<u8> = Vec::with_capacity(80 * 1024);
    let mut stderr = String::new();
    let fail = |hello: &mut Option<oneshot::Sender<_>>, why: String| {
        if let Some(h) = hello.take() {
            let _ = h.send(Err(why.clone()));
        }
        why
    };
    let why = loop {
        let message = match output.next().await {
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => message,
            Some(Ok(LogOutput::StdErr { message })) => {
                if stderr.len() < 1024 {
                    stderr.push_str(&String::from_utf8_lossy(&message));
                }
                continue;
            }
            Some(Ok(LogOutput::StdIn { .. })) => continue,
            Some(Err(e)) => break fail(&mut hello, format!("terminal holder link: {e}")),
            None => {
                let said = stderr.trim();
                break fail(
                    &mut hello,
                    if said.is_empty() {
                        "the terminal holder link ended".into()
                    } else {
                        format!("the terminal holder link ended: {said}")
                    },
                );
            }
        };
        buf.extend_from_slice(&message);
        let mut used = 0;
        let mut done = None;
        loop {
            match ToNode::decode(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    let ev = match (f, hello.take()) {
                        (
                            ToNode::Hello {
                                version,
                                start,
                                end,
                            },
                            Some(h),
                        ) => {
                            if version != VERSION || end < start {
                                let _ = h.send(Err(format!(
                                    "the terminal holder speaks version {version}, not {VERSION}"
                                )));
                                done = Some(String::new());
                                break;
                            }
                            let _ = h.send(Ok((start, end)));
                            continue;
                        }
                        (_, Some(h)) => {
                            let _ = h.send(Err("the terminal holder did not say hello".into()));
                            done = Some(String::new());
                            break;
                        }
                        (ToNode::Hello { .. }, None) => {
                            done = Some("the terminal holder said hello twice".into());
                            break;
                        }
                        (ToNode::Output { offset, data }, None) => Ev::Output {
                            offset: Some(offset),
                            data: Bytes::from(data),
                        },
                        (ToNode::Exit { .. }, None) => Ev::Exit,
                        (ToNode::Replaced, None) => Ev::Replaced,
                    };
                    let last = matches!(ev, Ev::Exit | Ev::Replaced);
                    if tx.send(ev).await.is_err() || last {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    done = Some(fail(
                        &mut hello,
                        format!("bad frame from the terminal holder: {e}"),
                    ));
                    break;
                }
            }
        }
        if let Some(why) = done {
            break why;
        }
        buf.drain(..used);
    };
    if !why.is_empty() {
        let _ = tx.send(Ev::Broken(why)).await;
    }
}
