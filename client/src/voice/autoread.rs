//! "Auto-read new answers": which agent messages became readable since last time.
//! Sans-IO: feed it the conversation's messages whenever they change.

use std::collections::HashSet;

use sam_crdt::{MessageId, MessageView, Role, Status};

/// Tracks the agent answers already heard (or already there when the conversation was
/// opened, so opening one does not read its history aloud).
#[derive(Debug, Default)]
pub struct AutoReader {
    seen: HashSet<MessageId>,
}

impl AutoReader {
    /// Starts with every message present now counted as heard.
    pub fn new(existing: &[MessageView]) -> Self {
        Self {
            seen: existing.iter().map(|m| m.id.clone()).collect(),
        }
    }

    /// Agent answers that finished since the last call, oldest first, as `(id, markdown)`.
    /// An answer is read once it is `done` (not while it streams).
    pub fn new_answers(&mut self, msgs: &[MessageView]) -> Vec<(MessageId, String)> {
        let mut out = Vec::new();
        for m in msgs {
            if self.seen.contains(&m.id) {
                continue;
            }
            match (m.role, m.status) {
                (Role::Agent, Status::Done) => {
                    self.seen.insert(m.id.clone());
                    if !m.text.trim().is_empty() {
                        out.push((m.id.clone(), m.text.clone()));
                    }
                }
                (Role::Agent, Status::Queued | Status::Running | Status::Streaming) => {}
                _ => {
                    self.seen.insert(m.id.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_crdt::{Conversation, NewConversation};

    #[test]
    fn reads_each_finished_answer_once_and_not_the_history() {
        let node = "ab".repeat(32);
        let mut c = Conversation::create(
            NewConversation {
                id: "c0de".into(),
                title: "t".into(),
                agent: "custom".into(),
                workspace_node: node.clone(),
                workspace_id: "w".into(),
                created_at: 1,
            },
            &node,
        )
        .expect("create");
        let old = c.start_message(&node, Role::Agent).expect("start");
        c.append_chunk(&old, "old answer").expect("chunk");
        c.set_status(&old, Status::Done, None).expect("done");
        let mut r = AutoReader::new(&c.messages());
        c.append_user_message(&node, "question", Status::Queued)
            .expect("user");
        let new = c.start_message(&node, Role::Agent).expect("start");
        c.append_chunk(&new, "new **answer**").expect("chunk");
        assert!(r.new_answers(&c.messages()).is_empty(), "still streaming");
        c.set_status(&new, Status::Done, None).expect("done");
        assert_eq!(
            r.new_answers(&c.messages()),
            vec![(new.clone(), "new **answer**".to_string())]
        );
        assert!(r.new_answers(&c.messages()).is_empty());
    }
}
