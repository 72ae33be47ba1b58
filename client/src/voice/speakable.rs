//! Markdown → text worth hearing: code blocks are announced, not read character by
//! character; links read their text; URLs become "a link to host".

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

/// Inline code longer than this is said as "some code".
const INLINE_CODE_MAX: usize = 40;

/// Turns Markdown into plain sentences for a speech engine.
pub fn speakable(markdown: &str) -> String {
    let mut out = String::new();
    let mut code: Option<(String, usize)> = None; // (language, lines)
    let mut opts = Options::empty();
    opts.insert(Options::ENABLE_TABLES);
    opts.insert(Options::ENABLE_STRIKETHROUGH);
    opts.insert(Options::ENABLE_TASKLISTS);
    for ev in Parser::new_ext(markdown, opts) {
        if let Some((_, lines)) = &mut code {
            match ev {
                Event::Text(t) => *lines += t.lines().count(),
                Event::End(TagEnd::CodeBlock) => {
                    let (lang, lines) = code.take().unwrap_or_default();
                    let lines = lines.max(1);
                    let what = if lang.is_empty() {
                        "A code block".to_string()
                    } else {
                        format!("A {lang} code block")
                    };
                    let plural = if lines == 1 { "line" } else { "lines" };
                    sentence_break(&mut out);
                    out.push_str(&format!("{what}, {lines} {plural}, not read aloud."));
                    out.push('\n');
                }
                _ => {}
            }
            continue;
        }
        match ev {
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(l) => {
                        l.split([',', ' ']).next().unwrap_or("").to_string()
                    }
                    CodeBlockKind::Indented => String::new(),
                };
                code = Some((lang, 0));
            }
            Event::Start(Tag::Image { .. }) => {
                space(&mut out);
                out.push_str("Image: ");
            }
            Event::End(TagEnd::Image) => sentence_break(&mut out),
            Event::Text(t) => push_words(&mut out, &t),
            Event::Code(c) => {
                space(&mut out);
                if c.chars().count() <= INLINE_CODE_MAX {
                    out.push_str(&c.replace(['_', '`'], " "));
                } else {
                    out.push_str("some code");
                }
            }
            Event::SoftBreak => out.push(' '),
            Event::HardBreak => out.push('\n'),
            Event::Rule => sentence_break(&mut out),
            Event::TaskListMarker(done) => {
                out.push_str(if done { "Done: " } else { "To do: " });
            }
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::TableRow
                | TagEnd::TableHead
                | TagEnd::BlockQuote(_),
            ) => sentence_break(&mut out),
            Event::End(TagEnd::TableCell) => out.push_str(", "),
            Event::Html(_) | Event::InlineHtml(_) => {}
            _ => {}
        }
    }
    tidy(&out)
}

/// Ends the current sentence (adds a full stop when it has none) and starts a new line.
fn sentence_break(out: &mut String) {
    let trimmed = out.trim_end_matches([' ', ',', '\n']);
    let len = trimmed.len();
    out.truncate(len);
    if out.is_empty() {
        return;
    }
    if !out.ends_with(['.', '!', '?', ':', ';']) {
        out.push('.');
    }
    out.push('\n');
}

fn space(out: &mut String) {
    if !out.is_empty() && !out.ends_with([' ', '\n']) {
        out.push(' ');
    }
}

/// Appends text, replacing URLs with "a link to host".
fn push_words(out: &mut String, text: &str) {
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let bare = word.trim_end_matches(['.', ',', ')', ';', ':', '!', '?']);
        if let Some(rest) = bare
            .strip_prefix("https://")
            .or_else(|| bare.strip_prefix("http://"))
        {
            let host = rest.split(['/', '?', '#', ':']).next().unwrap_or("");
            out.push_str(&format!("a link to {host}"));
            out.push_str(&word[bare.len()..]);
        } else {
            out.push_str(word);
        }
    }
}

/// Collapses runs of spaces and blank lines.
fn tidy(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits text into pieces of at most `max` bytes, at sentence ends where possible, else
/// at spaces, else anywhere (on a char boundary).
pub fn split_sentences(text: &str, max: usize) -> Vec<String> {
    let max = max.max(16);
    let mut sentences = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if matches!(ch, '.' | '!' | '?' | '\n') {
            sentences.push(std::mem::take(&mut cur));
        }
    }
    sentences.push(cur);
    let mut out: Vec<String> = Vec::new();
    let mut piece = String::new();
    for s in sentences {
        for part in hard_split(&s, max) {
            if piece.len() + part.len() > max && !piece.trim().is_empty() {
                out.push(std::mem::take(&mut piece).trim().to_string());
            }
            piece.push_str(&part);
        }
    }
    if !piece.trim().is_empty() {
        out.push(piece.trim().to_string());
    }
    out
}

fn hard_split(s: &str, max: usize) -> Vec<String> {
    if s.len() <= max {
        return vec![s.to_string()];
    }
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(sp) = rest[..cut].rfind(' ').filter(|&i| i > 0) {
            cut = sp + 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_blocks_are_announced_not_read() {
        let md = "Here is the fix:\n\n```rust\nfn main() {\n    println!(\"hi\");\n}\n```\n\nRun `cargo test` after.";
        let s = speakable(md);
        assert!(s.contains("Here is the fix:"), "{s}");
        assert!(
            s.contains("A rust code block, 3 lines, not read aloud."),
            "{s}"
        );
        assert!(!s.contains("println"), "{s}");
        assert!(s.contains("Run cargo test after."), "{s}");
    }

    #[test]
    fn markup_and_urls_are_dropped() {
        let md = "# Title\n\n* **bold** item\n* [the docs](https://example.com/x) and https://docs.rs/foo.\n\n<div>html</div>\n\n![a cat](cat.png)";
        let s = speakable(md);
        assert_eq!(
            s,
            "Title.\nbold item.\nthe docs and a link to docs.rs.\nImage: a cat."
        );
        assert!(!s.contains('*') && !s.contains('#') && !s.contains("http"));
    }

    #[test]
    fn long_inline_code_and_tables() {
        let md = "Call `a_really_long_function_name_that_goes_on_and_on_forever()` now.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n";
        let s = speakable(md);
        assert!(s.starts_with("Call some code now."), "{s}");
        assert!(s.contains("a, b."), "{s}");
        assert!(s.contains("1, 2."), "{s}");
    }

    #[test]
    fn split_respects_sentences_and_limits() {
        let text = "One two three. Four five six! Seven eight nine? ".repeat(20);
        let parts = split_sentences(&text, 100);
        assert!(parts.len() > 5);
        assert!(parts.iter().all(|p| p.len() <= 100), "{parts:?}");
        assert!(
            parts.iter().all(|p| p.ends_with(['.', '!', '?'])),
            "{parts:?}"
        );
        let joined: String = parts.join(" ");
        assert_eq!(
            joined.split_whitespace().count(),
            text.split_whitespace().count()
        );
        let long = "é".repeat(500);
        let parts = split_sentences(&long, 64);
        assert!(parts.iter().all(|p| p.len() <= 64));
        assert_eq!(parts.concat(), long);
    }
}
