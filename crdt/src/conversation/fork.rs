//! Forks: a new conversation that shares the parent's history up to a message.

use std::collections::HashSet;

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjId, ObjType, ROOT, ReadDoc, Value};

use super::Conversation;
use crate::{CrdtError, MessageId, ids};

impl Conversation {
    /// Forks the conversation at message `at`.
    ///
    /// The fork is Automerge `fork_at(H)` where `H` is the set of changes that wrote any op that
    /// is part of messages `0..=at` as they are now (every field, every character, every nested
    /// object); Automerge adds their causal dependencies. So the fork shares exactly the
    /// parent's history needed for those messages, and no later title/plan/message edits that
    /// they do not depend on. Messages after `at` that are nevertheless causal dependencies
    /// (e.g. a prompt queued while `at` was still streaming) are deleted in the fork's first
    /// change; they stay in the shared history. That first change also sets the new `id`,
    /// `created_at`, and `parent = {conversation, heads: H', message_id}` where `H'` are the
    /// heads of the fork point.
    pub fn fork_at(
        &mut self,
        at: &MessageId,
        new_id: &str,
        author: &str,
    ) -> Result<Conversation, CrdtError> {
        ids::validate_doc_id(new_id)?;
        ids::validate_node_id(author)?;
        self.commit_pending();
        let entry = self
            .index
            .get(at)
            .cloned()
            .ok_or_else(|| CrdtError::UnknownMessage(at.to_string()))?;
        let msgs = self.messages_obj.clone().ok_or(CrdtError::EmptyReplica)?;
        let pos = position(&self.doc, &msgs, &entry.obj)
            .ok_or_else(|| CrdtError::UnknownMessage(at.to_string()))?;
        let mut hashes = HashSet::new();
        for i in 0..=pos {
            if let Ok(Some((_, obj))) = self.doc.get(&msgs, i) {
                self.collect(&obj, &mut hashes);
            }
        }
        let heads: Vec<ChangeHash> = hashes.into_iter().collect();
        let parent_id = self.id();
        let fork_doc = self.doc.fork_at(&heads)?;
        let mut fork = Conversation::from_automerge(fork_doc)?;
        fork.clock = self.clock;
        let fork_heads = fork.heads();
        let now = fork.now();
        let new_id = new_id.to_owned();
        fork.mutate(author, "fork", |c| {
            let fmsgs = c.messages_obj.clone().ok_or(CrdtError::EmptyReplica)?;
            let fpos = position(&c.doc, &fmsgs, &entry.obj)
                .ok_or_else(|| CrdtError::UnknownMessage(at.to_string()))?;
            let len = c.doc.length(&fmsgs);
            for i in (fpos + 1..len).rev() {
                c.doc.delete(&fmsgs, i)?;
            }
            c.doc.put(ROOT, "id", new_id.as_str())?;
            c.doc.put(ROOT, "created_at", now)?;
            let p = c.doc.put_object(ROOT, "parent", ObjType::Map)?;
            c.doc.put(&p, "conversation", parent_id.as_str())?;
            let h = c.doc.put_object(&p, "heads", ObjType::List)?;
            for (i, head) in fork_heads.iter().enumerate() {
                c.doc.insert(&h, i, head.to_string())?;
            }
            c.doc.put(&p, "message_id", at.as_str())?;
            Ok(())
        })?;
        fork.revalidate_all()?;
        Ok(fork)
    }

    /// Adds the hash of every change that wrote a visible op in `obj` (recursively).
    fn collect(&self, obj: &ObjId, out: &mut HashSet<ChangeHash>) {
        if let Some(h) = self.doc.hash_for_opid(obj) {
            out.insert(h);
        }
        match self.doc.object_type(obj) {
            Ok(ObjType::Map | ObjType::Table) => {
                let items: Vec<_> = self
                    .doc
                    .map_range(obj, ..)
                    .map(|i| (i.id(), matches!(i.value, automerge::ValueRef::Object(_))))
                    .collect();
                for (id, is_obj) in items {
                    if is_obj {
                        self.collect(&id, out);
                    } else if let Some(h) = self.doc.hash_for_opid(&id) {
                        out.insert(h);
                    }
                }
            }
            Ok(ObjType::List | ObjType::Text) => {
                let items: Vec<_> = self
                    .doc
                    .list_range(obj, ..)
                    .map(|i| (i.id(), matches!(i.value, automerge::ValueRef::Object(_))))
                    .collect();
                for (id, is_obj) in items {
                    if is_obj {
                        self.collect(&id, out);
                    } else if let Some(h) = self.doc.hash_for_opid(&id) {
                        out.insert(h);
                    }
                }
            }
            Err(_) => {}
        }
    }
}

fn position<D: ReadDoc>(doc: &D, list: &ObjId, obj: &ObjId) -> Option<usize> {
    (0..doc.length(list))
        .rev()
        .find(|i| matches!(doc.get(list, *i), Ok(Some((Value::Object(_), id))) if &id == obj))
}
