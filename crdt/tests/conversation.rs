//! Operations, reads, schema validation and forks of `Conversation`.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use sam_crdt::{
    Conversation, CrdtError, MessageId, NewConversation, PermissionOption, PlanEntry, Role,
    ServedBy, Status, ToolCall, ToolCallUpdate, ToolStatus,
};

const ALICE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NODE: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const BOB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn new_conv() -> Conversation {
    Conversation::create(
        NewConversation {
            id: "c0ffee".into(),
            title: "first".into(),
            agent: "claude".into(),
            workspace_node: NODE.into(),
            workspace_id: "ws1".into(),
            created_at: 1_700_000_000_000,
        },
        ALICE,
    )
    .expect("create")
}

fn opts() -> Vec<PermissionOption> {
    vec![
        PermissionOption {
            id: "allow".into(),
            name: "Allow".into(),
            kind: "allow_once".into(),
        },
        PermissionOption {
            id: "deny".into(),
            name: "Deny".into(),
            kind: "reject_once".into(),
        },
    ]
}

#[test]
fn create_and_header() {
    let mut c = new_conv();
    assert_eq!(c.id(), "c0ffee");
    assert_eq!(c.title(), "first");
    assert_eq!(c.agent(), "claude");
    assert_eq!(c.created_at(), 1_700_000_000_000);
    assert_eq!(c.workspace().node, NODE);
    assert_eq!(c.workspace().id, "ws1");
    assert!(c.parent().is_none());
    c.set_title(BOB, "renamed").expect("title");
    assert_eq!(c.title(), "renamed");
    let loaded = Conversation::load(&c.save()).expect("load");
    assert_eq!(loaded.title(), "renamed");
}

#[test]
fn create_rejects_bad_ids() {
    let mut n = NewConversation {
        id: "../x".into(),
        title: String::new(),
        agent: "a".into(),
        workspace_node: NODE.into(),
        workspace_id: "w".into(),
        created_at: 0,
    };
    assert!(Conversation::create(n.clone(), ALICE).is_err());
    n.id = "ab".into();
    assert!(Conversation::create(n.clone(), "not-a-node").is_err());
    n.workspace_node = "short".into();
    assert!(Conversation::create(n, ALICE).is_err());
}

#[test]
fn actor_ids_name_the_author_and_differ_per_session() {
    let mut a = new_conv();
    let mut b = Conversation::load(&a.save()).expect("load");
    a.append_user_message(ALICE, "x", Status::Queued)
        .expect("a");
    b.append_user_message(ALICE, "y", Status::Queued)
        .expect("b");
    let actor_a = a.automerge().get_actor().clone();
    let actor_b = b.automerge().get_actor().clone();
    assert_ne!(actor_a, actor_b);
    assert_eq!(
        Conversation::author_of_actor(&actor_a).as_deref(),
        Some(ALICE)
    );
    assert_eq!(
        Conversation::author_of_actor(&actor_b).as_deref(),
        Some(ALICE)
    );
}

#[test]
fn user_messages_and_queue() {
    let mut c = new_conv();
    let a = c
        .append_user_message(ALICE, "one", Status::Queued)
        .expect("1");
    let b = c
        .append_user_message(BOB, "two", Status::Running)
        .expect("2");
    let d = c
        .append_user_message(BOB, "three", Status::Queued)
        .expect("3");
    assert!(c.append_user_message(BOB, "x", Status::Done).is_err());
    assert_eq!(c.queued_prompts(), vec![a.clone(), d.clone()]);
    c.set_status(&a, Status::Running, None).expect("status");
    assert_eq!(c.queued_prompts(), vec![d]);
    let m = c.message(&b).expect("b");
    assert_eq!(
        (m.role, m.author.as_str(), m.text.as_str()),
        (Role::User, BOB, "two")
    );
    assert_eq!(c.messages().len(), 3);
    let custom = MessageId::new("prompt-7").expect("id");
    let got = c
        .append_user_message_with_id(ALICE, Some(custom.clone()), "c", Status::Queued)
        .expect("custom");
    assert_eq!(got, custom);
    assert!(
        c.append_user_message_with_id(ALICE, Some(custom), "again", Status::Queued)
            .is_err()
    );
}

