use super::*;

fn script() -> Script {
    Script {
        text: Some("plain answer".into()),
        rules: vec![Rule {
            when: "make a file".into(),
            text: None,
            write: Some(WriteFile {
                path: "/w/a.txt".into(),
                content: "one\ntwo\n".into(),
            }),
            after: Some("wrote it".into()),
        }],
    }
}

#[test]
fn steps_follow_the_script() {
    let s = script();
    assert!(matches!(s.step("hello", false), Step::Text(t) if t == "plain answer"));
    assert!(
        matches!(s.step("please make a file", false), Step::Tool(None, w) if w.path == "/w/a.txt")
    );
    assert!(matches!(s.step("please make a file", true), Step::AfterTool(t) if t == "wrote it"));
    assert!(matches!(Script::default().step("x", false), Step::Text(t) if t.contains("fake LLM")));
}

#[test]
fn chunks_cover_the_text() {
    for t in ["", "a", "a b", "one two three four five"] {
        assert_eq!(chunks(t).concat(), t);
    }
    assert!(chunks("one two three four five").len() > 1);
}

#[tokio::test]
async fn answers_and_records_each_api() {
    let llm = FakeLlm::start(script()).await.expect("start");
    let client = tokio::net::TcpStream::connect(llm.addr())
        .await
        .expect("connect");
    drop(client);
    let post = |path: &'static str, body: serde_json::Value| {
        let addr = llm.addr();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let body = body.to_string();
            let req = format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: planted-key\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
    };
    let a = post(
        "/v1/messages?beta=true",
        serde_json::json!({"stream": true, "tools": [{"name": "Write", "input_schema": {"properties": {"file_path": {}, "content": {}}}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "make a file"}]}]}),
    )
    .await;
    assert!(a.contains("\"tool_use\"") && a.contains("file_path"), "{a}");
    let r = post(
        "/v1/responses",
        serde_json::json!({"tools": [{"type": "custom", "name": "apply_patch"}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "make a file"}]}]}),
    )
    .await;
    assert!(
        r.contains("custom_tool_call") && r.contains("*** Add File: /w/a.txt"),
        "{r}"
    );
    let g = post(
        "/v1beta/models/m:streamGenerateContent?alt=sse",
        serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "make a file"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "write_file"}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "write_file"}}]}]}),
    )
    .await;
    assert!(g.contains("wrote") && g.contains("STOP"), "{g}");
    let c = post(
        "/v1/chat/completions",
        serde_json::json!({"stream": true, "tools": [{"type": "function", "function": {"name": "write_file",
            "parameters": {"properties": {"path": {}, "content": {}, "overwrite": {"type": "boolean"}}, "required": ["path", "content", "overwrite"]}}}],
            "messages": [{"role": "user", "content": "make a file"}]}),
    )
    .await;
    assert!(
        c.contains("tool_calls") && c.contains("overwrite") && c.contains("[DONE]"),
        "{c}"
    );
    let classify = post(
        "/v1beta/models/m:generateContent",
        serde_json::json!({"contents": [], "generationConfig": {"responseJsonSchema": {"type": "object",
            "properties": {"reasoning": {"type": "string"}, "model_choice": {"type": "string", "enum": ["flash", "pro"]}}}}}),
    )
    .await;
    assert!(classify.contains("flash"), "{classify}");
    assert!(
        post("/nope", serde_json::json!({}))
            .await
            .starts_with("HTTP/1.1 404")
    );

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[0].api, Some(Api::Anthropic));
    assert_eq!(reqs[0].answer, "tool");
    assert!(reqs[0].has_header_value("planted-key"));
    assert_eq!(reqs[2].answer, "after-tool");
    assert_eq!(reqs[4].answer, "aux");
    assert_eq!(reqs[5].answer, "not-found");
}
