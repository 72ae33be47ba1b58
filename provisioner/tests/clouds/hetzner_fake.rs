//! A stateful fake of the Hetzner Cloud API (servers, actions), validated against
//! `specs/hetzner-cloud.openapi.json`, with injectable failures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::openapi::{Matched, Spec};
use crate::server::{FakeApi, FakeServer, Request, Response, parse_selector};

pub const TOKEN: &str = "hz-test-token";
const NOW: &str = "2025-01-30T23:55:00Z";

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/hetzner-cloud.openapi.json"))
    })
}

/// Failures to inject.
#[derive(Default)]
pub struct Inject {
    /// Locations with no capacity (412 `resource_unavailable`).
    pub no_capacity: BTreeSet<String>,
    /// `403 resource_limit_exceeded` on create.
    pub quota_exceeded: bool,
    /// Rate-limit the next N requests: `429` until the window (1 s) has passed.
    pub rate_limit: u32,
    /// Answer this operationId once with a body that is not JSON.
    pub malformed: Option<&'static str>,
    /// The create action ends in `error`.
    pub fail_create_action: bool,
    /// Another acquirer's claim lands right after each claim written (`sam-claim` = this).
    pub competing_claim: Option<String>,
}

#[derive(Default)]
pub struct State {
    next_id: u64,
    pub servers: BTreeMap<u64, Value>,
    /// action id -> (action json, polls left while running, fails)
    actions: BTreeMap<u64, (Value, u32, bool)>,
    pub inject: Inject,
    blocked_until: Option<Instant>,
}

pub struct HetznerFake {
    pub state: Mutex<State>,
}

pub async fn start() -> (Arc<HetznerFake>, FakeServer) {
    let fake = Arc::new(HetznerFake {
        state: Mutex::new(State {
            next_id: 100,
            ..State::default()
        }),
    });
    let server = FakeServer::start(fake.clone(), "/v1").await;
    (fake, server)
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        json!({"error": {"code": code, "message": message, "details": null}}),
    )
}

fn location(name: &str) -> Value {
    json!({"id": 1, "name": name, "description": format!("DC {name}"), "country": "DE",
        "city": "Falkenstein", "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"})
}

fn server_type(name: &str) -> Value {
    json!({"id": 22, "name": name, "description": name, "cores": 2, "memory": 4.0, "disk": 40,
        "deprecated": false, "prices": [], "storage_type": "local", "cpu_type": "shared",
        "architecture": "x86", "deprecation": null, "locations": []})
}

fn action(id: u64, command: &str, status: &str, server: u64, err: Option<(&str, &str)>) -> Value {
    json!({"id": id, "command": command, "status": status, "progress": if status == "running" {50} else {100},
        "started": NOW, "finished": if status == "running" { Value::Null } else { json!(NOW) },
        "resources": [{"id": server, "type": "server"}],
        "error": err.map(|(c, m)| json!({"code": c, "message": m}))})
}

