//! A stateful fake of the Scaleway Instance API v1 and Marketplace API v2, validated against
//! `specs/scaleway-instance-v1.openapi.yml` and `specs/scaleway-marketplace-v2.openapi.yml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::openapi::{Matched, Spec};
use crate::server::{FakeApi, FakeServer, Request, Response};

pub const TOKEN: &str = "scw-test-secret";
pub const PROJECT: &str = "11111111-2222-4333-8444-555555555555";
const NOW: &str = "2025-01-30T23:55:00+00:00";

fn load(name: &str) -> Spec {
    Spec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("specs")
            .join(name),
    )
}

pub fn instance_spec() -> &'static Spec {
    static S: OnceLock<Spec> = OnceLock::new();
    S.get_or_init(|| load("scaleway-instance-v1.openapi.yml"))
}

pub fn marketplace_spec() -> &'static Spec {
    static S: OnceLock<Spec> = OnceLock::new();
    S.get_or_init(|| load("scaleway-marketplace-v2.openapi.yml"))
}

#[derive(Default)]
pub struct Inject {
    /// Zones out of stock (`412 out_of_stock`).
    pub out_of_stock: BTreeSet<String>,
    /// `403 quotas_exceeded` on create.
    pub quota_exceeded: bool,
    /// Answer the next N requests `429` with `Retry-After: 1`.
    pub rate_limit: u32,
    /// Answer this operationId once with a body that is not JSON.
    pub malformed: Option<&'static str>,
    /// `poweron` fails (`400`).
    pub fail_poweron: bool,
    /// The server never leaves `starting`.
    pub stuck_starting: bool,
}

#[derive(Default)]
pub struct State {
    next: u64,
    /// id -> server json
    pub servers: BTreeMap<String, Value>,
    pub user_data: BTreeMap<String, String>,
    pub inject: Inject,
}

pub struct ScalewayFake {
    pub state: Mutex<State>,
}

pub async fn start() -> (Arc<ScalewayFake>, FakeServer) {
    let fake = Arc::new(ScalewayFake {
        state: Mutex::new(State::default()),
    });
    let server = FakeServer::start(fake.clone(), "").await;
    (fake, server)
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    Response::json(status, json!({"type": kind, "message": message}))
}

fn allowed(state: &str) -> Value {
    match state {
        "running" => json!(["poweroff", "terminate", "reboot", "stop_in_place", "backup"]),
        "starting" => json!(["poweroff", "terminate"]),
        _ => json!(["poweron", "backup"]),
    }
}

impl ScalewayFake {
    pub fn server_count(&self) -> usize {
        self.state.lock().expect("state").servers.len()
    }

    pub fn inject(&self, f: impl FnOnce(&mut Inject)) {
        f(&mut self.state.lock().expect("state").inject);
    }

    fn uuid(st: &mut State) -> String {
        st.next += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", st.next, st.next)
    }

    fn create(&self, st: &mut State, zone: &str, req: &Request) -> Response {
        let body = req.json();
        if st.inject.quota_exceeded {
            return error(403, "quotas_exceeded", "Quota exceeded for this resource");
        }
        if st.inject.out_of_stock.contains(zone) {
            return error(412, "out_of_stock", &format!("{zone} is out of stock"));
        }
        if body["project"] != PROJECT {
            return error(403, "permission_denied", "unknown project");
        }
        let id = Self::uuid(st);
        let server = json!({
            "id": id, "name": body["name"], "organization": PROJECT, "project": PROJECT,
            "allowed_actions": allowed("stopped"), "tags": body["tags"],
            "commercial_type": body["commercial_type"], "creation_date": NOW,
            "dynamic_ip_required": true, "routed_ip_enabled": true, "enable_ipv6": false,
            "hostname": body["name"],
            "image": {"id": body["image"], "name": "Debian Trixie", "arch": "x86_64",
                "creation_date": NOW, "modification_date": NOW, "extra_volumes": {},
                "from_server": "", "organization": PROJECT, "public": true, "state": "available",
                "project": PROJECT, "tags": [], "zone": zone},
            "protected": false, "private_ip": null,
            "public_ips": [{"id": Self::uuid(st), "address": "198.51.100.7", "gateway": "62.210.0.1",
                "netmask": "32", "family": "inet", "dynamic": true, "provisioning_mode": "dhcp",
                "tags": [], "ipam_id": "x", "state": "attached"}],
            "mac_address": "de:00:00:00:00:01", "modification_date": NOW, "state": "stopped",
            "boot_type": "local", "volumes": {}, "maintenances": [], "state_detail": "",
            "arch": "x86_64", "private_nics": [], "zone": zone,
            "admin_password_encryption_ssh_key_id": null, "admin_password_encrypted_value": null,
            "filesystems": [], "end_of_service": false
        });
        st.servers.insert(id, server.clone());
        Response::json(201, json!({"server": server}))
    }

