//! The ACP line transport's reader: agent stdout cut into lines of at most a cap, each
//! checked to be JSON-RPC (the full parse is the SDK's). Depends on std and tokio only,
//! so the fuzz crate (`fuzz/`) builds this very file without the rest of the node.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Reads one line of at most `max` bytes (without the newline); `None` at EOF.
pub async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(buf));
        }
        if let Some(pos) = avail.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&avail[..pos]);
            r.consume(pos + 1);
            return Ok(Some(buf));
        }
        let n = avail.len();
        buf.extend_from_slice(avail);
        r.consume(n);
        if buf.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the agent sent a message larger than {} MiB on stdout",
                    max >> 20
                ),
            ));
        }
    }
}

/// Checks that a line is a JSON-RPC message (cheaply: the full parse happens later).
pub fn check_line(line: Vec<u8>) -> std::io::Result<Option<String>> {
    let s = String::from_utf8(line).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the agent wrote bytes that are not UTF-8 on stdout",
        )
    })?;
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.starts_with('{') && t.contains("\"jsonrpc\"") && t.contains("\"2.0\"") {
        return Ok(Some(s));
    }
    let shown: String = t.chars().take(120).collect();
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the agent wrote something that is not ACP (JSON-RPC) on stdout: {shown:?}"),
    ))
}
