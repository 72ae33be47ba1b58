//! Sans-IO helpers for Automerge's sync protocol.

use automerge::sync::{self, SyncDoc};

use crate::{Conversation, CrdtError};

/// Default cap on one received sync message: 16 MiB.
pub const DEFAULT_MAX_SYNC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Most hash probes a peer's bloom filter may ask for (Automerge writes 7).
const MAX_BLOOM_PROBES: u64 = 64;

/// Refuses bloom filters Automerge 0.12 cannot take from a peer: one that announces
/// entries but holds no bits makes `BloomFilter::contains_hash` divide by zero (a panic,
/// found by the `sync_message` fuzz target), and one asking for billions of probes makes
/// it allocate a probe list that large.
fn check_blooms(msg: &sync::Message) -> Result<(), CrdtError> {
    fn leb(bytes: &mut &[u8]) -> Option<u64> {
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                *bytes = &bytes[i + 1..];
                return Some(v);
            }
        }
        None
    }
    for have in &msg.have {
        let bytes = have.bloom.to_bytes();
        if bytes.is_empty() {
            continue;
        }
        let mut rest = &bytes[..];
        let header = (leb(&mut rest), leb(&mut rest), leb(&mut rest));
        let ok = matches!(header, (Some(_), Some(_), Some(probes)) if probes <= MAX_BLOOM_PROBES)
            && !rest.is_empty();
        if !ok {
            return Err(CrdtError::SyncDecode(
                "the sync message's bloom filter is malformed (no bits, or too many probes)".into(),
            ));
        }
    }
    Ok(())
}

/// The sync state with one remote peer for one document.
///
/// Feed every byte string from the peer to [`Self::receive`] and send whatever
/// [`Self::generate`] returns, until it returns `None`; call `generate` again after every local
/// change (live push). Messages must be delivered in order on one connection; after a
/// reconnect, resume with [`Self::decode_state`] of the last [`Self::encode_state`] (or a fresh
/// peer).
#[derive(Debug)]
pub struct SyncPeer {
    state: sync::State,
    max_message_bytes: usize,
}

impl Default for SyncPeer {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncPeer {
    /// A fresh peer with the default message cap.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_SYNC_MESSAGE_BYTES)
    }

    /// A fresh peer with a custom cap on received message size.
    pub fn with_limit(max_message_bytes: usize) -> Self {
        Self {
            state: sync::State::new(),
            max_message_bytes,
        }
    }

    /// The next message to send to this peer, if any.
    pub fn generate(&mut self, conv: &mut Conversation) -> Option<Vec<u8>> {
        conv.commit_pending();
        conv.doc
            .sync()
            .generate_sync_message(&mut self.state)
            .map(sync::Message::encode)
    }

    /// Applies a message from this peer.
    ///
    /// Fails (and changes nothing in the document) if the message is larger than the cap, is not
    /// a sync message, or its changes would break the schema ([`CrdtError::SyncRejected`]); the
    /// caller should then close this peer. After a rejection the sync state is reset.
    pub fn receive(&mut self, conv: &mut Conversation, bytes: &[u8]) -> Result<(), CrdtError> {
        if bytes.len() > self.max_message_bytes {
            return Err(CrdtError::SyncMessageTooLarge {
                size: bytes.len(),
                limit: self.max_message_bytes,
            });
        }
        let msg = sync::Message::decode(bytes).map_err(|e| CrdtError::SyncDecode(e.to_string()))?;
        check_blooms(&msg)?;
        conv.receive_sync_message(&mut self.state, msg, None)
    }

    /// Applies a message from this peer like [`Self::receive`], and lets `guard` decide
    /// whether the peer may make the changes it makes to the guarded root fields (identity:
    /// `id`, `schema`, `created_at`, `parent`; steering: `workspace`, `agent`, `agent_cmd`,
    /// `policy`, `acp_session`, `hosts`, `served_by` — see [`crate::guard`]). `guard` is only
    /// called when such a field changed (conflicting values included); when it returns an
    /// error, every change of the message is rolled back, the sync state is reset and
    /// [`CrdtError::Forbidden`] carries the reason.
    pub fn receive_guarded(
        &mut self,
        conv: &mut Conversation,
        bytes: &[u8],
        guard: &dyn Fn(&crate::GuardedChange) -> Result<(), String>,
    ) -> Result<(), CrdtError> {
        if bytes.len() > self.max_message_bytes {
            return Err(CrdtError::SyncMessageTooLarge {
                size: bytes.len(),
                limit: self.max_message_bytes,
            });
        }
        let msg = sync::Message::decode(bytes).map_err(|e| CrdtError::SyncDecode(e.to_string()))?;
        check_blooms(&msg)?;
        conv.receive_sync_message(&mut self.state, msg, Some(guard))
    }

