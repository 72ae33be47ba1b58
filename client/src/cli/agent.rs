//! Driving agents from the command line: credentials from this client's
//! environment, following a turn to its end, cancel, permit, and `sam chat`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sam_crdt::{Conversation, MessageId, Role as MsgRole, Status};
use sam_protocol::agent::{AgentRequest, Credentials};
use sam_protocol::ctl::{Request, Response};
use serde_json::json;

use super::Output;
use super::convs::Printer;
use crate::book::NodeBook;
use crate::docs::{Replicas, open_stream};
use crate::paths::ClientPaths;

/// Environment variables handed to agents when set here (plus any named in
/// `SAM_AGENT_ENV`, comma separated). They go to the node for this session only
/// and reach the agent only as environment.
pub const AGENT_KEYS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "MISTRAL_API_KEY",
];

/// The agent credentials present in this client's environment.
pub fn credentials_from_env() -> Credentials {
    let mut names: Vec<String> = AGENT_KEYS.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = std::env::var("SAM_AGENT_ENV") {
        names.extend(
            extra
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    let env = names
        .into_iter()
        .filter_map(|k| {
            std::env::var(&k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k, v))
        })
        .collect();
    Credentials { env }
}

/// Connects to the node of `conv` and runs one agent request.
async fn agent_request(
    paths: &ClientPaths,
    conv: &Conversation,
    req: AgentRequest,
) -> Result<Response> {
    let book = NodeBook::load(&paths.nodes())?;
    let entry = book.find(Some(&conv.workspace().node))?.clone();
    let (ep, client, _) = super::open(paths, Some(&entry.id)).await?;
    let r = client.request(Request::Agent(req)).await;
    client.close();
    ep.close().await;
    Ok(r?)
}

/// Sends this client's agent keys for `conv` (nothing when none are set).
pub async fn send_credentials(paths: &ClientPaths, conv: &Conversation) -> Result<usize> {
    let credentials = credentials_from_env();
    let n = credentials.env.len();
    if n == 0 {
        return Ok(0);
    }
    credentials.check().map_err(anyhow::Error::msg)?;
    agent_request(
        paths,
        conv,
        AgentRequest::Credentials {
            conv: Some(conv.id()),
            workspace: None,
            credentials,
        },
    )
    .await?;
    Ok(n)
}

fn resolve(paths: &ClientPaths, conv: &str) -> Result<(Replicas, Conversation)> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let doc = replicas.load(&id)?;
    Ok((replicas, doc))
}

/// `sam cancel CONV`.
pub async fn cancel(paths: &ClientPaths, conv: &str) -> Result<Output> {
    let (_, doc) = resolve(paths, conv)?;
    agent_request(paths, &doc, AgentRequest::Cancel { conv: doc.id() }).await?;
    Ok(Output::new(
        json!({ "cancelled": doc.id() }),
        format!("cancel sent\n{}", doc.id()),
    ))
}

/// `sam permit CONV MESSAGE OPTION`.
pub async fn permit(
    paths: &ClientPaths,
    conv: &str,
    message: &str,
    option: &str,
) -> Result<Output> {
    let (_, doc) = resolve(paths, conv)?;
    let msg = doc
        .messages()
        .into_iter()
        .find(|m| m.id.as_str() == message || m.id.as_str().starts_with(message))
        .with_context(|| format!("no message {message:?} in {}", doc.id()))?;
    let p = msg
        .permission
        .as_ref()
        .with_context(|| format!("message {} is not a permission request", msg.id))?;
    if !p.options.iter().any(|o| o.id == option) {
        let ids: Vec<_> = p.options.iter().map(|o| o.id.as_str()).collect();
        bail!(
            "{option:?} is not an option of this request; the agent offered: {}",
            ids.join(", ")
        );
    }
    agent_request(
        paths,
        &doc,
        AgentRequest::Permit {
            conv: doc.id(),
            message: msg.id.to_string(),
            option: option.to_string(),
        },
    )
    .await?;
    Ok(Output::new(
        json!({ "conversation": doc.id(), "message": msg.id.to_string(), "option": option }),
        format!("answered {option}\n{}", msg.id),
    ))
}

/// How a followed turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    Done,
    Failed,
    Cancelled,
}

/// Whether the turn started by prompt `msg` is over: the prompt left
/// queued/running and no later message is still running or streaming.
fn turn_state(conv: &Conversation, msg: &MessageId) -> Option<TurnEnd> {
    let msgs = conv.messages();
    let pos = msgs.iter().position(|m| &m.id == msg)?;
    let prompt = &msgs[pos];
    if matches!(
        prompt.status,
        Status::Queued | Status::Running | Status::Streaming
    ) {
        return None;
    }
    let later = &msgs[pos + 1..];
    if later.iter().any(|m| {
        matches!(
            m.status,
            Status::Running | Status::Streaming | Status::Queued
        ) && m.role != MsgRole::User
    }) {
        return None;
    }
    Some(match prompt.status {
        Status::Failed | Status::Interrupted => TurnEnd::Failed,
        Status::Cancelled => TurnEnd::Cancelled,
        _ if later.iter().any(|m| m.status == Status::Failed) => TurnEnd::Failed,
        _ => TurnEnd::Done,
    })
}

