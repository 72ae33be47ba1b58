//! Requests about turning a conversation's work into a pull request (wrapped in `Request::Pr`).
//!
//! The client hands the node, per request, what a PR needs: the repository, the branch, the
//! user's git identity and a GitHub token. The node keeps the token in memory only (never
//! on disk, never in a document) and drops it with the conversation's PR settings.

use serde::{Deserialize, Serialize};

use crate::capability::Role;

/// Longest idea text kept (the PR title is cut far shorter).
pub const MAX_IDEA: usize = 16 * 1024;
/// Longest token, URL, branch or identity field.
pub const MAX_FIELD: usize = 4 * 1024;

/// Author of the commits the node makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitIdentity {
    pub name: String,
    pub email: String,
}

/// Everything the node needs to commit, push and open a PR. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrSettings {
    /// The repository's URL (`https://github.com/OWNER/REPO[.git]`; any URL whose path
    /// ends in `OWNER/REPO` for GitHub Enterprise or tests).
    pub repo_url: String,
    /// Branch the PR targets, e.g. `main`.
    pub base: String,
    /// Branch the work is pushed to, e.g. `sam/add-a-readme`.
    pub branch: String,
    /// The idea: the first line is the PR title and commit subject.
    pub idea: String,
    pub identity: GitIdentity,
    /// GitHub API token (memory only on the node).
    pub token: String,
    /// GitHub API base, e.g. `https://api.github.com` or `https://ghe.example/api/v3`;
    /// `None`: the node's `SAM_GITHUB_API`, else `https://api.github.com`.
    pub api: Option<String>,
}

impl std::fmt::Debug for PrSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrSettings")
            .field("repo_url", &self.repo_url)
            .field("base", &self.base)
            .field("branch", &self.branch)
            .field("identity", &self.identity)
            .field("api", &self.api)
            .field("token", &"<secret>")
            .finish_non_exhaustive()
    }
}

impl PrSettings {
    /// Checks sizes and characters; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.idea.trim().is_empty() || self.idea.len() > MAX_IDEA {
            return Err(format!("the idea must be 1 to {MAX_IDEA} bytes of text"));
        }
        for (what, v) in [
            ("repository URL", &self.repo_url),
            ("base branch", &self.base),
            ("branch", &self.branch),
            ("git user name", &self.identity.name),
            ("git user email", &self.identity.email),
            ("token", &self.token),
        ] {
            if v.trim().is_empty() || v.len() > MAX_FIELD || v.contains(['\n', '\r', '\0']) {
                return Err(format!(
                    "the {what} is empty, too long or holds a line break"
                ));
            }
        }
        for b in [&self.base, &self.branch] {
            if b.starts_with('-') || b.contains("..") || b.contains(char::is_whitespace) {
                return Err(format!("{b:?} is not a usable branch name"));
            }
        }
        Ok(())
    }
}

/// Requests about pull requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrRequest {
    /// From now on, each turn of `conv` that ends with changes is committed, pushed and
    /// turned into (or added to) a PR. Replaces earlier settings of the conversation.
    Enable { conv: String, settings: PrSettings },
    /// Commits, pushes and opens or reuses the PR now (`sam pr CONV`), and waits for it.
    /// `settings: None` reuses the ones given before.
    Run {
        conv: String,
        settings: Option<PrSettings>,
    },
}

impl PrRequest {
    pub fn required_role(&self) -> Role {
        Role::Collaborator
    }

    pub fn conversation(&self) -> &str {
        match self {
            PrRequest::Enable { conv, .. } | PrRequest::Run { conv, .. } => conv,
        }
    }
}

/// How one PR step ended; also written into the conversation as a system message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrOutcome {
    /// The branch was pushed and the PR exists.
    Opened {
        url: String,
        number: u64,
        /// An open PR for the branch existed already and was reused.
        reused: bool,
        branch: String,
        commit: String,
    },
    /// The turn left nothing to commit or push.
    NoChanges,
    /// A step failed; the work is committed in the workspace (`commit`, if any).
    Failed {
        stage: String,
        message: String,
        commit: Option<String>,
    },
}

/// Answers to [`PrRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrResponse {
    Enabled,
    Outcome(PrOutcome),
}

/// `sam/<slug>` for an idea: lower-case ASCII words joined by `-`, at most 40 characters.
pub fn branch_for(idea: &str) -> String {
    let mut slug = String::new();
    for word in idea
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + word.len() + 1 > 40 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    if slug.is_empty() {
        slug.push_str("idea");
    }
    format!("sam/{slug}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn settings() -> PrSettings {
        PrSettings {
            repo_url: "https://github.com/o/r".into(),
            base: "main".into(),
            branch: "sam/x".into(),
            idea: "Add a README".into(),
            identity: GitIdentity {
                name: "A".into(),
                email: "a@b".into(),
            },
            token: "ghp_secret_value".into(),
            api: None,
        }
    }

    #[test]
    fn debug_hides_token_and_round_trips() {
        let r = PrRequest::Enable {
            conv: "c".into(),
            settings: settings(),
        };
        assert!(!format!("{r:?}").contains("ghp_secret_value"));
        let f = frame::encode(&r).expect("encode");
        assert_eq!(
            frame::decode_frame::<PrRequest>(&f, frame::MAX_FRAME).expect("decode"),
            r
        );
        assert!(settings().check().is_ok());
        let mut bad = settings();
        bad.branch = "--force".into();
        assert!(bad.check().is_err());
    }

    #[test]
    fn slugs() {
        assert_eq!(
            branch_for("Add a README, please!"),
            "sam/add-a-readme-please"
        );
        assert_eq!(branch_for("!!!"), "sam/idea");
        assert!(branch_for(&"word ".repeat(50)).len() <= 44);
    }
}
