//! The few GitHub REST calls a PR needs: the repository, open PRs of a branch, a new PR.
//! The token is sent as a header and never logged; errors say what to do.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rustls_platform_verifier::BuilderVerifierExt;
use serde_json::{Value, json};

/// Default API base (`SAM_GITHUB_API` overrides it, e.g. for GitHub Enterprise).
pub const DEFAULT_API: &str = "https://api.github.com";
/// Largest response body read.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A PR that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    pub url: String,
}

/// `OWNER/REPO` from a repository URL (`…/OWNER/REPO[.git]`).
pub fn owner_repo(url: &str) -> Option<(String, String)> {
    let (_, _, path) = super::git::remote_parts(url)?;
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let repo = parts.next()?.trim_end_matches(".git");
    let owner = parts.next()?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (ok(owner) && ok(repo)).then(|| (owner.to_string(), repo.to_string()))
}

pub struct GitHub {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl GitHub {
    pub fn new(base: &str, token: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "the GitHub API URL {base:?} must start with https:// (or http:// for a local test)"
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("sam-node/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            base,
            token: token.to_string(),
            client,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the GitHub API at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the GitHub API's answer to {method} {path}: {e}"))?;
        if bytes.len() > MAX_BODY {
            return Err(format!(
                "the GitHub API's answer to {method} {path} is too large"
            ));
        }
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    fn failure(&self, what: &str, status: StatusCode, body: &Value) -> String {
        let msg = body["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        let detail = body["errors"]
            .as_array()
            .and_then(|e| e.first())
            .and_then(|e| e["message"].as_str())
            .map(|m| format!(" ({})", m.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let hint = match status.as_u16() {
            401 => "the token was refused: check GH_TOKEN/GITHUB_TOKEN or `gh auth login`",
            403 => {
                "the token may not do this: it needs the `repo` scope (or pull-request write access) on the repository"
            }
            404 => "the repository was not found, or the token cannot see it",
            422 => "GitHub refused the pull request",
            _ => "GitHub answered with an error",
        };
        format!("{what}: {hint}: HTTP {status} {msg}{detail}")
    }

    /// Checks that the repository exists and the token sees it.
    pub async fn repo(&self, owner: &str, repo: &str) -> Result<(), String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/repos/{owner}/{repo}"),
                None,
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.failure(&format!("repository {owner}/{repo}"), status, &body))
        }
    }

    /// The open PR from `branch`, if one exists.
    pub async fn find(
        &self,
        owner: &str,
        repo: &str,
        branch: &str,
    ) -> Result<Option<Pull>, String> {
        let path =
            format!("/repos/{owner}/{repo}/pulls?state=open&head={owner}:{branch}&per_page=10");
        let (status, body) = self.call(reqwest::Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(self.failure("listing pull requests", status, &body));
        }
        Ok(body
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["head"]["ref"].as_str() == Some(branch))
            .and_then(pull))
    }

    /// Opens a PR; an existing open one for the branch is reused (`true`).
    pub async fn open(
        &self,
        owner: &str,
        repo: &str,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<(Pull, bool), String> {
        if let Some(p) = self.find(owner, repo, head).await? {
            return Ok((p, true));
        }
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                &format!("/repos/{owner}/{repo}/pulls"),
                Some(json!({ "title": title, "head": head, "base": base, "body": body })),
            )
            .await?;
        if status == StatusCode::CREATED {
            return pull(&answer)
                .map(|p| (p, false))
                .ok_or_else(|| "GitHub's answer holds no PR number or URL".to_string());
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY
            && let Some(p) = self.find(owner, repo, head).await?
        {
            return Ok((p, true));
        }
        Err(self.failure(
            &format!("opening a PR from {head} into {base}"),
            status,
            &answer,
        ))
    }
}

fn pull(v: &Value) -> Option<Pull> {
    Some(Pull {
        number: v["number"].as_u64()?,
        url: v["html_url"].as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_repo_from_urls() {
        assert_eq!(
            owner_repo("https://github.com/o/r.git"),
            Some(("o".into(), "r".into()))
        );
        assert_eq!(
            owner_repo("http://127.0.0.1:9/git/o/r"),
            Some(("o".into(), "r".into()))
        );
        assert_eq!(owner_repo("https://github.com/r"), None);
        assert_eq!(owner_repo("https://github.com/o/../r"), None);
    }
}
