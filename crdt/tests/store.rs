//! DocStore persistence: round trips, torn tails, corruption, compaction, crash recovery.

use std::fs;

use sam_crdt::{
    Conversation, CrdtError, DocStore, FsyncPolicy, NewConversation, Role, Status, StoreOptions,
};

const NODE: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn new_conv(id: &str) -> Conversation {
    Conversation::create(
        NewConversation {
            id: id.into(),
            title: "stored".into(),
            agent: "gemini".into(),
            workspace_node: NODE.into(),
            workspace_id: "ws".into(),
            created_at: 5,
        },
        NODE,
    )
    .expect("create")
}

fn opts(fsync: FsyncPolicy, compact: u64) -> StoreOptions {
    StoreOptions {
        fsync,
        compact_after_bytes: compact,
    }
}

/// Appends `n` chunks, persisting after each; returns the expected text.
fn stream(store: &mut DocStore, c: &mut Conversation, n: usize) -> (sam_crdt::MessageId, String) {
    let m = c.start_message(NODE, Role::Agent).expect("start");
    store.append(c).expect("append");
    let mut expected = String::new();
    for i in 0..n {
        let chunk = format!("t{i} ");
        c.append_chunk(&m, &chunk).expect("chunk");
        store.append(c).expect("append");
        expected.push_str(&chunk);
    }
    (m, expected)
}

#[test]
fn append_and_reload_after_crash() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, expected, heads) = {
        let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("open");
        let mut c = new_conv("abc");
        store
            .append(&mut c)
            .expect("first append writes a snapshot");
        assert!(dir.path().join("abc.am").exists());
        let (m, expected) = stream(&mut store, &mut c, 200);
        assert_eq!(store.append(&mut c).expect("noop"), 0, "nothing new");
        (m, expected, c.heads())
        // dropped without compaction or flush: like kill -9 after the last append returned
    };
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("reopen");
    let mut c = store.load("abc").expect("load");
    assert_eq!(c.message(&m).expect("m").text, expected);
    assert_eq!(c.heads(), heads);
    assert_eq!(store.list().expect("list"), vec!["abc".to_string()]);
}

#[test]
fn torn_tail_is_cut_and_kept_aside() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), opts(FsyncPolicy::Never, u64::MAX)).expect("open");
    let mut c = new_conv("abc");
    store.append(&mut c).expect("snap");
    let (m, expected) = stream(&mut store, &mut c, 20);
    drop(store);
    let log = dir.path().join("abc.log");
    let good_len = fs::metadata(&log).expect("meta").len();
    // A record whose write was cut short.
    let mut data = fs::read(&log).expect("read");
    data.extend_from_slice(&[0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    fs::write(&log, &data).expect("write");

    let mut store = DocStore::open(dir.path(), opts(FsyncPolicy::Never, u64::MAX)).expect("open");
    let mut c2 = store.load("abc").expect("torn tail is not fatal");
    assert_eq!(c2.message(&m).expect("m").text, expected);
    assert_eq!(fs::metadata(&log).expect("meta").len(), good_len);
    let aside: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    c2.append_chunk(&m, "after").expect("c");
    store.append(&mut c2).expect("append after repair");
    let c3 = DocStore::open(dir.path(), StoreOptions::default())
        .expect("open")
        .load("abc")
        .expect("load");
    assert_eq!(c3.message(&m).expect("m").text, format!("{expected}after"));
}

fn corrupt_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn corrupt_snapshot_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("open");
    let mut c = new_conv("abc");
    store.append(&mut c).expect("snap");
    fs::write(dir.path().join("abc.am"), b"this is not automerge").expect("w");
    let err = store.load("abc").expect_err("corrupt");
    assert!(
        matches!(
            err,
            CrdtError::Corrupt {
                what: "snapshot",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("moved aside"), "{err}");
    assert!(!dir.path().join("abc.am").exists());
    let aside = corrupt_files(dir.path());
    assert_eq!(aside.len(), 1);
    assert!(aside[0].starts_with("abc.am.corrupt-"));
    assert_eq!(
        fs::read(dir.path().join(&aside[0])).expect("kept"),
        b"this is not automerge"
    );
}

#[test]
fn corrupt_log_in_the_middle_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("open");
    let mut c = new_conv("abc");
    store.append(&mut c).expect("snap");
    stream(&mut store, &mut c, 5);
    let log = dir.path().join("abc.log");
    let mut data = fs::read(&log).expect("r");
    data[20] ^= 0xff; // inside the first record's payload
    fs::write(&log, &data).expect("w");
    let err = store.load("abc").expect_err("corrupt");
    assert!(
        matches!(err, CrdtError::Corrupt { what: "log", .. }),
        "{err}"
    );
    assert!(!log.exists());
    assert_eq!(corrupt_files(dir.path()).len(), 1);
    // The snapshot alone still loads.
    assert!(store.load("abc").is_ok());
}

#[test]
fn compaction_keeps_everything_and_bounds_the_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), opts(FsyncPolicy::EveryN(10), 4096)).expect("open");
    let mut c = new_conv("abc");
    store.append(&mut c).expect("snap");
    let (m, expected) = stream(&mut store, &mut c, 500);
    store.flush().expect("flush");
    let log_len = fs::metadata(dir.path().join("abc.log")).expect("m").len();
    assert!(log_len <= 4096 + 1024, "log was compacted: {log_len}");
    assert!(!dir.path().join("abc.am.tmp").exists());
    let c2 = DocStore::open(dir.path(), StoreOptions::default())
        .expect("open")
        .load("abc")
        .expect("load");
    assert_eq!(c2.message(&m).expect("m").text, expected);
    assert_eq!(c2.messages(), c.messages());
}

#[test]
fn second_store_instance_appends_safely() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = new_conv("abc");
    DocStore::open(dir.path(), StoreOptions::default())
        .expect("open")
        .append(&mut c)
        .expect("snap");
    let q = c
        .append_user_message(NODE, "later", Status::Queued)
        .expect("q");
    let mut other = DocStore::open(dir.path(), StoreOptions::default()).expect("open");
    other.append(&mut c).expect("append without load");
    let c2 = other.load("abc").expect("load");
    assert_eq!(c2.queued_prompts(), vec![q]);
}

#[test]
fn ids_are_validated_and_listing_ignores_junk() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = DocStore::open(dir.path(), StoreOptions::default()).expect("open");
    for bad in ["../abc", "/etc/passwd", "ABC", "a.b", "", "-x", "a/../../b"] {
        assert!(
            matches!(store.load(bad), Err(CrdtError::InvalidArgument(_))),
            "{bad}"
        );
        assert!(store.remove(bad).is_err(), "{bad}");
    }
    assert!(matches!(store.load("abcd"), Err(CrdtError::NotFound(_))));
    fs::write(dir.path().join("notes.txt"), b"x").expect("w");
    fs::write(dir.path().join("UPPER.am"), b"x").expect("w");
    let mut a = new_conv("0a");
    let mut b = new_conv("0b-1");
    store.append(&mut a).expect("a");
    store.append(&mut b).expect("b");
    assert_eq!(store.list().expect("list"), vec!["0a", "0b-1"]);
    store.remove("0a").expect("rm");
    assert_eq!(store.list().expect("list"), vec!["0b-1"]);
    assert!(matches!(store.remove("0a"), Err(CrdtError::NotFound(_))));
    let mut empty = Conversation::new_replica();
    assert!(store.append(&mut empty).is_err());
}
