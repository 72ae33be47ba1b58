//! The HTTP shell shared by the cloud providers: TLS with rustls+ring, auth headers that are
//! never logged, bounded bodies, and `429` retries that honour the rate-limit headers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use rustls_platform_verifier::BuilderVerifierExt;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::Timing;
use crate::provider::ProviderError;

/// Largest response body read from a cloud API.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How a provider authenticates. The secret never appears in `Debug` or logs.
#[derive(Clone)]
pub(crate) enum Auth {
    Bearer(String),
    Header(&'static str, String),
}

/// A request body.
pub(crate) enum Body {
    None,
    Json(serde_json::Value),
    Text(String),
}

/// A response: status and the (bounded) body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

pub(crate) struct Api {
    pub provider: &'static str,
    base: String,
    client: reqwest::Client,
    auth: Auth,
    pub timing: Timing,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("provider", &self.provider)
            .field("base", &self.base)
            .field("auth", &"<secret>")
            .finish()
    }
}

/// A reqwest client on rustls with the ring provider and the platform's roots.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| ProviderError::Config(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .user_agent(concat!("sam-provisioner/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))
}

impl Api {
    pub fn new(
        provider: &'static str,
        base: &str,
        auth: Auth,
        timing: Timing,
    ) -> Result<Self, ProviderError> {
        let parsed = Url::parse(base).map_err(|e| {
            ProviderError::Config(format!("invalid {provider} API URL {base:?}: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ProviderError::Config(format!(
                "invalid {provider} API URL {base:?}: use http:// or https://"
            )));
        }
        let client = http_client(Duration::from_secs(timing.request_timeout_secs.max(1)))?;
        Ok(Self {
            provider,
            base: base.trim_end_matches('/').to_owned(),
            client,
            auth,
            timing,
        })
    }

    /// `base + path` with `query` pairs (values are percent-encoded).
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ProviderError> {
        let mut url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| ProviderError::Config(format!("bad {} URL: {e}", self.provider)))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// [`Api::send`] to `base + path` with `query`.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, ProviderError> {
        let url = self.url(path, query)?;
        self.send(what, method, url, body).await
    }

    /// The error for a failed `reply` whose body said `(code, message)`: a `401` is a bad
    /// token (`token_hint` says which), `quota_code` is the provider's over-quota code.
    pub fn error(
        &self,
        what: &str,
        reply: &Reply,
        (code, message): (String, String),
        quota_code: &str,
        token_hint: &'static str,
    ) -> ProviderError {
        if reply.status == StatusCode::UNAUTHORIZED {
            return ProviderError::InvalidToken {
                provider: self.provider,
                hint: token_hint,
            };
        }
        if code == quota_code {
            return ProviderError::QuotaExceeded {
                provider: self.provider,
                message,
            };
        }
        ProviderError::Api {
            provider: self.provider,
            what: what.to_owned(),
            status: reply.status.as_u16(),
            code,
            message,
        }
    }

    /// Sends a request; a `429` is retried after the wait its headers ask for (bounded).
    pub async fn send(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Body,
    ) -> Result<Reply, ProviderError> {
        let mut retries = 0;
        loop {
            let mut req = self.client.request(method.clone(), url.clone());
            req = match &self.auth {
                Auth::Bearer(t) => req.bearer_auth(t),
                Auth::Header(name, t) => req.header(*name, t),
            };
            req = match &body {
                Body::None => req,
                Body::Json(v) => req.json(v),
                Body::Text(t) => req.header(CONTENT_TYPE, "text/plain").body(t.clone()),
            };
            tracing::debug!(provider = self.provider, %method, path = url.path(), "request");
            let resp = req.send().await.map_err(|source| ProviderError::Http {
                provider: self.provider,
                what: what.to_owned(),
                source,
            })?;
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                if retries >= self.timing.max_rate_limit_retries {
                    return Err(ProviderError::RateLimited {
                        provider: self.provider,
                        what: what.to_owned(),
                        retries,
                    });
                }
                retries += 1;
                let wait = rate_limit_delay(
                    resp.headers(),
                    unix_now(),
                    Duration::from_secs(self.timing.max_rate_limit_wait_secs),
                );
                tracing::info!(
                    provider = self.provider,
                    what,
                    ?wait,
                    "rate-limited; waiting"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = read_body(resp, self.provider, what).await?;
            return Ok(Reply { status, body });
        }
    }

    /// Parses a JSON body.
    pub fn json<T: DeserializeOwned>(&self, what: &str, reply: &Reply) -> Result<T, ProviderError> {
        serde_json::from_slice(&reply.body).map_err(|e| ProviderError::Malformed {
            provider: self.provider,
            what: what.to_owned(),
            detail: format!("HTTP {}: not the expected JSON: {e}", reply.status.as_u16()),
        })
    }
}

async fn read_body(
    mut resp: reqwest::Response,
    provider: &'static str,
    what: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| ProviderError::Http {
        provider,
        what: what.to_owned(),
        source,
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ProviderError::Malformed {
                provider,
                what: what.to_owned(),
                detail: format!("response body over {MAX_BODY} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long to wait after a `429`: `Retry-After` (seconds), else `RateLimit-Reset` (Hetzner: a
/// Unix time; small values are read as seconds from now), else one second; at most `max`.
pub fn rate_limit_delay(headers: &HeaderMap, now_unix: u64, max: Duration) -> Duration {
    let num = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let secs = if let Some(s) = num("retry-after") {
        s
    } else if let Some(reset) = num("ratelimit-reset") {
        if reset > 1_000_000_000 {
            reset.saturating_sub(now_unix)
        } else {
            reset
        }
    } else {
        1
    };
    Duration::from_secs(secs).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn delays() {
        let max = Duration::from_secs(60);
        let d = |p: &[(&'static str, &str)]| rate_limit_delay(&headers(p), 1_700_000_000, max);
        assert_eq!(d(&[("retry-after", "3")]), Duration::from_secs(3));
        assert_eq!(
            d(&[("ratelimit-reset", "1700000007")]),
            Duration::from_secs(7)
        );
        assert_eq!(d(&[("ratelimit-reset", "1600000000")]), Duration::ZERO);
        assert_eq!(d(&[("ratelimit-reset", "5")]), Duration::from_secs(5));
        assert_eq!(d(&[("ratelimit-reset", "1800000000")]), max);
        assert_eq!(d(&[("retry-after", "garbage")]), Duration::from_secs(1));
        assert_eq!(d(&[]), Duration::from_secs(1));
    }
}
