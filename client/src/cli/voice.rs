//! `sam prompt CONV --audio FILE.wav` and `sam say CONV [MESSAGE_ID] [--out FILE.wav]`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use sam_crdt::Role;
use serde_json::json;

use super::{Output, convs};
use crate::docs::Replicas;
use crate::paths::ClientPaths;
use crate::voice::{
    self, Audio, Clip, DeviceSink, Player, PlayerEvent, SpeakerKind, TranscriberKind, VoiceConfig,
    config::api_key,
};

/// The API key when a configured provider needs one (keyring lookups block: off the runtime).
async fn key_if_needed(paths: &ClientPaths, cfg: &VoiceConfig, needed: bool) -> Option<String> {
    if !needed {
        return None;
    }
    let (paths, url) = (paths.clone(), cfg.openai.base_url.clone());
    tokio::task::spawn_blocking(move || api_key(&paths, &url))
        .await
        .ok()
        .flatten()
}

/// `sam prompt CONV --audio FILE.wav [--follow]`: transcribe, then send as `sam prompt`
/// does with the text.
pub async fn prompt_audio(
    paths: &ClientPaths,
    conv: &str,
    file: &Path,
    follow: bool,
) -> Result<Output> {
    let text = transcribe_file(paths, file).await?;
    let mut out = if follow {
        eprintln!("transcript: {text}");
        super::agent::prompt_follow(paths, conv, &text).await?
    } else {
        if let Ok(doc) = Replicas::open(paths).and_then(|mut r| {
            let id = r.resolve(conv)?;
            r.load(&id)
        }) && let Err(e) = super::agent::send_credentials(paths, &doc).await
        {
            eprintln!("note: agent keys not sent: {e:#}");
        }
        convs::prompt(paths, conv, &text).await?
    };
    if let Some(o) = out.json.as_object_mut() {
        o.insert("transcript".into(), json!(text));
    }
    if !follow {
        out.text = format!("transcript: {text}\n{}", out.text);
    }
    Ok(out)
}

/// Transcribes a WAV file with the provider set in `voice.toml`.
pub async fn transcribe_file(paths: &ClientPaths, file: &Path) -> Result<String> {
    let audio = Audio::read_wav(file)?;
    if audio.samples.is_empty() {
        bail!("{} holds no audio", file.display());
    }
    let cfg = VoiceConfig::load(paths)?;
    let key = key_if_needed(paths, &cfg, cfg.transcriber == TranscriberKind::Openai).await;
    let transcriber = cfg.transcriber(key)?;
    let text = voice::transcribe_long(transcriber.as_ref(), &audio)
        .await
        .with_context(|| {
            format!(
                "transcribing {} failed; nothing was sent (the file is untouched)",
                file.display()
            )
        })?;
    if text.trim().is_empty() {
        bail!(
            "heard no words in {} ({:.1} s): nothing was sent",
            file.display(),
            audio.duration_secs()
        );
    }
    Ok(text)
}

/// `sam say CONV [MESSAGE_ID] [--out FILE.wav]`.
pub async fn say(
    paths: &ClientPaths,
    conv: &str,
    message: Option<&str>,
    out: Option<&Path>,
) -> Result<Output> {
    let mut replicas = Replicas::open(paths)?;
    let id = replicas.resolve(conv)?;
    let doc = replicas.load(&id)?;
    let msgs = doc.messages();
    let msg = match message {
        Some(m) => msgs
            .iter()
            .find(|v| v.id.as_str() == m)
            .or_else(|| msgs.iter().find(|v| v.id.as_str().starts_with(m)))
            .with_context(|| format!("no message {m:?} in conversation {id}"))?,
        None => msgs
            .iter()
            .rev()
            .find(|v| v.role == Role::Agent && !v.text.trim().is_empty())
            .with_context(|| format!("conversation {id} has no agent answer to read yet"))?,
    };
    let text = voice::speakable(&msg.text);
    if text.trim().is_empty() {
        bail!("message {} has nothing to read aloud", msg.id);
    }
    let cfg = VoiceConfig::load(paths)?;
    let key = key_if_needed(paths, &cfg, cfg.speaker == SpeakerKind::Openai).await;
    let speaker = cfg.speaker(key)?;
    let audio = voice::speak_long(speaker.as_ref(), &text).await?;
    let secs = audio.duration_secs();
    let msg_id = msg.id.to_string();
    if let Some(out) = out {
        audio.write_wav(out)?;
        return Ok(Output::new(
            json!({ "message": msg_id, "out": out, "seconds": secs }),
            format!(
                "{secs:.1} s of speech from {}\n{}",
                speaker.name(),
                out.display()
            ),
        ));
    }
    let clip = Clip {
        id: msg_id.clone(),
        label: text.chars().take(60).collect(),
        audio,
    };
    let speed = cfg.speed.unwrap_or(1.0);
    tokio::task::spawn_blocking(move || play(clip, speed))
        .await
        .context("the player thread failed")??;
    Ok(Output::new(
        json!({ "message": msg_id, "seconds": secs }),
        format!("read aloud ({secs:.1} s)\n{msg_id}"),
    ))
}

/// Plays one clip on the sound card and waits until it ends.
fn play(clip: Clip, speed: f32) -> Result<()> {
    let sink = DeviceSink::open()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let player = Player::spawn(Box::new(sink), move |e| {
        let _ = tx.send(e);
    })?;
    player.set_speed(speed);
    player.enqueue(clip);
    for e in rx.iter() {
        match e {
            PlayerEvent::Idle => break,
            PlayerEvent::Error(e) => bail!("playback failed: {e}"),
            _ => {}
        }
    }
    drop(player);
    Ok(())
}
