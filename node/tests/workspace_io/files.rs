//! Files: ls, cat, diffs, get and put round trips, path escapes, limits, roles.

use super::*;
use sam_client::cli::files::request;
use sam_client::streams::{download, upload};

async fn files(c: &NodeClient, ws: &str, op: FilesOp) -> Result<FilesResponse, ErrorBody> {
    request(c, ws, op).await.map_err(remote_err)
}

fn ls(path: &str, depth: u32, limit: u32) -> FilesOp {
    FilesOp::List {
        path: path.into(),
        depth,
        limit,
    }
}

fn cat(path: &str) -> FilesOp {
    FilesOp::Read {
        path: path.into(),
        max_bytes: 1 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_read_and_diff() {
    let rig = Rig::start().await;
    let (_e, c) = rig.ctl(None).await;

    let FilesResponse::List { entries, truncated } =
        files(&c, &rig.ws, ls(".", 0, 100)).await.expect("ls")
    else {
        panic!("not a listing")
    };
    assert!(!truncated);
    let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
    for n in ["a.txt", "b.txt", "src", "escape", ".git"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names.contains(&"src/main.rs"), "depth 0 does not recurse");
    let src = entries.iter().find(|e| e.path == "src").expect("src");
    assert_eq!(src.kind, FileKind::Dir);
    assert_eq!(
        entries
            .iter()
            .find(|e| e.path == "escape")
            .expect("link")
            .kind,
        FileKind::Symlink
    );

    let FilesResponse::List { entries, .. } =
        files(&c, &rig.ws, ls("src", 5, 100)).await.expect("ls src")
    else {
        panic!()
    };
    let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
    assert!(names.contains(&"src/deep/x.txt"), "{names:?}");
    // A symlink inside the workspace is followed.
    let FilesResponse::List { entries, .. } = files(&c, &rig.ws, ls("inner-link", 0, 100))
        .await
        .expect("inner link")
    else {
        panic!()
    };
    assert!(
        entries.iter().any(|e| e.path == "src/main.rs"),
        "{entries:?}"
    );
    // The count limit.
    let FilesResponse::List { entries, truncated } =
        files(&c, &rig.ws, ls(".", 10, 3)).await.expect("limited")
    else {
        panic!()
    };
    assert!(truncated);
    assert_eq!(entries.len(), 3);

    let FilesResponse::Read {
        data,
        size,
        truncated,
    } = files(&c, &rig.ws, cat("a.txt")).await.expect("cat")
    else {
        panic!()
    };
    assert_eq!(data, b"line one\nline 2 changed\n");
    assert_eq!(size, data.len() as u64);
    assert!(!truncated);
    // Binary and over the cap: cut, with the real size.
    let FilesResponse::Read {
        data,
        size,
        truncated,
    } = files(&c, &rig.ws, cat("big.bin")).await.expect("cat big")
    else {
        panic!()
    };
    assert!(truncated);
    assert_eq!(size, 9 * 1024 * 1024);
    assert_eq!(data.len(), 1 << 20);
    let e = files(&c, &rig.ws, cat("src")).await.expect_err("cat a dir");
    assert!(e.message.contains("directory"), "{}", e.message);
    let e = files(&c, &rig.ws, cat("nope.txt"))
        .await
        .expect_err("missing");
    assert_eq!(e.code, ErrorCode::NotFound);

    let FilesResponse::Diff { text, .. } = files(
        &c,
        &rig.ws,
        FilesOp::GitDiff {
            base: None,
            path: None,
        },
    )
    .await
    .expect("git diff") else {
        panic!()
    };
    assert!(
        text.contains("-line two") && text.contains("+line 2 changed"),
        "{text}"
    );
    assert!(
        !text.contains("feat.txt"),
        "HEAD diff has no committed change: {text}"
    );
    let op = FilesOp::GitDiff {
        base: Some("main".into()),
        path: None,
    };
    let FilesResponse::Diff { text, .. } = files(&c, &rig.ws, op).await.expect("diff vs base")
    else {
        panic!()
    };
    assert!(
        text.contains("feat.txt") && text.contains("+line 2 changed"),
        "{text}"
    );
    let op = FilesOp::GitDiff {
        base: Some("--output=/tmp/x".into()),
        path: None,
    };
    assert_eq!(
        files(&c, &rig.ws, op)
            .await
            .expect_err("option as base")
            .code,
        ErrorCode::BadRequest
    );
    let op = FilesOp::Diff {
        a: "a.txt".into(),
        b: "b.txt".into(),
    };
    let FilesResponse::Diff { text, .. } = files(&c, &rig.ws, op).await.expect("two-file diff")
    else {
        panic!()
    };
    assert!(
        text.contains("-line one") && text.contains("+other one"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_escape_the_workspace() {
    let rig = Rig::start().await;
    let (_e, c) = rig.ctl(None).await;
    let (_ef, fc) = rig.conn(alpn::FILE, None).await;
    let local = tempfile::tempdir().expect("tempdir");
    for p in [
        "../etc/passwd",
        "/etc/passwd",
        "escape/etc/passwd",
        "passwd-link",
        "escape",
        "src/../../..",
        "/workspaces",
    ] {
        let e = files(&c, &rig.ws, cat(p)).await.expect_err(p);
        assert_eq!(e.code, ErrorCode::Forbidden, "{p}: {e}");
        assert!(
            e.message.contains("outside the workspace root"),
            "{p}: {}",
            e.message
        );
        let e = files(&c, &rig.ws, ls(p, 0, 10)).await.expect_err(p);
        assert_eq!(e.code, ErrorCode::Forbidden, "ls {p}: {e}");
        let e = download(&fc, &rig.ws, p, local.path())
            .await
            .map(|_| ())
            .expect_err(p);
        assert_eq!(remote_err(e).code, ErrorCode::Forbidden, "get {p}");
    }
    let src = local.path().join("f.txt");
    std::fs::write(&src, b"x").expect("write");
    for p in ["../x", "/etc/x", "escape/tmp", "escape"] {
        let e = upload(&fc, &rig.ws, &src, p)
            .await
            .map(|_| ())
            .expect_err(p);
        assert_eq!(remote_err(e).code, ErrorCode::Forbidden, "put {p}");
    }
    let op = FilesOp::GitDiff {
        base: None,
        path: Some("escape/etc".into()),
    };
    assert_eq!(
        files(&c, &rig.ws, op).await.expect_err("diff path").code,
        ErrorCode::Forbidden
    );
    let op = FilesOp::Diff {
        a: "a.txt".into(),
        b: "/etc/passwd".into(),
    };
    assert_eq!(
        files(&c, &rig.ws, op).await.expect_err("diff b").code,
        ErrorCode::Forbidden
    );
    assert!(
        rig.container
            .sh("ls /tmp /etc/x 2>&1 || true")
            .contains("No such file"),
        "nothing was written outside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_put_round_trip_files_and_directories() {
    let rig = Rig::start().await;
    let (_ef, fc) = rig.conn(alpn::FILE, None).await;
    let local = tempfile::tempdir().expect("tempdir");

    // A file into a directory, and under a new name.
    let t = download(&fc, &rig.ws, "big.bin", local.path())
        .await
        .expect("get file");
    assert_eq!(t.size, 9 * 1024 * 1024);
    let got = std::fs::read(local.path().join("big.bin")).expect("downloaded");
    let want_sum = rig
        .container
        .sh("sha256sum /workspaces/repo/big.bin | cut -d' ' -f1");
    assert_eq!(sha256(&got), want_sum.trim());
    download(&fc, &rig.ws, "a.txt", &local.path().join("renamed.txt"))
        .await
        .expect("get renamed");
    assert_eq!(
        std::fs::read(local.path().join("renamed.txt")).expect("r"),
        b"line one\nline 2 changed\n"
    );

    // A directory.
    let t = download(&fc, &rig.ws, "src", local.path())
        .await
        .expect("get dir");
    assert!(t.is_dir);
    assert_eq!(
        std::fs::read(local.path().join("src/deep/x.txt")).expect("deep"),
        b"deep\n"
    );

    // Put a directory with a binary file and a symlink, into the root and renamed.
    let up = local.path().join("up");
    std::fs::create_dir_all(up.join("sub")).expect("mkdir");
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(up.join("sub/blob.bin"), &blob).expect("blob");
    std::os::unix::fs::symlink("sub/blob.bin", up.join("link")).expect("symlink");
    let t = upload(&fc, &rig.ws, &up, ".").await.expect("put dir");
    assert_eq!(t.dest, "/workspaces/repo/up");
    let sum = rig
        .container
        .sh("sha256sum /workspaces/repo/up/sub/blob.bin | cut -d' ' -f1");
    assert_eq!(sum.trim(), sha256(&blob));
    assert_eq!(
        rig.container.sh("readlink /workspaces/repo/up/link").trim(),
        "sub/blob.bin"
    );
    let t = upload(&fc, &rig.ws, &up.join("sub/blob.bin"), "src/copied.bin")
        .await
        .expect("put renamed");
    assert_eq!(t.dest, "/workspaces/repo/src/copied.bin");
    let sum = rig
        .container
        .sh("sha256sum /workspaces/repo/src/copied.bin | cut -d' ' -f1");
    assert_eq!(sum.trim(), sha256(&blob));
    // And back again, byte for byte.
    download(
        &fc,
        &rig.ws,
        "src/copied.bin",
        &local.path().join("back.bin"),
    )
    .await
    .expect("get back");
    assert_eq!(
        std::fs::read(local.path().join("back.bin")).expect("back"),
        blob
    );
    // Into a missing directory: a clear error.
    let e = upload(&fc, &rig.ws, &up, "no/such/dir/x")
        .await
        .map(|_| ())
        .expect_err("missing parent");
    assert_eq!(remote_err(e).code, ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_roles() {
    let rig = Rig::start().await;
    // An upload that announces more than the limit is refused before any byte.
    let (_ef, fc) = rig.conn(alpn::FILE, None).await;
    let (mut send, mut recv) = fc.open_bi().await.expect("stream");
    let open = FileOpen::Upload {
        workspace: rig.ws.clone(),
        path: "huge".into(),
        name: "huge".into(),
        size: sam_protocol::stream::MAX_TRANSFER_BYTES + 1,
        count: 1,
    };
    write_frame(&mut send, &open).await.expect("header");
    match read_frame::<OpenReply>(&mut recv, 1 << 20)
        .await
        .expect("reply")
    {
        OpenReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains("transfer limit"), "{}", e.message);
        }
        OpenReply::Ok => panic!("oversize upload accepted"),
    }
    // An upload that sends more than it announced is cut off.
    let (mut send, mut recv) = fc.open_bi().await.expect("stream");
    let open = FileOpen::Upload {
        workspace: rig.ws.clone(),
        path: "liar.bin".into(),
        name: "liar.bin".into(),
        size: 10,
        count: 1,
    };
    write_frame(&mut send, &open).await.expect("header");
    assert_eq!(
        read_frame::<OpenReply>(&mut recv, 1 << 20)
            .await
            .expect("ok"),
        OpenReply::Ok
    );
    let _plan = read_frame::<sam_protocol::stream::UploadPlan>(&mut recv, 1 << 20)
        .await
        .expect("plan");
    let junk = vec![0u8; 4 << 20];
    let _ = send.write_all(&junk).await;
    let _ = send.finish();
    match read_frame::<OpenReply>(&mut recv, 1 << 20).await {
        Ok(OpenReply::Error(e)) => assert_eq!(e.code, ErrorCode::TooLarge, "{e}"),
        other => panic!("liar upload: {other:?}"),
    }

    // A viewer may list, but not read, diff, get or put.
    let viewer = SecretKey::generate();
    let v = Some((Role::Viewer, &viewer));
    let (_ev, vc) = rig.ctl(v).await;
    files(&vc, &rig.ws, ls(".", 0, 10))
        .await
        .expect("viewer lists");
    assert_eq!(
        files(&vc, &rig.ws, cat("a.txt"))
            .await
            .expect_err("viewer cat")
            .code,
        ErrorCode::Forbidden
    );
    let op = FilesOp::GitDiff {
        base: None,
        path: None,
    };
    assert_eq!(
        files(&vc, &rig.ws, op).await.expect_err("viewer diff").code,
        ErrorCode::Forbidden
    );
    let (_evf, vfc) = rig.conn(alpn::FILE, v).await;
    let local = tempfile::tempdir().expect("tempdir");
    let e = download(&vfc, &rig.ws, "a.txt", local.path())
        .await
        .map(|_| ())
        .expect_err("viewer get");
    assert_eq!(remote_err(e).code, ErrorCode::Forbidden);
    let f = local.path().join("f");
    std::fs::write(&f, b"x").expect("write");
    let e = upload(&vfc, &rig.ws, &f, ".")
        .await
        .map(|_| ())
        .expect_err("viewer put");
    assert_eq!(remote_err(e).code, ErrorCode::Forbidden);
    // A collaborator scoped to another workspace gets nothing here.
    let other = SecretKey::generate();
    let mut t = rig.handle.ticket();
    t.capability = Some(
        Capability::new(
            rig.owner.node_id(),
            rig.node_key.node_id(),
            Grantee::Key(other.node_id()),
            Role::Collaborator,
            Some(sam_protocol::Scope::Workspace("someone-else".into())),
            sam_client::now_secs(),
            None,
        )
        .sign(&rig.owner, None),
    );
    let ep = sam_client::endpoint::bind(&other, Some("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let oc = NodeClient::connect(&ep, &t).await.expect("scoped connects");
    assert_eq!(
        files(&oc, &rig.ws, ls(".", 0, 10))
            .await
            .expect_err("scoped")
            .code,
        ErrorCode::Forbidden
    );
}

fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("feed");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}
