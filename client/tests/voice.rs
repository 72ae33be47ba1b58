//! Voice: espeak-ng producing real audio (measured with sox), the OpenAI-compatible
//! providers against a local fake that checks what it receives, the command transcriber,
//! the player on a file sink, and the `sam say` / `sam prompt --audio` commands.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use sam_client::ClientPaths;
use sam_client::docs::Replicas;
use sam_client::voice::{
    self, Audio, Clip, CommandTranscriber, EspeakSpeaker, FileSink, OpenAiSpeaker,
    OpenAiTranscriber, Player, PlayerEvent, Speaker, Transcriber, VoiceError,
};
use sam_crdt::{Conversation, NewConversation, Role, Status};

/// `sox FILE -n stat` → (seconds, RMS amplitude, maximum amplitude).
fn sox_stat(path: &Path) -> (f32, f32, f32) {
    let out = Command::new("sox")
        .arg(path)
        .args(["-n", "stat"])
        .output()
        .expect("run sox (apt install sox)");
    assert!(out.status.success(), "sox failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> f32 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in sox output:\n{text}"))
    };
    (
        field("Length (seconds)"),
        field("RMS     amplitude"),
        field("Maximum amplitude"),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const SENTENCE: &str = "The tests passed, and the branch is ready for review.";

#[test]
fn espeak_speaks_real_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = rt()
        .block_on(EspeakSpeaker::default().speak(SENTENCE))
        .expect("espeak-ng (apt install espeak-ng)");
    let path = dir.path().join("speech.wav");
    audio.write_wav(&path).expect("write");
    let (secs, rms, max) = sox_stat(&path);
    // Ten words at 175 words per minute: a few seconds, clearly audible.
    assert!((1.5..8.0).contains(&secs), "duration {secs}");
    assert!(rms > 0.02, "rms {rms}");
    assert!(max > 0.2, "max {max}");
    assert!((audio.duration_secs() - secs).abs() < 0.05);
}

#[test]
fn player_plays_a_queue_into_a_file_at_speed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let speech = rt
        .block_on(EspeakSpeaker::default().speak(SENTENCE))
        .expect("espeak-ng");
    let tone = Audio::new(
        (0..16_000).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect(),
        16_000,
    ); // 1 s at 16 kHz
    let out = dir.path().join("played.wav");
    let sink = FileSink::create(&out, 22_050).expect("sink");
    let (tx, rx) = mpsc::channel();
    let player = Player::spawn(Box::new(sink), move |e| {
        let _ = tx.send(e);
    })
    .expect("player");
    player.pause();
    player.set_speed(2.0);
    player.enqueue(Clip {
        id: "speech".into(),
        label: "speech".into(),
        audio: speech.clone(),
    });
    player.enqueue(Clip {
        id: "skipped".into(),
        label: "skipped".into(),
        audio: Audio::silence(30.0, 8000),
    });
    player.enqueue(Clip {
        id: "tone".into(),
        label: "tone".into(),
        audio: tone,
    });
    // Paused: the queue is there, nothing plays.
    let mut last_state = None;
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
        if let PlayerEvent::State(s) = e {
            last_state = Some(s);
        }
    }
    let s = last_state.expect("a state");
    assert!(s.paused);
    assert_eq!(s.queue.len(), 3);
    assert_eq!(s.speed, 2.0);
    player.resume();
    let mut seen = Vec::new();
    loop {
        match rx
            .recv_timeout(Duration::from_secs(30))
            .expect("player event")
        {
            PlayerEvent::Started(id) => {
                if id == "skipped" {
                    player.skip();
                }
                seen.push(format!("start {id}"));
            }
            PlayerEvent::Skipped(id) => seen.push(format!("skip {id}")),
            PlayerEvent::Finished(id) => seen.push(format!("end {id}")),
            PlayerEvent::Idle => break,
            PlayerEvent::Error(e) => panic!("{e}"),
            PlayerEvent::State(_) => {}
        }
    }
    drop(player);
    assert_eq!(
        seen,
        [
            "start speech",
            "end speech",
            "start skipped",
            "skip skipped",
            "start tone",
            "end tone"
        ]
    );
    let (secs, rms, _) = sox_stat(&out);
    // Speech and the tone at double speed, plus however much of the 30 s skipped clip
    // was written before the skip reached the player thread (a race with the test's
    // event loop, so only bounded: it must have been cut short).
    let expected = (speech.duration_secs() + 1.0) / 2.0;
    let skipped_whole = 30.0 / 2.0;
    assert!(
        secs >= expected - 0.05 && secs < expected + skipped_whole - 0.5,
        "{secs} vs {expected} (+ at most part of the skipped clip)"
    );
    assert!(rms > 0.02, "rms {rms}");
}

