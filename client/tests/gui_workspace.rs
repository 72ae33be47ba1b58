//! The Files and Ports panels of `sam gui`, driven headless with egui_kittest against a
//! real `sam-node` on loopback and a real workspace container under dockerd: the tree, the
//! highlighted viewer, diffs against HEAD and a base branch, upload, download, attach to a
//! prompt, and a port detected live and forwarded to 127.0.0.1.
//!
//! Needs dockerd and the `sam-base:1` image (or `SAM_BASE_IMAGE`), and `cargo build --bins`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::ClientPaths;
use sam_client::docs::Replicas;
use sam_client::gui::GuiApp;
use sam_client::gui::ports::Fwd;
use sam_crdt::{Conversation, NewConversation};

use crate::support::bins::{NodeProc, ok, sam, start_node};

/// The node process and, once made, its workspace (removed with the container on drop).
struct Rig {
    /// Killed after the container is gone (fields drop after `drop`).
    _node: NodeProc,
    container: Option<String>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(c) = &self.container {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
    }
}

fn start_rig(home: &Path, owner: &str) -> (Rig, String) {
    let (node, ticket) = start_node(home, owner);
    (
        Rig {
            _node: node,
            container: None,
        },
        ticket,
    )
}

fn docker_ready() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs a running dockerd (scripts/lib.sh ensure_docker, or `dockerd &`)"
    );
}

