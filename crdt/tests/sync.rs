//! Sync: fuzzing the decoders, rejecting schema-breaking peers, and a multi-peer simulation.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use proptest::prelude::*;
use sam_crdt::{Conversation, CrdtError, NewConversation, Role, Status, SyncPeer};

const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NODE: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn new_conv() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "5eed".into(),
            title: "sync".into(),
            agent: "codex".into(),
            workspace_node: NODE.into(),
            workspace_id: "ws".into(),
            created_at: 1,
        },
        NODE,
    )
    .expect("create")
}

/// Runs the sync protocol between two docs until quiet; returns the number of messages.
fn sync_pair(a: &mut Conversation, b: &mut Conversation) -> Result<usize, CrdtError> {
    let (mut pa, mut pb) = (SyncPeer::new(), SyncPeer::new());
    let mut n = 0;
    for _ in 0..100 {
        let m1 = pa.generate(a);
        if let Some(m) = &m1 {
            pb.receive(b, m)?;
            n += 1;
        }
        let m2 = pb.generate(b);
        if let Some(m) = &m2 {
            pa.receive(a, m)?;
            n += 1;
        }
        if m1.is_none() && m2.is_none() {
            return Ok(n);
        }
    }
    panic!("sync did not quiesce");
}

#[test]
fn fresh_replica_receives_everything() {
    let mut node = new_conv();
    let m = node.start_message(NODE, Role::Agent).expect("m");
    for i in 0..50 {
        node.append_chunk(&m, &format!("{i} ")).expect("c");
    }
    let mut client = Conversation::new_replica();
    assert!(client.is_empty());
    assert!(matches!(
        client.append_user_message(ALICE, "x", Status::Queued),
        Err(CrdtError::EmptyReplica)
    ));
    sync_pair(&mut node, &mut client).expect("sync");
    assert_eq!(client.heads(), node.heads());
    assert_eq!(client.messages(), node.messages());
    // live push of one more chunk, and the client's index follows
    let q = client
        .append_user_message(ALICE, "next", Status::Queued)
        .expect("q");
    node.append_chunk(&m, "end").expect("c");
    sync_pair(&mut node, &mut client).expect("sync");
    assert_eq!(node.queued_prompts(), vec![q]);
    client.append_chunk(&m, "!").expect("index knows m");
}

#[test]
fn sync_state_round_trips() {
    let mut a = new_conv();
    let mut b = Conversation::new_replica();
    sync_pair(&mut a, &mut b).expect("sync");
    let mut p = SyncPeer::new();
    let mut q = SyncPeer::new();
    while let Some(m) = p.generate(&mut a) {
        q.receive(&mut b, &m).expect("r");
        match q.generate(&mut b) {
            Some(r) => p.receive(&mut a, &r).expect("r"),
            None => break,
        }
    }
    let saved = p.encode_state();
    let resumed = SyncPeer::decode_state(&saved).expect("decode");
    assert_eq!(resumed.shared_heads(), p.shared_heads());
    assert!(SyncPeer::decode_state(b"\xff\xffgarbage").is_err());
}

