//! `sam idea` end to end through the real binaries: `sam-node` on Docker (a base image with
//! `sam-test-agent` added), a git HTTP server with Basic auth on the Docker bridge, and the
//! fake GitHub API validated against `github-rest.openapi.json`. The scripted agent writes a
//! file; the node commits, pushes with credentials brokered from `sam`, opens the PR, and
//! `sam idea` prints its URL last. Needs dockerd, `sam-base:1` and `cargo build --bins`.
//!
//! Two ways to get the node: one the user connected (`--node`), and the `local` provider's
//! warm pool on a fresh `SAM_HOME` (`sam-node` processes on this machine): the first idea
//! creates a node, the second reuses it warm, each gives it back to the pool after its PR.

use crate::support::git_http;
use crate::support::github;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tokio::io::AsyncBufReadExt;

use crate::support::bins::sibling;

const TOKEN: &str = "ghp_PLANTED_cli_token_55555";
const PASSWORD: &str = "cli-git-PLANTED-pw";
const IMAGE: &str = "sam-idea-test:1";

/// `sam-base:1` plus the scripted agent.
fn build_image(dir: &Path) {
    let ctx = dir.join("image");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::copy(sibling("sam-test-agent"), ctx.join("sam-test-agent")).expect("copy agent");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM sam-base:1\nCOPY sam-test-agent /usr/local/bin/sam-test-agent\n",
    )
    .expect("dockerfile");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(&ctx)
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sam(home: &Path, gitconfig: &Path, api: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(sibling("sam"));
    c.env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env("SAM_NO_KEYRING", "1")
        .env("GH_TOKEN", TOKEN)
        .env("SAM_GITHUB_API", api)
        .env("SAM_GIT_USERNAME", "sam")
        .env("SAM_GIT_PASSWORD", PASSWORD)
        .env("GIT_CONFIG_GLOBAL", gitconfig)
        // for the nodes the local provider starts
        .env("SAM_BASE_IMAGE", IMAGE)
        .env("SAM_NODE_BIN", sibling("sam-node"))
        .env_remove("RUST_LOG");
    c
}

/// What both tests share: the image, the git server with Basic auth, the fake GitHub API and
/// the git identity.
struct Setup {
    tmp: tempfile::TempDir,
    repos: PathBuf,
    git_base: String,
    gh: github::FakeGitHub,
    gitconfig: PathBuf,
    home: PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let docker_ok = Command::new("docker").arg("info").output();
        assert!(
            docker_ok.is_ok_and(|o| o.status.success()),
            "dockerd is not reachable: this test needs a running Docker engine"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        build_image(tmp.path());
        let repos = tmp.path().join("repos");
        std::fs::create_dir_all(&repos).expect("mkdir");
        git_http::make_repo(&repos);
        let git_base = git_http::git_server_on(
            git_http::bridge_ip(),
            repos.clone(),
            git_http::base64(format!("sam:{PASSWORD}").as_bytes()),
        )
        .await;
        let gh = github::FakeGitHub::start(TOKEN).await;
        gh.add_repo("o/r");
        let gitconfig = tmp.path().join("gitconfig");
        std::fs::write(
            &gitconfig,
            "[user]\n\tname = Ada Lovelace\n\temail = ada@example.invalid\n",
        )
        .expect("gitconfig");
        let home = tmp.path().join("client");
        Self {
            tmp,
            repos,
            git_base,
            gh,
            gitconfig,
            home,
        }
    }

    fn repo_url(&self) -> String {
        format!("{}/o/r.git", self.git_base)
    }

    fn sam(&self) -> tokio::process::Command {
        sam(&self.home, &self.gitconfig, &self.gh.url)
    }

