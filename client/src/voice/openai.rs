//! OpenAI-compatible speech APIs: `POST {base}/audio/transcriptions` (multipart, Whisper
//! and compatible servers) and `POST {base}/audio/speech` (JSON in, WAV out).

use std::time::Duration;

use serde_json::json;

use super::{Audio, BoxFuture, Speaker, Transcriber, VoiceError, http};

/// The default base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Upload audio at this rate (what Whisper works at; 32 kB per second as 16-bit WAV).
const UPLOAD_RATE: u32 = 16_000;
/// The largest transcription response read.
const MAX_TRANSCRIPT_BYTES: usize = 4 << 20;
/// The largest speech response read (about 30 minutes of 24 kHz 16-bit audio).
const MAX_SPEECH_BYTES: usize = 96 << 20;

fn endpoint(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// Speech → text over `/audio/transcriptions`.
pub struct OpenAiTranscriber {
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    /// ISO-639-1 language hint, e.g. "en"; `None` lets the server detect it.
    pub language: Option<String>,
    client: reqwest::Client,
}

impl OpenAiTranscriber {
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        model: impl Into<String>,
    ) -> Result<Self, VoiceError> {
        Ok(Self {
            base_url: base_url.into(),
            api_key,
            model: model.into(),
            language: None,
            client: http::client(Duration::from_secs(300))?,
        })
    }
}

impl Transcriber for OpenAiTranscriber {
    fn name(&self) -> &str {
        "transcription API"
    }

    fn max_chunk_secs(&self) -> f32 {
        // 25 MB upload limit; 10 minutes of 16 kHz 16-bit mono is 19.2 MB.
        600.0
    }

    fn transcribe<'a>(&'a self, audio: &'a Audio) -> BoxFuture<'a, Result<String, VoiceError>> {
        Box::pin(async move {
            let name = self.name();
            let url = endpoint(&self.base_url, "audio/transcriptions");
            let wav = audio.resample(UPLOAD_RATE).to_wav();
            let file = reqwest::multipart::Part::bytes(wav)
                .file_name("speech.wav")
                .mime_str("audio/wav")
                .map_err(|e| VoiceError::provider(name, e.to_string()))?;
            let mut form = reqwest::multipart::Form::new()
                .part("file", file)
                .text("model", self.model.clone())
                .text("response_format", "json");
            if let Some(lang) = &self.language {
                form = form.text("language", lang.clone());
            }
            let mut req = self.client.post(&url).multipart(form);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| http::send_error(name, &url, e))?;
            let body = http::body(name, resp, MAX_TRANSCRIPT_BYTES).await?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                VoiceError::provider(name, format!("the response is not JSON: {e}"))
            })?;
            v.get("text")
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| VoiceError::provider(name, "the response has no \"text\""))
        })
    }
}

/// Text → speech over `/audio/speech`, asking for WAV.
pub struct OpenAiSpeaker {
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub voice: String,
    /// 0.25..=4.0; 1.0 is normal.
    pub speed: f32,
    client: reqwest::Client,
}

impl OpenAiSpeaker {
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        model: impl Into<String>,
        voice: impl Into<String>,
    ) -> Result<Self, VoiceError> {
        Ok(Self {
            base_url: base_url.into(),
            api_key,
            model: model.into(),
            voice: voice.into(),
            speed: 1.0,
            client: http::client(Duration::from_secs(300))?,
        })
    }
}

impl Speaker for OpenAiSpeaker {
    fn name(&self) -> &str {
        "speech API"
    }

    fn max_chars(&self) -> usize {
        4000 // the API takes at most 4096 characters
    }

    fn speak<'a>(&'a self, text: &'a str) -> BoxFuture<'a, Result<Audio, VoiceError>> {
        Box::pin(async move {
            let name = self.name();
            let url = endpoint(&self.base_url, "audio/speech");
            let body = json!({
                "model": self.model,
                "input": text,
                "voice": self.voice,
                "response_format": "wav",
                "speed": self.speed.clamp(0.25, 4.0),
            });
            let mut req = self.client.post(&url).json(&body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| http::send_error(name, &url, e))?;
            let bytes = http::body(name, resp, MAX_SPEECH_BYTES).await?;
            Audio::from_wav(&bytes).map_err(|e| VoiceError::provider(name, e.to_string()))
        })
    }
}
