//! Setting up the four real ACP adapters (installed by `bootstrap/agents/install-agents.sh`)
//! against the fake LLM: per agent a throw-away HOME, its config files, the environment
//! that points it at the fake, and the planted API key (given as a credential).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sam_node::fake_llm::{FakeLlm, Rule, Script, WriteFile};

pub const AGENTS: &[&str] = &["claude", "codex", "gemini", "vibe"];

/// The prompt that makes the fake LLM call the agent's write tool.
pub const WRITE_PROMPT: &str = "Please write the greeting file for SAM.";
/// The final text after the tool result.
pub const AFTER_TOOL: &str = "All done: the greeting file is written.";

/// Where the adapters are installed: `SAM_AGENTS_DIR`, else the install script's default.
pub fn agents_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SAM_AGENTS_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache.join("sam/agents")
}

/// The adapter's executable name in `agents_dir()/bin`.
pub fn bin_name(agent: &str) -> &'static str {
    match agent {
        "claude" => "claude-agent-acp",
        "codex" => "codex-acp",
        "gemini" => "gemini",
        "vibe" => "vibe-acp",
        other => panic!("unknown agent {other}"),
    }
}

/// `agents_dir()/bin`, after checking that `agent` is installed there. Panics (never skips)
/// with what to run when it is not.
pub fn require_installed(agent: &str) -> PathBuf {
    let bin = agents_dir().join("bin");
    let exe = bin.join(bin_name(agent));
    assert!(
        exe.exists(),
        "the {agent} adapter is not installed at {}: run `bootstrap/agents/install-agents.sh {agent}` \
         (scripts/test.sh does; SAM_AGENTS_DIR picks another prefix)",
        exe.display()
    );
    bin
}

/// The planted key for `agent`: tests check it reaches the fake LLM and nothing else.
pub fn planted_key(agent: &str) -> String {
    format!("sam-planted-{agent}-key-7f3a9c")
}

/// The credential variable a user would give for `agent`.
pub fn key_var(agent: &str) -> &'static str {
    match agent {
        "claude" => "ANTHROPIC_API_KEY",
        "codex" => "OPENAI_API_KEY",
        "gemini" => "GEMINI_API_KEY",
        "vibe" => "MISTRAL_API_KEY",
        other => panic!("unknown agent {other}"),
    }
}

/// A script: `WRITE_PROMPT` makes one tool call writing `path`, then `AFTER_TOOL`.
pub fn write_script(path: &Path, content: &str) -> Script {
    Script {
        text: Some("Hello from the fake LLM.".into()),
        rules: vec![Rule {
            when: "greeting file".into(),
            text: Some("Writing the file now.".into()),
            write: Some(WriteFile {
                path: path.to_string_lossy().into_owned(),
                content: content.into(),
            }),
            after: Some(AFTER_TOOL.into()),
        }],
    }
}

/// How to run one adapter against the fake LLM.
pub struct AgentSetup {
    /// Extra arguments after the adapter's command (Codex's provider flags).
    pub args: Vec<String>,
    /// Non-secret environment (HOME, base URLs, config homes, PATH with the adapters).
    pub env: Vec<(String, String)>,
    /// The credential (the planted key), given like a user's key.
    pub credentials: Vec<(String, String)>,
}

/// Writes `agent`'s config files under `home` (a fresh directory) and returns how to run it
/// against `llm`. Mirrors what ARCHITECTURE.md ("Agents") documents.
pub fn setup(agent: &str, home: &Path, llm: &FakeLlm) -> AgentSetup {
    let bin = require_installed(agent);
    let base = llm.base_url();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
    );
    let mut env = vec![
        ("HOME".to_string(), home.display().to_string()),
        ("PATH".to_string(), path),
    ];
    let mut args = Vec::new();
    match agent {
        "claude" => {
            env.push(("ANTHROPIC_BASE_URL".into(), base));
        }
        "codex" => {
            let codex_home = home.join(".codex");
            std::fs::create_dir_all(&codex_home).expect("codex home");
            env.push(("CODEX_HOME".into(), codex_home.display().to_string()));
            // The same flags as `sam_node::agent::registry::codex_provider_args`.
            args = [
                "model_provider=sam".to_string(),
                "model_providers.sam.name=sam".to_string(),
                format!("model_providers.sam.base_url={base}/v1"),
                "model_providers.sam.wire_api=responses".to_string(),
                format!("model_providers.sam.env_key={}", key_var(agent)),
                // A model Codex knows: an unknown one drops the apply_patch tool.
                "model=gpt-5.3-codex".to_string(),
            ]
            .into_iter()
            .flat_map(|c| ["-c".to_string(), c])
            .collect();
        }
        "gemini" => {
            let dir = home.join(".gemini");
            std::fs::create_dir_all(&dir).expect("gemini dir");
            std::fs::write(dir.join("settings.json"), GEMINI_SETTINGS).expect("gemini settings");
            env.push(("GOOGLE_GEMINI_BASE_URL".into(), base));
        }
        "vibe" => {
            let dir = home.join(".vibe");
            std::fs::create_dir_all(&dir).expect("vibe home");
            std::fs::write(
                dir.join("config.toml"),
                vibe_config(&format!("{base}/v1"), key_var(agent)),
            )
            .expect("vibe config");
            env.push(("VIBE_HOME".into(), dir.display().to_string()));
        }
        other => panic!("unknown agent {other}"),
    }
    AgentSetup {
        args,
        env,
        credentials: vec![(key_var(agent).to_string(), planted_key(agent))],
    }
}

/// `~/.gemini/settings.json`: no usage statistics, telemetry or update checks.
pub const GEMINI_SETTINGS: &str = r#"{
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false }
}
"#;

/// `$VIBE_HOME/config.toml` with one OpenAI-style provider at `api_base`.
pub fn vibe_config(api_base: &str, key_var: &str) -> String {
    format!(
        r#"active_model = "sam"
enable_telemetry = false
enable_update_checks = false
enable_auto_update = false

[[providers]]
name = "sam"
api_base = "{api_base}"
api_key_env_var = "{key_var}"
api_style = "openai"
backend = "generic"

[[models]]
name = "sam-model"
provider = "sam"
alias = "sam"
"#
    )
}

/// Checks what the fake LLM saw for one finished turn: a tool call, its result coming
/// back, and the planted key in a header of every main request.
pub fn check_requests(agent: &str, llm: &FakeLlm) {
    let reqs = llm.requests();
    let summary: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.answer))
        .collect();
    assert!(
        reqs.iter().any(|r| r.answer == "tool"),
        "{agent}: no tool call was asked for: {summary:#?}"
    );
    assert!(
        reqs.iter().any(|r| r.answer == "after-tool"),
        "{agent}: the tool result never came back: {summary:#?}"
    );
    let key = planted_key(agent);
    for r in reqs
        .iter()
        .filter(|r| r.answer == "tool" || r.answer == "after-tool")
    {
        assert!(
            r.has_header_value(&key),
            "{agent}: {} {} arrived without the planted key",
            r.method,
            r.path
        );
    }
}
