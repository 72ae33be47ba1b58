//! Offline providers: `espeak-ng` for speech and any local program (e.g. whisper.cpp's
//! `whisper-cli`) for transcription.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Audio, BoxFuture, Speaker, Transcriber, VoiceError};

/// The most output read from a local program.
const MAX_OUTPUT: usize = 96 << 20;

/// Text → speech with `espeak-ng --stdout` (the offline default).
#[derive(Debug, Clone)]
pub struct EspeakSpeaker {
    /// The program, `espeak-ng` on `PATH` by default.
    pub program: PathBuf,
    /// An espeak voice, e.g. `en`, `en-us`, `de`.
    pub voice: String,
    /// Words per minute (espeak's default is 175).
    pub wpm: u32,
}

impl Default for EspeakSpeaker {
    fn default() -> Self {
        Self {
            program: "espeak-ng".into(),
            voice: "en".into(),
            wpm: 175,
        }
    }
}

impl Speaker for EspeakSpeaker {
    fn name(&self) -> &str {
        "espeak-ng"
    }

    fn max_chars(&self) -> usize {
        100_000
    }

    fn speak<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<Audio, VoiceError>> {
        Box::pin(async move {
            let name = self.name();
            let mut cmd = tokio::process::Command::new(&self.program);
            cmd.arg("--stdout")
                .arg("-v")
                .arg(&self.voice)
                .arg("-s")
                .arg(self.wpm.clamp(80, 500).to_string());
            let out = run(name, cmd, Some(text.as_bytes().to_vec()), Duration::from_secs(300))
                .await
                .map_err(|e| match e {
                    RunError::NotFound => VoiceError::provider(
                        name,
                        format!(
                            "{} not found: install espeak-ng (`apt install espeak-ng`) or set the speaker in voice.toml",
                            self.program.display()
                        ),
                    ),
                    RunError::Other(e) => e,
                })?;
            Audio::from_wav(&out).map_err(|e| VoiceError::provider(name, e.to_string()))
        })
    }
}

/// Speech → text with a local program. `args` may hold `{input}` (a 16 kHz mono WAV
/// file), `{output}` (a path without extension: when `{output}.txt` exists afterwards it
/// is the transcript, else stdout is) and `{model}`.
#[derive(Debug, Clone)]
pub struct CommandTranscriber {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub model: Option<PathBuf>,
}

impl CommandTranscriber {
    /// whisper.cpp's `whisper-cli -m MODEL -f INPUT -nt -np` (no timestamps, no logs).
    pub fn whisper_cpp(program: impl Into<PathBuf>, model: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: ["-m", "{model}", "-f", "{input}", "-nt", "-np"]
                .map(String::from)
                .to_vec(),
            model: Some(model.into()),
        }
    }
}

impl Transcriber for CommandTranscriber {
    fn name(&self) -> &str {
        "transcription command"
    }

    fn max_chunk_secs(&self) -> f32 {
        300.0
    }

    fn transcribe<'a>(&'a self, audio: &'a Audio) -> BoxFuture<'a, Result<String, VoiceError>> {
        Box::pin(async move {
            let name = self.name();
            let dir = TempDir::new()?;
            let input = dir.0.join("input.wav");
            let output = dir.0.join("output");
            audio.resample(16_000).write_wav(&input)?;
            let model = self
                .model
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default();
            let mut cmd = tokio::process::Command::new(&self.program);
            for a in &self.args {
                cmd.arg(
                    a.replace("{input}", &input.display().to_string())
                        .replace("{output}", &output.display().to_string())
                        .replace("{model}", &model),
                );
            }
            let stdout = run(name, cmd, None, Duration::from_secs(1800))
                .await
                .map_err(|e| match e {
                    RunError::NotFound => VoiceError::provider(
                        name,
                        format!(
                            "{} not found: install it (e.g. whisper.cpp's whisper-cli) or fix `program` in voice.toml",
                            self.program.display()
                        ),
                    ),
                    RunError::Other(e) => e,
                })?;
            let txt = output.with_extension("txt");
            let text = match std::fs::read(&txt) {
                Ok(b) => b,
                Err(_) => stdout,
            };
            Ok(String::from_utf8_lossy(&text)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "))
        })
    }
}

enum RunError {
    NotFound,
    Other(VoiceError),
}

/// Runs a program with optional stdin, returning stdout (bounded) or an error with stderr.
async fn run(
    name: &str,
    mut cmd: tokio::process::Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>, RunError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunError::NotFound
        } else {
            RunError::Other(VoiceError::provider(name, format!("cannot start: {e}")))
        }
    })?;
    let fail = |m: String| RunError::Other(VoiceError::provider(name, m));
    let work = async {
        let write = async {
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            }
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(p) = child.stdout.take() {
                let _ = p.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(p) = child.stderr.take() {
                let _ = p.take(64 << 10).read_to_end(&mut err).await;
            }
        };
        tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("took longer than {}s", timeout.as_secs())))?;
    let status = status.map_err(|e| fail(e.to_string()))?;
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let last = err.lines().rev().take(3).collect::<Vec<_>>();
        let last: Vec<_> = last.into_iter().rev().collect();
        return Err(fail(format!("exited with {status}: {}", last.join(" / "))));
    }
    if out.len() > MAX_OUTPUT {
        return Err(fail(format!("wrote more than {MAX_OUTPUT} bytes")));
    }
    Ok(out)
}

/// A private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, VoiceError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "sam-voice-{}-{}-{}",
            std::process::id(),
            crate::now_secs(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)
            .map_err(|e| VoiceError::io(format!("create {}", p.display()), e))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