/// Hetzner's documented label rules: keys and values up to 63 chars of `[a-zA-Z0-9._-]`
/// (keys may have a `prefix/`), starting and ending alphanumeric (values may be empty).
fn label_ok(k: &str, v: &str) -> bool {
    let part = |s: &str, may_be_empty: bool| {
        (may_be_empty && s.is_empty())
            || (s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
    };
    let name = k.rsplit('/').next().unwrap_or(k);
    part(name, false) && part(v, true)
}

impl HetznerFake {
    pub fn server_count(&self) -> usize {
        self.state.lock().expect("state").servers.len()
    }

    pub fn inject(&self, f: impl FnOnce(&mut Inject)) {
        f(&mut self.state.lock().expect("state").inject);
    }

    fn create(&self, st: &mut State, req: &Request) -> Response {
        let body = req.json();
        let loc = body["location"].as_str().unwrap_or("fsn1").to_owned();
        if st.inject.quota_exceeded {
            return error(403, "resource_limit_exceeded", "server limit exceeded");
        }
        if st.inject.no_capacity.contains(&loc) {
            return error(
                412,
                "resource_unavailable",
                &format!("no capacity in {loc}"),
            );
        }
        let labels = body["labels"].as_object().cloned().unwrap_or_default();
        for (k, v) in &labels {
            if !label_ok(k, v.as_str().unwrap_or("")) {
                return error(400, "invalid_input", &format!("invalid label {k}"));
            }
        }
        let name = body["name"].as_str().unwrap_or("").to_owned();
        if st.servers.values().any(|s| s["name"] == name.as_str()) {
            return error(409, "uniqueness_error", "server name is already used");
        }
        if body["user_data"]
            .as_str()
            .is_some_and(|u| u.len() > 32 * 1024)
        {
            return error(400, "invalid_input", "user_data is over 32 KiB");
        }
        st.next_id += 1;
        let id = st.next_id;
        let server = json!({
            "id": id, "name": name, "status": "initializing", "created": NOW,
            "public_net": {
                "ipv4": {"id": id, "ip": format!("192.0.2.{}", id % 250), "blocked": false, "dns_ptr": "static.example"},
                "ipv6": null, "floating_ips": [], "firewalls": []
            },
            "private_net": [],
            "server_type": server_type(body["server_type"].as_str().unwrap_or("")),
            "datacenter": {"id": 1, "name": format!("{loc}-dc1"), "description": loc,
                "location": location(&loc),
                "server_types": {"supported": [], "available": [], "available_for_migration": []}},
            "location": location(&loc),
            "image": {"id": 1, "type": "system", "status": "available", "name": body["image"],
                "description": "Debian", "image_size": null, "disk_size": 5, "created": NOW,
                "created_from": null, "bound_to": null, "os_flavor": "debian", "os_version": "13",
                "rapid_deploy": true, "protection": {"delete": false}, "deprecated": null,
                "deleted": null, "labels": {}, "architecture": "x86"},
            "iso": null, "rescue_enabled": false, "locked": false, "backup_window": null,
            "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21990232555520u64,
            "protection": {"delete": false, "rebuild": false},
            "labels": labels, "volumes": [], "load_balancers": [], "primary_disk_size": 40,
            "placement_group": null
        });
        st.next_id += 1;
        let aid = st.next_id;
        let fails = st.inject.fail_create_action;
        let a = action(aid, "create_server", "running", id, None);
        st.actions.insert(aid, (a.clone(), 1, fails));
        st.servers.insert(id, server.clone());
        Response::json(
            201,
            json!({"server": server, "action": a, "next_actions": [], "root_password": null}),
        )
    }

    fn poll_action(&self, st: &mut State, id: u64) -> Response {
        let Some((a, left, fails)) = st.actions.get_mut(&id) else {
            return error(404, "not_found", "action not found");
        };
        let server = a["resources"][0]["id"].as_u64().unwrap_or(0);
        let cmd = a["command"].as_str().unwrap_or("").to_owned();
        if *left > 0 {
            *left -= 1;
        } else if *fails {
            *a = action(
                id,
                &cmd,
                "error",
                server,
                Some(("server_error", "boot failed")),
            );
        } else {
            *a = action(id, &cmd, "success", server, None);
            if let Some(s) = st.servers.get_mut(&server) {
                s["status"] = json!("running");
            }
        }
        Response::json(200, json!({"action": a.clone()}))
    }
}

impl FakeApi for HetznerFake {
    fn spec(&self, _path: &str) -> &Spec {
        spec()
    }

    fn bad_request(&self, errors: &[String]) -> Response {
        error(400, "invalid_input", &errors.join("; "))
    }

    fn handle(&self, req: &Request, op: &Matched) -> Response {
        let mut st = self.state.lock().expect("state");
        if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return error(401, "unauthorized", "unable to authenticate");
        }
        if st.inject.rate_limit > 0 {
            let until = *st
                .blocked_until
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(1));
            if Instant::now() < until {
                st.inject.rate_limit -= 1;
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + 2;
                return error(429, "rate_limit_exceeded", "slow down")
                    .header("RateLimit-Limit", 3600)
                    .header("RateLimit-Remaining", 0)
                    .header("RateLimit-Reset", reset);
            }
            st.inject.rate_limit = 0;
            st.blocked_until = None;
        }
        if st.inject.malformed == Some(op.operation_id.as_str()) {
            st.inject.malformed = None;
            if op.operation_id == "create_server" {
                // the server is made, but the answer is garbage
                let _ = self.create(&mut st, req);
            }
            return Response::malformed(if op.operation_id == "create_server" {
                201
            } else {
                200
            });
        }
        let id = || {
            op.path_params
                .get("id")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match op.operation_id.as_str() {
            "create_server" => self.create(&mut st, req),
            "list_servers" => {
                let sel = parse_selector(req.query("label_selector").unwrap_or(""));
                let servers: Vec<Value> = st
                    .servers
                    .values()
                    .filter(|s| {
                        sel.iter().all(|(k, v)| match v {
                            Some(v) => s["labels"][k] == v.as_str(),
                            None => s["labels"].get(k).is_some(),
                        })
                    })
                    .cloned()
                    .collect();
                let n = servers.len();
                Response::json(
                    200,
                    json!({"servers": servers, "meta": {"pagination": {
                    "page": 1, "per_page": 50, "previous_page": null, "next_page": null,
                    "last_page": 1, "total_entries": n}}}),
                )
            }
            "get_server" => match st.servers.get(&id()) {
                Some(s) => Response::json(200, json!({"server": s})),
                None => error(404, "not_found", "server not found"),
            },
            "update_server" => {
                let body = req.json();
                let Some(labels) = body["labels"].as_object().cloned() else {
                    return error(400, "invalid_input", "labels expected");
                };
                for (k, v) in &labels {
                    if !label_ok(k, v.as_str().unwrap_or("")) {
                        return error(400, "invalid_input", &format!("invalid label {k}"));
                    }
                }
                let competing = st.inject.competing_claim.clone();
                match st.servers.get_mut(&id()) {
                    Some(s) => {
                        s["labels"] = Value::Object(labels);
                        let answer = Response::json(200, json!({"server": s}));
                        if let Some(theirs) = competing
                            && s["labels"].get("sam-claim").is_some()
                        {
                            s["labels"]["sam-claim"] = Value::String(theirs);
                        }
                        answer
                    }
                    None => error(404, "not_found", "server not found"),
                }
            }
            "delete_server" => {
                let sid = id();
                if st.servers.remove(&sid).is_none() {
                    return error(404, "not_found", "server not found");
                }
                st.next_id += 1;
                let aid = st.next_id;
                Response::json(
                    200,
                    json!({"action": action(aid, "delete_server", "success", sid, None)}),
                )
            }
            "get_action" => self.poll_action(&mut st, id()),
            other => error(400, "invalid_input", &format!("fake does not do {other}")),
        }
    }
}
