//! A message that is still streaming, cut into stable pieces so each frame lays out only
//! what changed: egui caches the layout of text it has seen, so every piece but the
//! growing last one costs a hash lookup instead of a layout.
//!
//! Pieces end at blank lines outside code fences (Markdown blocks: each is rendered as
//! Markdown). A block longer than [`MAX_PIECE`] (a long paragraph or code block still being
//! written) is cut at whitespace into plain-text pieces until the message is done, when the
//! whole text is rendered as Markdown again.

/// Longest piece rendered as one unit.
pub const MAX_PIECE: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole Markdown block.
    Markdown,
    /// Part of an oversized block, shown as plain text.
    Plain,
    /// Part of an oversized fenced code block, shown as monospace text.
    Code,
}

/// Cuts `text` into pieces (their concatenation is `text`).
pub fn pieces(text: &str, max: usize) -> Vec<(&str, Kind)> {
    let max = max.max(16);
    let mut out = Vec::new();
    let (mut start, mut pos) = (0usize, 0usize);
    let mut fence = false;
    let mut block_is_code = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            if !fence && pos == start {
                block_is_code = true;
            }
            fence = !fence;
        }
        pos += line.len();
        if !fence && line.trim().is_empty() {
            push(&text[start..pos], block_is_code, max, &mut out);
            start = pos;
            block_is_code = false;
        }
    }
    if start < text.len() {
        push(&text[start..], block_is_code || fence, max, &mut out);
    }
    out
}

fn push<'a>(block: &'a str, code: bool, max: usize, out: &mut Vec<(&'a str, Kind)>) {
    if block.is_empty() {
        return;
    }
    if block.len() <= max {
        out.push((block, Kind::Markdown));
        return;
    }
    let kind = if code { Kind::Code } else { Kind::Plain };
    let mut rest = block;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // Prefer the last newline, else the last space, in the second half of the piece.
        let window = &rest[..cut];
        let at = window
            .rfind('\n')
            .filter(|i| *i >= cut / 2)
            .or_else(|| window.rfind(' ').filter(|i| *i >= cut / 2))
            .map(|i| i + 1)
            .unwrap_or(cut);
        out.push((&rest[..at], kind));
        rest = &rest[at..];
    }
    if !rest.is_empty() {
        out.push((rest, kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(p: &[(&str, Kind)]) -> String {
        p.iter().map(|x| x.0).collect()
    }

    #[test]
    fn blocks_end_at_blank_lines_outside_fences() {
        let t = "para one\nstill one\n\n```rust\nfn a() {}\n\nfn b() {}\n```\n\ntail";
        let p = pieces(t, 1000);
        assert_eq!(joined(&p), t);
        assert_eq!(
            p,
            vec![
                ("para one\nstill one\n\n", Kind::Markdown),
                ("```rust\nfn a() {}\n\nfn b() {}\n```\n\n", Kind::Markdown),
                ("tail", Kind::Markdown),
            ]
        );
    }

    #[test]
    fn oversized_blocks_are_cut_at_whitespace_and_stable_as_text_grows() {
        let mut t = String::new();
        for i in 0..2000 {
            t.push_str(&format!("chunk {i} é "));
        }
        let p = pieces(&t, 512);
        assert_eq!(joined(&p), t);
        assert!(p.iter().all(|x| x.0.len() <= 512 && x.1 == Kind::Plain));
        assert!(p.iter().rev().skip(1).all(|x| x.0.ends_with(' ')));
        // Growing the text keeps every piece but the last.
        let grown = format!("{t}more text");
        let q = pieces(&grown, 512);
        assert_eq!(&q[..p.len() - 1], &p[..p.len() - 1]);
        // An open code fence being written is cut as code.
        let code = format!("```\n{}", "let x = 1;\n".repeat(200));
        assert!(pieces(&code, 256).iter().all(|x| x.1 == Kind::Code));
        // No whitespace at all: cut anyway, on char boundaries.
        let word = "ü".repeat(1000);
        let w = pieces(&word, 100);
        assert_eq!(joined(&w), word);
    }
}
