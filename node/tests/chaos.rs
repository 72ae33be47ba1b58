//! One ordered log: while the node streams, several clients disconnect and
//! reconnect at 1,000 random points in total; afterwards every replica equals the
//! node's document, with no duplicate message id and no lost or reordered chunk.

use crate::support::harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::{TestNode, endpoint};
use rand::{Rng, SeedableRng};
use sam_client::docs::open_stream;
use sam_crdt::{Conversation, NewConversation, Role as MsgRole, Status};
use sam_protocol::Role;

const CLIENTS: usize = 4;
const RECONNECTS_PER_CLIENT: usize = 250;
const MESSAGES: usize = 5;
const CHUNKS: usize = 300;

fn chunk(m: usize, c: usize) -> String {
    format!("[{m}:{c}]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_through_a_thousand_reconnects() {
    let n = TestNode::start().await;
    let author = n.node_key.node_id().to_string();
    let conv = Conversation::create(
        NewConversation {
            id: "ca05".into(),
            title: "chaos".into(),
            agent: "custom".into(),
            workspace_node: author.clone(),
            workspace_id: "w".into(),
            created_at: sam_crdt::now_ms(),
        },
        &author,
    )
    .expect("create");
    let docs = n.handle.node.docs().clone();
    docs.insert(conv).await.expect("insert");

    // The node streams MESSAGES agent messages of CHUNKS chunks each.
    let streamer = {
        let docs = docs.clone();
        let author = author.clone();
        tokio::spawn(async move {
            for m in 0..MESSAGES {
                let a = author.clone();
                let id = docs
                    .mutate("ca05", move |c| c.start_message(&a, MsgRole::Agent))
                    .await
                    .expect("mutate")
                    .expect("start");
                for c in 0..CHUNKS {
                    let id2 = id.clone();
                    docs.mutate("ca05", move |d| d.append_chunk(&id2, &chunk(m, c)))
                        .await
                        .expect("mutate")
                        .expect("chunk");
                    if c % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let id2 = id.clone();
                docs.mutate("ca05", move |d| d.set_status(&id2, Status::Done, None))
                    .await
                    .expect("mutate")
                    .expect("done");
            }
        })
    };

    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (key, ticket) = n.member(if k % 2 == 0 {
            Role::Viewer
        } else {
            Role::Collaborator
        });
        clients.push(tokio::spawn(async move {
            let ep = endpoint(&key).await;
            let mut replica = Conversation::new_replica();
            let seed: u64 = rand::random();
            eprintln!("client {k}: seed {seed}");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut reconnects = 0;
            while reconnects < RECONNECTS_PER_CLIENT {
                let Ok(mut s) = open_stream(&ep, &ticket, "ca05", false).await else {
                    continue;
                };
                // Disconnect after a random moment: mid-message, mid-sync, anywhere.
                let cut = Duration::from_micros(rng.random_range(100..20_000));
                let _ = tokio::time::timeout(cut, s.follow(&mut replica, |_| Ok(()), |_| {})).await;
                drop(s);
                reconnects += 1;
            }
            (key, ticket, ep, replica)
        }));
    }

    streamer.await.expect("streamer");
    let mut node_doc = docs
        .mutate("ca05", |c| (c.heads(), c.messages()))
        .await
        .expect("read node doc");
    node_doc.0.sort();
    let (node_heads, node_msgs) = node_doc;

    // Every chunk is in the node's document, in order.
    assert_eq!(node_msgs.len(), MESSAGES);
    for (m, msg) in node_msgs.iter().enumerate() {
        let want: String = (0..CHUNKS).map(|c| chunk(m, c)).collect();
        assert_eq!(msg.text, want, "node message {m}");
    }

    for c in clients {
        let (_key, ticket, ep, mut replica) = c.await.expect("client");
        let mut s = open_stream(&ep, &ticket, "ca05", false)
            .await
            .expect("final open");
        s.sync_once(&mut replica, |_| Ok(()), Duration::from_secs(60))
            .await
            .expect("final sync");
        let mut heads = replica.heads();
        heads.sort();
        assert_eq!(heads, node_heads, "replica heads differ from the node's");
        let msgs = replica.messages();
        assert_eq!(msgs, node_msgs, "replica messages differ from the node's");
        let ids: HashSet<_> = msgs.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids.len(), msgs.len(), "duplicate message id");
    }
}
