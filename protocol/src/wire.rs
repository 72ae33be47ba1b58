//! Async shell around [`crate::frame`]: one frame in, one frame out, on any tokio
//! stream (QUIC streams of iroh in the node and the client). Behind the `io` feature, so
//! the rest of this crate stays free of IO.

use crate::ctl::{
    ErrorBody, ErrorCode, REQUEST_HEAD_LEN, RequestFrame, RequestGate, check_request_head,
    check_request_len, peek_request,
};
use crate::frame::{self, FrameError, HEADER_LEN};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream closed before a whole frame arrived")]
    Closed,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `max` payload bytes.
pub async fn read_frame<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<T, WireError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(r, &mut header).await?;
    let len = frame::payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    read_exact(r, &mut payload).await?;
    Ok(frame::decode(&payload)?)
}

/// Reads one frame of a [`frame::Bounded`] type (a hello, a stream header) under its
/// own cap.
pub async fn read_bounded<T: frame::Bounded + DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<T, WireError> {
    read_frame(r, T::MAX_LEN).await
}

/// Why a ctl request was not read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("stream closed before a whole request arrived")]
    Closed,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// Refused with this answer for the peer (too large, not allowed, malformed). When it
    /// came from the length or the head, the rest of the body was not read.
    #[error("{0}")]
    Refused(ErrorBody),
}

impl From<WireError> for RequestError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Closed => RequestError::Closed,
            WireError::Io(e) => RequestError::Io(e),
            WireError::Frame(e) => RequestError::Refused(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("malformed or unknown request ({e}); is one side a newer version?"),
            )),
        }
    }
}

/// Reads one ctl request under `gate`, in three steps, each before any more is read:
/// the length header (refused over the most this peer may send at all), the head
/// (version and kind: refused when the peer may not ask it, or the length is over that
/// kind's cap), then the body, decoded.
pub async fn read_request(
    r: &mut (impl AsyncRead + Unpin),
    gate: &impl RequestGate,
) -> Result<RequestFrame, RequestError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(r, &mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    check_request_len(gate, len).map_err(RequestError::Refused)?;
    let mut payload = vec![0u8; len.min(REQUEST_HEAD_LEN)];
    read_exact(r, &mut payload).await?;
    let head = peek_request(&payload).map_err(RequestError::Refused)?;
    check_request_head(gate, &head, len).map_err(RequestError::Refused)?;
    let start = payload.len();
    payload.resize(len, 0);
    read_exact(r, &mut payload[start..]).await?;
    Ok(frame::decode(&payload).map_err(WireError::from)?)
}

async fn read_exact(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Result<(), WireError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
) -> Result<(), WireError> {
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}
