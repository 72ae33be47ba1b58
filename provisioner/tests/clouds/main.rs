//! Cloud providers against stateful loopback fakes of the Hetzner and Scaleway APIs. Every
//! request SAM sends and every response a fake returns is checked against the official OpenAPI
//! specs in `provisioner/specs/` (see `openapi.rs`); a violation fails the test.

mod hetzner;
mod hetzner_fake;
mod idea_cli;
mod openapi;
mod pool;
mod scaleway;
mod scaleway_fake;
mod server;
mod validator;

use sam_protocol::SecretKey;
use sam_provisioner::{CreateSpec, Size, Timing};

/// Fast polling for tests; no assertion is made on time.
pub fn fast_timing() -> Timing {
    Timing {
        poll_interval_ms: 10,
        create_timeout_secs: 2,
        max_rate_limit_retries: 5,
        max_rate_limit_wait_secs: 5,
        request_timeout_secs: 10,
    }
}

/// A create spec with real user-data from sam-bootstrap.
pub fn create_spec(size: Size) -> CreateSpec {
    let key = SecretKey::generate();
    let owner = SecretKey::generate().node_id();
    let enrollment = key.node_id();
    let bs = sam_bootstrap::BootstrapSpec::new(
        key,
        sam_provisioner::pool::now_unix() + 3600,
        owner,
        sam_bootstrap::NodeRelease {
            url: "https://releases.example/sam-node".into(),
            sha256: "0".repeat(64),
            pty_hold: None,
        },
    );
    CreateSpec {
        name: CreateSpec::default_name(&enrollment),
        size,
        enrollment,
        user_data: sam_bootstrap::render_user_data(&bs).expect("user-data"),
        locations: vec![],
    }
}
