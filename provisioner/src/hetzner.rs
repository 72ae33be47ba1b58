//! Hetzner Cloud API v1: servers with labels, actions polled until done.

use std::collections::BTreeMap;
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::config::HetznerConfig;
use crate::http::{Api, Auth, Body, Reply};
use crate::provider::{
    CreateSpec, Provider, ProviderError, Vm, check_user_data, labels, new_vm_labels, node_label,
    parse_rfc3339,
};

const NAME: &str = "Hetzner";
const MAX_PAGES: u32 = 100;

/// The Hetzner Cloud provider. Authenticates with a bearer token (`HCLOUD_TOKEN`).
#[derive(Debug)]
pub struct Hetzner {
    api: Api,
    cfg: HetznerConfig,
}

#[derive(Debug, Deserialize)]
struct ServerJson {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    public_net: Option<PublicNet>,
    #[serde(default)]
    server_type: Option<Named>,
    #[serde(default)]
    location: Option<Named>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct PublicNet {
    #[serde(default)]
    ipv4: Option<Ipv4>,
}

#[derive(Debug, Deserialize)]
struct Ipv4 {
    ip: String,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ActionJson {
    id: u64,
    status: String,
    #[serde(default)]
    error: Option<ErrorJson>,
}

#[derive(Debug, Deserialize)]
struct ErrorJson {
    code: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorJson,
}

#[derive(Debug, Deserialize)]
struct CreateResponse {
    server: ServerJson,
    action: ActionJson,
    #[serde(default)]
    next_actions: Vec<ActionJson>,
}

#[derive(Debug, Deserialize)]
struct ServerResponse {
    server: ServerJson,
}

#[derive(Debug, Deserialize)]
struct ActionResponse {
    action: ActionJson,
}

#[derive(Debug, Deserialize)]
struct ListResponse {
    servers: Vec<ServerJson>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    next_page: Option<u64>,
}

impl From<ServerJson> for Vm {
    fn from(s: ServerJson) -> Self {
        Vm {
            id: s.id.to_string(),
            name: s.name,
            location: s.location.map(|l| l.name).unwrap_or_default(),
            machine_type: s.server_type.map(|t| t.name).unwrap_or_default(),
            status: s.status,
            public_ipv4: s
                .public_net
                .and_then(|n| n.ipv4)
                .and_then(|v4| v4.ip.parse().ok()),
            labels: s.labels,
            created_unix: s.created.as_deref().and_then(parse_rfc3339),
        }
    }
}

impl Hetzner {
    /// A provider for `token` with `cfg` (its `api` may point at a proxy or a fake).
    pub fn new(token: String, cfg: HetznerConfig) -> Result<Self, ProviderError> {
        if token.trim().is_empty() {
            return Err(ProviderError::Config(
                "no Hetzner token: set HCLOUD_TOKEN or add it with `sam provider add hetzner`"
                    .into(),
            ));
        }
        let api = Api::new(NAME, &cfg.api, Auth::Bearer(token), cfg.timing.clone())?;
        Ok(Self { api, cfg })
    }

    pub fn config(&self) -> &HetznerConfig {
        &self.cfg
    }

    fn error(&self, what: &str, reply: &Reply) -> ProviderError {
        self.api.error(
            what,
            reply,
            error_parts(reply),
            "resource_limit_exceeded",
            "HCLOUD_TOKEN, a read/write API token of the project",
        )
    }

    async fn get_server(&self, id: u64) -> Result<ServerJson, ProviderError> {
        let what = "get server";
        let reply = self
            .api
            .call(
                what,
                Method::GET,
                &format!("/servers/{id}"),
                &[],
                Body::None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ProviderError::NotFound {
                provider: NAME,
                id: id.to_string(),
            });
        }
        if !reply.status.is_success() {
            return Err(self.error(what, &reply));
        }
        Ok(self.api.json::<ServerResponse>(what, &reply)?.server)
    }

    /// Waits for an action to succeed; the error says why it did not.
    async fn wait_action(&self, id: u64, deadline: Instant) -> Result<(), String> {
        let what = "poll action";
        loop {
            let reply = self
                .api
                .call(
                    what,
                    Method::GET,
                    &format!("/actions/{id}"),
                    &[],
                    Body::None,
                )
                .await
                .map_err(|e| e.to_string())?;
            if !reply.status.is_success() {
                return Err(self.error(what, &reply).to_string());
            }
            let action = self
                .api
                .json::<ActionResponse>(what, &reply)
                .map_err(|e| e.to_string())?
                .action;
            match action.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    return Err(match action.error {
                        Some(e) => format!("action {id} failed: {}: {}", e.code, e.message),
                        None => format!("action {id} failed"),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "action {id} did not finish within {} s",
                    self.cfg.timing.create_timeout_secs
                ));
            }
            tokio::time::sleep(self.api.timing.poll_interval()).await;
        }
    }

