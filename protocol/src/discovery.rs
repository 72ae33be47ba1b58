//! Discovery settings as the user writes them: how a node publishes its current address under
//! its NodeId, and how a client looks a NodeId up when the addresses it holds are stale.
//!
//! - `n0`: n0's public service (iroh's pkarr relay at `dns.iroh.link`, over HTTPS, to publish
//!   and to resolve);
//! - `https://…/pkarr` (or `http://…` for a test server): a self-hosted pkarr relay such as
//!   `iroh-dns-server`, used over HTTP to publish and to resolve;
//! - `dns:ORIGIN`: resolve by DNS under `ORIGIN` (a self-hosted `iroh-dns-server` whose zone is
//!   delegated to it), with the system's resolver; nothing is published this way;
//! - `local`: the local network (mDNS), publishing and resolving;
//! - `none`: no discovery.
//!
//! Shared by the node's and the client's configs, `sam-node init --discovery` and
//! `SAM_DISCOVERY`. iroh accepts a pkarr record for a NodeId only when that NodeId's key signed
//! it; DNS and mDNS answers are unsigned, and the connection's TLS handshake is what proves the
//! node in every case (docs/security/discovery.md).

use thiserror::Error;

use crate::relay::{RelayError, check_url};

/// Most discovery services in one setting.
pub const MAX_DISCOVERY: usize = 8;
/// Longest DNS origin accepted (a DNS name's limit).
pub const MAX_ORIGIN_LEN: usize = 253;

/// Which discovery services an endpoint uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// n0's public pkarr relay and DNS.
    pub n0: bool,
    /// The local network (mDNS).
    pub local: bool,
    /// Self-hosted pkarr relays, as checked URL text.
    pub pkarr: Vec<String>,
    /// DNS origins to resolve under, checked.
    pub dns: Vec<String>,
}

impl Discovery {
    /// No discovery at all.
    pub fn is_none(&self) -> bool {
        !self.n0 && !self.local && self.pkarr.is_empty() && self.dns.is_empty()
    }

    /// The setting written back as config items (`n0`, `local`, URLs, `dns:ORIGIN`).
    pub fn items(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.n0 {
            out.push("n0".to_owned());
        }
        if self.local {
            out.push("local".to_owned());
        }
        out.extend(self.pkarr.iter().cloned());
        out.extend(self.dns.iter().map(|d| format!("dns:{d}")));
        out
    }
}

/// A discovery setting could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error(
        "discovery {0:?} is not understood: use `n0`, `local`, `none`, the URL of a pkarr relay like https://dns.example.org/pkarr, or dns:ORIGIN"
    )]
    Unknown(String),
    #[error("discovery URL: {0}")]
    Url(RelayError),
    #[error("DNS origin {0:?} is not a DNS name (letters, digits, '-', '.', at most 253)")]
    BadOrigin(String),
    #[error("more than {MAX_DISCOVERY} discovery services")]
    TooMany,
    #[error("`none` cannot be combined with other discovery services")]
    NoneWithOthers,
}

fn check_origin(s: &str) -> Result<String, DiscoveryError> {
    let o = s.trim_end_matches('.');
    let ok = !o.is_empty()
        && o.len() <= MAX_ORIGIN_LEN
        && o.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        let shown: String = s.chars().take(64).collect();
        return Err(DiscoveryError::BadOrigin(shown));
    }
    Ok(o.to_ascii_lowercase())
}

/// Reads a list of settings (each `n0`, `local`, `none`, a URL or `dns:ORIGIN`; a
/// comma-separated list within one item is split too, as `SAM_DISCOVERY=a,b` gives).
pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Discovery, DiscoveryError> {
    let mut out = Discovery::default();
    let mut none = false;
    let mut count = 0usize;
    for item in items {
        for part in item
            .as_ref()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            count += 1;
            if count > MAX_DISCOVERY {
                return Err(DiscoveryError::TooMany);
            }
            match part {
                "none" => none = true,
                "n0" | "default" => out.n0 = true,
                "local" | "mdns" => out.local = true,
                p if p.starts_with("http://") || p.starts_with("https://") => {
                    let url = check_url(p).map_err(DiscoveryError::Url)?.to_owned();
                    if !out.pkarr.contains(&url) {
                        out.pkarr.push(url);
                    }
                }
                p if p.starts_with("dns:") => {
                    let o = check_origin(&p["dns:".len()..])?;
                    if !out.dns.contains(&o) {
                        out.dns.push(o);
                    }
                }
                other => {
                    // A URL of another scheme is not echoed past its scheme: it could carry
                    // a password.
                    let shown: String = match other.split_once("://") {
                        Some((scheme, _)) => format!("{scheme}://…"),
                        None => other.chars().take(64).collect(),
                    };
                    return Err(DiscoveryError::Unknown(shown));
                }
            }
        }
    }
    if none && !out.is_none() {
        return Err(DiscoveryError::NoneWithOthers);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings() {
        assert!(parse::<&str>(&[]).expect("empty").is_none());
        assert!(parse(&["none"]).expect("none").is_none());
        let d = parse(&[
            "n0, local",
            "https://dns.example.org/pkarr",
            "dns:Dns.Example.org.",
        ])
        .expect("list");
        assert!(d.n0 && d.local);
        assert_eq!(d.pkarr, vec!["https://dns.example.org/pkarr"]);
        assert_eq!(d.dns, vec!["dns.example.org"]);
        assert_eq!(parse(&d.items()).expect("round trip"), d);
    }

    #[test]
    fn refuses_what_is_not_a_discovery_service() {
        for bad in [
            "dns.example.org",
            "ftp://dns.example.org/pkarr",
            "https://",
            "http://x/\u{7}",
            "dns:",
            "dns:a..b",
            "dns:-a.example",
            "dns:a b",
            "dns:a/b",
            "file:///etc/passwd",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?} accepted");
        }
        let long = format!("dns:{}", "a.".repeat(200));
        assert!(matches!(parse(&[long]), Err(DiscoveryError::BadOrigin(_))));
        let many: Vec<String> = (0..=MAX_DISCOVERY)
            .map(|i| format!("https://d{i}.example/pkarr"))
            .collect();
        assert_eq!(parse(&many), Err(DiscoveryError::TooMany));
        assert_eq!(parse(&["none", "n0"]), Err(DiscoveryError::NoneWithOthers));
    }

    #[test]
    fn a_discovery_url_with_credentials_is_refused_without_echoing_them() {
        let err = parse(&["https://user:s3cret@dns.example.org/pkarr"]).expect_err("creds");
        assert_eq!(err, DiscoveryError::Url(RelayError::Credentials));
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = parse(&["gopher://user:s3cret@x"]).expect_err("unknown");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
