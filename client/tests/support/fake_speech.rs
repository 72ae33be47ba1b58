//! A fake OpenAI-compatible speech server on 127.0.0.1 that checks what it receives the
//! way the real API would (used by the voice and GUI voice tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use sam_client::voice::Audio;

pub struct Req {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves `handler` on 127.0.0.1 and returns the base URL (`http://…/v1`).
pub fn fake_server(
    handler: impl Fn(&Req) -> (u16, &'static str, Vec<u8>) + Send + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let mut req = Req {
                path,
                headers,
                body: Vec::new(),
            };
            if let Some(len) = req.header("content-length").and_then(|v| v.parse().ok()) {
                let mut body = vec![0; len];
                reader.read_exact(&mut body).expect("body");
                req.body = body;
            } else if req.header("transfer-encoding") == Some("chunked") {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).expect("chunk size");
                    let n = usize::from_str_radix(size.trim(), 16).expect("hex");
                    let mut chunk = vec![0; n + 2];
                    reader.read_exact(&mut chunk).expect("chunk");
                    if n == 0 {
                        break;
                    }
                    req.body.extend_from_slice(&chunk[..n]);
                }
            }
            let (status, ctype, body) = handler(&req);
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/v1")
}

/// One part of a multipart/form-data body: (name, filename, content type, data).
pub type Part = (String, Option<String>, Option<String>, Vec<u8>);

pub fn multipart(req: &Req) -> Vec<Part> {
    let ctype = req.header("content-type").expect("content-type");
    assert!(ctype.starts_with("multipart/form-data"), "{ctype}");
    let boundary = ctype
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let body = &req.body;
    let mut parts = Vec::new();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut at = find(body, delim.as_bytes(), 0).expect("first boundary") + delim.len();
    while body[at..].starts_with(b"\r\n") {
        let head_end = find(body, b"\r\n\r\n", at).expect("part headers");
        let head = String::from_utf8_lossy(&body[at + 2..head_end]).to_string();
        let next = find(body, format!("\r\n{delim}").as_bytes(), head_end).expect("next boundary");
        let data = body[head_end + 4..next].to_vec();
        let mut name = String::new();
        let mut filename = None;
        let mut ptype = None;
        for l in head.lines() {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("content-disposition") {
                for kv in l.split(';') {
                    if let Some(v) = kv.trim().strip_prefix("name=") {
                        name = v.trim_matches('"').to_string();
                    }
                    if let Some(v) = kv.trim().strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_string());
                    }
                }
            } else if lower.starts_with("content-type") {
                ptype = l.split(':').nth(1).map(|v| v.trim().to_string());
            }
        }
        parts.push((name, filename, ptype, data));
        at = next + 2 + delim.len();
    }
    parts
}

/// Checks a transcription request the way the real API would and answers with how long
/// the audio was, so chunking is visible.
pub fn transcription_handler(req: &Req) -> (u16, &'static str, Vec<u8>) {
    if req.path != "/v1/audio/transcriptions" {
        return (
            404,
            "application/json",
            b"{\"error\":{\"message\":\"no route\"}}".to_vec(),
        );
    }
    if req.header("authorization") != Some("Bearer test-key") {
        return (
            401,
            "application/json",
            b"{\"error\":{\"message\":\"Incorrect API key\"}}".to_vec(),
        );
    }
    let parts = multipart(req);
    let field = |n: &str| {
        parts
            .iter()
            .find(|p| p.0 == n)
            .map(|p| String::from_utf8_lossy(&p.3).to_string())
    };
    assert_eq!(field("model").as_deref(), Some("whisper-test"));
    assert_eq!(field("response_format").as_deref(), Some("json"));
    let file = parts.iter().find(|p| p.0 == "file").expect("a file part");
    assert_eq!(file.1.as_deref(), Some("speech.wav"));
    assert_eq!(file.2.as_deref(), Some("audio/wav"));
    let audio = Audio::from_wav(&file.3).expect("the upload is a WAV file");
    assert_eq!(audio.sample_rate, 16_000);
    if audio.peak() < 0.01 {
        return (
            500,
            "application/json",
            b"{\"error\":{\"message\":\"model overloaded\"}}".to_vec(),
        );
    }
    let text = format!(
        "{{\"text\":\" heard {:.0} seconds \"}}",
        audio.duration_secs()
    );
    (200, "application/json", text.into_bytes())
}
