//! The wire between the node and `sam-pty-hold`, the small process inside a workspace
//! container that owns a terminal's PTY, its shell and a bounded ring of its output, so
//! the terminal outlives a node restart (see `src/bin/sam-pty-hold.rs`).
//!
//! The node reaches a holder through a non-tty `docker exec` of `sam-pty-hold attach
//! SOCKET`, a dumb relay between its stdin/stdout and the holder's unix socket. Both
//! directions carry frames: one tag byte, a `u32` big-endian payload length, the payload.
//! Everything here is std-only so the holder binary stays small.
//!
//! The holder runs inside the workspace: the node treats every byte it sends as a peer's
//! (bounded frames, offsets checked against what the node already has, clear errors).

/// Version of this wire, sent in [`ToHolder::Attach`] and [`ToNode::Hello`].
pub const VERSION: u32 = 1;
/// Largest payload of one frame either way.
pub const MAX_PAYLOAD: usize = 64 * 1024 + 16;
/// Output bytes per [`ToNode::Output`] frame.
pub const OUTPUT_CHUNK: usize = 64 * 1024;
/// Output a holder keeps (the node's scrollback holds up to twice `PTY_SCROLLBACK`).
pub const RING: usize = 512 * 1024;
/// Where the node puts the holder binary in a container.
pub const HOLDER_PATH: &str = "/opt/sam/sam-pty-hold";
/// What `sam-pty-hold probe` prints.
pub const PROBE: &str = "sam-pty-hold 1";

const T_ATTACH: u8 = 1;
const T_INPUT: u8 = 2;
const T_RESIZE: u8 = 3;
const T_HELLO: u8 = 11;
const T_OUTPUT: u8 = 12;
const T_EXIT: u8 = 13;
const T_REPLACED: u8 = 14;

/// Node → holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHolder {
    /// First frame of a connection: send output from absolute byte `from` on.
    Attach {
        version: u32,
        from: u64,
    },
    Input(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// Holder → node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToNode {
    /// Answer to `Attach`: the replay starts at `start`; the output so far ends at `end`.
    Hello { version: u32, start: u64, end: u64 },
    /// Output bytes starting at absolute byte `offset`.
    Output { offset: u64, data: Vec<u8> },
    /// The shell exited with `code` (128 + signal when killed); nothing follows.
    Exit { code: i32 },
    /// Another attach took this holder over; nothing follows on this connection.
    Replaced,
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    UnknownTag(u8),
    BadLength { tag: u8, len: usize },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge(n) => {
                write!(
                    f,
                    "terminal holder frame of {n} bytes is over {MAX_PAYLOAD}"
                )
            }
            WireError::UnknownTag(t) => write!(f, "unknown terminal holder frame tag {t}"),
            WireError::BadLength { tag, len } => {
                write!(f, "terminal holder frame {tag} has a bad length {len}")
            }
        }
    }
}

impl std::error::Error for WireError {}

fn head(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

impl ToHolder {
    /// Appends the wire form; input over [`OUTPUT_CHUNK`] is split.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToHolder::Attach { version, from } => {
                head(out, T_ATTACH, 12);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&from.to_be_bytes());
            }
            ToHolder::Input(d) => {
                for c in d.chunks(OUTPUT_CHUNK) {
                    head(out, T_INPUT, c.len());
                    out.extend_from_slice(c);
                }
            }
            ToHolder::Resize { cols, rows } => {
                head(out, T_RESIZE, 4);
                out.extend_from_slice(&cols.to_be_bytes());
                out.extend_from_slice(&rows.to_be_bytes());
            }
        }
    }

    /// One frame from the front of `buf`: `Ok(None)` when more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<(ToHolder, usize)>, WireError> {
        let Some((tag, p, n)) = split(buf)? else {
            return Ok(None);
        };
        let bad = || WireError::BadLength { tag, len: p.len() };
        let f = match tag {
            T_ATTACH if p.len() == 12 => ToHolder::Attach {
                version: u32::from_be_bytes(p[..4].try_into().map_err(|_| bad())?),
                from: u64::from_be_bytes(p[4..].try_into().map_err(|_| bad())?),
            },
            T_INPUT => ToHolder::Input(p.to_vec()),
            T_RESIZE if p.len() == 4 => ToHolder::Resize {
                cols: u16::from_be_bytes([p[0], p[1]]),
                rows: u16::from_be_bytes([p[2], p[3]]),
            },
            T_ATTACH | T_RESIZE => return Err(bad()),
            t => return Err(WireError::UnknownTag(t)),
        };
        Ok(Some((f, n)))
    }
}

