//! The Files panel: the workspace as a tree (directories listed when opened), a viewer
//! with syntax highlighting, `git diff` against HEAD or a base branch, upload of a local
//! file or folder, download to a chosen folder, and "attach to prompt".

use std::collections::{BTreeMap, BTreeSet};

use egui::text::LayoutJob;
use egui::{Color32, FontId, RichText, TextFormat, Ui};
use sam_protocol::workspace::{FileEntry, FileKind};

use super::tools::{FileData, ToolCmd, ToolEvent, Ws};

/// Largest file text put into a prompt by "Attach to prompt".
pub const ATTACH_MAX: usize = 32 * 1024;

/// One directory's listing.
#[derive(Debug, Clone, PartialEq)]
pub enum Dir {
    Loading,
    Loaded {
        entries: Vec<FileEntry>,
        truncated: bool,
    },
    Failed(String),
}

/// What the right side shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    Nothing,
    File {
        path: String,
        data: Option<Result<FileData, String>>,
    },
    Diff {
        title: String,
        text: Option<Result<(String, bool), String>>,
    },
}

/// View state of the Files panel.
#[derive(Debug, Clone)]
pub struct FilesView {
    /// The workspace the tree is of.
    pub ws: Option<Ws>,
    pub dirs: BTreeMap<String, Dir>,
    pub expanded: BTreeSet<String>,
    pub shown: Shown,
    pub base: String,
    pub upload_from: String,
    pub upload_to: String,
    pub download_to: String,
    /// Last transfer result (or error).
    pub status: Option<Result<String, String>>,
}

impl Default for FilesView {
    fn default() -> Self {
        Self {
            ws: None,
            dirs: BTreeMap::new(),
            expanded: BTreeSet::new(),
            shown: Shown::Nothing,
            base: "main".into(),
            upload_from: String::new(),
            upload_to: String::new(),
            download_to: std::env::var("HOME").unwrap_or_default(),
            status: None,
        }
    }
}

impl FilesView {
    pub fn apply(&mut self, ev: ToolEvent) {
        match ev {
            ToolEvent::Listing { ws, path, result } if Some(&ws) == self.ws.as_ref() => {
                let dir = match result {
                    Ok((entries, truncated)) => Dir::Loaded { entries, truncated },
                    Err(e) => Dir::Failed(e),
                };
                self.dirs.insert(path, dir);
            }
            ToolEvent::File { ws, path, result } if Some(&ws) == self.ws.as_ref() => {
                if let Shown::File { path: p, data } = &mut self.shown
                    && *p == path
                {
                    *data = Some(result);
                }
            }
            ToolEvent::Diff { ws, title, result } if Some(&ws) == self.ws.as_ref() => {
                if let Shown::Diff { title: t, text } = &mut self.shown
                    && *t == title
                {
                    *text = Some(result);
                }
            }
            ToolEvent::Transfer { what, result } => {
                self.status = Some(match result {
                    Ok(s) => Ok(format!("{what}: {s}")),
                    Err(e) => Err(format!("{what} failed: {e}")),
                });
                // An upload changes the tree: list the root again.
                if what.starts_with("upload")
                    && let Some(Dir::Loaded { .. }) = self.dirs.get("")
                {
                    self.dirs.remove("");
                }
            }
            _ => {}
        }
    }

    /// Points the panel at `ws` (clears everything when it changes) and lists the root.
    fn follow(&mut self, ws: &Ws, out: &mut Vec<ToolCmd>) {
        if self.ws.as_ref() != Some(ws) {
            *self = Self {
                ws: Some(ws.clone()),
                base: std::mem::take(&mut self.base),
                download_to: std::mem::take(&mut self.download_to),
                ..Self::default()
            };
        }
        if !self.dirs.contains_key("") {
            self.dirs.insert(String::new(), Dir::Loading);
            out.push(ToolCmd::List {
                ws: ws.clone(),
                path: String::new(),
            });
        }
    }

