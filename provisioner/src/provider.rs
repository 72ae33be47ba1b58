//! The provider trait, the VM record and the labels that hold pool state.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use sam_protocol::{NodeAddr, NodeId, SecretKey, Ticket};
use thiserror::Error;

use crate::config::Size;

/// Label/tag keys. Pool state lives in the cloud, not in a database.
pub mod labels {
    /// Every SAM VM has `sam=1`.
    pub const SAM: &str = "sam";
    /// `idle` or `busy`.
    pub const POOL: &str = "sam-pool";
    /// `small`, `medium` or `large`.
    pub const SIZE: &str = "sam-size";
    /// The node's NodeId in lowercase base32 (52 chars): Hetzner label values hold at most 63
    /// characters, the hex form has 64. Set once the node is enrolled (its id is learnt then).
    pub const NODE: &str = "sam-node";
    /// The public id of the one-time enrollment the VM was made with (base32 like
    /// [`NODE`]): never a secret, it finds the VM before its node id is known.
    pub const ENROLL: &str = "sam-enroll";
    /// Unix seconds when the node became idle.
    pub const IDLE_SINCE: &str = "sam-idle-since";
    /// The random token of the acquisition that holds a busy node (32 hex digits): an
    /// acquirer writes its own, reads the labels back, and takes the node only when its
    /// token is still there (labels have no compare-and-swap of their own).
    pub const CLAIM: &str = "sam-claim";
}

const B32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// A NodeId as a label value: lowercase base32, 52 characters.
pub fn node_label(id: &NodeId) -> String {
    B32.encode(id.as_bytes()).to_ascii_lowercase()
}

/// Reads a [`node_label`] back.
pub fn parse_node_label(s: &str) -> Option<NodeId> {
    let bytes = B32.decode(s.to_ascii_uppercase().as_bytes()).ok()?;
    Some(NodeId(bytes.try_into().ok()?))
}

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolState {
    Idle,
    Busy,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Idle => "idle",
            PoolState::Busy => "busy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "idle" => Some(PoolState::Idle),
            "busy" => Some(PoolState::Busy),
            _ => None,
        }
    }
}

/// The labels a new SAM VM gets: busy, its size and its enrollment's public id (the node id
/// is added by [`with_node`] once the node is enrolled).
pub fn new_vm_labels(size: Size, enrollment: &NodeId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::SAM.to_owned(), "1".to_owned()),
        (labels::POOL.to_owned(), PoolState::Busy.as_str().to_owned()),
        (labels::SIZE.to_owned(), size.as_str().to_owned()),
        (labels::ENROLL.to_owned(), node_label(enrollment)),
    ])
}

/// `labels` with the enrolled node's id.
pub fn with_node(mut labels: BTreeMap<String, String>, node: &NodeId) -> BTreeMap<String, String> {
    labels.insert(labels::NODE.to_owned(), node_label(node));
    labels
}

/// A one-time enrollment: the throwaway key a new VM's user-data carries instead of a node
/// key, and when it expires. The provisioner keeps only its public id.
#[derive(Clone)]
pub struct Enrollment {
    pub key: SecretKey,
    pub expires_unix: u64,
}

impl Enrollment {
    /// A fresh enrollment valid for `ttl_secs` from `now_unix`.
    pub fn new(now_unix: u64, ttl_secs: u64) -> Self {
        Self {
            key: SecretKey::generate(),
            expires_unix: now_unix.saturating_add(ttl_secs),
        }
    }

    /// The enrollment key's public id (what the provisioner dials).
    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("key", &"<secret>")
            .field("id", &self.id().short())
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// `labels` with the pool state set (and the idle time when idle, removed when busy).
pub fn with_pool_state(
    mut labels: BTreeMap<String, String>,
    state: PoolState,
    now_unix: u64,
) -> BTreeMap<String, String> {
    labels.insert(labels::POOL.to_owned(), state.as_str().to_owned());
    match state {
        PoolState::Idle => {
            labels.insert(labels::IDLE_SINCE.to_owned(), now_unix.to_string());
            labels.remove(labels::CLAIM);
        }
        PoolState::Busy => {
            labels.remove(labels::IDLE_SINCE);
        }
    }
    labels
}

/// A provider's machine, as SAM sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// The provider's id (Scaleway: `zone/uuid`).
    pub id: String,
    pub name: String,
    /// Location (Hetzner) or zone (Scaleway).
    pub location: String,
    /// The provider's machine type.
    pub machine_type: String,
    /// The provider's status word (`running`, `starting`, …).
    pub status: String,
    pub public_ipv4: Option<IpAddr>,
    /// Labels (Hetzner) or `key=value` tags (Scaleway).
    pub labels: BTreeMap<String, String>,
    /// Unix seconds, when the provider says.
    pub created_unix: Option<u64>,
}

