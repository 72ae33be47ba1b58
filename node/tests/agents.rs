//! Agents over ACP with real `sam-test-agent` processes, a real node on loopback iroh and
//! real clients: streaming into the document, tool calls, plans, permissions (ctl and doc
//! answers, roles, policies), cancel, crash and restart, queued prompts, credentials.

use crate::support::agent_util as util;
use crate::support::harness;

use sam_client::conn::ConnectError;
use sam_client::docs::open_stream;
use sam_crdt::{Conversation, Role as MsgRole, Status};
use sam_protocol::agent::{AgentRequest, PermissionPolicy};
use sam_protocol::capability::Grantee;
use sam_protocol::ctl::{ErrorCode, Request};
use sam_protocol::{Role, SecretKey, Ticket};
use util::{AgentNode, T, agent_text};

fn member(n: &AgentNode, role: Role) -> (SecretKey, Ticket) {
    let key = SecretKey::generate();
    let cap = sam_protocol::capability::Capability::new(
        n.owner.node_id(),
        n.node_key.node_id(),
        Grantee::Key(key.node_id()),
        role,
        None,
        harness::now(),
        None,
    )
    .sign(&n.owner, None);
    let mut t = n.handle.ticket();
    t.capability = Some(cap);
    (key, t)
}

async fn ask(key: &SecretKey, ticket: &Ticket, req: AgentRequest) -> Result<(), ConnectError> {
    let (ep, c) = harness::client(key, ticket).await?;
    let r = c.request(Request::Agent(req)).await.map(|_| ());
    c.close();
    ep.close().await;
    r
}

