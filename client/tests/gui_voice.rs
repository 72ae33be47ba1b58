//! Voice in `sam gui`, driven headless with egui_kittest: a WAV file stands in for the
//! microphone, a local fake of the OpenAI transcription endpoint checks the upload, and the
//! local espeak-ng engine reads an answer aloud into a WAV file standing in for the sound
//! card. No sound card, no cloud account.

use std::path::Path;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sam_client::ClientPaths;
use sam_client::docs::Replicas;
use sam_client::gui::{GuiApp, VoiceIo};
use sam_client::voice::{Audio, InputSource};
use sam_crdt::{Conversation, NewConversation, Role, Status};

use crate::support::fake_speech;
use fake_speech::{fake_server, transcription_handler};

use crate::support::bins::start_node;

type H<'a> = Harness<'a, GuiApp>;

fn steps(h: &mut H<'_>, n: usize) {
    for _ in 0..n {
        h.step();
    }
}

/// Steps the UI until `cond` holds (panics with `what` and the voice state after 30 s).
fn wait_until(h: &mut H<'_>, what: &str, cond: impl Fn(&H<'_>) -> bool) {
    let t0 = Instant::now();
    loop {
        h.step();
        if cond(h) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let s = &h.state().state;
            panic!(
                "timed out waiting for: {what}\nvoice: {:?}\nprompt: {:?}\nnotifications: {:?}",
                s.voice, s.prompt, s.notifications
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local replica of a conversation (its node unknown here) with one finished answer.
fn conversation(home: &Path, answer: &str) -> String {
    let paths = ClientPaths::new(home.to_path_buf());
    let id = "0123abcd-0000-4000-8000-0000000a0d10".to_string();
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
    Replicas::open(&paths)
        .expect("replicas")
        .save(&mut conv)
        .expect("save");
    id
}

fn tone(secs: f32, rate: u32) -> Audio {
    Audio::new(
        (0..(secs * rate as f32) as usize)
            .map(|i| 0.4 * (i as f32 * 0.07).sin())
            .collect(),
        rate,
    )
}

/// Starts the app on `home` with `mic` as the microphone and `out` as the sound card, and
/// opens conversation `conv`.
fn app(home: &Path, mic: &Path, out: &Path, conv: &str) -> H<'static> {
    let io = VoiceIo {
        input: InputSource::WavFile {
            path: mic.to_path_buf(),
            realtime: false,
        },
        output: Some(out.to_path_buf()),
    };
    let app = GuiApp::with_voice(ClientPaths::new(home.to_path_buf()), io).expect("start");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    h.step();
    let cmd = h.state_mut().state.select(conv);
    h.state().send(cmd);
    wait_until(&mut h, "the conversation shows", |h| {
        !h.state().state.messages.is_empty()
    });
    // Let the layout settle (the first frame of a panel may size it differently).
    steps(&mut h, 3);
    h
}

fn write_settings(home: &Path, base: &str) {
    std::fs::create_dir_all(home).expect("home");
    std::fs::write(
        home.join("voice.toml"),
        format!("[openai]\nbase_url = \"{base}\"\ntranscription_model = \"whisper-test\"\n"),
    )
    .expect("voice.toml");
    // The key as a user without a keyring would keep it; the fake insists on it.
    std::fs::write(
        home.join("agent-keys.toml"),
        "SAM_VOICE_API_KEY = \"test-key\"\n",
    )
    .expect("keys");
}

#[test]
fn record_review_transcript_and_send() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let base = fake_server(transcription_handler);
    write_settings(&home, &base);
    let conv = conversation(&home, "Hello.");
    let mic = tmp.path().join("mic.wav");
    let mut said = Audio::silence(0.3, 22_050);
    said.append(&tone(2.0, 22_050));
    said.write_wav(&mic).expect("wav");
    let mut h = app(&home, &mic, &tmp.path().join("out.wav"), &conv);

    // Toggle mode: Record, watch the level meter, Stop.
    h.get_by_label("🎤 Record").click();
    wait_until(&mut h, "the recording runs and hears the tone", |h| {
        let v = &h.state().state.voice;
        v.recording && v.peak > 0.1
    });
    assert!(h.query_by_label("Recording…").is_some());
    assert!(h.query_by_label("⏹ Stop recording").is_some());
    h.get_by_label("⏹ Stop recording").click();
    // The transcript lands in the prompt box for review; nothing is sent yet.
    wait_until(&mut h, "the transcript in the prompt box", |h| {
        h.state().state.prompt == "heard 2 seconds"
    });
    assert!(!h.state().state.voice.recording);
    assert_eq!(
        h.state().state.messages.len(),
        1,
        "sent before review: {:?}",
        h.state().state.messages
    );
    // The user edits it, then sends.
    h.get_by_label("Prompt").focus();
    h.step();
    h.get_by_label("Prompt").type_text(", please");
    steps(&mut h, 2);
    h.get_by_label("Send").click();
    wait_until(&mut h, "the prompt is in the conversation", |h| {
        h.state()
            .state
            .messages
            .iter()
            .any(|m| m.role == Role::User && m.text == "heard 2 seconds, please")
    });
    assert!(h.state().state.prompt.is_empty());
    drop(h);
    let doc = Replicas::open(&ClientPaths::new(home.clone()))
        .expect("replicas")
        .load(&conv)
        .expect("load");
    let last = doc.messages().pop().expect("a message");
    assert_eq!(
        (last.role, last.status, last.text.as_str()),
        (Role::User, Status::Queued, "heard 2 seconds, please"),
        "queued locally: the node is unknown here"
    );
    assert!(!home.join("recordings").exists(), "nothing kept on success");
}

#[test]
fn push_to_talk_records_while_the_button_is_held() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let base = fake_server(transcription_handler);
    write_settings(&home, &base);
    let conv = conversation(&home, "Hello.");
    let mic = tmp.path().join("mic.wav");
    tone(3.0, 16_000).write_wav(&mic).expect("wav");
    let mut h = app(&home, &mic, &tmp.path().join("out.wav"), &conv);
    let at = h.get_by_label("Hold to talk").rect().center();
    h.hover_at(at);
    h.event(egui::Event::PointerButton {
        pos: at,
        button: egui::PointerButton::Primary,
        pressed: true,
        modifiers: egui::Modifiers::NONE,
    });
    wait_until(&mut h, "recording while held", |h| {
        let v = &h.state().state.voice;
        v.recording && v.holding && v.peak > 0.1
    });
    steps(&mut h, 3);
    assert!(
        h.state().state.voice.recording,
        "still recording while held"
    );
    h.event(egui::Event::PointerButton {
        pos: at,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: egui::Modifiers::NONE,
    });
    wait_until(&mut h, "the transcript after release", |h| {
        h.state().state.prompt == "heard 3 seconds"
    });
    assert!(!h.state().state.voice.recording && !h.state().state.voice.holding);
}

