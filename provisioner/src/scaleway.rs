//! Scaleway Instance API v1 (zone-scoped servers, `key=value` tags) with the image resolved
//! through the Marketplace API v2.

use std::collections::BTreeMap;
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::config::ScalewayConfig;
use crate::http::{Api, Auth, Body, Reply};
use crate::provider::{
    CreateSpec, Provider, ProviderError, Vm, check_user_data, labels, new_vm_labels, parse_rfc3339,
};

const NAME: &str = "Scaleway";
const MAX_PAGES: u32 = 100;
const PER_PAGE: usize = 50;

/// The Scaleway provider. Authenticates with `X-Auth-Token` (`SCW_SECRET_KEY`).
#[derive(Debug)]
pub struct Scaleway {
    api: Api,
    cfg: ScalewayConfig,
    project: String,
}

#[derive(Debug, Deserialize)]
struct ServerJson {
    id: String,
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    commercial_type: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    public_ip: Option<IpJson>,
    #[serde(default)]
    public_ips: Vec<IpJson>,
    #[serde(default)]
    creation_date: Option<String>,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    allowed_actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct IpJson {
    #[serde(default)]
    address: String,
    #[serde(default)]
    family: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ServerResponse {
    server: ServerJson,
}

#[derive(Debug, Deserialize)]
struct ListResponse {
    servers: Vec<ServerJson>,
}

#[derive(Debug, Deserialize)]
struct LocalImage {
    id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    compatible_commercial_types: Vec<String>,
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct LocalImages {
    #[serde(default)]
    local_images: Vec<LocalImage>,
}

#[derive(Debug, Deserialize)]
struct ErrorJson {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: String,
}

/// `key=value` tags to a map (tags without `=` map to an empty value).
fn tags_to_labels(tags: &[String]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect()
}

fn labels_to_tags(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl ServerJson {
    fn into_vm(self, zone: &str) -> Vm {
        let zone = if self.zone.is_empty() {
            zone.to_owned()
        } else {
            self.zone
        };
        let ipv4 = self
            .public_ips
            .iter()
            .chain(self.public_ip.as_ref())
            .filter(|ip| ip.family.as_deref() != Some("inet6"))
            .find_map(|ip| ip.address.parse().ok());
        Vm {
            id: format!("{zone}/{}", self.id),
            name: self.name,
            location: zone,
            machine_type: self.commercial_type,
            status: self.state,
            public_ipv4: ipv4,
            labels: tags_to_labels(&self.tags),
            created_unix: self.creation_date.as_deref().and_then(parse_rfc3339),
        }
    }
}

fn error_parts(reply: &Reply) -> (String, String) {
    match serde_json::from_slice::<ErrorJson>(&reply.body) {
        Ok(e) => (e.kind, e.message),
        Err(_) => {
            let text = String::from_utf8_lossy(&reply.body);
            let short: String = text.chars().take(200).collect();
            (
                String::new(),
                format!("(not a Scaleway error body) {short}"),
            )
        }
    }
}

impl Scaleway {
    /// A provider for the secret key `token` in `cfg.project_id`.
    pub fn new(token: String, cfg: ScalewayConfig) -> Result<Self, ProviderError> {
        if token.trim().is_empty() {
            return Err(ProviderError::Config(
                "no Scaleway secret key: set SCW_SECRET_KEY or add it with `sam provider add scaleway`"
                    .into(),
            ));
        }
        let project = cfg
            .project_id
            .clone()
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Config(
                    "no Scaleway project: set SCW_DEFAULT_PROJECT_ID or scaleway.project_id".into(),
                )
            })?;
        let api = Api::new(
            NAME,
            &cfg.api,
            Auth::Header("X-Auth-Token", token),
            cfg.timing.clone(),
        )?;
        Ok(Self { api, cfg, project })
    }

    pub fn config(&self) -> &ScalewayConfig {
        &self.cfg
    }

    fn error(&self, what: &str, reply: &Reply) -> ProviderError {
        self.api.error(
            what,
            reply,
            error_parts(reply),
            "quotas_exceeded",
            "SCW_SECRET_KEY, a secret key with Instances rights",
        )
    }

    fn split_id<'a>(&self, id: &'a str) -> Result<(&'a str, &'a str), ProviderError> {
        id.split_once('/')
            .filter(|(z, s)| !z.is_empty() && !s.is_empty() && !s.contains('/'))
            .ok_or_else(|| ProviderError::NotFound {
                provider: NAME,
                id: id.to_owned(),
            })
    }

    /// The local image for `commercial_type` in `zone`, if the Marketplace has one.
    async fn resolve_image(
        &self,
        zone: &str,
        commercial_type: &str,
    ) -> Result<Option<String>, ProviderError> {
        let what = format!("resolve image {} in {zone}", self.cfg.image_label);
        let reply = self
            .api
            .call(
                &what,
                Method::GET,
                "/marketplace/v2/local-images",
                &[
                    ("image_label", &self.cfg.image_label),
                    ("zone", zone),
                    ("type", &self.cfg.image_type),
                    ("arch", &self.cfg.arch),
                    ("page_size", "100"),
                ],
                Body::None,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.error(&what, &reply));
        }
        let list: LocalImages = self.api.json(&what, &reply)?;
        Ok(list
            .local_images
            .into_iter()
            .find(|i| {
                i.label == self.cfg.image_label
                    && (i.kind.is_empty() || i.kind == self.cfg.image_type)
                    && (i.compatible_commercial_types.is_empty()
                        || i.compatible_commercial_types
                            .iter()
                            .any(|t| t.eq_ignore_ascii_case(commercial_type)))
            })
            .map(|i| i.id))
    }

