//! The four real ACP adapters through `sam-node` into a document: each agent, run by the
//! node's runner as a host process with a throw-away HOME and its key sent by a client
//! as a credential, answers a queued prompt with one tool call that writes a file in the
//! workspace; the turn, the tool call and the answer land in the conversation.

use crate::support::{agent_util, harness, real_agents};

use std::collections::HashMap;
use std::time::Duration;

use sam_crdt::{Conversation, MessageId, NewConversation, Role as MsgRole, Status};
use sam_node::fake_llm::FakeLlm;
use sam_protocol::SecretKey;
use sam_protocol::agent::{AgentRequest, Credentials};
use sam_protocol::ctl::Request;

async fn through_the_node(agent: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("workspaces");
    let ws = root.join("w1");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&ws).expect("workspace");
    std::fs::create_dir_all(&home).expect("home");
    let target = ws.join("hello.txt");
    let content = format!("hello from {agent} through sam-node\n");
    let llm = FakeLlm::start(real_agents::write_script(&target, &content))
        .await
        .expect("fake LLM");
    let setup = real_agents::setup(agent, &home, &llm);

    let mut cfg = agent_util::config(&root, &[]);
    cfg.idle_timeout = Duration::from_secs(120);
    cfg.extra_env = setup.env.clone();
    cfg.extra_args = HashMap::from([(agent.to_string(), setup.args.clone())]);
    let owner = SecretKey::generate();
    let node_key = SecretKey::generate();
    let handle = agent_util::start_node(&dir.path().join("node"), &owner, &node_key, cfg).await;
    let me = owner.node_id().to_string();

    let mut conv = Conversation::create(
        NewConversation {
            id: MessageId::random().to_string(),
            title: format!("{agent} via sam-node"),
            agent: agent.into(),
            workspace_node: node_key.node_id().to_string(),
            workspace_id: "w1".into(),
            created_at: sam_crdt::now_ms(),
        },
        &me,
    )
    .expect("create");
    conv.set_policy(&me, "allow-all").expect("policy");
    let id = conv.id();
    handle.node.docs().insert(conv).await.expect("insert");

    // The key comes from the client, for this conversation, as a credential.
    let (ep, c) = harness::client(&owner, &handle.ticket())
        .await
        .expect("owner");
    c.request(Request::Agent(AgentRequest::Credentials {
        conv: Some(id.clone()),
        workspace: None,
        credentials: Credentials {
            env: setup.credentials.clone(),
        },
    }))
    .await
    .expect("credentials");
    c.close();
    ep.close().await;

    let author = me.clone();
    let prompt = handle
        .node
        .docs()
        .mutate(&id, move |c| {
            c.append_user_message(&author, real_agents::WRITE_PROMPT, Status::Queued)
        })
        .await
        .expect("mutate")
        .expect("prompt");

    let start = std::time::Instant::now();
    let msgs = loop {
        let m = handle
            .node
            .docs()
            .read(&id, |c| c.messages())
            .await
            .expect("read");
        let ended = m.iter().any(|x| {
            x.id == prompt
                && matches!(
                    x.status,
                    Status::Done | Status::Failed | Status::Cancelled | Status::Interrupted
                )
        });
        if ended {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{agent}: the turn did not end: {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let p = msgs.iter().find(|m| m.id == prompt).expect("prompt");
    assert_eq!(p.status, Status::Done, "{agent}: {msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.role == MsgRole::Tool),
        "{agent}: no tool call in the document: {msgs:#?}"
    );
    let answer = agent_util::agent_text(&msgs);
    assert!(
        !answer.trim().is_empty(),
        "{agent}: no agent text: {msgs:#?}"
    );
    let written = std::fs::read_to_string(&target)
        .unwrap_or_else(|e| panic!("{agent}: {} was not written: {e}", target.display()));
    assert_eq!(written, content, "{agent}: wrong file content");
    real_agents::check_requests(agent, &llm);
    // The key is nowhere in the node's files.
    let key = real_agents::planted_key(agent);
    for entry in walk(&dir.path().join("node")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{agent}: the key landed in {}",
            entry.display()
        );
    }
    handle.shutdown().await.expect("shutdown");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_answers_through_sam_node() {
    through_the_node("claude").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_answers_through_sam_node() {
    through_the_node("codex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_answers_through_sam_node() {
    through_the_node("gemini").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vibe_answers_through_sam_node() {
    through_the_node("vibe").await;
}