    fn open_file(&mut self, ws: &Ws, path: &str, out: &mut Vec<ToolCmd>) {
        self.shown = Shown::File {
            path: path.to_string(),
            data: None,
        };
        out.push(ToolCmd::Read {
            ws: ws.clone(),
            path: path.to_string(),
        });
    }

    fn diff(&mut self, ws: &Ws, base: Option<String>, out: &mut Vec<ToolCmd>) {
        let title = match &base {
            None => "working tree vs HEAD".to_string(),
            Some(b) => format!("working tree vs {b}"),
        };
        self.shown = Shown::Diff { title, text: None };
        out.push(ToolCmd::Diff {
            ws: ws.clone(),
            base,
            path: None,
        });
    }

    /// Text to add to the prompt for the open file, when one is open and readable.
    pub fn attachment(&self) -> Option<String> {
        let Shown::File {
            path,
            data: Some(Ok(d)),
        } = &self.shown
        else {
            return None;
        };
        let text = std::str::from_utf8(&d.data).ok()?;
        let lang = lang_of(path);
        if text.len() <= ATTACH_MAX {
            Some(format!(
                "\n\nFile `{path}`:\n```{lang}\n{}\n```\n",
                text.trim_end()
            ))
        } else {
            let mut cut = ATTACH_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            Some(format!(
                "\n\nFile `{path}` (first {cut} of {} bytes):\n```{lang}\n{}\n```\n",
                d.size,
                &text[..cut]
            ))
        }
    }
}

/// The file name's extension, for the highlighter.
fn lang_of(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((_, ext)) if !ext.is_empty() => ext,
        _ => "",
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The panel. `prompt` receives attachments.
pub fn show(
    ui: &mut Ui,
    v: &mut FilesView,
    ws: Option<Ws>,
    ws_name: &str,
    prompt: &mut String,
    attached: &mut bool,
    out: &mut Vec<ToolCmd>,
) {
    ui.heading("Files");
    let Some(ws) = ws else {
        ui.label("Pick a conversation: the files are those of its workspace.");
        return;
    };
    v.follow(&ws, out);
    // Files dropped on the window while the panel shows are uploaded.
    let dropped: Vec<std::path::PathBuf> = ui.ctx().input(|i| {
        i.raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_path_buf())
            .filter(|p| p.is_absolute())
            .collect()
    });
    for local in dropped {
        let to = v.upload_to.trim();
        out.push(ToolCmd::Upload {
            ws: ws.clone(),
            local,
            remote: if to.is_empty() { ".".into() } else { to.into() },
        });
        v.status = Some(Ok("uploading…".into()));
    }
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("workspace {ws_name}")).weak());
        if ui.button("⟳ Refresh").clicked() {
            let open: Vec<String> = v.dirs.keys().cloned().collect();
            for path in open {
                v.dirs.insert(path.clone(), Dir::Loading);
                out.push(ToolCmd::List {
                    ws: ws.clone(),
                    path,
                });
            }
        }
        ui.separator();
        if ui
            .button("Diff vs HEAD")
            .on_hover_text("git diff of the working tree against HEAD")
            .clicked()
        {
            v.diff(&ws, None, out);
        }
        let l = ui.label("Base branch");
        ui.add(egui::TextEdit::singleline(&mut v.base).desired_width(90.0))
            .labelled_by(l.id);
        if ui
            .add_enabled(!v.base.trim().is_empty(), egui::Button::new("Diff vs base"))
            .on_hover_text("git diff of the working tree against the merge base with the branch")
            .clicked()
        {
            let b = v.base.trim().to_string();
            v.diff(&ws, Some(b), out);
        }
    });
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Upload (or drop files here) local path");
        ui.add(
            egui::TextEdit::singleline(&mut v.upload_from)
                .hint_text("/home/me/notes.txt")
                .desired_width(200.0),
        )
        .labelled_by(l.id);
        let l = ui.label("to folder");
        ui.add(
            egui::TextEdit::singleline(&mut v.upload_to)
                .hint_text("(workspace root)")
                .desired_width(100.0),
        )
        .labelled_by(l.id);
        if ui
            .add_enabled(
                !v.upload_from.trim().is_empty(),
                egui::Button::new("Upload"),
            )
            .clicked()
        {
            let to = v.upload_to.trim();
            out.push(ToolCmd::Upload {
                ws: ws.clone(),
                local: v.upload_from.trim().into(),
                remote: if to.is_empty() { ".".into() } else { to.into() },
            });
            v.status = Some(Ok("uploading…".into()));
        }
    });
    if let Some(s) = &v.status {
        match s {
            Ok(t) => ui.label(RichText::new(t).weak()),
            Err(e) => ui.label(RichText::new(e).color(Color32::from_rgb(220, 80, 70))),
        };
    }
    ui.separator();
    egui::Panel::left("files-tree")
        .resizable(true)
        .default_size(240.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("files-tree-scroll")
                .auto_shrink([false, false])
                .show(ui, |ui| tree(ui, v, &ws, "", 0, out));
        });
    viewer(ui, v, &ws, prompt, attached, out);
}

