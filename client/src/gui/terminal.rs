//! The terminal widget: a `vt100` screen fed by the bytes of a `sam/pty/1` stream,
//! drawn as one monospace layout job per row (colours, bold, inverse, cursor), with
//! keyboard input turned into the bytes a terminal sends.

use std::num::NonZeroU16;

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, FontId, Ui};

/// A terminal screen.
pub struct Term {
    parser: vt100::Parser,
    pub rows: u16,
    pub cols: u16,
}

impl Default for Term {
    fn default() -> Self {
        Self::new(24, 80)
    }
}

fn nz(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v.max(1)).unwrap_or(NonZeroU16::MIN)
}

impl Term {
    pub fn new(rows: u16, cols: u16) -> Self {
        Self {
            parser: vt100::Parser::new(nz(rows), nz(cols), 2000),
            rows: rows.max(1),
            cols: cols.max(1),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    /// Resizes; returns whether the size changed.
    pub fn resize(&mut self, rows: u16, cols: u16) -> bool {
        let (rows, cols) = (rows.clamp(2, 500), cols.clamp(10, 1000));
        if (rows, cols) == (self.rows, self.cols) {
            return false;
        }
        self.rows = rows;
        self.cols = cols;
        self.parser.set_size(nz(rows), nz(cols));
        true
    }

    /// The screen as plain text (tests, copy).
    pub fn text(&self) -> String {
        self.parser.screen().contents()
    }

    /// Draws the screen.
    pub fn show(&self, ui: &mut Ui, font: &FontId) {
        let screen = self.parser.screen();
        let (crow, ccol) = screen.cursor_position();
        let show_cursor = !screen.hide_cursor();
        let default_fg = ui.visuals().text_color();
        for r in 0..self.rows {
            let mut job = LayoutJob::default();
            for c in 0..self.cols {
                let Some(cell) = screen.cell(r, c) else {
                    continue;
                };
                if cell.is_wide_continuation() {
                    continue;
                }
                let mut fg = color(cell.fgcolor()).unwrap_or(default_fg);
                let mut bg = color(cell.bgcolor()).unwrap_or(Color32::TRANSPARENT);
                if cell.inverse() || (show_cursor && r == crow && c == ccol) {
                    let bg_or = if bg == Color32::TRANSPARENT {
                        ui.visuals().extreme_bg_color
                    } else {
                        bg
                    };
                    (fg, bg) = (bg_or, fg);
                }
                let text = if cell.has_contents() {
                    cell.contents()
                } else {
                    " "
                };
                let mut fmt = TextFormat::simple(font.clone(), fg);
                fmt.background = bg;
                if cell.bold() {
                    fmt.color = fmt.color.gamma_multiply(1.2);
                }
                job.append(text, 0.0, fmt);
            }
            ui.label(job);
        }
    }
}

/// The 16 ANSI colours (xterm defaults), then the 6×6×6 cube and the grey ramp.
fn color(c: vt100::Color) -> Option<Color32> {
    const BASE: [(u8, u8, u8); 16] = [
        (0, 0, 0),
        (205, 49, 49),
        (13, 188, 121),
        (229, 229, 16),
        (36, 114, 200),
        (188, 63, 188),
        (17, 168, 205),
        (229, 229, 229),
        (102, 102, 102),
        (241, 76, 76),
        (35, 209, 139),
        (245, 245, 67),
        (59, 142, 234),
        (214, 112, 214),
        (41, 184, 219),
        (255, 255, 255),
    ];
    match c {
        vt100::Color::Default => None,
        vt100::Color::Rgb(r, g, b) => Some(Color32::from_rgb(r, g, b)),
        vt100::Color::Idx(i) if i < 16 => {
            let (r, g, b) = BASE[i as usize];
            Some(Color32::from_rgb(r, g, b))
        }
        vt100::Color::Idx(i) if i < 232 => {
            let i = i - 16;
            let step = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            Some(Color32::from_rgb(
                step(i / 36),
                step((i / 6) % 6),
                step(i % 6),
            ))
        }
        vt100::Color::Idx(i) => {
            let v = 8 + (i - 232) * 10;
            Some(Color32::from_rgb(v, v, v))
        }
    }
}

/// The bytes a terminal sends for an egui input event (`None`: not for the terminal).
pub fn key_bytes(ev: &egui::Event, app_cursor: bool) -> Option<Vec<u8>> {
    use egui::Key;
    match ev {
        egui::Event::Text(t) => Some(t.as_bytes().to_vec()),
        egui::Event::Paste(t) => Some(t.as_bytes().to_vec()),
        egui::Event::Key {
            key,
            pressed: true,
            modifiers,
            ..
        } => {
            if modifiers.ctrl && !modifiers.alt {
                let name = key.name();
                if name.len() == 1 {
                    let b = name.as_bytes()[0].to_ascii_uppercase();
                    if b.is_ascii_uppercase() {
                        return Some(vec![b - b'A' + 1]);
                    }
                }
            }
            let arrow = |c: u8| {
                if app_cursor {
                    vec![0x1b, b'O', c]
                } else {
                    vec![0x1b, b'[', c]
                }
            };
            Some(match key {
                Key::Enter => b"\r".to_vec(),
                Key::Backspace => vec![0x7f],
                Key::Tab => b"\t".to_vec(),
                Key::Escape => vec![0x1b],
                Key::ArrowUp => arrow(b'A'),
                Key::ArrowDown => arrow(b'B'),
                Key::ArrowRight => arrow(b'C'),
                Key::ArrowLeft => arrow(b'D'),
                Key::Home => b"\x1b[H".to_vec(),
                Key::End => b"\x1b[F".to_vec(),
                Key::Delete => b"\x1b[3~".to_vec(),
                Key::PageUp => b"\x1b[5~".to_vec(),
                Key::PageDown => b"\x1b[6~".to_vec(),
                _ => return None,
            })
        }
        _ => None,
    }
}

impl Term {
    /// Cursor keys in application mode (set by full-screen programs).
    pub fn app_cursor(&self) -> bool {
        self.parser.screen().application_cursor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_follows_output_with_colours_and_cursor_moves() {
        let mut t = Term::new(5, 20);
        t.feed(b"hello\r\n\x1b[31mred\x1b[0m world\r\n");
        let text = t.text();
        assert!(text.starts_with("hello\nred world"), "{text:?}");
        let cell = t.parser.screen().cell(1, 0).expect("cell");
        assert_eq!(color(cell.fgcolor()), Some(Color32::from_rgb(205, 49, 49)));
        t.feed(b"\x1b[2J\x1b[Hclear");
        assert!(t.text().starts_with("clear"));
        assert!(t.resize(10, 40));
        assert!(!t.resize(10, 40));
    }

    #[test]
    fn keys_become_terminal_bytes() {
        let key = |key, ctrl| egui::Event::Key {
            key,
            physical_key: None,
            pressed: true,
            repeat: false,
            modifiers: egui::Modifiers {
                ctrl,
                ..Default::default()
            },
        };
        assert_eq!(key_bytes(&key(egui::Key::C, true), false), Some(vec![3]));
        assert_eq!(
            key_bytes(&key(egui::Key::Enter, false), false),
            Some(b"\r".to_vec())
        );
        assert_eq!(
            key_bytes(&key(egui::Key::ArrowUp, false), true),
            Some(b"\x1bOA".to_vec())
        );
        assert_eq!(
            key_bytes(&egui::Event::Text("ls".into()), false),
            Some(b"ls".to_vec())
        );
        assert_eq!(key_bytes(&key(egui::Key::A, false), false), None);
    }
}
