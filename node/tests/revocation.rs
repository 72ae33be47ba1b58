//! Revocation fails closed (issue #16), tried as an attacker would: a collaborator whose
//! capability is revoked while the node's disk is full, and a node whose share file
//! is damaged. A revocation is in force (live connections cut, new ones refused) before
//! the node tries to save it; a save that fails is reported and retried; a damaged
//! share file never locks the owner out and never lets anyone else in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iroh::endpoint::ConnectionError;
use sam_client::conn::{ConnectError, NodeClient};
use sam_node::server::close;
use sam_node::shares::{ShareFile, ShareStore};
use sam_protocol::capability::Grantee;
use sam_protocol::ctl::{ErrorCode, NodeStatus, Request, Response};
use sam_protocol::{Role, SecretKey, Ticket};

use crate::support::harness::{TestNode, client, start_in};

/// A small tmpfs mounted on a temp dir (unmounted on drop): a disk the test can fill.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test fills a disk, so it mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros to `filler` until the file system says it is full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        for size in [64 * 1024, 1] {
            let buf = vec![0u8; size];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling the disk: {e}"),
                }
            }
        }
        let _ = f.sync_all();
        // Proof that it is full: not one more byte fits.
        let mut probe = std::fs::File::create(self.path().join("probe")).expect("probe");
        assert!(
            probe.write_all(&[0u8; 4096]).is_err(),
            "the disk is not full"
        );
        let _ = std::fs::remove_file(self.path().join("probe"));
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn shares_on_disk(dir: &Path) -> ShareFile {
    ShareStore::new(dir.join("shares.json"))
        .load()
        .expect("the share file on disk parses")
}

fn revoked_on_disk(dir: &Path, id: [u8; 16]) -> bool {
    shares_on_disk(dir).revoked_set().contains(&id)
}

fn refusal(r: Result<(iroh::Endpoint, NodeClient), ConnectError>) -> String {
    match r {
        Err(ConnectError::Refused(e)) => e.message,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got in"),
    }
}

async fn status(c: &NodeClient) -> NodeStatus {
    match c.request(Request::Status).await.expect("status") {
        Response::Status(s) => s,
        other => panic!("not a status: {other:?}"),
    }
}

async fn close_code(conn: &iroh::endpoint::Connection) -> u32 {
    match tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the node closed the connection")
    {
        ConnectionError::ApplicationClosed(a) => a.error_code.into_inner() as u32,
        other => panic!("unexpected close: {other}"),
    }
}

