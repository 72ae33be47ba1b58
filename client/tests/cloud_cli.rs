//! `sam vm|pool|provider` through the binary: the local provider on loopback, and
//! `sam provider add hetzner` against a tiny stand-in for the Hetzner API on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::bins::ok;

fn sam_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sam"))
}

fn sam_env(home: &Path) -> Command {
    let node = sam_bin().with_file_name("sam-node");
    assert!(
        node.is_file(),
        "{} is missing: cargo build --bins",
        node.display()
    );
    let mut c = Command::new(sam_bin());
    c.env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env("SAM_NODE_BIN", node)
        .env_remove("RUST_LOG")
        .env_remove("HCLOUD_TOKEN");
    c
}

fn sam(home: &Path, args: &[&str]) -> Output {
    sam_env(home).args(args).output().expect("run sam")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(ok(out).trim()).expect("json")
}

#[test]
fn vm_create_ls_release_reuse_rm_with_the_local_provider() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path();
    let made = json(&sam(home, &["--json", "vm", "create", "--size", "small"]));
    assert_eq!(made["reused"], false);
    let id = made["id"].as_str().expect("id").to_owned();
    let ticket = made["ticket"].as_str().expect("ticket").to_owned();
    assert!(ticket.starts_with("sam2"));

    // the ticket works for this peer (the owner)
    let connected = sam(home, &["connect", &ticket, "--name", "pooled"]);
    ok(&connected);
    ok(sam(home, &["status", "pooled"]));

    let ls = json(&sam(home, &["--json", "vm", "ls"]));
    let rows = ls.as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["provider"], "local");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["pool"], "busy");

    let text = ok(sam(home, &["vm", "release", &id]));
    assert_eq!(text.trim().lines().last(), Some(id.as_str()));
    let pool = json(&sam(home, &["--json", "pool", "ls", "--provider", "local"]));
    assert_eq!(pool[0]["pool"], "idle");
    assert!(pool[0]["expires_at"].as_u64().is_some());

    let again = json(&sam(home, &["--json", "vm", "create"]));
    assert_eq!(again["reused"], true);
    assert_eq!(again["id"], id.as_str());

    let nodes = ok(sam(home, &["nodes", "ls"]));
    assert!(nodes.contains("pooled"), "{nodes}");
    let rm = ok(sam(home, &["vm", "rm", &id]));
    assert_eq!(rm.trim().lines().last(), Some(id.as_str()));
    // The deleted machine's node can never answer again: it leaves the node book.
    let nodes = ok(sam(home, &["nodes", "ls"]));
    assert!(!nodes.contains("pooled"), "{nodes}");
    assert_eq!(
        json(&sam(home, &["--json", "vm", "ls"])),
        serde_json::json!([])
    );
    let missing = sam(home, &["vm", "rm", &id]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no SAM machine"));
}

/// Answers `GET /servers`: 200 with no servers for `Bearer good-token`, 401 otherwise.
fn fake_hetzner() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 16 * 1024];
            let mut n = 0;
            while n < buf.len() {
                match s.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let good = req
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Bearer good-token"));
            let line = req.lines().next().unwrap_or("").to_owned();
            log.lock().expect("log").push(line.clone());
            let (status, body) = if !line.starts_with("GET /v1/servers?") {
                (
                    "404 Not Found",
                    r#"{"error":{"code":"not_found","message":"no"}}"#,
                )
            } else if good {
                (
                    "200 OK",
                    r#"{"servers":[],"meta":{"pagination":{"page":1,"per_page":50,"previous_page":null,"next_page":null,"last_page":1,"total_entries":0}}}"#,
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"error":{"code":"unauthorized","message":"unable to authenticate"}}"#,
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, seen)
}

fn add_hetzner(home: &Path, base: &str, token: &str) -> Output {
    let mut child = sam_env(home)
        .env("SAM_HETZNER_API", base)
        .args(["provider", "add", "hetzner", "--token-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{token}\n").as_bytes())
        .expect("write");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

#[test]
fn provider_add_hetzner_checks_and_stores_the_token_privately() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path();
    let (base, seen) = fake_hetzner();
    let file = home.join("providers.toml");

    let bad = add_hetzner(home, &base, "bad-token");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("token invalid"), "{err}");
    assert!(
        !err.contains("bad-token") && !String::from_utf8_lossy(&bad.stdout).contains("bad-token")
    );
    assert!(!file.exists(), "an invalid token is not stored");

    let good = add_hetzner(home, &base, "good-token");
    let out = ok(&good);
    assert!(
        !out.contains("good-token")
            && !String::from_utf8_lossy(&good.stderr).contains("good-token")
    );
    assert_eq!(out.trim().lines().last(), Some("hetzner"));
    let text = std::fs::read_to_string(&file).expect("providers.toml");
    assert!(text.contains("good-token"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        seen.lock()
            .expect("log")
            .iter()
            .all(|l| l.starts_with("GET /v1/servers?"))
    );

    // `vm ls` now lists local and hetzner; `provider ls` never shows the token
    let ls = sam_env(home)
        .env("SAM_HETZNER_API", &base)
        .args(["--json", "vm", "ls", "--provider", "hetzner"])
        .output()
        .expect("ls");
    assert_eq!(json(&ls), serde_json::json!([]));
    let providers = ok(sam(home, &["provider", "ls"]));
    assert_eq!(providers.trim(), "local\nhetzner");

    // the relays of this cloud's nodes sit next to the token: checked before any use (a
    // relay URL with credentials is refused without echoing them), kept when the token is
    // replaced
    let with_relays = |relays: &str| {
        let text = std::fs::read_to_string(&file).expect("providers.toml");
        let text = text
            .lines()
            .filter(|l| !l.starts_with("relays"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = text.replace("[hetzner]", &format!("[hetzner]\nrelays = {relays}"));
        std::fs::write(&file, text).expect("write providers.toml");
    };
    with_relays(r#"["https://user:pw@relay.example/"]"#);
    let bad = sam_env(home)
        .env("SAM_HETZNER_API", &base)
        .args(["vm", "ls", "--provider", "hetzner"])
        .output()
        .expect("ls");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("`relays` of [hetzner]"), "{err}");
    assert!(!err.contains("pw@"), "{err}");
    with_relays(r#"["https://relay.example.org/"]"#);
    ok(add_hetzner(home, &base, "good-token"));
    let text = std::fs::read_to_string(&file).expect("providers.toml");
    assert!(
        text.contains(r#"relays = ["https://relay.example.org/"]"#),
        "{text}"
    );
}
