use std::process::Command;

use proptest::prelude::*;

use super::*;

fn spec() -> BootstrapSpec {
    let owner = SecretKey::from_bytes([7; 32]).node_id();
    BootstrapSpec::new(
        SecretKey::from_bytes([9; 32]),
        1_900_000_000,
        owner,
        NodeRelease {
            url: "https://releases.example/sam-node-x86_64".into(),
            sha256: "ab".repeat(32),
            pty_hold: None,
        },
    )
}

fn key_hex(spec: &BootstrapSpec) -> String {
    data_encoding::HEXLOWER.encode(&spec.enrollment.to_bytes())
}

#[test]
fn script_has_enrollment_config_checksum_and_start() {
    let spec = spec();
    let text = render_user_data(&spec).expect("render");
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.len() <= USER_DATA_LIMIT);
    // the one-time enrollment (key, expiry, port), exactly once, inside its heredoc, then
    // made 0600; no node key is written at all (sam-node makes its own)
    let key = key_hex(&spec);
    assert_eq!(text.matches(&key).count(), 1);
    let heredoc = text
        .split("<<'SAM_NODE_ENROLL'\n")
        .nth(1)
        .and_then(|t| t.split("SAM_NODE_ENROLL\n").next())
        .expect("enrollment heredoc");
    let file: sam_protocol::enroll::EnrollFile = toml::from_str(heredoc).expect("enroll.toml");
    assert_eq!(file.key, key);
    assert_eq!(file.expires_unix, 1_900_000_000);
    assert_eq!(file.bind, "0.0.0.0:7448".parse().expect("addr"));
    assert!(text.contains("chmod 0600 \"$SAM_HOME/node/enroll.toml\""));
    assert!(!text.contains("node.key"));
    assert!(text.contains("umask 077"));
    // the pinned checksum and its check
    assert!(text.contains(&format!("NODE_SHA256='{}'", "ab".repeat(32))));
    assert!(text.contains("sha256sum \"$1\""));
    assert!(text.contains("got=$(sha_of \"$tmp\")"));
    assert!(text.contains("if [ \"$got\" != \"$3\" ]"));
    assert!(text.contains("install_bin sam-node \"$NODE_URL\" \"$NODE_SHA256\" \"$NODE_BIN\""));
    assert!(text.contains("NODE_URL='https://releases.example/sam-node-x86_64'"));
    // config
    assert!(text.contains(&format!("owner = \"{}\"", spec.owner)));
    assert!(text.contains("bind = \"0.0.0.0:7447\""));
    assert!(text.contains("printf 'advertise = [\"%s:%s\"]\\n'"));
    // docker, systemd and the fallback
    assert!(text.contains("apt_install docker.io"));
    assert!(text.contains("ExecStart=/usr/local/bin/sam-node run"));
    assert!(text.contains("nohup \"$NODE_BIN\" run"));
    // never traced
    assert!(!text.contains("set -x"));
    assert!(!text.contains("set -eux"));
}

#[test]
fn script_is_valid_sh() {
    let mut spec = spec();
    spec.advertise = Advertise::Detect {
        metadata_urls: vec![HETZNER_PUBLIC_IPV4_URL.into(), "http://x/?a=b&c=d".into()],
    };
    spec.relays = vec!["https://relay.example/".into()];
    spec.extra_commands = vec!["echo 'pre-start'".into()];
    let text = render_user_data(&spec).expect("render");
    let Ok(out) = Command::new("sh").arg("-n").arg("-c").arg(&text).output() else {
        eprintln!("no sh here; skipping the syntax check");
        return;
    };
    assert!(
        out.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fixed_advertise_goes_in_the_config_and_skips_detection() {
    let mut spec = spec();
    spec.advertise = Advertise::Fixed(vec!["1.2.3.4:7447".parse().expect("addr")]);
    spec.install_docker = false;
    spec.workspace_image = false;
    let text = render_user_data(&spec).expect("render");
    assert!(text.contains("advertise = [\"1.2.3.4:7447\"]"));
    assert!(!text.contains("PUBLIC_IP"));
    assert!(!text.contains("docker.io"));
    assert!(!text.contains("step docker"));
}

#[test]
fn oversized_user_data_is_refused() {
    let mut spec = spec();
    spec.extra_commands = vec!["echo ".to_string() + &"x".repeat(USER_DATA_LIMIT)];
    match render_user_data(&spec) {
        Err(BootstrapError::TooLarge { size, limit }) => {
            assert_eq!(limit, 32 * 1024);
            assert!(size > limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let msg = render_user_data(&spec).expect_err("too large").to_string();
    assert!(msg.contains("32 KiB"), "{msg}");
}

#[test]
fn bad_inputs_are_refused() {
    let mut s = spec();
    s.release.sha256 = "abc".into();
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadSha256(_))
    ));
    let mut s = spec();
    s.release.url = "ftp://x".into();
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadUrl { .. })
    ));
    let mut s = spec();
    s.release.url = "https://x/a b".into();
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadUrl { .. })
    ));
    let mut s = spec();
    s.sam_home = "/var/lib/sam; rm -rf /".into();
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadPath(_))
    ));
    let mut s = spec();
    s.extra_commands = vec!["ok".into(), "two\nlines".into()];
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadCommand { index: 1 })
    ));
    let mut s = spec();
    s.port = 0;
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::ZeroPort)
    ));
    let mut s = spec();
    s.enroll_port = s.port;
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadEnrollPort(_))
    ));
}

