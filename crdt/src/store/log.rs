//! The incremental log file format.
//!
//! ```text
//! file   = magic record*
//! magic  = "SAMLOG1\n"
//! record = len: u32 BE | crc32(payload): u32 BE | payload: len bytes (Automerge changes)
//! ```

/// First bytes of every log file.
pub(crate) const MAGIC: &[u8; 8] = b"SAMLOG1\n";
/// Bytes before each payload.
pub(crate) const RECORD_HEADER: usize = 8;

/// Encodes one record.
pub(crate) fn encode_record(payload: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// Result of scanning a log file.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// The payloads of the complete, valid records.
    pub(crate) records: Vec<&'a [u8]>,
    /// Length of the valid prefix (magic + complete records).
    pub(crate) valid_len: usize,
    /// What ends the file early, if anything.
    pub(crate) end: ScanEnd,
}

/// How a scan ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The file ended exactly after a record.
    Clean,
    /// The last record is incomplete or its checksum fails: a torn write (e.g. `kill -9`).
    TornTail(String),
    /// The file is damaged before its end; later records cannot be trusted.
    Corrupt(String),
}

/// Scans `data`. A bad record is a torn tail only if it is the last thing in the file.
pub(crate) fn scan(data: &[u8]) -> Scan<'_> {
    let mut records = Vec::new();
    if data.len() < MAGIC.len() {
        let end = if MAGIC.starts_with(data) {
            if data.is_empty() {
                ScanEnd::Clean
            } else {
                ScanEnd::TornTail("file ends inside the header".into())
            }
        } else {
            ScanEnd::Corrupt("not a SAM log (bad magic)".into())
        };
        return Scan {
            records,
            valid_len: 0,
            end,
        };
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Scan {
            records,
            valid_len: 0,
            end: ScanEnd::Corrupt("not a SAM log (bad magic)".into()),
        };
    }
    let mut pos = MAGIC.len();
    loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            return Scan {
                records,
                valid_len: pos,
                end: ScanEnd::Clean,
            };
        }
        let torn = |why: String| Scan {
            records: Vec::new(),
            valid_len: 0,
            end: ScanEnd::TornTail(why),
        };
        let Some(header) = rest.get(..RECORD_HEADER) else {
            let mut s = torn(format!("incomplete record header at byte {pos}"));
            s.records = records;
            s.valid_len = pos;
            return s;
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER.saturating_add(len)) else {
            let mut s = torn(format!(
                "record at byte {pos} claims {len} bytes but only {} remain",
                rest.len() - RECORD_HEADER
            ));
            s.records = records;
            s.valid_len = pos;
            return s;
        };
        let next = pos + RECORD_HEADER + len;
        if crc32fast::hash(payload) != crc {
            let why = format!("checksum mismatch in record at byte {pos}");
            let end = if next == data.len() {
                ScanEnd::TornTail(why)
            } else {
                ScanEnd::Corrupt(why)
            };
            return Scan {
                records,
                valid_len: pos,
                end,
            };
        }
        records.push(payload);
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[&[u8]]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        for r in records {
            f.extend(encode_record(r).unwrap_or_default());
        }
        f
    }

    #[test]
    fn round_trip() {
        let f = file(&[b"one", b"", b"three"]);
        let s = scan(&f);
        assert_eq!(s.end, ScanEnd::Clean);
        assert_eq!(s.records, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(s.valid_len, f.len());
    }

    #[test]
    fn every_truncation_is_a_torn_tail_keeping_the_prefix() {
        let f = file(&[b"alpha", b"beta"]);
        let first_end = MAGIC.len() + RECORD_HEADER + 5;
        for cut in 1..f.len() {
            let s = scan(&f[..cut]);
            if cut == MAGIC.len() || cut == first_end {
                assert_eq!(s.end, ScanEnd::Clean, "cut {cut}");
            } else {
                assert!(
                    matches!(s.end, ScanEnd::TornTail(_)),
                    "cut {cut}: {:?}",
                    s.end
                );
            }
            let expect = usize::from(cut >= first_end);
            assert_eq!(s.records.len(), expect, "cut {cut}");
        }
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corrupt_at_the_end_is_torn() {
        let mut f = file(&[b"alpha", b"beta"]);
        let mid = MAGIC.len() + RECORD_HEADER + 1;
        f[mid] ^= 1;
        assert!(matches!(scan(&f).end, ScanEnd::Corrupt(_)));
        let mut g = file(&[b"alpha", b"beta"]);
        let last = g.len() - 1;
        g[last] ^= 1;
        let s = scan(&g);
        assert!(matches!(s.end, ScanEnd::TornTail(_)));
        assert_eq!(s.records.len(), 1);
        assert!(matches!(scan(b"NOTALOG!xx").end, ScanEnd::Corrupt(_)));
    }
}
