//! `sam shell` through the real binary under a real PTY (portable-pty).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use super::*;

/// The `sam` binary next to this test's target dir, built when missing.
fn sam_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("sam");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "sam-client", "--bin", "sam"])
            .status()
            .expect("cargo build sam");
        assert!(ok.success(), "building the sam binary failed");
    }
    bin
}

fn sam(home: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(sam_bin())
        .args(args)
        .env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .output()
        .expect("run sam");
    assert!(
        out.status.success(),
        "sam {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_shell_under_a_pty() {
    let home = tempfile::tempdir().expect("home");
    sam(home.path(), &["id"]);
    let owner = sam_client::ClientPaths::new(home.path())
        .identity()
        .expect("identity");
    let rig = Rig::start_with_owner(owner).await;
    sam(
        home.path(),
        &["connect", &rig.handle.ticket().to_string(), "--name", "n1"],
    );

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("openpty");
    let mut cmd = CommandBuilder::new(sam_bin());
    cmd.args(["shell", &rig.ws]);
    cmd.env("SAM_HOME", home.path());
    cmd.env("SAM_BIND", "127.0.0.1:0");
    let mut child = pty.slave.spawn_command(cmd).expect("spawn sam shell");
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().expect("reader");
    let mut writer = pty.master.take_writer().expect("writer");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<u8>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(c) => seen.extend_from_slice(&c),
                Err(_) => panic!(
                    "waiting for {needle:?}; seen {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    };
    wait_for("[sam: terminal", &mut seen);
    // The shell is up once it answers.
    writer.write_all(b"echo cli-$((2+3))\r").expect("type");
    wait_for("cli-5", &mut seen);
    // Every link drops (issue #18): `sam shell` says so, reattaches by itself, and the
    // same shell goes on.
    rig.handle.node.drop_all_links();
    wait_for("link lost", &mut seen);
    wait_for("resumed at byte", &mut seen);
    writer.write_all(b"echo again-$((3+4))\r").expect("type");
    wait_for("again-7", &mut seen);
    // The resize of the local PTY reaches the remote one (SIGWINCH).
    pty.master
        .resize(PtySize {
            rows: 33,
            cols: 101,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("resize");
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer
        .write_all(b"stty size | sed 's/ /z/'\r")
        .expect("type");
    wait_for("33z101", &mut seen);
    writer.write_all(b"exit\r").expect("exit");
    wait_for("closed]", &mut seen);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "sam shell exited with {status:?}");
}
