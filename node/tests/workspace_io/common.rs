//! A throwaway container for one test, through the docker CLI.

use std::process::Command;

/// Panics with the fix when dockerd does not answer.
pub fn docker_ready() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need a running dockerd (scripts/lib.sh ensure_docker, or `dockerd &`)"
    );
}

fn image_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The image tests run in.
pub fn test_image() -> String {
    if let Ok(i) = std::env::var("SAM_TEST_IMAGE")
        && !i.is_empty()
    {
        return i;
    }
    for i in ["sam-test-mini", "sam-base:1"] {
        if image_exists(i) {
            return i.into();
        }
    }
    panic!(
        "no test image: build sam-base (bootstrap/images) or `mmdebstrap --variant=apt --include=bash,procps,python3,git trixie - | docker import - sam-test-mini`"
    )
}

/// A running container with a git repo at /workspaces/repo; removed on drop.
pub struct Container {
    pub id: String,
}

impl Container {
    pub fn start() -> Self {
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--label",
                "sam.test=1",
                &test_image(),
                "sleep",
                "infinity",
            ])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Self {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        c.sh(r#"set -e
mkdir -p /workspaces/repo && cd /workspaces/repo
git init -q -b main . && git config user.email t@t && git config user.name t
printf 'line one\nline two\n' > a.txt
mkdir -p src/deep && printf 'fn main() {}\n' > src/main.rs && printf 'deep\n' > src/deep/x.txt
git add -A && git commit -qm init
git checkout -qb feature && printf 'feature\n' > feat.txt && git add feat.txt && git commit -qm feat
printf 'line one\nline 2 changed\n' > a.txt
printf 'other one\nline two\n' > b.txt
ln -s / escape && ln -s /etc/passwd passwd-link && ln -s src inner-link
head -c 9437184 /dev/urandom > big.bin"#);
        c
    }

    /// Runs a shell script, panicking on failure; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.id, "sh", "-c", script])
            .output()
            .expect("docker exec");
        assert!(
            out.status.success(),
            "in container: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn exec_detached(&self, script: &str) {
        let ok = Command::new("docker")
            .args(["exec", "-d", &self.id, "sh", "-c", script])
            .status()
            .expect("docker exec -d");
        assert!(ok.success());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}
