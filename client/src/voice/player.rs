//! The read-aloud player: a queue of clips with play/pause/skip/speed.
//!
//! [`PlayerCore`] is the sans-IO state machine (render N samples, handle commands);
//! [`Player`] runs it on a background thread that writes to a [`Sink`]: the sound card
//! ([`super::DeviceSink`]) or a WAV file ([`FileSink`]) for headless tests. The player
//! is meant to live as long as the app, so playback goes on while the user moves between
//! conversations.

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::{Audio, VoiceError};

/// Speeds the player accepts.
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.5..=3.0;
/// The most clips waiting in the queue.
pub const MAX_QUEUE: usize = 256;

/// One thing to play, e.g. one agent message read aloud.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The caller's id (a message id).
    pub id: String,
    /// What the player bar shows.
    pub label: String,
    pub audio: Audio,
}

/// What the player bar shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlayerState {
    /// `(id, label)` of the clip playing or paused.
    pub current: Option<(String, String)>,
    /// `(id, label)` of the clips waiting.
    pub queue: Vec<(String, String)>,
    pub paused: bool,
    pub speed: f32,
    pub position_secs: f32,
    pub duration_secs: f32,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayerEvent {
    Started(String),
    Finished(String),
    Skipped(String),
    /// Nothing left to play.
    Idle,
    /// The sink failed (e.g. the sound card went away); the player stops.
    Error(String),
    /// The state changed; sent after every command and every clip change.
    State(PlayerState),
}

/// The player's state machine, with no thread and no device.
#[derive(Debug)]
pub struct PlayerCore {
    queue: VecDeque<Clip>,
    current: Option<Clip>,
    /// Position in the current clip, in its samples.
    pos: f64,
    paused: bool,
    speed: f32,
    events: Vec<PlayerEvent>,
}

impl Default for PlayerCore {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            current: None,
            pos: 0.0,
            paused: false,
            speed: 1.0,
            events: Vec::new(),
        }
    }
}

impl PlayerCore {
    /// Adds a clip to the end of the queue (the oldest waiting clip is dropped past
    /// [`MAX_QUEUE`]).
    pub fn enqueue(&mut self, clip: Clip) {
        if self.queue.len() >= MAX_QUEUE {
            self.queue.pop_front();
        }
        self.queue.push_back(clip);
    }

    /// Plays a clip now: the current one is skipped, the queue kept.
    pub fn play_now(&mut self, clip: Clip) {
        self.queue.push_front(clip);
        self.skip();
        self.paused = false;
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    pub fn toggle(&mut self) {
        self.paused = !self.paused;
    }

    /// Skips the current clip.
    pub fn skip(&mut self) {
        if let Some(c) = self.current.take() {
            self.events.push(PlayerEvent::Skipped(c.id));
        }
        self.pos = 0.0;
    }

    /// Stops and empties the queue.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.skip();
    }

    /// Sets the speed, clamped to [`SPEED_RANGE`]. (Resampling: faster is also higher.)
    pub fn set_speed(&mut self, speed: f32) {
        self.speed = if speed.is_finite() {
            speed.clamp(*SPEED_RANGE.start(), *SPEED_RANGE.end())
        } else {
            1.0
        };
    }

