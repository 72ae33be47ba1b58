//! Speech work of the tools worker: transcribing a recording (keeping it on failure),
//! speaking a message, and a paced file sink standing in for the sound card.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::paths::ClientPaths;
use crate::voice::{self, Audio, Sink, SpeakerKind, TranscriberKind, VoiceConfig, VoiceError};

/// The speech API key when a configured provider needs it (a blocking keyring lookup).
async fn key_if_needed(paths: &ClientPaths, cfg: &VoiceConfig, needed: bool) -> Option<String> {
    if !needed {
        return None;
    }
    let (paths, url) = (paths.clone(), cfg.openai.base_url.clone());
    tokio::task::spawn_blocking(move || voice::config::api_key(&paths, &url))
        .await
        .ok()
        .flatten()
}

/// Transcribes a recording with the configured provider. On any failure the recording is
/// kept in `$SAM_HOME/recordings` and the message says where.
pub(super) async fn transcribe(paths: &ClientPaths, audio: &Audio) -> Result<String, String> {
    if audio.samples.is_empty() {
        return Err("nothing was recorded".into());
    }
    let kept_dir = VoiceConfig::kept_dir(paths);
    let keep_with = |e: String| match voice::keep(audio, &kept_dir) {
        Ok(p) => format!("{e} (the recording is kept in {})", p.display()),
        Err(k) => format!("{e} (and the recording could not be kept: {k})"),
    };
    let cfg = VoiceConfig::load(paths).map_err(|e| keep_with(e.to_string()))?;
    let key = key_if_needed(paths, &cfg, cfg.transcriber == TranscriberKind::Openai).await;
    let t = cfg.transcriber(key).map_err(|e| keep_with(e.to_string()))?;
    let text = voice::transcribe_keeping(t.as_ref(), audio, &kept_dir)
        .await
        .map_err(|e| e.to_string())?;
    if text.trim().is_empty() {
        return Err(keep_with(format!(
            "heard no words in {:.1} s of audio",
            audio.duration_secs()
        )));
    }
    Ok(text)
}

/// Speech for a Markdown message with the configured speaker.
pub(super) async fn speak(paths: &ClientPaths, markdown: &str) -> Result<Audio> {
    let text = voice::speakable(markdown);
    if text.trim().is_empty() {
        bail!("the message has nothing to read aloud");
    }
    let cfg = VoiceConfig::load(paths)?;
    let key = key_if_needed(paths, &cfg, cfg.speaker == SpeakerKind::Openai).await;
    let speaker = cfg.speaker(key)?;
    Ok(voice::speak_long(speaker.as_ref(), &text).await?)
}

/// A sink that takes as long as the sound would (a file standing in for the sound card:
/// the player bar shows real progress, pause and skip behave as with speakers).
pub(super) struct Paced<S> {
    inner: S,
    start: Option<Instant>,
    written: u64,
}

impl<S: Sink> Paced<S> {
    pub(super) fn new(inner: S) -> Self {
        Self {
            inner,
            start: None,
            written: 0,
        }
    }
}

impl<S: Sink> Sink for Paced<S> {
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }

    fn write(&mut self, samples: &[f32]) -> Result<(), VoiceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        self.inner.write(samples)?;
        self.written += samples.len() as u64;
        let due = Duration::from_secs_f64(self.written as f64 / self.sample_rate().max(1) as f64);
        // Keep ~60 ms ahead, like a sound card's buffer.
        if let Some(wait) = (start + due).checked_duration_since(Instant::now())
            && wait > Duration::from_millis(60)
        {
            std::thread::sleep(wait - Duration::from_millis(60));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), VoiceError> {
        self.start = None;
        self.written = 0;
        self.inner.flush()
    }
}
