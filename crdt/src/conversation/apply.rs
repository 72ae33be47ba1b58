//! Applying changes from peers with incremental schema checks.

use std::collections::HashSet;

use automerge::sync::{self, SyncDoc};
use automerge::{ChangeHash, ObjId, ObjType, PatchAction, PatchLog, Prop, ROOT, Value};

use super::{Conversation, MsgEntry, validate};
use crate::guard::{GuardFn, Guarded, GuardedChange};
use crate::{CrdtError, SchemaError};

/// The highest operation counter a received change may reach (2^31): leaves 2^31 counters for
/// this replica's own ops before Automerge's `u32` limit, far beyond any real document.
pub(crate) const MAX_OP_COUNTER: u64 = 1 << 31;

impl Conversation {
    /// Applies a decoded sync message, checks the schema, and rolls the document back to its
    /// previous heads (and resets `state`) if the result is invalid.
    ///
    /// The check is incremental: only the root fields and the messages that the new ops touch
    /// are checked (O(changed), not O(document)), so a live stream of chunks stays cheap. The
    /// touched objects come from decoding the received changes (live messages: one change per
    /// chunk and nothing queued), else from Automerge patches (e.g. queued changes whose
    /// dependencies just arrived). A replica that was empty is checked in full, and so is
    /// anything unusual (an op that replaces `messages` or deletes from it, an object that
    /// cannot be located).
    /// Rollback is `fork_at(previous heads)`, O(document), but only happens on a bad message.
    pub(crate) fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        message: sync::Message,
        guard: Option<GuardFn<'_>>,
    ) -> Result<(), CrdtError> {
        self.commit_pending();
        let before = self.doc.get_heads();
        let guarded_before = guard.map(|_| Guarded::of(&self.doc));
        let was_empty = before.is_empty() || self.messages_obj.is_none();
        // Fast path for the live case: the message carries individual changes (not a whole
        // document) and nothing is queued for missing dependencies, so exactly the ops of
        // these changes get applied; which objects they touch is read from the changes
        // themselves, without an Automerge patch log (whose path computation costs O(messages)
        // per patch).
        // The changes are only parsed here; their ops are read (`Change::decode`) after
        // Automerge applied them: `decode` panics on an op naming an actor index the change
        // does not list (found by fuzzing), which Automerge's apply refuses with an error.
        let touched = if was_empty || message.changes.is_empty() {
            None
        } else if self.doc.get_missing_deps(&[]).is_empty() {
            one_change_per_chunk(&message.changes)?
        } else {
            None
        };
        let mut log = if was_empty || touched.is_some() {
            PatchLog::inactive()
        } else {
            PatchLog::active()
        };
        // Automerge 0.12 panics on some malformed changes while parsing them (found by
        // fuzzing: an op counter past `u32::MAX` in a change's columns). A peer's bytes must
        // never take the document's owner down: the panic is caught here, the document rolled
        // back to its previous heads (`fork_at` rebuilds it from the changes it held before)
        // and the message refused like any other malformed one.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.doc
                .sync()
                .receive_sync_message_log_patches(state, message, &mut log)
        }));
        let res = match res {
            Ok(res) => res.map_err(CrdtError::from),
            Err(_) => Err(CrdtError::SyncDecode(
                "a change of this message is malformed (Automerge could not read it)".into(),
            )),
        };
        if let Err(e) = res {
            self.rollback_to(&before)?;
            *state = sync::State::new();
            return Err(e);
        }
        if self.doc.get_heads() == before {
            return Ok(());
        }
        let check = if was_empty {
            self.revalidate_all()
        } else if let Some(changes) = touched {
            match self.touched_objects(&changes) {
                Some(touched) => self.check_touched(&touched),
                None => Err(SchemaError::new(
                    "changes",
                    "a change's ops cannot be read (op counters out of range or malformed)",
                )),
            }
        } else {
            let patches = self.doc.make_patches(&mut log);
            self.check_patches(&patches)
        }
        .and_then(|()| self.check_op_counters(&before));
        if let Err(e) = check {
            tracing::warn!("rejecting sync message: {e}");
            self.rollback_to(&before)?;
            *state = sync::State::new();
            return Err(CrdtError::SyncRejected(e));
        }
        if let (Some(guard), Some(g_before)) = (guard, guarded_before) {
            let change = GuardedChange {
                changed: g_before.changed(&Guarded::of(&self.doc)),
                was_empty,
                id_after: self.id(),
            };
            if !change.changed.is_empty()
                && let Err(why) = guard(&change)
            {
                tracing::warn!("refusing sync message: {why}");
                self.rollback_to(&before)?;
                *state = sync::State::new();
                return Err(CrdtError::Forbidden(why));
            }
        }
        Ok(())
    }

    /// Refuses received changes whose operation counters leave no room for this replica's own:
    /// a local op continues after the highest counter in the document, and Automerge panics
    /// on one past `u32::MAX` — so one crafted change (a `start_op` near 2^32, which Automerge
    /// accepts) would make the next local write of the node (a streamed reply, a status)
    /// panic inside its document actor, again after every restart.
    fn check_op_counters(&mut self, before: &[ChangeHash]) -> Result<(), SchemaError> {
        let max = self
            .doc
            .get_changes_meta(before)
            .iter()
            .map(|m| m.max_op)
            .max()
            .unwrap_or(0);
        if max > MAX_OP_COUNTER {
            return Err(SchemaError::new(
                "",
                format!(
                    "a change reaches operation counter {max} (limit {MAX_OP_COUNTER}); a real \
                     document never gets near it"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the schema after applying changes whose ops touched `touched`.
    fn check_touched(&mut self, touched: &Touched) -> Result<(), SchemaError> {
        let Some(msgs) = self.messages_obj.clone() else {
            return self.revalidate_all();
        };
        let mut header = false;
        let mut dirty: Vec<ObjId> = Vec::new();
        let mut seen: HashSet<ObjId> = HashSet::new();
        let mut mark = |obj: ObjId, dirty: &mut Vec<ObjId>| {
            if seen.insert(obj.clone()) {
                dirty.push(obj);
            }
        };
        for t in &touched.ops {
            match t {
                TouchedOp::Root { key } => {
                    if key == "messages" {
                        return self.revalidate_all();
                    }
                    header = true;
                }
                TouchedOp::Obj {
                    obj,
                    created,
                    inserted_map,
                } => {
                    let probe = ObjId::Id(obj.0, obj.1.clone(), 0);
                    if probe == msgs {
                        // Only appending maps to `messages` is incremental; anything else
                        // (delete, overwrite, a non-map element) is checked in full.
                        if !inserted_map {
                            return self.revalidate_all();
                        }
                        match self.import(created) {
                            Some(id) => mark(id, &mut dirty),
                            None => return self.revalidate_all(),
                        }
                        continue;
                    }
                    if let Some(m) = self.by_obj.get(&probe) {
                        mark(m.clone(), &mut dirty);
                        continue;
                    }
                    // Not an indexed message or Text: find where it lives.
                    let Some(id) = self.import(obj) else {
                        // Unknown object: its change was not applied (queued).
                        continue;
                    };
                    match self.locate(&id, &msgs) {
                        Location::Message(m) => mark(m, &mut dirty),
                        Location::Header => header = true,
                        Location::Unclear => return self.revalidate_all(),
                    }
                }
            }
        }
        self.check_dirty(&msgs, header, dirty)
    }

    /// Resolves `counter@actor` to an object of this document.
    fn import(&self, (counter, actor): &(u64, automerge::ActorId)) -> Option<ObjId> {
        self.doc
            .import(&format!("{counter}@{actor}"))
            .ok()
            .map(|(id, _)| id)
    }

    /// Which message (the child of `messages` on the way to the root) contains `obj`.
    fn locate(&self, obj: &ObjId, msgs: &ObjId) -> Location {
        let Ok(parents) = automerge::ReadDoc::parents(&self.doc, obj) else {
            return Location::Unclear;
        };
        let mut cur = obj.clone();
        for p in parents {
            if !p.visible {
                return Location::Unclear;
            }
            if &p.obj == msgs {
                return Location::Message(cur);
            }
            cur = p.obj;
        }
        Location::Header
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
        self.check_dirty(&msgs, header, dirty)
    }

    /// Checks the header (if `header`) and the `dirty` messages, indexing new ones.
    fn check_dirty(
        &mut self,
        msgs: &ObjId,
        header: bool,
        dirty: Vec<ObjId>,
    ) -> Result<(), SchemaError> {
        if header {
            validate::validate_header(&self.doc)?;
        }
        for obj in dirty {
            let (view, text) = validate::read_message(&self.doc, &obj, "messages[?]", false)?;
            match self.index.get_mut(&view.id) {
                Some(e) if e.obj == obj => {
                    // A new segment from a peer becomes the tail.
                    if e.text != text {
                        e.text = text.clone();
                        self.by_obj.insert(text, obj);
                    }
                }
                Some(_) => {
                    return Err(SchemaError::new(
                        "messages[?].id",
                        format!("duplicate message id {}", view.id),
                    ));
                }
                None => {
                    self.index_insert(view.id, MsgEntry { obj, text });
                }
            }
        }
        if self.index.len() != self.doc_message_len(msgs) {
            // An id was rewritten or a message vanished: rebuild from scratch.
            return self.revalidate_all();
        }
        Ok(())
    }

    fn doc_message_len(&self, msgs: &ObjId) -> usize {
        automerge::ReadDoc::length(&self.doc, msgs)
    }
}

/// An op of a received change, as far as the schema check cares.
enum TouchedOp {
    /// An op on the root map.
    Root { key: String },
    /// An op on object `obj` (`counter`, actor); `created` is the op's own id (the id of the
    /// object it creates, if it creates one); `inserted_map`: it inserts a new map.
    Obj {
        obj: (u64, automerge::ActorId),
        created: (u64, automerge::ActorId),
        inserted_map: bool,
    },
}

struct Touched {
    ops: Vec<TouchedOp>,
}

enum Location {
    Message(ObjId),
    Header,
    Unclear,
}

/// The changes of `chunks` if each chunk is exactly one change (a sync message of the V1
/// form); `None` for anything else (e.g. a whole document), which takes the patch-log path.
/// Their ops are not read yet (see [`Conversation::touched_objects`]).
///
/// A chunk that makes Automerge's parser panic (an op counter past `u32::MAX`, found by
/// fuzzing) refuses the whole message before Automerge's apply would meet it.
fn one_change_per_chunk(
    chunks: &sync::ChunkList,
) -> Result<Option<Vec<automerge::Change>>, CrdtError> {
    let mut changes = Vec::with_capacity(chunks.len());
    for chunk in chunks.iter() {
        let parsed = std::panic::catch_unwind(|| automerge::Change::from_bytes(chunk.to_vec()))
            .map_err(|_| {
                CrdtError::SyncDecode(
                    "a change of this message is malformed (Automerge could not read it)".into(),
                )
            })?;
        let Ok(change) = parsed else {
            return Ok(None);
        };
        if change.raw_bytes().len() != chunk.len() {
            return Ok(None);
        }
        changes.push(change);
    }
    Ok(Some(changes))
}

impl Conversation {
    /// The ops of `changes`, once Automerge has applied them. A run of scalar insertions
    /// into one object (a Text splice) is reported once.
    ///
    /// Only changes the document holds are read: Automerge's apply checked every actor
    /// index their ops name, so `Change::decode` (which unwraps them) cannot panic. A change
    /// still queued for a missing dependency is skipped: it changed nothing yet, and the
    /// message that completes it takes the patch-log path (the queue is not empty then).
    fn touched_objects(&mut self, changes: &[automerge::Change]) -> Option<Touched> {
        let queued = !self.doc.get_missing_deps(&[]).is_empty();
        let mut ops = Vec::new();
        for change in changes {
            if queued && self.doc.get_change_by_hash(&change.hash()).is_none() {
                continue;
            }
            touched_ops(change, &mut ops)?;
        }
        Some(Touched { ops })
    }
}

/// Appends the ops of one change (applied, so its actor indices are valid) to `ops`.
fn touched_ops(change: &automerge::Change, ops: &mut Vec<TouchedOp>) -> Option<()> {
    use automerge::legacy::{Key, ObjectId, OpType};
    {
        // Automerge applies a change whose ops name an actor index it does not list in some
        // places (found by fuzzing: a `pred`), and `decode` unwraps that index: a panic here
        // is a malformed change, refused (the caller rolls the document back).
        let expanded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode())).ok()?;
        let start = expanded.start_op.get();
        let mut last_insert: Option<(u64, automerge::ActorId)> = None;
        for (i, op) in expanded.operations.iter().enumerate() {
            let counter = start.checked_add(i as u64)?;
            match &op.obj {
                ObjectId::Root => {
                    last_insert = None;
                    let key = match &op.key {
                        Key::Map(k) => k.to_string(),
                        Key::Seq(_) => String::new(),
                    };
                    ops.push(TouchedOp::Root { key });
                }
                ObjectId::Id(id) => {
                    let obj = (id.0, id.1.clone());
                    let scalar_insert = op.insert && !matches!(op.action, OpType::Make(_));
                    if scalar_insert && last_insert.as_ref() == Some(&obj) {
                        continue;
                    }
                    last_insert = scalar_insert.then(|| obj.clone());
                    ops.push(TouchedOp::Obj {
                        obj,
                        created: (counter, expanded.actor_id.clone()),
                        inserted_map: op.insert
                            && matches!(op.action, OpType::Make(automerge::ObjType::Map)),
                    });
                }
            }
        }
    }
    Some(())
}
