//! The `hosts` history: moves, records by nodes, teardown records, validation of peers'
//! changes, and that a move keeps the id, the messages and the forks' shared history.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT};
use sam_crdt::{Conversation, CrdtError, HostEnd, MoveTo, NewConversation, Status, SyncPeer};

const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const NEW: &str = "0000000000000000000000000000000000000000000000000000000000000002";

fn new_conv() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "c0ffee".into(),
            title: "first".into(),
            agent: "claude".into(),
            workspace_node: OLD.into(),
            workspace_id: "ws1".into(),
            created_at: 1_700_000_000_000,
        },
        ALICE,
    )
    .expect("create")
}

fn to_new(end: HostEnd) -> MoveTo {
    MoveTo {
        node: NEW.into(),
        workspace: "ws2".into(),
        repo: Some("https://example.com/r.git".into()),
        branch: Some("main".into()),
        end,
        carried: Some("not recoverable: the node was unreachable".into()),
    }
}

fn sync(a: &mut Conversation, b: &mut Conversation) {
    let (mut pa, mut pb) = (SyncPeer::new(), SyncPeer::new());
    for _ in 0..10 {
        let m1 = pa.generate(a);
        let m2 = pb.generate(b);
        if m1.is_none() && m2.is_none() {
            return;
        }
        if let Some(m) = m1 {
            pb.receive(b, &m).expect("b receives");
        }
        if let Some(m) = m2 {
            pa.receive(a, &m).expect("a receives");
        }
    }
}

#[test]
fn a_move_keeps_id_and_messages_and_records_both_hosts() {
    let mut c = new_conv();
    assert!(c.hosts().is_empty());
    assert_eq!(c.current_host().since, 1_700_000_000_000);
    assert!(
        c.record_host(
            OLD,
            OLD,
            "ws1",
            Some("https://example.com/r.git"),
            Some("main")
        )
        .expect("record")
    );
    assert!(!c.record_host(OLD, OLD, "ws1", None, None).expect("again"));
    let m = c
        .append_user_message(ALICE, "hello", Status::Queued)
        .expect("msg");
    c.move_to(ALICE, &to_new(HostEnd::Lost)).expect("move");
    assert_eq!(c.id(), "c0ffee");
    assert_eq!(c.messages()[0].id, m);
    let ws = c.workspace();
    assert_eq!((ws.node.as_str(), ws.id.as_str()), (NEW, "ws2"));
    let h = c.hosts();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].node, OLD);
    assert_eq!(h[0].repo.as_deref(), Some("https://example.com/r.git"));
    assert_eq!(h[0].end, Some(HostEnd::Lost));
    assert!(h[0].ended_at.is_some());
    assert!(
        h[0].carried
            .as_deref()
            .unwrap_or("")
            .contains("not recoverable")
    );
    assert_eq!(h[1].node, NEW);
    assert_eq!(h[1].workspace, "ws2");
    assert_eq!(h[1].ended_at, None);
    assert_eq!(c.current_host(), h[1]);
    // The new node records itself: nothing new to write.
    assert!(!c.record_host(NEW, NEW, "ws2", None, None).expect("record"));
    // A second move to the same place is refused.
    assert!(matches!(
        c.move_to(ALICE, &to_new(HostEnd::Moved)),
        Err(CrdtError::InvalidArgument(_))
    ));
    // Survives a save/load and a sync to a replica that never saw the move.
    let mut loaded = Conversation::load(&c.save()).expect("load");
    assert_eq!(loaded.hosts(), h);
    let mut other = Conversation::new_replica();
    sync(&mut loaded, &mut other);
    assert_eq!(other.hosts(), h);
}

#[test]
fn a_move_of_a_document_without_history_records_the_original_host() {
    let mut c = new_conv();
    c.move_to(ALICE, &to_new(HostEnd::Moved)).expect("move");
    let h = c.hosts();
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].node.as_str(), h[0].workspace.as_str()), (OLD, "ws1"));
    assert_eq!(h[0].since, 1_700_000_000_000);
    assert_eq!(h[0].end, Some(HostEnd::Moved));
}

