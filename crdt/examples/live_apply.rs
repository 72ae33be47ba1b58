//! How a follower's apply cost splits between per-batch and per-change: the same 1,000
//! chunks applied as 1,000 live batches, then as 100 batches of 10 changes.
use std::time::Instant;

use sam_crdt::{Conversation, NewConversation, Role, SyncPeer};

const NODE: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn main() {
    let mut node = Conversation::create(
        NewConversation {
            id: "5eed".into(),
            title: "t".into(),
            agent: "claude".into(),
            workspace_node: NODE.into(),
            workspace_id: "w".into(),
            created_at: 1,
        },
        NODE,
    )
    .expect("create");
    let m = node.start_message(NODE, Role::Agent).expect("m");
    let prior: usize = std::env::var("PRIOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for i in 0..prior {
        node.append_chunk(&m, &format!("{i:07};")).expect("c");
        node.commit_pending();
    }
    let base = node.save();
    for per in [1usize, 10, 100] {
        let mut src = Conversation::load(&base).expect("load");
        let mut since = src.heads();
        let mut batches = Vec::new();
        for b in 0..(1000 / per) {
            for j in 0..per {
                src.append_chunk(&m, &format!("{:07};", b * per + j))
                    .expect("c");
                src.commit_pending();
            }
            batches.push(sam_crdt::live_message(&mut src, &since).expect("batch"));
            since = src.heads();
        }
        let mut dst = Conversation::load(&base).expect("load");
        let mut peer = SyncPeer::new();
        let t = Instant::now();
        for b in &batches {
            peer.receive_live(&mut dst, b).expect("apply");
        }
        let e = t.elapsed();
        println!(
            "{per:>4} changes/batch: {:>4} batches, {:.1} µs per batch, {:.1} µs per change",
            batches.len(),
            e.as_secs_f64() * 1e6 / batches.len() as f64,
            e.as_secs_f64() * 1e6 / 1000.0
        );
    }
}
