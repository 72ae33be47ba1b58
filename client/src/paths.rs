//! Every file the client reads or writes, under `SAM_HOME` (default `~/.sam`).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// File locations of one client.
#[derive(Debug, Clone)]
pub struct ClientPaths {
    pub home: PathBuf,
}

impl ClientPaths {
    /// From `SAM_HOME`, or `~/.sam`.
    pub fn from_env() -> Result<Self> {
        if let Some(h) = std::env::var_os("SAM_HOME").filter(|h| !h.is_empty()) {
            return Ok(Self::new(h));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "neither SAM_HOME nor HOME is set: set SAM_HOME to a directory for SAM's files",
        )?;
        Ok(Self::new(PathBuf::from(home).join(".sam")))
    }

    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    /// This peer's secret key (`0600`).
    pub fn key(&self) -> PathBuf {
        self.home.join("identity.key")
    }

    /// The client's settings (`relays`), optional.
    pub fn config(&self) -> PathBuf {
        self.home.join("config.toml")
    }

    /// Known nodes and their tickets (`0600`: tickets carry capabilities).
    pub fn nodes(&self) -> PathBuf {
        self.home.join("nodes.toml")
    }

    /// The local node started by `sam up`.
    pub fn local_node(&self) -> PathBuf {
        self.home.join("node")
    }

    /// Local replicas of conversation documents.
    pub fn docs(&self) -> PathBuf {
        self.home.join("docs")
    }

    /// Where this client records the workspaces it creates (`0600`): the only ones whose
    /// git credential requests it answers (`crate::made`).
    pub fn made_workspaces(&self) -> PathBuf {
        self.home.join("workspaces.json")
    }

    /// Loads this peer's key, creating it on first use. The process acts as this peer from
    /// now on: the workspaces it creates are recorded under this home (`crate::made`).
    pub fn identity(&self) -> Result<sam_protocol::SecretKey> {
        crate::made::set_home(&self.home);
        sam_protocol::SecretKey::load_or_create(&self.key())
            .with_context(|| format!("load identity from {}", self.key().display()))
    }
}