fn sh(container: &str, script: &str) -> String {
    ok(Command::new("docker")
        .args([
            "exec",
            "-u",
            "sam",
            "-w",
            "/workspaces/gt",
            container,
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("docker exec"))
}

type H<'a> = Harness<'a, GuiApp>;

fn steps(h: &mut H<'_>, n: usize) {
    for _ in 0..n {
        h.step();
    }
}

fn wait_until(h: &mut H<'_>, what: &str, cond: impl Fn(&H<'_>) -> bool) {
    let t0 = Instant::now();
    loop {
        h.step();
        if cond(h) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let s = &h.state().state;
            panic!(
                "timed out waiting for: {what}\nfiles: {:?}\nports: {:?}\nnotifications: {:?}",
                s.files, s.ports, s.notifications
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn type_into(h: &mut H<'_>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// `GET /` over plain TCP; the whole answer.
fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A file dropped on the window (as the windowing layer would hand it over).
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn files_and_ports_panels_against_a_real_workspace() {
    docker_ready();
    let tmp = tempfile::tempdir().expect("tempdir");
    let me_home = tmp.path().join("me");
    let me = ClientPaths::new(&me_home);
    let owner = me.identity().expect("identity").node_id().to_string();
    let (mut rig, ticket) = start_rig(&tmp.path().join("node"), &owner);
    ok(sam(&me_home, &["connect", &ticket, "--name", "box"]));
    let out = ok(sam(
        &me_home,
        &["workspace", "create", "--lightweight", "--name", "gt"],
    ));
    let ws = out.lines().last().expect("workspace id").trim().to_string();
    let container = ok(Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=sam.workspace={ws}")])
        .output()
        .expect("docker ps"))
    .trim()
    .to_string();
    assert!(!container.is_empty(), "no container for workspace {ws}");
    rig.container = Some(container.clone());
    // A repo on a feature branch with a change in the working tree, and a web server.
    sh(
        &container,
        r#"set -e
git init -q -b main . && git config user.email t@t && git config user.name t
printf 'line one\nline two\n' > a.txt
mkdir -p src && printf 'fn main() {\n    println!("hello from main");\n}\n' > src/main.rs
git add -A && git commit -qm init
git checkout -qb feature && printf 'feat\n' > feat.txt && git add feat.txt && git commit -qm feat
printf 'line one\nline 2 changed\n' > a.txt
setsid nohup python3 -m http.server 8123 >/dev/null 2>&1 < /dev/null &
"#,
    );

    // A conversation in that workspace, picked in the sidebar.
    let node_id = sam_client::NodeBook::load(&me.nodes())
        .expect("book")
        .find(Some("box"))
        .expect("node")
        .id
        .clone();
    let mut conv = Conversation::create(
        NewConversation {
            id: "0123abcd-0000-4000-8000-00000000f11e".into(),
            title: "files test".into(),
            agent: "claude".into(),
            workspace_node: node_id,
            workspace_id: ws.clone(),
            created_at: 1,
        },
        &owner,
    )
    .expect("conversation");
    Replicas::open(&me)
        .expect("replicas")
        .save(&mut conv)
        .expect("save");

    let app = GuiApp::new(me.clone()).expect("start the gui");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    wait_until(&mut h, "the conversation in the sidebar", |h| {
        h.query_by_label("files test").is_some()
    });
    steps(&mut h, 2);
    // A synthetic click lands where the label was last frame: when the sidebar moves under
    // it (a status line appearing on a loaded machine) it can miss, so click until the
    // conversation is the selected one.
    let mut clicks = 0;
    while h.state().state.selected_conv().map(|c| c.id.as_str())
        != Some("0123abcd-0000-4000-8000-00000000f11e")
    {
        clicks += 1;
        assert!(clicks <= 20, "the conversation never became selected");
        h.get_by_label("files test").click();
        steps(&mut h, 3);
    }

    // The tree, then a file in a folder, highlighted.
    h.get_by_label("Files").click();
    wait_until(&mut h, "the root listing", |h| {
        h.query_by_label("🗋 a.txt").is_some() && h.query_by_label("🗋 feat.txt").is_some()
    });
    steps(&mut h, 2);
    h.get_by_label("⏵ 🗀 src").click();
    wait_until(&mut h, "src/ opens", |h| {
        h.query_by_label("🗋 main.rs").is_some()
    });
    steps(&mut h, 2);
    h.get_by_label("🗋 main.rs").click();
    wait_until(&mut h, "the file in the viewer", |h| {
        h.query_by_label_contains("println!(\"hello from main\")")
            .is_some()
    });

    // Diffs: the working tree against HEAD, then against the base branch.
    h.get_by_label("Diff vs HEAD").click();
    wait_until(&mut h, "the diff against HEAD", |h| {
        h.query_by_label_contains("+line 2 changed").is_some()
    });
    assert!(
        h.query_by_label_contains("feat.txt\n").is_none()
            && h.query_by_label_contains("+feat").is_none(),
        "HEAD already has feat.txt"
    );
    h.get_by_label("Diff vs base").click();
    wait_until(&mut h, "the diff against main", |h| {
        h.query_by_label_contains("+feat").is_some()
    });
    assert!(
        h.query_by_label_contains("Diff: working tree vs main")
            .is_some()
    );

    // Upload a local file to the workspace root.
    let local = tmp.path().join("notes.txt");
    std::fs::write(&local, "uploaded from the gui\n").expect("local file");
    type_into(
        &mut h,
        "Upload (or drop files here) local path",
        local.to_str().expect("utf8"),
    );
    h.get_by_label("Upload").click();
    wait_until(
        &mut h,
        "the upload finishes",
        |h| matches!(&h.state().state.files.status, Some(Ok(s)) if s.contains("now at")),
    );
    assert_eq!(sh(&container, "cat notes.txt"), "uploaded from the gui\n");
    wait_until(&mut h, "the new file in the tree", |h| {
        h.query_by_label("🗋 notes.txt").is_some()
    });

    // Drag and drop a file onto the window.
    let dropped = tmp.path().join("dropped.md");
    std::fs::write(&dropped, "# dropped\n").expect("dropped file");
    h.state_mut().state.files.status = None;
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(dropped.clone())));
    wait_until(
        &mut h,
        "the dropped file is uploaded",
        |h| matches!(&h.state().state.files.status, Some(Ok(s)) if s.contains("dropped.md") && s.contains("now at")),
    );
    assert_eq!(sh(&container, "cat dropped.md"), "# dropped\n");
    wait_until(&mut h, "the dropped file in the tree", |h| {
        h.query_by_label("🗋 dropped.md").is_some()
    });

    // Open a.txt, download it to a folder, attach it to the prompt.
    h.get_by_label("🗋 a.txt").click();
    wait_until(&mut h, "a.txt in the viewer", |h| {
        h.query_by_label_contains("line 2 changed").is_some()
    });
    let dl = tmp.path().join("downloads");
    std::fs::create_dir_all(&dl).expect("dl dir");
    h.state_mut().state.files.download_to.clear();
    type_into(&mut h, "Download to folder", dl.to_str().expect("utf8"));
    h.get_by_label("Download").click();
    wait_until(
        &mut h,
        "the download finishes",
        |h| matches!(&h.state().state.files.status, Some(Ok(s)) if s.starts_with("download") && s.contains("now at")),
    );
    assert_eq!(
        std::fs::read_to_string(dl.join("a.txt")).expect("downloaded"),
        "line one\nline 2 changed\n"
    );
    h.get_by_label("Attach to prompt").click();
    steps(&mut h, 3);
    let prompt = h.state().state.prompt.clone();
    assert!(
        prompt.contains("File `a.txt`:\n```txt\nline one\nline 2 changed\n```"),
        "{prompt:?}"
    );
    assert!(
        h.query_by_label("Send").is_some(),
        "back on the chat with the prompt box"
    );

    // Ports: 8123 is detected; forwarding it serves the workspace's web server locally.
    h.get_by_label("Ports").click();
    wait_until(&mut h, "port 8123 listed", |h| {
        h.query_by_label("8123").is_some()
    });
    h.get_by_label("Forward 8123").click();
    wait_until(&mut h, "the forward is live", |h| {
        matches!(
            h.state().state.ports.forwards.get(&8123),
            Some((_, Fwd::Live(_)))
        )
    });
    let Some((_, Fwd::Live(addr))) = h.state().state.ports.forwards.get(&8123).cloned() else {
        unreachable!()
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(
        h.query_by_label_contains(&format!("at {addr}")).is_some(),
        "the local address is shown"
    );
    let page = http_get(&addr).expect("GET through the forward");
    assert!(
        page.starts_with("HTTP/1.0 200") && page.contains("notes.txt"),
        "{page}"
    );

    // A new listener shows up live; turning the forward off closes the local port.
    sh(
        &container,
        "setsid nohup python3 -m http.server 8124 >/dev/null 2>&1 < /dev/null &",
    );
    wait_until(&mut h, "port 8124 appears", |h| {
        h.query_by_label("8124").is_some()
    });
    h.get_by_label("Forward 8123").click();
    wait_until(&mut h, "the forward is off", |h| {
        h.state().state.ports.forwards.is_empty()
    });
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{addr} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(100));
        h.step();
    }
    drop(h);
    let _ = sam(&me_home, &["workspace", "rm", &ws]);
}