#[test]
fn teardown_is_recorded_on_the_serving_entry_only() {
    let mut c = new_conv();
    c.end_host(OLD, OLD, "ws1", HostEnd::Removed, None)
        .expect("end");
    let h = c.hosts();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].end, Some(HostEnd::Removed));
    // Not the host (any more): refused, nothing written.
    let heads = c.heads();
    assert!(c.end_host(OLD, NEW, "ws9", HostEnd::Removed, None).is_err());
    assert_eq!(c.heads(), heads);
    assert!(
        c.end_host(OLD, "nope", "ws1", HostEnd::Removed, None)
            .is_err()
    );
}

#[test]
fn a_peer_change_that_breaks_the_hosts_schema_is_rejected() {
    let mut c = new_conv();
    c.move_to(ALICE, &to_new(HostEnd::Moved)).expect("move");
    for (what, f) in [
        (
            "end",
            Box::new(|d: &mut automerge::AutoCommit, e: &automerge::ObjId| {
                d.put(e, "end", "exploded").expect("put");
            }) as Box<dyn Fn(&mut automerge::AutoCommit, &automerge::ObjId)>,
        ),
        (
            "node",
            Box::new(|d: &mut automerge::AutoCommit, e: &automerge::ObjId| {
                d.put(e, "node", "not-a-node").expect("put");
            }),
        ),
        (
            "since",
            Box::new(|d: &mut automerge::AutoCommit, e: &automerge::ObjId| {
                d.put(e, "since", "yesterday").expect("put");
            }),
        ),
    ] {
        let mut bad = Conversation::load(&c.save())
            .expect("load")
            .automerge()
            .clone();
        let (_, l) = automerge::ReadDoc::get(&bad, ROOT, "hosts")
            .expect("get")
            .expect("hosts");
        let (_, e) = automerge::ReadDoc::get(&bad, &l, 0)
            .expect("get")
            .expect("entry");
        f(&mut bad, &e);
        match Conversation::load(&bad.save()) {
            Err(CrdtError::Schema(err)) => {
                assert_eq!(err.path, format!("hosts[0].{what}"), "{err}");
            }
            other => panic!("{what}: expected a schema error, got {other:?}"),
        }
        // Through sync, the same change is refused and rolled back.
        let mut receiver = Conversation::load(&c.save()).expect("load");
        let before = receiver.hosts();
        let heads = receiver.heads();
        let mut state = automerge::sync::State::new();
        let mut peer = SyncPeer::new();
        let mut rejected = false;
        for _ in 0..5 {
            use automerge::sync::SyncDoc;
            if let Some(m) = peer.generate(&mut receiver) {
                let m = automerge::sync::Message::decode(&m).expect("decode");
                bad.sync()
                    .receive_sync_message(&mut state, m)
                    .expect("bad side receives");
            }
            if let Some(m) = bad.sync().generate_sync_message(&mut state) {
                rejected |= peer.receive(&mut receiver, &m.encode()).is_err();
            }
        }
        assert!(rejected, "{what}: the bad change was accepted");
        assert_eq!(receiver.hosts(), before);
        assert_eq!(receiver.heads(), heads);
    }
    // A plain string instead of a list.
    let mut bad = Conversation::load(&c.save())
        .expect("load")
        .automerge()
        .clone();
    bad.put(ROOT, "hosts", "here").expect("put");
    assert!(matches!(
        Conversation::load(&bad.save()),
        Err(CrdtError::Schema(_))
    ));
    let mut ok = Conversation::load(&c.save())
        .expect("load")
        .automerge()
        .clone();
    ok.put_object(ROOT, "hosts", ObjType::List).expect("put");
    assert!(Conversation::load(&ok.save()).is_ok());
}