#[test]
fn debug_and_errors_never_show_the_key() {
    let spec = spec();
    let key = key_hex(&spec);
    let dbg = format!("{spec:?}");
    assert!(!dbg.contains(&key), "{dbg}");
    assert!(dbg.contains("<secret>"));
    let mut big = spec.clone();
    big.extra_commands = vec!["x".repeat(USER_DATA_LIMIT)];
    let err = render_user_data(&big).expect_err("too large");
    assert!(!format!("{err} {err:?}").contains(&key));
}

proptest! {
    #[test]
    fn quoting_survives_any_text(s in "\\PC{0,40}") {
        let q = script::sh_quote(&s);
        prop_assert!(q.starts_with('\'') && q.ends_with('\''));
        // every embedded quote is closed, escaped and reopened
        let inner = &q[1..q.len() - 1];
        prop_assert_eq!(inner.replace(r"'\''", "'"), s);
    }

    #[test]
    fn any_key_and_owner_render_under_the_limit(k in any::<[u8; 32]>(), o in any::<[u8; 32]>()) {
        let mut s = spec();
        s.enrollment = SecretKey::from_bytes(k);
        s.owner = SecretKey::from_bytes(o).node_id();
        let text = render_user_data(&s).expect("render");
        prop_assert!(text.len() < USER_DATA_LIMIT);
        prop_assert!(text.contains(&data_encoding::HEXLOWER.encode(&k)));
    }
}

#[test]
fn user_data_blocks_the_metadata_service_before_the_node_starts() {
    let text = render_user_data(&spec()).expect("render");
    // the script is installed verbatim, run (unit or directly), and its failure stops the node
    assert!(text.contains(&format!(
        "<<'SAM_METADATA_BLOCK'\n{METADATA_BLOCK_SCRIPT}SAM_METADATA_BLOCK\n"
    )));
    assert!(text.contains("systemctl restart \"$METADATA_UNIT\""));
    assert!(text.contains("elif ! \"$METADATA_BLOCK\" install; then"));
    assert!(
        text.contains("elif ! \"$METADATA_BLOCK\" install; then\n  fail 'cannot block containers")
    );
    let block = text.find("SAM_METADATA_BLOCK\n").expect("block");
    // the node starts early to report progress, but enrolls only once the status is `done`,
    // written after the rules are in place
    let done = text.find("status done").expect("done");
    assert!(
        block < done,
        "the rules come before the node can be enrolled"
    );
    // the node unit requires the block unit, so a reboot without the rules runs no node
    assert!(text.contains("Requires=sam-metadata-block.service\n"));
    assert!(
        text.contains("After=network-online.target docker.service sam-metadata-block.service\n")
    );
    // off only when asked
    let mut s = spec();
    s.block_metadata = false;
    let text = render_user_data(&s).expect("render");
    assert!(!text.contains("SAM_METADATA_BLOCK"));
    assert!(!text.contains("Requires="));
}