/// One directory's entries, recursing into the expanded ones.
fn tree(ui: &mut Ui, v: &mut FilesView, ws: &Ws, dir: &str, depth: usize, out: &mut Vec<ToolCmd>) {
    if depth > 32 {
        return;
    }
    let entries = match v.dirs.get(dir) {
        None | Some(Dir::Loading) => {
            ui.horizontal(|ui| {
                ui.add_space(depth as f32 * 12.0);
                ui.spinner();
            });
            return;
        }
        Some(Dir::Failed(e)) => {
            ui.label(
                RichText::new(format!("cannot list: {e}")).color(Color32::from_rgb(220, 80, 70)),
            );
            return;
        }
        Some(Dir::Loaded { entries, truncated }) => {
            let mut list: Vec<FileEntry> = entries
                .iter()
                .filter(|e| !e.path.is_empty() && parent_of(&e.path) == dir)
                .cloned()
                .collect();
            list.sort_by(|a, b| {
                (a.kind != FileKind::Dir, name_of(&a.path))
                    .cmp(&(b.kind != FileKind::Dir, name_of(&b.path)))
            });
            (list, *truncated)
        }
    };
    let (list, truncated) = entries;
    for e in list {
        let name = name_of(&e.path).to_string();
        ui.horizontal(|ui| {
            ui.add_space(depth as f32 * 12.0);
            match e.kind {
                FileKind::Dir => {
                    let open = v.expanded.contains(&e.path);
                    let icon = if open { "⏷ 🗁" } else { "⏵ 🗀" };
                    if ui
                        .selectable_label(false, format!("{icon} {name}"))
                        .clicked()
                    {
                        if open {
                            v.expanded.remove(&e.path);
                        } else {
                            v.expanded.insert(e.path.clone());
                            if !v.dirs.contains_key(&e.path) {
                                v.dirs.insert(e.path.clone(), Dir::Loading);
                                out.push(ToolCmd::List {
                                    ws: ws.clone(),
                                    path: e.path.clone(),
                                });
                            }
                        }
                    }
                }
                _ => {
                    let selected = matches!(&v.shown, Shown::File { path, .. } if *path == e.path);
                    if ui
                        .selectable_label(selected, format!("🗋 {name}"))
                        .on_hover_text(format!("{} · {} bytes", e.path, e.size))
                        .clicked()
                    {
                        v.open_file(ws, &e.path, out);
                    }
                }
            }
        });
        if e.kind == FileKind::Dir && v.expanded.contains(&e.path) {
            tree(ui, v, ws, &e.path, depth + 1, out);
        }
    }
    if truncated {
        ui.label(RichText::new("(more entries not shown)").weak());
    }
}