// A fake OpenAI-compatible server on 127.0.0.1 (shared with the GUI voice test).
use crate::support::fake_speech;
use fake_speech::{fake_server, transcription_handler};

fn tone(secs: f32, rate: u32) -> Audio {
    Audio::new(
        (0..(secs * rate as f32) as usize)
            .map(|i| 0.4 * (i as f32 * 0.07).sin())
            .collect(),
        rate,
    )
}

#[test]
fn openai_transcriber_uploads_multipart_and_reports_errors() {
    let base = fake_server(transcription_handler);
    let rt = rt();
    let t = OpenAiTranscriber::new(&base, Some("test-key".into()), "whisper-test").expect("client");
    let text = rt
        .block_on(t.transcribe(&tone(2.0, 44_100)))
        .expect("transcribe");
    assert_eq!(text.trim(), "heard 2 seconds");

    // Provider errors carry the server's message and a hint.
    let bad = OpenAiTranscriber::new(&base, Some("wrong".into()), "whisper-test").expect("client");
    let e = rt
        .block_on(bad.transcribe(&tone(1.0, 16_000)))
        .expect_err("401");
    assert!(
        e.to_string().contains("Incorrect API key") && e.to_string().contains("API key"),
        "{e}"
    );

    // A failure keeps the recording.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = rt
        .block_on(voice::transcribe_keeping(
            &t,
            &Audio::silence(1.0, 16_000),
            dir.path(),
        ))
        .expect_err("500");
    match e {
        VoiceError::Kept { error, saved } => {
            assert!(error.to_string().contains("model overloaded"), "{error}");
            let kept = Audio::read_wav(&saved).expect("kept audio");
            assert_eq!(kept.samples.len(), 16_000);
        }
        other => panic!("expected the audio kept: {other}"),
    }

    // Nobody listening: a clear error.
    let gone = OpenAiTranscriber::new("http://127.0.0.1:9/v1", None, "m").expect("client");
    let e = rt
        .block_on(gone.transcribe(&tone(0.5, 16_000)))
        .expect_err("refused");
    assert!(
        e.to_string().contains("cannot reach http://127.0.0.1:9/v1"),
        "{e}"
    );
}

#[test]
fn openai_speaker_posts_json_and_reads_streamed_wav() {
    let base = fake_server(|req| {
        assert_eq!(req.path, "/v1/audio/speech");
        assert_eq!(req.header("authorization"), Some("Bearer test-key"));
        assert!(
            req.header("content-type")
                .unwrap_or("")
                .starts_with("application/json")
        );
        let v: serde_json::Value = serde_json::from_slice(&req.body).expect("json body");
        assert_eq!(v["model"], "tts-test");
        assert_eq!(v["voice"], "nova");
        assert_eq!(v["response_format"], "wav");
        assert_eq!(v["input"], "Hello there.");
        // Like the real API: a streamed WAV whose sizes say 0xFFFFFFFF.
        let mut wav = tone(1.5, 24_000).to_wav();
        wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        (200, "audio/wav", wav)
    });
    let s = OpenAiSpeaker::new(&base, Some("test-key".into()), "tts-test", "nova").expect("client");
    let audio = rt().block_on(s.speak("Hello there.")).expect("speak");
    assert_eq!(audio.sample_rate, 24_000);
    assert!((audio.duration_secs() - 1.5).abs() < 0.01);
    assert!(audio.rms() > 0.2);
}

