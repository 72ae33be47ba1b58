//! A loopback HTTP server for the fakes: every request and response is checked against the
//! OpenAPI spec(s); violations are recorded and fail the test (`assert_clean`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes_shim::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::openapi::{Matched, Spec};

/// `hyper` re-exports no `Bytes`; take it from `http-body-util`'s `Full`.
mod bytes_shim {
    pub type Bytes = <http_body_util::Full<hyper::body::Bytes> as hyper::body::Body>::Data;
}

pub struct Request {
    pub method: String,
    pub query: Vec<(String, String)>,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Deliberately broken (malformed-JSON injection): not checked against the spec.
    pub unchecked: bool,
}

impl Response {
    pub fn json(status: u16, v: Value) -> Self {
        Self {
            status,
            headers: vec![],
            content_type: Some("application/json".into()),
            body: serde_json::to_vec(&v).expect("json"),
            unchecked: false,
        }
    }
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            content_type: None,
            body: vec![],
            unchecked: false,
        }
    }
    pub fn malformed(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            content_type: Some("application/json".into()),
            body: b"{\"server\": {\"id\": 12, <html>oops".to_vec(),
            unchecked: true,
        }
    }
    pub fn header(mut self, k: &str, v: impl ToString) -> Self {
        self.headers.push((k.into(), v.to_string()));
        self
    }
}

/// What a fake API implements.
pub trait FakeApi: Send + Sync + 'static {
    /// The spec that covers `path`.
    fn spec(&self, path: &str) -> &Spec;
    /// Query parameters the API documents but the spec omits, for this path.
    fn extra_query(&self, _path: &str) -> &'static [&'static str] {
        &[]
    }
    /// Schema for error statuses the spec does not declare (Scaleway's spec declares none).
    fn undeclared_error_schema(&self) -> Option<Value> {
        None
    }
    /// An error answer to a request that broke the spec.
    fn bad_request(&self, errors: &[String]) -> Response;
    fn handle(&self, req: &Request, op: &Matched) -> Response;
}

#[derive(Default)]
pub struct Log {
    pub violations: Vec<String>,
    /// `METHOD path -> status`
    pub calls: Vec<String>,
}

pub struct FakeServer {
    pub base: String,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(api: Arc<dyn FakeApi>, prefix: &str) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let log2 = log.clone();
        let base = format!("http://{addr}{prefix}");
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = api.clone();
                let log = log2.clone();
                let prefix = prefix.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let api = api.clone();
                        let log = log.clone();
                        let prefix = prefix.clone();
                        async move { Ok::<_, Infallible>(serve(&*api, &log, &prefix, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeServer { base, log, task }
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.lock().expect("log").calls.clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.calls().iter().filter(|c| c.contains(needle)).count()
    }

    /// Fails the test when any request or response broke the spec.
    pub fn assert_clean(&self) {
        let log = self.log.lock().expect("log");
        assert!(
            log.violations.is_empty(),
            "spec violations:\n{}",
            log.violations.join("\n")
        );
    }
}

async fn serve(
    api: &dyn FakeApi,
    log: &Mutex<Log>,
    prefix: &str,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let full_path = parts.uri.path().to_owned();
    let path = full_path
        .strip_prefix(prefix)
        .unwrap_or(&full_path)
        .to_owned();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let request = Request {
        method: parts.method.as_str().to_owned(),
        query,
        headers: parts.headers,
        body,
    };
    let spec = api.spec(&path);
    let content_type = request.header("content-type").map(str::to_owned);
    let checked = spec.check_request(
        &request.method,
        &path,
        &request.query,
        content_type.as_deref(),
        &request.body,
        api.extra_query(&path),
    );
    let resp = match &checked {
        Err(errs) => {
            log.lock().expect("log").violations.extend(errs.clone());
            api.bad_request(errs)
        }
        Ok(m) => {
            let resp = api.handle(&request, m);
            if !resp.unchecked {
                let errs = match spec.check_response(
                    m,
                    resp.status,
                    resp.content_type.as_deref(),
                    &resp.body,
                ) {
                    Ok(errs) => errs,
                    Err(()) => match api.undeclared_error_schema() {
                        Some(schema) if resp.status >= 400 => {
                            match serde_json::from_slice::<Value>(&resp.body) {
                                Ok(v) => spec.validate(&v, &schema),
                                Err(e) => vec![format!("error body is not JSON: {e}")],
                            }
                        }
                        _ => vec![format!(
                            "{} {} -> {}: status not declared by the spec",
                            m.method, m.template, resp.status
                        )],
                    },
                };
                log.lock().expect("log").violations.extend(errs);
            }
            resp
        }
    };
    log.lock()
        .expect("log")
        .calls
        .push(format!("{} {} -> {}", request.method, path, resp.status));
    let mut builder = hyper::Response::builder().status(resp.status);
    if let Some(ct) = &resp.content_type {
        builder = builder.header("content-type", ct);
    }
    for (k, v) in &resp.headers {
        builder = builder.header(k, v);
    }
    builder
        .body(Full::new(Bytes::from(resp.body)))
        .expect("response")
}

/// Parses a `k=v,k2` selector into pairs (value `None` = key must exist).
pub fn parse_selector(s: &str) -> BTreeMap<String, Option<String>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (p.to_owned(), None),
        })
        .collect()
}
