//! Voice in the GUI: the microphone controls of the prompt box (toggle and push-to-talk,
//! a level meter, the transcript put into the prompt for review), the read-aloud button's
//! command, "auto-read new answers", and the player bar that stays at the bottom of the
//! window whatever conversation is shown. The work itself is in [`super::tools`].

use egui::{Color32, RichText, Ui};
use sam_crdt::{MessageView, Role, Status};

use super::tools::{PlayerCtl, ToolCmd, ToolEvent};
use crate::voice::{
    AutoReader, PlayerEvent, PlayerState, SpeakerKind, TranscriberKind, VoiceConfig,
};

/// What the voice controls show.
#[derive(Debug, Default)]
pub struct VoiceView {
    pub recording: bool,
    /// A recording was asked for and has not started (or failed) yet.
    pub starting: bool,
    /// The recording was started by holding the push-to-talk button.
    pub holding: bool,
    /// Last level (RMS, 0..1) and the highest of this recording.
    pub level: f32,
    pub peak: f32,
    pub transcribing: bool,
    /// The last voice error (recording, transcription or playback).
    pub error: Option<String>,
    pub player: PlayerState,
    /// Clips being synthesised.
    pub synth: usize,
    /// The player bar has something to show since the player was first used.
    pub used: bool,
    pub auto_read: bool,
    pub speed: f32,
    /// The voice settings form (loaded when Settings opens) and the last save's outcome.
    pub settings: Option<VoiceForm>,
    pub settings_status: Option<Result<String, String>>,
    settings_asked: bool,
    /// The conversation the auto-reader follows, and the reader.
    auto: Option<(String, AutoReader)>,
}

/// The voice part of the Settings dialog (what `voice.toml` holds that people change).
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceForm {
    pub transcriber: TranscriberKind,
    pub speaker: SpeakerKind,
    pub base_url: String,
    pub transcription_model: String,
    pub speech_voice: String,
    pub program: String,
    pub model: String,
    pub espeak_voice: String,
    pub wpm: u32,
}

impl VoiceForm {
    pub fn of(c: &VoiceConfig) -> Self {
        Self {
            transcriber: c.transcriber,
            speaker: c.speaker,
            base_url: c.openai.base_url.clone(),
            transcription_model: c.openai.transcription_model.clone(),
            speech_voice: c.openai.voice.clone(),
            program: c.command.program.display().to_string(),
            model: c
                .command
                .model
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default(),
            espeak_voice: c.espeak.voice.clone(),
            wpm: c.espeak.wpm,
        }
    }

    /// Writes the form into `c` (the rest of `c` is kept).
    pub fn apply_to(&self, c: &mut VoiceConfig) {
        c.transcriber = self.transcriber;
        c.speaker = self.speaker;
        c.openai.base_url = self.base_url.trim().to_string();
        c.openai.transcription_model = self.transcription_model.trim().to_string();
        c.openai.voice = self.speech_voice.trim().to_string();
        c.command.program = self.program.trim().into();
        c.command.model = Some(self.model.trim())
            .filter(|m| !m.is_empty())
            .map(Into::into);
        c.espeak.voice = self.espeak_voice.trim().to_string();
        c.espeak.wpm = self.wpm.clamp(80, 450);
    }
}

impl VoiceView {
    pub fn apply(&mut self, ev: ToolEvent) {
        match ev {
            ToolEvent::VoiceConfig { auto_read, speed } => {
                self.auto_read = auto_read;
                self.speed = speed;
            }
            ToolEvent::Recording(on) => {
                self.recording = on;
                self.starting = false;
                if on {
                    self.error = None;
                } else {
                    self.level = 0.0;
                }
            }
            // Levels may come before the worker says the recording started.
            ToolEvent::Level(l) if self.recording || self.starting => {
                self.level = l.clamp(0.0, 1.0);
                self.peak = self.peak.max(self.level);
            }
            ToolEvent::Transcribing => self.transcribing = true,
            ToolEvent::Transcript(r) => {
                self.transcribing = false;
                self.starting = false;
                self.error = r.err();
            }
            ToolEvent::Synth(d) => {
                self.used = true;
                self.synth = self.synth.saturating_add_signed(d as isize);
            }
            ToolEvent::Player(PlayerEvent::State(s)) => {
                self.used = true;
                self.speed = s.speed;
                self.player = s;
            }
            ToolEvent::Player(PlayerEvent::Error(e)) => {
                self.error = Some(format!("playback failed: {e}"));
            }
            ToolEvent::Player(_) => {}
            ToolEvent::VoiceError(e) => self.error = Some(e),
            ToolEvent::VoiceSettings { form, saved } => {
                self.settings = Some(form);
                self.settings_status = saved;
            }
            _ => {}
        }
    }