/// The folder a listed path is in (`""` for the root).
fn parent_of(path: &str) -> &str {
    let p = path.trim_start_matches("./");
    match p.rsplit_once('/') {
        Some((parent, _)) => parent,
        None => "",
    }
}

fn viewer(
    ui: &mut Ui,
    v: &mut FilesView,
    ws: &Ws,
    prompt: &mut String,
    attached: &mut bool,
    out: &mut Vec<ToolCmd>,
) {
    match v.shown.clone() {
        Shown::Nothing => {
            ui.label("Open a file on the left, or look at a diff.");
        }
        Shown::File { path, data } => {
            ui.horizontal_wrapped(|ui| {
                ui.label(RichText::new(&path).strong().monospace());
                if ui
                    .button("Diff this file")
                    .on_hover_text("git diff of this file against HEAD")
                    .clicked()
                {
                    v.shown = Shown::Diff {
                        title: format!("{path} vs HEAD"),
                        text: None,
                    };
                    out.push(ToolCmd::Diff {
                        ws: ws.clone(),
                        base: None,
                        path: Some(path.clone()),
                    });
                }
                if let Some(text) = v.attachment()
                    && ui
                        .button("Attach to prompt")
                        .on_hover_text("Add the file's text to the prompt box (chat)")
                        .clicked()
                {
                    prompt.push_str(&text);
                    *attached = true;
                }
                let l = ui.label("Download to folder");
                ui.add(egui::TextEdit::singleline(&mut v.download_to).desired_width(200.0))
                    .labelled_by(l.id);
                if ui
                    .add_enabled(
                        !v.download_to.trim().is_empty(),
                        egui::Button::new("Download"),
                    )
                    .clicked()
                {
                    out.push(ToolCmd::Download {
                        ws: ws.clone(),
                        remote: path.clone(),
                        local: v.download_to.trim().into(),
                    });
                    v.status = Some(Ok("downloading…".into()));
                }
            });
            ui.separator();
            match data {
                None => {
                    ui.spinner();
                }
                Some(Err(e)) => {
                    ui.label(RichText::new(e).color(Color32::from_rgb(220, 80, 70)));
                }
                Some(Ok(d)) => match std::str::from_utf8(&d.data) {
                    Ok(text) => {
                        if d.truncated {
                            ui.label(
                                RichText::new(format!(
                                    "Showing the first {} of {} bytes: download it for the rest.",
                                    d.data.len(),
                                    d.size
                                ))
                                .weak(),
                            );
                        }
                        code(ui, text, lang_of(&path));
                    }
                    Err(_) => {
                        ui.label(format!(
                            "Binary file ({} bytes): download it to open it.",
                            d.size
                        ));
                    }
                },
            }
        }
        Shown::Diff { title, text } => {
            ui.label(RichText::new(format!("Diff: {title}")).strong());
            ui.separator();
            match text {
                None => {
                    ui.spinner();
                }
                Some(Err(e)) => {
                    ui.label(RichText::new(e).color(Color32::from_rgb(220, 80, 70)));
                }
                Some(Ok((t, truncated))) => {
                    if t.trim().is_empty() {
                        ui.label("No changes.");
                    } else {
                        egui::ScrollArea::both()
                            .id_salt("diff-scroll")
                            .auto_shrink([false, false])
                            .show(ui, |ui| {
                                ui.add(egui::Label::new(diff_job(ui, &t)).extend());
                            });
                    }
                    if truncated {
                        ui.label(RichText::new("(diff cut at the size limit)").weak());
                    }
                }
            }
        }
    }
}

/// Highlighted source (egui_extras' highlighter; results are cached by egui).
fn code(ui: &mut Ui, text: &str, lang: &str) {
    let theme = egui_extras::syntax_highlighting::CodeTheme::from_style(ui.style());
    let job = egui_extras::syntax_highlighting::highlight(ui.ctx(), ui.style(), &theme, text, lang);
    egui::ScrollArea::both()
        .id_salt("file-scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.add(egui::Label::new(job).extend());
        });
}

