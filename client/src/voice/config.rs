//! Voice settings in `$SAM_HOME/voice.toml`, and the speech API key.
//!
//! ```toml
//! transcriber = "openai"          # or "command"
//! speaker = "espeak"              # or "openai"
//! auto_read = false               # read new answers aloud
//! [openai]                        # any OpenAI-compatible server
//! base_url = "https://api.openai.com/v1"
//! transcription_model = "whisper-1"
//! speech_model = "tts-1"
//! voice = "alloy"
//! [command]                       # e.g. whisper.cpp, offline
//! program = "whisper-cli"
//! args = ["-m", "{model}", "-f", "{input}", "-nt", "-np"]
//! model = "/home/me/models/ggml-base.en.bin"
//! [espeak]
//! program = "espeak-ng"
//! voice = "en"
//! wpm = 175
//! ```
//!
//! The API key is `SAM_VOICE_API_KEY` from the environment, else the OS keyring entry
//! `sam` / `SAM_VOICE_API_KEY` (as the agent keys), else `$SAM_HOME/agent-keys.toml`,
//! else `OPENAI_API_KEY` when the base URL is OpenAI's. Servers on this machine need none.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::openai::OPENAI_BASE_URL;
use super::{
    CommandTranscriber, EspeakSpeaker, OpenAiSpeaker, OpenAiTranscriber, Speaker, Transcriber,
    VoiceError,
};
use crate::paths::ClientPaths;

