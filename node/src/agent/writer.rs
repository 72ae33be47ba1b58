//! Turns agent events into document changes through the [`DocHost`], batching: while one
//! mutate is being made durable, new operations queue up and the next mutate applies them
//! all at once (consecutive chunks of one message become one text splice).
//!
//! Every text an agent produces passes a [`Redactor`] first: the agent keys peers sent
//! (the values of `AgentRequest::Credentials`) become `[redacted]` before they reach the
//! document, also when a key is streamed across several chunks (the end of a chunk that
//! could begin a key is held back until the next chunk or the end of the message).

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

/// Shortest value redacted (shorter ones would blank ordinary text).
pub const MIN_SECRET: usize = 6;
/// What a secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Which streamed text of a slot: a message's text or a tool call's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stream {
    Text,
    Output,
}

/// Replaces secrets in agent output, including secrets split across streamed chunks.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first.
    secrets: Vec<String>,
    /// Per streamed text: its tail that may be the start of a secret.
    held: HashMap<(Slot, Stream), String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            secrets,
            held: HashMap::new(),
        }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }

    /// The next chunk of a streamed text: what may be written now. Its end is held back
    /// when it could be the beginning of a secret.
    fn chunk(&mut self, slot: Slot, stream: Stream, text: &str) -> String {
        let mut buf = self.held.remove(&(slot, stream)).unwrap_or_default();
        buf.push_str(text);
        let buf = self.redact(&buf);
        let keep = self.secret_prefix_len(&buf);
        let (now, later) = buf.split_at(buf.len() - keep);
        if !later.is_empty() {
            self.held.insert((slot, stream), later.to_string());
        }
        now.to_string()
    }

    /// Length of the longest end of `buf` that is a proper beginning of a secret.
    fn secret_prefix_len(&self, buf: &str) -> usize {
        let mut best = 0;
        for s in &self.secrets {
            let max = (s.len() - 1).min(buf.len());
            for k in (best + 1..=max).rev() {
                if buf.is_char_boundary(buf.len() - k)
                    && s.is_char_boundary(k)
                    && buf.as_bytes()[buf.len() - k..] == s.as_bytes()[..k]
                {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// The held-back end of one streamed text (it turned out not to be a secret).
    fn flush(&mut self, slot: Slot, stream: Stream) -> Option<String> {
        self.held.remove(&(slot, stream)).filter(|t| !t.is_empty())
    }

    /// Every held-back end.
    fn flush_all(&mut self) -> Vec<(Slot, Stream, String)> {
        let mut all: Vec<_> = self.held.drain().map(|((s, k), t)| (s, k, t)).collect();
        all.sort_by_key(|(s, _, _)| *s);
        all
    }
}

/// Handle of the writer task of one conversation.
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    ids: Arc<Mutex<HashMap<Slot, MessageId>>>,
    task: tokio::task::JoinHandle<()>,
    next: Slot,
    redactor: Mutex<Redactor>,
}

impl Writer {
    /// A writer that replaces each of `secrets` in everything it writes.
    pub fn start(
        docs: DocHost,
        conv: String,
        author: String,
        secrets: impl IntoIterator<Item = String>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(run(docs, conv, author, rx, ids.clone()));
        Self {
            tx,
            ids,
            task,
            next: 1,
            redactor: Mutex::new(Redactor::new(secrets)),
        }
    }

    pub fn slot(&mut self) -> Slot {
        self.next += 1;
        self.next
    }

    /// Queues `op`, its text redacted.
    pub fn send(&self, op: Op) {
        let mut r = self.redactor.lock().unwrap_or_else(|p| p.into_inner());
        let held_out = |r: &mut Redactor, slot: Slot, out: &mut Vec<Op>| {
            if let Some(t) = r.flush(slot, Stream::Text) {
                out.push(Op::Chunk(slot, t));
            }
            if let Some(t) = r.flush(slot, Stream::Output) {
                out.push(Op::ToolUpdate(
                    slot,
                    ToolCallUpdate {
                        output_chunk: Some(t),
                        ..Default::default()
                    },
                ));
            }
        };
        let mut out = Vec::new();
        match op {
            Op::Chunk(slot, text) => {
                let now = r.chunk(slot, Stream::Text, &text);
                if !now.is_empty() {
                    out.push(Op::Chunk(slot, now));
                }
            }
            Op::Tool(slot, mut t) => {
                t.title = r.redact(&t.title);
                t.input = r.redact(&t.input);
                t.locations = t.locations.iter().map(|l| r.redact(l)).collect();
                out.push(Op::Tool(slot, t));
            }
            Op::ToolUpdate(slot, mut u) => {
                u.title = u.title.map(|t| r.redact(&t));
                u.locations = u.locations.map(|l| l.iter().map(|x| r.redact(x)).collect());
                if let Some(chunk) = u.output_chunk.take() {
                    let now = r.chunk(slot, Stream::Output, &chunk);
                    u.output_chunk = (!now.is_empty()).then_some(now);
                }
                let ends = u.status.is_some();
                if u.output_chunk.is_some() || u.title.is_some() || u.locations.is_some() || ends {
                    out.push(Op::ToolUpdate(slot, u));
                }
                if ends {
                    // Held output goes before the status in the document: reorder.
                    let mut held = Vec::new();
                    held_out(&mut r, slot, &mut held);
                    let last = out.pop();
                    out.extend(held);
                    out.extend(last);
                }
            }
            Op::Plan(p) => out.push(Op::Plan(
                p.into_iter()
                    .map(|mut e| {
                        e.content = r.redact(&e.content);
                        e
                    })
                    .collect(),
            )),
            Op::Commands(list) => out.push(Op::Commands(
                list.into_iter()
                    .map(|(n, d)| (r.redact(&n), r.redact(&d)))
                    .collect(),
            )),
            Op::Permission(slot, title, options) => out.push(Op::Permission(
                slot,
                r.redact(&title),
                options
                    .into_iter()
                    .map(|mut o| {
                        o.name = r.redact(&o.name);
                        o
                    })
                    .collect(),
            )),
            Op::Status(slot, status, reason) => {
                held_out(&mut r, slot, &mut out);
                out.push(Op::Status(slot, status, reason.map(|t| r.redact(&t))));
            }
            Op::StatusOf(m, status, reason) => {
                // The turn's end: every held text is written first.
                for (slot, stream, t) in r.flush_all() {
                    out.push(held_op(slot, stream, t));
                }
                out.push(Op::StatusOf(m, status, reason.map(|t| r.redact(&t))));
            }
            op @ (Op::Start(..) | Op::Answer(..) | Op::Session(_)) => out.push(op),
        }
        for op in out {
            let _ = self.tx.send(op);
        }
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
        let held = self
            .redactor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_all();
        for (slot, stream, t) in held {
            let _ = self.tx.send(held_op(slot, stream, t));
        }
        drop(self.tx);
        let _ = self.task.await;
    }
}

fn held_op(slot: Slot, stream: Stream, text: String) -> Op {
    match stream {
        Stream::Text => Op::Chunk(slot, text),
        Stream::Output => Op::ToolUpdate(
            slot,
            ToolCallUpdate {
                output_chunk: Some(text),
                ..Default::default()
            },
        ),
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

    /// Feeds `chunks` as one streamed text and returns what would be written.
    fn stream(r: &mut Redactor, chunks: &[&str]) -> String {
        let mut out: String = chunks.iter().map(|c| r.chunk(1, Stream::Text, c)).collect();
        out.extend(r.flush(1, Stream::Text));
        out
    }

    #[test]
    fn a_secret_split_across_chunks_is_redacted() {
        let key = "sk-ant-0123456789";
        let mut r = Redactor::new([key.to_string(), "abc".to_string()]);
        assert_eq!(
            stream(&mut r, &["the key is ", key, "."]),
            "the key is [redacted]."
        );
        // Split at every position, and byte by byte.
        for i in 1..key.len() {
            let out = stream(&mut r, &["k=", &key[..i], &key[i..], " end"]);
            assert_eq!(out, "k=[redacted] end", "split at {i}");
        }
        let bytes: Vec<String> = format!("x{key}y").chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(stream(&mut r, &refs), "x[redacted]y");
        // A beginning that turns out not to be the key is written as it was.
        assert_eq!(stream(&mut r, &["sk-an", "swer"]), "sk-answer");
        assert_eq!(stream(&mut r, &["ends with sk-ant"]), "ends with sk-ant");
        // Values too short to be keys are left alone.
        assert_eq!(r.redact("abc abc"), "abc abc");
        // Multi-byte text around a held prefix.
        assert_eq!(
            stream(&mut r, &["é sk-", "ant-0", "123456789 ü"]),
            "é [redacted] ü"
        );
    }

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
