//! Keeps the crate edges of DESIGN.md true: which SAM crate may depend on which,
//! the client never on the node, and protocol/crdt on no async runtime or socket (the
//! protocol's optional `io` feature aside).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Allowed direct dependencies between SAM crates (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sam-protocol", &[]),
    ("sam-crdt", &["sam-protocol"]),
    ("sam-bootstrap", &["sam-protocol"]),
    ("sam-provisioner", &["sam-protocol", "sam-bootstrap"]),
    ("sam-node", &["sam-protocol", "sam-crdt", "sam-bootstrap"]),
    (
        "sam-client",
        &["sam-protocol", "sam-crdt", "sam-provisioner"],
    ),
];

/// Crates that mean IO: a runtime, sockets or a network stack.
const IO_CRATES: &[&str] = &[
    "tokio", "mio", "iroh", "noq", "socket2", "reqwest", "hyper", "bollard",
];

struct Graph {
    names: BTreeMap<String, String>,
    normal: BTreeMap<String, Vec<String>>,
}

fn graph() -> Graph {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let names = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_string(),
                p["name"].as_str().expect("name").to_string(),
            )
        })
        .collect();
    let mut normal = BTreeMap::new();
    for node in v["resolve"]["nodes"].as_array().expect("resolve") {
        let id = node["id"].as_str().expect("id").to_string();
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .expect("kinds")
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().expect("pkg").to_string())
            .collect();
        normal.insert(id, deps);
    }
    Graph { names, normal }
}

impl Graph {
    fn id_of(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("{name} is not in the workspace"))
    }

    fn direct(&self, name: &str) -> BTreeSet<String> {
        self.normal[&self.id_of(name)]
            .iter()
            .map(|id| self.names[id].clone())
            .collect()
    }

    fn transitive(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![self.id_of(name)];
        while let Some(id) = todo.pop() {
            for d in &self.normal[&id] {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen.into_iter().map(|id| self.names[&id].clone()).collect()
    }
}

#[test]
fn sam_crates_depend_only_as_designed() {
    let g = graph();
    for (krate, allowed) in ALLOWED {
        let sam_deps: BTreeSet<String> = g
            .direct(krate)
            .into_iter()
            .filter(|d| d.starts_with("sam-"))
            .collect();
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let extra: Vec<_> = sam_deps.difference(&allowed).collect();
        assert!(extra.is_empty(), "{krate} must not depend on {extra:?}");
    }
}

#[test]
fn client_never_reaches_the_node() {
    let g = graph();
    assert!(!g.transitive("sam-client").contains("sam-node"));
}

/// The packages `cargo build -p krate` (with `features`) would build as normal
/// dependencies: features are resolved for that package alone, not unified with the rest
/// of the workspace.
fn built_alone(krate: &str, features: &[&str]) -> BTreeSet<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "tree", "--locked", "-p", krate, "-e", "normal", "--prefix", "none",
    ])
    .args(["--format", "{p}"])
    .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for f in features {
        cmd.args(["-F", f]);
    }
    let out = cmd.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn protocol_and_crdt_do_no_io() {
    let g = graph();
    // crdt: not even through the workspace's unified features.
    let deps = g.transitive("sam-crdt");
    let io: Vec<_> = IO_CRATES.iter().filter(|c| deps.contains(**c)).collect();
    assert!(io.is_empty(), "sam-crdt pulls in IO crates {io:?}");
    // protocol: none on its own; its one async shell (`wire`) is behind the `io` feature,
    // which the node and the client turn on.
    let deps = built_alone("sam-protocol", &[]);
    let io: Vec<_> = IO_CRATES.iter().filter(|c| deps.contains(**c)).collect();
    assert!(io.is_empty(), "sam-protocol pulls in IO crates {io:?}");
    // And the checks themselves can fail: the node pulls them in, and so does `io`.
    assert!(g.transitive("sam-node").contains("tokio"));
    assert!(built_alone("sam-protocol", &["io"]).contains("tokio"));
}
