//! `git http-backend` behind a tiny HTTP server on 127.0.0.1 with Basic auth (for PR tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::TokioIo;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repo `<root>/o/r.git` with `main` holding a README.
pub fn make_repo(root: &Path) {
    let work = root.join("seed");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README.md"), "hello\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "first"]);
    std::fs::create_dir_all(root.join("o")).expect("mkdir");
    git(root, &["clone", "-q", "--bare", "seed", "o/r.git"]);
    git(
        &root.join("o/r.git"),
        &["config", "http.receivepack", "true"],
    );
}

/// Serves `root` at `http://127.0.0.1:PORT/`; every request needs `Basic <auth>`.
pub async fn git_server(root: PathBuf, auth: String) -> String {
    git_server_on("127.0.0.1".parse().expect("ip"), root, auth).await
}

/// [`git_server`] on another local address (the Docker bridge, for containers).
pub async fn git_server_on(ip: std::net::IpAddr, root: PathBuf, auth: String) -> String {
    serve(ip, root, Some(auth)).await.base
}

/// A running test git server.
pub struct GitServer {
    /// `http://IP:PORT` (repositories are paths below it).
    pub base: String,
    /// Requests that passed Basic auth (0 when no auth is required).
    pub hits_with_auth: Arc<AtomicUsize>,
}

/// `git http-backend` for `root` on `ip`; with `auth`, every request needs `Basic <auth>`.
pub async fn serve(ip: std::net::IpAddr, root: PathBuf, auth: Option<String>) -> GitServer {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (root, auth, hits) = (root.clone(), auth.clone(), hits2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (root, auth, hits) = (root.clone(), auth.clone(), hits.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            cgi(req, &root, auth.as_deref(), &hits).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    GitServer {
        base: format!("http://{addr}"),
        hits_with_auth: hits,
    }
}

async fn cgi(
    req: HttpRequest<hyper::body::Incoming>,
    root: &Path,
    auth: Option<&str>,
    hits: &AtomicUsize,
) -> HttpResponse<Full<Bytes>> {
    if let Some(expected) = auth {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if given != format!("Basic {expected}") {
            let mut r = HttpResponse::new(Full::new(Bytes::from_static(b"auth needed")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"test\"".parse().expect("header"),
            );
            return r;
        }
        hits.fetch_add(1, Ordering::Relaxed);
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ctype, encoding, proto) = (
        header("content-type"),
        header("content-encoding"),
        header("git-protocol"),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", ctype)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", encoding)
        .env("GIT_PROTOCOL", proto)
        .env("REMOTE_USER", "sam")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git http-backend");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    }
    let out = child
        .wait_with_output()
        .await
        .expect("http-backend output")
        .stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, sep)) = split else {
        return HttpResponse::new(Full::new(Bytes::from(out)));
    };
    let mut r = HttpResponse::new(Full::new(Bytes::copy_from_slice(&out[end + sep..])));
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                let code = v
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
                *r.status_mut() =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            } else if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(k.as_bytes()),
                v.parse(),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
    }
    r
}

/// The host's address on Docker's default bridge, where a workspace container reaches a
/// server the test runs (172.17.0.1 when `ip` cannot tell).
pub fn bridge_ip() -> std::net::IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output();
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let cidr = text
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)?
                .to_string();
            cidr.split('/').next()?.parse().ok()
        })
        .unwrap_or_else(|| "172.17.0.1".parse().expect("ip"))
}

/// Standard base64 with padding (a Basic auth header's credentials).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
