//! Turning a bare host into a SAM node.
//!
//! The main product is the cloud-init **user-data**: a POSIX `sh` script (cloud-init runs any
//! user-data that starts with `#!`; a plain Debian container can run it as-is too). A script
//! rather than `#cloud-config` because the same text must work without cloud-init (the Debian
//! container test, `ssh host sh -s < user-data`) and because every step needs a shell anyway.
//!
//! The script, in steps (each writes `$SAM_HOME/node/bootstrap.status`: `state`, `step`, a
//! fixed message; each skips what is done, so a second run changes nothing):
//! 1. `sam-node`: downloads it from a release URL and refuses it unless its sha256 is the
//!    pinned one (skipped when the installed binary has that sha256);
//! 2. `config`: the one-time enrollment (`enroll.toml`, `0600`: a throwaway key, its expiry,
//!    the enrollment port; not written again once enrolled) and `config.toml` (owner, bind
//!    `0.0.0.0:7447`, relays, advertise = the public IPv4 found at boot);
//! 3. `node`: starts `sam-node run` early: it serves the status to its owner on the
//!    enrollment endpoint and enrolls only once the status is `done`;
//! 4. `docker`: installs Docker (`docker.io`) when missing and waits until it answers;
//! 5. `metadata-block`: blocks containers from the cloud metadata service
//!    (`169.254.0.0/16`, see [`firewall`]), failing closed;
//! 6. `base-image`, `agents`: the workspace image and the pinned agent CLIs, with the scripts
//!    `scripts/up.sh` runs (`bootstrap/images/build-base.sh`,
//!    `bootstrap/agents/install-agents.sh`, embedded byte for byte);
//! 7. `extra` commands, then `service`: the systemd unit takes the node over; `done`.
//!
//! A failing step leaves `state=failed` with its step (the `EXIT` trap catches any command
//! `set -e` stops on), which the node reports to the waiting provisioner.
//!
//! The node's key is never in the user-data: `sam-node` makes it at first boot, and the
//! provisioner learns the node's id by enrolling it (`sam/enroll/1`, see
//! `sam_protocol::enroll`) with the enrollment key's public id, which only it knows. The
//! script never traces itself (`set -x`) and [`BootstrapSpec`]'s `Debug` hides the
//! enrollment key.

mod config;
pub mod firewall;
mod script;
mod systemd;

use std::fmt;
use std::net::SocketAddr;

use sam_protocol::{NodeId, SecretKey};
use thiserror::Error;

pub use config::{NodeConfigFile, node_config_toml};
pub use firewall::{METADATA_BLOCK_PATH, METADATA_BLOCK_SCRIPT, METADATA_UNIT_NAME};
pub use systemd::{SYSTEMD_UNIT_NAME, systemd_unit, systemd_unit_requiring};

/// Largest user-data Hetzner accepts (32 KiB); we hold every provider to it.
pub const USER_DATA_LIMIT: usize = 32 * 1024;
/// UDP port `sam-node` listens on by default.
pub const DEFAULT_PORT: u16 = 7447;
/// `SAM_HOME` on a provisioned host.
pub const DEFAULT_SAM_HOME: &str = "/var/lib/sam";
/// Where the script installs the `sam-node` binary.
pub const DEFAULT_NODE_BIN: &str = "/usr/local/bin/sam-node";
/// Hetzner's metadata service: the server's public IPv4 as plain text.
pub const HETZNER_PUBLIC_IPV4_URL: &str = "http://169.254.169.254/hetzner/v1/metadata/public-ipv4";

/// Where to fetch `sam-node` and the sha256 it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRelease {
    /// `https://…`, `http://…` or `file://…` URL of the `sam-node` binary (linux, the VM's arch).
    pub url: String,
    /// 64 hex digits.
    pub sha256: String,
    /// `sam-pty-hold` of the same release (best a static build), installed beside `sam-node`:
    /// the node copies it into workspaces so their terminals outlive a node restart. Without
    /// it terminals still work, and say on their first line that they will not survive one.
    pub pty_hold: Option<Artifact>,
}

/// One more binary of a release, checked like `sam-node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `https://…`, `http://…` or `file://…` URL.
    pub url: String,
    /// 64 hex digits.
    pub sha256: String,
}

/// Which address the node puts in its tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// Found at boot: the first of these URLs that answers with an IPv4 (a cloud's metadata
    /// service), else the source address of the default route. No address when neither works.
    Detect { metadata_urls: Vec<String> },
    /// Known in advance.
    Fixed(Vec<SocketAddr>),
}

/// The relay a cloud node uses unless told otherwise: n0's public relays.
pub const DEFAULT_CLOUD_RELAY: &str = "n0";
/// The workspace image a cloud node builds (the node's default image).
pub const DEFAULT_BASE_IMAGE: &str = "sam-base:1";

/// Where a cloud node publishes its address unless told otherwise: n0's public DNS/pkarr
/// service, so a node whose address changes is found again by its NodeId.
pub const DEFAULT_CLOUD_DISCOVERY: &str = "n0";