    /// New finished agent answers of `conv` to read aloud when auto-read is on. The first
    /// call for a conversation only takes note of what is there (history is not read).
    pub fn auto_read_news(&mut self, conv: &str, msgs: &[MessageView]) -> Vec<ToolCmd> {
        if !self.auto_read {
            // Off: nothing to track; turning it on starts from what is there then.
            self.auto = None;
            return Vec::new();
        }
        match &mut self.auto {
            Some((c, reader)) if c == conv => {
                let news = reader.new_answers(msgs);
                news.into_iter()
                    .map(|(id, text)| ToolCmd::Speak {
                        label: label_of(&text),
                        id: id.to_string(),
                        markdown: text,
                        now: false,
                    })
                    .collect()
            }
            _ => {
                // What is there is heard already, except answers still being written:
                // those are read when they finish.
                let heard: Vec<MessageView> = msgs
                    .iter()
                    .filter(|m| !(m.role == Role::Agent && in_flight(m.status)))
                    .cloned()
                    .collect();
                self.auto = Some((conv.to_string(), AutoReader::new(&heard)));
                Vec::new()
            }
        }
    }

    /// A recording is being asked for: the meter starts from zero.
    fn start(&mut self) {
        self.starting = true;
        self.level = 0.0;
        self.peak = 0.0;
    }

    /// The Settings dialog closed: load the file again next time it opens.
    pub fn settings_closed(&mut self) {
        self.settings = None;
        self.settings_status = None;
        self.settings_asked = false;
    }

    fn bar_visible(&self) -> bool {
        self.used || self.synth > 0 || self.player.current.is_some()
    }
}

fn in_flight(s: Status) -> bool {
    matches!(s, Status::Queued | Status::Running | Status::Streaming)
}

/// The player bar's short name for a message.
pub fn label_of(markdown: &str) -> String {
    let t = crate::voice::speakable(markdown);
    let first = t.split_whitespace().take(10).collect::<Vec<_>>().join(" ");
    if first.chars().count() > 60 {
        format!("{}…", first.chars().take(59).collect::<String>())
    } else {
        first
    }
}

/// The read-aloud command for one message.
pub fn speak_message(m: &MessageView) -> ToolCmd {
    ToolCmd::Speak {
        id: m.id.to_string(),
        label: label_of(&m.text),
        markdown: m.text.clone(),
        now: true,
    }
}

/// Microphone controls under the prompt box.
pub fn mic_controls(ui: &mut Ui, v: &mut VoiceView, out: &mut Vec<ToolCmd>) {
    // Both buttons always take the same places (and stable ids), so a press held on
    // "Hold to talk" stays on it while the row changes.
    ui.push_id("mic-toggle", |ui| {
        if v.recording && !v.holding {
            if ui
                .button("⏹ Stop recording")
                .on_hover_text("Stop and transcribe into the prompt box")
                .clicked()
            {
                out.push(ToolCmd::RecordStop);
            }
        } else if ui
            .add_enabled(
                !v.transcribing && !v.recording,
                egui::Button::new("🎤 Record"),
            )
            .on_hover_text("Record a prompt (click again to stop)")
            .clicked()
        {
            v.start();
            out.push(ToolCmd::RecordStart);
        }
    });
    // Push-to-talk: records while the button is held.
    let hold = ui
        .push_id("mic-hold", |ui| {
            ui.add_enabled(
                v.holding || (!v.transcribing && !v.recording),
                egui::Button::new("Hold to talk").sense(egui::Sense::click_and_drag()),
            )
            .on_hover_text("Records while you hold the button")
        })
        .inner;
    let down = hold.is_pointer_button_down_on();
    if down && !v.recording && !v.holding && !v.transcribing {
        v.holding = true;
        v.start();
        out.push(ToolCmd::RecordStart);
    } else if !down && v.holding {
        v.holding = false;
        out.push(ToolCmd::RecordStop);
    }
    if v.recording {
        // Speech sits around 0.02..0.3 RMS: a square root spreads it over the bar.
        let shown = v.level.sqrt().clamp(0.0, 1.0);
        ui.add(
            egui::ProgressBar::new(shown)
                .desired_width(120.0)
                .text("level"),
        )
        .on_hover_text("Microphone level");
        super::view::dot_colored(ui, Color32::from_rgb(220, 70, 60), "recording");
        ui.label(RichText::new("Recording…").color(Color32::from_rgb(220, 70, 60)));
        ui.ctx().request_repaint();
    }
    if v.transcribing {
        ui.spinner();
        ui.label("Transcribing…");
    }
}

