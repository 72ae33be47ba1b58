//! Every integration test of sam-client in one test binary: one link instead of sixteen
//! (the GUI ones were ≈ 150 MB each), so CI builds faster and needs gigabytes less disk.
//! Each module is one test file with its own support modules; run one file with
//! `cargo test -p sam-client --test client gui_idea::`.

mod support;

mod bootstrap_container;
mod cli;
mod cloud_cli;
mod convs;
mod discovery;
mod gui;
mod gui_idea;
mod gui_smoke;
mod gui_snapshots;
mod gui_voice;
mod gui_workspace;
mod idea;
mod local_pool;
mod moves;
mod relay_paths;
mod team_cli;
mod team_provisioner;
mod voice;