#[test]
fn streaming_chunks_and_status() {
    let mut c = new_conv();
    let m = c.start_message(NODE, Role::Agent).expect("start");
    for chunk in ["Hel", "lo, ", "wörld", "!"] {
        c.append_chunk(&m, chunk).expect("chunk");
    }
    let v = c.message(&m).expect("m");
    assert_eq!(v.text, "Hello, wörld!", "pending chunks are readable");
    assert_eq!(v.status, Status::Streaming);
    c.commit_pending();
    let mut am = c.automerge().clone();
    let changes = am.get_changes(&[]);
    assert_eq!(
        changes.len(),
        3,
        "create, start, and one change for four chunks"
    );
    let last = changes.last().expect("change");
    assert_eq!(
        last.message().map(|m| m.to_string()).as_deref(),
        Some("chunks")
    );
    assert!(last.timestamp() > 1_600_000_000_000, "time is in ms");
    c.set_status(&m, Status::Failed, Some("agent crashed"))
        .expect("fail");
    let v = c.message(&m).expect("m");
    assert_eq!(
        (v.status, v.reason.as_deref()),
        (Status::Failed, Some("agent crashed"))
    );
    c.set_status(&m, Status::Done, None).expect("done");
    assert_eq!(c.message(&m).expect("m").reason, None);
    let t = c.start_message(NODE, Role::Thought).expect("thought");
    c.append_chunk(&t, "hmm").expect("chunk");
    assert_eq!(c.message(&t).expect("t").role, Role::Thought);
    assert!(c.start_message(NODE, Role::Tool).is_err());
    let unknown = MessageId::random();
    assert!(matches!(
        c.append_chunk(&unknown, "x"),
        Err(CrdtError::UnknownMessage(_))
    ));
}

