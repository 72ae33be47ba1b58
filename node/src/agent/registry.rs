//! Which command runs which agent, and the adapter versions SAM pins.
//!
//! The versions match `bootstrap/agents/versions.env`, which the install scripts source
//! (a unit test keeps the two in step).

use super::AgentError;

/// npm `@agentclientprotocol/claude-agent-acp`.
pub const CLAUDE_PKG: &str = "@agentclientprotocol/claude-agent-acp";
pub const CLAUDE_VERSION: &str = "0.49.0";
/// npm `@zed-industries/codex-acp`.
pub const CODEX_PKG: &str = "@zed-industries/codex-acp";
pub const CODEX_VERSION: &str = "0.16.0";
/// npm `@google/gemini-cli`.
pub const GEMINI_PKG: &str = "@google/gemini-cli";
pub const GEMINI_VERSION: &str = "0.61.0";
/// PyPI `mistral-vibe` (Python ≥ 3.12).
pub const VIBE_PKG: &str = "mistral-vibe";
pub const VIBE_VERSION: &str = "3.0.2";

/// Environment variable names a peer may set for agents (`AgentRequest::Credentials`):
/// the keys and LLM addresses of the known agents. The node's owner may allow more
/// (`agent_env` in the node's `config.toml`); any other name (`LD_PRELOAD`, `PATH`,
/// `NODE_OPTIONS`, `BASH_ENV`, `GIT_SSH_COMMAND`, …) is refused, since it would let a
/// peer run code in the agent's process.
pub const AGENT_ENV: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "MISTRAL_API_KEY",
];

/// May a peer set `name` for an agent? Known agent keys, plus `extra` (the owner's list).
pub fn env_allowed(name: &str, extra: &[String]) -> bool {
    AGENT_ENV.contains(&name) || extra.iter().any(|e| e == name)
}

/// The agents SAM knows by name.
pub const KNOWN: &[&str] = &["claude", "codex", "gemini", "vibe", "custom"];

/// How to start one agent: its argv and the environment it always gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub argv: Vec<String>,
    /// Fixed settings (telemetry off, …); credentials come on top.
    pub env: Vec<(String, String)>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The command for `agent`; `custom` uses `agent_cmd` (split like a shell would, without
/// expansions). `extra_args` are appended (e.g. Codex `-c` provider flags).
pub fn resolve(
    agent: &str,
    agent_cmd: Option<&str>,
    extra_args: &[String],
) -> Result<AgentSpec, AgentError> {
    let quiet = [
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DO_NOT_TRACK", "1"),
    ];
    let mut spec = match agent {
        "claude" => AgentSpec {
            argv: strings(&["claude-agent-acp"]),
            env: vec![
                // The bundled CLI accepts only exactly "1" when running as root.
                ("IS_SANDBOX".into(), "1".into()),
                (
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
                    "1".into(),
                ),
            ],
        },
        "codex" => AgentSpec {
            argv: strings(&["codex-acp"]),
            env: Vec::new(),
        },
        "gemini" => AgentSpec {
            argv: strings(&["gemini", "--acp", "--skip-trust"]),
            env: Vec::new(),
        },
        "vibe" => AgentSpec {
            argv: strings(&["vibe-acp"]),
            env: Vec::new(),
        },
        "custom" | "" => {
            let cmd = agent_cmd.ok_or_else(|| {
                AgentError::Config(
                    "this conversation uses a custom agent but has no agent command: create it with `sam convs new --agent-cmd \"CMD\"`".into(),
                )
            })?;
            AgentSpec {
                argv: split_command(cmd)?,
                env: Vec::new(),
            }
        }
        other => {
            return Err(AgentError::Config(format!(
                "unknown agent {other:?}: use one of {} (or --agent-cmd)",
                KNOWN.join(", ")
            )));
        }
    };
    spec.env
        .extend(quiet.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spec.argv.extend(extra_args.iter().cloned());
    Ok(spec)
}

/// Codex `-c` flags pointing it at an OpenAI-compatible provider (`responses` wire API)
/// whose key is in the environment variable `env_key`.
pub fn codex_provider_args(base_url: &str, env_key: &str, model: &str) -> Vec<String> {
    [
        "model_provider=sam".to_string(),
        "model_providers.sam.name=sam".to_string(),
        format!("model_providers.sam.base_url={base_url}"),
        "model_providers.sam.wire_api=responses".to_string(),
        format!("model_providers.sam.env_key={env_key}"),
        format!("model={model}"),
    ]
    .into_iter()
    .flat_map(|c| ["-c".to_string(), c])
    .collect()
}

/// Splits a command line on whitespace, honouring single and double quotes and
/// backslashes (no variables, globs or other shell syntax).
pub fn split_command(cmd: &str) -> Result<Vec<String>, AgentError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(AgentError::Config(format!(
            "unbalanced quote in agent command {cmd:?}"
        )));
    }
    if in_word {
        out.push(cur);
    }
    if out.is_empty() {
        return Err(AgentError::Config("the agent command is empty".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_keys_and_the_owners_names_are_agent_env() {
        let extra = vec!["MY_PROXY_TOKEN".to_string()];
        for ok in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "MISTRAL_API_KEY",
            "MY_PROXY_TOKEN",
        ] {
            assert!(env_allowed(ok, &extra), "{ok}");
        }
        for bad in [
            "LD_PRELOAD",
            "PATH",
            "NODE_OPTIONS",
            "BASH_ENV",
            "GIT_SSH_COMMAND",
            "HOME",
        ] {
            assert!(!env_allowed(bad, &extra), "{bad}");
        }
    }

    #[test]
    fn split() {
        assert_eq!(
            split_command(r#"my-agent --x "a b" 'c d' e\ f"#).expect("split"),
            vec!["my-agent", "--x", "a b", "c d", "e f"]
        );
        assert!(split_command("a 'b").is_err());
        assert!(split_command("   ").is_err());
    }

    #[test]
    fn known_agents() {
        assert_eq!(
            resolve("gemini", None, &[]).expect("gemini").argv,
            ["gemini", "--acp", "--skip-trust"]
        );
        assert!(resolve("custom", None, &[]).is_err());
        assert_eq!(
            resolve("custom", Some("x --y"), &[]).expect("custom").argv,
            ["x", "--y"]
        );
        assert!(resolve("nope", None, &[]).is_err());
        let args = codex_provider_args("http://127.0.0.1:1/v1", "FAKE_API_KEY", "gpt-5.3-codex");
        assert_eq!(args.len(), 12);
    }

    #[test]
    fn versions_match_bootstrap() {
        let env = include_str!("../../../bootstrap/agents/versions.env");
        for (k, v) in [
            ("SAM_CLAUDE_VERSION", CLAUDE_VERSION),
            ("SAM_CODEX_VERSION", CODEX_VERSION),
            ("SAM_GEMINI_VERSION", GEMINI_VERSION),
            ("SAM_VIBE_VERSION", VIBE_VERSION),
            ("SAM_CLAUDE_PKG", CLAUDE_PKG),
            ("SAM_CODEX_PKG", CODEX_PKG),
            ("SAM_GEMINI_PKG", GEMINI_PKG),
            ("SAM_VIBE_PKG", VIBE_PKG),
        ] {
            assert!(env.contains(&format!("{k}={v}\n")), "{k}={v}");
        }
    }
}
