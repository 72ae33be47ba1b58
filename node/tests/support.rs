//! Helpers shared by the test modules, loaded once for the whole test binary.

pub mod agent_util;
pub mod git_http;
pub mod github;
pub mod harness;
pub mod real_agents;
/// Workspace helpers of `workspace_io` (a running node with Docker), also used by the
/// move and teardown tests.
#[path = "workspace_io/common.rs"]
pub mod ws_common;
