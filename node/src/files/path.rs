//! Sans-IO path rules: which paths a peer may name, and whether a path the
//! container resolved (symlinks followed) is still inside the workspace root.

use sam_protocol::ctl::{ErrorBody, ErrorCode};

/// Longest path accepted from a peer.
pub const MAX_PATH: usize = 4096;

/// Joins a peer's `path` to the workspace `root` and normalises `.` and `..`
/// lexically. Relative paths are taken from the root; absolute paths must name
/// the root or something under it. Anything that leaves the root is refused.
pub fn join(root: &str, path: &str) -> Result<String, ErrorBody> {
    if path.len() > MAX_PATH {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "path of {} bytes is over the limit of {MAX_PATH}",
                path.len()
            ),
        ));
    }
    if path.contains('\0') {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "path contains a NUL byte",
        ));
    }
    let root = normalise(root).ok_or_else(|| outside(path, root))?;
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{root}/{path}")
    };
    let norm = normalise(&full).ok_or_else(|| outside(path, &root))?;
    if !is_inside(&root, &norm) {
        return Err(outside(path, &root));
    }
    Ok(norm)
}

/// Whether `path` is `root` or below it (both absolute and normalised).
pub fn is_inside(root: &str, path: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `path` relative to `root` (`.` for the root itself).
pub fn relative<'a>(root: &str, path: &'a str) -> &'a str {
    if root == "/" {
        let r = path.trim_start_matches('/');
        return if r.is_empty() { "." } else { r };
    }
    match path.strip_prefix(root) {
        Some("") => ".",
        Some(rest) => rest.trim_start_matches('/'),
        None => path,
    }
}

/// The error for a path that leaves the workspace.
pub fn outside(path: &str, root: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!(
            "path {path:?} is outside the workspace root {root}; only paths under it are allowed"
        ),
    )
}

/// Lexical normalisation of an absolute path; `None` when `..` climbs above `/`
/// or the path is not absolute.
fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The last component of a normalised path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The parent of a normalised path (`/` for top-level entries).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROOT: &str = "/workspaces/repo";

    #[test]
    fn relative_and_absolute_inside() {
        assert_eq!(
            join(ROOT, "src/main.rs").expect("ok"),
            "/workspaces/repo/src/main.rs"
        );
        assert_eq!(join(ROOT, "").expect("ok"), ROOT);
        assert_eq!(join(ROOT, ".").expect("ok"), ROOT);
        assert_eq!(join(ROOT, "a/../b").expect("ok"), "/workspaces/repo/b");
        assert_eq!(
            join(ROOT, "/workspaces/repo/x").expect("ok"),
            "/workspaces/repo/x"
        );
        assert_eq!(join(ROOT, "/workspaces/repo").expect("ok"), ROOT);
    }

    #[test]
    fn escapes_are_refused() {
        for p in [
            "../etc/passwd",
            "..",
            "a/../../x",
            "/etc/passwd",
            "/",
            "/workspaces/repo2",
            "/workspaces/repo/../repo2/x",
            "/../../etc",
        ] {
            let e = join(ROOT, p).expect_err(p);
            assert_eq!(e.code, ErrorCode::Forbidden, "{p}");
            assert!(
                e.message.contains("outside the workspace root"),
                "{}",
                e.message
            );
        }
        assert_eq!(
            join(ROOT, "a\0b").expect_err("nul").code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            join(ROOT, &"a/".repeat(3000)).expect_err("long").code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn inside_checks_whole_components() {
        assert!(is_inside(ROOT, ROOT));
        assert!(is_inside(ROOT, "/workspaces/repo/a"));
        assert!(!is_inside(ROOT, "/workspaces/repository"));
        assert!(!is_inside(ROOT, "/"));
        assert!(is_inside("/", "/etc"));
        assert_eq!(relative(ROOT, ROOT), ".");
        assert_eq!(relative(ROOT, "/workspaces/repo/a/b"), "a/b");
        assert_eq!(file_name("/a/b"), "b");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
    }

    proptest! {
        #[test]
        fn joined_paths_never_leave_the_root(p in "[a-z./]{0,40}") {
            if let Ok(j) = join(ROOT, &p) {
                prop_assert!(is_inside(ROOT, &j), "{} -> {}", p, j);
                prop_assert!(!j.contains("/../") && !j.ends_with("/.."));
            }
        }
    }
}
