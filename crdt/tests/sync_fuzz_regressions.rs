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

/// A 291-byte sync message carrying one change whose op names an actor index the change
/// does not list: Automerge 0.12's `Change::decode` unwraps it and panicked (`change.rs:346`)
/// in sam-crdt's fast path (`touched_objects`), before Automerge's apply (which refuses such
/// an op with an error, or queues the change while a dependency is missing) saw it — on the
/// node's guarded path and a client's alike. Now the ops are read only once applied.
#[test]
fn an_op_naming_an_unknown_actor_does_not_panic() {
    let bytes = include_bytes!("data/sync-actor-index-out-of-range.bin");
    let refuse = |_: &sam_crdt::GuardedChange| Err("scoped".to_string());
    let mut conv = conversation();
    let before = conv.heads();
    let _ = SyncPeer::new().receive_guarded(&mut conv, bytes, &refuse);
    assert_eq!(conv.heads(), before, "the document changed");
    let mut conv = conversation();
    let before = conv.heads();
    let _ = SyncPeer::new().receive(&mut conv, bytes);
    let _ = SyncPeer::new().receive_live(&mut conv, bytes);
    assert_eq!(conv.heads(), before, "the document changed");
    assert!(conv.title() == "fuzz");
}

/// A 413-byte sync message whose change's key column decodes an op counter past
/// `u32::MAX`: Automerge 0.12's own `Change::from_bytes` (`types.rs:464`, `OpId::new`
/// unwraps `u64 → u32`) panics while parsing it, before sam-crdt or Automerge's apply can
/// refuse it — a collaborator's sync message would kill the node's document actor. Found by
/// the `sync_message` fuzz target. sam-crdt catches the parser's panic, rolls the document
/// back and refuses the message; the document keeps working.
#[test]
fn an_op_counter_past_u32_is_refused() {
    let bytes = include_bytes!("data/sync-op-counter-over-u32.bin");
    let allow = |_: &sam_crdt::GuardedChange| Ok(());
    let mut conv = conversation();
    let before = conv.heads();
    let err = SyncPeer::new()
        .receive_guarded(&mut conv, bytes, &allow)
        .expect_err("the malformed change is refused");
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(conv.heads(), before, "the document changed");
    assert!(SyncPeer::new().receive(&mut conv, bytes).is_err());
    assert!(SyncPeer::new().receive_live(&mut conv, bytes).is_err());
    assert_eq!(conv.heads(), before, "the document changed");
    // Still a working document: a local write lands.
    conv.set_title(&"ab".repeat(32), "after the attack")
        .expect("a local write");
    assert_eq!(conv.title(), "after the attack");
}

/// Two sync messages (fuzzing, after the two fixes above) whose changes Automerge 0.12
/// applies but whose ops name an actor index the change does not list (`change.rs:331` and
/// `:346` unwrap it when the change is decoded): sam-crdt read those ops after the apply to
/// check the schema, and panicked — on the node's guarded path too. Now a change whose ops
/// cannot be read is refused and the document rolled back.
#[test]
fn a_change_whose_ops_name_unknown_actors_is_refused_after_apply() {
    for bytes in [
        &include_bytes!("data/sync-pred-actor-out-of-range.bin")[..],
        &include_bytes!("data/sync-change-decode-panic-2.bin")[..],
    ] {
        let allow = |_: &sam_crdt::GuardedChange| Ok(());
        let mut conv = conversation();
        let before = conv.heads();
        let _ = SyncPeer::new().receive_guarded(&mut conv, bytes, &allow);
        let _ = SyncPeer::new().receive(&mut conv, bytes);
        let _ = SyncPeer::new().receive_live(&mut conv, bytes);
        assert_eq!(conv.heads(), before, "the document changed");
        conv.set_title(&"ab".repeat(32), "after the attack")
            .expect("a local write");
        assert_eq!(conv.title(), "after the attack");
    }
}
