//! Length-prefixed frames: a `u32` big-endian length, then a postcard payload.
//!
//! Frames above [`MAX_FRAME`] (or a smaller per-use cap) are refused before any
//! allocation. Decoding is sans-IO: the caller reads the 4-byte header, asks
//! [`payload_len`] whether to go on, reads that many bytes and calls [`decode`].
//!
//! Every type decoded from a peer is bounded: no recursive type (a peer could nest it
//! deep enough to overflow the stack), and lists with a limit of their own (the proof
//! chain of a capability) are refused by their decoder from the announced length, with
//! the reason kept in [`FrameError::OverLimit`].

use std::cell::RefCell;

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Hard cap on one frame's payload: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame payload: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    /// A bounded field (e.g. a capability's proof chain) is over its limit.
    #[error("{0}")]
    OverLimit(String),
}

thread_local! {
    /// The message of the last [`over_limit`] error on this thread: postcard keeps no
    /// message of a custom error, so [`decode`] picks it up here.
    static OVER_LIMIT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The error a bounded decoder returns when a peer's data is over a limit; [`decode`]
/// turns it into [`FrameError::OverLimit`] with this message.
pub fn over_limit<E: serde::de::Error>(message: String) -> E {
    let e = E::custom(&message);
    OVER_LIMIT.with(|m| *m.borrow_mut() = Some(message));
    e
}

fn take_over_limit() -> Option<String> {
    OVER_LIMIT.with(|m| m.borrow_mut().take())
}

/// A frame type with its own size cap: the first frame of a connection or a stream,
/// read before anything else is known of the peer's request. Read with
/// [`crate::wire::read_bounded`], so a call site cannot pick a wrong cap.
pub trait Bounded {
    /// Largest payload accepted; a longer frame is refused from its header.
    const MAX_LEN: usize;
}

/// One id or name with a flag or a port.
const SMALL_HEADER: usize = 4 * 1024;
/// Paths, names and a command line.
const PATH_HEADER: usize = 16 * 1024;

impl Bounded for crate::ctl::Hello {
    const MAX_LEN: usize = crate::ctl::MAX_HELLO;
}

impl Bounded for crate::doc::DocOpen {
    const MAX_LEN: usize = SMALL_HEADER;
}

impl Bounded for crate::stream::PtyOpen {
    const MAX_LEN: usize = PATH_HEADER;
}

impl Bounded for crate::stream::PortOpen {
    const MAX_LEN: usize = SMALL_HEADER;
}

impl Bounded for crate::stream::FileOpen {
    const MAX_LEN: usize = PATH_HEADER;
}

/// Decodes a bounded frame's payload, refusing one over its cap.
pub fn decode_bounded<T: Bounded + DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > T::MAX_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: T::MAX_LEN,
        });
    }
    decode(payload)
}

/// Encodes `msg` as one frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_with_limit(msg, MAX_FRAME)
}

/// Encodes `msg` as one frame, refusing payloads over `max` bytes.
pub fn encode_with_limit<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN])?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // len <= max <= u32::MAX is checked above for every sane cap.
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Reads the payload length from a header, refusing lengths over `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one payload (without header). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    take_over_limit();
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(|e| match take_over_limit() {
        Some(m) => FrameError::OverLimit(m),
        None => FrameError::Malformed(e),
    })?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(msg)
}

/// Decodes a whole frame (header + payload) held in memory.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    let header: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            expected: HEADER_LEN,
            got: frame.len(),
        })?;
    let len = payload_len(header, max)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() != len {
        return Err(FrameError::Truncated {
            expected: len,
            got: payload.len(),
        });
    }
    decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{Request, Response};
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let req = Request::Status;
        let frame = encode(&req).expect("encode");
        let back: Request = decode_frame(&frame, MAX_FRAME).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_header_refused_before_reading() {
        let header = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            payload_len(header, MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_payload_refused_on_encode() {
        let big = Response::Error(crate::ctl::ErrorBody::new(
            crate::ctl::ErrorCode::Internal,
            "x".repeat(100),
        ));
        assert!(matches!(
            encode_with_limit(&big, 10),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frame() {
        let frame = encode(&Request::Status).expect("encode");
        assert!(decode_frame::<Request>(&frame[..2], MAX_FRAME).is_err());
        let mut longer = frame.clone();
        longer.push(0);
        assert!(decode_frame::<Request>(&longer, MAX_FRAME).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = decode_frame::<Request>(&bytes, MAX_FRAME);
        }
    }
}