#[test]
fn failed_transcription_shows_the_error_and_keeps_the_audio() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    // The fake answers 500 "model overloaded" for silence.
    let base = fake_server(transcription_handler);
    write_settings(&home, &base);
    let conv = conversation(&home, "Hello.");
    let mic = tmp.path().join("mic.wav");
    Audio::silence(1.0, 16_000).write_wav(&mic).expect("wav");
    let mut h = app(&home, &mic, &tmp.path().join("out.wav"), &conv);
    h.get_by_label("🎤 Record").click();
    wait_until(&mut h, "recording", |h| h.state().state.voice.recording);
    h.get_by_label("⏹ Stop recording").click();
    wait_until(&mut h, "the error", |h| {
        h.state().state.voice.error.is_some()
    });
    let err = h.state().state.voice.error.clone().expect("error");
    assert!(
        err.contains("model overloaded") && err.contains("the recording is kept in"),
        "{err}"
    );
    assert!(
        h.query_by_label_contains("model overloaded").is_some(),
        "the error is on screen"
    );
    assert!(h.state().state.prompt.is_empty());
    assert!(
        h.state()
            .state
            .notifications
            .iter()
            .any(|n| n.title == "Transcription failed" && n.body.contains("model overloaded")),
        "a notification too"
    );
    let kept: Vec<_> = std::fs::read_dir(home.join("recordings"))
        .expect("recordings kept")
        .flatten()
        .collect();
    assert_eq!(kept.len(), 1);
    let audio = Audio::read_wav(&kept[0].path()).expect("kept wav");
    assert!(
        (audio.duration_secs() - 1.0).abs() < 0.05,
        "{}",
        audio.duration_secs()
    );
}

