//! The nodes this client knows. A node is known by its NodeId first (what the connection
//! authenticates); the addresses in its ticket, and those it was reached at since, are hints
//! for dialling, completed by address lookup by NodeId when the client has discovery
//! configured (`discovery` in `$SAM_HOME/config.toml`, `SAM_DISCOVERY`).

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
    /// Direct addresses (`ip:port`) the node was reached at lately that its ticket does not
    /// name (found by address lookup after it moved), newest first, at most [`MAX_HINTS`].
    /// Dialled together with the ticket's addresses; a new ticket for the node clears them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

/// Most learnt address hints kept per node.
pub const MAX_HINTS: usize = 4;

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

    /// The ticket to dial the node with: the stored one, its direct addresses preceded by
    /// the learnt [`NodeEntry::hints`] (bounded by the ticket's own limit).
    pub fn ticket(&self) -> Result<Ticket> {
        let mut t = self.stored_ticket()?;
        let mut direct = Vec::with_capacity(self.hints.len() + t.addr.direct.len());
        for h in self.hints.iter().take(MAX_HINTS) {
            let a: std::net::SocketAddr = h.parse().with_context(|| {
                format!("stored address hint {h:?} of node {} is damaged", self.name)
            })?;
            if !direct.contains(&a) {
                direct.push(a);
            }
        }
        for a in t.addr.direct {
            if !direct.contains(&a) {
                direct.push(a);
            }
        }
        direct.truncate(sam_protocol::ticket::MAX_DIRECT_ADDRS);
        t.addr.direct = direct;
        Ok(t)
    }

    /// The ticket as it was given (without learnt hints).
    pub fn stored_ticket(&self) -> Result<Ticket> {
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
            // A new ticket is the node's word on where it is now.
            e.hints.clear();
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
            hints: Vec::new(),
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

    /// Records that node `id` was just reached, authenticated, at direct address `addr`: kept
    /// as a hint when its ticket does not name it (newest first, at most [`MAX_HINTS`]).
    /// Returns whether the book changed.
    pub fn learn_addr(&mut self, id: &str, addr: std::net::SocketAddr) -> bool {
        let Some(e) = self.nodes.iter_mut().find(|e| e.id == id) else {
            return false;
        };
        if e.stored_ticket()
            .is_ok_and(|t| t.addr.direct.contains(&addr))
        {
            return false;
        }
        let text = addr.to_string();
        if e.hints.first() == Some(&text) {
            return false;
        }
        e.hints.retain(|h| h != &text);
        e.hints.insert(0, text);
        e.hints.truncate(MAX_HINTS);
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use sam_protocol::NodeAddr;

    fn ticket(direct: &[&str]) -> Ticket {
        Ticket::new(NodeAddr {
            id: sam_protocol::SecretKey::generate().node_id(),
            direct: direct.iter().map(|a| a.parse().expect("addr")).collect(),
            relay: None,
        })
    }

    #[test]
    fn learnt_addresses_are_hints_dialled_with_the_ticket_and_bounded() {
        let mut book = NodeBook::default();
        let t = ticket(&["10.0.0.3:7447"]);
        let name = book.upsert(&t, Some("box")).expect("upsert");
        let id = t.addr.id.to_string();
        // An address the ticket names is not a hint.
        assert!(!book.learn_addr(&id, "10.0.0.3:7447".parse().expect("a")));
        assert!(book.learn_addr(&id, "10.0.0.4:7448".parse().expect("a")));
        assert!(!book.learn_addr(&id, "10.0.0.4:7448".parse().expect("a")));
        let e = book.find(Some(&name)).expect("entry");
        let dial = e.ticket().expect("ticket");
        assert_eq!(dial.addr.id, t.addr.id, "the NodeId is the ticket's");
        assert_eq!(
            dial.addr.direct,
            vec![
                "10.0.0.4:7448".parse::<std::net::SocketAddr>().expect("a"),
                "10.0.0.3:7447".parse().expect("a")
            ]
        );
        assert_eq!(e.stored_ticket().expect("stored"), t);
        for port in 1..=10u16 {
            book.learn_addr(&id, format!("10.0.1.1:{port}").parse().expect("a"));
        }
        let e = book.find(Some(&name)).expect("entry");
        assert_eq!(e.hints.len(), MAX_HINTS);
        assert_eq!(e.hints[0], "10.0.1.1:10");
        // A hint for a node not in the book changes nothing.
        assert!(!book.learn_addr(&"ab".repeat(32), "10.0.0.9:1".parse().expect("a")));
        // A new ticket for the node is its word on where it is: hints go.
        book.upsert(&t, None).expect("again");
        assert!(book.find(Some(&name)).expect("entry").hints.is_empty());
    }

    #[test]
    fn a_damaged_hint_is_a_clear_error() {
        let mut book = NodeBook::default();
        let t = ticket(&[]);
        book.upsert(&t, Some("box")).expect("upsert");
        book.nodes[0].hints = vec!["not an address".into()];
        let err = book.nodes[0].ticket().expect_err("damaged");
        assert!(format!("{err:#}").contains("hint"), "{err:#}");
        // Saved and read back as it is: the damage is reported when the node is dialled.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nodes.toml");
        book.save(&path).expect("save");
        let back = NodeBook::load(&path).expect("load");
        assert_eq!(back.nodes[0].hints, vec!["not an address"]);
    }
}
