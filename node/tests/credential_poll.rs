//! The git credential broker's long poll over a real `sam/ctl/1` connection: a client that
//! gives up a `WaitCredential` (its future dropped, as `tokio::select!` does when another
//! branch wins) must not take the next credential request with it. This was `sam idea`'s
//! flake: the poll of the workspace step stayed open on the node, claimed the push's request
//! and answered it to a stream nobody read, so `git push` waited 90 s for nothing.

use crate::support::harness;

use std::time::Duration;

use sam_protocol::ctl::{Request, Response};
use sam_protocol::workspace::{GitCredential, WorkspaceRequest, WorkspaceResponse};

async fn wait_credential(
    c: &sam_client::NodeClient,
) -> Option<sam_protocol::workspace::CredentialRequest> {
    match c
        .request(Request::Workspace(WorkspaceRequest::WaitCredential))
        .await
        .expect("wait")
    {
        Response::Workspace(WorkspaceResponse::Credential(r)) => r,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn an_abandoned_long_poll_does_not_swallow_the_next_request() {
    let n = harness::TestNode::start().await;
    let (ep, c) = harness::client(&n.owner, &n.handle.ticket())
        .await
        .expect("connect");
    // A poll that the client gives up (no request is waiting, so it is still open).
    let abandoned = tokio::time::timeout(Duration::from_millis(300), wait_credential(&c)).await;
    assert!(abandoned.is_err(), "a request came from nowhere");
    // Let the stop reach the node (loopback), then a git inside a workspace asks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = n.handle.node.workspaces().broker().clone();
    let asker = tokio::spawn(async move {
        broker
            .ask("ws1", "https".into(), "example.invalid".into(), None)
            .await
    });
    // The next poll gets it (before the claim lease, 35 s, could hand it out again).
    let req = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(r) = wait_credential(&c).await {
                return r;
            }
        }
    })
    .await
    .expect("the request went to the abandoned poll");
    assert_eq!(req.workspace, "ws1");
    let answered = c
        .request(Request::Workspace(WorkspaceRequest::AnswerCredential {
            request: req.id,
            answer: Some(GitCredential {
                username: "u".into(),
                password: "p".into(),
            }),
        }))
        .await
        .expect("answer");
    assert!(matches!(
        answered,
        Response::Workspace(WorkspaceResponse::CredentialAnswered)
    ));
    let got = asker.await.expect("join").expect("a credential");
    assert_eq!(got.username, "u");
    c.close();
    ep.close().await;
}