    async fn get_server(&self, zone: &str, id: &str) -> Result<ServerJson, ProviderError> {
        let what = "get server";
        let reply = self
            .api
            .call(
                what,
                Method::GET,
                &format!("/instance/v1/zones/{zone}/servers/{id}"),
                &[],
                Body::None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ProviderError::NotFound {
                provider: NAME,
                id: format!("{zone}/{id}"),
            });
        }
        if !reply.status.is_success() {
            return Err(self.error(what, &reply));
        }
        Ok(self.api.json::<ServerResponse>(what, &reply)?.server)
    }

    async fn action(&self, zone: &str, id: &str, action: &str) -> Result<(), ProviderError> {
        let what = format!("{action} server");
        let reply = self
            .api
            .call(
                &what,
                Method::POST,
                &format!("/instance/v1/zones/{zone}/servers/{id}/action"),
                &[],
                Body::Json(json!({ "action": action })),
            )
            .await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(self.error(&what, &reply))
        }
    }

    /// After the server exists: cloud-init, power on, wait for `running`.
    async fn boot(&self, zone: &str, id: &str, user_data: &str) -> Result<ServerJson, String> {
        let what = "set cloud-init user data";
        let reply = self
            .api
            .call(
                what,
                Method::PATCH,
                &format!("/instance/v1/zones/{zone}/servers/{id}/user_data/cloud-init"),
                &[],
                Body::Text(user_data.to_owned()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !reply.status.is_success() {
            return Err(self.error(what, &reply).to_string());
        }
        self.action(zone, id, "poweron")
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.cfg.timing.create_timeout();
        loop {
            let server = self.get_server(zone, id).await.map_err(|e| e.to_string())?;
            match server.state.as_str() {
                "running" => return Ok(server),
                "locked" => return Err(format!("server {id} is locked by Scaleway")),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "server {id} was not running within {} s (state {})",
                    self.cfg.timing.create_timeout_secs, server.state
                ));
            }
            tokio::time::sleep(self.api.timing.poll_interval()).await;
        }
    }
}