    /// After the server exists: wait for its actions and read it back; delete it on failure.
    async fn finish_create(&self, created: CreateResponse) -> Result<Vm, ProviderError> {
        let id = created.server.id;
        let deadline = Instant::now() + self.cfg.timing.create_timeout();
        let mut result = Ok(());
        for action in std::iter::once(&created.action).chain(&created.next_actions) {
            if action.status == "error" {
                result = Err(match &action.error {
                    Some(e) => format!("action {} failed: {}: {}", action.id, e.code, e.message),
                    None => format!("action {} failed", action.id),
                });
                break;
            }
            if let Err(e) = self.wait_action(action.id, deadline).await {
                result = Err(e);
                break;
            }
        }
        let server = match result {
            Ok(()) => self.get_server(id).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match server {
            Ok(server) => Ok(server.into()),
            Err(reason) => {
                let cleanup = match self.delete(&id.to_string()).await {
                    Ok(()) => format!("; server {id} was deleted"),
                    Err(e) => format!("; deleting server {id} failed too ({e}): delete it by hand"),
                };
                Err(ProviderError::CreateFailed {
                    provider: NAME,
                    name: created.server.name,
                    reason,
                    cleanup,
                })
            }
        }
    }

    /// Deletes every server labelled with this enrollment (used when a create answer was
    /// unreadable).
    async fn delete_by_enrollment(&self, enroll_label_value: &str) -> String {
        let selector = format!("{}={enroll_label_value}", labels::ENROLL);
        let what = "list servers";
        let found = match self
            .api
            .call(
                what,
                Method::GET,
                "/servers",
                &[("label_selector", &selector)],
                Body::None,
            )
            .await
        {
            Ok(r) if r.status.is_success() => self.api.json::<ListResponse>(what, &r).ok(),
            _ => None,
        };
        let Some(found) = found else {
            return "; could not check whether a server was made: run `sam-provisioner vms`".into();
        };
        let mut notes = Vec::new();
        for s in found.servers {
            match self.delete(&s.id.to_string()).await {
                Ok(()) => notes.push(format!("deleted server {}", s.id)),
                Err(e) => notes.push(format!("could not delete server {}: {e}", s.id)),
            }
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join(", "))
        }
    }
}

fn error_parts(reply: &Reply) -> (String, String) {
    match serde_json::from_slice::<ErrorEnvelope>(&reply.body) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(&reply.body);
            let short: String = text.chars().take(200).collect();
            (String::new(), format!("(not a Hetzner error body) {short}"))
        }
    }
}

impl Provider for Hetzner {
    fn name(&self) -> &'static str {
        "hetzner"
    }

    fn relays(&self) -> Vec<String> {
        self.cfg.relays.clone()
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Vm, ProviderError> {
        check_user_data(spec)?;
        let machine_type = self.cfg.sizes.get(spec.size).to_owned();
        let locations = if spec.locations.is_empty() {
            &self.cfg.locations
        } else {
            &spec.locations
        };
        let labels = new_vm_labels(spec.size, &spec.enrollment);
        let mut tried = Vec::new();
        for location in locations {
            let what = format!("create server in {location}");
            let body = json!({
                "name": spec.name,
                "server_type": machine_type,
                "image": self.cfg.image,
                "location": location,
                "user_data": spec.user_data,
                "labels": labels,
                "start_after_create": true,
            });
            let reply = self
                .api
                .call(&what, Method::POST, "/servers", &[], Body::Json(body))
                .await?;
            if reply.status.is_success() {
                return match self.api.json::<CreateResponse>(&what, &reply) {
                    Ok(created) => self.finish_create(created).await,
                    Err(e) => {
                        let cleanup = self
                            .delete_by_enrollment(&node_label(&spec.enrollment))
                            .await;
                        Err(ProviderError::CreateFailed {
                            provider: NAME,
                            name: spec.name.clone(),
                            reason: e.to_string(),
                            cleanup,
                        })
                    }
                };
            }
            let (code, _) = error_parts(&reply);
            if reply.status == StatusCode::PRECONDITION_FAILED || code == "resource_unavailable" {
                tracing::info!(
                    location,
                    machine_type,
                    "no capacity; trying the next location"
                );
                tried.push(location.clone());
                continue;
            }
            return Err(self.error(&what, &reply));
        }
        Err(ProviderError::NoCapacity {
            provider: NAME,
            machine_type,
            tried,
        })
    }

    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        let what = "list servers";
        let selector = format!("{}=1", labels::SAM);
        let mut out = Vec::new();
        let mut page = 1u64;
        for _ in 0..MAX_PAGES {
            let page_s = page.to_string();
            let reply = self
                .api
                .call(
                    what,
                    Method::GET,
                    "/servers",
                    &[
                        ("label_selector", &selector),
                        ("page", &page_s),
                        ("per_page", "50"),
                    ],
                    Body::None,
                )
                .await?;
            if !reply.status.is_success() {
                return Err(self.error(what, &reply));
            }
            let list: ListResponse = self.api.json(what, &reply)?;
            out.extend(list.servers.into_iter().map(Vm::from));
            match list
                .meta
                .and_then(|m| m.pagination)
                .and_then(|p| p.next_page)
            {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let id: u64 = id.parse().map_err(|_| ProviderError::NotFound {
            provider: NAME,
            id: id.to_owned(),
        })?;
        let what = "delete server";
        let reply = self
            .api
            .call(
                what,
                Method::DELETE,
                &format!("/servers/{id}"),
                &[],
                Body::None,
            )
            .await?;
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.error(what, &reply))
        }
    }

    async fn set_labels(
        &self,
        id: &str,
        new: &BTreeMap<String, String>,
    ) -> Result<Vm, ProviderError> {
        let num: u64 = id.parse().map_err(|_| ProviderError::NotFound {
            provider: NAME,
            id: id.to_owned(),
        })?;
        let current = self.get_server(num).await?;
        let mut merged: BTreeMap<String, String> = current
            .labels
            .into_iter()
            .filter(|(k, _)| k != labels::SAM && !k.starts_with("sam-"))
            .collect();
        merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        let what = "update server labels";
        let reply = self
            .api
            .call(
                what,
                Method::PUT,
                &format!("/servers/{num}"),
                &[],
                Body::Json(json!({ "labels": merged })),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.error(what, &reply));
        }
        Ok(self.api.json::<ServerResponse>(what, &reply)?.server.into())
    }
}