#[test]
fn a_cloud_node_uses_n0_relays_unless_told_otherwise() {
    let text = render_user_data(&spec()).expect("render");
    assert!(text.contains("relays = [\"n0\"]"), "{text}");
    let mut own = spec();
    own.relays = vec!["https://relay.example.org/".into()];
    let text = render_user_data(&own).expect("render");
    assert!(text.contains("relays = [\"https://relay.example.org/\"]"));
    let mut none = spec();
    none.relays = vec![];
    assert!(
        !render_user_data(&none)
            .expect("render")
            .contains("relays =")
    );
    let mut bad = spec();
    for r in [
        "relay.example.org; rm -rf /",
        "file:///etc/passwd",
        "https://user:pw@relay.example/",
    ] {
        bad.relays = vec![r.into()];
        assert!(render_user_data(&bad).is_err(), "{r}");
    }
}

#[test]
fn the_user_data_runs_the_same_install_scripts_as_up_sh() {
    let text = render_user_data(&spec()).expect("render");
    eprintln!("user-data: {} bytes", text.len());
    // scripts/up.sh runs these files from the repository; the user-data carries them byte
    // for byte (a heredoc each, its delimiter nowhere inside) and runs them the same way
    let up = include_str!("../../scripts/up.sh");
    assert!(up.contains("bootstrap/images/build-base.sh"));
    assert!(up.contains("bootstrap/agents/install-agents.sh\" --into-image"));
    for (path, delim, body) in script::SHARED_SCRIPTS {
        assert!(!body.lines().any(|l| l == delim), "{path}: {delim} inside");
        let embedded = format!("cat >\"$SAM_LIB/{path}\" <<'{delim}'\n{body}{delim}\n");
        assert!(text.contains(&embedded), "{path} is not embedded verbatim");
    }
    assert!(text.contains("bash \"$SAM_LIB/images/build-base.sh\""));
    assert!(
        text.contains("bash \"$SAM_LIB/agents/install-agents.sh\" --into-image \"$BASE_IMAGE\"")
    );
    assert!(text.contains("BASE_IMAGE='sam-base:1'"));
    // each step reports itself, in order, and `done` comes last
    let order = [
        "step sam-node ",
        "step config ",
        "step node ",
        "step docker ",
        "step metadata-block ",
        "step base-image ",
        "step agents ",
        "step service ",
        "status done ",
    ];
    let mut at = 0;
    for s in order {
        let i = text[at..]
            .find(s)
            .unwrap_or_else(|| panic!("{s} missing or out of order"));
        at += i + s.len();
    }
    // off when asked (the Debian-container test has no Docker of its own)
    let mut s = spec();
    s.workspace_image = false;
    let text = render_user_data(&s).expect("render");
    assert!(!text.contains("SAM_BUILD_BASE_SH"));
    assert!(!text.contains("step agents"));
    let mut s = spec();
    s.base_image = "x; rm -rf /".into();
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadImage(_))
    ));
}

