//! The `hosts` history: which node and workspace served the conversation from when, how each
//! one stopped (moved away, workspace removed, node lost) and what became of its uncommitted
//! work. Written by `sam move` (a client) and by nodes (when they start serving a
//! conversation, and after they delete its workspace).

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc};

use super::Conversation;
use super::validate::node_id;
use crate::schema::{Host, HostEnd, MoveTo, Role, Status};
use crate::{CrdtError, MessageId, SchemaError, access, ids};

/// Longest `repo`, `branch`, `workspace` or `carried` string written.
pub const MAX_HOST_FIELD: usize = 4096;

/// The `hosts` field (absent or null: empty).
pub(crate) fn read_hosts<D: ReadDoc>(doc: &D) -> Result<Vec<Host>, SchemaError> {
    let Some(list) = access::opt_obj(doc, &ROOT, "hosts", ObjType::List, "")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for i in 0..doc.length(&list) {
        let e = access::list_obj(doc, &list, i, ObjType::Map, "hosts")?;
        let p = format!("hosts[{i}]");
        let end = match access::opt_str(doc, &e, "end", &p)? {
            None => None,
            Some(s) => Some(HostEnd::parse(&s).ok_or_else(|| {
                SchemaError::new(
                    format!("{p}.end"),
                    format!("unknown value {s:?} (expected {})", HostEnd::expected()),
                )
            })?),
        };
        out.push(Host {
            node: node_id(doc, &e, "node", &p)?,
            workspace: access::req_str(doc, &e, "workspace", &p)?,
            since: access::req_int(doc, &e, "since", &p)?,
            repo: access::opt_str(doc, &e, "repo", &p)?,
            branch: access::opt_str(doc, &e, "branch", &p)?,
            ended_at: access::opt_int(doc, &e, "ended_at", &p)?,
            end,
            carried: access::opt_str(doc, &e, "carried", &p)?,
        });
    }
    Ok(out)
}

fn check_len(what: &str, s: &str) -> Result<(), CrdtError> {
    if s.len() > MAX_HOST_FIELD {
        return Err(CrdtError::InvalidArgument(format!(
            "{what} is longer than {MAX_HOST_FIELD} bytes"
        )));
    }
    Ok(())
}

fn check_host(node: &str, workspace: &str) -> Result<(), CrdtError> {
    ids::validate_node_id(node)?;
    if workspace.is_empty() {
        return Err(CrdtError::InvalidArgument("empty workspace id".into()));
    }
    check_len("workspace id", workspace)
}

impl Conversation {
    /// Appends a finished `system` message in one change (`"note"`): SAM telling everyone in
    /// the conversation what happened (a move, a teardown, how a new agent was seeded).
    pub fn append_note(&mut self, author: &str, text: &str) -> Result<MessageId, CrdtError> {
        self.insert_message(
            author,
            None,
            Role::System,
            text,
            Status::Done,
            "note",
            |_, _| Ok(()),
        )
    }

    /// The `hosts` history, oldest first (empty for documents that never recorded one: then
    /// `workspace` has served since `created_at`).
    pub fn hosts(&self) -> Vec<Host> {
        read_hosts(&self.doc).unwrap_or_default()
    }

    /// The host serving now: the last `hosts` entry when it names the current `workspace`,
    /// else one made up from `workspace` and `created_at`.
    pub fn current_host(&self) -> Host {
        let ws = self.workspace();
        match self.hosts().pop() {
            Some(h) if h.node == ws.node && h.workspace == ws.id => h,
            _ => Host {
                node: ws.node,
                workspace: ws.id,
                since: self.created_at(),
                repo: None,
                branch: None,
                ended_at: None,
                end: None,
                carried: None,
            },
        }
    }

    /// The hosts list, made (with the original host as its first entry) when missing.
    fn hosts_list(&mut self) -> Result<ObjId, CrdtError> {
        if let Some(l) = access::opt_obj(&self.doc, &ROOT, "hosts", ObjType::List, "")? {
            return Ok(l);
        }
        let first = self.current_host();
        let l = self.doc.put_object(ROOT, "hosts", ObjType::List)?;
        insert_host(self, &l, &first)?;
        Ok(l)
    }

