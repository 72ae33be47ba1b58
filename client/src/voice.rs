//! Voice: speak prompts and listen to answers.
//!
//! The pieces, each usable alone (the GUI and the CLI wire them together):
//!
//! - [`Audio`]: mono `f32` samples at a sample rate; WAV in and out (tolerant of the
//!   streaming WAV headers that speech servers and `espeak-ng --stdout` write), resampling,
//!   level, and [`Audio::chunks`] to split long recordings at quiet points.
//! - [`Recorder`]: captures from the default microphone (cpal) or, as a stand-in for
//!   tests and headless machines, from a WAV file, reporting the level as it records.
//! - [`Transcriber`]: speech → text. [`OpenAiTranscriber`] (`/v1/audio/transcriptions`,
//!   multipart) and [`CommandTranscriber`] (a local program such as whisper.cpp).
//!   [`transcribe_keeping`] chunks long audio and keeps the recording on disk when
//!   transcription fails so nothing said is lost.
//! - [`Speaker`]: text → speech. [`EspeakSpeaker`] (offline default) and
//!   [`OpenAiSpeaker`] (`/v1/audio/speech`, JSON).
//! - [`speakable()`]: Markdown → text worth hearing (code blocks announced, not read).
//! - [`Player`]: a queue of clips with play/pause/skip/speed on a background thread,
//!   writing to a pluggable [`Sink`]: the sound card ([`DeviceSink`]) or a WAV file
//!   ([`FileSink`]) for headless tests.
//! - [`AutoReader`]: which agent answers finished since last time ("auto-read new answers").
//! - [`VoiceConfig`]: `$SAM_HOME/voice.toml`, and the API key from the environment or
//!   the OS keyring.
//!
//! Nothing here panics without a sound card: device functions return
//! [`VoiceError::Device`] with a message that says what to do instead.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub mod audio;
pub mod autoread;
pub mod config;
pub mod device;
pub mod http;
pub mod local;
pub mod openai;
pub mod player;
pub mod recorder;
pub mod speakable;

pub use audio::Audio;
pub use autoread::AutoReader;
pub use config::{SpeakerKind, TranscriberKind, VoiceConfig};
pub use device::DeviceSink;
pub use local::{CommandTranscriber, EspeakSpeaker};
pub use openai::{OpenAiSpeaker, OpenAiTranscriber};
pub use player::{Clip, FileSink, MemorySink, Player, PlayerCore, PlayerEvent, PlayerState, Sink};
pub use recorder::{InputSource, Recorder, Recording};
pub use speakable::speakable;

/// A boxed future, so the provider traits stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What went wrong in the voice features.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    /// No usable sound card or the device refused (CI, containers, SSH sessions).
    #[error("audio device: {0}")]
    Device(String),
    /// Audio that cannot be read (not a WAV file, unsupported encoding, too long).
    #[error("audio: {0}")]
    Audio(String),
    /// The speech or transcription provider failed.
    #[error("{provider}: {message}")]
    Provider { provider: String, message: String },
    /// Bad or missing settings.
    #[error("voice settings: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Transcription failed; the recording is kept at `saved` so nothing said is lost.
    #[error("{error} (the recording is kept in {})", saved.display())]
    Kept {
        #[source]
        error: Box<VoiceError>,
        saved: PathBuf,
    },
}

impl VoiceError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn provider(provider: &str, message: impl Into<String>) -> Self {
        Self::Provider {
            provider: provider.to_string(),
            message: message.into(),
        }
    }
}

/// Speech → text.
pub trait Transcriber: Send + Sync {
    /// A short name for messages ("openai", "command").
    fn name(&self) -> &str;
    /// The longest audio one call accepts; [`transcribe_keeping`] chunks to this.
    fn max_chunk_secs(&self) -> f32 {
        600.0
    }
    /// Transcribes one chunk.
    fn transcribe<'a>(&'a self, audio: &'a Audio) -> BoxFuture<'a, Result<String, VoiceError>>;
}

/// Text → speech.
pub trait Speaker: Send + Sync {
    /// A short name for messages ("espeak-ng", "openai").
    fn name(&self) -> &str;
    /// The longest text one call accepts; [`speak_long`] splits at sentences to this.
    fn max_chars(&self) -> usize {
        4000
    }
    /// Speaks one piece of text.
    fn speak<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<Audio, VoiceError>>;
}