    fn action(&self, st: &mut State, id: &str, zone: &str, req: &Request) -> Response {
        let action = req.json()["action"]
            .as_str()
            .unwrap_or("poweron")
            .to_owned();
        let Some(server) = st.servers.get(id).cloned() else {
            return error(404, "unknown_resource", "server not found");
        };
        let ok = server["allowed_actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == action.as_str()));
        if !ok {
            return error(
                400,
                "invalid_request_error",
                &format!("{action} not allowed now"),
            );
        }
        match action.as_str() {
            "poweron" if st.inject.fail_poweron => {
                return error(400, "invalid_request_error", "poweron failed: host error");
            }
            "poweron" => {
                let s = st.servers.get_mut(id).expect("exists");
                s["state"] = json!("starting");
                s["allowed_actions"] = allowed("starting");
            }
            "terminate" => {
                st.servers.remove(id);
                st.user_data.remove(id);
            }
            _ => {}
        }
        let task = json!({"id": Self::uuid(st), "description": format!("server_{action}"),
            "progress": 0, "started_at": NOW, "terminated_at": null, "status": "pending",
            "href_from": format!("/servers/{id}/action"), "href_result": format!("/servers/{id}"),
            "zone": zone});
        Response::json(200, json!({"task": task}))
    }
}

impl FakeApi for ScalewayFake {
    fn spec(&self, path: &str) -> &Spec {
        if path.starts_with("/marketplace/") {
            marketplace_spec()
        } else {
            instance_spec()
        }
    }

    /// `image_label` is documented for ListLocalImages ("specified by its image_id, version_id
    /// or image_label") but the published spec drops these one-of query parameters.
    fn extra_query(&self, path: &str) -> &'static [&'static str] {
        if path == "/marketplace/v2/local-images" {
            &["image_label"]
        } else {
            &[]
        }
    }

    /// Scaleway's specs declare no error responses; Scaleway documents errors as JSON with a
    /// `type` and a `message`.
    fn undeclared_error_schema(&self) -> Option<Value> {
        Some(json!({"type": "object", "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}))
    }

    fn bad_request(&self, errors: &[String]) -> Response {
        error(400, "invalid_request_error", &errors.join("; "))
    }

    fn handle(&self, req: &Request, op: &Matched) -> Response {
        let mut st = self.state.lock().expect("state");
        if req.header("x-auth-token") != Some(TOKEN) {
            return error(401, "denied_authentication", "invalid token");
        }
        if st.inject.rate_limit > 0 {
            st.inject.rate_limit -= 1;
            return error(429, "too_many_requests", "slow down").header("Retry-After", 1);
        }
        if st.inject.malformed == Some(op.operation_id.as_str()) {
            st.inject.malformed = None;
            return Response::malformed(200);
        }
        let zone = op.path_params.get("zone").cloned().unwrap_or_default();
        let id = op.path_params.get("server_id").cloned().unwrap_or_default();
        match op.operation_id.as_str() {
            "ListLocalImages" => {
                let z = req.query("zone").unwrap_or("");
                let label = req.query("image_label").unwrap_or("");
                let images: Vec<Value> = if label == "debian_trixie" {
                    vec![
                        json!({"id": format!("img-{z}"), "compatible_commercial_types":
                        ["DEV1-M", "DEV1-XL", "GP1-S"], "arch": "x86_64", "zone": z,
                        "label": label, "type": "instance_sbs"}),
                    ]
                } else {
                    vec![]
                };
                let n = images.len();
                Response::json(200, json!({"local_images": images, "total_count": n}))
            }
            "CreateServer" => self.create(&mut st, &zone, req),
            "ListServers" => {
                let want: Vec<&str> = req
                    .query("tags")
                    .unwrap_or("")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .collect();
                let servers: Vec<Value> = st
                    .servers
                    .values()
                    .filter(|s| s["zone"] == zone.as_str())
                    .filter(|s| {
                        want.iter().all(|t| {
                            s["tags"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|x| x == t))
                        })
                    })
                    .cloned()
                    .collect();
                Response::json(200, json!({"servers": servers}))
            }
            "GetServer" => {
                let stuck = st.inject.stuck_starting;
                match st.servers.get_mut(&id) {
                    Some(s) => {
                        if s["state"] == "starting" && !stuck {
                            s["state"] = json!("running");
                            s["allowed_actions"] = allowed("running");
                        }
                        Response::json(200, json!({"server": s}))
                    }
                    None => error(404, "unknown_resource", "server not found"),
                }
            }
            "UpdateServer" => {
                let tags = req.json()["tags"].clone();
                match st.servers.get_mut(&id) {
                    Some(s) => {
                        if tags.is_array() {
                            s["tags"] = tags;
                        }
                        Response::json(200, json!({"server": s}))
                    }
                    None => error(404, "unknown_resource", "server not found"),
                }
            }
            "DeleteServer" => match st.servers.get(&id) {
                Some(s) if s["state"] == "stopped" => {
                    st.servers.remove(&id);
                    Response::empty(204)
                }
                Some(_) => error(400, "invalid_request_error", "server must be stopped"),
                None => error(404, "unknown_resource", "server not found"),
            },
            "ServerAction" => self.action(&mut st, &id, &zone, req),
            "SetServerUserData" => {
                if op.path_params.get("key").map(String::as_str) != Some("cloud-init") {
                    return error(400, "invalid_request_error", "unexpected key");
                }
                if req.header("content-type") != Some("text/plain") {
                    return error(400, "invalid_request_error", "user data must be text/plain");
                }
                if !st.servers.contains_key(&id) {
                    return error(404, "unknown_resource", "server not found");
                }
                let text = String::from_utf8_lossy(&req.body).into_owned();
                st.user_data.insert(id, text);
                Response::empty(204)
            }
            other => error(
                400,
                "invalid_request_error",
                &format!("fake does not do {other}"),
            ),
        }
    }
}