    /// `sam --json idea IDEA --repo URL ARGS…`: (success, JSON or error, stderr).
    async fn idea(
        &self,
        idea: &str,
        repo: &str,
        args: &[&str],
    ) -> (bool, serde_json::Value, String) {
        let out = self
            .sam()
            .args(["--json", "idea", idea, "--repo", repo])
            .args(["--agent-cmd", "sam-test-agent", "--lightweight"])
            .args(args)
            .output()
            .await
            .expect("sam idea");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
        assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("sam idea printed no JSON ({e})\nstdout: {stdout}\nstderr: {stderr}")
        });
        (out.status.success(), json, stderr)
    }

    fn branch_log(&self, branch: &str) -> String {
        git_http::git(
            &self.repos.join("o/r.git"),
            &["log", "--format=%an %s", branch],
        )
    }
}

/// Removes the workspace containers a node made (only that node's, by label).
fn remove_containers_of(node: &str) {
    if let Ok(o) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=sam.node={node}")])
        .output()
    {
        for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

fn containers_of(node: &str) -> usize {
    Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=sam.node={node}")])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_idea_turns_an_idea_into_a_pushed_branch_and_a_pr() {
    let t0 = Instant::now();
    let s = Setup::new().await;
    let t_setup = t0.elapsed();
    let node_home = s.tmp.path().join("node");
    // The node.
    let id = s.sam().arg("id").output().await.expect("id");
    let owner = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let init = Command::new(sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .args(["init", "--owner", &owner, "--bind", "127.0.0.1:0"])
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut node = tokio::process::Command::new(sibling("sam-node"))
        .env("SAM_HOME", &node_home)
        .env("SAM_BASE_IMAGE", IMAGE)
        .env("RUST_LOG", "info")
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(s.tmp.path().join("node.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("stdout")).lines();
    let ticket = lines.next_line().await.expect("line").expect("ticket");
    let c = s
        .sam()
        .args(["connect", ticket.trim(), "--name", "local"])
        .output()
        .await
        .expect("connect");
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    // The idea (the scripted agent reads it as its script).
    let t1 = Instant::now();
    let (ok, json, stderr) = s
        .idea(
            "write greeting.txt hello world",
            &s.repo_url(),
            &["--node", "local"],
        )
        .await;
    let took = t1.elapsed();
    let node_id = json["node"].as_str().unwrap_or("").to_string();
    let cleanup = Cleanup(vec![node_id.clone()], None);
    assert!(
        ok,
        "sam idea failed\njson: {json}\nstderr: {stderr}\nnode log:\n{}",
        std::fs::read_to_string(s.tmp.path().join("node.log")).unwrap_or_default()
    );
    let url = json["pr"].as_str().unwrap_or("");
    assert!(url.ends_with("/o/r/pull/1"), "{json}\n{stderr}");
    // A node the user named is not the pool's: nothing is released, the workspace stays.
    assert_eq!(json["released"], false);
    assert_eq!(json["vm"], serde_json::Value::Null);
    let pulls = s.gh.pulls("o/r");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].head, "sam/write-greeting-txt-hello-world");
    assert_eq!(pulls[0].base, "main");
    assert_eq!(pulls[0].title, "write greeting.txt hello world");
    let log = s.branch_log("sam/write-greeting-txt-hello-world");
    assert!(log.starts_with("Ada Lovelace write greeting.txt"), "{log}");
    s.gh.assert_clean();
    println!(
        "BENCH sam idea (known local node, Docker lightweight workspace, scripted agent): setup {t_setup:?}, idea→PR {took:?}\n{stderr}"
    );
    drop(node);
    drop(cleanup);
}

/// Deletes the pool's nodes and the containers of every node, even when the test fails.
struct Cleanup(Vec<String>, Option<(PathBuf, PathBuf)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((home, pool)) = &self.1
            && let Ok(entries) = std::fs::read_dir(pool)
        {
            for e in entries.flatten().filter(is_node_dir) {
                let id = e.file_name().to_string_lossy().into_owned();
                // the node made its own key: its containers carry its id, not the VM's
                let node = sam_protocol::SecretKey::load(&e.path().join("node").join("node.key"))
                    .map(|k| k.node_id().to_string());
                let _ = Command::new(sibling("sam"))
                    .env("SAM_HOME", home)
                    .env("SAM_NODE_BIN", sibling("sam-node"))
                    .args(["vm", "rm", &id, "--provider", "local"])
                    .output();
                remove_containers_of(&id);
                if let Ok(node) = node {
                    remove_containers_of(&node);
                }
            }
        }
        for n in &self.0 {
            remove_containers_of(n);
        }
    }
}

/// No file under `dir` contains the planted GitHub token or git password.
fn assert_no_secret_under(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                files += 1;
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains(TOKEN) && !text.contains(PASSWORD),
                    "a secret is in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 5, "only {files} files under {}", dir.display());
}

/// A node's folder in the local provider's state dir (64 hex digits; `run/` is not one).
fn is_node_dir(e: &std::fs::DirEntry) -> bool {
    let name = e.file_name().to_string_lossy().into_owned();
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn steps(json: &serde_json::Value) -> String {
    json["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "  {:<12} {:>7.3} s  (at {:.3} s)  {}",
                        s["step"].as_str().unwrap_or(""),
                        s["secs"].as_f64().unwrap_or(0.0),
                        s["at"].as_f64().unwrap_or(0.0),
                        s["detail"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A fresh `SAM_HOME` and the `local` provider: the first idea creates a node, the second
/// reuses it warm (same node id, no new node); after each PR the workspace is removed and the
/// node is idle in the pool. A repository that does not exist fails at the workspace step and
/// gives the node back. The reaper deletes the idle node when its time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_idea_from_the_local_pool_reuses_the_warm_node() {
    let s = Setup::new().await;
    let pool_dir = s.home.join("provider").join("local");
    let mut cleanup = Cleanup(vec![], Some((s.home.clone(), pool_dir.clone())));
    let nodes_made = || {
        std::fs::read_dir(&pool_dir)
            .map(|d| d.flatten().filter(is_node_dir).count())
            .unwrap_or(0)
    };
    assert_eq!(nodes_made(), 0);

    // 1. Cold: no node anywhere, the pool creates one.
    let t_cold = Instant::now();
    let (ok, cold, stderr) = s
        .idea(
            "write one.txt first idea",
            &s.repo_url(),
            &["--provider", "local"],
        )
        .await;
    let t_cold = t_cold.elapsed();
    assert!(ok, "first idea failed\njson: {cold}\nstderr: {stderr}");
    assert_eq!(cold["reused"], false, "{cold}");
    assert_eq!(cold["released"], true, "{cold}\n{stderr}");
    let vm = cold["vm"].as_str().expect("vm id").to_string();
    // the node made its own key: its id is learnt by enrolling it, it is not the VM's id
    // (the enrollment's)
    let node = cold["node"].as_str().expect("node id").to_string();
    assert_ne!(node, vm);
    cleanup.0.push(node.clone());
    assert!(
        cold["pr"].as_str().unwrap_or("").ends_with("/o/r/pull/1"),
        "{cold}"
    );
    assert!(stderr.contains("first token"), "{stderr}");
    assert_eq!(nodes_made(), 1);
    assert_eq!(containers_of(&node), 0, "the workspace was not removed");
    let pool = s
        .sam()
        .args(["--json", "pool", "ls", "--provider", "local"])
        .output()
        .await
        .expect("pool ls");
    let pool: serde_json::Value = serde_json::from_slice(&pool.stdout).expect("pool json");
    assert_eq!(pool[0]["id"], vm.as_str());
    assert_eq!(pool[0]["pool"], "idle");
    println!(
        "BENCH sam idea, local provider, cold (no idle node), process {t_cold:?}:\n{}",
        steps(&cold)
    );

    // 2. Warm: the same node, taken from the pool.
    let t_warm = Instant::now();
    let (ok, warm, stderr) = s
        .idea(
            "write two.txt second idea",
            &s.repo_url(),
            &["--provider", "local"],
        )
        .await;
    let t_warm = t_warm.elapsed();
    assert!(ok, "second idea failed\njson: {warm}\nstderr: {stderr}");
    assert_eq!(warm["reused"], true, "{warm}");
    assert_eq!(warm["vm"].as_str(), Some(vm.as_str()));
    assert_eq!(warm["released"], true, "{warm}\n{stderr}");
    assert!(
        warm["pr"].as_str().unwrap_or("").ends_with("/o/r/pull/2"),
        "{warm}"
    );
    assert_eq!(nodes_made(), 1, "a second node was created");
    assert_eq!(containers_of(&node), 0);
    println!(
        "BENCH sam idea, local provider, warm (idle node reused), process {t_warm:?}:\n{}",
        steps(&warm)
    );
    let pulls = s.gh.pulls("o/r");
    assert_eq!(
        pulls.iter().map(|p| p.head.as_str()).collect::<Vec<_>>(),
        [
            "sam/write-one-txt-first-idea",
            "sam/write-two-txt-second-idea"
        ]
    );
    assert!(
        s.branch_log("sam/write-two-txt-second-idea")
            .starts_with("Ada Lovelace write two.txt")
    );
    s.gh.assert_clean();

    // 3. A repository that does not exist: a clear error at the workspace step, the node
    // goes back to the pool, nothing is left running for it.
    let missing = format!("{}/o/missing.git", s.git_base);
    let (ok, err, stderr) = s
        .idea("write three.txt x", &missing, &["--provider", "local"])
        .await;
    assert!(!ok, "{err}");
    let msg = err["error"].as_str().unwrap_or("");
    assert!(msg.contains("step 'workspace' failed"), "{msg}\n{stderr}");
    assert!(stderr.contains("idle in the warm pool"), "{stderr}");
    assert_eq!(nodes_made(), 1);
    assert_eq!(containers_of(&node), 0);

    // 4. Ctrl-C while the workspace is being made: it is removed, the node goes back idle.
    let mut child = s
        .sam()
        .args(["idea", "write four.txt x", "--repo", &s.repo_url()])
        .args(["--agent-cmd", "sam-test-agent", "--lightweight"])
        .args(["--provider", "local"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sam idea");
    let mut err_lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = String::new();
    while let Some(line) = err_lines.next_line().await.expect("read stderr") {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("] connect:") {
            let pid = child.id().expect("pid").to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .expect("kill")
                    .success()
            );
            break;
        }
    }
    while let Some(line) = err_lines.next_line().await.expect("read stderr") {
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = child.wait().await.expect("wait");
    println!("interrupted sam idea:\n{seen}");
    assert!(!status.success(), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(seen.contains("idle in the warm pool"), "{seen}");
    assert_eq!(containers_of(&node), 0, "{seen}");
    assert_eq!(nodes_made(), 1);

    // 5. --keep: the PR is opened, the workspace stays for follow-ups, the node stays busy
    // until `sam vm release`.
    let (ok, kept, stderr) = s
        .idea(
            "write five.txt kept",
            &s.repo_url(),
            &["--provider", "local", "--keep"],
        )
        .await;
    assert!(ok, "kept idea failed\njson: {kept}\nstderr: {stderr}");
    assert_eq!(kept["reused"], true, "{kept}");
    assert_eq!(kept["released"], false, "{kept}");
    assert!(
        kept["pr"]
            .as_str()
            .is_some_and(|u| u.contains("/o/r/pull/")),
        "{kept}"
    );
    assert_eq!(containers_of(&node), 1, "{stderr}");
    let pool = s
        .sam()
        .args(["--json", "pool", "ls", "--provider", "local"])
        .output()
        .await
        .expect("pool ls");
    let pool: serde_json::Value = serde_json::from_slice(&pool.stdout).expect("pool json");
    assert_eq!(pool[0]["pool"], "busy");
    let rel = s
        .sam()
        .args(["vm", "release", &vm, "--provider", "local"])
        .output()
        .await
        .expect("release");
    assert!(
        rel.status.success(),
        "{}",
        String::from_utf8_lossy(&rel.stderr)
    );
    remove_containers_of(&node);

    // No secret reached the node's files (config, logs, conversation store) or the client's
    // (other than the user's own 0600 files, which hold none here: the token is in the env).
    assert_no_secret_under(&s.home);

    // 6. The reaper deletes the idle node once its time is up (idle time 0 here).
    std::fs::write(s.home.join("providers.toml"), "[pool]\nidle_ttl_secs = 0\n").expect("config");
    let reap = s
        .sam()
        .args(["--json", "pool", "reap", "--provider", "local"])
        .output()
        .await
        .expect("reap");
    let reaped: serde_json::Value = serde_json::from_slice(&reap.stdout).expect("reap json");
    assert_eq!(reaped[0]["id"], vm.as_str(), "{reaped}");
    assert_eq!(nodes_made(), 0);
    // ... and drops it from the node book (the idea had written it there).
    assert!(reaped[0]["forgot"].is_string(), "{reaped}");
    let book = std::fs::read_to_string(s.home.join("nodes.toml")).unwrap_or_default();
    let forgot = reaped[0]["forgot"].as_str().unwrap_or_default();
    assert!(
        !book.contains(&format!("name = \"{forgot}\"")),
        "the reaped node is still in the book: {book}"
    );
}

/// Bad arguments fail before anything is made, each with a message that says what to do.
/// (No Docker needed: nothing gets that far.)
#[tokio::test]
async fn sam_idea_bad_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("client");
    let gitconfig = tmp.path().join("gitconfig");
    std::fs::write(
        &gitconfig,
        "[user]\n\tname = A\n\temail = a@example.invalid\n",
    )
    .expect("gitconfig");
    let cases: &[(&[&str], &str)] = &[
        (&["--provider", "nope"], "unknown provider \"nope\""),
        (&["--provider", "hetzner"], "sam provider add hetzner"),
        (&["--provider", "scaleway"], "sam provider add scaleway"),
        (&["--size", "huge"], "--size"),
        (
            &["--node", "n1", "--provider", "local"],
            "--node uses a node you already have",
        ),
    ];
    for (args, want) in cases {
        let out = sam(&home, &gitconfig, "http://127.0.0.1:9")
            .env_remove("HCLOUD_TOKEN")
            .env_remove("SCW_SECRET_KEY")
            .args([
                "idea",
                "write a.txt x",
                "--repo",
                "http://127.0.0.1:9/o/r.git",
            ])
            .args(*args)
            .output()
            .await
            .expect("sam idea");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing was created anywhere.
    assert!(!home.join("provider").join("local").exists());
}

/// The agent crashes mid-turn after writing a file: `sam idea` ends with the node's clear
/// status (work committed in the workspace, not pushed), the node stays busy with the
/// workspace, and `sam pr CONV` then pushes that same commit and opens the PR: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_idea_agent_crash_keeps_the_commit_for_sam_pr() {
    let s = Setup::new().await;
    let pool_dir = s.home.join("provider").join("local");
    let _cleanup = Cleanup(vec![], Some((s.home.clone(), pool_dir)));
    let (ok, err, stderr) = s
        .idea(
            "write crash.txt partial work\ncrash on purpose",
            &s.repo_url(),
            &["--provider", "local"],
        )
        .await;
    assert!(!ok, "{err}\n{stderr}");
    let msg = err["error"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("step 'pr'"), "{msg}\n{stderr}");
    assert!(msg.contains("did not finish"), "{msg}");
    assert!(msg.contains("kept in commit"), "{msg}");
    assert!(stderr.contains("stays busy"), "{stderr}");
    assert!(s.gh.pulls("o/r").is_empty());
    let conv = msg
        .split("sam pr ")
        .nth(1)
        .and_then(|r| r.split(['`', ' ', ')']).next())
        .expect("conversation id in the message")
        .to_string();
    // The retry pushes the kept commit and opens the PR.
    let out = s
        .sam()
        .args(["--json", "pr", &conv])
        .output()
        .await
        .expect("sam pr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(TOKEN) && !stdout.contains(PASSWORD));
    let pulls = s.gh.pulls("o/r");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].head, "sam/write-crash-txt-partial-work");
    let log = s.branch_log("sam/write-crash-txt-partial-work");
    assert!(log.starts_with("Ada Lovelace "), "{log}");
    s.gh.assert_clean();
}