/// A unified diff coloured by line kind.
fn diff_job(ui: &Ui, text: &str) -> LayoutJob {
    let font = FontId::monospace(12.5);
    let dark = ui.visuals().dark_mode;
    let normal = ui.visuals().text_color();
    let (add, del, hunk, head) = if dark {
        (
            Color32::from_rgb(110, 200, 120),
            Color32::from_rgb(235, 110, 100),
            Color32::from_rgb(110, 160, 235),
            Color32::from_rgb(220, 200, 120),
        )
    } else {
        (
            Color32::from_rgb(20, 120, 40),
            Color32::from_rgb(170, 30, 30),
            Color32::from_rgb(30, 80, 170),
            Color32::from_rgb(120, 90, 0),
        )
    };
    let mut job = LayoutJob::default();
    for line in text.lines().take(50_000) {
        let color =
            if line.starts_with("+++") || line.starts_with("---") || line.starts_with("diff ") {
                head
            } else if line.starts_with('+') {
                add
            } else if line.starts_with('-') {
                del
            } else if line.starts_with("@@") {
                hunk
            } else {
                normal
            };
        job.append(line, 0.0, TextFormat::simple(font.clone(), color));
        job.append("\n", 0.0, TextFormat::simple(font.clone(), normal));
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: FileKind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            size: 1,
            modified: 0,
        }
    }

    #[test]
    fn listings_land_in_the_tree_of_their_workspace_only() {
        let ws = ("n".to_string(), "w".to_string());
        let mut v = FilesView::default();
        let mut out = Vec::new();
        v.follow(&ws, &mut out);
        assert_eq!(
            out,
            vec![ToolCmd::List {
                ws: ws.clone(),
                path: String::new()
            }]
        );
        v.apply(ToolEvent::Listing {
            ws: ("n".into(), "other".into()),
            path: String::new(),
            result: Ok((vec![entry("x", FileKind::File)], false)),
        });
        assert_eq!(v.dirs.get(""), Some(&Dir::Loading));
        v.apply(ToolEvent::Listing {
            ws: ws.clone(),
            path: String::new(),
            result: Ok((
                vec![entry("src", FileKind::Dir), entry("a.txt", FileKind::File)],
                false,
            )),
        });
        assert!(matches!(v.dirs.get(""), Some(Dir::Loaded { entries, .. }) if entries.len() == 2));
        assert_eq!(parent_of("src/main.rs"), "src");
        assert_eq!(parent_of("a.txt"), "");
    }

    #[test]
    fn attachments_are_fenced_and_capped() {
        let mut v = FilesView {
            shown: Shown::File {
                path: "src/main.rs".into(),
                data: Some(Ok(FileData {
                    data: b"fn main() {}\n".to_vec(),
                    size: 13,
                    truncated: false,
                })),
            },
            ..FilesView::default()
        };
        assert_eq!(
            v.attachment().as_deref(),
            Some("\n\nFile `src/main.rs`:\n```rs\nfn main() {}\n```\n")
        );
        let big = "é".repeat(ATTACH_MAX);
        v.shown = Shown::File {
            path: "big.txt".into(),
            data: Some(Ok(FileData {
                data: big.clone().into_bytes(),
                size: big.len() as u64,
                truncated: false,
            })),
        };
        let a = v.attachment().expect("attachment");
        assert!(a.len() < ATTACH_MAX + 200, "{}", a.len());
        assert!(a.contains("first 32768 of 65536 bytes"), "{}", &a[..80]);
        v.shown = Shown::File {
            path: "bin".into(),
            data: Some(Ok(FileData {
                data: vec![0xff, 0xfe, 0],
                size: 3,
                truncated: false,
            })),
        };
        assert_eq!(v.attachment(), None, "binary files are not attached");
    }
}