/// Everything the user-data needs.
#[derive(Clone)]
pub struct BootstrapSpec {
    /// The one-time enrollment key (never the node's key: the node makes its own).
    pub enrollment: SecretKey,
    /// Unix seconds after which the node refuses the enrollment.
    pub enroll_expires_unix: u64,
    /// UDP port of the temporary enrollment endpoint (default 7448).
    pub enroll_port: u16,
    /// The node's owner.
    pub owner: NodeId,
    pub release: NodeRelease,
    /// UDP port to bind on `0.0.0.0` (and to advertise).
    pub port: u16,
    pub advertise: Advertise,
    /// Relays for the node: URLs of iroh relays, or `n0` for n0's public relays (the
    /// default: a cloud node stays reachable when its direct address is not); none when
    /// empty. Chosen per provider (`relays` in `[hetzner]`, `[scaleway]`).
    pub relays: Vec<String>,
    /// Discovery services the node publishes its signed address to (`n0` by default, pkarr
    /// relay URLs, `local`); empty: none.
    pub discovery: Vec<String>,
    /// Install Docker when `docker` is missing.
    pub install_docker: bool,
    /// Build the workspace base image and install the pinned agent CLIs into it, with the
    /// scripts `scripts/up.sh` uses (`bootstrap/images/build-base.sh`,
    /// `bootstrap/agents/install-agents.sh`, embedded). Default on.
    pub workspace_image: bool,
    /// The workspace image's name (the node's default, `sam-base:1`).
    pub base_image: String,
    /// Drop traffic from containers to `169.254.0.0/16` (the metadata service), persistently;
    /// the node does not start when that fails. Default on; off only where the script runs
    /// without a firewall of its own (an unprivileged test container).
    pub block_metadata: bool,
    /// Absolute path used as `SAM_HOME` on the host.
    pub sam_home: String,
    /// Absolute path of the installed binary.
    pub node_bin: String,
    /// Trusted shell lines run before the node starts (e.g. pre-pulling images).
    pub extra_commands: Vec<String>,
}

impl BootstrapSpec {
    /// Defaults: port 7447, enrollment on 7448, detected public IPv4, Docker installed,
    /// `/var/lib/sam`.
    pub fn new(
        enrollment: SecretKey,
        enroll_expires_unix: u64,
        owner: NodeId,
        release: NodeRelease,
    ) -> Self {
        Self {
            enrollment,
            enroll_expires_unix,
            enroll_port: sam_protocol::enroll::DEFAULT_ENROLL_PORT,
            owner,
            release,
            port: DEFAULT_PORT,
            advertise: Advertise::Detect {
                metadata_urls: Vec::new(),
            },
            relays: vec![DEFAULT_CLOUD_RELAY.to_owned()],
            discovery: vec![DEFAULT_CLOUD_DISCOVERY.to_owned()],
            install_docker: true,
            workspace_image: true,
            base_image: DEFAULT_BASE_IMAGE.to_owned(),
            block_metadata: true,
            sam_home: DEFAULT_SAM_HOME.to_owned(),
            node_bin: DEFAULT_NODE_BIN.to_owned(),
            extra_commands: Vec::new(),
        }
    }
}

impl fmt::Debug for BootstrapSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapSpec")
            .field("enrollment_key", &"<secret>")
            .field("enrollment", &self.enrollment.node_id().short())
            .field("enroll_expires_unix", &self.enroll_expires_unix)
            .field("enroll_port", &self.enroll_port)
            .field("owner", &self.owner.short())
            .field("release", &self.release)
            .field("port", &self.port)
            .field("advertise", &self.advertise)
            .field("relays", &self.relays)
            .field("discovery", &self.discovery)
            .field("install_docker", &self.install_docker)
            .field("workspace_image", &self.workspace_image)
            .field("base_image", &self.base_image)
            .field("block_metadata", &self.block_metadata)
            .field("sam_home", &self.sam_home)
            .field("node_bin", &self.node_bin)
            .field("extra_commands", &self.extra_commands.len())
            .finish()
    }
}

/// The user-data could not be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error(
        "the user-data is {size} bytes, over the {limit}-byte limit for cloud-init user-data \
         (Hetzner's 32 KiB): remove extra commands or shorten the URLs"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("the sam-node sha256 must be 64 hex digits, got {0:?}")]
    BadSha256(String),
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("invalid path {0:?}: use an absolute path of letters, digits, `/`, `.`, `_` and `-`")]
    BadPath(String),
    #[error("extra command {index} is not a single line of printable text")]
    BadCommand { index: usize },
    #[error("port 0 cannot be advertised: pick a fixed UDP port")]
    ZeroPort,
    #[error("the enrollment port must differ from the node's port {0} and not be 0")]
    BadEnrollPort(u16),
    #[error("bad relay setting: {0}")]
    BadRelay(String),
    #[error("invalid image name {0:?}: letters, digits and `:._/-`, at most 128")]
    BadImage(String),
    #[error("cannot write the node config: {0}")]
    Config(String),
}

/// Renders the user-data script, or says why it cannot (bad input, or over [`USER_DATA_LIMIT`]).
pub fn render_user_data(spec: &BootstrapSpec) -> Result<String, BootstrapError> {
    let text = script::render(spec)?;
    if text.len() > USER_DATA_LIMIT {
        return Err(BootstrapError::TooLarge {
            size: text.len(),
            limit: USER_DATA_LIMIT,
        });
    }
    Ok(text)
}

fn check_url(url: &str) -> Result<(), BootstrapError> {
    let bad = |reason| {
        Err(BootstrapError::BadUrl {
            url: url.to_owned(),
            reason,
        })
    };
    if !["https://", "http://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return bad("it must start with https://, http:// or file://");
    }
    if url.len() > 2048 {
        return bad("it is longer than 2048 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or control characters");
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), BootstrapError> {
    let ok = path.starts_with('/')
        && path.len() < 256
        && !path.contains("..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BootstrapError::BadPath(path.to_owned()))
    }
}

#[cfg(test)]
mod tests;