/// The voice error line, when there is one.
pub fn error_line(ui: &mut Ui, v: &mut VoiceView) {
    let Some(e) = v.error.clone() else { return };
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("Voice: {e}")).color(Color32::from_rgb(220, 80, 70)));
        if ui.small_button("Dismiss").clicked() {
            v.error = None;
        }
    });
}

/// The player bar at the bottom of the window (kept across conversations).
pub fn player_bar(ui: &mut Ui, v: &mut VoiceView, out: &mut Vec<ToolCmd>) {
    if !v.bar_visible() {
        return;
    }
    egui::Panel::bottom("player").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Read aloud").strong());
            let p = &v.player;
            let (play_label, tip) = if p.current.is_some() && !p.paused {
                ("⏸ Pause", "Pause reading")
            } else {
                ("▶ Play", "Resume reading")
            };
            if ui
                .add_enabled(p.current.is_some(), egui::Button::new(play_label))
                .on_hover_text(tip)
                .clicked()
            {
                out.push(ToolCmd::Player(PlayerCtl::Toggle));
            }
            if ui
                .add_enabled(p.current.is_some(), egui::Button::new("⏭ Skip"))
                .on_hover_text("Skip to the next in the queue")
                .clicked()
            {
                out.push(ToolCmd::Player(PlayerCtl::Skip));
            }
            if ui
                .add_enabled(
                    p.current.is_some() || !p.queue.is_empty(),
                    egui::Button::new("Clear queue"),
                )
                .clicked()
            {
                out.push(ToolCmd::Player(PlayerCtl::Clear));
            }
            let mut speed = if v.speed > 0.0 { v.speed } else { 1.0 };
            let l = ui.label("Speed");
            let r = ui
                .add(
                    egui::Slider::new(&mut speed, crate::voice::player::SPEED_RANGE)
                        .step_by(0.25)
                        .suffix("×"),
                )
                .labelled_by(l.id);
            if r.changed() {
                v.speed = speed;
                out.push(ToolCmd::Player(PlayerCtl::Speed(speed)));
            }
            match &p.current {
                Some((_, label)) => {
                    let state = if p.paused { "Paused" } else { "Playing" };
                    ui.label(format!("{state}: {label}"));
                    if p.duration_secs > 0.0 {
                        ui.add(
                            egui::ProgressBar::new(
                                (p.position_secs / p.duration_secs).clamp(0.0, 1.0),
                            )
                            .desired_width(140.0)
                            .text(format!("{:.0} / {:.0} s", p.position_secs, p.duration_secs)),
                        );
                    }
                }
                None if v.synth > 0 => {
                    ui.spinner();
                    ui.label("Preparing speech…");
                }
                None => {
                    ui.label(RichText::new("Nothing playing").weak());
                }
            }
            if !p.queue.is_empty() {
                ui.menu_button(format!("Queue ({})", p.queue.len()), |ui| {
                    for (_, label) in &p.queue {
                        ui.label(label);
                    }
                });
            }
        });
    });
}

