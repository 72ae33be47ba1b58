//! Recording a prompt: from the microphone (cpal) or, as a stand-in for tests and machines
//! without one, from a WAV file played in as if spoken. The level (RMS of each 50 ms) is
//! reported as it records, for the meter.
//!
//! Push-to-talk and toggle are the caller's: both are `start` … `stop`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::audio::{MAX_SAMPLES, rms};
use super::device::{InputStream, open_input};
use super::{Audio, VoiceError};

/// Where the audio comes from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// The default input device.
    Microphone,
    /// A WAV file; `realtime` feeds it at its natural pace, else as fast as possible.
    WavFile { path: PathBuf, realtime: bool },
}

/// Starts recordings from one source.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub source: InputSource,
    /// Recording stops taking samples after this long.
    pub max_secs: f32,
}

impl Recorder {
    pub fn new(source: InputSource) -> Self {
        Self {
            source,
            max_secs: 30.0 * 60.0,
        }
    }

    /// Starts recording; `on_level` gets the RMS level (0.0..=1.0) of every 50 ms, on the
    /// audio thread. Fails with [`VoiceError::Device`] when there is no microphone.
    pub fn start(
        &self,
        on_level: impl FnMut(f32) + Send + 'static,
    ) -> Result<Recording, VoiceError> {
        let (tx, rx) = mpsc::channel::<Vec<f32>>();
        let done = Arc::new(AtomicBool::new(false));
        match &self.source {
            InputSource::Microphone => {
                // The rate is known only once the stream is open; the collector learns it
                // from the first message.
                let (rate_tx, rate_rx) = mpsc::channel::<u32>();
                let max_secs = self.max_secs;
                let mut collector: Option<Collector<_>> = None;
                let mut on_level = Some(on_level);
                let stream = open_input(move |block| {
                    if collector.is_none() {
                        let rate = rate_rx
                            .recv_timeout(Duration::from_secs(1))
                            .unwrap_or(48_000);
                        if let Some(l) = on_level.take() {
                            collector = Some(Collector::new(rate, max_secs, tx.clone(), l));
                        }
                    }
                    if let Some(c) = &mut collector {
                        c.push(block);
                    }
                })?;
                let _ = rate_tx.send(stream.sample_rate);
                Ok(Recording {
                    rx,
                    sample_rate: stream.sample_rate,
                    started: Instant::now(),
                    done,
                    stop: Arc::new(AtomicBool::new(false)),
                    _stream: Some(stream),
                    feeder: None,
                })
            }
            InputSource::WavFile { path, realtime } => {
                let audio = Audio::read_wav(path)?;
                let rate = audio.sample_rate;
                let stop = Arc::new(AtomicBool::new(false));
                let realtime = *realtime;
                let mut collector = Collector::new(rate, self.max_secs, tx, on_level);
                let (stop2, done2) = (stop.clone(), done.clone());
                let feeder = std::thread::Builder::new()
                    .name("sam-wav-input".into())
                    .spawn(move || {
                        let block = (rate / 50).max(1) as usize; // 20 ms
                        let start = Instant::now();
                        for (i, b) in audio.samples.chunks(block).enumerate() {
                            if stop2.load(Ordering::Relaxed) {
                                break;
                            }
                            if realtime {
                                let due = start + Duration::from_millis(20 * i as u64);
                                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                    std::thread::sleep(wait);
                                }
                            }
                            collector.push(b);
                        }
                        done2.store(true, Ordering::Relaxed);
                    })
                    .map_err(|e| {
                        VoiceError::Device(format!("cannot start the input thread: {e}"))
                    })?;
                Ok(Recording {
                    rx,
                    sample_rate: rate,
                    started: Instant::now(),
                    done,
                    stop,
                    _stream: None,
                    feeder: Some(feeder),
                })
            }
        }
    }
}

/// Chops incoming samples into level windows and forwards them.
struct Collector<L> {
    tx: mpsc::Sender<Vec<f32>>,
    on_level: L,
    window: usize,
    acc: Vec<f32>,
    taken: usize,
    max: usize,
}

impl<L: FnMut(f32)> Collector<L> {
    fn new(rate: u32, max_secs: f32, tx: mpsc::Sender<Vec<f32>>, on_level: L) -> Self {
        Self {
            tx,
            on_level,
            window: (rate / 20).max(1) as usize,
            acc: Vec::new(),
            taken: 0,
            max: ((max_secs.max(0.0) * rate as f32) as usize).min(MAX_SAMPLES),
        }
    }

    fn push(&mut self, block: &[f32]) {
        let room = self.max.saturating_sub(self.taken);
        let block = &block[..block.len().min(room)];
        if block.is_empty() {
            return;
        }
        self.taken += block.len();
        let _ = self.tx.send(block.to_vec());
        self.acc.extend_from_slice(block);
        while self.acc.len() >= self.window {
            let level = rms(&self.acc[..self.window]);
            (self.on_level)(level);
            self.acc.drain(..self.window);
        }
    }
}

/// A recording in progress; [`Recording::stop`] returns what was heard.
pub struct Recording {
    rx: mpsc::Receiver<Vec<f32>>,
    pub sample_rate: u32,
    started: Instant,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    _stream: Option<InputStream>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Recording {
    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// True when a WAV file input has been fed completely (never for the microphone).
    pub fn source_finished(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops and returns the audio.
    pub fn stop(mut self) -> Audio {
        self.stop.store(true, Ordering::Relaxed);
        self._stream.take();
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let mut samples = Vec::new();
        while let Ok(b) = self.rx.try_recv() {
            samples.extend_from_slice(&b);
        }
        Audio::new(samples, self.sample_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_file_stands_in_for_the_microphone() {
        let dir = std::env::temp_dir().join(format!("sam-rec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("in.wav");
        let mut a = Audio::silence(0.5, 16_000);
        a.append(&Audio::new(
            (0..8000).map(|i| 0.5 * (i as f32 * 0.1).sin()).collect(),
            16_000,
        ));
        a.write_wav(&path).expect("write");
        let levels = Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = levels.clone();
        let rec = Recorder::new(InputSource::WavFile {
            path,
            realtime: false,
        })
        .start(move |l| l2.lock().expect("lock").push(l))
        .expect("start");
        while !rec.source_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = rec.stop();
        assert_eq!(got.samples.len(), 16_000);
        let levels = levels.lock().expect("lock").clone();
        assert_eq!(levels.len(), 20);
        assert!(levels[..10].iter().all(|l| *l < 0.01));
        assert!(levels[10..].iter().all(|l| *l > 0.3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stop_early_keeps_what_was_said_and_the_limit_holds() {
        let dir = std::env::temp_dir().join(format!("sam-rec-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("in.wav");
        Audio::new(vec![0.1; 16_000 * 3], 16_000)
            .write_wav(&path)
            .expect("write");
        let mut r = Recorder::new(InputSource::WavFile {
            path,
            realtime: false,
        });
        r.max_secs = 1.0;
        let rec = r.start(|_| {}).expect("start");
        while !rec.source_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rec.stop().samples.len(), 16_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
