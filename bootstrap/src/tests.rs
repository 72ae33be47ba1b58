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
    assert!(text.contains("sha256sum \"$tmp\""));
    assert!(text.contains("if [ \"$got\" != \"$NODE_SHA256\" ]"));
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
    spec.relay = Some("https://relay.example/".into());
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
    let text = render_user_data(&spec).expect("render");
    assert!(text.contains("advertise = [\"1.2.3.4:7447\"]"));
    assert!(!text.contains("PUBLIC_IP"));
    assert!(!text.contains("docker.io"));
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
    assert!(text.contains("sam-node not started\"\n    exit 1"));
    let block = text.find("SAM_METADATA_BLOCK\n").expect("block");
    let start = text.find("nohup \"$NODE_BIN\" run").expect("start");
    assert!(block < start, "the rules come before the node starts");
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
    assert!(text.contains("relay = \"n0\""), "{text}");
    let mut own = spec();
    own.relay = Some("https://relay.example.org/".into());
    let text = render_user_data(&own).expect("render");
    assert!(text.contains("relay = \"https://relay.example.org/\""));
    let mut none = spec();
    none.relay = None;
    assert!(!render_user_data(&none).expect("render").contains("relay ="));
    let mut bad = spec();
    for r in ["relay.example.org; rm -rf /", "file:///etc/passwd"] {
        bad.relay = Some(r.into());
        assert!(render_user_data(&bad).is_err(), "{r}");
    }
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
