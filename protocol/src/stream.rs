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

/// Largest terminal dimension accepted (cols or rows).
pub const MAX_PTY_DIM: u16 = 4096;
/// Scrollback a late joiner of a terminal receives.
pub const PTY_SCROLLBACK: usize = 256 * 1024;
/// Largest data chunk in one client→node PTY frame.
pub const MAX_PTY_CHUNK: usize = 64 * 1024;
/// Output the node holds for one terminal viewer that does not keep up; past it the
/// viewer is detached with [`PTY_RESET_TOO_SLOW`] (the others never wait for it).
pub const PTY_VIEWER_BUFFER: usize = 1024 * 1024;
/// QUIC connection close code of a node that is shutting down (a restart): the one
/// close by the node after which a client dials again and resumes its streams (the
/// others — revoked, expired, refused — are final).
pub const CLOSE_NODE_SHUTDOWN: u32 = 4;

/// QUIC stream reset code: the node detached this client from a terminal because it
/// fell too far behind the output (see [`pty_reset_reason`]).
pub const PTY_RESET_TOO_SLOW: u32 = 0x5350_0001;

/// What a terminal stream reset by the node with `code` means, for people.
pub fn pty_reset_reason(code: u64) -> Option<&'static str> {
    (code == u64::from(PTY_RESET_TOO_SLOW)).then_some(
        "the node detached you from this terminal: your connection fell more than 1 MiB behind its output (the others go on); attach again to catch up from the scrollback",
    )
}

/// Which terminal of a workspace to attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PtyTarget {
    /// The workspace's oldest live terminal, or a new one when there is none.
    Default,
    /// Always start a new terminal.
    New,
    /// A terminal by id; an unknown id is an error.
    Id(String),
    /// Reattach after a lost link (protocol 3): the terminal `id` of that `instance`
    /// ([`PtyOpened::instance`]), output from absolute byte `from` on. A terminal of
    /// another instance (the id was reused, e.g. after a restart it did not outlive) is
    /// `NotFound`; output
    /// before the scrollback's first byte is lost, and [`PtyOpened::offset`] then says
    /// where the replay starts; `from` past the output so far is `BadRequest`.
    Resume {
        id: String,
        instance: u64,
        from: u64,
    },
}

/// Header of a `sam/pty/1` stream.
///
/// After [`OpenReply::Ok`] the node sends one [`PtyOpened`] frame; then the node
/// sends raw terminal output bytes, and the client sends [`PtyFrame`]s (see
/// [`PtyFrame::encode`]). The node finishes its side when the shell exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyOpen {
    pub workspace: String,
    pub target: PtyTarget,
    /// Command for a new terminal; `None` is the user's login shell.
    pub shell: Option<Vec<String>>,
    pub cols: u16,
    pub rows: u16,
}

/// Sent by the node after [`OpenReply::Ok`] on a PTY stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyOpened {
    pub terminal: String,
    /// Input from this peer is dropped (viewer role).
    pub read_only: bool,
    /// Clients attached now, this one included.
    pub attached: u32,
    /// Random per terminal (kept when the terminal outlives a node restart): a reattach
    /// names it, so another terminal of the same id is never taken for this one.
    pub instance: u64,
    /// Absolute offset, in the terminal's whole output, of the first output byte that
    /// follows on this stream. Every later byte is the next one: a client that counts
    /// what it received knows where to resume ([`PtyTarget::Resume`]).
    pub offset: u64,
}

/// Client→node messages on a PTY stream after the header.
///
/// Wire form, chosen for speed (no serde on the hot path):
/// - `0x00` + u32 BE length + bytes: input;
/// - `0x01` + u16 BE cols + u16 BE rows: resize;
/// - `0x02`: detach (the terminal goes on running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyFrame {
    Data(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    Detach,
}

/// A PTY frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtyFrameError {
    #[error("unknown PTY frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("PTY data frame of {0} bytes is over the limit of {MAX_PTY_CHUNK}")]
    TooLarge(usize),
    #[error("bad terminal size {cols}x{rows}")]
    BadSize { cols: u16, rows: u16 },
}

const TAG_DATA: u8 = 0;
const TAG_RESIZE: u8 = 1;
const TAG_DETACH: u8 = 2;