/// The Voice section of the Settings dialog.
pub fn settings_section(ui: &mut Ui, v: &mut VoiceView, out: &mut Vec<ToolCmd>) {
    ui.heading("Voice");
    let Some(f) = v.settings.as_mut() else {
        if !v.settings_asked {
            v.settings_asked = true;
            out.push(ToolCmd::LoadVoiceSettings);
        }
        ui.spinner();
        return;
    };
    egui::ComboBox::from_label("Speech to text")
        .selected_text(match f.transcriber {
            TranscriberKind::Openai => "OpenAI-compatible API",
            TranscriberKind::Command => "Local command (whisper.cpp)",
        })
        .show_ui(ui, |ui| {
            ui.selectable_value(
                &mut f.transcriber,
                TranscriberKind::Openai,
                "OpenAI-compatible API",
            );
            ui.selectable_value(
                &mut f.transcriber,
                TranscriberKind::Command,
                "Local command (whisper.cpp)",
            );
        });
    egui::ComboBox::from_label("Read aloud with")
        .selected_text(match f.speaker {
            SpeakerKind::Espeak => "espeak-ng (offline)",
            SpeakerKind::Openai => "OpenAI-compatible API",
        })
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut f.speaker, SpeakerKind::Espeak, "espeak-ng (offline)");
            ui.selectable_value(&mut f.speaker, SpeakerKind::Openai, "OpenAI-compatible API");
        });
    egui::Grid::new("voice-settings")
        .num_columns(2)
        .show(ui, |ui| {
            let field = |ui: &mut Ui, label: &str, value: &mut String| {
                let l = ui.label(label);
                ui.add(egui::TextEdit::singleline(value).desired_width(280.0))
                    .labelled_by(l.id);
                ui.end_row();
            };
            if f.transcriber == TranscriberKind::Openai || f.speaker == SpeakerKind::Openai {
                field(ui, "API base URL", &mut f.base_url);
            }
            if f.transcriber == TranscriberKind::Openai {
                field(ui, "Transcription model", &mut f.transcription_model);
            } else {
                field(ui, "Transcriber program", &mut f.program);
                field(ui, "Model file", &mut f.model);
            }
            if f.speaker == SpeakerKind::Openai {
                field(ui, "Speech voice", &mut f.speech_voice);
            } else {
                field(ui, "espeak-ng voice", &mut f.espeak_voice);
                let l = ui.label("Words per minute");
                ui.add(egui::Slider::new(&mut f.wpm, 80..=450))
                    .labelled_by(l.id);
                ui.end_row();
            }
        });
    ui.label(
        RichText::new(
            "The speech API key is SAM_VOICE_API_KEY above (servers on this machine need none).",
        )
        .weak(),
    );
    ui.horizontal(|ui| {
        if ui.button("Save voice settings").clicked() {
            out.push(ToolCmd::SaveVoiceSettings(f.clone()));
        }
        match &v.settings_status {
            Some(Ok(t)) => {
                ui.label(RichText::new(t).weak());
            }
            Some(Err(e)) => {
                ui.label(RichText::new(e).color(Color32::from_rgb(220, 80, 70)));
            }
            None => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_crdt::MessageId;

    fn m(i: u32, role: Role, status: Status, text: &str) -> MessageView {
        MessageView {
            id: MessageId::new(format!("{i:032x}")).expect("id"),
            role,
            author: "a".into(),
            created_at: 0,
            text: text.into(),
            status,
            reason: None,
            tool: None,
            permission: None,
        }
    }

    fn spoken(cmds: &[ToolCmd]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                ToolCmd::Speak { markdown, now, .. } => {
                    assert!(!now, "auto-read queues, it does not interrupt");
                    Some(markdown.clone())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn auto_read_reads_new_answers_once_and_never_the_history() {
        let mut v = VoiceView::default();
        let mut msgs = vec![
            m(1, Role::User, Status::Done, "q"),
            m(2, Role::Agent, Status::Done, "old answer"),
            m(3, Role::Agent, Status::Streaming, "being written"),
        ];
        // Off: nothing, whatever finishes.
        assert!(v.auto_read_news("c", &msgs).is_empty());
        v.auto_read = true;
        assert!(
            v.auto_read_news("c", &msgs).is_empty(),
            "opening reads nothing"
        );
        msgs[2].status = Status::Done;
        msgs[2].text = "being written, now **done**".into();
        msgs.push(m(4, Role::Agent, Status::Streaming, "next"));
        assert_eq!(
            spoken(&v.auto_read_news("c", &msgs)),
            vec!["being written, now **done**".to_string()],
            "the answer in flight when auto-read started is read when done"
        );
        assert!(v.auto_read_news("c", &msgs).is_empty(), "once");
        // Another conversation starts from its own present.
        let other = vec![m(9, Role::Agent, Status::Done, "elsewhere")];
        assert!(v.auto_read_news("d", &other).is_empty());
        msgs[3].status = Status::Done;
        assert!(
            v.auto_read_news("c", &msgs).is_empty(),
            "switching back starts afresh: the history is not read"
        );
    }
}
