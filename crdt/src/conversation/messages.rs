//! Message operations: prompts, streamed output, tool calls, permissions, plan.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc};

use super::{Conversation, MsgEntry, validate};
use crate::access;
use crate::schema::{
    MessageView, PermissionOption, PlanEntry, Role, ServedBy, Status, ToolCall, ToolCallUpdate,
    ToolStatus, Usage,
};
use crate::{CrdtError, MessageId, ids};

impl Conversation {
    fn entry(&self, id: &MessageId) -> Result<MsgEntry, CrdtError> {
        self.index
            .get(id)
            .cloned()
            .ok_or_else(|| CrdtError::UnknownMessage(id.to_string()))
    }

    /// The author for operations that take none: this session's current author, else the
    /// message's author.
    fn writer(&self, entry: &MsgEntry) -> String {
        match &self.actor_author {
            Some(a) => a.clone(),
            None => access::req_str(&self.doc, &entry.obj, "author", "").unwrap_or_default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_message(
        &mut self,
        author: &str,
        id: Option<MessageId>,
        role: Role,
        text: &str,
        status: Status,
        commit_message: &str,
        extra: impl FnOnce(&mut Self, &ObjId) -> Result<(), CrdtError>,
    ) -> Result<MessageId, CrdtError> {
        ids::validate_node_id(author)?;
        let id = id.unwrap_or_else(MessageId::random);
        if self.index.contains_key(&id) {
            return Err(CrdtError::InvalidArgument(format!(
                "a message with id {id} already exists"
            )));
        }
        let created_at = self.now();
        let entry = self.mutate(author, commit_message, |c| {
            let msgs = c.messages_obj.clone().ok_or(CrdtError::EmptyReplica)?;
            let at = c.doc.length(&msgs);
            let obj = c.doc.insert_object(&msgs, at, ObjType::Map)?;
            c.doc.put(&obj, "id", id.as_str())?;
            c.doc.put(&obj, "role", role.as_str())?;
            c.doc.put(&obj, "author", author)?;
            c.doc.put(&obj, "created_at", created_at)?;
            let t = c.doc.put_object(&obj, "text", ObjType::Text)?;
            if !text.is_empty() {
                c.doc.splice_text(&t, 0, 0, text)?;
            }
            // Created with the message, so two writers never race to create it.
            c.doc.put_object(&obj, "more", ObjType::List)?;
            c.doc.put(&obj, "status", status.as_str())?;
            extra(c, &obj)?;
            Ok(MsgEntry { obj, text: t })
        })?;
        self.index_insert(id.clone(), entry);
        Ok(id)
    }

    /// Appends a user prompt. `status` must be [`Status::Queued`] (written offline or while the
    /// agent is busy; the node runs queued prompts in order) or [`Status::Running`].
    pub fn append_user_message(
        &mut self,
        author: &str,
        text: &str,
        status: Status,
    ) -> Result<MessageId, CrdtError> {
        self.append_user_message_with_id(author, None, text, status)
    }

    /// Like [`Self::append_user_message`] with a caller-chosen id (e.g. to make a retried
    /// `sam prompt` idempotent).
    pub fn append_user_message_with_id(
        &mut self,
        author: &str,
        id: Option<MessageId>,
        text: &str,
        status: Status,
    ) -> Result<MessageId, CrdtError> {
        if !matches!(status, Status::Queued | Status::Running) {
            return Err(CrdtError::InvalidArgument(format!(
                "a new user message must be queued or running, not {status}"
            )));
        }
        self.insert_message(
            author,
            id,
            Role::User,
            text,
            status,
            "prompt",
            |_, _| Ok(()),
        )
    }

    /// Starts an empty message (status `streaming`) to be filled by [`Self::append_chunk`].
    /// `role` must be `agent`, `thought` or `system`.
    pub fn start_message(&mut self, author: &str, role: Role) -> Result<MessageId, CrdtError> {
        if !matches!(role, Role::Agent | Role::Thought | Role::System) {
            return Err(CrdtError::InvalidArgument(format!(
                "start_message is for agent, thought or system messages, not {role}"
            )));
        }
        self.insert_message(
            author,
            None,
            role,
            "",
            Status::Streaming,
            "start",
            |_, _| Ok(()),
        )
    }

    /// Appends `chunk` at the end of the message's Text.
    ///
    /// For throughput, consecutive chunks by the same author are grouped into one Automerge
    /// change, committed (message `"chunks"`) at the next commit point: any other mutation,
    /// [`Self::commit_pending`], `heads`, `save*`, a sync message or a [`crate::DocStore`]
    /// append. A node that acknowledges each chunk after `DocStore::append` therefore gets
    /// one durable change per chunk; one that persists per message gets one per message.
    ///
    /// The chunk is buffered and spliced into the document at that commit point (one
    /// `splice_text` per message and commit instead of one per chunk; the resulting ops are
    /// the same). [`Self::message`] and [`Self::messages`] include buffered chunks.
    pub fn append_chunk(&mut self, id: &MessageId, chunk: &str) -> Result<(), CrdtError> {
        if self.is_empty() {
            return Err(CrdtError::EmptyReplica);
        }
        let entry = self
            .index
            .get(id)
            .ok_or_else(|| CrdtError::UnknownMessage(id.to_string()))?;
        if self.actor_author.is_none() {
            let writer = self.writer(entry);
            self.set_author_for_chunks(&writer)?;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let text = self
            .index
            .get(id)
            .map(|e| e.text.clone())
            .ok_or_else(|| CrdtError::UnknownMessage(id.to_string()))?;
        self.push_chunk(&text, chunk);
        Ok(())
    }

    /// Sets the status of a message, and `reason` (a string, or removed when `None`).
    pub fn set_status(
        &mut self,
        id: &MessageId,
        status: Status,
        reason: Option<&str>,
    ) -> Result<(), CrdtError> {
        let entry = self.entry(id)?;
        let writer = self.writer(&entry);
        self.mutate(&writer, "status", |c| {
            c.doc.put(&entry.obj, "status", status.as_str())?;
            match reason {
                Some(r) => c.doc.put(&entry.obj, "reason", r)?,
                None => {
                    if c.doc.get(&entry.obj, "reason")?.is_some() {
                        c.doc.delete(&entry.obj, "reason")?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Adds a tool call message (status `running`, tool status `pending` unless given).
    pub fn add_tool_call(&mut self, author: &str, tool: ToolCall) -> Result<MessageId, CrdtError> {
        self.insert_message(
            author,
            None,
            Role::Tool,
            "",
            Status::Running,
            "tool",
            |c, obj| {
                let t = c.doc.put_object(obj, "tool", ObjType::Map)?;
                c.doc.put(&t, "kind", tool.kind.as_str())?;
                c.doc.put(&t, "title", tool.title.as_str())?;
                c.doc.put(&t, "input", tool.input.as_str())?;
                c.doc.put_object(&t, "output", ObjType::Text)?;
                let status = tool.status.unwrap_or(ToolStatus::Pending);
                c.doc.put(&t, "status", status.as_str())?;
                let locs = c.doc.put_object(&t, "locations", ObjType::List)?;
                for (i, l) in tool.locations.iter().enumerate() {
                    c.doc.insert(&locs, i, l.as_str())?;
                }
                Ok(())
            },
        )
    }

    /// Updates a tool call: status, title, locations (replaced), output (appended).
    pub fn update_tool_call(
        &mut self,
        id: &MessageId,
        update: ToolCallUpdate,
    ) -> Result<(), CrdtError> {
        let entry = self.entry(id)?;
        let writer = self.writer(&entry);
        let tool = access::opt_obj(&self.doc, &entry.obj, "tool", ObjType::Map, "")?
            .ok_or_else(|| self.wrong_role(id, &entry, "tool"))?;
        self.mutate(&writer, "tool_update", |c| {
            if let Some(s) = update.status {
                c.doc.put(&tool, "status", s.as_str())?;
            }
            if let Some(t) = &update.title {
                c.doc.put(&tool, "title", t.as_str())?;
            }
            if let Some(chunk) = &update.output_chunk {
                let out = access::req_obj(&c.doc, &tool, "output", ObjType::Text, "tool")?;
                let end = c.doc.length(&out);
                c.doc.splice_text(&out, end, 0, chunk)?;
            }
            if let Some(locs) = &update.locations {
                let l = c.doc.put_object(&tool, "locations", ObjType::List)?;
                for (i, loc) in locs.iter().enumerate() {
                    c.doc.insert(&l, i, loc.as_str())?;
                }
            }
            Ok(())
        })
    }

    fn wrong_role(&self, id: &MessageId, entry: &MsgEntry, expected: &'static str) -> CrdtError {
        CrdtError::WrongRole {
            id: id.to_string(),
            expected,
            actual: access::req_str(&self.doc, &entry.obj, "role", "").unwrap_or_default(),
        }
    }

    /// Replaces the plan.
    pub fn set_plan(&mut self, author: &str, plan: &[PlanEntry]) -> Result<(), CrdtError> {
        self.mutate(author, "plan", |c| {
            let list = c.doc.put_object(ROOT, "plan", ObjType::List)?;
            for (i, e) in plan.iter().enumerate() {
                let m = c.doc.insert_object(&list, i, ObjType::Map)?;
                c.doc.put(&m, "content", e.content.as_str())?;
                c.doc.put(&m, "status", e.status.as_str())?;
                c.doc.put(&m, "priority", e.priority.as_str())?;
            }
            Ok(())
        })
    }

    /// Sets usage counters (each key replaced, others kept).
    pub fn set_usage(&mut self, author: &str, usage: &Usage) -> Result<(), CrdtError> {
        self.mutate(author, "usage", |c| {
            let m = match access::opt_obj(&c.doc, &ROOT, "usage", ObjType::Map, "")? {
                Some(m) => m,
                None => c.doc.put_object(ROOT, "usage", ObjType::Map)?,
            };
            for (k, v) in usage {
                c.doc.put(&m, k.as_str(), *v)?;
            }
            Ok(())
        })
    }

    /// Records that `served.node` serves the conversation from `served.from_message` on.
    pub fn add_served_by(&mut self, author: &str, served: &ServedBy) -> Result<(), CrdtError> {
        ids::validate_node_id(&served.node)?;
        self.mutate(author, "served_by", |c| {
            let l = access::req_obj(&c.doc, &ROOT, "served_by", ObjType::List, "")?;
            let at = c.doc.length(&l);
            let m = c.doc.insert_object(&l, at, ObjType::Map)?;
            c.doc.put(&m, "node", served.node.as_str())?;
            c.doc.put(&m, "workspace", served.workspace.as_str())?;
            c.doc
                .put(&m, "from_message", served.from_message.as_str())?;
            Ok(())
        })
    }

    /// Adds a permission request (status `running`) with the request's title as its text.
    pub fn request_permission(
        &mut self,
        author: &str,
        title: &str,
        options: &[PermissionOption],
    ) -> Result<MessageId, CrdtError> {
        if options.is_empty() {
            return Err(CrdtError::InvalidArgument(
                "a permission request needs at least one option".into(),
            ));
        }
        let role = Role::Permission;
        self.insert_message(
            author,
            None,
            role,
            title,
            Status::Running,
            "permission",
            |c, obj| {
                let p = c.doc.put_object(obj, "permission", ObjType::Map)?;
                let l = c.doc.put_object(&p, "options", ObjType::List)?;
                for (i, o) in options.iter().enumerate() {
                    let m = c.doc.insert_object(&l, i, ObjType::Map)?;
                    c.doc.put(&m, "id", o.id.as_str())?;
                    c.doc.put(&m, "name", o.name.as_str())?;
                    c.doc.put(&m, "kind", o.kind.as_str())?;
                }
                c.doc.put_object(&p, "answers", ObjType::List)?;
                Ok(())
            },
        )
    }

    /// Answers a permission request with `option_id` on behalf of `by` (NodeId hex) and marks the
    /// message `done`. Fails for an unknown option or if this replica already has an answer.
    ///
    /// Two replicas may answer concurrently; both answers are kept in `answers` and every
    /// replica picks the same effective one: the smallest `(at, by, option)`
    /// ([`crate::PermissionView::chosen`]).
    pub fn answer_permission(
        &mut self,
        id: &MessageId,
        option_id: &str,
        by: &str,
    ) -> Result<(), CrdtError> {
        ids::validate_node_id(by)?;
        let entry = self.entry(id)?;
        let (view, _) = validate::read_message(&self.doc, &entry.obj, "message", false)?;
        let perm = view
            .permission
            .ok_or_else(|| self.wrong_role(id, &entry, "permission"))?;
        if let Some(a) = perm.chosen {
            return Err(CrdtError::AlreadyAnswered {
                id: id.to_string(),
                option: a.option,
                by: a.by,
            });
        }
        if !perm.options.iter().any(|o| o.id == option_id) {
            let known: Vec<_> = perm.options.iter().map(|o| o.id.as_str()).collect();
            return Err(CrdtError::InvalidArgument(format!(
                "permission {id} has no option {option_id:?} (options: {})",
                known.join(", ")
            )));
        }
        let at = self.now();
        self.mutate(by, "answer", |c| {
            let p = access::req_obj(&c.doc, &entry.obj, "permission", ObjType::Map, "")?;
            let l = access::req_obj(&c.doc, &p, "answers", ObjType::List, "")?;
            let n = c.doc.length(&l);
            let m = c.doc.insert_object(&l, n, ObjType::Map)?;
            c.doc.put(&m, "option", option_id)?;
            c.doc.put(&m, "by", by)?;
            c.doc.put(&m, "at", at)?;
            c.doc.put(&entry.obj, "status", Status::Done.as_str())?;
            Ok(())
        })
    }

    /// All messages in document order, with their text.
    pub fn messages(&self) -> Vec<MessageView> {
        let Some(msgs) = &self.messages_obj else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.index.len());
        let objs = match access::list_objs(&self.doc, msgs, ObjType::Map, "messages") {
            Ok(objs) => objs,
            // Not reachable for a validated document; fall back to per-element reads.
            Err(_) => (0..self.doc.length(msgs))
                .filter_map(|i| access::list_obj(&self.doc, msgs, i, ObjType::Map, "").ok())
                .collect(),
        };
        for (i, o) in objs.iter().enumerate() {
            let path = format!("messages[{i}]");
            match validate::read_message(&self.doc, o, &path, true) {
                Ok((v, text)) => out.push(self.with_buffered(v, &text)),
                Err(e) => tracing::warn!("skipping unreadable message: {e}"),
            }
        }
        out
    }

    /// One message with its text, in O(1) + O(text).
    pub fn message(&self, id: &MessageId) -> Option<MessageView> {
        let entry = self.index.get(id)?;
        validate::read_message(&self.doc, &entry.obj, "message", true)
            .ok()
            .map(|(v, text)| self.with_buffered(v, &text))
    }

    /// The text of message `id` from character `from` on, and its length in characters: a
    /// follower of a streaming message reads only the new tail, in O(log n + tail).
    pub fn message_text_from(&self, id: &MessageId, from: usize) -> Option<(String, usize)> {
        use automerge::ReadDoc;
        let entry = self.index.get(id)?;
        let mut segments = Vec::new();
        if let Ok(Some((_, t))) = self.doc.get(&entry.obj, "text") {
            segments.push(t);
        }
        if let Ok(Some((_, more))) = self.doc.get(&entry.obj, "more") {
            for i in 0..self.doc.length(&more) {
                if let Ok(Some((_, seg))) = self.doc.get(&more, i) {
                    segments.push(seg);
                }
            }
        }
        let mut out = String::new();
        let mut start = 0usize;
        for seg in &segments {
            let len = self.doc.length(seg);
            if from < start + len {
                for item in self.doc.list_range(seg, from.saturating_sub(start)..) {
                    if let automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(s)) =
                        item.value
                    {
                        out.push_str(&s);
                    }
                }
            }
            start += len;
        }
        let mut total = start;
        if let Some(b) = self.buffered_chunks(&entry.text) {
            let skip = from.saturating_sub(start);
            out.extend(b.chars().skip(skip));
            total += b.chars().count();
        }
        Some((out, total))
    }

    fn with_buffered(&self, mut v: MessageView, text: &ObjId) -> MessageView {
        if let Some(s) = self.buffered_chunks(text) {
            v.text.push_str(s);
        }
        v
    }

    /// Number of messages, O(1) (from the index; no text is read).
    pub fn message_count(&self) -> usize {
        self.index.len()
    }

    /// Ids of `user` messages with status `queued`, in document order.
    pub fn queued_prompts(&self) -> Vec<MessageId> {
        let Some(msgs) = &self.messages_obj else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in 0..self.doc.length(msgs) {
            let Ok(o) = access::list_obj(&self.doc, msgs, i, ObjType::Map, "messages") else {
                continue;
            };
            let role = access::req_str(&self.doc, &o, "role", "").unwrap_or_default();
            let status = access::req_str(&self.doc, &o, "status", "").unwrap_or_default();
            if role == Role::User.as_str()
                && status == Status::Queued.as_str()
                && let Ok(id) = access::req_str(&self.doc, &o, "id", "")
            {
                out.push(MessageId::from_checked(id));
            }
        }
        out
    }

    /// The agent's plan (empty if none).
    pub fn plan(&self) -> Vec<PlanEntry> {
        validate::read_plan(&self.doc).unwrap_or_default()
    }

    /// Usage counters (empty if none).
    pub fn usage(&self) -> Usage {
        validate::read_usage(&self.doc).unwrap_or_default()
    }

    /// Which nodes served the conversation.
    pub fn served_by(&self) -> Vec<ServedBy> {
        validate::read_served_by(&self.doc).unwrap_or_default()
    }
}
