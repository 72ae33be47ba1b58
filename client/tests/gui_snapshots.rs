//! Snapshot images of the main screens of `sam gui`, rendered headless with wgpu on the
//! CPU (Mesa's lavapipe Vulkan driver: `mesa-vulkan-drivers`) and compared with the images
//! in `tests/snapshots/`. The state is built by hand (fixed ids, times and texts) so the
//! pictures are the same on every run.
//!
//! After a deliberate UI change: `UPDATE_SNAPSHOTS=1 cargo test -p sam-client --test client
//! gui_snapshots::`, look at the new images, commit them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::ClientPaths;
use sam_client::gui::GuiApp;
use sam_client::gui::files::{Dir, FilesView, Shown};
use sam_client::gui::ports::{Fwd, PortsView};
use sam_client::gui::state::{ConvSummary, KeysView, NodeView, Panel, WorkspaceRow};
use sam_client::gui::tools::FileData;
use sam_client::gui::voice::VoiceForm;
use sam_client::voice::{PlayerState, VoiceConfig};
use sam_crdt::{
    MessageId, MessageView, PermissionOption, PermissionView, PlanEntry, Role, Status, ToolStatus,
    ToolView,
};
use sam_protocol::workspace::{FileEntry, FileKind, PortInfo};

const ME: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NODE: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const CONV: &str = "c0ffee00-0000-4000-8000-000000000001";
/// 2026-11-27 09:41 UTC.
const T0: i64 = 1_795_772_460_000;

fn msg(i: u32, role: Role, author: &str, text: &str, status: Status) -> MessageView {
    MessageView {
        id: MessageId::new(format!("{i:032x}")).expect("id"),
        role,
        author: author.into(),
        created_at: T0 + i as i64 * 60_000,
        text: text.into(),
        status,
        reason: None,
        tool: None,
        permission: None,
    }
}

fn messages() -> Vec<MessageView> {
    let mut tool = msg(4, Role::Tool, NODE, "", Status::Done);
    tool.tool = Some(ToolView {
        kind: "edit".into(),
        title: "Edit src/parser.rs".into(),
        input: "{}".into(),
        output: "1 file changed, 3 insertions(+), 1 deletion(-)".into(),
        status: ToolStatus::Completed,
        locations: vec!["src/parser.rs:42".into()],
    });
    let mut perm = msg(
        6,
        Role::Permission,
        NODE,
        "Run `cargo test`?",
        Status::Running,
    );
    perm.permission = Some(PermissionView {
        options: vec![
            PermissionOption {
                id: "allow".into(),
                name: "Allow once".into(),
                kind: "allow_once".into(),
            },
            PermissionOption {
                id: "always".into(),
                name: "Always allow".into(),
                kind: "allow_always".into(),
            },
            PermissionOption {
                id: "reject".into(),
                name: "Reject".into(),
                kind: "reject_once".into(),
            },
        ],
        answers: vec![],
        chosen: None,
    });
    vec![
        msg(
            1,
            Role::User,
            ME,
            "The parser drops the last token when the input has no trailing newline. Fix it and add a test.",
            Status::Done,
        ),
        msg(
            2,
            Role::Thought,
            NODE,
            "Look at the tokenizer's end-of-input branch first.",
            Status::Done,
        ),
        msg(
            3,
            Role::Agent,
            NODE,
            "Found it: `next_token` returns `None` at the end **before** flushing the buffer.\n\n```rust\nif self.pos == self.input.len() {\n    return self.flush();\n}\n```",
            Status::Done,
        ),
        tool,
        msg(
            5,
            Role::Agent,
            NODE,
            "The fix is in. Next I will run the tests:\n\n- `parser::tests::no_trailing_newline` (new)\n- the whole suite",
            Status::Done,
        ),
        perm,
    ]
}

/// Fails with the fix when no Vulkan driver can render on the CPU.
fn renderer_ready() {
    let icds = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let found = icds.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
        })
    });
    assert!(
        found || std::env::var_os("VK_ICD_FILENAMES").is_some(),
        "the snapshot tests render with wgpu on Mesa's lavapipe (CPU Vulkan), which is not installed: \
         apt-get install mesa-vulkan-drivers (scripts/test.sh does)"
    );
}