/// Follows `conv` until the turn of prompt `msg` ends; Ctrl-C cancels the turn. A lost
/// link is dialled again, as `sam log --follow` does (said on stderr); nothing is sent
/// twice: following only reads.
pub async fn follow_turn(paths: &ClientPaths, id: &str, msg: &MessageId) -> Result<TurnEnd> {
    let (mut replicas, mut doc) = resolve(paths, id)?;
    let entry = super::convs::follow_node(paths, &doc)?;
    let key = paths.identity()?;
    let ep = crate::endpoint::bind(&key, None).await?;
    let mut stream = open_stream(&ep, &entry.ticket()?, id, false).await?;
    let mut printer = Printer::default();
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let following = async {
        let mut wait = super::convs::FOLLOW_RETRY_MIN;
        loop {
            let ended = stream
                .follow(
                    &mut doc,
                    |c| replicas.save(c),
                    |c| {
                        printer.show_after(&c.messages(), msg);
                        let _ = tx.send(turn_state(c, msg));
                    },
                )
                .await;
            let reason = match ended {
                Ok(()) => "the node ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            eprintln!("\nsam: link lost ({reason}); following again…");
            stream = super::convs::follow_again(&ep, paths, &doc, id, &mut wait).await?;
        }
    };
    let end = async {
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return TurnEnd::Failed;
            }
        }
    };
    let result = tokio::select! {
        r = following => r,
        e = end => Ok(e),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ncancelling the turn…");
            let doc = resolve(paths, id)?.1;
            agent_request(paths, &doc, AgentRequest::Cancel { conv: doc.id() }).await?;
            Ok(TurnEnd::Cancelled)
        }
    };
    println!();
    ep.close().await;
    result
}

/// `sam prompt CONV TEXT --follow`: prompt, then follow the turn to its end.
pub async fn prompt_follow(paths: &ClientPaths, conv: &str, text: &str) -> Result<Output> {
    let (_, doc) = resolve(paths, conv)?;
    if let Err(e) = send_credentials(paths, &doc).await {
        eprintln!("note: agent keys not sent: {e:#}");
    }
    let out = super::convs::prompt(paths, conv, text).await?;
    if out.json["sent"] != json!(true) {
        return Ok(out);
    }
    let msg = MessageId::new(out.json["message"].as_str().unwrap_or_default())?;
    let end = follow_turn(paths, &doc.id(), &msg).await?;
    let word = match end {
        TurnEnd::Done => "done",
        TurnEnd::Failed => "failed",
        TurnEnd::Cancelled => "cancelled",
    };
    if end == TurnEnd::Failed {
        bail!("the turn failed (see `sam log {}`)", doc.id());
    }
    Ok(Output::new(
        json!({ "conversation": doc.id(), "message": msg.to_string(), "end": word }),
        format!("turn {word}\n{msg}"),
    ))
}

/// `sam chat`: an interactive conversation in a workspace.
pub async fn chat(
    paths: &ClientPaths,
    conv: Option<String>,
    workspace: Option<String>,
    node: Option<String>,
    agent: String,
) -> Result<Output> {
    use tokio::io::AsyncBufReadExt;
    let id = match conv {
        Some(c) => Replicas::open(paths)?.resolve(&c)?,
        None => {
            let ws = match workspace {
                Some(w) => w,
                None => pick_workspace(paths, node.as_deref()).await?,
            };
            let out = super::convs::convs(
                paths,
                super::convs::ConvsCmd::New {
                    workspace: ws,
                    node: node.clone(),
                    agent,
                    agent_cmd: None,
                    title: None,
                    policy: None,
                },
            )
            .await?;
            out.json["id"]
                .as_str()
                .context("conversation id")?
                .to_string()
        }
    };
    eprintln!(
        "chatting in conversation {id} — type a prompt and Enter; Ctrl-C cancels a turn, Ctrl-D ends"
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next_line().await? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match prompt_follow(paths, &id, line).await {
            Ok(out) if out.json["end"].is_null() => eprintln!("{}", out.text),
            Ok(_) => {}
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(Output::new(json!({ "conversation": id }), id))
}

/// The first ready workspace on the node, or a new lightweight one.
async fn pick_workspace(paths: &ClientPaths, node: Option<&str>) -> Result<String> {
    use sam_protocol::workspace::{
        CreateWorkspace, WorkspaceRequest, WorkspaceResponse, WorkspaceStatus,
    };
    let (ep, client, entry) = super::open(paths, node).await?;
    let r = client
        .request(Request::Workspace(WorkspaceRequest::List))
        .await?;
    let existing = match r {
        Response::Workspace(WorkspaceResponse::List(list)) => list
            .into_iter()
            .find(|w| w.status == WorkspaceStatus::Ready)
            .map(|w| w.id),
        _ => None,
    };
    let id = match existing {
        Some(id) => id,
        None => {
            eprintln!(
                "no ready workspace on {}: creating a lightweight one…",
                entry.name
            );
            let r = client
                .request(Request::Workspace(WorkspaceRequest::Create(
                    CreateWorkspace {
                        repo: None,
                        branch: None,
                        lightweight: true,
                        name: None,
                    },
                )))
                .await?;
            let Response::Workspace(WorkspaceResponse::Info(info)) = r else {
                bail!("unexpected answer to workspace create");
            };
            let info = super::workspace::follow_creation(&client, &info.id).await?;
            info.id
        }
    };
    client.close();
    ep.close().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(id)
}