fn evil_peer_sync(mutate: impl FnOnce(&mut automerge::AutoCommit)) -> CrdtError {
    let mut good = new_conv();
    good.append_user_message(ALICE, "hi", Status::Queued)
        .expect("m");
    let mut evil_doc = Conversation::load(&good.save())
        .expect("l")
        .automerge()
        .clone();
    let before = good.heads();
    let messages_before = good.messages();
    mutate(&mut evil_doc);
    let mut evil_state = automerge::sync::State::new();
    let mut mine = SyncPeer::new();
    let mut err = None;
    for _ in 0..20 {
        use automerge::sync::SyncDoc;
        let out = mine.generate(&mut good);
        if let Some(m) = &out {
            let m = automerge::sync::Message::decode(m).expect("decode");
            evil_doc
                .sync()
                .receive_sync_message(&mut evil_state, m)
                .expect("evil receive");
        }
        let msg = evil_doc.sync().generate_sync_message(&mut evil_state);
        if out.is_none() && msg.is_none() {
            break;
        }
        let Some(msg) = msg else { continue };
        if let Err(e) = mine.receive(&mut good, &msg.encode()) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(good.heads(), before, "rolled back");
    assert_eq!(good.messages(), messages_before);
    err.expect("the schema-breaking change must be rejected")
}

fn first_msg(doc: &automerge::AutoCommit) -> automerge::ObjId {
    let (_, msgs) = doc.get(ROOT, "messages").expect("g").expect("m");
    doc.get(&msgs, 0).expect("g").expect("m").1
}

#[test]
fn schema_breaking_sync_messages_are_rejected_and_rolled_back() {
    let e = evil_peer_sync(|d| {
        let m = first_msg(d);
        d.put(&m, "text", "not text").expect("p");
    });
    assert!(e.to_string().contains("text"), "{e}");
    let e = evil_peer_sync(|d| d.put(ROOT, "messages", "gone").expect("p"));
    assert!(matches!(e, CrdtError::SyncRejected(_)), "{e}");
    let e = evil_peer_sync(|d| {
        let (_, msgs) = d.get(ROOT, "messages").expect("g").expect("m");
        d.insert(&msgs, 1, 42).expect("p");
    });
    assert!(matches!(e, CrdtError::SyncRejected(_)), "{e}");
    let e = evil_peer_sync(|d| {
        let (_, msgs) = d.get(ROOT, "messages").expect("g").expect("m");
        let m = d.insert_object(&msgs, 1, ObjType::Map).expect("p");
        d.put(&m, "id", "x").expect("p");
    });
    assert!(e.to_string().contains("role"), "{e}");
    let e = evil_peer_sync(|d| d.put(ROOT, "schema", 99).expect("p"));
    assert!(e.to_string().contains("schema"), "{e}");
}

#[test]
fn oversized_messages_are_refused() {
    let mut c = new_conv();
    let mut p = SyncPeer::with_limit(10);
    let e = p.receive(&mut c, &[0x42; 11]).expect_err("too big");
    assert!(matches!(
        e,
        CrdtError::SyncMessageTooLarge {
            size: 11,
            limit: 10
        }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Conversation::load(&bytes);
        let mut c = new_conv();
        let _ = SyncPeer::new().receive(&mut c, &bytes);
        let mut r = Conversation::new_replica();
        let _ = SyncPeer::new().receive(&mut r, &bytes);
        let _ = SyncPeer::decode_state(&bytes);
        prop_assert!(Conversation::load(&c.save()).is_ok());
    }

    #[test]
    fn damaged_real_documents_and_messages_never_panic(
        cut in 0usize..4096, flip in 0usize..4096, bit in 0u8..8, sync_msg in any::<bool>()
    ) {
        let mut c = new_conv();
        let m = c.start_message(NODE, Role::Agent).expect("m");
        c.append_chunk(&m, "some text").expect("c");
        let mut bytes = if sync_msg {
            SyncPeer::new().generate(&mut c).unwrap_or_default()
        } else {
            c.save()
        };
        if !bytes.is_empty() {
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            bytes.truncate(cut.min(bytes.len()));
        }
        let _ = Conversation::load(&bytes);
        let mut r = Conversation::new_replica();
        let _ = SyncPeer::new().receive(&mut r, &bytes);
        let mut other = new_conv();
        let _ = SyncPeer::new().receive(&mut other, &bytes);
    }
}

#[test]
fn more_schema_breaking_live_changes_are_rejected() {
    // Overwriting a message with a scalar.
    let e = evil_peer_sync(|d| {
        let (_, msgs) = d.get(ROOT, "messages").expect("g").expect("m");
        d.put(&msgs, 0, "gone").expect("p");
    });
    assert!(matches!(e, CrdtError::SyncRejected(_)), "{e}");
    // An unknown status on an existing message.
    let e = evil_peer_sync(|d| {
        let m = first_msg(d);
        d.put(&m, "status", "exploded").expect("p");
    });
    assert!(e.to_string().contains("status"), "{e}");
    // A tool map with a bad field, nested in an existing message.
    let e = evil_peer_sync(|d| {
        let m = first_msg(d);
        let t = d.put_object(&m, "tool", ObjType::Map).expect("p");
        d.put(&t, "kind", "read").expect("p");
    });
    assert!(e.to_string().contains("tool"), "{e}");
    // The title replaced by a string.
    let e = evil_peer_sync(|d| d.put(ROOT, "title", "plain").expect("p"));
    assert!(e.to_string().contains("title"), "{e}");
    // A bad plan entry (a nested object under the root).
    let e = evil_peer_sync(|d| {
        let p = d.put_object(ROOT, "plan", ObjType::List).expect("p");
        let e = d.insert_object(&p, 0, ObjType::Map).expect("p");
        d.put(&e, "content", 1).expect("p");
    });
    assert!(e.to_string().contains("plan"), "{e}");
    // A duplicate message id in a new message.
    let e = evil_peer_sync(|d| {
        let m = first_msg(d);
        let (id, _) = d.get(&m, "id").expect("g").expect("id");
        let id = id.into_string().expect("s");
        let (_, msgs) = d.get(ROOT, "messages").expect("g").expect("m");
        let n = d.insert_object(&msgs, 1, ObjType::Map).expect("p");
        for (k, v) in [
            ("id", id.as_str()),
            ("role", "user"),
            ("author", ALICE),
            ("status", "queued"),
        ] {
            d.put(&n, k, v).expect("p");
        }
        d.put(&n, "created_at", 1).expect("p");
        d.put_object(&n, "text", ObjType::Text).expect("p");
    });
    assert!(e.to_string().contains("duplicate"), "{e}");
}

#[test]
fn live_nested_updates_reach_the_replica() {
    use sam_crdt::{PermissionOption, ToolCall, ToolCallUpdate, ToolStatus};
    let mut a = new_conv();
    let mut b = Conversation::new_replica();
    let (mut pa, mut pb) = (SyncPeer::new(), SyncPeer::new());
    let mut pump = |a: &mut Conversation, b: &mut Conversation| {
        for _ in 0..20 {
            let m1 = pa.generate(a);
            if let Some(m) = &m1 {
                pb.receive(b, m).expect("b receives");
            }
            let m2 = pb.generate(b);
            if let Some(m) = &m2 {
                pa.receive(a, m).expect("a receives");
            }
            if m1.is_none() && m2.is_none() {
                break;
            }
        }
    };
    pump(&mut a, &mut b);
    let t = a
        .add_tool_call(
            NODE,
            ToolCall {
                kind: "read".into(),
                title: "cat".into(),
                input: "{}".into(),
                status: None,
                locations: vec!["a.rs".into()],
            },
        )
        .expect("tool");
    pump(&mut a, &mut b);
    a.update_tool_call(
        &t,
        ToolCallUpdate {
            status: Some(ToolStatus::Completed),
            output_chunk: Some("out".into()),
            locations: Some(vec!["b.rs".into()]),
            title: None,
        },
    )
    .expect("update");
    let p = a
        .request_permission(
            NODE,
            "may I?",
            &[PermissionOption {
                id: "y".into(),
                name: "Yes".into(),
                kind: "allow_once".into(),
            }],
        )
        .expect("perm");
    pump(&mut a, &mut b);
    b.answer_permission(&p, "y", ALICE).expect("answer");
    let m = a.start_message(NODE, Role::Agent).expect("start");
    for c in ["a", "b", "c"] {
        a.append_chunk(&m, c).expect("chunk");
        pump(&mut a, &mut b);
    }
    a.set_title(NODE, "renamed").expect("title");
    pump(&mut a, &mut b);
    assert_eq!(a.heads(), b.heads());
    assert_eq!(a.messages(), b.messages());
    assert_eq!(b.title(), "renamed");
    assert_eq!(b.message(&m).expect("m").text, "abc");
    let tool = b.message(&t).expect("t").tool.expect("tool");
    assert_eq!(
        (tool.output.as_str(), tool.locations),
        ("out", vec!["b.rs".to_string()])
    );
    assert_eq!(a.message_count(), 3);
    assert!(
        a.message(&p)
            .and_then(|v| v.permission)
            .and_then(|p| p.chosen)
            .is_some()
    );
}

/// Live batches: a follower applies them without answering, detects a missed batch, and
/// ordinary sync repairs the gap; its later prompt does not echo the node's changes back.
#[test]
fn live_batches_apply_detect_gaps_and_resync() {
    let mut node = new_conv();
    let mut client = Conversation::new_replica();
    let (mut node_peer, mut client_peer) = (SyncPeer::new(), SyncPeer::new());
    // initial sync with real peers
    for _ in 0..20 {
        let a = node_peer.generate(&mut node);
        if let Some(m) = &a {
            client_peer.receive(&mut client, m).expect("recv");
        }
        let b = client_peer.generate(&mut client);
        if let Some(m) = &b {
            node_peer.receive(&mut node, m).expect("recv");
        }
        if a.is_none() && b.is_none() {
            break;
        }
    }
    assert_eq!(client.heads(), node.heads());

    let mut since = node.heads();
    let m = node.start_message(NODE, Role::Agent).expect("m");
    let mut batches = Vec::new();
    for i in 0..5 {
        node.append_chunk(&m, &format!("{i} ")).expect("c");
        batches.push(sam_crdt::live_message(&mut node, &since).expect("batch"));
        since = node.heads();
    }
    assert!(
        sam_crdt::live_message(&mut node, &since).is_none(),
        "nothing new"
    );
    // batches 0 and 1 in order: complete
    assert!(
        client_peer
            .receive_live(&mut client, &batches[0])
            .expect("0")
    );
    assert!(
        client_peer
            .receive_live(&mut client, &batches[1])
            .expect("1")
    );
    // batch 2 is lost; 3 arrives: a gap
    assert!(
        !client_peer
            .receive_live(&mut client, &batches[3])
            .expect("3")
    );
    assert_ne!(client.heads(), node.heads());
    // ordinary sync repairs it
    for _ in 0..20 {
        let b = client_peer.generate(&mut client);
        if let Some(msg) = &b {
            node_peer.receive(&mut node, msg).expect("recv");
        }
        let a = node_peer.generate(&mut node);
        if let Some(msg) = &a {
            client_peer.receive(&mut client, msg).expect("recv");
        }
        if a.is_none() && b.is_none() {
            break;
        }
    }
    assert_eq!(client.heads(), node.heads());
    assert_eq!(client.messages(), node.messages());
    // a duplicate batch is harmless
    assert!(
        client_peer
            .receive_live(&mut client, &batches[4])
            .expect("dup")
    );
    assert_eq!(client.heads(), node.heads());

    // After more live batches, the client's prompt carries only its own change.
    for i in 0..3 {
        node.append_chunk(&m, &format!("more {i} ")).expect("c");
        let b = sam_crdt::live_message(&mut node, &since).expect("batch");
        since = node.heads();
        assert!(client_peer.receive_live(&mut client, &b).expect("live"));
    }
    client
        .append_user_message(ALICE, "next", Status::Queued)
        .expect("q");
    let msg = client_peer.generate(&mut client).expect("a message");
    let decoded = automerge::sync::Message::decode(&msg).expect("decode");
    assert_eq!(
        decoded.changes.len(),
        1,
        "only the prompt, not the node's chunks"
    );
    node_peer.receive(&mut node, &msg).expect("recv");
    assert_eq!(node.queued_prompts().len(), 1);
}

/// A live batch that breaks the schema is rejected and rolled back like a sync message.
#[test]
fn schema_breaking_live_batches_are_rejected() {
    let mut good = new_conv();
    let mut doc = Conversation::load(&good.save())
        .expect("load")
        .automerge()
        .clone();
    let since = doc.get_heads();
    doc.put(ROOT, "title", 42).expect("put");
    let batch = automerge::sync::Message {
        heads: doc.get_heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: doc
            .get_changes(&since)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect::<Vec<_>>()
            .into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode();
    let before = good.heads();
    let mut peer = SyncPeer::new();
    let err = peer.receive_live(&mut good, &batch).expect_err("rejected");
    assert!(matches!(err, CrdtError::SyncRejected(_)), "{err}");
    assert_eq!(good.heads(), before, "rolled back");
    let garbage = peer.receive_live(&mut good, b"not a sync message");
    assert!(matches!(garbage, Err(CrdtError::SyncDecode(_))));
}

/// Consecutive live batches applied as one give the same document; a merged run that
/// starts after a gap reports it.
#[test]
fn merged_live_batches_equal_one_by_one() {
    let mut node = new_conv();
    let base = node.save();
    let mut since = node.heads();
    let m = node.start_message(NODE, Role::Agent).expect("m");
    let mut batches = Vec::new();
    for i in 0..6 {
        node.append_chunk(&m, &format!("{i} ")).expect("c");
        batches.push(sam_crdt::live_message(&mut node, &since).expect("batch"));
        since = node.heads();
    }
    let mut merged = Conversation::load(&base).expect("load");
    let mut peer = SyncPeer::new();
    assert!(
        peer.receive_live_batches(&mut merged, &batches)
            .expect("merged")
    );
    assert_eq!(merged.heads(), node.heads());
    assert_eq!(merged.messages(), node.messages());

    let mut gap = Conversation::load(&base).expect("load");
    let mut peer = SyncPeer::new();
    assert!(
        peer.receive_live_batches(&mut gap, &batches[..2])
            .expect("first two")
    );
    assert!(
        !peer
            .receive_live_batches(&mut gap, &batches[3..])
            .expect("after a gap")
    );
    assert!(
        peer.receive_live_batches(&mut gap, &[] as &[Vec<u8>])
            .expect("nothing")
    );
}

/// A long streamed answer goes into bounded Text segments; replicas following it live (and
/// by ordinary sync, and after a reload) read the same text, and a follower's tail read
/// crosses segment boundaries.
#[test]
fn long_answers_stream_into_segments_that_replicas_follow() {
    let mut node = new_conv();
    let base = node.save();
    let mut live = Conversation::load(&base).expect("load");
    let mut live_peer = SyncPeer::new();
    let mut since = node.heads();
    let m = node.start_message(NODE, Role::Agent).expect("m");
    let mut expected = String::new();
    for i in 0..1500 {
        let chunk = format!("{i:05} ");
        expected.push_str(&chunk);
        node.append_chunk(&m, &chunk).expect("c");
        if i % 7 == 0 {
            let b = sam_crdt::live_message(&mut node, &since).expect("batch");
            since = node.heads();
            assert!(live_peer.receive_live(&mut live, &b).expect("live"));
        }
    }
    let b = sam_crdt::live_message(&mut node, &since).expect("batch");
    assert!(live_peer.receive_live(&mut live, &b).expect("live"));
    assert!(
        expected.len() > 3 * sam_crdt::SEGMENT_CHARS,
        "spans several segments"
    );
    assert_eq!(node.message(&m).expect("m").text, expected);
    assert_eq!(live.message(&m).expect("m").text, expected);
    let (more, _) = {
        use automerge::ReadDoc;
        let doc = node.automerge();
        let (_, msgs) = doc.get(ROOT, "messages").expect("g").expect("msgs");
        let (_, msg) = doc.get(&msgs, 0).expect("g").expect("msg");
        doc.get(&msg, "more").expect("g").expect("more")
    };
    let _ = more;
    // Appending on the follower after a segment it received goes to the new tail.
    live.append_chunk(&m, "!").expect("append on replica");
    assert!(live.message(&m).expect("m").text.ends_with("!"));
    // Tail reads across segment boundaries.
    let from = sam_crdt::SEGMENT_CHARS - 3;
    let (tail, len) = node.message_text_from(&m, from).expect("tail");
    assert_eq!(len, expected.chars().count());
    assert_eq!(tail, expected[from..]);
    // Ordinary sync and a reload give the same text.
    let mut fresh = Conversation::new_replica();
    sync_pair(&mut node, &mut fresh).expect("sync");
    assert_eq!(fresh.message(&m).expect("m").text, expected);
    let reloaded = Conversation::load(&node.save()).expect("reload");
    assert_eq!(reloaded.message(&m).expect("m").text, expected);
}

/// A peer that puts a non-Text element into a message's `more` list is rejected.
#[test]
fn a_bad_text_segment_is_rejected() {
    let err = evil_peer_sync(|d| {
        let msg = first_msg(d);
        let (_, more) = d.get(&msg, "more").expect("g").expect("more");
        d.insert(&more, 0, 42).expect("insert");
    });
    assert!(err.to_string().contains("more"), "{err}");
}
