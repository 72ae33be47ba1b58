//! A stateful fake of the GitHub REST API on 127.0.0.1: repositories and pull requests.
//! Every request and every response is validated against `github-rest.openapi.json`
//! (violations are recorded; `assert_clean` fails the test). Failures can be injected.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[path = "../../../provisioner/tests/clouds/openapi.rs"]
pub mod openapi;

pub fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../provisioner/specs/github-rest.openapi.json")
}

/// One pull request the fake holds.
#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
}

#[derive(Default)]
pub struct State {
    pub repos: BTreeMap<String, Vec<String>>, // "owner/repo" → branches
    pub pulls: BTreeMap<String, Vec<Pull>>,
    /// (method, path prefix) → status to answer once matched (stays until cleared).
    pub inject: Vec<(String, String, u16)>,
    pub violations: Vec<String>,
    pub calls: Vec<String>,
    pub auth_headers: Vec<String>,
}

pub struct FakeGitHub {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeGitHub {
    pub async fn start(token: &str) -> Self {
        let spec = Arc::new(openapi::Spec::load(&spec_path()));
        let text = std::fs::read_to_string(spec_path()).expect("read the GitHub spec");
        let doc: Arc<Value> = Arc::new(serde_json::from_str(&text).expect("spec JSON"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let token = token.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, spec, token, doc) = (st.clone(), spec.clone(), token.clone(), doc.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, spec, token, doc) =
                            (st.clone(), spec.clone(), token.clone(), doc.clone());
                        async move {
                            Ok::<_, Infallible>(serve(req, &st, &spec, &doc, &token, addr).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn add_repo(&self, full: &str) {
        self.lock().repos.insert(full.into(), vec!["main".into()]);
    }

    pub fn inject(&self, method: &str, prefix: &str, status: u16) {
        self.lock()
            .inject
            .push((method.into(), prefix.into(), status));
    }

    pub fn pulls(&self, full: &str) -> Vec<Pull> {
        self.lock().pulls.get(full).cloned().unwrap_or_default()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn assert_clean(&self) {
        let s = self.lock();
        assert!(
            s.violations.is_empty(),
            "spec violations: {:#?}",
            s.violations
        );
    }
}

/// A minimal value valid against `schema` (required properties only; nullable → null).
pub fn example(doc: &Value, schema: &Value, depth: usize) -> Value {
    if depth > 40 {
        return Value::Null;
    }
    if let Some(r) = schema["$ref"].as_str() {
        let target = r
            .trim_start_matches('#')
            .split('/')
            .skip(1)
            .fold(doc, |v, k| &v[k.replace("~1", "/").replace("~0", "~")]);
        return example(doc, target, depth + 1);
    }
    if schema["nullable"] == json!(true) {
        return Value::Null;
    }
    if let Some(all) = schema["allOf"].as_array() {
        let mut out = serde_json::Map::new();
        for s in all {
            if let Value::Object(o) = example(doc, s, depth + 1) {
                out.extend(o);
            }
        }
        return Value::Object(out);
    }
    for k in ["oneOf", "anyOf"] {
        if let Some(first) = schema[k].as_array().and_then(|a| a.first()) {
            return example(doc, first, depth + 1);
        }
    }
    if let Some(e) = schema["enum"].as_array().and_then(|a| a.first()) {
        return e.clone();
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(a) => {
            if a.iter().any(|t| t == "null") {
                return Value::Null;
            }
            a.first()
                .and_then(|t| t.as_str())
                .unwrap_or("object")
                .to_string()
        }
        _ if schema.get("properties").is_some() => "object".into(),
        _ => return Value::Null,
    };
    match ty.as_str() {
        "object" => {
            let mut out = serde_json::Map::new();
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(k) = r.as_str() {
                    out.insert(k.into(), example(doc, &schema["properties"][k], depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => json!([]),
        "integer" | "number" => json!(1),
        "boolean" => json!(false),
        _ => match schema["format"].as_str() {
            Some("date-time") => json!("2020-01-01T00:00:00Z"),
            Some("uri") => json!("https://example.invalid/x"),
            Some("email") => json!("a@example.invalid"),
            _ => json!("x"),
        },
    }
}

fn schema_of(doc: &Value, template: &str, method: &str, status: &str) -> Value {
    doc["paths"][template][method]["responses"][status]["content"]["application/json"]["schema"]
        .clone()
}

fn reply(status: u16, body: Value) -> (u16, Value) {
    (status, body)
}

fn error(status: u16, message: &str) -> (u16, Value) {
    reply(
        status,
        json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }),
    )
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    st: &Mutex<State>,
    spec: &openapi::Spec,
    doc: &Value,
    token: &str,
    addr: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_ascii_lowercase();
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
    s.calls.push(format!("{} {path}", method.to_uppercase()));
    s.auth_headers.push(auth.clone());
    let matched = match spec.check_request(&method, &path, &query, ctype.as_deref(), &body, &[]) {
        Ok(m) => m,
        Err(v) => {
            s.violations.extend(v);
            return respond(422, &json!({"message": "request does not match the spec"}));
        }
    };
    let full = format!(
        "{}/{}",
        matched
            .path_params
            .get("owner")
            .cloned()
            .unwrap_or_default(),
        matched.path_params.get("repo").cloned().unwrap_or_default()
    );
    let injected = s
        .inject
        .iter()
        .find(|(m, p, _)| *m == method && path.starts_with(p.as_str()))
        .map(|x| x.2);
    let (status, value) = if auth != format!("Bearer {token}") {
        error(401, "Bad credentials")
    } else if let Some(code) = injected {
        match code {
            422 => error(422, "Validation Failed"),
            c => error(c, "Injected failure"),
        }
    } else if !s.repos.contains_key(&full) {
        error(404, "Not Found")
    } else {
        match (method.as_str(), matched.template.as_str()) {
            ("get", "/repos/{owner}/{repo}") => {
                let mut v = example(doc, &schema_of(doc, &matched.template, "get", "200"), 0);
                v["full_name"] = json!(full);
                v["name"] = json!(matched.path_params.get("repo"));
                reply(200, v)
            }
            ("get", "/repos/{owner}/{repo}/pulls") => {
                let head = query
                    .iter()
                    .find(|(k, _)| k == "head")
                    .map(|(_, v)| v.clone());
                let owner = full.split('/').next().unwrap_or("").to_string();
                let list: Vec<Value> = s
                    .pulls
                    .get(&full)
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        head.as_ref()
                            .is_none_or(|h| *h == format!("{owner}:{}", p.head))
                    })
                    .map(|p| pull_json(doc, &matched.template, "get", "200", p, &full, addr))
                    .collect();
                reply(200, Value::Array(list))
            }
            ("post", "/repos/{owner}/{repo}/pulls") => {
                let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let head = b["head"].as_str().unwrap_or("").to_string();
                let pulls = s.pulls.entry(full.clone()).or_default();
                if pulls.iter().any(|p| p.head == head) {
                    error(422, "Validation Failed")
                } else {
                    let p = Pull {
                        number: pulls.len() as u64 + 1,
                        title: b["title"].as_str().unwrap_or("").into(),
                        head,
                        base: b["base"].as_str().unwrap_or("").into(),
                        body: b["body"].as_str().unwrap_or("").into(),
                    };
                    pulls.push(p.clone());
                    reply(
                        201,
                        pull_json(doc, &matched.template, "post", "201", &p, &full, addr),
                    )
                }
            }
            _ => error(404, "Not Found"),
        }
    };
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    match spec.check_response(&matched, status, Some("application/json"), &bytes) {
        Ok(v) => s.violations.extend(v),
        // GitHub answers 401 on every endpoint; the spec subset does not list it.
        Err(()) if status == 401 => {}
        Err(()) => s
            .violations
            .push(format!("{method} {path}: status {status} not in the spec")),
    }
    respond(status, &value)
}

fn pull_json(
    doc: &Value,
    template: &str,
    method: &str,
    status: &str,
    p: &Pull,
    full: &str,
    addr: std::net::SocketAddr,
) -> Value {
    let mut schema = schema_of(doc, template, method, status);
    if schema["type"] == "array" {
        schema = schema["items"].clone();
    }
    let mut v = example(doc, &schema, 0);
    v["number"] = json!(p.number);
    v["title"] = json!(p.title);
    v["state"] = json!("open");
    v["html_url"] = json!(format!("http://{addr}/{full}/pull/{}", p.number));
    if v["head"].is_object() {
        v["head"]["ref"] = json!(p.head);
        v["base"]["ref"] = json!(p.base);
    }
    v
}

fn respond(status: u16, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
