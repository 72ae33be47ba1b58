//! A fake LLM HTTP server for tests and manual tries with the real agent adapters.
//!
//! It answers the four wire APIs the real adapters speak, on `127.0.0.1:0`:
//!
//! | API | route | used by |
//! |---|---|---|
//! | Anthropic Messages | `POST /v1/messages` (SSE or JSON) | Claude Code (`claude-agent-acp`) |
//! | OpenAI Responses | `POST /v1/responses` (SSE) | Codex (`codex-acp`) |
//! | Gemini | `POST /v1beta/models/M:generateContent`, `:streamGenerateContent?alt=sse`, `:countTokens` | Gemini CLI |
//! | OpenAI Chat Completions | `POST /v1/chat/completions` (SSE or JSON) | Mistral Vibe |
//!
//! What it says is scripted by a [`Script`]: a default text, plus rules matched against the
//! text of the latest user prompt. A rule can stream a text, or make **one tool call** that
//! writes a file (each agent's own write tool, found in the request's tool list: Claude
//! `Write`, Codex `apply_patch`, Gemini `write_file`, Vibe `write_file`), and then, once the
//! request carries the tool's result, a final text. Auxiliary calls (Gemini's routing
//! classifier with a JSON schema, titles, token counts) get a plausible answer.
//!
//! Every request is recorded ([`Recorded`]: path, headers, body) so tests can assert on it,
//! and optionally appended to a JSONL log file for debugging.

mod formats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use formats::Api;

/// The largest request body accepted (agents send their whole history each turn).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// What the fake LLM answers. JSON (or TOML) friendly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// The answer when no rule matches (default: "Hello from the fake LLM.").
    pub text: Option<String>,
    /// Rules, first match wins, against the latest user prompt's text.
    pub rules: Vec<Rule>,
}

/// One scripted behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// A substring of the latest user prompt; empty matches every prompt.
    pub when: String,
    /// Text streamed (before the tool call when there is one).
    pub text: Option<String>,
    /// One tool call that writes this file.
    pub write: Option<WriteFile>,
    /// The final text after the tool result came back (default "Done.").
    pub after: Option<String>,
}

/// A file to write through the agent's own write tool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// The path as the agent should see it (absolute paths work for every agent).
    pub path: String,
    pub content: String,
}

/// One request the fake LLM received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`null` when it was not JSON).
    pub body: serde_json::Value,
    /// Which API the route belongs to (`None`: unknown route, answered 404).
    pub api: Option<Api>,
    /// What the fake answered: `text`, `tool`, `after-tool`, `aux`, `not-found`.
    pub answer: String,
}

impl Recorded {
    /// The value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header value contains `needle` (e.g. a planted API key).
    pub fn has_header_value(&self, needle: &str) -> bool {
        self.headers.iter().any(|(_, v)| v.contains(needle))
    }
}

/// A running fake LLM; stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
}

struct State {
    script: Mutex<Script>,
    requests: Mutex<Vec<Recorded>>,
    log: Option<PathBuf>,
    counter: std::sync::atomic::AtomicU64,
}

impl FakeLlm {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(script: Script) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("valid address"), script, None).await
    }

    /// Starts on `addr`, appending every request as one JSON line to `log` when given.
    pub async fn start_on(
        addr: SocketAddr,
        script: Script,
        log: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            script: Mutex::new(script),
            requests: Mutex::new(Vec::new()),
            log,
            counter: Default::default(),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, state.clone(), cancel.clone()));
        Ok(Self {
            addr,
            state,
            cancel,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the script (for the following requests).
    pub fn set_script(&self, script: Script) {
        *lock(&self.state.script) = script;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(listener: TcpListener, state: Arc<State>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, format!("bad body: {e}"));
        }
    };
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let n = state
        .counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = lock(&state.script).clone();
    let (api, reply) = formats::answer(&method, &path, &body, &script, n);
    let rec = Recorded {
        method,
        path,
        headers,
        body,
        api,
        answer: reply.kind.to_string(),
    };
    if let Some(log) = &state.log
        && let Ok(line) = serde_json::to_string(&rec)
    {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    lock(&state.requests).push(rec);
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    if let Ok(v) = reply.content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}

/// What the fake decided to answer.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    pub kind: &'static str,
}

/// Where a request stands in the scripted exchange.
pub(crate) enum Step<'a> {
    /// Stream this text.
    Text(String),
    /// Stream an optional text, then call the write tool.
    Tool(Option<String>, &'a WriteFile),
    /// The tool's result came back: stream the final text.
    AfterTool(String),
}

impl Script {
    /// What to answer to a prompt whose latest user text is `prompt`; `after_tool` when the
    /// request ends with a tool result.
    pub(crate) fn step(&self, prompt: &str, after_tool: bool) -> Step<'_> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.when.is_empty() || prompt.contains(&r.when));
        let default = || {
            self.text
                .clone()
                .unwrap_or_else(|| "Hello from the fake LLM.".into())
        };
        match rule {
            Some(r) if after_tool => {
                Step::AfterTool(r.after.clone().unwrap_or_else(|| "Done.".into()))
            }
            None if after_tool => Step::AfterTool("Done.".into()),
            Some(Rule {
                write: Some(w),
                text,
                ..
            }) => Step::Tool(text.clone(), w),
            Some(r) => Step::Text(r.text.clone().unwrap_or_else(default)),
            None => Step::Text(default()),
        }
    }
}

/// Splits a text into a few stream chunks (at spaces), so clients see more than one delta.
pub(crate) fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, word) in text.split_inclusive(' ').enumerate() {
        cur.push_str(word);
        if i % 2 == 1 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests;
