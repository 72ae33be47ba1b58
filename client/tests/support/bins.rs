//! The binaries under test, run as a user runs them: `sam` with a home of its own on
//! loopback, `sam-node` set up with `init` and started with `run` (its first line on
//! stdout is its ticket). Shared by every test module of this crate.

use std::borrow::Borrow;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The `sam` binary cargo built for these tests.
pub fn sam_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sam"))
}

/// Another binary of the workspace, next to `sam` (`sam-node`, `sam-test-agent`, …).
pub fn sibling(name: &str) -> PathBuf {
    let p = sam_bin().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

pub fn node_bin() -> PathBuf {
    sibling("sam-node")
}

/// `sam ARGS` with `home` as its `SAM_HOME`, bound to loopback, logs off.
pub fn sam(home: &Path, args: &[&str]) -> Output {
    Command::new(sam_bin())
        .env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run sam")
}

/// The stdout of a command that succeeded; else fails with all it printed.
pub fn ok(out: impl Borrow<Output>) -> String {
    let out = out.borrow();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last line, trimmed (commands print the id or ticket they made last).
pub fn last(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

/// A process that is killed (and reaped) when dropped.
pub struct NodeProc(pub Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sam-node init` a node owned by `owner` in `home`, then runs it; returns it and its
/// ticket.
pub fn start_node(home: &Path, owner: &str) -> (NodeProc, String) {
    start_node_with(home, owner, &[])
}

/// [`start_node`] with extra environment for `sam-node run`.
pub fn start_node_with(home: &Path, owner: &str, env: &[(&str, &str)]) -> (NodeProc, String) {
    ok(Command::new(node_bin())
        .env("SAM_HOME", home)
        .args(["init", "--owner", owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("sam-node init"));
    run_node_with(home, env)
}

/// `sam-node run` in a `home` that is set up already; returns it and its ticket.
pub fn run_node(home: &Path) -> (NodeProc, String) {
    run_node_with(home, &[])
}

fn run_node_with(home: &Path, env: &[(&str, &str)]) -> (NodeProc, String) {
    let mut child = Command::new(node_bin())
        .env("SAM_HOME", home)
        .envs(env.iter().copied())
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sam-node run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the ticket line");
    (NodeProc(child), line.trim().to_string())
}
