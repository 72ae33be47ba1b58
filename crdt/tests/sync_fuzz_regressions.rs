//! Inputs the `sync_message` fuzz target (fuzz/) found to crash the receive path, kept
//! as regression tests: each must be refused with an error, never a panic.

use sam_crdt::{Conversation, NewConversation, SyncPeer};

fn conversation() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "0123456789abcdef0123456789abcdef".into(),
            title: "fuzz".into(),
            agent: "custom".into(),
            workspace_node: "ab".repeat(32),
            workspace_id: "w1".into(),
            created_at: 1_700_000_000_000,
        },
        &"cd".repeat(32),
    )
    .expect("create")
}

/// A sync message whose bloom filter announces entries but holds no bits: Automerge
/// 0.12 divided by zero on it (`bloom.rs:74`, "attempt to calculate the remainder with a
/// divisor of zero"), in the node's document actor and in `sam serve`.
#[test]
fn a_bloom_filter_without_bits_is_refused() {
    let bytes = include_bytes!("data/sync-bloom-without-bits.bin");
    let mut conv = conversation();
    let err = SyncPeer::new()
        .receive(&mut conv, bytes)
        .expect_err("refused");
    assert!(err.to_string().contains("bloom filter"), "{err}");
    let mut replica = Conversation::new_replica();
    assert!(SyncPeer::new().receive(&mut replica, bytes).is_err());
    // The node applies peers' messages through the guarded path: the same check.
    let allow = |_: &sam_crdt::GuardedChange| Ok(());
    let err = SyncPeer::new()
        .receive_guarded(&mut conv, bytes, &allow)
        .expect_err("refused");
    assert!(err.to_string().contains("bloom filter"), "{err}");
}
