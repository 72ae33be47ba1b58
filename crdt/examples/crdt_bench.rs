//! Benchmark of SAM conversation documents.
//!
//! `cargo run --release -p sam-crdt --example crdt_bench [MESSAGES] [CHUNKS_PER_MESSAGE]`
//! (default 10,000 × 100 = 1,000,000 chunks of 4 chars). Prints a Markdown table.

use std::time::Instant;

use sam_crdt::{
    Conversation, DocStore, FsyncPolicy, NewConversation, Role, Status, StoreOptions, SyncPeer,
};

const NODE: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn new_conv() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "be4c".into(),
            title: "bench".into(),
            agent: "claude".into(),
            workspace_node: NODE.into(),
            workspace_id: "ws".into(),
            created_at: 0,
        },
        NODE,
    )
    .expect("create")
}

fn stream(
    c: &mut Conversation,
    messages: usize,
    chunks: usize,
    mut after_message: impl FnMut(&mut Conversation),
    mut after_chunk: impl FnMut(&mut Conversation),
) {
    for _ in 0..messages {
        let m = c.start_message(NODE, Role::Agent).expect("start");
        for _ in 0..chunks {
            c.append_chunk(&m, "tok ").expect("chunk");
            after_chunk(c);
        }
        c.set_status(&m, Status::Done, None).expect("status");
        after_message(c);
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = args.first().copied().unwrap_or(10_000);
    let chunks = args.get(1).copied().unwrap_or(100);
    let total = messages * chunks;
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 1. In-memory append.
    let mut c = new_conv();
    let t = Instant::now();
    stream(&mut c, messages, chunks, |_| {}, |_| {});
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {total} chunks in memory (one change per message)"),
        format!("{:.0} chunks/s ({secs:.2} s)", total as f64 / secs),
        "≥ 50,000 chunks/s".into(),
    ));

    // 2. Save and cold load.
    let t = Instant::now();
    let bytes = c.save();
    let save = t.elapsed();
    rows.push((
        "saved size".into(),
        format!(
            "{:.1} MiB ({} bytes), save {:.0} ms",
            bytes.len() as f64 / 1048576.0,
            bytes.len(),
            save.as_secs_f64() * 1e3
        ),
        "-".into(),
    ));
    let t = Instant::now();
    let raw = automerge::AutoCommit::load(&bytes).expect("raw load");
    rows.push((
        "cold load, Automerge only".into(),
        format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3),
        "-".into(),
    ));
    drop(raw);
    let t = Instant::now();
    let loaded = Conversation::load(&bytes).expect("load");
    let load = t.elapsed();
    rows.push((
        format!(
            "cold load + schema check ({} messages)",
            loaded.message_count()
        ),
        format!("{:.0} ms", load.as_secs_f64() * 1e3),
        "≤ 300 ms".into(),
    ));
    let t = Instant::now();
    let n = loaded.messages().len();
    rows.push((
        format!("messages() of {n} messages with text"),
        format!("{:.0} ms", t.elapsed().as_secs_f64() * 1e3),
        "-".into(),
    ));

    // 3. Fresh replica over the sync protocol (in memory, no network).
    let mut replica = Conversation::new_replica();
    let (mut a, mut b) = (SyncPeer::new(), SyncPeer::new());
    let mut src = loaded;
    let t = Instant::now();
    let mut sent = 0usize;
    loop {
        let m1 = a.generate(&mut src);
        if let Some(m) = &m1 {
            sent += m.len();
            b.receive(&mut replica, m).expect("receive");
        }
        let m2 = b.generate(&mut replica);
        if let Some(m) = &m2 {
            a.receive(&mut src, m).expect("receive");
        }
        if m1.is_none() && m2.is_none() {
            break;
        }
    }
    rows.push((
        "fresh replica via sync messages (in memory)".into(),
        format!(
            "{:.0} ms, {:.1} MiB sent",
            t.elapsed().as_secs_f64() * 1e3,
            sent as f64 / 1048576.0
        ),
        "(≤ 1 s over iroh)".into(),
    ));
    assert_eq!(replica.heads(), src.heads());

    // 4. Live chunk: append + generate + receive on a synced replica.
    let m = src.start_message(NODE, Role::Agent).expect("start");
    let mut lat = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        src.append_chunk(&m, "tok ").expect("chunk");
        while let Some(msg) = a.generate(&mut src) {
            b.receive(&mut replica, &msg).expect("r");
            if let Some(r) = b.generate(&mut replica) {
                a.receive(&mut src, &r).expect("r");
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    rows.push((
        "live chunk: append → sync → replica applied (1,000 chunks)".into(),
        format!(
            "p50 {:.0} µs, p99 {:.0} µs",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        ),
        "-".into(),
    ));

    // 5. DocStore, fsync after every message.
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("store");
    let mut c = new_conv();
    store.append(&mut c).expect("snapshot");
    let t = Instant::now();
    stream(
        &mut c,
        messages,
        chunks,
        |c| {
            store.append(c).expect("append");
        },
        |_| {},
    );
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {total} chunks + DocStore fsync per message"),
        format!("{:.0} chunks/s ({secs:.2} s)", total as f64 / secs),
        "-".into(),
    ));
    let disk: u64 = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    drop(store);
    let t = Instant::now();
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("store");
    let reloaded = store.load("be4c").expect("load");
    rows.push((
        "DocStore cold load (snapshot + log replay + check)".into(),
        format!(
            "{:.0} ms, {:.1} MiB on disk",
            t.elapsed().as_secs_f64() * 1e3,
            disk as f64 / 1048576.0
        ),
        "≤ 300 ms".into(),
    ));
    assert_eq!(reloaded.message_count(), messages);

    // 6. DocStore, fsync after every chunk (the node's ack-per-chunk mode).
    let mut c = new_conv();
    store.remove("be4c").expect("rm");
    store.append(&mut c).expect("snapshot");
    let sample = 2_000.min(total);
    let t = Instant::now();
    stream(
        &mut c,
        1,
        sample,
        |_| {},
        |c| {
            store.append(c).expect("append");
        },
    );
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {sample} chunks + DocStore fsync per chunk"),
        format!(
            "{:.0} chunks/s ({:.2} ms/chunk)",
            sample as f64 / secs,
            secs * 1e3 / sample as f64
        ),
        "-".into(),
    ));
    let mut c = new_conv();
    let mut store = DocStore::open(
        dir.path().join("n"),
        StoreOptions {
            fsync: FsyncPolicy::Never,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    store.append(&mut c).expect("snapshot");
    let sample = 100_000.min(total);
    let t = Instant::now();
    stream(
        &mut c,
        sample / 100,
        100,
        |_| {},
        |c| {
            store.append(c).expect("append");
        },
    );
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {sample} chunks + DocStore write per chunk, no fsync"),
        format!("{:.0} chunks/s", sample as f64 / secs),
        "-".into(),
    ));

    println!("| measure ({messages} messages × {chunks} chunks of 4 chars) | result | target |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}
