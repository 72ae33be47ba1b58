//! Length-prefixed frames: a `u32` big-endian length, then a postcard payload.
//!
//! Frames above [`MAX_FRAME`] (or a smaller per-use cap) are refused before any
//! allocation. Decoding is sans-IO: the caller reads the 4-byte header, asks
//! [`payload_len`] whether to go on, reads that many bytes and calls [`decode`].

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
    let (msg, rest) = postcard::take_from_bytes(payload)?;
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
