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

/// `/proc/loadavg`'s first three fields (empty where unavailable).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
    let load_before = loadavg();

    // 1. In-memory append.
    let mut c = new_conv();
    let t = Instant::now();
    stream(&mut c, messages, chunks, |_| {}, |_| {});
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {total} chunks in memory (changes per message: start, chunks, status)"),
        format!("{:.0} chunks/s ({secs:.2} s)", total as f64 / secs),
        "≥ 50,000 chunks/s".into(),
    ));

    // 1b. One change per chunk (what a writer that commits after every chunk pays), sampled.
    let mut c2 = new_conv();
    let sample = 100_000.min(total);
    let t = Instant::now();
    stream(
        &mut c2,
        sample / chunks.max(1),
        chunks,
        |_| {},
        |c| c.commit_pending(),
    );
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        format!("append {sample} chunks in memory, one change per chunk"),
        format!("{:.0} chunks/s", sample as f64 / secs),
        "-".into(),
    ));
    drop(c2);

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
    let raw = automerge::AutoCommit::load_unverified_heads(&bytes).expect("raw load");
    rows.push((
        "cold load, Automerge only, unverified heads".into(),
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
        "live chunk: append → sync → 1 replica applied (1,000 chunks)".into(),
        format!(
            "p50 {:.0} µs, p99 {:.0} µs",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        ),
        "-".into(),
    ));

    // 4b. Live chunk to 10 subscribed replicas (each with its own sync state). In-process and
    // single-threaded: the time until the last replica has applied the chunk is the sum of the
    // ten receives, a pessimistic stand-in for ten clients applying in parallel.
    let base = replica.save();
    let mut subs: Vec<(Conversation, SyncPeer, SyncPeer)> = vec![(replica, a, b)];
    for _ in 1..10 {
        let mut r = Conversation::load(&base).expect("load replica");
        let (mut x, mut y) = (SyncPeer::new(), SyncPeer::new());
        loop {
            let m1 = x.generate(&mut src);
            if let Some(m) = &m1 {
                y.receive(&mut r, m).expect("r");
            }
            let m2 = y.generate(&mut r);
            if let Some(m) = &m2 {
                x.receive(&mut src, m).expect("r");
            }
            if m1.is_none() && m2.is_none() {
                break;
            }
        }
        subs.push((r, x, y));
    }
    let mut serial = Vec::new();
    let mut fanout = Vec::new();
    let live_chunks = 300;
    for _ in 0..live_chunks {
        let t = Instant::now();
        src.append_chunk(&m, "tok ").expect("chunk");
        let msgs: Vec<Option<Vec<u8>>> = subs
            .iter_mut()
            .map(|(_, x, _)| x.generate(&mut src))
            .collect();
        let t_gen = t.elapsed().as_secs_f64();
        let mut slowest = 0f64;
        for ((r, x, y), msg) in subs.iter_mut().zip(msgs) {
            let mut next = msg;
            while let Some(msg) = next {
                let tr = Instant::now();
                y.receive(r, &msg).expect("r");
                slowest = slowest.max(tr.elapsed().as_secs_f64());
                if let Some(back) = y.generate(r) {
                    x.receive(&mut src, &back).expect("r");
                }
                next = x.generate(&mut src);
            }
        }
        serial.push(t.elapsed().as_secs_f64() * 1e3);
        fanout.push((t_gen + slowest) * 1e3);
    }
    serial.sort_by(f64::total_cmp);
    fanout.sort_by(f64::total_cmp);
    let src_text = src.message(&m).map(|v| v.text).unwrap_or_default();
    for (r, _, _) in &subs {
        assert_eq!(r.message(&m).map(|v| v.text).unwrap_or_default(), src_text);
    }
    let p = |v: &[f64], q: usize| v[v.len() * q / 100];
    rows.push((
        format!(
            "live chunk to 10 replicas: node generates 10 messages + slowest replica apply ({live_chunks} chunks)"
        ),
        format!("p50 {:.1} ms, p99 {:.1} ms", p(&fanout, 50), p(&fanout, 99)),
        "p99 ≤ 20 ms".into(),
    ));
    rows.push((
        "same, everything serial on one thread (10 applies + 10 acks)".into(),
        format!("p50 {:.1} ms, p99 {:.1} ms", p(&serial, 50), p(&serial, 99)),
        "-".into(),
    ));
    drop(subs);

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

    println!(
        "load average (1/5/15 min): {load_before} at start, {} at end",
        loadavg()
    );
    println!();
    println!("| measure ({messages} messages × {chunks} chunks of 4 chars) | result | target |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}
