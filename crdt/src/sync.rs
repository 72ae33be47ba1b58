//! Sans-IO helpers for Automerge's sync protocol.

use automerge::sync::{self, SyncDoc};

use crate::{Conversation, CrdtError};

/// Default cap on one received sync message: 16 MiB.
pub const DEFAULT_MAX_SYNC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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
        conv.receive_sync_message(&mut self.state, msg)
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

    /// The heads both sides are known to share.
    pub fn shared_heads(&self) -> &[automerge::ChangeHash] {
        &self.state.shared_heads
    }
}
