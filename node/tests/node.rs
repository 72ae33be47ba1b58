//! Every integration test of sam-node in one test binary: one link instead of sixteen
//! (each was ≈ 100 MB), so CI builds faster and needs gigabytes less disk. Each module
//! is one test file with its own support modules; run one file with
//! `cargo test -p sam-node --test node auth::`.

mod support;

mod agents;
mod agents_bad;
mod auth;
mod chaos;
mod chat_docker;
mod churn;
mod conv_delete;
mod credential_poll;
mod decode;
mod docs;
mod enroll;
mod guard;
mod links;
mod moves;
mod peer_limits;
mod pr;
mod pr_docker;
mod real_agents;
mod real_agents_node;
mod resume;
mod revocation;
mod secrets;
mod sharing;
mod teardown;
mod term_survive;
mod terminal_limits;
mod workspace_io;
mod workspace_limits;
mod workspaces;