#[test]
fn play_button_reads_an_answer_aloud_into_the_player_bar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let conv = conversation(
        &home,
        "I fixed the **parser**.\n\n```rust\nfn main() {\n    let x = 1;\n}\n```\n\nRun the tests to check it works.",
    );
    let out = tmp.path().join("speakers.wav");
    let mut h = app(&home, &tmp.path().join("no-mic.wav"), &out, &conv);
    assert!(
        h.query_by_label("Read aloud").is_none(),
        "no player bar before anything is played"
    );
    h.get_by_label("▶ Read aloud").click();
    wait_until(&mut h, "the player bar plays the answer", |h| {
        h.query_by_label_contains("Playing: I fixed the parser")
            .is_some()
    });
    assert!(h.query_by_label("Read aloud").is_some(), "the bar's title");
    // Pause and resume from the bar.
    h.get_by_label("⏸ Pause").click();
    wait_until(&mut h, "paused", |h| {
        h.query_by_label_contains("Paused: I fixed the parser")
            .is_some()
    });
    h.get_by_label("▶ Play").click();
    wait_until(&mut h, "playing again", |h| {
        h.query_by_label_contains("Playing:").is_some()
    });
    // The bar stays when the conversation is left (here: for the Files panel).
    h.get_by_label("Files").click();
    steps(&mut h, 2);
    assert!(h.query_by_label("⏭ Skip").is_some());
    wait_until(&mut h, "the answer is read to the end", |h| {
        let p = &h.state().state.voice.player;
        p.current.is_none() && p.queue.is_empty() && h.state().state.voice.synth == 0
    });
    assert!(h.query_by_label("Nothing playing").is_some());
    assert_eq!(h.state().state.voice.error, None);
    drop(h);
    let played = Audio::read_wav(&out).expect("the sound card's stand-in");
    // "I fixed the parser. A rust code block … Run the tests to check it works.": seconds
    // of real speech, not the code read out.
    let secs = played.duration_secs();
    assert!((2.0..15.0).contains(&secs), "duration {secs}");
    assert!(played.rms() > 0.02, "rms {}", played.rms());
}

/// A new user sets the speech server and its key in Settings (no files edited by hand),
/// then records a prompt: the key from the Settings dialog reaches the server.
#[test]
fn voice_settings_and_key_from_the_settings_dialog() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let base = fake_server(transcription_handler);
    let conv = conversation(&home, "Hello.");
    let mic = tmp.path().join("mic.wav");
    tone(1.0, 16_000).write_wav(&mic).expect("wav");
    let mut h = app(&home, &mic, &tmp.path().join("out.wav"), &conv);
    h.get_by_label("⚙ Settings").click();
    wait_until(&mut h, "the voice settings", |h| {
        h.query_by_label("API base URL").is_some()
    });
    // Empty the two fields, then type as a user would.
    {
        let f = h.state_mut().state.voice.settings.as_mut().expect("form");
        f.base_url.clear();
        f.transcription_model.clear();
    }
    steps(&mut h, 1);
    for (label, text) in [
        ("API base URL", base.as_str()),
        ("Transcription model", "whisper-test"),
    ] {
        h.get_by_label(label).focus();
        h.step();
        h.get_by_label(label).type_text(text);
        h.step();
    }
    steps(&mut h, 1);
    h.get_by_label("Save voice settings").click();
    wait_until(
        &mut h,
        "saved",
        |h| matches!(&h.state().state.voice.settings_status, Some(Ok(s)) if s.starts_with("saved in")),
    );
    let toml = std::fs::read_to_string(home.join("voice.toml")).expect("voice.toml");
    assert!(
        toml.contains(&format!("base_url = \"{base}\""))
            && toml.contains("transcription_model = \"whisper-test\""),
        "{toml}"
    );

    // The speech key, through the same form as the agent keys.
    h.get_by_label("Variable").click();
    steps(&mut h, 2);
    h.get_by_label("SAM_VOICE_API_KEY").click();
    steps(&mut h, 2);
    assert_eq!(h.state().state.dialogs.key_name, "SAM_VOICE_API_KEY");
    h.get_by_label("Key").focus();
    h.step();
    h.get_by_label("Key").type_text("test-key");
    steps(&mut h, 1);
    h.get_by_label("Save key").click();
    wait_until(&mut h, "the key is stored", |h| {
        h.state()
            .state
            .keys
            .keys
            .iter()
            .any(|(k, set)| k == "SAM_VOICE_API_KEY" && *set)
    });
    // Close the dialog (its window's × button) and record.
    h.state_mut().state.dialogs.settings = false;
    steps(&mut h, 2);

    h.get_by_label("🎤 Record").click();
    wait_until(&mut h, "recording", |h| h.state().state.voice.recording);
    h.get_by_label("⏹ Stop recording").click();
    wait_until(&mut h, "the transcript, with the key accepted", |h| {
        h.state().state.prompt == "heard 1 seconds"
    });
}

// ---------------------------------------------------------------------------------------
// The whole story against a real node: record, review, send, and hear the answer.