/// The app on an empty home, its backend settled, then the hand-built state.
fn harness(size: egui::Vec2) -> Harness<'static, GuiApp> {
    renderer_ready();
    let home = tempfile::tempdir().expect("tempdir").keep();
    let app = GuiApp::new(ClientPaths::new(home)).expect("start");
    let mut h = Harness::builder()
        .with_size(size)
        .wgpu()
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    // The backend's first events (identity, empty book, no conversations).
    let t0 = Instant::now();
    while h.state().state.me.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    h.step();
    let s = &mut h.state_mut().state;
    s.me = ME.into();
    s.nodes = vec![NodeView {
        id: NODE.into(),
        name: "box".into(),
        reachable: Some(true),
        detail: "sam-node 0.1.0 · up 2 h".into(),
        path: None,
    }];
    s.workspaces.insert(
        NODE.into(),
        Ok(vec![WorkspaceRow {
            id: "5f6b1b4251f2".into(),
            name: "parser".into(),
            status: "ready".into(),
        }]),
    );
    s.convs = vec![
        ConvSummary {
            id: CONV.into(),
            title: "Fix the parser".into(),
            agent: "claude".into(),
            node: NODE.into(),
            workspace: "5f6b1b4251f2".into(),
            parent: None,
            created_at: T0,
            messages: 6,
            queued: 0,
        },
        ConvSummary {
            id: "c0ffee00-0000-4000-8000-000000000002".into(),
            title: "Try another approach".into(),
            agent: "claude".into(),
            node: NODE.into(),
            workspace: "5f6b1b4251f2".into(),
            parent: Some(CONV.into()),
            created_at: T0 + 1,
            messages: 3,
            queued: 1,
        },
    ];
    h
}

fn open_conversation(h: &mut Harness<'static, GuiApp>) {
    let s = &mut h.state_mut().state;
    let _ = s.select(CONV);
    s.messages = Arc::new(messages());
    s.plan = vec![
        PlanEntry {
            content: "Find where the last token is lost".into(),
            status: "completed".into(),
            priority: "high".into(),
        },
        PlanEntry {
            content: "Fix and add a test".into(),
            status: "in_progress".into(),
            priority: "high".into(),
        },
    ];
    s.online = true;
}

fn settle(h: &mut Harness<'static, GuiApp>) {
    for _ in 0..4 {
        h.step();
    }
}

fn ws() -> (String, String) {
    (NODE.to_string(), "5f6b1b4251f2".to_string())
}

fn entry(path: &str, kind: FileKind, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        size,
        modified: 0,
    }
}

#[test]
fn snapshot_start_screen() {
    let mut h = harness(egui::vec2(1100.0, 700.0));
    h.state_mut().state.nodes.clear();
    h.state_mut().state.convs.clear();
    settle(&mut h);
    h.snapshot("start");
}

#[test]
fn snapshot_conversation_with_player_bar() {
    let mut h = harness(egui::vec2(1200.0, 900.0));
    open_conversation(&mut h);
    {
        let v = &mut h.state_mut().state.voice;
        v.used = true;
        v.speed = 1.25;
        v.player = PlayerState {
            current: Some(("3".into(), "Found it: next_token returns None".into())),
            queue: vec![("5".into(), "The fix is in".into())],
            paused: false,
            speed: 1.25,
            position_secs: 2.0,
            duration_secs: 6.0,
        };
    }
    h.state_mut().state.prompt = "Also check the lexer for the same bug".into();
    settle(&mut h);
    h.snapshot("conversation");
}

#[test]
fn snapshot_files_viewer_and_diff() {
    let mut h = harness(egui::vec2(1200.0, 800.0));
    open_conversation(&mut h);
    {
        let s = &mut h.state_mut().state;
        s.panel = Panel::Files;
        let mut dirs = BTreeMap::new();
        dirs.insert(
            String::new(),
            Dir::Loaded {
                entries: vec![
                    entry("src", FileKind::Dir, 4096),
                    entry("tests", FileKind::Dir, 4096),
                    entry("Cargo.toml", FileKind::File, 210),
                    entry("README.md", FileKind::File, 1200),
                ],
                truncated: false,
            },
        );
        dirs.insert(
            "src".into(),
            Dir::Loaded {
                entries: vec![
                    entry("src/parser.rs", FileKind::File, 2048),
                    entry("src/lib.rs", FileKind::File, 90),
                ],
                truncated: false,
            },
        );
        s.files = FilesView {
            ws: Some(ws()),
            dirs,
            expanded: ["src".to_string()].into_iter().collect(),
            shown: Shown::File {
                path: "src/parser.rs".into(),
                data: Some(Ok(FileData {
                    data: b"/// Splits the input into tokens.\npub fn next_token(&mut self) -> Option<Token> {\n    if self.pos == self.input.len() {\n        return self.flush(); // the last token\n    }\n    let c = self.input[self.pos];\n    self.pos += 1;\n    Some(Token::Char(c))\n}\n".to_vec(),
                    size: 190,
                    truncated: false,
                })),
            },
            download_to: "/home/me/Downloads".into(),
            ..FilesView::default()
        };
    }
    settle(&mut h);
    h.snapshot("files");
    h.state_mut().state.files.shown = Shown::Diff {
        title: "working tree vs main".into(),
        text: Some(Ok((
            "diff --git a/src/parser.rs b/src/parser.rs\nindex e5c5c55..d5ba713 100644\n--- a/src/parser.rs\n+++ b/src/parser.rs\n@@ -40,7 +40,7 @@ impl Lexer {\n     pub fn next_token(&mut self) -> Option<Token> {\n         if self.pos == self.input.len() {\n-            return None;\n+            return self.flush();\n         }\n".into(),
            false,
        ))),
    };
    settle(&mut h);
    h.snapshot("files_diff");
}