impl PtyFrame {
    /// Appends the wire form of `self` to `out`. Data over [`MAX_PTY_CHUNK`] is
    /// split into several frames; empty data writes nothing.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PtyFrame::Data(d) => encode_data(d, out),
            PtyFrame::Resize { cols, rows } => {
                out.push(TAG_RESIZE);
                out.extend_from_slice(&cols.to_be_bytes());
                out.extend_from_slice(&rows.to_be_bytes());
            }
            PtyFrame::Detach => out.push(TAG_DETACH),
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are
    /// needed, else the frame and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(PtyFrame, usize)>, PtyFrameError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        match tag {
            TAG_DATA => {
                let Some(len) = buf.get(1..5) else {
                    return Ok(None);
                };
                let mut l = [0u8; 4];
                l.copy_from_slice(len);
                let len = u32::from_be_bytes(l) as usize;
                if len > MAX_PTY_CHUNK {
                    return Err(PtyFrameError::TooLarge(len));
                }
                Ok(buf
                    .get(5..5 + len)
                    .map(|d| (PtyFrame::Data(d.to_vec()), 5 + len)))
            }
            TAG_RESIZE => {
                let Some(b) = buf.get(1..5) else {
                    return Ok(None);
                };
                let cols = u16::from_be_bytes([b[0], b[1]]);
                let rows = u16::from_be_bytes([b[2], b[3]]);
                check_size(cols, rows)?;
                Ok(Some((PtyFrame::Resize { cols, rows }, 5)))
            }
            TAG_DETACH => Ok(Some((PtyFrame::Detach, 1))),
            t => Err(PtyFrameError::UnknownTag(t)),
        }
    }
}

/// Appends `data` as one or more input frames.
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_PTY_CHUNK) {
        out.push(TAG_DATA);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// A terminal size is 1..=[`MAX_PTY_DIM`] in both directions.
pub fn check_size(cols: u16, rows: u16) -> Result<(), PtyFrameError> {
    if cols == 0 || rows == 0 || cols > MAX_PTY_DIM || rows > MAX_PTY_DIM {
        return Err(PtyFrameError::BadSize { cols, rows });
    }
    Ok(())
}

/// Header of a `sam/port/1` stream: after [`OpenReply::Ok`], raw TCP bytes both
/// ways to `port` inside the workspace; either side finishing closes that half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOpen {
    pub workspace: String,
    pub port: u16,
}

/// Header of a `sam/file/1` stream.
///
/// - `Download`: after [`OpenReply::Ok`] the node sends a [`DownloadInfo`] frame,
///   then a tar stream of the file or directory (its top entry named after the
///   path's last component), then finishes.
/// - `Upload`: after [`OpenReply::Ok`] the node sends an [`UploadPlan`]; the
///   client sends a tar stream whose single top entry has the planned name and
///   finishes; the node answers one more [`OpenReply`] when the tar is unpacked
///   (or refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOpen {
    Download {
        workspace: String,
        path: String,
    },
    Upload {
        workspace: String,
        /// Destination: an existing directory receives the upload under `name`;
        /// else the upload becomes this path.
        path: String,
        /// The local file or directory name.
        name: String,
        /// Bytes of file content (for the size limit; the tar adds headers).
        size: u64,
        /// Files and directories in the upload (for the count limit).
        count: u64,
    },
    /// A download that survives a lost link (protocol 3): as `Download`, but the tar is
    /// sent from its byte `from` on, in [`DownloadFrame`]s, and ends with the SHA-256 of
    /// the whole tar (bytes before `from` included), so a client that resumed knows the
    /// pieces it joined are one unchanged stream.
    DownloadFrom {
        workspace: String,
        path: String,
        from: u64,
    },
    /// An upload that survives a lost link (protocol 3): as `Upload`, but the node keeps
    /// what it received under `upload` (a random id the client picks; only the same peer
    /// may name it again) and answers [`UploadAt`] after the [`UploadPlan`]; the client
    /// sends the tar from that byte on in [`DownloadFrame`]s (`Data`, then `End` with the
    /// SHA-256 of the whole tar). The node unpacks it only when the hash matches.
    UploadFrom {
        workspace: String,
        path: String,
        name: String,
        size: u64,
        count: u64,
        upload: [u8; 16],
    },
}

