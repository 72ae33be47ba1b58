//! Network namespaces for the reach tests (relays, discovery): three namespaces — relay or
//! server (`R`), client (`C`), node (`N`) — where `R` holds a bridge with `10.77.0.1`, and `C`
//! (`10.77.0.2`) and `N` (`10.77.0.3`) hang off it on *isolated* bridge ports (each reaches
//! `R`, not the other) until [`Lab::open_direct_route`]. Dropping the [`Lab`] kills its
//! processes and deletes the namespaces (their veths and the bridge go with them) and the
//! workspace container. Needs root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::bins::sam_bin;

/// The namespaces and processes of one run; dropping it kills the processes and deletes
/// the namespaces (their veths and the bridge go with them) and the workspace container.
pub struct Lab {
    pub r: String,
    pub c: String,
    pub n: String,
    pub procs: Vec<Child>,
    pub workspace: Option<String>,
}

impl Lab {
    /// `tag` tells this test's namespaces from another's running at the same time.
    pub fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let lab = Lab {
            r: format!("sam{tag}-r-{pid}"),
            c: format!("sam{tag}-c-{pid}"),
            n: format!("sam{tag}-n-{pid}"),
            procs: Vec::new(),
            workspace: None,
        };
        for ns in [&lab.r, &lab.c, &lab.n] {
            sh("ip", &["netns", "add", ns]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let r = lab.r.as_str();
        sh("ip", &["-n", r, "link", "add", "br0", "type", "bridge"]);
        sh(
            "ip",
            &["-n", r, "addr", "add", "10.77.0.1/24", "dev", "br0"],
        );
        sh("ip", &["-n", r, "link", "set", "br0", "up"]);
        for (port, ns, ip) in [
            ("pc", &lab.c, "10.77.0.2/24"),
            ("pn", &lab.n, "10.77.0.3/24"),
        ] {
            sh(
                "ip",
                &[
                    "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                    ns,
                ],
            );
            sh("ip", &["-n", r, "link", "set", port, "master", "br0", "up"]);
            sh(
                "bridge",
                &["-n", r, "link", "set", "dev", port, "isolated", "on"],
            );
            sh("ip", &["-n", ns, "addr", "add", ip, "dev", "eth0"]);
            sh("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    /// Opens the direct route between client and node: their bridge ports stop being
    /// isolated.
    pub fn open_direct_route(&self) {
        for port in ["pc", "pn"] {
            sh(
                "bridge",
                &["-n", &self.r, "link", "set", "dev", port, "isolated", "off"],
            );
        }
    }

    pub fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c.env_remove("RUST_LOG")
            .env_remove("SAM_BIND")
            .env_remove("SAM_RELAY")
            .env_remove("SAM_DISCOVERY");
        c
    }

    /// `sam ARGS` in the client namespace with `home`.
    pub fn sam(&self, home: &Path, args: &[&str]) -> Output {
        self.exec(&self.c, &sam_bin())
            .env("SAM_HOME", home)
            .args(args)
            .output()
            .expect("run sam")
    }

    /// Starts `program` in `ns`; returns its first stdout line.
    pub fn spawn_line(&mut self, mut cmd: Command) -> String {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        self.procs.push(child);
        line.trim().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(ws) = &self.workspace {
            let label = format!("label=sam.workspace={ws}");
            if let Ok(out) = Command::new("docker")
                .args(["ps", "-aq", "--filter", &label])
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", id]).output();
                }
            }
        }
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in [&self.r, &self.c, &self.n] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs a setup command; fails the test with its output when it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (iproute2): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server from `tools/NAME` (its own cargo workspace, e.g. `sam-relay`, `sam-dns`):
/// `SAM_<NAME>_BIN` (upper case, `-` as `_`), else the binary next to the test binaries, else
/// built now into the same target directory.
pub fn tool_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    let p = sam_bin().with_file_name(name);
    if p.is_file() {
        return p;
    }
    let target = sam_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(name)
        .join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap_or_else(|e| panic!("cargo build {name}: {e}"));
    assert!(st.success(), "cannot build tools/{name}");
    assert!(p.is_file(), "{} missing after the build", p.display());
    p
}

/// `sam --json` output as JSON.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not json ({e}): {out}"))
}
