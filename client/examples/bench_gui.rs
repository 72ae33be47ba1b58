//! GUI frame times, headless (egui_kittest's run loop, no GPU: layout + tessellation):
//! a conversation of 10,000 messages while scrolling, and while one message streams at
//! 1,000 chunks/s (≈16 chunks per 60 Hz frame, a fresh snapshot every frame).
//!
//!   cargo run --release -p sam-client --example bench_gui [-- --messages 10000 --frames 300]

use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use sam_client::ClientPaths;
use sam_client::gui::GuiApp;
use sam_client::gui::state::{ConvSummary, Event};
use sam_crdt::{Conversation, MessageView, NewConversation, Role, Status};

const NODE: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(i: usize) -> String {
    match i % 5 {
        0 => format!("Please look at **module {i}** and fix the `retry` logic."),
        1 => format!(
            "Here is the change for step {i}:\n\n```rust\nfn retry(n: u32) -> u32 {{\n    n.saturating_sub(1) // {i}\n}}\n```\n\nIt keeps the old behaviour."
        ),
        2 => format!("- item one of {i}\n- item two\n- item three with `code`"),
        3 => format!(
            "## Heading {i}\n\nA paragraph of text that wraps over a line or two in a normal window so that layout has some real work to do."
        ),
        _ => format!("Done with {i}."),
    }
}

fn conversation(n: usize) -> (Conversation, Vec<MessageView>, Duration) {
    let me = "1111111111111111111111111111111111111111111111111111111111111111";
    let mut c = Conversation::create(
        NewConversation {
            id: "beec0000".into(),
            title: "ten thousand messages".into(),
            agent: "claude".into(),
            workspace_node: NODE.into(),
            workspace_id: "w1".into(),
            created_at: 1,
        },
        me,
    )
    .expect("create");
    for i in 0..n {
        if i % 2 == 0 {
            c.append_user_message(me, &body(i), Status::Queued)
                .expect("user");
        } else {
            let m = c.start_message(NODE, Role::Agent).expect("agent");
            c.append_chunk(&m, &body(i)).expect("chunk");
            c.set_status(&m, Status::Done, None).expect("done");
        }
    }
    let t = Instant::now();
    let msgs = c.messages();
    (c, msgs, t.elapsed())
}

struct Stats(Vec<f64>);

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }
    fn line(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            self.0.len(),
            self.pct(0.5),
            self.pct(0.95),
            self.pct(0.99),
            self.mean()
        )
    }
}

fn main() -> anyhow::Result<()> {
    let n = arg("--messages", 10_000);
    let frames = arg("--frames", 300);
    let tmp = tempfile::tempdir()?;
    let t0 = Instant::now();
    let (mut conv, msgs, snapshot_time) = conversation(n);
    eprintln!("built {n} messages in {:.1}s", t0.elapsed().as_secs_f64());

    let mut app = GuiApp::new(ClientPaths::new(tmp.path()))?;
    app.state.apply(Event::Convs(vec![ConvSummary {
        id: "beec0000".into(),
        title: "ten thousand messages".into(),
        agent: "claude".into(),
        node: NODE.into(),
        workspace: "w1".into(),
        parent: None,
        created_at: 1,
        messages: n,
        queued: 0,
    }]));
    app.state.select("beec0000");
    app.state.apply(Event::Messages {
        conv: "beec0000".into(),
        messages: Arc::new(msgs.clone()),
        plan: vec![],
    });
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 860.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    for _ in 0..10 {
        h.step();
    }
    h.hover_at(egui::pos2(800.0, 400.0));

    // Scrolling up through the conversation (it opens at the bottom).
    let mut scroll = Stats(Vec::new());
    let mut laid = 0usize;
    for _ in 0..frames {
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, 600.0),
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Unknown,
            modifiers: egui::Modifiers::NONE,
        });
        let t = Instant::now();
        h.step();
        scroll.0.push(t.elapsed().as_secs_f64() * 1e3);
        laid = laid.max(h.state().laid_out());
    }

    // Streaming at 1,000 chunks/s: 16 chunks per frame into a new agent message at the
    // bottom, a fresh snapshot every frame (the backend sends at most one per 30 ms).
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: egui::vec2(0.0, -1.0e7),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: egui::Modifiers::NONE,
    });
    for _ in 0..10 {
        h.step();
    }
    let agent = conv.start_message(NODE, Role::Agent)?;
    let mut stream = Stats(Vec::new());
    let mut snap = Stats(Vec::new());
    for f in 0..frames {
        for k in 0..16 {
            conv.append_chunk(&agent, &format!("chunk {f}.{k} "))?;
        }
        let ts = Instant::now();
        let msgs = Arc::new(conv.messages());
        snap.0.push(ts.elapsed().as_secs_f64() * 1e3);
        h.state_mut().state.apply(Event::Messages {
            conv: "beec0000".into(),
            messages: msgs,
            plan: vec![],
        });
        let t = Instant::now();
        h.step();
        stream.0.push(t.elapsed().as_secs_f64() * 1e3);
    }

    println!("| measurement | frames | p50 | p95 | p99 | mean |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "{}",
        scroll.line(&format!("scrolling {n} messages (frame)"))
    );
    println!(
        "{}",
        stream.line(&format!(
            "streaming 1,000 chunks/s into {n} messages (frame)"
        ))
    );
    println!(
        "{}",
        snap.line(&format!("backend snapshot of {n} messages (`messages()`)"))
    );
    println!();
    println!("rows laid out per frame at most: {laid} of {n}");
    println!(
        "first snapshot of {n} messages: {:.1} ms",
        snapshot_time.as_secs_f64() * 1e3
    );
    Ok(())
}
