//! Tar helpers for build contexts: read one file, re-root a subtree.

use std::io::Read;

/// Largest single file read out of a tar.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// The contents of the regular file at `path` in `tar`, if there is one.
pub fn read_file(tar: &[u8], path: &str) -> Option<Vec<u8>> {
    let want = normalise(path);
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let p = entry.path().ok()?.to_string_lossy().into_owned();
        if normalise(&p) == want && entry.header().entry_type().is_file() {
            if entry.size() > MAX_FILE {
                return None;
            }
            let mut out = Vec::new();
            entry.read_to_end(&mut out).ok()?;
            return Some(out);
        }
    }
    None
}

fn normalise(p: &str) -> String {
    p.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// A new tar with the entries of `tar` under `prefix` (re-rooted at it, `.git`
/// left out) plus `extra` files at the root.
pub fn retar(tar: &[u8], prefix: &str, extra: &[(&str, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let prefix = normalise(prefix);
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let p = normalise(&entry.path()?.to_string_lossy());
        let rel = if p == prefix {
            continue;
        } else if let Some(r) = p.strip_prefix(&format!("{prefix}/")) {
            r.to_string()
        } else {
            continue;
        };
        if rel == ".git" || rel.starts_with(".git/") {
            continue;
        }
        let mut header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name()?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            out.append_link(&mut header, &rel, target)?;
        } else if kind.is_file() || kind.is_dir() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.append_data(&mut header, &rel, data.as_slice())?;
        }
    }
    for (name, data) in extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut header, name, data.as_slice())?;
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in [
            ("repo/a.txt", "A"),
            ("repo/sub/b.txt", "B"),
            ("repo/.git/HEAD", "ref"),
            ("other/c", "C"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, d.as_bytes()).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn read_and_retar() {
        let t = sample();
        assert_eq!(read_file(&t, "repo/sub/b.txt").as_deref(), Some(&b"B"[..]));
        assert!(read_file(&t, "repo/none").is_none());
        let r = retar(&t, "repo/", &[("Dockerfile", b"FROM x".to_vec())]).expect("retar");
        assert_eq!(read_file(&r, "sub/b.txt").as_deref(), Some(&b"B"[..]));
        assert_eq!(read_file(&r, "Dockerfile").as_deref(), Some(&b"FROM x"[..]));
        assert!(read_file(&r, ".git/HEAD").is_none());
        assert!(read_file(&r, "c").is_none());
        assert!(read_file(b"garbage", "x").is_none());
    }
}
