//! Agents that misbehave: crash, hang, garbage or non-ACP output, a 100 MB message, exit
//! during initialize. Each gives a clear status in the document and the node stays up.
//! Also: restarts (session/load or transcript), node restarts, and planted credentials
//! never reaching the node's disk or logs.

use crate::support::agent_util as util;
use crate::support::harness;

use std::sync::{Arc, Mutex};

use sam_crdt::{Role as MsgRole, Status};
use sam_protocol::agent::{AgentRequest, Credentials};
use sam_protocol::ctl::{Request, Response};
use util::{AgentNode, agent_text};

async fn node_is_up(n: &AgentNode) {
    let (ep, c) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("connect");
    assert!(matches!(c.request(Request::Ping).await, Ok(Response::Pong)));
    c.close();
    ep.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_the_turn_with_stderr_and_the_next_prompt_loads_the_session() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "whoami").await;
    n.ended(&id, &p).await;
    let p = n.prompt(&id, "say partial; crash boom").await;
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Failed);
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains("crashing on purpose: boom"), "{reason}");
    assert!(reason.contains("exit"), "{reason}");
    let m = n.messages(&id).await;
    assert!(
        m.iter()
            .any(|x| x.role == MsgRole::Agent && x.text == "partial" && x.status == Status::Failed)
    );
    node_is_up(&n).await;
    let p = n.prompt(&id, "whoami").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
    let text = agent_text(&n.messages(&id).await);
    let first = text.split('|').next().unwrap_or_default().to_string();
    let session = first.trim_end_matches(" loaded=false").to_string();
    assert!(text.ends_with(&format!("{session} loaded=true")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_session_load_a_restarted_agent_gets_the_transcript() {
    let n = AgentNode::start(&[("SAM_TEST_AGENT_MODE", "no-load")]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "say first answer").await;
    n.ended(&id, &p).await;
    let p = n.prompt(&id, "crash").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Failed);
    let p = n.prompt(&id, "whoami").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
    let m = n.messages(&id).await;
    let note = m
        .iter()
        .find(|x| x.role == MsgRole::System)
        .expect("system note");
    assert!(note.text.contains("transcript"), "{}", note.text);
    assert!(agent_text(&m).ends_with("loaded=false"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_is_stopped_and_the_node_stays_up() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "say before; hang").await;
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Failed);
    assert!(done.reason.unwrap_or_default().contains("did not answer"));
    node_is_up(&n).await;
    let p = n.prompt(&id, "say alive").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
}

async fn fails_clearly(env: &[(&str, &str)], script: &str, expect: &str) {
    let n = AgentNode::start_idle(
        env,
        std::time::Duration::from_secs(if script.starts_with("big") { 120 } else { 3 }),
    )
    .await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, script).await;
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Failed, "{script}");
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains(expect), "{script}: {reason}");
    node_is_up(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_non_acp_and_huge_messages_fail_clearly() {
    fails_clearly(&[], "say ok; garbage", "not ACP").await;
    fails_clearly(&[], "nonacp", "not ACP").await;
    fails_clearly(&[], "big 100000000", "larger than 16 MiB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_fail_clearly() {
    fails_clearly(
        &[("SAM_TEST_AGENT_MODE", "exit-on-init")],
        "say hi",
        "exiting during initialize",
    )
    .await;
    fails_clearly(
        &[("SAM_TEST_AGENT_MODE", "garbage-on-init")],
        "say hi",
        "not ACP",
    )
    .await;
    fails_clearly(
        &[("SAM_TEST_AGENT_MODE", "hang-on-init")],
        "say hi",
        "initialize",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_interrupts_the_running_turn_and_keeps_queued_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = sam_protocol::SecretKey::generate();
    let node_key = sam_protocol::SecretKey::generate();
    let root = dir.path().join("ws");
    let mut cfg = util::config(&root, &[]);
    cfg.idle_timeout = std::time::Duration::from_secs(60);
    let h = util::start_node(&dir.path().join("node"), &owner, &node_key, cfg.clone()).await;
    let me = owner.node_id().to_string();
    let mut c = util::new_conv(&node_key.node_id().to_string(), &me);
    // What a crashed node leaves behind: a running turn, a streaming reply, a queued prompt.
    let running = c
        .append_user_message(&me, "sleep 100000", Status::Running)
        .expect("p");
    let reply = c.start_message(&me, MsgRole::Agent).expect("reply");
    let queued = c
        .append_user_message(&me, "say later", Status::Queued)
        .expect("q");
    let id = c.id();
    // Stop the node's agents first so the doc is only stored, not run.
    h.node.agents().shutdown();
    h.node.docs().insert(c).await.expect("insert");
    h.shutdown().await.expect("shutdown");
    let h = util::start_node(&dir.path().join("node"), &owner, &node_key, cfg).await;
    let n = AgentNode {
        dir,
        root,
        owner,
        node_key,
        handle: h,
    };
    let m = n
        .wait(&id, "recovery", |m| {
            m.iter().any(|x| x.id == queued && x.status == Status::Done)
        })
        .await;
    let get = |mid| m.iter().find(|x| x.id == mid).expect("msg").clone();
    assert_eq!(get(running.clone()).status, Status::Interrupted);
    assert_eq!(get(reply.clone()).status, Status::Interrupted);
    assert!(agent_text(&m).ends_with("later"));
}

/// A writer for captured logs.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep_dir(&p, needle));
        } else if let Ok(b) = std::fs::read(&p)
            && b.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p);
        }
    }
    hits
}

#[tokio::test(flavor = "current_thread")]
async fn a_planted_key_reaches_the_agent_but_never_disk_docs_or_logs() {
    let logs = Capture::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let key = format!("sk-planted-{:016x}", std::process::id() as u64 * 7919 + 17);
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let (ep, c) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("connect");
    c.request(Request::Agent(AgentRequest::Credentials {
        conv: Some(id.clone()),
        workspace: None,
        credentials: Credentials {
            env: vec![("ANTHROPIC_API_KEY".into(), key.clone())],
        },
    }))
    .await
    .expect("credentials");
    c.close();
    ep.close().await;
    let p = n
        .prompt(
            &id,
            "env ANTHROPIC_API_KEY; stderr-env ANTHROPIC_API_KEY; crash",
        )
        .await;
    let done = n.ended(&id, &p).await;
    let text = agent_text(&n.messages(&id).await);
    assert_eq!(
        text,
        format!("ANTHROPIC_API_KEY is set ({} bytes)", key.len())
    );
    assert_eq!(done.status, Status::Failed);
    assert!(
        done.reason
            .unwrap_or_default()
            .contains("ANTHROPIC_API_KEY=[redacted]")
    );
    let hits = grep_dir(n.dir.path(), key.as_bytes());
    assert!(hits.is_empty(), "the key is on disk: {hits:?}");
    let logged = logs.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!logged.is_empty(), "logs were captured");
    assert!(
        !logged.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is in the logs"
    );
}