fn sam(home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sam"))
        .env("SAM_HOME", home)
        .env("SAM_BIND", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run sam");
    assert!(
        out.status.success(),
        "sam {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Syncs the teammate's replica with the node once.
fn sync(
    rt: &tokio::runtime::Runtime,
    ep: &iroh::Endpoint,
    team: &ClientPaths,
    doc: &mut Conversation,
    id: &str,
) {
    let book = sam_client::NodeBook::load(&team.nodes()).expect("book");
    let ticket = book.find(None).expect("node").ticket().expect("ticket");
    rt.block_on(async {
        let mut s = sam_client::docs::open_stream(ep, &ticket, id, false)
            .await
            .expect("open doc stream");
        s.sync_once(doc, |_| Ok(()), Duration::from_secs(10))
            .await
            .expect("sync");
        s.close(None).await;
    });
}

#[test]
fn speak_a_prompt_to_a_real_node_and_hear_the_answer_read_aloud() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("me");
    let team_home = tmp.path().join("team");
    let me = ClientPaths::new(home.clone());
    let owner = me.identity().expect("identity").node_id().to_string();
    let (_node, ticket) = start_node(&tmp.path().join("node"), &owner);
    sam(&home, &["connect", &ticket, "--name", "box"]);
    let base = fake_server(transcription_handler);
    write_settings(&home, &base);
    // A teammate plays the agent (as the node's agent runner would write).
    let team = ClientPaths::new(team_home.clone());
    let team_id = team.identity().expect("identity").node_id().to_string();
    let out = sam(
        &home,
        &[
            "--json",
            "share",
            "box",
            "--role",
            "collaborator",
            "--to",
            &team_id,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    sam(
        &team_home,
        &[
            "join",
            v["ticket"].as_str().expect("ticket"),
            "--name",
            "box",
        ],
    );

    // A new conversation on the node, made in the replica and opened in the app.
    let node_id = sam_client::NodeBook::load(&me.nodes())
        .expect("book")
        .find(Some("box"))
        .expect("node")
        .id
        .clone();
    let conv = "0123abcd-0000-4000-8000-0000000e2e01".to_string();
    let mut doc = Conversation::create(
        NewConversation {
            id: conv.clone(),
            title: "spoken".into(),
            agent: "custom".into(),
            workspace_node: node_id,
            workspace_id: "w1".into(),
            created_at: 1,
        },
        &owner,
    )
    .expect("create");
    Replicas::open(&me)
        .expect("replicas")
        .save(&mut doc)
        .expect("save");
    let mic = tmp.path().join("mic.wav");
    tone(2.0, 16_000).write_wav(&mic).expect("wav");
    let speakers = tmp.path().join("speakers.wav");
    let io = VoiceIo {
        input: InputSource::WavFile {
            path: mic,
            realtime: false,
        },
        output: Some(speakers.clone()),
    };
    let app = GuiApp::with_voice(me.clone(), io).expect("start");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut GuiApp| app.ui(ui), app);
    wait_until(&mut h, "the conversation in the sidebar", |h| {
        h.query_by_label("spoken").is_some()
    });
    steps(&mut h, 2);
    h.get_by_label("spoken").click();
    wait_until(&mut h, "linked to the node", |h| h.state().state.online);
    steps(&mut h, 3);
    h.get_by_label("Auto-read new answers").click();
    steps(&mut h, 2);
    assert!(h.state().state.voice.auto_read);

    // Speak, review, send.
    h.get_by_label("🎤 Record").click();
    wait_until(&mut h, "recording", |h| h.state().state.voice.recording);
    h.get_by_label("⏹ Stop recording").click();
    wait_until(&mut h, "the transcript", |h| {
        h.state().state.prompt == "heard 2 seconds"
    });
    h.get_by_label("Send").click();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let key = team.identity().expect("identity");
    let ep = rt
        .block_on(sam_client::endpoint::bind(&key, "127.0.0.1:0".parse().ok()))
        .expect("bind");
    let mut doc = Conversation::new_replica();
    let t0 = Instant::now();
    loop {
        h.step();
        sync(&rt, &ep, &team, &mut doc, &conv);
        if doc
            .messages()
            .iter()
            .any(|m| m.role == Role::User && m.text == "heard 2 seconds")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the node never got the spoken prompt"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The answer streams in; once done it is read aloud without a click.
    let agent = doc.start_message(&team_id, Role::Agent).expect("answer");
    doc.append_chunk(&agent, "All done. The **tests** pass now.")
        .expect("chunk");
    sync(&rt, &ep, &team, &mut doc, &conv);
    doc.set_status(&agent, Status::Done, None).expect("done");
    sync(&rt, &ep, &team, &mut doc, &conv);
    wait_until(&mut h, "the answer is read aloud", |h| {
        h.query_by_label_contains("Playing: All done").is_some()
    });
    wait_until(&mut h, "to the end", |h| {
        let v = &h.state().state.voice;
        v.player.current.is_none() && v.synth == 0
    });
    drop(h);
    rt.block_on(ep.close());
    let played = Audio::read_wav(&speakers).expect("speakers");
    assert!(
        (1.0..8.0).contains(&played.duration_secs()) && played.rms() > 0.02,
        "{} s, rms {}",
        played.duration_secs(),
        played.rms()
    );
}
