//! Requests about the agents that answer conversations (wrapped in `Request::Agent`).
//!
//! Prompts themselves are not here: a prompt is a `queued` user message written into the
//! conversation document (by the node or by any replica, even offline). These requests cover
//! what needs the node right now: cancelling a turn, answering a permission request (also
//! possible by writing the answer into a replica), the permission policy, and handing the
//! node the API keys an agent needs — kept in the node's memory only.

use serde::{Deserialize, Serialize};

use crate::capability::Role;

/// Most environment variables in one [`AgentRequest::Credentials`].
pub const MAX_CREDENTIALS: usize = 32;
/// Longest credential value.
pub const MAX_CREDENTIAL_VALUE: usize = 16 * 1024;

/// Per-conversation permission policy (stored in the conversation document as `policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PermissionPolicy {
    /// Every permission request waits for a collaborator (default).
    #[default]
    Ask,
    /// Read-only tool calls (`read`, `search`, `fetch`, `think`) are allowed at once.
    AllowReads,
    /// Every request is allowed at once (autonomous ideas).
    AllowAll,
}

impl PermissionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionPolicy::Ask => "ask",
            PermissionPolicy::AllowReads => "allow-reads",
            PermissionPolicy::AllowAll => "allow-all",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ask" => Some(PermissionPolicy::Ask),
            "allow-reads" => Some(PermissionPolicy::AllowReads),
            "allow-all" => Some(PermissionPolicy::AllowAll),
            _ => None,
        }
    }
}

impl std::fmt::Display for PermissionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Environment for agent processes. `Debug` never prints the values.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Credentials {
    /// `(NAME, value)` pairs, e.g. `("ANTHROPIC_API_KEY", "sk-…")`.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Credentials")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks names and sizes; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.env.len() > MAX_CREDENTIALS {
            return Err(format!(
                "{} credentials given; at most {MAX_CREDENTIALS}",
                self.env.len()
            ));
        }
        for (k, v) in &self.env {
            let ok_name = !k.is_empty()
                && k.len() <= 128
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok_name {
                return Err(format!(
                    "{k:?} is not an environment variable name (A-Z, 0-9, _)"
                ));
            }
            if k == "PATH" || k.starts_with("LD_") {
                return Err(format!("{k} cannot be set for an agent"));
            }
            if v.len() > MAX_CREDENTIAL_VALUE || v.contains('\0') {
                return Err(format!("the value of {k} is too long or holds a NUL byte"));
            }
        }
        Ok(())
    }
}

/// Requests about agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Cancels the running turn of a conversation (ACP `session/cancel`).
    Cancel { conv: String },
    /// Answers a permission request; the answer is written into the document.
    Permit {
        conv: String,
        message: String,
        option: String,
    },
    /// Sets the conversation's permission policy (written into the document).
    SetPolicy {
        conv: String,
        policy: PermissionPolicy,
    },
    /// Environment for the agent of one conversation, or of every conversation of one
    /// workspace. Kept in memory only; replaces earlier credentials for the same target.
    Credentials {
        conv: Option<String>,
        workspace: Option<String>,
        credentials: Credentials,
    },
    /// What the node's agent for a conversation is doing.
    Status { conv: String },
}

impl AgentRequest {
    pub fn required_role(&self) -> Role {
        match self {
            AgentRequest::Status { .. } => Role::Viewer,
            _ => Role::Collaborator,
        }
    }

    /// The conversation the request is about, if one.
    pub fn conversation(&self) -> Option<&str> {
        match self {
            AgentRequest::Cancel { conv }
            | AgentRequest::Permit { conv, .. }
            | AgentRequest::SetPolicy { conv, .. }
            | AgentRequest::Status { conv } => Some(conv),
            AgentRequest::Credentials { conv, .. } => conv.as_deref(),
        }
    }
}

/// What the node's agent for one conversation is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// An agent process is running.
    pub running: bool,
    /// The prompt being answered, if any.
    pub turn: Option<String>,
    /// Permission messages waiting for an answer.
    pub waiting_permissions: Vec<String>,
    /// Queued prompts.
    pub queued: u32,
}

/// Answers to [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentResponse {
    /// A cancel was sent; `turn` is the prompt being cancelled (None: nothing was running).
    Cancelled {
        turn: Option<String>,
    },
    Status(AgentStatus),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn credentials_debug_hides_values() {
        let c = Credentials {
            env: vec![("ANTHROPIC_API_KEY".into(), "sk-secret-123".into())],
        };
        let s = format!(
            "{:?}",
            AgentRequest::Credentials {
                conv: None,
                workspace: Some("w".into()),
                credentials: c.clone()
            }
        );
        assert!(s.contains("ANTHROPIC_API_KEY"));
        assert!(!s.contains("sk-secret-123"));
        assert!(c.check().is_ok());
    }

    #[test]
    fn bad_credentials_refused() {
        for name in ["", "lower", "1ABC", "PATH", "LD_PRELOAD", "A B"] {
            let c = Credentials {
                env: vec![(name.into(), "v".into())],
            };
            assert!(c.check().is_err(), "{name}");
        }
    }

    #[test]
    fn round_trip_and_roles() {
        let r = AgentRequest::Permit {
            conv: "c".into(),
            message: "m".into(),
            option: "o".into(),
        };
        let f = frame::encode(&r).expect("encode");
        assert_eq!(
            frame::decode_frame::<AgentRequest>(&f, frame::MAX_FRAME).expect("decode"),
            r
        );
        assert_eq!(r.required_role(), Role::Collaborator);
        assert_eq!(
            AgentRequest::Status { conv: "c".into() }.required_role(),
            Role::Viewer
        );
        for p in [
            PermissionPolicy::Ask,
            PermissionPolicy::AllowReads,
            PermissionPolicy::AllowAll,
        ] {
            assert_eq!(PermissionPolicy::parse(p.as_str()), Some(p));
        }
    }
}
