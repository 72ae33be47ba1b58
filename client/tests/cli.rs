//! The foundation flow through the real binaries: `sam-node init` + `run` in one
//! "terminal", `sam connect` and `sam status` in another, a stranger refused, then
//! let in by `sam share … --to`. Also SIGTERM shutdown and bad tickets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::bins::{NodeProc, last, ok, sam, start_node};

/// A running node and its ticket.
struct Node {
    proc: NodeProc,
    ticket: String,
}

fn start(home: &Path, owner: &str) -> Node {
    let (proc, ticket) = start_node(home, owner);
    assert!(ticket.starts_with("sam2"), "node printed {ticket:?}");
    Node { proc, ticket }
}

#[test]
fn connect_status_refuse_share_join() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let owner_home = tmp.path().join("owner");
    let stranger_home = tmp.path().join("stranger");
    let node_home = tmp.path().join("nodehost");

    let owner_id = last(&ok(sam(&owner_home, &["id"])));
    assert_eq!(owner_id.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(owner_home.join("identity.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let node = start(&node_home, &owner_id);

    let out = ok(sam(
        &owner_home,
        &["connect", &node.ticket, "--name", "box"],
    ));
    assert!(out.contains("as owner"), "{out}");
    let status = ok(sam(&owner_home, &["--json", "status", "box"]));
    let v: serde_json::Value = serde_json::from_str(status.trim()).expect("json");
    assert_eq!(v["role"], "owner");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["rtt_ms"].as_f64().expect("rtt") > 0.0);
    assert!(v["uptime_secs"].is_u64());

    // A stranger is refused with a message that says what to do.
    let stranger_id = last(&ok(sam(&stranger_home, &["id"])));
    let refused = sam(&stranger_home, &["connect", &node.ticket]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not known to this node"), "{err}");
    assert!(err.contains("sam share"), "{err}");

    // The owner shares the node as viewer with the stranger.
    let shared = ok(sam(
        &owner_home,
        &[
            "share",
            "box",
            "--role",
            "viewer",
            "--to",
            &stranger_id,
            "--expires",
            "1d",
        ],
    ));
    let ticket = last(&shared);
    let joined = ok(sam(&stranger_home, &["join", &ticket, "--name", "theirs"]));
    assert!(joined.contains("as viewer"), "{joined}");
    let st = ok(sam(&stranger_home, &["--json", "status", "theirs"]));
    let v: serde_json::Value = serde_json::from_str(st.trim()).expect("json");
    assert_eq!(v["role"], "viewer");

    // A viewer may not list or revoke shares.
    let denied = sam(&stranger_home, &["shares", "ls", "theirs"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("owner role"));

    // The owner sees the share, revokes it, and the stranger is out again.
    let ls = ok(sam(&owner_home, &["--json", "shares", "ls", "box"]));
    let list: serde_json::Value = serde_json::from_str(ls.trim()).expect("json");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(list[0]["role"], "viewer");
    ok(sam(&owner_home, &["revoke", &id, "--node", "box"]));
    let out = sam(&stranger_home, &["status", "theirs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}

#[test]
fn bad_tickets_give_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path();
    let owner = last(&ok(sam(home, &["id"])));
    let node = start(&tmp.path().join("n"), &owner);
    let cases = [
        ("garbage", "not a SAM ticket"),
        (&node.ticket[..40], "cut short"),
        (&node.ticket.replacen("sam2", "sam9", 1), "update sam"),
    ];
    for (ticket, want) in cases {
        let out = sam(home, &["connect", ticket]);
        assert!(!out.status.success(), "{ticket} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{ticket}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let huge = format!("sam2{}", "a".repeat(100_000));
    let out = sam(home, &["connect", &huge]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than a ticket can be"));
}

#[cfg(unix)]
#[test]
fn node_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let owner = last(&ok(sam(tmp.path(), &["id"])));
    let mut node = start(&tmp.path().join("n"), &owner);
    let pid = node.proc.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let t0 = Instant::now();
    loop {
        if let Some(status) = node.proc.0.try_wait().expect("wait") {
            assert!(status.success(), "node exited with {status}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "node ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It removed its address file on the way out.
    assert!(!tmp.path().join("n/node/node.addr").exists());
}