#[test]
fn command_transcriber_runs_a_local_program() {
    let rt = rt();
    // A stand-in for whisper-cli: checks it got a 16 kHz WAV and prints its length.
    let stdout = CommandTranscriber {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "test \"$(soxi -r \"$1\")\" = 16000 || exit 3; echo \"  from $2:\"; echo \"$(soxi -D \"$1\") s\"".into(),
            "sh".into(),
            "{input}".into(),
            "{model}".into(),
        ],
        model: Some("/models/fake.bin".into()),
    };
    let text = rt
        .block_on(stdout.transcribe(&tone(3.0, 48_000)))
        .expect("transcribe");
    assert_eq!(text, "from /models/fake.bin: 3.000000 s");

    // whisper.cpp's -otxt style: the transcript in {output}.txt wins over stdout.
    let file = CommandTranscriber {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "echo noise; printf 'written to a file' > \"$1.txt\"".into(),
            "sh".into(),
            "{output}".into(),
        ],
        model: None,
    };
    assert_eq!(
        rt.block_on(file.transcribe(&tone(1.0, 16_000)))
            .expect("transcribe"),
        "written to a file"
    );

    // Failures say what failed.
    let failing = CommandTranscriber {
        program: "sh".into(),
        args: vec!["-c".into(), "echo 'model not found' >&2; exit 2".into()],
        model: None,
    };
    let e = rt
        .block_on(failing.transcribe(&tone(1.0, 16_000)))
        .expect_err("fails");
    assert!(e.to_string().contains("model not found"), "{e}");
    let missing = CommandTranscriber::whisper_cpp("/nonexistent/whisper-cli", "m.bin");
    let e = rt
        .block_on(missing.transcribe(&tone(1.0, 16_000)))
        .expect_err("missing");
    assert!(e.to_string().contains("not found"), "{e}");
}

// ---------------------------------------------------------------------------------------
// The CLI.

fn sam(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sam"))
        .args(args)
        .env("SAM_HOME", home)
        .env("SAM_NO_KEYRING", "1")
        .env("SAM_VOICE_API_KEY", "test-key")
        .output()
        .expect("run sam")
}

/// A local replica of a conversation on an unknown node with one agent answer.
fn conversation(home: &Path, answer: &str) -> (String, String) {
    let paths = ClientPaths::new(home.to_path_buf());
    let id = "0123abcd-0000-4000-8000-00000000c0de".to_string();
    let node = "ab".repeat(32);
    let mut conv = Conversation::create(
        NewConversation {
            id: id.clone(),
            title: "voice".into(),
            agent: "custom".into(),
            workspace_node: node.clone(),
            workspace_id: "w1".into(),
            created_at: 1,
        },
        &node,
    )
    .expect("create");
    let msg = conv.start_message(&node, Role::Agent).expect("start");
    conv.append_chunk(&msg, answer).expect("chunk");
    conv.set_status(&msg, Status::Done, None).expect("done");
    let mut replicas = Replicas::open(&paths).expect("replicas");
    replicas.save(&mut conv).expect("save");
    (id, msg.to_string())
}

