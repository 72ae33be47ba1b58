//! Helpers for agent tests: a node whose agents are host processes of `sam-test-agent`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use sam_crdt::{Conversation, MessageId, MessageView, NewConversation, Status};
use sam_node::agent::{AgentsConfig, LauncherMode};
use sam_node::{Node, NodeConfig, NodeHandle, NodePaths};
use sam_protocol::SecretKey;

pub const T: Duration = Duration::from_secs(60);

pub fn test_agent() -> String {
    env!("CARGO_BIN_EXE_sam-test-agent").to_string()
}

pub struct AgentNode {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub owner: SecretKey,
    pub node_key: SecretKey,
    pub handle: NodeHandle,
}

pub fn config(root: &std::path::Path, env: &[(&str, &str)]) -> AgentsConfig {
    AgentsConfig {
        launcher: LauncherMode::Host {
            root: root.to_path_buf(),
        },
        idle_timeout: Duration::from_secs(3),
        cancel_grace: Duration::from_secs(3),
        extra_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..AgentsConfig::default()
    }
}

pub async fn start_node(
    dir: &std::path::Path,
    owner: &SecretKey,
    node_key: &SecretKey,
    cfg: AgentsConfig,
) -> NodeHandle {
    let mut c = NodeConfig::new(owner.node_id());
    c.bind = "127.0.0.1:0".parse().expect("addr");
    Node::start_with_agents(NodePaths::new(dir), c, node_key.clone(), cfg)
        .await
        .expect("node starts")
}

impl AgentNode {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_idle(env, Duration::from_secs(3)).await
    }

    /// With another idle timeout (slow agents, e.g. one writing 100 MB in a debug build).
    pub async fn start_idle(env: &[(&str, &str)], idle: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("workspaces");
        let owner = SecretKey::generate();
        let node_key = SecretKey::generate();
        let mut cfg = config(&root, env);
        cfg.idle_timeout = idle;
        let handle = start_node(&dir.path().join("node"), &owner, &node_key, cfg).await;
        Self {
            dir,
            root,
            owner,
            node_key,
            handle,
        }
    }

    pub fn node(&self) -> &Node {
        &self.handle.node
    }

    pub fn owner_id(&self) -> String {
        self.owner.node_id().to_string()
    }

    /// A conversation with the test agent, stored on the node.
    pub async fn conv(&self, prompts: &[&str]) -> String {
        let mut c = new_conv(&self.node_key.node_id().to_string(), &self.owner_id());
        for p in prompts {
            c.append_user_message(&self.owner_id(), p, Status::Queued)
                .expect("prompt");
        }
        let id = c.id();
        self.node().docs().insert(c).await.expect("insert");
        id
    }

    pub async fn prompt(&self, conv: &str, text: &str) -> MessageId {
        let author = self.owner_id();
        let text = text.to_string();
        self.node()
            .docs()
            .mutate(conv, move |c| {
                c.append_user_message(&author, &text, Status::Queued)
            })
            .await
            .expect("mutate")
            .expect("prompt")
    }

    pub async fn messages(&self, conv: &str) -> Vec<MessageView> {
        self.node()
            .docs()
            .read(conv, |c| c.messages())
            .await
            .expect("read")
    }

    /// Waits until `pred` holds for the messages.
    pub async fn wait(
        &self,
        conv: &str,
        what: &str,
        pred: impl Fn(&[MessageView]) -> bool,
    ) -> Vec<MessageView> {
        let start = std::time::Instant::now();
        loop {
            let m = self.messages(conv).await;
            if pred(&m) {
                return m;
            }
            if start.elapsed() > T {
                panic!("timed out waiting for {what}; messages: {m:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a prompt to end; returns it.
    pub async fn ended(&self, conv: &str, prompt: &MessageId) -> MessageView {
        let m = self
            .wait(conv, "the turn to end", |m| {
                m.iter().any(|x| {
                    &x.id == prompt
                        && matches!(
                            x.status,
                            Status::Done | Status::Failed | Status::Cancelled | Status::Interrupted
                        )
                })
            })
            .await;
        m.into_iter().find(|x| &x.id == prompt).expect("prompt")
    }
}

pub fn new_conv(node: &str, author: &str) -> Conversation {
    let mut c = Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: "agent test".into(),
            agent: "custom".into(),
            workspace_node: node.into(),
            workspace_id: format!("ws{:08x}", rand_u32()),
            created_at: sam_crdt::now_ms(),
        },
        author,
    )
    .expect("create");
    c.set_agent_cmd(author, &test_agent()).expect("cmd");
    c
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(7))
        .unwrap_or(7)
        ^ std::process::id()
}

/// Text of every agent message, in order.
pub fn agent_text(m: &[MessageView]) -> String {
    m.iter()
        .filter(|x| x.role == sam_crdt::Role::Agent)
        .map(|x| x.text.as_str())
        .collect::<Vec<_>>()
        .join("|")
}
