//! The old path: a login shell under a Docker tty exec, for containers where the
//! holder cannot run.

use super::*;

/// The old path: a login shell under a Docker tty exec (ends with the node).
pub(super) async fn start_docker(
    docker: &Docker,
    t: &Target,
    open: &PtyOpen,
    id: &str,
) -> Result<(String, Link), ErrorBody> {
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        console_size: Some(vec![open.rows as usize, open.cols as usize]),
        env: Some(vec![
            "TERM=xterm-256color".into(),
            format!("SAM_TERMINAL={id}"),
        ]),
        cmd: Some(shell_cmd(open)),
        user: Some(t.user.clone()),
        working_dir: Some(t.root.clone()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(&t.container_id, config)
        .await
        .map_err(|e| docker_err("cannot start a shell in the workspace", e))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                tty: true,
                output_capacity: Some(256 * 1024),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| docker_err("cannot attach to the shell", e))?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err(ErrorBody::new(
            ErrorCode::Internal,
            "docker did not attach the shell",
        ));
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let ev = loop {
            match output.next().await {
                Some(Ok(
                    LogOutput::Console { message }
                    | LogOutput::StdOut { message }
                    | LogOutput::StdErr { message },
                )) => {
                    let ev = Ev::Output {
                        offset: None,
                        data: message,
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "terminal output failed");
                    break Ev::Exit;
                }
                None => break Ev::Exit,
            }
        };
        let _ = tx.send(ev).await;
    });
    Ok((
        exec.id,
        Link {
            events: rx,
            input,
            start: 0,
            end: 0,
            notice: None,
        },
    ))
}
