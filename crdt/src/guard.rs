//! Node-controlled fields: the root fields that decide what a node does with a conversation
//! (where its prompts run, which command runs them, under which permission policy, which ACP
//! session is resumed), and the ones that say what the document *is* (`id`, `schema`,
//! `parent`, `created_at`).
//!
//! A peer proposes changes through sync; whoever applies them decides whether that peer may
//! alter these fields ([`crate::SyncPeer::receive_guarded`]). The check compares a canonical
//! dump of every guarded field taken before and after the apply, **including conflicting
//! values** (`get_all`) and object ids, so a change that loses a conflict today (and could win
//! one later, against a concurrent write that never saw it) or swaps an object for a copy with
//! the same content counts as a change too.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use automerge::{ObjId, ObjType, ROOT, ReadDoc, Value};

/// Root fields that identify the document: no peer may change them once it exists (a new
/// document's `id` must be the id of the stream it arrives on).
pub const IDENTITY_KEYS: &[&str] = &["id", "schema", "created_at", "parent"];

/// Root fields that decide what the node does: only a peer whose grant allows steering the
/// conversation (the node's owner, an unscoped collaborator) may change them.
pub const STEERING_KEYS: &[&str] = &[
    "workspace",
    "agent",
    "agent_cmd",
    "policy",
    "acp_session",
    "hosts",
    "served_by",
];

/// How deep the dump follows nested objects below a guarded field. Every guarded field is at
/// most two levels deep in the schema (`hosts[i].node`); anything deeper is recorded by its
/// object id, so the walk is bounded whatever a peer nests there.
const MAX_DEPTH: usize = 4;
/// How many list elements or map keys of one object are dumped in full; the rest are counted.
const MAX_ENTRIES: usize = 4096;

/// A canonical dump of the guarded root fields (identity and steering), one string per key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Guarded(BTreeMap<&'static str, String>);

impl Guarded {
    /// Dumps the guarded fields of `doc`.
    pub fn of<D: ReadDoc>(doc: &D) -> Self {
        let mut out = BTreeMap::new();
        for key in IDENTITY_KEYS.iter().chain(STEERING_KEYS) {
            let mut s = String::new();
            dump_key(doc, &ROOT, Prop::Key(key), 0, &mut s);
            out.insert(*key, s);
        }
        Guarded(out)
    }

    /// The guarded fields that differ between `self` (before) and `after`, in schema order.
    pub fn changed(&self, after: &Guarded) -> Vec<&'static str> {
        IDENTITY_KEYS
            .iter()
            .chain(STEERING_KEYS)
            .copied()
            .filter(|k| self.0.get(k) != after.0.get(k))
            .collect()
    }
}

/// The caller's decision on a [`GuardedChange`]: `Err` carries the reason for the refusal.
pub type GuardFn<'a> = &'a dyn Fn(&GuardedChange) -> Result<(), String>;

/// What a guarded receive changed, for the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedChange {
    /// Guarded fields whose value (or any conflicting value) changed.
    pub changed: Vec<&'static str>,
    /// The replica was empty before: this is a new document arriving.
    pub was_empty: bool,
    /// The document's `id` after the change (empty when unreadable).
    pub id_after: String,
}

impl GuardedChange {
    /// Whether an identity field (`id`, `schema`, `created_at`, `parent`) changed.
    pub fn touches_identity(&self) -> bool {
        self.changed.iter().any(|k| IDENTITY_KEYS.contains(k))
    }

    /// Whether a steering field (`workspace`, `agent_cmd`, `policy`, …) changed.
    pub fn touches_steering(&self) -> bool {
        self.changed.iter().any(|k| STEERING_KEYS.contains(k))
    }
}

enum Prop<'a> {
    Key(&'a str),
    Index(usize),
}

fn dump_key<D: ReadDoc>(doc: &D, obj: &ObjId, prop: Prop<'_>, depth: usize, out: &mut String) {
    let all = match prop {
        Prop::Key(k) => doc.get_all(obj, k),
        Prop::Index(i) => doc.get_all(obj, i),
    };
    let all = match all {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(out, "<unreadable: {e}>");
            return;
        }
    };
    // Every value a key holds, conflicts included, in Automerge's deterministic order.
    out.push('(');
    for (value, id) in all {
        match value {
            // The op id too: a peer that writes the value a field already holds (or breaks
            // and restores it within one message) owns the field's current op, and with a
            // high enough counter wins against a concurrent write that never saw it — the
            // owner's `sam move` or `--agent-cmd` would silently not take.
            Value::Scalar(s) => {
                let _ = write!(out, "{s:?}@{id};");
            }
            Value::Object(t) => {
                let _ = write!(out, "{t:?}@{id}");
                dump_obj(doc, &id, t, depth + 1, out);
                out.push(';');
            }
        }
    }
    out.push(')');
}

