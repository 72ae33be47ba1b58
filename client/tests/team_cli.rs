//! `sam team create|ls|release|rm` through the real binaries: a `sam-provisioner serve --team`
//! on a local pool, members with homes of their own. Releasing a node brings its conversations
//! into the member's replica first (all messages, readable with the node gone), and a release
//! that cannot do that is refused and releases nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::bins::{last, node_bin, ok, sam, sibling};

/// `sam-provisioner serve --team` (SIGTERM on drop: it deletes its local nodes as it stops).
struct Prov {
    child: Child,
    home: PathBuf,
}

impl Drop for Prov {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Prov {
    /// The directory of the local provider's VM `id` (gone once the VM is deleted).
    fn vm_dir(&self, id: &str) -> PathBuf {
        self.home.join("provisioner/local").join(id)
    }
}

/// Starts a team provisioner for `members` (NodeIds) and returns it with the line it prints.
fn provisioner(home: &Path, members: &[&str]) -> (Prov, String) {
    std::fs::create_dir_all(home).expect("provisioner home");
    let team = home.join("team.toml");
    let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    std::fs::write(
        &team,
        format!(
            "provider = \"local\"\nbind = \"127.0.0.1:0\"\nmembers = [{}]\n",
            list.join(", ")
        ),
    )
    .expect("team.toml");
    let mut child = Command::new(sibling("sam-provisioner"))
        .env("SAM_HOME", home)
        .env("SAM_NODE_BIN", node_bin())
        .env_remove("RUST_LOG")
        .args(["serve", "--team"])
        .arg(&team)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sam-provisioner");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ticket line");
    (
        Prov {
            child,
            home: home.to_owned(),
        },
        line.trim().to_owned(),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(last(out).as_str()).expect("json")
}

/// The texts of a conversation's messages, from the local replica only.
fn texts(home: &Path, conv: &str) -> Vec<String> {
    let log = json(&ok(sam(home, &["--json", "log", conv])));
    log.as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

/// Deletes the local replica of `conv` (what only the node has then is at stake).
fn forget_replica(home: &Path, conv: &str) {
    for ext in ["am", "log"] {
        let p = home.join("docs").join(format!("{conv}.{ext}"));
        let _ = std::fs::remove_file(&p);
        assert!(!p.exists());
    }
}

/// A member with a conversation on a team node releases it: the conversation (every message,
/// including what only the node had) is in the member's replica afterwards and reads without
/// the node; the provisioner checked the heads the member sent, wiped the node (its
/// conversation deleted) and pooled it; the next member gets the same node warm and no trace
/// of the first one's. Before: no client command spoke `sam/prov/1`, the provisioner wiped
/// whatever the member had not synced by hand, and a node that had served a conversation was
/// deleted rather than pooled.
#[test]
fn a_released_node_leaves_its_conversations_with_the_member_and_nothing_for_the_next() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let a_id = last(&ok(sam(&alice, &["id"])));
    let b_id = last(&ok(sam(&bob, &["id"])));
    let (prov, via) = provisioner(&tmp.path().join("prov"), &[&a_id, &b_id]);

    let got = json(&ok(sam(
        &alice,
        &["--json", "team", "create", "--via", &via, "--name", "box"],
    )));
    let vm = got["id"].as_str().expect("vm id").to_owned();
    let a_node = got["node"].as_str().expect("node id").to_owned();
    assert!(prov.vm_dir(&vm).is_dir());
    // remembered: no --via from now on
    let ls = json(&ok(sam(&alice, &["--json", "team", "ls"])));
    assert_eq!(ls[0]["id"], vm.as_str());

    let conv = last(&ok(sam(
        &alice,
        &[
            "convs",
            "new",
            "--workspace",
            "w1",
            "--node",
            "box",
            "--title",
            "alice's plan",
        ],
    )));
    ok(sam(&alice, &["prompt", &conv, "first secret"]));
    ok(sam(&alice, &["prompt", &conv, "second secret"]));
    // Only the node holds the conversation now.
    forget_replica(&alice, &conv);

    let out = sam(&alice, &["--json", "team", "release", "box"]);
    let stdout = ok(&out);
    let rel = json(&stdout);
    assert_eq!(rel["conversations"], serde_json::json!([conv]), "{rel}");
    assert_eq!(rel["held_here"], 1, "{rel}");
    assert_eq!(rel["forced"], false);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("held here"),
        "no progress on stderr"
    );
    // The provisioner wiped the node and pooled it (it is no longer alice's) …
    assert!(
        prov.vm_dir(&vm).is_dir(),
        "the released node was deleted instead of pooled"
    );
    assert_eq!(
        json(&ok(sam(&alice, &["--json", "team", "ls"]))),
        serde_json::json!([])
    );
    // … and alice reads every message from her replica.
    let t = texts(&alice, &conv);
    assert!(
        t.iter().any(|m| m == "first secret") && t.iter().any(|m| m == "second secret"),
        "{t:?}"
    );