impl ToNode {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToNode::Hello {
                version,
                start,
                end,
            } => {
                head(out, T_HELLO, 20);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&end.to_be_bytes());
            }
            ToNode::Output { offset, data } => {
                let mut at = *offset;
                for c in data.chunks(OUTPUT_CHUNK) {
                    head(out, T_OUTPUT, 8 + c.len());
                    out.extend_from_slice(&at.to_be_bytes());
                    out.extend_from_slice(c);
                    at += c.len() as u64;
                }
            }
            ToNode::Exit { code } => {
                head(out, T_EXIT, 4);
                out.extend_from_slice(&code.to_be_bytes());
            }
            ToNode::Replaced => head(out, T_REPLACED, 0),
        }
    }

    /// One frame from the front of `buf`: `Ok(None)` when more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<(ToNode, usize)>, WireError> {
        let Some((tag, p, n)) = split(buf)? else {
            return Ok(None);
        };
        let bad = || WireError::BadLength { tag, len: p.len() };
        let u64_at = |i: usize| -> Result<u64, WireError> {
            Ok(u64::from_be_bytes(
                p.get(i..i + 8)
                    .ok_or_else(bad)?
                    .try_into()
                    .map_err(|_| bad())?,
            ))
        };
        let f = match tag {
            T_HELLO if p.len() == 20 => ToNode::Hello {
                version: u32::from_be_bytes(p[..4].try_into().map_err(|_| bad())?),
                start: u64_at(4)?,
                end: u64_at(12)?,
            },
            T_OUTPUT if p.len() >= 8 => ToNode::Output {
                offset: u64_at(0)?,
                data: p[8..].to_vec(),
            },
            T_EXIT if p.len() == 4 => ToNode::Exit {
                code: i32::from_be_bytes(p.try_into().map_err(|_| bad())?),
            },
            T_REPLACED if p.is_empty() => ToNode::Replaced,
            T_HELLO | T_OUTPUT | T_EXIT | T_REPLACED => return Err(bad()),
            t => return Err(WireError::UnknownTag(t)),
        };
        Ok(Some((f, n)))
    }
}

/// A frame's tag, its payload and its whole length.
type Split<'a> = (u8, &'a [u8], usize);

/// Tag, payload and total length of the frame at the front of `buf`.
fn split(buf: &[u8]) -> Result<Option<Split<'_>>, WireError> {
    let Some(h) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len));
    }
    Ok(buf.get(5..5 + len).map(|p| (h[0], p, 5 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut b = Vec::new();
        let to_holder = [
            ToHolder::Attach {
                version: VERSION,
                from: 77,
            },
            ToHolder::Input(b"ls\r".to_vec()),
            ToHolder::Resize { cols: 80, rows: 24 },
        ];
        for f in &to_holder {
            f.encode(&mut b);
        }
        let mut at = 0;
        for f in &to_holder {
            let (g, n) = ToHolder::decode(&b[at..]).expect("ok").expect("whole");
            assert_eq!(&g, f);
            at += n;
        }
        let to_node = [
            ToNode::Hello {
                version: 1,
                start: 5,
                end: 9,
            },
            ToNode::Output {
                offset: 5,
                data: b"hi".to_vec(),
            },
            ToNode::Exit { code: -3 },
            ToNode::Replaced,
        ];
        let mut b = Vec::new();
        for f in &to_node {
            f.encode(&mut b);
        }
        let mut at = 0;
        for f in &to_node {
            let (g, n) = ToNode::decode(&b[at..]).expect("ok").expect("whole");
            assert_eq!(&g, f);
            at += n;
            // Every proper prefix asks for more bytes.
            for cut in 0..n {
                assert_eq!(ToNode::decode(&b[at - n..at - n + cut]), Ok(None));
            }
        }
        assert_eq!(
            ToNode::decode(&[T_OUTPUT, 0xff, 0, 0, 0]),
            Err(WireError::TooLarge(0xff00_0000))
        );
        assert_eq!(
            ToNode::decode(&[T_EXIT, 0, 0, 0, 1, 0]),
            Err(WireError::BadLength {
                tag: T_EXIT,
                len: 1
            })
        );
        assert_eq!(
            ToNode::decode(&[99, 0, 0, 0, 0]),
            Err(WireError::UnknownTag(99))
        );
        assert_eq!(
            ToHolder::decode(&[T_OUTPUT, 0, 0, 0, 0]),
            Err(WireError::UnknownTag(T_OUTPUT))
        );
    }
}
