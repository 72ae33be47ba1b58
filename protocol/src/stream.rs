//! Opening a stream on the raw-byte ALPNs (`sam/pty/1`, `sam/port/1`, `sam/file/1`):
//! after the connection's hello, each bi stream starts with one header frame,
//! answered by one [`OpenReply`] frame; then raw bytes flow.

use serde::{Deserialize, Serialize};

use crate::ctl::ErrorBody;

/// The node's answer to a stream header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenReply {
    Ok,
    Error(ErrorBody),
}
