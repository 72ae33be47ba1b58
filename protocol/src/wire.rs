//! Async shell around [`crate::frame`]: one frame in, one frame out, on any tokio
//! stream (QUIC streams of iroh in the node and the client). Behind the `io` feature, so
//! the rest of this crate stays free of IO.

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
