//! The nodes this client knows: name, NodeId and the ticket to reach it.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sam_protocol::{NodeId, Ticket};
use serde::{Deserialize, Serialize};

/// One known node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub id: String,
    pub ticket: String,
    /// The node owner's NodeId, learnt at the first connection (lets this client
    /// check capabilities for that node when it serves history to teammates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Unix seconds since when every attempt to reach the node failed (honest
    /// status: "node unreachable since …", never "working").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
}

impl NodeEntry {
    /// "unreachable since 12 min ago" when the node was not reached lately.
    pub fn unreachable_note(&self, now: u64) -> Option<String> {
        let since = self.unreachable_since?;
        let ago = now.saturating_sub(since);
        let ago = match ago {
            0..=59 => format!("{ago} s"),
            60..=3599 => format!("{} min", ago / 60),
            _ => format!("{} h", ago / 3600),
        };
        Some(format!("node {} unreachable since {ago} ago", self.name))
    }

    pub fn ticket(&self) -> Result<Ticket> {
        self.ticket
            .parse()
            .with_context(|| format!("stored ticket of node {} is damaged", self.name))
    }

    pub fn node_id(&self) -> Result<NodeId> {
        self.id
            .parse()
            .with_context(|| format!("stored id of node {} is damaged", self.name))
    }
}

/// `nodes.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeBook {
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

impl NodeBook {
    pub fn load(path: &Path) -> Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is damaged; fix or remove it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serialise node book")?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Adds or replaces the node with the same id (keeping its name unless `name`
    /// is given). Returns the entry's name.
    pub fn upsert(&mut self, ticket: &Ticket, name: Option<&str>) -> Result<String> {
        let id = ticket.addr.id.to_string();
        if let Some(n) = name {
            validate_name(n)?;
            if self.nodes.iter().any(|e| e.name == n && e.id != id) {
                bail!(
                    "another node is already called {n:?}: pick another --name or `sam nodes rm {n}`"
                );
            }
        }
        if let Some(e) = self.nodes.iter_mut().find(|e| e.id == id) {
            e.ticket = ticket.to_string();
            if let Some(n) = name {
                e.name = n.to_string();
            }
            return Ok(e.name.clone());
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => self.free_name(&id),
        };
        self.nodes.push(NodeEntry {
            name: name.clone(),
            id,
            ticket: ticket.to_string(),
            owner: None,
            unreachable_since: None,
        });
        Ok(name)
    }

    fn free_name(&self, id: &str) -> String {
        let base = format!("node-{}", &id[..6.min(id.len())]);
        let mut name = base.clone();
        let mut i = 2;
        while self.nodes.iter().any(|e| e.name == name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        name
    }

    /// Finds a node by name, full id or unique id prefix; with no query, the only node.
    pub fn find(&self, query: Option<&str>) -> Result<&NodeEntry> {
        let Some(q) = query else {
            return match self.nodes.as_slice() {
                [one] => Ok(one),
                [] => bail!(
                    "no nodes known yet: `sam up` starts a local one, `sam connect <ticket>` adds one"
                ),
                _ => bail!(
                    "several nodes are known ({}): name one",
                    self.nodes
                        .iter()
                        .map(|e| e.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        };
        if let Some(e) = self.nodes.iter().find(|e| e.name == q || e.id == q) {
            return Ok(e);
        }
        let matches: Vec<_> = self.nodes.iter().filter(|e| e.id.starts_with(q)).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => bail!("no node called {q:?}: `sam nodes ls` lists them"),
            _ => bail!("{q:?} matches several nodes: give more of the id"),
        }
    }

    /// Records the owner of node `id`.
    pub fn set_owner(&mut self, id: &str, owner: &sam_protocol::NodeId) {
        if let Some(e) = self.nodes.iter_mut().find(|e| e.id == id) {
            e.owner = Some(owner.to_string());
        }
    }

    /// Records whether node `id` answered just now.
    pub fn set_reachable(&mut self, id: &str, reachable: bool, now: u64) {
        if let Some(e) = self.nodes.iter_mut().find(|e| e.id == id) {
            if reachable {
                e.unreachable_since = None;
            } else {
                e.unreachable_since.get_or_insert(now);
            }
        }
    }

    /// Removes the node with exactly this id, if it is in the book (a deleted machine).
    pub fn forget_id(&mut self, id: &str) -> Option<NodeEntry> {
        let pos = self.nodes.iter().position(|e| e.id == id)?;
        Some(self.nodes.remove(pos))
    }

    /// Removes a node; returns it.
    pub fn remove(&mut self, query: &str) -> Result<NodeEntry> {
        let id = self.find(Some(query))?.id.clone();
        let pos = self
            .nodes
            .iter()
            .position(|e| e.id == id)
            .context("node vanished")?;
        Ok(self.nodes.remove(pos))
    }
}

fn validate_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("node name {n:?} must be 1-64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}
