//! The HTTP client for speech providers: rustls with the ring provider and the platform's
//! roots (as the provisioner), bounded response bodies, readable errors.

use std::sync::Arc;
use std::time::Duration;

use rustls_platform_verifier::BuilderVerifierExt;

use super::VoiceError;

/// A reqwest client on rustls + ring with the platform's certificate roots.
pub fn client(timeout: Duration) -> Result<reqwest::Client, VoiceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| VoiceError::Config(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .user_agent(concat!("sam/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| VoiceError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Reads a response body of at most `limit` bytes; a non-2xx status becomes an error
/// carrying the provider's message.
pub async fn body(
    provider: &str,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, VoiceError> {
    let status = resp.status();
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| VoiceError::provider(provider, format!("reading the response: {e}")))?
    {
        if buf.len() + chunk.len() > limit {
            if status.is_success() {
                return Err(VoiceError::provider(
                    provider,
                    format!("the response is larger than {limit} bytes"),
                ));
            }
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let message = serde_json::from_slice::<serde_json::Value>(&buf)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("detail"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| text.chars().take(300).collect());
    let hint = match status.as_u16() {
        401 | 403 => " (check the API key: `SAM_VOICE_API_KEY` or the keyring entry)",
        404 => " (check the base URL: it should end in /v1)",
        413 => " (the audio is too large for this provider)",
        429 => " (rate limited: try again later)",
        _ => "",
    };
    Err(VoiceError::provider(
        provider,
        format!("HTTP {status}: {message}{hint}"),
    ))
}

/// A send error with the URL and what to check.
pub fn send_error(provider: &str, url: &str, e: reqwest::Error) -> VoiceError {
    VoiceError::provider(
        provider,
        format!("cannot reach {url}: {e} (is the server running and the base URL right?)"),
    )
}