    /// True when there is nothing to play.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn state(&self) -> PlayerState {
        PlayerState {
            current: self
                .current
                .as_ref()
                .map(|c| (c.id.clone(), c.label.clone())),
            queue: self
                .queue
                .iter()
                .map(|c| (c.id.clone(), c.label.clone()))
                .collect(),
            paused: self.paused,
            speed: self.speed,
            position_secs: self
                .current
                .as_ref()
                .map(|c| self.pos as f32 / c.audio.sample_rate as f32)
                .unwrap_or(0.0),
            duration_secs: self
                .current
                .as_ref()
                .map(|c| c.audio.duration_secs())
                .unwrap_or(0.0),
        }
    }

    /// Fills `out` with audio at `rate` Hz; returns how many samples are real playback
    /// (the rest is silence: paused or nothing left).
    pub fn render(&mut self, out: &mut [f32], rate: u32) -> usize {
        let rate = rate.max(1) as f64;
        let mut i = 0;
        while i < out.len() && !self.paused {
            if self.current.is_none() {
                match self.queue.pop_front() {
                    Some(c) => {
                        self.events.push(PlayerEvent::Started(c.id.clone()));
                        self.pos = 0.0;
                        self.current = Some(c);
                    }
                    None => break,
                }
            }
            let Some(clip) = &self.current else { break };
            let s = &clip.audio.samples;
            let step = clip.audio.sample_rate as f64 / rate * self.speed as f64;
            while i < out.len() && (self.pos as usize) < s.len() {
                let j = self.pos as usize;
                let frac = (self.pos - j as f64) as f32;
                let a = s[j];
                let b = s.get(j + 1).copied().unwrap_or(a);
                out[i] = a + (b - a) * frac;
                i += 1;
                self.pos += step;
            }
            if (self.pos as usize) >= s.len() {
                self.events.push(PlayerEvent::Finished(clip.id.clone()));
                self.current = None;
                self.pos = 0.0;
                if self.queue.is_empty() {
                    self.events.push(PlayerEvent::Idle);
                }
            }
        }
        out[i..].fill(0.0);
        i
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<PlayerEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Where the player's samples go. `write` may block to pace playback (the sound card).
pub trait Sink: Send {
    fn sample_rate(&self) -> u32;
    fn write(&mut self, samples: &[f32]) -> Result<(), VoiceError>;
    /// Called when the player goes idle or stops.
    fn flush(&mut self) -> Result<(), VoiceError> {
        Ok(())
    }
}

/// Writes what is played to a 16-bit mono WAV file (headers kept valid at every flush).
pub struct FileSink {
    file: std::fs::File,
    path: PathBuf,
    rate: u32,
    samples: u64,
}

impl FileSink {
    pub fn create(path: &Path, rate: u32) -> Result<Self, VoiceError> {
        let mut file = std::fs::File::create(path)
            .map_err(|e| VoiceError::io(format!("create {}", path.display()), e))?;
        let header = Audio::new(Vec::new(), rate).to_wav();
        file.write_all(&header)
            .map_err(|e| VoiceError::io(format!("write {}", path.display()), e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            rate: rate.max(1),
            samples: 0,
        })
    }
}

impl Sink for FileSink {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), VoiceError> {
        let mut b = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            b.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
        }
        self.samples += samples.len() as u64;
        self.file
            .write_all(&b)
            .map_err(|e| VoiceError::io(format!("write {}", self.path.display()), e))
    }

    fn flush(&mut self) -> Result<(), VoiceError> {
        let data = (self.samples * 2).min(u32::MAX as u64 - 36) as u32;
        let io = |e| VoiceError::io(format!("write {}", self.path.display()), e);
        self.file.seek(SeekFrom::Start(4)).map_err(io)?;
        self.file
            .write_all(&(36 + data).to_le_bytes())
            .map_err(io)?;
        self.file.seek(SeekFrom::Start(40)).map_err(io)?;
        self.file.write_all(&data.to_le_bytes()).map_err(io)?;
        self.file.seek(SeekFrom::End(0)).map_err(io)?;
        self.file.flush().map_err(io)
    }
}

/// Keeps what is played in memory (tests).
#[derive(Clone, Default)]
pub struct MemorySink {
    pub rate: u32,
    pub samples: Arc<Mutex<Vec<f32>>>,
}

impl Sink for MemorySink {
    fn sample_rate(&self) -> u32 {
        self.rate.max(1)
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), VoiceError> {
        if let Ok(mut s) = self.samples.lock() {
            s.extend_from_slice(samples);
        }
        Ok(())
    }
}

enum Command {
    Enqueue(Clip),
    PlayNow(Clip),
    Pause,
    Resume,
    Toggle,
    Skip,
    Clear,
    Speed(f32),
}