/// The keyring entry (service `sam`) and variable holding the speech API key.
pub const API_KEY_NAME: &str = "SAM_VOICE_API_KEY";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriberKind {
    #[default]
    Openai,
    Command,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeakerKind {
    #[default]
    Espeak,
    Openai,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiConfig {
    pub base_url: String,
    pub transcription_model: String,
    pub speech_model: String,
    pub voice: String,
    pub language: Option<String>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: OPENAI_BASE_URL.into(),
            transcription_model: "whisper-1".into(),
            speech_model: "tts-1".into(),
            voice: "alloy".into(),
            language: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandConfig {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub model: Option<PathBuf>,
}

impl Default for CommandConfig {
    fn default() -> Self {
        let w = CommandTranscriber::whisper_cpp("whisper-cli", "");
        Self {
            program: w.program,
            args: w.args,
            model: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EspeakConfig {
    pub program: PathBuf,
    pub voice: String,
    pub wpm: u32,
}

impl Default for EspeakConfig {
    fn default() -> Self {
        let e = EspeakSpeaker::default();
        Self {
            program: e.program,
            voice: e.voice,
            wpm: e.wpm,
        }
    }
}

/// All voice settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VoiceConfig {
    pub transcriber: TranscriberKind,
    pub speaker: SpeakerKind,
    /// Read new agent answers aloud as they complete.
    pub auto_read: bool,
    /// Player speed, 0.5..=3.0.
    pub speed: Option<f32>,
    pub openai: OpenAiConfig,
    pub command: CommandConfig,
    pub espeak: EspeakConfig,
}

impl VoiceConfig {
    pub fn path(paths: &ClientPaths) -> PathBuf {
        paths.home.join("voice.toml")
    }

    /// Where recordings that could not be transcribed are kept.
    pub fn kept_dir(paths: &ClientPaths) -> PathBuf {
        paths.home.join("recordings")
    }

    /// Reads `voice.toml`; defaults when it does not exist.
    pub fn load(paths: &ClientPaths) -> Result<Self, VoiceError> {
        let p = Self::path(paths);
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                toml::from_str(&s).map_err(|e| VoiceError::Config(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(VoiceError::io(format!("read {}", p.display()), e)),
        }
    }

    pub fn save(&self, paths: &ClientPaths) -> Result<(), VoiceError> {
        let p = Self::path(paths);
        let s = toml::to_string_pretty(self).map_err(|e| VoiceError::Config(e.to_string()))?;
        std::fs::create_dir_all(&paths.home)
            .map_err(|e| VoiceError::io(format!("create {}", paths.home.display()), e))?;
        std::fs::write(&p, s).map_err(|e| VoiceError::io(format!("write {}", p.display()), e))
    }

    /// The configured transcriber. `api_key` from [`api_key`] (a blocking call).
    pub fn transcriber(&self, api_key: Option<String>) -> Result<Box<dyn Transcriber>, VoiceError> {
        match self.transcriber {
            TranscriberKind::Openai => {
                if api_key.is_none() && !is_local(&self.openai.base_url) {
                    return Err(VoiceError::Config(format!(
                        "no API key for {}: set {API_KEY_NAME} (environment or keyring), or transcribe offline with `transcriber = \"command\"` (whisper.cpp) in voice.toml",
                        self.openai.base_url
                    )));
                }
                let mut t = OpenAiTranscriber::new(
                    &self.openai.base_url,
                    api_key,
                    &self.openai.transcription_model,
                )?;
                t.language = self.openai.language.clone();
                Ok(Box::new(t))
            }
            TranscriberKind::Command => Ok(Box::new(CommandTranscriber {
                program: self.command.program.clone(),
                args: self.command.args.clone(),
                model: self.command.model.clone(),
            })),
        }
    }

    /// The configured speaker (espeak-ng unless set otherwise).
    pub fn speaker(&self, api_key: Option<String>) -> Result<Box<dyn Speaker>, VoiceError> {
        match self.speaker {
            SpeakerKind::Espeak => Ok(Box::new(EspeakSpeaker {
                program: self.espeak.program.clone(),
                voice: self.espeak.voice.clone(),
                wpm: self.espeak.wpm,
            })),
            SpeakerKind::Openai => {
                if api_key.is_none() && !is_local(&self.openai.base_url) {
                    return Err(VoiceError::Config(format!(
                        "no API key for {}: set {API_KEY_NAME} (environment or keyring), or use the offline `speaker = \"espeak\"`",
                        self.openai.base_url
                    )));
                }
                Ok(Box::new(OpenAiSpeaker::new(
                    &self.openai.base_url,
                    api_key,
                    &self.openai.speech_model,
                    &self.openai.voice,
                )?))
            }
        }
    }

    /// True when a provider needs the API key.
    pub fn needs_api_key(&self) -> bool {
        self.transcriber == TranscriberKind::Openai || self.speaker == SpeakerKind::Openai
    }
}

/// True for a base URL on this machine (no key needed).
fn is_local(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split(['/', ':']).next().unwrap_or("");
    matches!(host, "127.0.0.1" | "localhost") || rest.starts_with("[::1]")
}

/// The speech API key (see the module docs). Blocking (D-Bus): call it off the UI thread
/// and, in async code, in `spawn_blocking`.
pub fn api_key(paths: &ClientPaths, base_url: &str) -> Option<String> {
    if let Some(k) = std::env::var(API_KEY_NAME).ok().filter(|k| !k.is_empty()) {
        return Some(k);
    }
    if !keyring_disabled()
        && let Ok(Some(k)) = keyring::Entry::new("sam", API_KEY_NAME)
            .and_then(|e| e.get_password())
            .map(Some)
            .or_else(|e| match e {
                keyring::Error::NoEntry => Ok(None),
                e => Err(e),
            })
    {
        return Some(k);
    }
    if let Ok(s) = std::fs::read_to_string(paths.home.join("agent-keys.toml"))
        && let Ok(mut m) = toml::from_str::<BTreeMap<String, String>>(&s)
        && let Some(k) = m.remove(API_KEY_NAME)
    {
        return Some(k);
    }
    if base_url.trim_end_matches('/') == OPENAI_BASE_URL {
        return std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
    }
    None
}

fn keyring_disabled() -> bool {
    std::env::var_os("SAM_NO_KEYRING").is_some()
        || (std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && std::env::var_os("XDG_RUNTIME_DIR").is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_offline_speech_and_partial_files_parse() {
        let c = VoiceConfig::default();
        assert_eq!(c.speaker, SpeakerKind::Espeak);
        let c: VoiceConfig = toml::from_str(
            "transcriber = \"command\"\n[openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        )
        .expect("parse");
        assert_eq!(c.transcriber, TranscriberKind::Command);
        assert_eq!(c.openai.voice, "alloy");
        let back: VoiceConfig = toml::from_str(&toml::to_string(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        assert!(is_local("http://127.0.0.1:9/v1"));
        assert!(is_local("http://localhost/v1"));
        assert!(!is_local("https://api.openai.com/v1"));
        assert!(c.speaker(None).is_ok());
        let c = VoiceConfig {
            transcriber: TranscriberKind::Openai,
            ..VoiceConfig::default()
        };
        assert!(c.transcriber(None).is_err());
    }
}