fn code(r: Result<(), ConnectError>) -> ErrorCode {
    match r {
        Err(ConnectError::Remote(e)) => e.code,
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_turn_lands_in_the_doc_and_a_follower_sees_it_live() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    // A collaborator follows live from its own replica.
    let (key, ticket) = member(&n, Role::Collaborator);
    let ep = harness::endpoint(&key).await;
    let mut stream = open_stream(&ep, &ticket, &id, false).await.expect("open");
    let (tx, mut rx) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        let mut conv = Conversation::new_replica();
        let _ = stream
            .follow(
                &mut conv,
                |_| Ok(()),
                |c| {
                    let _ = tx.send(agent_text(&c.messages()));
                },
            )
            .await;
    });
    let p = n
        .prompt(
            &id,
            "think about it; chunks 40 5; tool edit Edit main.rs; plan; commands; say bye",
        )
        .await;
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Done, "{done:?}");
    let m = n.messages(&id).await;
    let text = agent_text(&m);
    assert!(text.contains("c0 c1 ") && text.contains("c39 "), "{text}");
    assert!(text.ends_with("bye"), "{text}");
    let thought = m
        .iter()
        .find(|x| x.role == MsgRole::Thought)
        .expect("thought");
    assert_eq!(thought.text, "about it");
    let tool = m.iter().find(|x| x.role == MsgRole::Tool).expect("tool");
    let tv = tool.tool.as_ref().expect("tool view");
    assert_eq!(tv.kind, "edit");
    assert_eq!(tv.output, "tool output");
    assert_eq!(tv.status, sam_crdt::ToolStatus::Completed);
    assert_eq!(tool.status, Status::Done);
    assert!(
        m.iter()
            .filter(|x| x.role != MsgRole::User)
            .all(|x| x.status == Status::Done)
    );
    let (plan, commands) = n
        .node()
        .docs()
        .read(&id, |c| (c.plan(), c.commands()))
        .await
        .expect("read");
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[1].status, "in_progress");
    assert_eq!(commands[0].0, "test");
    // The follower saw the same text.
    tokio::time::timeout(T, rx.wait_for(|t| t.ends_with("bye")))
        .await
        .expect("follower in time")
        .expect("follower");
    ep.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_by_collaborators_only_with_known_options() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "permit edit; say after").await;
    let m = n
        .wait(&id, "a permission request", |m| {
            m.iter().any(|x| x.role == MsgRole::Permission)
        })
        .await;
    let perm = m
        .iter()
        .find(|x| x.role == MsgRole::Permission)
        .expect("perm");
    let opts: Vec<_> = perm
        .permission
        .as_ref()
        .expect("p")
        .options
        .iter()
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(opts, ["yes-once", "no-once"]);
    let permit = |option: &str| AgentRequest::Permit {
        conv: id.clone(),
        message: perm.id.to_string(),
        option: option.into(),
    };
    let (viewer, vt) = member(&n, Role::Viewer);
    assert_eq!(
        code(ask(&viewer, &vt, permit("yes-once")).await),
        ErrorCode::Forbidden
    );
    let (collab, ct) = member(&n, Role::Collaborator);
    assert_eq!(
        code(ask(&collab, &ct, permit("maybe")).await),
        ErrorCode::BadRequest
    );
    ask(&collab, &ct, permit("no-once")).await.expect("answer");
    // A second answer is refused: the first one stands.
    assert!(
        ask(&n.owner, &n.handle.ticket(), permit("yes-once"))
            .await
            .is_err()
    );
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Done);
    let m = n.messages(&id).await;
    assert_eq!(agent_text(&m), "permission: selected no-onceafter");
    let perm = m
        .iter()
        .find(|x| x.role == MsgRole::Permission)
        .expect("perm");
    let chosen = perm
        .permission
        .as_ref()
        .and_then(|p| p.chosen.clone())
        .expect("chosen");
    assert_eq!(chosen.by, collab.node_id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_written_into_replicas_reach_the_agent_exactly_once() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "permit read").await;
    n.wait(&id, "a permission request", |m| {
        m.iter().any(|x| x.role == MsgRole::Permission)
    })
    .await;
    // Two collaborators answer in their own replicas, concurrently, then sync.
    let mut tasks = Vec::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    for option in ["yes-once", "no-once"] {
        let (key, ticket) = member(&n, Role::Collaborator);
        let id = id.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let ep = harness::endpoint(&key).await;
            let mut conv = Conversation::new_replica();
            let mut s = open_stream(&ep, &ticket, &id, false).await.expect("open");
            s.sync_once(&mut conv, |_| Ok(()), T).await.expect("sync");
            let perm = conv
                .messages()
                .into_iter()
                .find(|x| x.role == MsgRole::Permission)
                .expect("perm");
            // Both have seen the request before either answers.
            barrier.wait().await;
            conv.answer_permission(&perm.id, option, &key.node_id().to_string())
                .expect("answer");
            s.sync_once(&mut conv, |_| Ok(()), T).await.expect("push");
            s.close(None).await;
            ep.close().await;
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Done);
    let m = n.messages(&id).await;
    let text = agent_text(&m);
    assert_eq!(text.matches("permission:").count(), 1, "{text}");
    // The node acted on the first answer it saw; both answers stay in the document (a later
    // arriving answer with an earlier stamp may become `chosen`: see the schema doc).
    let perm = m
        .iter()
        .find(|x| x.role == MsgRole::Permission)
        .expect("perm");
    let answers = &perm.permission.as_ref().expect("p").answers;
    assert_eq!(answers.len(), 2);
    assert!(
        answers
            .iter()
            .any(|a| text == format!("permission: selected {}", a.option)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all_needs_no_answer_and_allow_reads_only_reads() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let set = |policy| AgentRequest::SetPolicy {
        conv: id.clone(),
        policy,
    };
    ask(
        &n.owner,
        &n.handle.ticket(),
        set(PermissionPolicy::AllowReads),
    )
    .await
    .expect("policy");
    let p = n.prompt(&id, "permit read").await;
    n.ended(&id, &p).await;
    assert_eq!(
        agent_text(&n.messages(&id).await),
        "permission: selected yes-once"
    );
    ask(
        &n.owner,
        &n.handle.ticket(),
        set(PermissionPolicy::AllowAll),
    )
    .await
    .expect("policy");
    let p = n.prompt(&id, "permit execute").await;
    n.ended(&id, &p).await;
    let m = n.messages(&id).await;
    assert_eq!(
        agent_text(&m),
        "permission: selected yes-once|permission: selected yes-once"
    );
    assert!(
        m.iter()
            .filter(|x| x.role == MsgRole::Permission)
            .all(|x| x.status == Status::Done)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_turn_and_records_who() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n.prompt(&id, "chunks 100000 5").await;
    n.wait(&id, "some output", |m| agent_text(m).contains("c3 "))
        .await;
    let (collab, ct) = member(&n, Role::Collaborator);
    ask(&collab, &ct, AgentRequest::Cancel { conv: id.clone() })
        .await
        .expect("cancel");
    let done = n.ended(&id, &p).await;
    assert_eq!(done.status, Status::Cancelled);
    let reason = done.reason.unwrap_or_default();
    assert!(reason.contains(&collab.node_id().to_string()), "{reason}");
    let m = n.messages(&id).await;
    assert!(
        m.iter()
            .any(|x| x.role == MsgRole::Agent && x.status == Status::Cancelled)
    );
    // The agent is still usable.
    let p = n.prompt(&id, "say again").await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_prompts_run_in_order() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&["say one", "say two", "say three"]).await;
    let m = n
        .wait(&id, "three turns", |m| {
            m.iter()
                .filter(|x| x.role == MsgRole::User && x.status == Status::Done)
                .count()
                == 3
        })
        .await;
    assert_eq!(agent_text(&m), "one|two|three");
    let users: Vec<_> = m
        .iter()
        .filter(|x| x.role == MsgRole::User)
        .map(|x| x.text.as_str())
        .collect();
    assert_eq!(users, ["say one", "say two", "say three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_and_terminal_are_served_inside_the_workspace_only() {
    let n = AgentNode::start(&[]).await;
    let id = n.conv(&[]).await;
    let p = n
        .prompt(&id, "write notes/a.txt hello file; read notes/a.txt; read missing.txt; run sh -c pwd; read /etc/hostname")
        .await;
    assert_eq!(n.ended(&id, &p).await.status, Status::Done);
    let text = agent_text(&n.messages(&id).await);
    assert!(text.contains("read: hello file"), "{text}");
    assert!(
        text.contains("read: ran:"),
        "a missing file reads empty: {text}"
    );
    assert!(text.contains("ran: exit 0 output: /"), "{text}");
    assert!(text.contains("read failed"), "escapes are refused: {text}");
    let ws = n
        .node()
        .docs()
        .read(&id, |c| c.workspace().id)
        .await
        .expect("ws");
    let on_disk = std::fs::read_to_string(n.root.join(ws).join("notes/a.txt")).expect("file");
    assert_eq!(on_disk, "hello file");
}