/// Sent by the node after the [`UploadPlan`] of a [`FileOpen::UploadFrom`]: the bytes of
/// the tar it already holds; the client goes on from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAt {
    pub at: u64,
}

/// Largest data frame of a [`FileOpen::DownloadFrom`] stream.
pub const MAX_DOWNLOAD_CHUNK: usize = 1 << 20;
/// Longest error message of a [`DownloadFrame::Error`].
pub const MAX_DOWNLOAD_ERROR: usize = 4096;

/// Node→client frames of a [`FileOpen::DownloadFrom`] stream, after its
/// [`DownloadInfo`]. Wire form (no serde on the hot path):
/// - `0x00` + u32 BE length (1..=[`MAX_DOWNLOAD_CHUNK`]) + tar bytes;
/// - `0x01` + 32 bytes: the end, with the SHA-256 of the whole tar;
/// - `0x02` + u16 BE length (..=[`MAX_DOWNLOAD_ERROR`]) + UTF-8: the node gave up (final).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadFrame<'a> {
    Data(&'a [u8]),
    End([u8; 32]),
    Error(String),
}

/// A download frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadFrameError {
    #[error("unknown download frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("download frame of {0} bytes is not within 1..={MAX_DOWNLOAD_CHUNK}")]
    BadLength(usize),
}

const DL_DATA: u8 = 0;
const DL_END: u8 = 1;
const DL_ERROR: u8 = 2;

impl DownloadFrame<'_> {
    /// Appends the header of a data frame of `len` bytes (the bytes follow).
    pub fn data_header(len: usize, out: &mut Vec<u8>) {
        out.push(DL_DATA);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }

    /// Appends the wire form of `self` to `out`; an error message is cut to
    /// [`MAX_DOWNLOAD_ERROR`] bytes (at a character boundary).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DownloadFrame::Data(d) => {
                Self::data_header(d.len(), out);
                out.extend_from_slice(d);
            }
            DownloadFrame::End(h) => {
                out.push(DL_END);
                out.extend_from_slice(h);
            }
            DownloadFrame::Error(m) => {
                let mut end = m.len().min(MAX_DOWNLOAD_ERROR);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                out.push(DL_ERROR);
                out.extend_from_slice(&(end as u16).to_be_bytes());
                out.extend_from_slice(&m.as_bytes()[..end]);
            }
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are
    /// needed, else the frame and how many bytes it used. Never allocates more than
    /// an error message.
    pub fn decode(buf: &[u8]) -> Result<Option<(DownloadFrame<'_>, usize)>, DownloadFrameError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        match tag {
            DL_DATA => {
                let Some(l) = buf.get(1..5) else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                if len == 0 || len > MAX_DOWNLOAD_CHUNK {
                    return Err(DownloadFrameError::BadLength(len));
                }
                Ok(buf
                    .get(5..5 + len)
                    .map(|d| (DownloadFrame::Data(d), 5 + len)))
            }
            DL_END => Ok(buf.get(1..33).map(|h| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(h);
                (DownloadFrame::End(hash), 33)
            })),
            DL_ERROR => {
                let Some(l) = buf.get(1..3) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes([l[0], l[1]]) as usize;
                if len > MAX_DOWNLOAD_ERROR {
                    return Err(DownloadFrameError::BadLength(len));
                }
                Ok(buf.get(3..3 + len).map(|m| {
                    (
                        DownloadFrame::Error(String::from_utf8_lossy(m).into_owned()),
                        3 + len,
                    )
                }))
            }
            t => Err(DownloadFrameError::UnknownTag(t)),
        }
    }
}

/// Sent by the node after accepting an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPlan {
    /// The name the tar's top entry must have.
    pub top_name: String,
    /// Where it lands inside the container.
    pub dest: String,
}

/// Sent by the node before a download's tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadInfo {
    /// The resolved path inside the container.
    pub path: String,
    pub is_dir: bool,
    /// Bytes of file content (a tar adds headers).
    pub size: u64,
    /// Files and directories.
    pub count: u64,
}