#[test]
fn any_failing_command_marks_its_step_failed() {
    // the status helpers for real, in sh: an explicit `fail`, and a command `set -e` stops on
    let dir = std::env::temp_dir().join(format!(
        "sam-bootstrap-status-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    for (body, want) in [
        (
            "step agents 'installing'\nfalse\necho not reached\n",
            "state=failed\nstep=agents\nmessage=a command failed (exit 1); the VM's cloud-init output log says which\n",
        ),
        (
            "step base-image 'building'\nfail 'building the workspace image failed'\n",
            "state=failed\nstep=base-image\nmessage=building the workspace image failed\n",
        ),
        (
            "step service 'x'\nSTEP=done\nstatus done 'the node is ready'\n",
            "state=done\nstep=done\nmessage=the node is ready\n",
        ),
    ] {
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "{}SAM_HOME={}\nmkdir -p \"$SAM_HOME/node\"\n{body}",
            script::PRELUDE,
            script::sh_quote(&dir.display().to_string())
        );
        let Ok(out) = Command::new("sh").arg("-c").arg(&text).output() else {
            eprintln!("no sh here; skipping");
            return;
        };
        assert!(!String::from_utf8_lossy(&out.stdout).contains("not reached"));
        let got = std::fs::read_to_string(dir.join("node/bootstrap.status")).expect("status");
        assert_eq!(got, want);
        // what the node will read
        let parsed = sam_protocol::enroll::BootstrapStatus::parse(&got).expect("parse");
        assert_eq!(
            parsed.state == sam_protocol::enroll::BootstrapState::Done,
            out.status.success()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

#[test]
fn a_cloud_node_publishes_to_n0_discovery_unless_told_otherwise() {
    let text = render_user_data(&spec()).expect("render");
    assert!(text.contains("discovery = [\"n0\"]"), "{text}");
    let mut own = spec();
    own.discovery = vec!["https://dns.example.org/pkarr".into()];
    let text = render_user_data(&own).expect("render");
    assert!(
        text.contains("discovery = [\"https://dns.example.org/pkarr\"]"),
        "{text}"
    );
    let mut none = spec();
    none.discovery = vec![];
    assert!(
        !render_user_data(&none)
            .expect("render")
            .contains("discovery =")
    );
    let mut bad = spec();
    for d in [
        "dns.example.org; rm -rf /",
        "file:///etc/passwd",
        "https://a\nSAM_NODE_CONFIG",
    ] {
        bad.discovery = vec![d.into()];
        assert!(render_user_data(&bad).is_err(), "{d}");
    }
}

/// The release's `sam-pty-hold` is installed beside sam-node with its own pinned sha256 (so
/// a cloud node's terminals outlive a restart); a wrong one fails the step and is not
/// installed; a release without one says terminals will not survive. Runs the real install
/// shell with `file://` URLs.
#[test]
fn the_releases_pty_holder_is_installed_beside_sam_node_and_checked() {
    let dir = std::env::temp_dir().join(format!(
        "sam-bootstrap-hold-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rel")).expect("dir");
    let node = dir.join("rel/sam-node");
    let hold = dir.join("rel/sam-pty-hold");
    std::fs::write(&node, b"#!/bin/sh\necho node\n").expect("node");
    std::fs::write(&hold, b"#!/bin/sh\necho hold\n").expect("hold");
    let sha = |p: &std::path::Path| {
        let out = Command::new("sha256sum")
            .arg(p)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .expect("sum")
            .to_owned()
    };
    let run = |hold_url: &str, hold_sha: &str| {
        let home = dir.join("home");
        let _ = std::fs::remove_dir_all(&home);
        let vars = format!(
            "SAM_HOME={}\nNODE_BIN={}\nNODE_URL={}\nNODE_SHA256={}\nHOLD_URL={}\nHOLD_SHA256={}\n",
            script::sh_quote(&home.display().to_string()),
            script::sh_quote(&dir.join("bin/sam-node").display().to_string()),
            script::sh_quote(&format!("file://{}", node.display())),
            sha(&node),
            script::sh_quote(hold_url),
            script::sh_quote(hold_sha),
        );
        let text = format!(
            "{}{vars}{}STEP=done\nstatus done ok\n",
            script::PRELUDE,
            script::INSTALL_NODE
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .expect("sh");
        let status =
            std::fs::read_to_string(home.join("node/bootstrap.status")).unwrap_or_default();
        (out, status)
    };
    let hold_url = format!("file://{}", hold.display());
    let (out, status) = run(&hold_url, &sha(&hold));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.starts_with("state=done"), "{status}");
    assert_eq!(
        std::fs::read(dir.join("bin/sam-pty-hold")).expect("holder installed beside sam-node"),
        std::fs::read(&hold).expect("hold")
    );

    std::fs::remove_file(dir.join("bin/sam-pty-hold")).expect("rm");
    let (out, status) = run(&hold_url, &"0".repeat(64));
    assert!(!out.status.success());
    assert!(
        status.contains("step=sam-node") && status.contains("sam-pty-hold checksum mismatch"),
        "{status}"
    );
    assert!(
        !dir.join("bin/sam-pty-hold").exists(),
        "a wrong holder was installed"
    );

    let (out, _) = run("", "");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("terminals will not outlive a node restart")
    );
    // rendering checks the holder's pin like sam-node's
    let mut s = spec();
    s.release.pty_hold = Some(Artifact {
        url: "https://releases.example/sam-pty-hold".into(),
        sha256: "xyz".into(),
    });
    assert!(matches!(
        render_user_data(&s),
        Err(BootstrapError::BadSha256(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