#[test]
fn snapshot_ports() {
    let mut h = harness(egui::vec2(1100.0, 600.0));
    open_conversation(&mut h);
    {
        let s = &mut h.state_mut().state;
        s.panel = Panel::Ports;
        let mut forwards = BTreeMap::new();
        forwards.insert(8123, (ws(), Fwd::Live("127.0.0.1:8123".into())));
        s.ports = PortsView {
            watching: Some(ws()),
            list: Some(Ok(vec![
                PortInfo {
                    port: 5432,
                    addr: "127.0.0.1".into(),
                },
                PortInfo {
                    port: 8123,
                    addr: "0.0.0.0".into(),
                },
            ])),
            forwards,
        };
    }
    settle(&mut h);
    h.snapshot("ports");
}

#[test]
fn snapshot_terminal_and_palette() {
    let mut h = harness(egui::vec2(1100.0, 600.0));
    open_conversation(&mut h);
    {
        let s = &mut h.state_mut().state;
        s.panel = Panel::Terminal;
        s.term_open = true;
        s.term_status = "terminal 1 in parser · 1 attached".into();
        s.term_out.extend_from_slice(
            b"sam@parser:/workspaces/parser$ cargo test -q\r\n\r\nrunning 12 tests\r\n............\r\ntest result: \x1b[32mok\x1b[0m. 12 passed; 0 failed\r\n\r\nsam@parser:/workspaces/parser$ ",
        );
    }
    settle(&mut h);
    h.snapshot("terminal");
    {
        let s = &mut h.state_mut().state;
        s.palette.open = true;
        s.palette.query = "fix".into();
    }
    settle(&mut h);
    h.snapshot("palette");
}

#[test]
fn snapshot_settings_with_voice() {
    let mut h = harness(egui::vec2(1100.0, 760.0));
    open_conversation(&mut h);
    {
        let s = &mut h.state_mut().state;
        s.dialogs.settings = true;
        s.keys = KeysView {
            storage: "No keyring service is running: keys are kept in ~/.sam/agent-keys.toml with mode 0600.".into(),
            keys: vec![
                ("ANTHROPIC_API_KEY".into(), true),
                ("OPENAI_API_KEY".into(), false),
                ("GEMINI_API_KEY".into(), false),
                ("MISTRAL_API_KEY".into(), false),
                ("SAM_VOICE_API_KEY".into(), false),
            ],
        };
        s.voice.settings = Some(VoiceForm::of(&VoiceConfig::default()));
    }
    settle(&mut h);
    h.snapshot("settings");
}

/// A node reached through a relay wears a "relay" badge in the sidebar (hover: which relay
/// and why not direct); a direct one does not.
#[test]
fn sidebar_badge_for_a_relayed_node() {
    let mut h = harness(egui::vec2(1100.0, 700.0));
    h.state_mut().state.nodes[0].path = Some(sam_client::gui::state::NodePath {
        kind: "relay".into(),
        note: "through relay https://relay.example.org/".into(),
    });
    settle(&mut h);
    assert!(h.query_by_label("relay").is_some(), "no relay badge");
    h.state_mut().state.nodes[0].path = Some(sam_client::gui::state::NodePath {
        kind: "direct".into(),
        note: "direct path".into(),
    });
    settle(&mut h);
    assert!(
        h.query_by_label("relay").is_none(),
        "a direct node shows the relay badge"
    );
}