fn dump_obj<D: ReadDoc>(doc: &D, obj: &ObjId, t: ObjType, depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        out.push_str("{…}");
        return;
    }
    match t {
        ObjType::Map | ObjType::Table => {
            out.push('{');
            let keys: Vec<String> = doc.keys(obj).take(MAX_ENTRIES + 1).collect();
            for k in keys.iter().take(MAX_ENTRIES) {
                let _ = write!(out, "{k:?}=");
                dump_key(doc, obj, Prop::Key(k), depth, out);
            }
            if keys.len() > MAX_ENTRIES {
                let _ = write!(out, "+{}", doc.length(obj));
            }
            out.push('}');
        }
        ObjType::List => {
            let len = doc.length(obj);
            out.push('[');
            for i in 0..len.min(MAX_ENTRIES) {
                dump_key(doc, obj, Prop::Index(i), depth, out);
            }
            if len > MAX_ENTRIES {
                let _ = write!(out, "+{len}");
            }
            out.push(']');
        }
        ObjType::Text => {
            let _ = write!(out, "{:?}", doc.text(obj).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ScalarValue};

    fn base() -> AutoCommit {
        let mut d = AutoCommit::new().with_actor(ActorId::from(&[1u8; 16][..]));
        d.put(ROOT, "id", "abc").expect("id");
        let ws = d.put_object(ROOT, "workspace", ObjType::Map).expect("ws");
        d.put(&ws, "node", "n1").expect("node");
        d.put(&ws, "id", "w1").expect("wid");
        d.put(ROOT, "title", "t").expect("title");
        d.commit();
        d
    }

    #[test]
    fn unguarded_fields_do_not_count() {
        let mut d = base();
        let before = Guarded::of(&d);
        d.put(ROOT, "title", "other").expect("title");
        d.put(ROOT, "usage", 3).expect("usage");
        assert!(before.changed(&Guarded::of(&d)).is_empty());
    }

    #[test]
    fn a_nested_change_counts() {
        let mut d = base();
        let before = Guarded::of(&d);
        let (_, ws) = d.get(ROOT, "workspace").expect("get").expect("ws");
        d.put(&ws, "id", "w2").expect("put");
        assert_eq!(before.changed(&Guarded::of(&d)), vec!["workspace"]);
    }

    #[test]
    fn an_object_replaced_by_an_equal_copy_counts() {
        let mut d = base();
        let before = Guarded::of(&d);
        let ws = d.put_object(ROOT, "workspace", ObjType::Map).expect("ws");
        d.put(&ws, "node", "n1").expect("node");
        d.put(&ws, "id", "w1").expect("wid");
        assert_eq!(before.changed(&Guarded::of(&d)), vec!["workspace"]);
    }

    #[test]
    fn a_losing_concurrent_value_counts() {
        // A peer whose actor sorts lower writes `agent_cmd` concurrently with the owner: the
        // owner's value wins the conflict, but the peer's value is in the document and could
        // win a later conflict, so the guard sees it.
        let mut owner = base();
        let mut peer = owner.fork().with_actor(ActorId::from(&[0u8; 16][..]));
        owner.put(ROOT, "agent_cmd", "good").expect("put");
        owner.commit();
        let before = Guarded::of(&owner);
        peer.put(ROOT, "agent_cmd", "evil").expect("put");
        peer.commit();
        owner.merge(&mut peer).expect("merge");
        assert_eq!(
            owner.get(ROOT, "agent_cmd").expect("get").map(|(v, _)| v),
            Some(Value::Scalar(std::borrow::Cow::Owned(ScalarValue::Str(
                "good".into()
            ))))
        );
        assert_eq!(before.changed(&Guarded::of(&owner)), vec!["agent_cmd"]);
    }

    #[test]
    fn rewriting_the_same_value_counts() {
        let mut d = base();
        d.put(ROOT, "agent_cmd", "good").expect("put");
        d.commit();
        let before = Guarded::of(&d);
        let mut peer = d.fork().with_actor(ActorId::from(&[9u8; 16][..]));
        peer.put(ROOT, "agent_cmd", "evil").expect("break");
        peer.put(ROOT, "agent_cmd", "good").expect("restore");
        peer.commit();
        d.merge(&mut peer).expect("merge");
        assert_eq!(before.changed(&Guarded::of(&d)), vec!["agent_cmd"]);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut d = base();
        let hosts = d.put_object(ROOT, "hosts", ObjType::List).expect("hosts");
        let mut cur = d.insert_object(&hosts, 0, ObjType::Map).expect("h");
        for _ in 0..10_000 {
            cur = d.put_object(&cur, "x", ObjType::Map).expect("nest");
        }
        let g = Guarded::of(&d);
        assert!(g.0["hosts"].len() < 10_000);
    }
}