    /// Records that `node`/`workspace` serves the conversation from now on (with what it
    /// knows of the repo and branch). Nothing changes when the last entry already says so
    /// and is still open; returns whether an entry was written.
    pub fn record_host(
        &mut self,
        author: &str,
        node: &str,
        workspace: &str,
        repo: Option<&str>,
        branch: Option<&str>,
    ) -> Result<bool, CrdtError> {
        check_host(node, workspace)?;
        for s in repo.iter().chain(branch.iter()) {
            check_len("repo/branch", s)?;
        }
        let hosts = self.hosts();
        if let Some(last) = hosts.last()
            && last.node == node
            && last.workspace == workspace
            && last.ended_at.is_none()
        {
            return Ok(false);
        }
        let now = self.now();
        let host = Host {
            node: node.into(),
            workspace: workspace.into(),
            since: now,
            repo: repo.map(Into::into),
            branch: branch.map(Into::into),
            ended_at: None,
            end: None,
            carried: None,
        };
        let ws = self.workspace();
        let already = hosts.is_empty() && ws.node == node && ws.id == workspace;
        self.mutate(author, "host", |c| {
            let existed = access::opt_obj(&c.doc, &ROOT, "hosts", ObjType::List, "")?.is_some();
            let l = c.hosts_list()?;
            // A fresh list already starts with the current workspace: fill in what we know.
            if !existed && already {
                let e = access::list_obj(&c.doc, &l, 0, ObjType::Map, "hosts")?;
                if let Some(r) = &host.repo {
                    c.doc.put(&e, "repo", r.as_str())?;
                }
                if let Some(b) = &host.branch {
                    c.doc.put(&e, "branch", b.as_str())?;
                }
                return Ok(());
            }
            insert_host(c, &l, &host)
        })?;
        Ok(true)
    }

    /// Moves the conversation to another node/workspace in one change (`"move"`): the
    /// current host's entry is closed with `end` and `carried`, `workspace` is set to the new
    /// one, and a new entry opens. Ids, messages, forks and shares are untouched.
    pub fn move_to(&mut self, author: &str, to: &MoveTo) -> Result<(), CrdtError> {
        check_host(&to.node, &to.workspace)?;
        for s in [&to.repo, &to.branch, &to.carried].into_iter().flatten() {
            check_len("repo/branch/carried", s)?;
        }
        let ws = self.workspace();
        if ws.node == to.node && ws.id == to.workspace {
            return Err(CrdtError::InvalidArgument(format!(
                "the conversation is already in workspace {} on that node",
                to.workspace
            )));
        }
        let now = self.now();
        self.mutate(author, "move", |c| {
            let l = c.hosts_list()?;
            close_last(c, &l, &ws.node, &ws.id, now, to.end, to.carried.as_deref())?;
            let w = access::req_obj(&c.doc, &ROOT, "workspace", ObjType::Map, "")?;
            c.doc.put(&w, "node", to.node.as_str())?;
            c.doc.put(&w, "id", to.workspace.as_str())?;
            insert_host(
                c,
                &l,
                &Host {
                    node: to.node.clone(),
                    workspace: to.workspace.clone(),
                    since: now,
                    repo: to.repo.clone(),
                    branch: to.branch.clone(),
                    ended_at: None,
                    end: None,
                    carried: None,
                },
            )
        })
    }

    /// Records that `node`/`workspace` stopped serving (e.g. its workspace was deleted):
    /// closes its last open entry (made first if the history is empty).
    pub fn end_host(
        &mut self,
        author: &str,
        node: &str,
        workspace: &str,
        end: HostEnd,
        carried: Option<&str>,
    ) -> Result<(), CrdtError> {
        check_host(node, workspace)?;
        if let Some(s) = carried {
            check_len("carried", s)?;
        }
        let now = self.now();
        self.mutate(author, "host_end", |c| {
            let l = c.hosts_list()?;
            if !close_last(c, &l, node, workspace, now, end, carried)? {
                return Err(CrdtError::InvalidArgument(format!(
                    "workspace {workspace} on node {} is not serving this conversation",
                    &node[..node.len().min(10)]
                )));
            }
            Ok(())
        })
    }
}

fn insert_host(c: &mut Conversation, l: &ObjId, h: &Host) -> Result<(), CrdtError> {
    let at = c.doc.length(l);
    let m = c.doc.insert_object(l, at, ObjType::Map)?;
    c.doc.put(&m, "node", h.node.as_str())?;
    c.doc.put(&m, "workspace", h.workspace.as_str())?;
    c.doc.put(&m, "since", h.since)?;
    for (k, v) in [("repo", &h.repo), ("branch", &h.branch)] {
        if let Some(v) = v {
            c.doc.put(&m, k, v.as_str())?;
        }
    }
    Ok(())
}

/// Closes the last open entry of `node`/`workspace`; `false` when there is none.
fn close_last(
    c: &mut Conversation,
    l: &ObjId,
    node: &str,
    workspace: &str,
    at: i64,
    end: HostEnd,
    carried: Option<&str>,
) -> Result<bool, CrdtError> {
    let hosts = read_hosts(&c.doc)?;
    let Some(i) = hosts
        .iter()
        .rposition(|h| h.node == node && h.workspace == workspace && h.ended_at.is_none())
    else {
        return Ok(false);
    };
    let e = access::list_obj(&c.doc, l, i, ObjType::Map, "hosts")?;
    c.doc.put(&e, "ended_at", at)?;
    c.doc.put(&e, "end", end.as_str())?;
    if let Some(s) = carried {
        c.doc.put(&e, "carried", s)?;
    }
    Ok(true)
}