    // bob gets the same node warm and nothing of alice's (his --via is the line
    // `sam-provisioner --json serve` prints)
    let via_json = serde_json::json!({ "provisioner": "id", "ticket": via }).to_string();
    let b = json(&ok(sam(
        &bob,
        &[
            "--json", "team", "create", "--via", &via_json, "--name", "mine",
        ],
    )));
    assert_eq!(b["reused"], true, "{b}");
    assert_eq!(b["node"].as_str(), Some(a_node.as_str()));
    let convs = ok(sam(&bob, &["--json", "convs", "ls"]));
    assert!(
        !convs.contains(&conv) && !convs.contains("alice's plan"),
        "{convs}"
    );
    let b_vm = b["id"].as_str().expect("id").to_owned();
    let rm = json(&ok(sam(&bob, &["--json", "team", "rm", "mine"])));
    assert_eq!(rm["held_here"], 0);
    assert!(!prov.vm_dir(&b_vm).exists());
}

/// A conversation the member cannot hold here (its replica cannot be written) makes the
/// release refuse, with the reason, and nothing is released: the node stays the member's and
/// still serves the conversation. Once the replica is writable again the release goes
/// through and takes the conversation along. Before: nothing checked; the provisioner took the
/// node and the conversation with it.
#[test]
fn a_release_that_cannot_hold_a_conversation_is_refused_and_releases_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let alice = tmp.path().join("alice");
    let a_id = last(&ok(sam(&alice, &["id"])));
    let (prov, via) = provisioner(&tmp.path().join("prov"), &[&a_id]);
    let got = json(&ok(sam(
        &alice,
        &["--json", "team", "create", "--via", &via, "--name", "box"],
    )));
    let vm = got["id"].as_str().expect("vm id").to_owned();
    let conv = last(&ok(sam(
        &alice,
        &["convs", "new", "--workspace", "w1", "--node", "box"],
    )));
    ok(sam(&alice, &["prompt", &conv, "only on the node"]));
    // The replica cannot be saved: a directory where its file goes (root ignores modes).
    forget_replica(&alice, &conv);
    let blocker = alice.join("docs").join(format!("{conv}.log"));
    std::fs::create_dir_all(blocker.join("x")).expect("blocker");

    for cmd in ["release", "rm"] {
        let out = sam(&alice, &["team", cmd, "box"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} went through: {err}");
        assert!(
            err.contains("Nothing was") && err.contains(&conv),
            "{cmd}: {err}"
        );
        assert!(prov.vm_dir(&vm).is_dir(), "{cmd} took the node");
        let ls = json(&ok(sam(&alice, &["--json", "team", "ls"])));
        assert_eq!(
            ls[0]["id"],
            vm.as_str(),
            "{cmd}: the node is no longer hers"
        );
    }

    std::fs::remove_dir_all(&blocker).expect("unblock");
    let rel = json(&ok(sam(&alice, &["--json", "team", "release", "box"])));
    assert_eq!(rel["held_here"], 1, "{rel}");
    assert_eq!(
        json(&ok(sam(&alice, &["--json", "team", "ls"]))),
        serde_json::json!([])
    );
    let t = texts(&alice, &conv);
    assert!(t.iter().any(|m| m == "only on the node"), "{t:?}");

    // --force goes through and says on stderr what is lost.
    let got = json(&ok(sam(
        &alice,
        &["--json", "team", "create", "--name", "box2"],
    )));
    let vm = got["id"].as_str().expect("vm id").to_owned();
    let conv = last(&ok(sam(
        &alice,
        &["convs", "new", "--workspace", "w1", "--node", "box2"],
    )));
    forget_replica(&alice, &conv);
    let blocker = alice.join("docs").join(format!("{conv}.log"));
    std::fs::create_dir_all(blocker.join("x")).expect("blocker");
    let out = sam(&alice, &["--json", "team", "rm", "box2", "--force"]);
    let rm = json(&ok(&out));
    assert_eq!(rm["forced"], true, "{rm}");
    assert_eq!(rm["held_here"], 0, "{rm}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lost") && err.contains(&conv), "{err}");
    assert!(!prov.vm_dir(&vm).exists());
}
