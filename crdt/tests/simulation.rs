//! Deterministic in-memory simulation: 3–5 peers, random partitions, interleavings, restarts.
//!
//! Transport model: each direction of a link is a FIFO (as a QUIC stream is); the scheduler
//! interleaves deliveries across links arbitrarily (reordering between peers). A partition or a
//! restart drops the link: in-flight messages are lost and both ends reset their sync state, as
//! a real reconnect does. Every peer persists to its own `DocStore` after each change it makes
//! or receives; a restart reloads from that store (or starts as an empty replica if it never
//! received the document).

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;
use sam_crdt::{
    Conversation, DocStore, FsyncPolicy, MessageId, NewConversation, Role, Status, StoreOptions,
    SyncPeer,
};

const DOC: &str = "d0c";

fn node_id(i: usize) -> String {
    format!("{:064x}", i + 1)
}

#[derive(Debug, Clone)]
enum Op {
    Prompt(usize),
    Start,
    Chunk,
    Send(usize, usize),
    Deliver(usize, usize),
    Toggle(usize, usize),
    Restart(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..5).prop_map(Op::Prompt),
        1 => Just(Op::Start),
        4 => Just(Op::Chunk),
        6 => (0usize..5, 0usize..5).prop_map(|(a, b)| Op::Send(a, b)),
        6 => (0usize..5, 0usize..5).prop_map(|(a, b)| Op::Deliver(a, b)),
        1 => (0usize..5, 0usize..5).prop_map(|(a, b)| Op::Toggle(a, b)),
        1 => (0usize..5).prop_map(Op::Restart),
    ]
}

struct Peer {
    conv: Conversation,
    store: DocStore,
    links: Vec<SyncPeer>,
}

struct Sim {
    peers: Vec<Peer>,
    up: Vec<Vec<bool>>,
    chan: HashMap<(usize, usize), VecDeque<Vec<u8>>>,
    expected: HashMap<MessageId, String>,
    current: Option<MessageId>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Sim {
    fn new(n: usize) -> Self {
        let mut peers = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("tmp");
            let store = DocStore::open(
                dir.path(),
                StoreOptions {
                    fsync: FsyncPolicy::Never,
                    compact_after_bytes: 16 * 1024,
                },
            )
            .expect("store");
            dirs.push(dir);
            let conv = if i == 0 {
                Conversation::create(
                    NewConversation {
                        id: DOC.into(),
                        title: "sim".into(),
                        agent: "claude".into(),
                        workspace_node: node_id(0),
                        workspace_id: "ws".into(),
                        created_at: 0,
                    },
                    &node_id(0),
                )
                .expect("create")
            } else {
                Conversation::new_replica()
            };
            peers.push(Peer {
                conv,
                store,
                links: (0..n).map(|_| SyncPeer::new()).collect(),
            });
        }
        let first = &mut peers[0];
        first.store.append(&mut first.conv).expect("persist");
        Sim {
            peers,
            up: vec![vec![true; n]; n],
            chan: HashMap::new(),
            expected: HashMap::new(),
            current: None,
            _dirs: dirs,
        }
    }

    fn persist(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        if !peer.conv.is_empty() {
            peer.store.append(&mut peer.conv).expect("persist");
        }
    }

    fn drop_link(&mut self, a: usize, b: usize) {
        self.chan.remove(&(a, b));
        self.chan.remove(&(b, a));
        self.peers[a].links[b].reset();
        self.peers[b].links[a].reset();
    }

    fn send(&mut self, a: usize, b: usize) {
        if a == b || !self.up[a][b] {
            return;
        }
        let peer = &mut self.peers[a];
        if let Some(m) = peer.links[b].generate(&mut peer.conv) {
            self.chan.entry((a, b)).or_default().push_back(m);
        }
    }

    fn deliver(&mut self, a: usize, b: usize) -> bool {
        let Some(m) = self.chan.get_mut(&(a, b)).and_then(VecDeque::pop_front) else {
            return false;
        };
        let peer = &mut self.peers[b];
        peer.links[a]
            .receive(&mut peer.conv, &m)
            .expect("honest peers' messages are accepted");
        self.persist(b);
        true
    }

    fn apply(&mut self, op: Op) {
        let n = self.peers.len();
        match op {
            Op::Prompt(p) => {
                let p = p % n;
                let text = format!("prompt from {p} #{}", self.expected.len());
                if let Ok(id) =
                    self.peers[p]
                        .conv
                        .append_user_message(&node_id(p), &text, Status::Queued)
                {
                    self.expected.insert(id, text);
                    self.persist(p);
                }
            }
            Op::Start => {
                let id = self.peers[0]
                    .conv
                    .start_message(&node_id(0), Role::Agent)
                    .expect("start");
                self.expected.insert(id.clone(), String::new());
                self.current = Some(id);
                self.persist(0);
            }
            Op::Chunk => {
                let Some(id) = self.current.clone() else {
                    return self.apply(Op::Start);
                };
                let chunk = format!("c{} ", self.expected.get(&id).map_or(0, String::len));
                self.peers[0].conv.append_chunk(&id, &chunk).expect("chunk");
                self.expected.entry(id).or_default().push_str(&chunk);
                self.persist(0);
            }
            Op::Send(a, b) => self.send(a % n, b % n),
            Op::Deliver(a, b) => {
                self.deliver(a % n, b % n);
            }
            Op::Toggle(a, b) => {
                let (a, b) = (a % n, b % n);
                if a != b {
                    self.up[a][b] = !self.up[a][b];
                    self.up[b][a] = self.up[a][b];
                    self.drop_link(a, b);
                }
            }
            Op::Restart(p) => {
                let p = p % n;
                let peer = &mut self.peers[p];
                peer.conv = if peer.store.contains(DOC).expect("contains") {
                    peer.store.load(DOC).expect("reload")
                } else {
                    Conversation::new_replica()
                };
                for q in 0..n {
                    self.drop_link(p, q);
                }
            }
        }
    }

    fn settle(&mut self) {
        let n = self.peers.len();
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    self.up[a][b] = true;
                }
            }
        }
        for a in 0..n {
            for b in a + 1..n {
                self.drop_link(a, b);
            }
        }
        for _round in 0..500 {
            let mut busy = false;
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        self.send(a, b);
                    }
                }
            }
            for a in 0..n {
                for b in 0..n {
                    busy |= self.deliver(a, b);
                }
            }
            if !busy {
                return;
            }
        }
        panic!("no convergence after 500 rounds");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn peers_converge(n in 3usize..=5, ops in proptest::collection::vec(op(), 1..80)) {
        let mut sim = Sim::new(n);
        for op in ops {
            sim.apply(op);
        }
        sim.settle();
        let heads = sim.peers[0].conv.heads();
        let msgs = sim.peers[0].conv.messages();
        for p in 1..n {
            prop_assert_eq!(&sim.peers[p].conv.heads(), &heads, "heads of peer {}", p);
            prop_assert_eq!(&sim.peers[p].conv.messages(), &msgs, "messages of peer {}", p);
        }
        let ids: HashSet<_> = msgs.iter().map(|m| m.id.clone()).collect();
        prop_assert_eq!(ids.len(), msgs.len(), "duplicate message ids");
        prop_assert_eq!(msgs.len(), sim.expected.len(), "lost or extra messages");
        for m in &msgs {
            prop_assert_eq!(Some(&m.text), sim.expected.get(&m.id), "text of {}", m.id);
        }
        // And every peer's store reloads to the same state.
        for p in 0..n {
            let mut c = sim.peers[p].store.load(DOC).expect("reload");
            prop_assert_eq!(c.heads(), heads.clone());
        }
    }
}