    /// The persistent part of the state (shared heads), for resuming after a reconnect.
    pub fn encode_state(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// Restores a state saved with [`Self::encode_state`], with the default cap.
    pub fn decode_state(bytes: &[u8]) -> Result<Self, CrdtError> {
        let state =
            sync::State::decode(bytes).map_err(|e| CrdtError::SyncStateDecode(e.to_string()))?;
        Ok(Self {
            state,
            max_message_bytes: DEFAULT_MAX_SYNC_MESSAGE_BYTES,
        })
    }

    /// Forgets everything about the peer (as after a connection loss without saved state).
    pub fn reset(&mut self) {
        self.state = sync::State::new();
    }

    /// Applies a live message from [`live_message`]: the sender's changes since its previous
    /// batch. Nothing is answered and the sync state only learns that the sender holds
    /// those heads, so a follower costs the sender nothing per batch.
    ///
    /// Returns `false` when a dependency is missing (this peer missed an earlier batch): the
    /// changes wait in the document's queue and the caller should run ordinary sync
    /// ([`Self::generate`]) to fetch the gap. Errors as for [`Self::receive`].
    pub fn receive_live(
        &mut self,
        conv: &mut Conversation,
        bytes: &[u8],
    ) -> Result<bool, CrdtError> {
        self.receive_live_batches(conv, std::slice::from_ref(&bytes))
    }

    /// Applies several consecutive live messages as one: Automerge's apply of remote
    /// changes walks the whole object they touch, so a follower that fell behind catches up
    /// with one walk instead of one per message. Same result and errors as applying them
    /// one by one with [`Self::receive_live`].
    pub fn receive_live_batches<B: AsRef<[u8]>>(
        &mut self,
        conv: &mut Conversation,
        batches: &[B],
    ) -> Result<bool, CrdtError> {
        if batches.is_empty() {
            return Ok(true);
        }
        let mut heads = Vec::new();
        let mut changes: Vec<Vec<u8>> = Vec::new();
        for bytes in batches {
            let bytes = bytes.as_ref();
            if bytes.len() > self.max_message_bytes {
                return Err(CrdtError::SyncMessageTooLarge {
                    size: bytes.len(),
                    limit: self.max_message_bytes,
                });
            }
            let msg =
                sync::Message::decode(bytes).map_err(|e| CrdtError::SyncDecode(e.to_string()))?;
            heads = msg.heads;
            changes.extend(msg.changes.iter().map(<[u8]>::to_vec));
        }
        let msg = sync::Message {
            heads: heads.clone(),
            need: Vec::new(),
            have: Vec::new(),
            changes: changes.into(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        // A scratch state: the real one must not think the sender asked for anything.
        let mut scratch = sync::State::new();
        conv.receive_sync_message(&mut scratch, msg, None)?;
        let complete = heads
            .iter()
            .all(|h| conv.doc.get_change_by_hash(h).is_some());
        if complete {
            self.state.shared_heads.clone_from(&heads);
            self.state.their_heads = Some(heads.clone());
            if self.state.their_need.is_none() {
                self.state.their_need = Some(Vec::new());
            }
            self.state.their_have = Some(vec![sync::Have {
                last_sync: heads,
                bloom: sync::BloomFilter::default(),
            }]);
        }
        Ok(complete)
    }

    /// The heads both sides are known to share.
    pub fn shared_heads(&self) -> &[automerge::ChangeHash] {
        &self.state.shared_heads
    }
}

/// A live message for followers: the changes of `conv` that are not ancestors of `since`
/// (one chunk per change, so receivers validate only what the changes touch) with the
/// current heads. `None` when there is nothing new. Encoded once per batch and sent to
/// every follower; see [`SyncPeer::receive_live`].
pub fn live_message(conv: &mut Conversation, since: &[automerge::ChangeHash]) -> Option<Vec<u8>> {
    conv.commit_pending();
    let heads = conv.doc.get_heads();
    if heads.as_slice() == since {
        return None;
    }
    let changes: Vec<Vec<u8>> = conv
        .doc
        .get_changes(since)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    if changes.is_empty() {
        return None;
    }
    let msg = sync::Message {
        heads,
        need: Vec::new(),
        have: Vec::new(),
        changes: changes.into(),
        flags: None,
        version: sync::MessageVersion::V1,
    };
    Some(msg.encode())
}