impl Provider for Scaleway {
    fn name(&self) -> &'static str {
        "scaleway"
    }

    fn relays(&self) -> Vec<String> {
        self.cfg.relays.clone()
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Vm, ProviderError> {
        check_user_data(spec)?;
        let machine_type = self.cfg.sizes.get(spec.size).to_owned();
        let zones = if spec.locations.is_empty() {
            &self.cfg.zones
        } else {
            &spec.locations
        };
        let tags = labels_to_tags(&new_vm_labels(spec.size, &spec.enrollment));
        let mut tried = Vec::new();
        for zone in zones {
            let Some(image) = self.resolve_image(zone, &machine_type).await? else {
                tracing::info!(zone, "no {} image here; next zone", self.cfg.image_label);
                tried.push(zone.clone());
                continue;
            };
            let what = format!("create server in {zone}");
            let body = json!({
                "name": spec.name,
                "commercial_type": machine_type,
                "image": image,
                "project": self.project,
                "tags": tags,
                "dynamic_ip_required": true,
            });
            let reply = self
                .api
                .call(
                    &what,
                    Method::POST,
                    &format!("/instance/v1/zones/{zone}/servers"),
                    &[],
                    Body::Json(body),
                )
                .await?;
            if !reply.status.is_success() {
                let (code, _) = error_parts(&reply);
                if reply.status == StatusCode::PRECONDITION_FAILED || code == "out_of_stock" {
                    tracing::info!(zone, machine_type, "no capacity; trying the next zone");
                    tried.push(zone.clone());
                    continue;
                }
                return Err(self.error(&what, &reply));
            }
            let created: ServerResponse = self.api.json(&what, &reply)?;
            let id = created.server.id;
            return match self.boot(zone, &id, &spec.user_data).await {
                Ok(server) => Ok(server.into_vm(zone)),
                Err(reason) => {
                    let full = format!("{zone}/{id}");
                    let cleanup = match self.delete(&full).await {
                        Ok(()) => format!("; server {full} was deleted"),
                        Err(e) => {
                            format!("; deleting server {full} failed too ({e}): delete it by hand")
                        }
                    };
                    Err(ProviderError::CreateFailed {
                        provider: NAME,
                        name: spec.name.clone(),
                        reason,
                        cleanup,
                    })
                }
            };
        }
        Err(ProviderError::NoCapacity {
            provider: NAME,
            machine_type,
            tried,
        })
    }

    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        let what = "list servers";
        let tag = format!("{}=1", labels::SAM);
        let mut out = Vec::new();
        for zone in &self.cfg.zones {
            for page in 1..=MAX_PAGES {
                let page_s = page.to_string();
                let per_page = PER_PAGE.to_string();
                let reply = self
                    .api
                    .call(
                        what,
                        Method::GET,
                        &format!("/instance/v1/zones/{zone}/servers"),
                        &[
                            ("tags", &tag),
                            ("project", &self.project),
                            ("page", &page_s),
                            ("per_page", &per_page),
                        ],
                        Body::None,
                    )
                    .await?;
                if !reply.status.is_success() {
                    return Err(self.error(what, &reply));
                }
                let list: ListResponse = self.api.json(what, &reply)?;
                let n = list.servers.len();
                out.extend(list.servers.into_iter().map(|s| s.into_vm(zone)));
                if n < PER_PAGE {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let (zone, sid) = self.split_id(id)?;
        let server = match self.get_server(zone, sid).await {
            Ok(s) => s,
            Err(ProviderError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if server.allowed_actions.iter().any(|a| a == "terminate") {
            // terminate removes the server and its local volumes
            return match self.action(zone, sid, "terminate").await {
                Err(ProviderError::Api { status: 404, .. }) => Ok(()),
                other => other,
            };
        }
        let what = "delete server";
        let reply = self
            .api
            .call(
                what,
                Method::DELETE,
                &format!("/instance/v1/zones/{zone}/servers/{sid}"),
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
        let (zone, sid) = self.split_id(id)?;
        let current = self.get_server(zone, sid).await?;
        let mut merged: BTreeMap<String, String> = tags_to_labels(&current.tags)
            .into_iter()
            .filter(|(k, _)| k != labels::SAM && !k.starts_with("sam-"))
            .collect();
        merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        let what = "update server tags";
        let reply = self
            .api
            .call(
                what,
                Method::PATCH,
                &format!("/instance/v1/zones/{zone}/servers/{sid}"),
                &[],
                Body::Json(json!({ "tags": labels_to_tags(&merged) })),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.error(what, &reply));
        }
        Ok(self
            .api
            .json::<ServerResponse>(what, &reply)?
            .server
            .into_vm(zone))
    }
}
