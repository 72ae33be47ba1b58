//! Smoke test of the real window: `sam gui` under Xvfb (OpenGL through Mesa's software
//! renderer), with a local node and a conversation, then a screenshot of the screen.
//! Fails loudly when Xvfb is missing (`scripts/test.sh` installs it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::bins::{last, ok, sam, sam_bin};

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sam_gui_window_under_xvfb_with_screenshot() {
    let xvfb = which("Xvfb").unwrap_or_else(|| {
        panic!(
            "\n\n*** Xvfb is missing: the GUI smoke test cannot run. Install it with \
             `apt-get install -y xvfb imagemagick` (scripts/test.sh does). ***\n\n"
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("me");

    // A node with one conversation and a prompt, so the window has something to show.
    let owner = last(&ok(sam(&home, &["id"])));
    let node_home = tmp.path().join("node");
    let node_bin = sam_bin().with_file_name("sam-node");
    assert!(
        node_bin.is_file(),
        "{} is missing: cargo build --workspace --bins",
        node_bin.display()
    );
    ok(Command::new(&node_bin)
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init"));
    let mut node = Command::new(&node_bin)
        .env("SAM_HOME", &node_home)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run node");
    let mut ticket = String::new();
    BufReader::new(node.stdout.take().expect("stdout"))
        .read_line(&mut ticket)
        .expect("ticket");
    let _node = Kill(node);
    ok(sam(&home, &["connect", ticket.trim(), "--name", "local"]));
    let conv = last(&ok(sam(
        &home,
        &[
            "convs",
            "new",
            "--workspace",
            "w1",
            "--title",
            "Fix the login retry",
        ],
    )));
    ok(sam(
        &home,
        &[
            "prompt",
            &conv,
            "Please add a **retry** with backoff to `login()`:\n\n```rust\nfn login() -> Result<()> { todo!() }\n```",
        ],
    ));

    // Xvfb on a free display number.
    let display = (0..50)
        .map(|i| 90 + (std::process::id() as usize + i) % 400)
        .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
        .expect("a free display");
    let disp = format!(":{display}");
    let _x = Kill(
        Command::new(xvfb)
            .args([
                disp.as_str(),
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb"),
    );
    let socket = format!("/tmp/.X11-unix/X{display}");
    let t0 = Instant::now();
    while !Path::new(&socket).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "Xvfb did not start on {disp}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let log = tmp.path().join("gui.log");
    let mut gui = Kill(
        Command::new(sam_bin())
            .env("SAM_HOME", &home)
            .env("SAM_BIND", "127.0.0.1:0")
            .env("DISPLAY", &disp)
            .env_remove("WAYLAND_DISPLAY")
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("SAM_GUI_OPEN", &conv)
            .env("SAM_NO_KEYRING", "1")
            .arg("gui")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start sam gui"),
    );
    // Let it connect, sync and draw.
    std::thread::sleep(Duration::from_secs(8));
    if let Ok(Some(status)) = gui.0.try_wait() {
        panic!(
            "`sam gui` exited early ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gui_smoke.png");
    let _ = std::fs::remove_file(&shot);
    let out = if which("import").is_some() {
        Command::new("import")
            .args(["-display", &disp, "-window", "root"])
            .arg(&shot)
            .output()
            .expect("run import")
    } else {
        panic!(
            "ImageMagick's `import` is missing: apt-get install -y imagemagick (scripts/test.sh does)"
        );
    };
    assert!(
        out.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    // A black screen compresses to a few hundred bytes; a drawn window is far larger.
    assert!(
        size > 20_000,
        "the screenshot looks empty ({size} bytes): {}",
        shot.display()
    );
    if let Ok(Some(status)) = gui.0.try_wait() {
        panic!("`sam gui` died while drawing ({status})");
    }
    let _ = gui.0.kill();
    eprintln!("screenshot: {}", shot.display());
}