/// Most bytes of file content in one upload or download.
pub const MAX_TRANSFER_BYTES: u64 = 16 << 30;
/// Most files and directories in one upload or download.
pub const MAX_TRANSFER_FILES: u64 = 200_000;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(mut buf: &[u8]) -> Result<Vec<PtyFrame>, PtyFrameError> {
        let mut out = Vec::new();
        while let Some((f, n)) = PtyFrame::decode(buf)? {
            out.push(f);
            buf = &buf[n..];
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        Ok(out)
    }

    #[test]
    fn pty_frames_round_trip() {
        let frames = vec![
            PtyFrame::Data(b"echo hi\r".to_vec()),
            PtyFrame::Resize { cols: 80, rows: 24 },
            PtyFrame::Detach,
        ];
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        assert_eq!(decode_all(&buf).expect("decode"), frames);
        // Every strict prefix either decodes fewer frames or asks for more bytes.
        for cut in 0..buf.len() {
            let mut b = &buf[..cut];
            while let Ok(Some((_, n))) = PtyFrame::decode(b) {
                b = &b[n..];
            }
            assert!(PtyFrame::decode(b).expect("no error").is_none());
        }
    }

    #[test]
    fn bad_pty_frames_are_errors() {
        assert_eq!(PtyFrame::decode(&[9]), Err(PtyFrameError::UnknownTag(9)));
        assert!(matches!(
            PtyFrame::decode(&[0, 0xff, 0, 0, 0]),
            Err(PtyFrameError::TooLarge(_))
        ));
        assert!(matches!(
            PtyFrame::decode(&[1, 0, 0, 0, 24]),
            Err(PtyFrameError::BadSize { .. })
        ));
    }

    #[test]
    fn download_frames_round_trip_and_refuse_bad_lengths() {
        let frames = vec![
            DownloadFrame::Data(b"tar bytes"),
            DownloadFrame::Error("gone".into()),
            DownloadFrame::End([7; 32]),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut got = Vec::new();
        let mut b = &buf[..];
        while let Some((f, n)) = DownloadFrame::decode(b).expect("decode") {
            got.push(f);
            b = &b[n..];
        }
        assert_eq!(got, frames);
        for cut in 0..buf.len() {
            let mut b = &buf[..cut];
            while let Ok(Some((_, n))) = DownloadFrame::decode(b) {
                b = &b[n..];
            }
            assert!(DownloadFrame::decode(b).expect("no error").is_none());
        }
        // A peer announcing a huge or empty chunk is refused before anything is read.
        assert_eq!(
            DownloadFrame::decode(&[0, 0xff, 0xff, 0xff, 0xff]),
            Err(DownloadFrameError::BadLength(u32::MAX as usize))
        );
        assert_eq!(
            DownloadFrame::decode(&[0, 0, 0, 0, 0]),
            Err(DownloadFrameError::BadLength(0))
        );
        assert_eq!(
            DownloadFrame::decode(&[2, 0xff, 0xff]),
            Err(DownloadFrameError::BadLength(0xffff))
        );
        assert_eq!(
            DownloadFrame::decode(&[9]),
            Err(DownloadFrameError::UnknownTag(9))
        );
        let long = "é".repeat(MAX_DOWNLOAD_ERROR);
        let mut buf = Vec::new();
        DownloadFrame::Error(long).encode(&mut buf);
        let (f, n) = DownloadFrame::decode(&buf).expect("ok").expect("whole");
        assert_eq!(n, buf.len());
        assert!(matches!(f, DownloadFrame::Error(m) if m.len() <= MAX_DOWNLOAD_ERROR));
    }

    proptest! {
        #[test]
        fn download_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = DownloadFrame::decode(&data);
        }

        #[test]
        fn big_data_is_split(data in proptest::collection::vec(any::<u8>(), 0..200_000)) {
            let mut buf = Vec::new();
            PtyFrame::Data(data.clone()).encode(&mut buf);
            let got: Vec<u8> = decode_all(&buf).expect("decode").into_iter().flat_map(|f| match f {
                PtyFrame::Data(d) => d,
                _ => vec![],
            }).collect();
            prop_assert_eq!(got, data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PtyFrame::decode(&data);
        }
    }
}
