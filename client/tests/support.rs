//! Helpers shared by the test modules, loaded once for the whole test binary.

pub mod bins;
pub mod fake_speech;
/// The node tests' local git HTTP server and GitHub fake, for the idea tests.
#[path = "../../node/tests/support/git_http.rs"]
pub mod git_http;
#[path = "../../node/tests/support/github.rs"]
pub mod github;
pub mod netns;