/// Transcribes audio of any length: chunked at quiet points to the provider's limit, the
/// pieces joined with spaces. On failure the audio is written to `keep_dir` and the error
/// says where ([`VoiceError::Kept`]).
pub async fn transcribe_keeping(
    transcriber: &dyn Transcriber,
    audio: &Audio,
    keep_dir: &std::path::Path,
) -> Result<String, VoiceError> {
    match transcribe_long(transcriber, audio).await {
        Ok(t) => Ok(t),
        Err(error) => match keep(audio, keep_dir) {
            Ok(saved) => Err(VoiceError::Kept {
                error: Box::new(error),
                saved,
            }),
            Err(e) => {
                tracing::warn!("could not keep the recording: {e}");
                Err(error)
            }
        },
    }
}

/// Transcribes audio of any length, chunked to the provider's limit.
pub async fn transcribe_long(
    transcriber: &dyn Transcriber,
    audio: &Audio,
) -> Result<String, VoiceError> {
    let mut parts = Vec::new();
    for chunk in audio.chunks(transcriber.max_chunk_secs()) {
        let text = transcriber.transcribe(&chunk).await?;
        let text = text.trim();
        if !text.is_empty() {
            parts.push(text.to_string());
        }
    }
    Ok(parts.join(" "))
}

/// Writes a recording to `dir/recording-<secs>-<n>.wav` and returns the path.
pub fn keep(audio: &Audio, dir: &std::path::Path) -> Result<PathBuf, VoiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| VoiceError::io(format!("create {}", dir.display()), e))?;
    let stamp = crate::now_secs();
    for n in 0..1000 {
        let p = dir.join(format!("recording-{stamp}-{n}.wav"));
        if !p.exists() {
            audio.write_wav(&p)?;
            return Ok(p);
        }
    }
    Err(VoiceError::Config(format!(
        "too many recordings in {}",
        dir.display()
    )))
}

/// Speaks text of any length: split at sentence ends to the provider's limit, the pieces
/// joined into one clip.
pub async fn speak_long(speaker: &dyn Speaker, text: &str) -> Result<Audio, VoiceError> {
    let mut out: Option<Audio> = None;
    for piece in speakable::split_sentences(text, speaker.max_chars()) {
        let a = speaker.speak(&piece).await?;
        match &mut out {
            None => out = Some(a),
            Some(o) => o.append(&a),
        }
    }
    out.ok_or_else(|| VoiceError::Audio("nothing to say: the text is empty".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Reports each chunk's length; fails on a chunk that is all silence.
    struct Counting(Mutex<Vec<f32>>);

    impl Transcriber for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn max_chunk_secs(&self) -> f32 {
            4.0
        }
        fn transcribe<'a>(&'a self, a: &'a Audio) -> BoxFuture<'a, Result<String, VoiceError>> {
            Box::pin(async move {
                self.0.lock().expect("lock").push(a.duration_secs());
                if a.peak() == 0.0 {
                    return Err(VoiceError::provider("counting", "silence"));
                }
                Ok(format!(" part{} ", self.0.lock().expect("lock").len()))
            })
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn long_recordings_are_chunked_and_kept_on_failure() {
        let t = Counting(Mutex::new(Vec::new()));
        let audio = Audio::new(vec![0.1; 8000 * 10], 8000);
        let text = block_on(transcribe_long(&t, &audio)).expect("ok");
        assert_eq!(text, "part1 part2 part3");
        let lens = t.0.lock().expect("lock").clone();
        assert!(lens.iter().all(|l| *l <= 4.0), "{lens:?}");
        assert!((lens.iter().sum::<f32>() - 10.0).abs() < 0.01);

        let dir = std::env::temp_dir().join(format!("sam-voice-keep-{}", std::process::id()));
        let mut with_gap = Audio::new(vec![0.1; 8000 * 3], 8000);
        with_gap.append(&Audio::silence(4.0, 8000));
        let e = block_on(transcribe_keeping(&t, &with_gap, &dir)).expect_err("fails");
        let VoiceError::Kept { saved, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            Audio::read_wav(saved).expect("kept").samples.len(),
            with_gap.samples.len()
        );
        assert!(e.to_string().contains("the recording is kept in"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