impl Vm {
    pub fn size(&self) -> Option<Size> {
        self.labels.get(labels::SIZE)?.parse().ok()
    }
    pub fn node_id(&self) -> Option<NodeId> {
        parse_node_label(self.labels.get(labels::NODE)?)
    }
    pub fn pool_state(&self) -> Option<PoolState> {
        PoolState::parse(self.labels.get(labels::POOL)?)
    }
    pub fn idle_since(&self) -> Option<u64> {
        self.labels.get(labels::IDLE_SINCE)?.parse().ok()
    }
}

/// What to create. `Debug` shows the user-data's size only: it holds the one-time enrollment
/// key until the node is enrolled.
#[derive(Clone)]
pub struct CreateSpec {
    /// Server name (a valid hostname).
    pub name: String,
    pub size: Size,
    /// The public id of the enrollment inside `user_data` (the node's own id is learnt when
    /// it is enrolled; no node key is ever in `user_data`).
    pub enrollment: NodeId,
    /// From `sam_bootstrap::render_user_data`; at most 32 KiB.
    pub user_data: String,
    /// Only these locations/zones, in order; the provider's configured list when empty.
    pub locations: Vec<String>,
}

impl std::fmt::Debug for CreateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSpec")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("enrollment", &self.enrollment.short())
            .field(
                "user_data",
                &format_args!("<{} bytes>", self.user_data.len()),
            )
            .field("locations", &self.locations)
            .finish()
    }
}

impl CreateSpec {
    /// `sam-<first 12 base32 chars of the id>` (the enrollment's for a new VM).
    pub fn default_name(id: &NodeId) -> String {
        format!("sam-{}", &node_label(id)[..12])
    }
}