/// The player: a handle to a background thread. Dropping it stops playback.
pub struct Player {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Player {
    /// Starts the player thread writing to `sink`; `on_event` is called on that thread
    /// (forward to a channel and request a repaint).
    pub fn spawn(
        sink: Box<dyn Sink>,
        on_event: impl FnMut(PlayerEvent) + Send + 'static,
    ) -> Result<Self, VoiceError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sam-player".into())
            .spawn(move || run(sink, rx, on_event))
            .map_err(|e| VoiceError::Device(format!("cannot start the player thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, c: Command) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(c);
        }
    }

    pub fn enqueue(&self, clip: Clip) {
        self.send(Command::Enqueue(clip));
    }
    pub fn play_now(&self, clip: Clip) {
        self.send(Command::PlayNow(clip));
    }
    pub fn pause(&self) {
        self.send(Command::Pause);
    }
    pub fn resume(&self) {
        self.send(Command::Resume);
    }
    pub fn toggle(&self) {
        self.send(Command::Toggle);
    }
    pub fn skip(&self) {
        self.send(Command::Skip);
    }
    pub fn clear(&self) {
        self.send(Command::Clear);
    }
    pub fn set_speed(&self, speed: f32) {
        self.send(Command::Speed(speed));
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut sink: Box<dyn Sink>,
    rx: mpsc::Receiver<Command>,
    mut on_event: impl FnMut(PlayerEvent),
) {
    let mut core = PlayerCore::default();
    let rate = sink.sample_rate().max(1);
    let mut buf = vec![0.0f32; (rate / 50).max(1) as usize]; // 20 ms blocks
    loop {
        let waiting = core.is_idle() || core.is_paused();
        let first = if waiting {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        };
        let mut changed = false;
        for c in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            changed = true;
            match c {
                Command::Enqueue(clip) => core.enqueue(clip),
                Command::PlayNow(clip) => core.play_now(clip),
                Command::Pause => core.pause(),
                Command::Resume => core.resume(),
                Command::Toggle => core.toggle(),
                Command::Skip => core.skip(),
                Command::Clear => core.clear(),
                Command::Speed(s) => core.set_speed(s),
            }
        }
        let mut result = Ok(());
        if !core.is_idle() && !core.is_paused() {
            let n = core.render(&mut buf, rate);
            if n > 0 {
                result = sink.write(&buf[..n]);
            }
        }
        let events = core.take_events();
        if core.is_idle() && (events.contains(&PlayerEvent::Idle) || changed) {
            result = result.and_then(|()| sink.flush());
        }
        let notify = changed || !events.is_empty();
        for e in events {
            on_event(e);
        }
        if let Err(e) = result {
            on_event(PlayerEvent::Error(e.to_string()));
            core.clear();
            let _ = core.take_events();
            changed = true;
        }
        if notify || changed {
            on_event(PlayerEvent::State(core.state()));
        }
    }
    let _ = sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(id: &str, secs: f32, rate: u32) -> Clip {
        Clip {
            id: id.into(),
            label: id.into(),
            audio: Audio::new(vec![0.25; (secs * rate as f32) as usize], rate),
        }
    }

    fn play_all(core: &mut PlayerCore, rate: u32) -> usize {
        let mut buf = vec![0.0; 100];
        let mut total = 0;
        for _ in 0..100_000 {
            if core.is_idle() {
                break;
            }
            total += core.render(&mut buf, rate);
        }
        total
    }

    #[test]
    fn plays_the_queue_in_order_at_the_sink_rate() {
        let mut core = PlayerCore::default();
        core.enqueue(clip("a", 1.0, 8000));
        core.enqueue(clip("b", 0.5, 16_000));
        let n = play_all(&mut core, 8000);
        assert!((n as i64 - 12_000).abs() <= 2, "{n}");
        assert_eq!(
            core.take_events(),
            vec![
                PlayerEvent::Started("a".into()),
                PlayerEvent::Finished("a".into()),
                PlayerEvent::Started("b".into()),
                PlayerEvent::Finished("b".into()),
                PlayerEvent::Idle,
            ]
        );
    }

    #[test]
    fn pause_skip_and_speed() {
        let mut core = PlayerCore::default();
        core.set_speed(2.0);
        core.enqueue(clip("a", 1.0, 1000));
        core.enqueue(clip("b", 1.0, 1000));
        core.enqueue(clip("c", 1.0, 1000));
        let mut buf = vec![0.0; 100];
        assert_eq!(core.render(&mut buf, 1000), 100);
        assert_eq!(core.state().current.map(|c| c.0).as_deref(), Some("a"));
        assert!((core.state().position_secs - 0.2).abs() < 0.01);
        core.pause();
        assert_eq!(core.render(&mut buf, 1000), 0);
        assert!(buf.iter().all(|s| *s == 0.0));
        core.resume();
        core.skip();
        assert_eq!(core.state().queue.len(), 2);
        let n = play_all(&mut core, 1000);
        assert!((n as i64 - 1000).abs() <= 2, "two 1 s clips at 2x: {n}");
        assert!(
            core.take_events()
                .contains(&PlayerEvent::Skipped("a".into()))
        );
        core.set_speed(100.0);
        assert_eq!(core.state().speed, 3.0);
        core.set_speed(f32::NAN);
        assert_eq!(core.state().speed, 1.0);
    }
}
