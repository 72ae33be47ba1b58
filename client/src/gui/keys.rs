//! Agent API keys: in the OS keyring (Secret Service over D-Bus on Linux, pure Rust),
//! or, where no keyring service runs, in `$SAM_HOME/agent-keys.toml` (mode 0600).
//! Blocking calls: run them off the UI thread (the backend uses `spawn_blocking`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::state::KeysView;
use crate::paths::ClientPaths;

/// The keyring service name.
const SERVICE: &str = "sam";

/// API key variables of the agents SAM knows, then the speech API's key (voice: read by
/// `voice::config::api_key` from the same keyring service or file, never sent to agents).
pub const KEY_NAMES: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "MISTRAL_API_KEY",
    crate::voice::config::API_KEY_NAME,
];

/// The variables an agent reads.
pub fn agent_keys(agent: &str) -> &'static [&'static str] {
    match agent {
        "claude" => &KEY_NAMES[0..1],
        "codex" => &KEY_NAMES[1..2],
        "gemini" => &KEY_NAMES[2..3],
        "vibe" => &KEY_NAMES[3..4],
        _ => &[],
    }
}

fn fallback_path(paths: &ClientPaths) -> PathBuf {
    paths.home.join("agent-keys.toml")
}

fn keyring_disabled() -> bool {
    std::env::var_os("SAM_NO_KEYRING").is_some()
        || (std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && std::env::var_os("XDG_RUNTIME_DIR").is_none())
}

fn keyring_set(name: &str, value: &str) -> Result<(), String> {
    if keyring_disabled() {
        return Err("no D-Bus session bus".into());
    }
    keyring::Entry::new(SERVICE, name)
        .and_then(|e| e.set_password(value))
        .map_err(|e| e.to_string())
}

fn keyring_get(name: &str) -> Result<Option<String>, String> {
    if keyring_disabled() {
        return Err("no D-Bus session bus".into());
    }
    match keyring::Entry::new(SERVICE, name).and_then(|e| e.get_password()) {
        Ok(v) => Ok(Some(v)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn read_file(paths: &ClientPaths) -> Result<BTreeMap<String, String>> {
    let p = fallback_path(paths);
    match std::fs::read_to_string(&p) {
        Ok(s) => toml::from_str(&s).with_context(|| format!("parse {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

fn write_file(paths: &ClientPaths, keys: &BTreeMap<String, String>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = fallback_path(paths);
    std::fs::create_dir_all(&paths.home)?;
    let tmp = p.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(toml::to_string(keys)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("write {}", p.display()))?;
    Ok(())
}

/// Saves a key; returns where it went (and why, for the fallback).
pub fn save(paths: &ClientPaths, name: &str, value: &str) -> Result<String> {
    let probe = sam_protocol::agent::Credentials {
        env: vec![(name.to_string(), value.to_string())],
    };
    probe.check().map_err(anyhow::Error::msg)?;
    match keyring_set(name, value) {
        Ok(()) => Ok("saved in the OS keyring".into()),
        Err(why) => {
            let mut keys = read_file(paths)?;
            keys.insert(name.to_string(), value.to_string());
            write_file(paths, &keys)?;
            Ok(format!(
                "no keyring service is running ({why}); saved in {} (readable only by you)",
                fallback_path(paths).display()
            ))
        }
    }
}

/// Reads a key from the keyring, else the fallback file.
pub fn get(paths: &ClientPaths, name: &str) -> Option<String> {
    if let Ok(Some(v)) = keyring_get(name) {
        return Some(v);
    }
    read_file(paths).ok()?.remove(name)
}

/// Where keys live and which are set.
pub fn view(paths: &ClientPaths) -> KeysView {
    let probe = keyring_get(KEY_NAMES[0]);
    let storage = match &probe {
        Ok(_) => "OS keyring (Secret Service)".to_string(),
        Err(why) => format!(
            "No keyring service is running ({why}): keys are kept in {} with mode 0600.",
            fallback_path(paths).display()
        ),
    };
    let file = read_file(paths).unwrap_or_default();
    let keys = KEY_NAMES
        .iter()
        .map(|k| {
            let in_ring = probe.is_ok() && matches!(keyring_get(k), Ok(Some(_)));
            (k.to_string(), in_ring || file.contains_key(*k))
        })
        .collect();
    KeysView { storage, keys }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_file_is_private_and_round_trips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let paths = ClientPaths::new(tmp.path());
        let mut keys = BTreeMap::new();
        keys.insert("ANTHROPIC_API_KEY".to_string(), "sk-test".to_string());
        write_file(&paths, &keys).expect("write");
        let meta = std::fs::metadata(fallback_path(&paths)).expect("meta");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_file(&paths).expect("read"), keys);
    }

    #[test]
    fn bad_names_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let paths = ClientPaths::new(tmp.path());
        assert!(save(&paths, "bad name", "x").is_err());
        assert!(save(&paths, "LD_PRELOAD", "x").is_err());
    }
}