#[test]
fn tool_calls() {
    let mut c = new_conv();
    let t = c
        .add_tool_call(
            NODE,
            ToolCall {
                kind: "execute".into(),
                title: "ls".into(),
                input: r#"{"cmd":"ls"}"#.into(),
                status: None,
                locations: vec!["/src".into()],
            },
        )
        .expect("tool");
    c.update_tool_call(
        &t,
        ToolCallUpdate {
            status: Some(ToolStatus::InProgress),
            output_chunk: Some("a.rs\n".into()),
            ..Default::default()
        },
    )
    .expect("u1");
    c.update_tool_call(
        &t,
        ToolCallUpdate {
            status: Some(ToolStatus::Completed),
            output_chunk: Some("b.rs\n".into()),
            locations: Some(vec!["/src/a.rs".into(), "/src/b.rs".into()]),
            title: Some("ls /src".into()),
        },
    )
    .expect("u2");
    let v = c.message(&t).expect("t");
    let tool = v.tool.expect("tool view");
    assert_eq!(v.role, Role::Tool);
    assert_eq!(tool.output, "a.rs\nb.rs\n");
    assert_eq!(tool.status, ToolStatus::Completed);
    assert_eq!(tool.title, "ls /src");
    assert_eq!(tool.input, r#"{"cmd":"ls"}"#);
    assert_eq!(tool.locations, vec!["/src/a.rs", "/src/b.rs"]);
    let user = c
        .append_user_message(ALICE, "x", Status::Queued)
        .expect("u");
    assert!(matches!(
        c.update_tool_call(&user, ToolCallUpdate::default()),
        Err(CrdtError::WrongRole { .. })
    ));
}

#[test]
fn plan_usage_served_by() {
    let mut c = new_conv();
    let plan = vec![PlanEntry {
        content: "write tests".into(),
        status: "pending".into(),
        priority: "high".into(),
    }];
    c.set_plan(NODE, &plan).expect("plan");
    assert_eq!(c.plan(), plan);
    c.set_plan(NODE, &[]).expect("plan");
    assert!(c.plan().is_empty());
    let usage = [
        ("input_tokens".to_string(), 10),
        ("output_tokens".to_string(), 5),
    ]
    .into();
    c.set_usage(NODE, &usage).expect("usage");
    assert_eq!(c.usage(), usage);
    let m = c
        .append_user_message(ALICE, "x", Status::Queued)
        .expect("u");
    let s = ServedBy {
        node: NODE.into(),
        workspace: "ws1".into(),
        from_message: m,
    };
    c.add_served_by(NODE, &s).expect("served");
    assert_eq!(c.served_by(), vec![s]);
    Conversation::load(&c.save()).expect("valid after all ops");
}

#[test]
fn permissions() {
    let mut c = new_conv();
    let p = c
        .request_permission(NODE, "rm -rf target?", &opts())
        .expect("req");
    assert!(c.request_permission(NODE, "x", &[]).is_err());
    let err = c
        .answer_permission(&p, "maybe", ALICE)
        .expect_err("unknown option");
    assert!(err.to_string().contains("maybe"), "{err}");
    c.answer_permission(&p, "allow", ALICE).expect("answer");
    let err = c
        .answer_permission(&p, "deny", BOB)
        .expect_err("second answer");
    assert!(
        matches!(&err, CrdtError::AlreadyAnswered { by, .. } if by == ALICE),
        "{err}"
    );
    let v = c.message(&p).expect("p");
    assert_eq!(v.text, "rm -rf target?");
    assert_eq!(v.status, Status::Done);
    let perm = v.permission.expect("perm");
    assert_eq!(perm.chosen.expect("chosen").option, "allow");
    let user = c
        .append_user_message(ALICE, "x", Status::Queued)
        .expect("u");
    assert!(matches!(
        c.answer_permission(&user, "allow", ALICE),
        Err(CrdtError::WrongRole { .. })
    ));
}

#[test]
fn concurrent_permission_answers_resolve_the_same_everywhere() {
    let mut a = new_conv();
    let p = a.request_permission(NODE, "ok?", &opts()).expect("req");
    let mut b = Conversation::load(&a.save()).expect("load");
    a.set_clock(|| 2_000);
    b.set_clock(|| 1_000);
    a.answer_permission(&p, "allow", ALICE).expect("a");
    b.answer_permission(&p, "deny", BOB).expect("b");
    a.merge(&mut b).expect("merge");
    b.merge(&mut a).expect("merge");
    let pa = a.message(&p).expect("a").permission.expect("perm");
    let pb = b.message(&p).expect("b").permission.expect("perm");
    assert_eq!(pa.answers.len(), 2);
    assert_eq!(pa, pb);
    let chosen = pa.chosen.expect("chosen");
    assert_eq!((chosen.option.as_str(), chosen.by.as_str()), ("deny", BOB));
}

#[test]
fn index_survives_load_and_merge() {
    let mut a = new_conv();
    let m1 = a
        .append_user_message(ALICE, "one", Status::Queued)
        .expect("1");
    let mut b = Conversation::load(&a.save()).expect("load");
    let m2 = b.start_message(NODE, Role::Agent).expect("2");
    b.append_chunk(&m2, "hi").expect("chunk");
    a.merge(&mut b).expect("merge");
    a.append_chunk(&m2, " there")
        .expect("chunk via index after merge");
    assert_eq!(a.message(&m2).expect("m2").text, "hi there");
    assert!(a.message(&m1).is_some());
    assert_eq!(a.message_count(), 2);
}

// ---------- schema violations ----------

fn doc_with(f: impl FnOnce(&mut AutoCommit)) -> Vec<u8> {
    let mut c = new_conv();
    c.append_user_message(ALICE, "hello", Status::Queued)
        .expect("msg");
    let mut doc = Conversation::load(&c.save())
        .expect("load")
        .automerge()
        .clone();
    f(&mut doc);
    doc.save()
}

fn first_msg(doc: &AutoCommit) -> automerge::ObjId {
    use automerge::ReadDoc;
    let (_, msgs) = doc.get(ROOT, "messages").expect("get").expect("messages");
    let (_, m) = doc.get(&msgs, 0).expect("get").expect("msg");
    m
}

fn schema_err(bytes: &[u8]) -> String {
    match Conversation::load(bytes) {
        Err(CrdtError::Schema(e)) => format!("{}: {}", e.path, e.problem),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[test]
fn schema_violations_name_the_field() {
    let e = schema_err(&doc_with(|d| d.delete(ROOT, "id").expect("del")));
    assert!(e.starts_with("id: missing"), "{e}");
    let e = schema_err(&doc_with(|d| d.put(ROOT, "schema", 2).expect("put")));
    assert!(e.starts_with("schema: unsupported"), "{e}");
    let e = schema_err(&doc_with(|d| d.put(ROOT, "title", "plain").expect("put")));
    assert!(
        e.contains("title: expected a Text object, found a string"),
        "{e}"
    );
    let e = schema_err(&doc_with(|d| d.put(ROOT, "messages", 3).expect("put")));
    assert!(e.starts_with("messages: expected a list"), "{e}");
    let e = schema_err(&doc_with(|d| {
        let m = first_msg(d);
        d.put(&m, "text", "scalar text").expect("put");
    }));
    assert!(
        e.contains("messages[0].text: expected a Text object, found a string"),
        "{e}"
    );
    let e = schema_err(&doc_with(|d| {
        let m = first_msg(d);
        d.put(&m, "status", "exploded").expect("put");
    }));
    assert!(
        e.contains("messages[0].status: unknown value \"exploded\""),
        "{e}"
    );
    let e = schema_err(&doc_with(|d| {
        let m = first_msg(d);
        d.put(&m, "author", "me").expect("put");
    }));
    assert!(e.contains("messages[0].author"), "{e}");
    let e = schema_err(&doc_with(|d| {
        let m = first_msg(d);
        d.put(&m, "created_at", "yesterday").expect("put");
    }));
    assert!(
        e.contains("messages[0].created_at: expected an integer"),
        "{e}"
    );
    let e = schema_err(&doc_with(|d| {
        let m = first_msg(d);
        d.put(&m, "role", "tool").expect("put");
    }));
    assert!(e.contains("messages[0].tool: missing"), "{e}");
    let e = schema_err(&doc_with(|d| {
        let ws = d.put_object(ROOT, "workspace", ObjType::Map).expect("ws");
        d.put(&ws, "id", "w").expect("put");
    }));
    assert!(e.starts_with("workspace.node: missing"), "{e}");
    let e = schema_err(&doc_with(|d| {
        let p = d.put_object(ROOT, "parent", ObjType::Map).expect("p");
        d.put(&p, "conversation", "x").expect("put");
        let h = d.put_object(&p, "heads", ObjType::List).expect("h");
        d.insert(&h, 0, "nothex").expect("put");
        d.put(&p, "message_id", "m").expect("put");
    }));
    assert!(e.starts_with("parent.heads[0]"), "{e}");
    let e = schema_err(&doc_with(|d| {
        use automerge::ReadDoc;
        let (_, msgs) = d.get(ROOT, "messages").expect("g").expect("m");
        let dup = d.insert_object(&msgs, 1, ObjType::Map).expect("dup");
        let m = first_msg(d);
        for k in ["id", "role", "author", "status"] {
            let v = d.get(&m, k).expect("g").expect("v").0.to_string();
            d.put(&dup, k, v.trim_matches('"')).expect("put");
        }
        d.put(&dup, "created_at", 1).expect("put");
        d.put_object(&dup, "text", ObjType::Text).expect("text");
    }));
    assert!(e.contains("duplicate message id"), "{e}");
}

#[test]
fn load_rejects_non_conversation_documents() {
    assert!(Conversation::load(&[]).is_err());
    assert!(Conversation::load(&AutoCommit::new().save()).is_err());
    let mut other = AutoCommit::new();
    other.put(ROOT, "hello", "world").expect("put");
    let e = schema_err(&other.save());
    assert!(e.starts_with("schema: missing"), "{e}");
}

// ---------- forks ----------

#[test]
fn fork_shares_history_up_to_the_message() {
    let mut p = new_conv();
    let u1 = p
        .append_user_message(ALICE, "q1", Status::Running)
        .expect("u1");
    let a1 = p.start_message(NODE, Role::Agent).expect("a1");
    p.append_chunk(&a1, "answer one").expect("c");
    p.set_status(&a1, Status::Done, None).expect("s");
    let heads_at_a1 = p.heads();
    let _u2 = p
        .append_user_message(ALICE, "q2", Status::Running)
        .expect("u2");
    let a2 = p.start_message(NODE, Role::Agent).expect("a2");
    p.append_chunk(&a2, "answer two").expect("c");
    p.set_title(ALICE, "later title").expect("t");

    let mut f = p.fork_at(&a1, "f0f0", BOB).expect("fork");
    assert_eq!(f.id(), "f0f0");
    let parent = f.parent().expect("parent");
    assert_eq!(parent.conversation, "c0ffee");
    assert_eq!(parent.message_id, a1);
    assert_eq!(parent.heads, heads_at_a1);
    assert_eq!(f.title(), "first", "later edits are not in the fork");
    let ids: Vec<_> = f.messages().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![u1.clone(), a1.clone()]);
    assert_eq!(f.message(&a1).expect("a1").text, "answer one");
    // Shared history: every change before the fork point is in the fork.
    let mut fa = f.automerge().clone();
    let mut pa = p.automerge().clone();
    let after: std::collections::HashSet<_> = pa
        .get_changes(&heads_at_a1)
        .iter()
        .map(|c| c.hash())
        .collect();
    let shared: Vec<_> = pa
        .get_changes(&[])
        .iter()
        .map(|c| c.hash())
        .filter(|h| !after.contains(h))
        .collect();
    assert!(shared.len() >= 5);
    for h in &shared {
        assert!(fa.get_change_by_hash(h).is_some(), "fork lacks {h}");
    }
    for h in &after {
        assert!(
            fa.get_change_by_hash(h).is_none(),
            "fork has later change {h}"
        );
    }
    // Both sides keep working independently.
    let fu = f
        .append_user_message(BOB, "fork q", Status::Queued)
        .expect("fu");
    p.append_chunk(&a2, " more").expect("c");
    assert!(p.message(&fu).is_none());
    assert_eq!(f.message_count(), 3);
    assert_eq!(p.message(&a2).expect("a2").text, "answer two more");
    let reloaded = Conversation::load(&f.save()).expect("fork valid");
    assert_eq!(reloaded.parent().expect("p").message_id, a1);
}

#[test]
fn fork_drops_later_messages_that_are_causal_dependencies() {
    let mut p = new_conv();
    let a1 = p.start_message(NODE, Role::Agent).expect("a1");
    p.append_chunk(&a1, "part").expect("c");
    let q = p
        .append_user_message(ALICE, "queued meanwhile", Status::Queued)
        .expect("q");
    p.append_chunk(&a1, " two").expect("c");
    let f = p.fork_at(&a1, "f1", BOB).expect("fork");
    let ids: Vec<_> = f.messages().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![a1.clone()]);
    assert_eq!(f.message(&a1).expect("a1").text, "part two");
    assert!(f.message(&q).is_none());
    assert!(p.fork_at(&MessageId::random(), "f2", BOB).is_err());
    assert!(p.fork_at(&a1, "../f2", BOB).is_err());
}

#[test]
fn buffered_chunks_of_interleaved_messages_commit_as_one_change() {
    let mut c = new_conv();
    let a = c.start_message(NODE, Role::Agent).expect("a");
    let t = c.start_message(NODE, Role::Thought).expect("t");
    for (m, s) in [(&a, "He"), (&t, "hm"), (&a, "llo"), (&t, "m"), (&a, "")] {
        c.append_chunk(m, s).expect("chunk");
    }
    assert_eq!(c.message(&a).expect("a").text, "Hello");
    let texts: Vec<_> = c.messages().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["Hello".to_string(), "hmm".to_string()]);
    let heads = c.heads();
    let mut am = c.automerge().clone();
    let changes = am.get_changes(&[]);
    assert_eq!(changes.len(), 4, "create, start, start, chunks");
    // The document (not only the views) holds the text, and reloads identically.
    let mut back = Conversation::load(&c.save()).expect("load");
    assert_eq!(back.heads(), heads);
    assert_eq!(back.message(&t).expect("t").text, "hmm");
    // Chunks after a commit point go into a new change, after the earlier text.
    c.append_chunk(&a, ", world").expect("chunk");
    c.set_status(&a, Status::Done, None).expect("done");
    assert_eq!(c.message(&a).expect("a").text, "Hello, world");
    assert_eq!(c.automerge().clone().get_changes(&[]).len(), 6);
}

#[test]
fn message_text_from_reads_the_tail() {
    let mut c = new_conv();
    let m = c.start_message(NODE, Role::Agent).expect("m");
    c.append_chunk(&m, "héllo ").expect("c");
    c.commit_pending();
    c.append_chunk(&m, "wörld").expect("c");
    let full = c.message(&m).expect("m").text;
    assert_eq!(full, "héllo wörld");
    let (tail, len) = c.message_text_from(&m, 6).expect("tail");
    assert_eq!((tail.as_str(), len), ("wörld", 11));
    assert_eq!(c.message_text_from(&m, 0).expect("all").0, full);
    assert_eq!(c.message_text_from(&m, 99).expect("none").0, "");
    assert!(c.message_text_from(&MessageId::random(), 0).is_none());
}