#[test]
fn sam_say_writes_the_answer_as_speech() {
    let home = tempfile::tempdir().expect("tempdir");
    let answer = "I fixed the **bug**.\n\n```rust\nfn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n```\n\nRun `cargo test` to check.";
    let (conv, msg) = conversation(home.path(), answer);
    let out_path = home.path().join("answer.wav");
    let out = sam(
        home.path(),
        &[
            "--json",
            "say",
            &conv[..8],
            "--out",
            out_path.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["message"], msg.as_str());
    let (secs, rms, _) = sox_stat(&out_path);
    // "I fixed the bug. A rust code block, 4 lines, not read aloud. Run cargo test to
    // check." — some seconds, not the minute that reading the code would take.
    assert!((3.0..12.0).contains(&secs), "duration {secs}");
    assert!(rms > 0.02, "rms {rms}");

    // By message id, and a clear error for an unknown one.
    let out = sam(
        home.path(),
        &[
            "say",
            &conv,
            &msg[..6],
            "--out",
            out_path.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sam(home.path(), &["say", &conv, "zzzz", "--out", "x.wav"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message \"zzzz\""));

    // Without --out it plays on the sound card, or, with none (CI), says what to do.
    let out = sam(home.path(), &["say", &conv]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if !out.status.success() {
        assert!(err.contains("--out FILE.wav"), "{err}");
    }
}

#[test]
fn sam_prompt_audio_transcribes_and_sends() {
    let home = tempfile::tempdir().expect("tempdir");
    let (conv, _) = conversation(home.path(), "Hello.");
    let base = fake_server(transcription_handler);
    std::fs::write(
        home.path().join("voice.toml"),
        format!("[openai]\nbase_url = \"{base}\"\ntranscription_model = \"whisper-test\"\n"),
    )
    .expect("voice.toml");
    let wav = home.path().join("prompt.wav");
    tone(3.0, 22_050).write_wav(&wav).expect("wav");
    let out = sam(
        home.path(),
        &[
            "--json",
            "prompt",
            &conv,
            "--audio",
            wav.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["transcript"], "heard 3 seconds");
    // The node is unknown here: the prompt waits in the local replica.
    assert_eq!(v["sent"], false);
    let paths = ClientPaths::new(home.path().to_path_buf());
    let mut replicas = Replicas::open(&paths).expect("replicas");
    let doc = replicas.load(&conv).expect("load");
    let last = doc.messages().pop().expect("a message");
    assert_eq!(last.role, Role::User);
    assert_eq!(last.text, "heard 3 seconds");

    // A failed transcription sends nothing and says the file is untouched.
    let silent = home.path().join("silent.wav");
    Audio::silence(1.0, 16_000).write_wav(&silent).expect("wav");
    let out = sam(
        home.path(),
        &["prompt", &conv, "--audio", silent.to_str().expect("utf8")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model overloaded") && err.contains("nothing was sent"),
        "{err}"
    );
    let count = replicas.load(&conv).expect("load").messages().len();
    assert_eq!(count, 2);
}

/// The whole loop without a GUI, a sound card or a cloud account: record (a WAV file of
/// real speech as the microphone), watch the level, transcribe with a local command, send
/// the prompt, then read the answer aloud with espeak-ng into the player.
#[test]
fn offline_record_transcribe_send_and_read_back() {
    let home = tempfile::tempdir().expect("tempdir");
    let (conv, _) = conversation(
        home.path(),
        "Done. The `main` function now **returns** early:\n\n```\nreturn;\n```",
    );
    let rt = rt();
    let spoken = rt
        .block_on(EspeakSpeaker::default().speak("Please add a test for the parser."))
        .expect("espeak-ng");
    let mic = home.path().join("mic.wav");
    let mut said = Audio::silence(0.3, spoken.sample_rate);
    said.append(&spoken);
    said.write_wav(&mic).expect("wav");

    let levels = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = levels.clone();
    let rec = voice::Recorder::new(voice::InputSource::WavFile {
        path: mic,
        realtime: false,
    })
    .start(move |l| l2.lock().expect("lock").push(l))
    .expect("record");
    while !rec.source_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let recorded = rec.stop();
    let levels = levels.lock().expect("lock").clone();
    assert!(levels.iter().take(5).all(|l| *l < 0.01), "{levels:?}");
    assert!(levels.iter().any(|l| *l > 0.05), "{levels:?}");

    // whisper.cpp stand-in: prints the words only when it got the recording's length.
    let expect_secs = format!("{:.1}", recorded.duration_secs());
    let t = CommandTranscriber {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "d=$(soxi -D \"$1\"); case $d in {expect_secs}*) echo ' Please add a test for the parser. ';; *) echo \"got $d\" >&2; exit 1;; esac"
            ),
            "sh".into(),
            "{input}".into(),
        ],
        model: None,
    };
    let kept = home.path().join("kept");
    let text = rt
        .block_on(voice::transcribe_keeping(&t, &recorded, &kept))
        .expect("transcribe");
    assert_eq!(text, "Please add a test for the parser.");
    assert!(!kept.exists(), "nothing kept on success");

    let paths = ClientPaths::new(home.path().to_path_buf());
    let out = rt
        .block_on(sam_client::cli::convs::prompt(&paths, &conv, &text))
        .expect("send");
    assert_eq!(out.json["sent"], false, "no node here: queued");
    let mut replicas = Replicas::open(&paths).expect("replicas");
    let msgs = replicas.load(&conv).expect("load").messages();
    assert_eq!(msgs.last().map(|m| m.text.as_str()), Some(text.as_str()));

    // Read the agent's answer aloud.
    let answer = msgs.iter().find(|m| m.role == Role::Agent).expect("answer");
    let speech = rt
        .block_on(voice::speak_long(
            &EspeakSpeaker::default(),
            &voice::speakable(&answer.text),
        ))
        .expect("speak");
    let played = home.path().join("played.wav");
    let (tx, rx) = mpsc::channel();
    let player = Player::spawn(
        Box::new(FileSink::create(&played, 48_000).expect("sink")),
        move |e| {
            let _ = tx.send(e);
        },
    )
    .expect("player");
    player.enqueue(Clip {
        id: answer.id.to_string(),
        label: "answer".into(),
        audio: speech.clone(),
    });
    while rx.recv_timeout(Duration::from_secs(30)).expect("event") != PlayerEvent::Idle {}
    drop(player);
    let (secs, rms, _) = sox_stat(&played);
    assert!((secs - speech.duration_secs()).abs() < 0.05, "{secs}");
    assert!(rms > 0.02, "{rms}");
}