/// A provider call failed.
#[derive(Debug, Error)]
pub enum ProviderError {
    #[error("{provider} token invalid (HTTP 401): check the API token ({hint})")]
    InvalidToken {
        provider: &'static str,
        hint: &'static str,
    },
    #[error(
        "{provider} quota exceeded: {message} (delete servers or ask the provider for a higher limit)"
    )]
    QuotaExceeded {
        provider: &'static str,
        message: String,
    },
    #[error(
        "{provider} has no capacity for {machine_type} in any of {tried:?}: try another size or location"
    )]
    NoCapacity {
        provider: &'static str,
        machine_type: String,
        tried: Vec<String>,
    },
    #[error("{provider} API error on {what}: HTTP {status} {code}: {message}")]
    Api {
        provider: &'static str,
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{provider} sent a malformed response to {what}: {detail}")]
    Malformed {
        provider: &'static str,
        what: String,
        detail: String,
    },
    #[error("{provider} kept rate-limiting {what} after {retries} retries: try again later")]
    RateLimited {
        provider: &'static str,
        what: String,
        retries: u32,
    },
    #[error("cannot reach {provider} for {what}: {source}")]
    Http {
        provider: &'static str,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{provider}: creating {name} failed: {reason}{cleanup}")]
    CreateFailed {
        provider: &'static str,
        name: String,
        reason: String,
        /// Says whether the half-made server was deleted.
        cleanup: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("user-data is {size} bytes, over the {limit}-byte limit: nothing was created")]
    UserDataTooLarge { size: usize, limit: usize },
    #[error("no {provider} server {id}")]
    NotFound { provider: &'static str, id: String },
}

/// A cloud that makes SAM nodes. Every method is one or a few API calls.
pub trait Provider: Send + Sync {
    /// `hetzner`, `scaleway`, …
    fn name(&self) -> &'static str;

    /// Creates a server and waits until the provider reports it started. Anything that fails
    /// after the server exists deletes it before returning the error.
    fn create(&self, spec: &CreateSpec) -> impl Future<Output = Result<Vm, ProviderError>> + Send;

    /// Every SAM server (label/tag `sam=1`).
    fn list(&self) -> impl Future<Output = Result<Vec<Vm>, ProviderError>> + Send;

    /// Deletes a server (and, where the provider does it, its volumes). Gone already is fine.
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Replaces a server's SAM labels with `labels` (other labels are kept).
    fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vm, ProviderError>> + Send;

    /// The user-data that makes a node owned by `owner`, enrolled with `enrollment` (the node
    /// makes its own key). Clouds render the `sam-bootstrap` script (which needs a `sam-node`
    /// release); [`crate::Local`] has its own.
    fn user_data(
        &self,
        enrollment: &Enrollment,
        owner: &NodeId,
        release: Option<&sam_bootstrap::NodeRelease>,
    ) -> Result<String, ProviderError> {
        let release = release.cloned().ok_or_else(|| {
            ProviderError::Config(format!(
                "{}: no sam-node release configured (a URL and its sha256): nothing was created",
                self.name()
            ))
        })?;
        let mut spec = sam_bootstrap::BootstrapSpec::new(
            enrollment.key.clone(),
            enrollment.expires_unix,
            *owner,
            release,
        );
        spec.relays = self.relays();
        if self.name() == "hetzner" {
            spec.advertise = sam_bootstrap::Advertise::Detect {
                metadata_urls: vec![sam_bootstrap::HETZNER_PUBLIC_IPV4_URL.to_owned()],
            };
        }
        sam_bootstrap::render_user_data(&spec).map_err(|e| match e {
            sam_bootstrap::BootstrapError::TooLarge { size, limit } => {
                ProviderError::UserDataTooLarge { size, limit }
            }
            other => ProviderError::Config(format!("cannot render user-data: {other}")),
        })
    }

    /// The relays this provider's nodes use (`relays` in its config section; n0 by default).
    fn relays(&self) -> Vec<String> {
        crate::config::default_relays()
    }

    /// A ticket to the node on `vm` (no capability: enough for its owner). Clouds: the public
    /// IPv4 and port 7447, and the NodeId from the `sam-node` label.
    fn ticket(&self, vm: &Vm) -> Result<Ticket, ProviderError> {
        cloud_ticket(self.name(), vm)
    }

    /// Where a new VM serves its enrollment. Clouds: the public IPv4 and port 7448.
    fn enroll_addrs(&self, vm: &Vm) -> Result<Vec<SocketAddr>, ProviderError> {
        let ip = vm.public_ipv4.ok_or_else(|| ProviderError::Malformed {
            provider: self.name(),
            what: format!("server {}", vm.id),
            detail: "no public IPv4 address (yet)".into(),
        })?;
        Ok(vec![SocketAddr::new(
            ip,
            sam_protocol::enroll::DEFAULT_ENROLL_PORT,
        )])
    }

    /// Marks a server idle (since `now_unix`) or busy.
    fn mark(
        &self,
        vm: &Vm,
        state: PoolState,
        now_unix: u64,
    ) -> impl Future<Output = Result<Vm, ProviderError>> + Send {
        let labels = with_pool_state(vm.labels.clone(), state, now_unix);
        async move { self.set_labels(&vm.id, &labels).await }
    }
}

/// The ticket of a cloud VM: `public IPv4:7447` and the NodeId in its labels.
pub fn cloud_ticket(provider: &'static str, vm: &Vm) -> Result<Ticket, ProviderError> {
    let malformed = |detail: &str| ProviderError::Malformed {
        provider,
        what: format!("server {}", vm.id),
        detail: detail.to_owned(),
    };
    let id = vm
        .node_id()
        .ok_or_else(|| malformed("no readable sam-node label: not a SAM node?"))?;
    let ip = vm
        .public_ipv4
        .ok_or_else(|| malformed("no public IPv4 address (yet)"))?;
    Ok(Ticket::new(NodeAddr {
        id,
        direct: vec![SocketAddr::new(ip, sam_bootstrap::DEFAULT_PORT)],
        relay: None,
    }))
}

/// Checks the user-data size before any request.
pub(crate) fn check_user_data(spec: &CreateSpec) -> Result<(), ProviderError> {
    let limit = sam_bootstrap::USER_DATA_LIMIT;
    if spec.user_data.len() > limit {
        return Err(ProviderError::UserDataTooLarge {
            size: spec.user_data.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_labels_round_trip_and_fit(bytes in any::<[u8; 32]>()) {
            let id = NodeId(bytes);
            let l = node_label(&id);
            prop_assert_eq!(l.len(), 52);
            prop_assert!(l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
            prop_assert_eq!(parse_node_label(&l), Some(id));
        }
    }

    #[test]
    fn create_spec_debug_hides_the_user_data() {
        let key = SecretKey::generate();
        let hex = data_encoding::HEXLOWER.encode(&key.to_bytes());
        let spec = CreateSpec {
            name: "n".into(),
            size: Size::Small,
            enrollment: key.node_id(),
            user_data: format!("enroll_key = {hex}"),
            locations: vec![],
        };
        let dbg = format!(
            "{spec:?} {:?}",
            Enrollment {
                key,
                expires_unix: 1
            }
        );
        assert!(!dbg.contains(&hex), "{dbg}");
    }

    #[test]
    fn pool_labels() {
        let id = NodeId([1; 32]);
        let l = new_vm_labels(Size::Small, &id);
        let idle = with_pool_state(l.clone(), PoolState::Idle, 100);
        assert_eq!(idle[labels::POOL], "idle");
        assert_eq!(idle[labels::IDLE_SINCE], "100");
        let busy = with_pool_state(idle, PoolState::Busy, 200);
        assert!(!busy.contains_key(labels::IDLE_SINCE));
        assert_eq!(busy, l);
        assert!(parse_node_label("not base32!").is_none());
    }
}

/// Unix seconds of an RFC 3339 time (`2016-01-30T23:55:00Z`, `…+00:00`, fractions allowed).
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant)
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).ok()
}

#[cfg(test)]
mod time_tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2016-01-30T23:55:00Z"), Some(1_454_198_100));
        assert_eq!(
            parse_rfc3339("2016-01-30T23:55:00+00:00"),
            Some(1_454_198_100)
        );
        assert_eq!(
            parse_rfc3339("2016-01-31T01:55:00.123+02:00"),
            Some(1_454_198_100)
        );
        assert_eq!(parse_rfc3339("nope"), None);
        assert_eq!(parse_rfc3339("2016-13-30T23:55:00Z"), None);
        assert_eq!(parse_rfc3339("2016-01-30T23:55:00"), None);
    }
}
