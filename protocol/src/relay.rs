//! Relay settings as the user writes them: `n0` (n0's public relays, iroh's default relay
//! map), `none`, or the URL of an iroh relay (`https://…`, or `http://…` for a relay run with
//! `iroh-relay --dev`). Shared by the node's and the client's configs, `sam-node init
//! --relay` and `SAM_RELAY`; each side turns the result into iroh's relay mode.

use thiserror::Error;

/// Longest relay URL accepted (also the bound a ticket keeps, [`crate::ticket`]).
pub const MAX_RELAY_URL_LEN: usize = 512;
/// Most relays in one setting.
pub const MAX_RELAYS: usize = 8;

/// Which relays an endpoint uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relays {
    /// n0's public relays (iroh's default relay map).
    pub n0: bool,
    /// Self-hosted relays, as checked URL text.
    pub urls: Vec<String>,
}

impl Relays {
    /// No relay at all.
    pub fn is_none(&self) -> bool {
        !self.n0 && self.urls.is_empty()
    }
}

/// A relay setting could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RelayError {
    #[error(
        "relay {0:?} is not a relay: use `n0`, `none`, or a URL like https://relay.example.org/"
    )]
    NotAUrl(String),
    /// Not echoed: what precedes `@` would be a password.
    #[error(
        "a relay URL must not carry a user name or password (`user:pass@host`): iroh relays do not read them, and the URL goes into every ticket; use the relay's allowlist instead"
    )]
    Credentials,
    #[error("relay URL is longer than {MAX_RELAY_URL_LEN} characters")]
    TooLong,
    #[error("more than {MAX_RELAYS} relays")]
    TooMany,
    #[error("`none` cannot be combined with other relays")]
    NoneWithOthers,
}

/// Checks one relay URL: `http://` or `https://`, a host, no spaces or control characters,
/// at most [`MAX_RELAY_URL_LEN`] long. Returns it unchanged.
pub fn check_url(s: &str) -> Result<&str, RelayError> {
    if s.len() > MAX_RELAY_URL_LEN {
        return Err(RelayError::TooLong);
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| RelayError::NotAUrl(s.to_owned()))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // `https://relay.example.org@evil.example/` would also show one host and dial another.
    if host.contains(['@', '\\']) {
        return Err(RelayError::Credentials);
    }
    if host.is_empty()
        || host.starts_with(':')
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(RelayError::NotAUrl(s.to_owned()));
    }
    Ok(s)
}

/// Reads a list of settings (each `n0`, `none` or a URL; a comma-separated list within one
/// item is split too, as `SAM_RELAY=a,b` gives).
pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Relays, RelayError> {
    let mut out = Relays::default();
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
            if count > MAX_RELAYS {
                return Err(RelayError::TooMany);
            }
            match part {
                "none" => none = true,
                "n0" | "default" => out.n0 = true,
                url => {
                    let url = check_url(url)?.to_owned();
                    if !out.urls.contains(&url) {
                        out.urls.push(url);
                    }
                }
            }
        }
    }
    if none && !out.is_none() {
        return Err(RelayError::NoneWithOthers);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings() {
        assert_eq!(parse::<&str>(&[]).expect("empty"), Relays::default());
        assert!(parse(&["none"]).expect("none").is_none());
        assert_eq!(
            parse(&["n0"]).expect("n0"),
            Relays {
                n0: true,
                urls: vec![]
            }
        );
        let r = parse(&["http://10.0.0.1:3340/, https://relay.example.org", "n0"]).expect("list");
        assert!(r.n0);
        assert_eq!(
            r.urls,
            vec!["http://10.0.0.1:3340/", "https://relay.example.org"]
        );
    }

    #[test]
    fn refuses_what_is_not_a_relay() {
        for bad in [
            "relay.example.org",
            "ftp://relay.example.org",
            "https://",
            "https://:443/",
            "https://a b",
            "http://x\ny",
            "http://x/\u{7}",
            "file:///etc/passwd",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(check_url("http://x\n").is_err());
        let long = format!("https://{}", "a".repeat(MAX_RELAY_URL_LEN));
        assert_eq!(parse(&[long]), Err(RelayError::TooLong));
        let many: Vec<String> = (0..=MAX_RELAYS)
            .map(|i| format!("https://r{i}.example/"))
            .collect();
        assert_eq!(parse(&many), Err(RelayError::TooMany));
        assert_eq!(parse(&["none", "n0"]), Err(RelayError::NoneWithOthers));
    }

    #[test]
    fn a_relay_url_with_credentials_is_refused_without_echoing_them() {
        for bad in [
            "https://user:s3cret@relay.example.org/",
            "https://relay.example.org@evil.example/",
            "http://tok@10.0.0.1:3340",
            "https://relay.example.org\\@evil.example/",
        ] {
            let err = parse(&[bad]).expect_err(bad);
            assert_eq!(err, RelayError::Credentials, "{bad:?}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        // An `@` after the host is part of the path, not credentials.
        assert!(check_url("https://relay.example.org/a@b").is_ok());
    }
}
