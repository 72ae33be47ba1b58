//! Per-conversation agent settings kept as optional root fields: the `custom` agent's
//! command (`agent_cmd`), the permission policy (`policy`) and the ACP session id the node
//! last used (`acp_session`, so a restarted agent can `session/load` it).

use automerge::ROOT;
use automerge::transaction::Transactable;

use super::Conversation;
use crate::{CrdtError, access};

/// Longest `agent_cmd` accepted.
pub const MAX_AGENT_CMD: usize = 4096;

impl Conversation {
    fn opt_root_str(&self, key: &str) -> Option<String> {
        access::opt_str(&self.doc, &ROOT, key, "").ok().flatten()
    }

    fn put_root_str(&mut self, author: &str, key: &str, value: &str) -> Result<(), CrdtError> {
        let key = key.to_string();
        let value = value.to_string();
        self.mutate(author, &key.clone(), move |c| {
            c.doc.put(ROOT, key.as_str(), value.as_str())?;
            Ok(())
        })
    }

    /// The ACP command of a `custom` agent (`None` when not set).
    pub fn agent_cmd(&self) -> Option<String> {
        self.opt_root_str("agent_cmd")
            .filter(|s| !s.trim().is_empty())
    }

    /// Sets the ACP command of a `custom` agent.
    pub fn set_agent_cmd(&mut self, author: &str, cmd: &str) -> Result<(), CrdtError> {
        if cmd.trim().is_empty() || cmd.len() > MAX_AGENT_CMD {
            return Err(CrdtError::InvalidArgument(format!(
                "an agent command must be 1..={MAX_AGENT_CMD} bytes"
            )));
        }
        self.put_root_str(author, "agent_cmd", cmd)
    }

    /// The permission policy as stored (`ask`, `allow-reads`, `allow-all`); `None` = `ask`.
    pub fn policy(&self) -> Option<String> {
        self.opt_root_str("policy")
    }

    /// Stores the permission policy (the caller checks the value).
    pub fn set_policy(&mut self, author: &str, policy: &str) -> Result<(), CrdtError> {
        self.put_root_str(author, "policy", policy)
    }

    /// Replaces the agent's slash commands (root `commands`: a list of `{ name, description }`).
    pub fn set_commands(
        &mut self,
        author: &str,
        commands: &[(String, String)],
    ) -> Result<(), CrdtError> {
        self.mutate(author, "commands", |c| {
            let l = c
                .doc
                .put_object(ROOT, "commands", automerge::ObjType::List)?;
            for (i, (name, description)) in commands.iter().enumerate() {
                let m = c.doc.insert_object(&l, i, automerge::ObjType::Map)?;
                c.doc.put(&m, "name", name.as_str())?;
                c.doc.put(&m, "description", description.as_str())?;
            }
            Ok(())
        })
    }

    /// The agent's slash commands as `(name, description)`.
    pub fn commands(&self) -> Vec<(String, String)> {
        use automerge::ReadDoc;
        let Ok(Some(l)) =
            access::opt_obj(&self.doc, &ROOT, "commands", automerge::ObjType::List, "")
        else {
            return Vec::new();
        };
        (0..self.doc.length(&l))
            .filter_map(|i| {
                let m =
                    access::list_obj(&self.doc, &l, i, automerge::ObjType::Map, "commands").ok()?;
                Some((
                    access::req_str(&self.doc, &m, "name", "").ok()?,
                    access::opt_str(&self.doc, &m, "description", "")
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// The ACP session id the node last used for this conversation.
    pub fn acp_session(&self) -> Option<String> {
        self.opt_root_str("acp_session")
    }

    /// Records the ACP session id (not a secret: it only names the agent's own history).
    pub fn set_acp_session(&mut self, author: &str, session: &str) -> Result<(), CrdtError> {
        if self.acp_session().as_deref() == Some(session) {
            return Ok(());
        }
        self.put_root_str(author, "acp_session", session)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Conversation, NewConversation};

    const A: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn agent_fields_round_trip() {
        let mut c = Conversation::create(
            NewConversation {
                id: "c1".into(),
                title: "t".into(),
                agent: "custom".into(),
                workspace_node: A.into(),
                workspace_id: "w".into(),
                created_at: 1,
            },
            A,
        )
        .expect("create");
        assert_eq!(c.agent_cmd(), None);
        assert_eq!(c.policy(), None);
        c.set_agent_cmd(A, "my-agent --acp").expect("cmd");
        c.set_policy(A, "allow-all").expect("policy");
        c.set_acp_session(A, "s-1").expect("session");
        c.set_commands(A, &[("test".into(), "run tests".into())])
            .expect("commands");
        assert!(c.set_agent_cmd(A, " ").is_err());
        let bytes = c.save();
        let c = Conversation::load(&bytes).expect("load");
        assert_eq!(c.agent_cmd().as_deref(), Some("my-agent --acp"));
        assert_eq!(c.policy().as_deref(), Some("allow-all"));
        assert_eq!(c.acp_session().as_deref(), Some("s-1"));
        assert_eq!(
            c.commands(),
            vec![("test".to_string(), "run tests".to_string())]
        );
    }
}
