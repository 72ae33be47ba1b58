//! Turns agent events into document changes through the [`DocHost`], batching: while one
//! mutate is being made durable, new operations queue up and the next mutate applies them
//! all at once (consecutive chunks of one message become one text splice).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sam_crdt::{
    Conversation, MessageId, PermissionOption, PlanEntry, Role, Status, ToolCall, ToolCallUpdate,
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::docs::DocHost;

/// Most operations applied in one mutate.
const MAX_BATCH: usize = 8192;

/// A message made during a turn, named before the document has given it an id.
pub type Slot = u64;

/// One document change.
#[derive(Debug)]
pub enum Op {
    Start(Slot, Role),
    Chunk(Slot, String),
    Tool(Slot, ToolCall),
    ToolUpdate(Slot, ToolCallUpdate),
    Plan(Vec<PlanEntry>),
    Commands(Vec<(String, String)>),
    Permission(Slot, String, Vec<PermissionOption>),
    Answer(Slot, String),
    /// Status of a slot's message.
    Status(Slot, Status, Option<String>),
    /// Status of an existing message (the prompt).
    StatusOf(MessageId, Status, Option<String>),
    Session(String),
}

/// Handle of the writer task of one conversation.
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    ids: Arc<Mutex<HashMap<Slot, MessageId>>>,
    task: tokio::task::JoinHandle<()>,
    next: Slot,
}

impl Writer {
    pub fn start(docs: DocHost, conv: String, author: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(run(docs, conv, author, rx, ids.clone()));
        Self {
            tx,
            ids,
            task,
            next: 1,
        }
    }

    pub fn slot(&mut self) -> Slot {
        self.next += 1;
        self.next
    }

    pub fn send(&self, op: Op) {
        let _ = self.tx.send(op);
    }

    /// The document id of a slot's message, once written.
    pub fn id(&self, slot: Slot) -> Option<MessageId> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .cloned()
    }

    /// Waits until every operation sent so far is durable.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

async fn run(
    docs: DocHost,
    conv: String,
    author: String,
    mut rx: mpsc::UnboundedReceiver<Op>,
    ids: Arc<Mutex<HashMap<Slot, MessageId>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let batch = coalesce(batch);
        let ids = ids.clone();
        let author = author.clone();
        let r = docs
            .mutate(&conv, move |c| {
                let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                for op in batch {
                    if let Err(e) = apply(c, &author, &mut ids, op) {
                        warn!(error = %e, "agent event not written");
                    }
                }
            })
            .await;
        if let Err(e) = r {
            warn!(conv = %conv, error = %e, "cannot write agent events");
        }
    }
}

/// Joins consecutive chunks of the same slot.
fn coalesce(batch: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(batch.len());
    for op in batch {
        if let (Some(Op::Chunk(prev, text)), Op::Chunk(slot, more)) = (out.last_mut(), &op)
            && prev == slot
        {
            text.push_str(more);
            continue;
        }
        out.push(op);
    }
    out
}

fn apply(
    c: &mut Conversation,
    author: &str,
    ids: &mut HashMap<Slot, MessageId>,
    op: Op,
) -> Result<(), sam_crdt::CrdtError> {
    let id = |ids: &HashMap<Slot, MessageId>, s: Slot| {
        ids.get(&s)
            .cloned()
            .ok_or_else(|| sam_crdt::CrdtError::InvalidArgument(format!("slot {s} not written")))
    };
    match op {
        Op::Start(slot, role) => {
            let m = c.start_message(author, role)?;
            ids.insert(slot, m);
        }
        Op::Chunk(slot, text) => c.append_chunk(&id(ids, slot)?, &text)?,
        Op::Tool(slot, tool) => {
            let m = c.add_tool_call(author, tool)?;
            ids.insert(slot, m);
        }
        Op::ToolUpdate(slot, u) => c.update_tool_call(&id(ids, slot)?, u)?,
        Op::Plan(p) => c.set_plan(author, &p)?,
        Op::Commands(list) => c.set_commands(author, &list)?,
        Op::Permission(slot, title, options) => {
            let m = c.request_permission(author, &title, &options)?;
            ids.insert(slot, m);
        }
        Op::Answer(slot, option) => c.answer_permission(&id(ids, slot)?, &option, author)?,
        Op::Status(slot, status, reason) => {
            c.set_status(&id(ids, slot)?, status, reason.as_deref())?
        }
        Op::StatusOf(m, status, reason) => c.set_status(&m, status, reason.as_deref())?,
        Op::Session(s) => c.set_acp_session(author, &s)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_coalesce_per_slot() {
        let out = coalesce(vec![
            Op::Chunk(1, "a".into()),
            Op::Chunk(1, "b".into()),
            Op::Chunk(2, "c".into()),
            Op::Plan(Vec::new()),
            Op::Chunk(2, "d".into()),
            Op::Chunk(2, "e".into()),
        ]);
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[0], Op::Chunk(1, t) if t == "ab"));
        assert!(matches!(&out[3], Op::Chunk(2, t) if t == "de"));
    }
}
