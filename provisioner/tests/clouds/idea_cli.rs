//! `sam idea --provider hetzner` through the `sam` binary against the spec-validated Hetzner
//! fake: the pool creates a server (spec-valid requests), the server never answers at its
//! ticket (the fake boots nothing), so `sam idea` fails at its node step, says so, and the
//! server is deleted: nothing leaks. Needs `cargo build --bins` (for `sam`).

use std::path::PathBuf;

use crate::hetzner_fake;

fn sam_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let p = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("sam"))
        .expect("target dir");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_idea_on_hetzner_deletes_a_node_that_never_answers() {
    let (fake, srv) = hetzner_fake::start().await;
    let tmp = std::env::temp_dir().join(format!(
        "sam-idea-hetzner-{}-{}",
        std::process::id(),
        sam_provisioner::pool::now_unix()
    ));
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::write(
        home.join("providers.toml"),
        format!(
            "[hetzner]\ntoken = \"{}\"\n\n[pool]\nready_timeout_secs = 2\n\n[release]\nurl = \"https://releases.example/sam-node\"\nsha256 = \"{}\"\n",
            hetzner_fake::TOKEN,
            "0".repeat(64)
        ),
    )
    .expect("providers.toml");
    let gitconfig = tmp.join("gitconfig");
    std::fs::write(
        &gitconfig,
        "[user]\n\tname = A\n\temail = a@example.invalid\n",
    )
    .expect("gitconfig");
    let out = tokio::process::Command::new(sam_bin())
        .env("SAM_HOME", &home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env("SAM_NO_KEYRING", "1")
        .env("SAM_HETZNER_API", &srv.base)
        .env("GH_TOKEN", "ghp_PLANTED_hetzner_idea")
        .env("GIT_CONFIG_GLOBAL", &gitconfig)
        .env_remove("HCLOUD_TOKEN")
        .env_remove("RUST_LOG")
        .args(["idea", "write a.txt x", "--repo", "https://github.com/o/r"])
        .args(["--provider", "hetzner", "--size", "medium"])
        .output()
        .await
        .expect("sam idea");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("step 'node' failed"), "{stderr}");
    assert!(
        stderr.contains("did not become reachable within 2 s") && stderr.contains("it was deleted"),
        "{stderr}"
    );
    assert!(!stderr.contains(hetzner_fake::TOKEN) && !stderr.contains("ghp_PLANTED"));
    // One server was made (the medium type), and it is gone.
    assert_eq!(srv.count("POST /servers ->"), 1, "{:?}", srv.calls());
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}