/// Polls `cond` (a guard against a hang, not a timing claim).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ticket_for(n_ticket: &Ticket, cap: &sam_protocol::SignedCapability) -> Ticket {
    let mut t = n_ticket.clone();
    t.capability = Some(cap.clone());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_a_full_disk_is_reported_in_force_at_once_and_saved_when_space_returns() {
    let disk = Tmpfs::mount("2m");
    let dir = disk.path().join("node");
    let owner_key = SecretKey::generate();
    let node_key = SecretKey::generate();
    let handle = start_in(&dir, &owner_key, &node_key, "127.0.0.1:0").await;

    let (_oep, owner) = client(&owner_key, &handle.ticket()).await.expect("owner");
    let mallory = SecretKey::generate();
    let cap = sam_protocol::capability::Capability::new(
        owner_key.node_id(),
        node_key.node_id(),
        Grantee::Key(mallory.node_id()),
        Role::Collaborator,
        None,
        sam_client::now_secs(),
        None,
    )
    .sign(&owner_key, None);
    owner
        .request(Request::RegisterShare(cap.clone()))
        .await
        .expect("register");
    let ticket = ticket_for(&handle.ticket(), &cap);
    let (_mep, m) = client(&mallory, &ticket).await.expect("mallory gets in");
    assert_eq!(
        m.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    // A live stream: half a request, the node waits for the rest.
    let live = m.conn();
    let (mut send, mut recv) = live.open_bi().await.expect("stream");
    send.write_all(&[0, 0]).await.expect("half a header");

    let filler = disk.fill();
    let err = match owner.request(Request::Revoke { id: cap.cap.id }).await {
        Err(ConnectError::Remote(e)) => e,
        other => panic!("a revoke that cannot be saved must be reported, got {other:?}"),
    };
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(
        err.message.contains("in force") && err.message.contains("NOT saved"),
        "{err}"
    );

    // In force anyway: the live connection and its stream are cut with the reason...
    assert_eq!(close_code(&live).await, close::REVOKED);
    let mut buf = [0u8; 16];
    assert!(
        recv.read(&mut buf).await.is_err(),
        "the live stream was cut"
    );
    // ...the revoked key cannot come back or act...
    let msg = refusal(client(&mallory, &ticket).await);
    assert!(msg.contains("revoked"), "{msg}");
    assert!(m.request(Request::Ping).await.is_err());
    // ...the owner sees it revoked and is told it is not saved yet.
    let Response::Shares(list) = owner.request(Request::ListShares).await.expect("ls") else {
        panic!("not shares")
    };
    assert!(
        list.iter()
            .any(|s| s.capability.id == cap.cap.id && s.revoked)
    );
    let st = status(&owner).await;
    assert!(
        st.warnings.iter().any(|w| w.contains("not yet saved")),
        "{:?}",
        st.warnings
    );
    // The file on disk is the old, whole one (no half-written file, no temp left).
    assert!(!revoked_on_disk(&dir, cap.cap.id));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space comes back: the node's retry saves it, without being asked.
    std::fs::remove_file(&filler).expect("free the disk");
    eventually("the revocation is saved", || {
        revoked_on_disk(&dir, cap.cap.id)
    })
    .await;
    assert!(status(&owner).await.warnings.is_empty());

    // And it survives a restart.
    owner.close();
    handle.shutdown().await.expect("shutdown");
    let handle = start_in(&dir, &owner_key, &node_key, "127.0.0.1:0").await;
    let ticket = ticket_for(&handle.ticket(), &cap);
    let msg = refusal(client(&mallory, &ticket).await);
    assert!(msg.contains("revoked"), "{msg}");
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_share_file_admits_only_the_owner_until_it_is_repaired() {
    let TestNode {
        dir,
        owner,
        node_key,
        handle,
    } = TestNode::start().await;
    let shares = dir.path().join("shares.json");
    let (alice, bob) = (SecretKey::generate(), SecretKey::generate());
    let cap_of = |k: &SecretKey| {
        sam_protocol::capability::Capability::new(
            owner.node_id(),
            node_key.node_id(),
            Grantee::Key(k.node_id()),
            Role::Collaborator,
            None,
            sam_client::now_secs(),
            None,
        )
        .sign(&owner, None)
    };
    let (cap_a, cap_b) = (cap_of(&alice), cap_of(&bob));
    {
        let (_ep, o) = client(&owner, &handle.ticket()).await.expect("owner");
        for c in [&cap_a, &cap_b] {
            o.request(Request::RegisterShare(c.clone()))
                .await
                .expect("register");
        }
    }
    let (_aep, a) = client(&alice, &ticket_for(&handle.ticket(), &cap_a))
        .await
        .expect("alice gets in");
    let good = std::fs::read(&shares).expect("shares.json");

    // The file is cut in half (a crash of some other tool, a bad edit).
    let damaged = good[..good.len() / 2].to_vec();
    std::fs::write(&shares, &damaged).expect("damage");

    // The owner is still admitted and served.
    let (_oep, o) = client(&owner, &handle.ticket())
        .await
        .expect("the owner is never locked out");
    assert_eq!(
        o.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    // Everyone else is refused: the live connection is cut, a new one refused.
    assert_eq!(close_code(&a.conn()).await, close::SHARES_DAMAGED);
    let msg = refusal(client(&alice, &ticket_for(&handle.ticket(), &cap_a)).await);
    assert!(msg.contains("damaged"), "{msg}");
    // The damaged file is kept (a copy aside, the original untouched) and the owner
    // is told.
    let copies: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("shares.json.corrupt-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).expect("copy"), damaged);
    assert_eq!(std::fs::read(&shares).expect("shares"), damaged);
    let st = status(&o).await;
    assert!(
        st.warnings.iter().any(|w| w.contains("damaged")),
        "{:?}",
        st.warnings
    );
    o.close();

    // A restart with the damaged file: the node starts, still owner-only.
    handle.shutdown().await.expect("shutdown");
    let handle = start_in(dir.path(), &owner, &node_key, "127.0.0.1:0").await;
    let (_oep, o) = client(&owner, &handle.ticket()).await.expect("owner");
    let msg = refusal(client(&alice, &ticket_for(&handle.ticket(), &cap_a)).await);
    assert!(msg.contains("damaged"), "{msg}");

    // Revoking Bob now cannot be saved (the file is not rewritten while damaged): it
    // is reported, in force, and saved once the file is repaired.
    match o.request(Request::Revoke { id: cap_b.cap.id }).await {
        Err(ConnectError::Remote(e)) => assert!(e.message.contains("NOT saved"), "{e}"),
        other => panic!("expected the revoke to be reported unsaved, got {other:?}"),
    }
    assert_eq!(std::fs::read(&shares).expect("shares"), damaged);

    std::fs::write(&shares, &good).expect("repair");
    let (_aep, a) = client(&alice, &ticket_for(&handle.ticket(), &cap_a))
        .await
        .expect("alice is admitted again after the repair");
    assert_eq!(
        a.request(Request::Ping).await.expect("ping"),
        Response::Pong
    );
    let msg = refusal(client(&bob, &ticket_for(&handle.ticket(), &cap_b)).await);
    assert!(msg.contains("revoked"), "{msg}");
    eventually("Bob's revocation is saved after the repair", || {
        revoked_on_disk(dir.path(), cap_b.cap.id)
    })
    .await;
    assert!(!revoked_on_disk(dir.path(), cap_a.cap.id));
    handle.shutdown().await.expect("shutdown");
}
