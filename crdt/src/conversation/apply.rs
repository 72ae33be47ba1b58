//! Applying changes from peers with incremental schema checks.

use std::collections::HashSet;

use automerge::sync::{self, SyncDoc};
use automerge::{ObjId, ObjType, PatchAction, PatchLog, Prop, ROOT, Value};

use super::{Conversation, MsgEntry, validate};
use crate::{CrdtError, SchemaError};

impl Conversation {
    /// Applies a decoded sync message, checks the schema, and rolls the document back to its
    /// previous heads (and resets `state`) if the result is invalid.
    ///
    /// The check is incremental: Automerge reports what changed as patches, and only the root
    /// fields and the messages those patches touch are checked (O(changed), not O(document)),
    /// so a live stream of chunks stays cheap. A replica that was empty is checked in full.
    /// Rollback is `fork_at(previous heads)`, O(document), but only happens on a bad message.
    pub(crate) fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<(), CrdtError> {
        self.commit_pending();
        let before = self.doc.get_heads();
        let was_empty = before.is_empty() || self.messages_obj.is_none();
        let mut log = if was_empty {
            PatchLog::inactive()
        } else {
            PatchLog::active()
        };
        let res = self
            .doc
            .sync()
            .receive_sync_message_log_patches(state, message, &mut log);
        if let Err(e) = res {
            self.rollback_to(&before)?;
            *state = sync::State::new();
            return Err(e.into());
        }
        if self.doc.get_heads() == before {
            return Ok(());
        }
        let check = if was_empty {
            self.revalidate_all()
        } else {
            let patches = self.doc.make_patches(&mut log);
            self.check_patches(&patches)
        };
        if let Err(e) = check {
            tracing::warn!("rejecting sync message: {e}");
            self.rollback_to(&before)?;
            *state = sync::State::new();
            return Err(CrdtError::SyncRejected(e));
        }
        Ok(())
    }

    fn check_patches(&mut self, patches: &[automerge::Patch]) -> Result<(), SchemaError> {
        let Some(msgs) = self.messages_obj.clone() else {
            return self.revalidate_all();
        };
        let mut header = false;
        let mut full = false;
        let mut dirty: Vec<ObjId> = Vec::new();
        let mut seen: HashSet<ObjId> = HashSet::new();
        for p in patches {
            if p.obj == ROOT {
                header = true;
                if let PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } = &p.action
                {
                    full |= key == "messages";
                }
                continue;
            }
            let in_messages =
                matches!(p.path.first(), Some((o, Prop::Map(k))) if *o == ROOT && k == "messages");
            if !in_messages {
                header = true;
                continue;
            }
            if p.obj == msgs {
                match &p.action {
                    PatchAction::Insert { values, .. } => {
                        for (v, id, _) in values.iter() {
                            if !matches!(v, Value::Object(ObjType::Map)) {
                                return Err(SchemaError::new(
                                    "messages",
                                    "inserted element is not a map",
                                ));
                            }
                            if seen.insert(id.clone()) {
                                dirty.push(id.clone());
                            }
                        }
                    }
                    _ => full = true,
                }
                continue;
            }
            let msg = match p.path.get(2) {
                Some((o, _)) => o.clone(),
                None => p.obj.clone(),
            };
            if seen.insert(msg.clone()) {
                dirty.push(msg);
            }
        }
        if full {
            return self.revalidate_all();
        }
        if header {
            validate::validate_header(&self.doc)?;
        }
        for obj in dirty {
            let (view, text) = validate::read_message(&self.doc, &obj, "messages[?]", false)?;
            match self.index.get(&view.id) {
                Some(e) if e.obj == obj => {}
                Some(_) => {
                    return Err(SchemaError::new(
                        "messages[?].id",
                        format!("duplicate message id {}", view.id),
                    ));
                }
                None => {
                    self.index.insert(view.id, MsgEntry { obj, text });
                }
            }
        }
        if self.index.len() != self.doc_message_len(&msgs) {
            // An id was rewritten or a message vanished: rebuild from scratch.
            return self.revalidate_all();
        }
        Ok(())
    }

    fn doc_message_len(&self, msgs: &ObjId) -> usize {
        automerge::ReadDoc::length(&self.doc, msgs)
    }
}
