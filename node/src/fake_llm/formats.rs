//! The four wire formats: reading a request (latest prompt, tool result, tool list) and
//! writing a scripted answer (SSE or JSON).

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Reply, Script, Step, WriteFile, chunks};

/// The API a request was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
    /// Gemini (`/v1beta/models/M:generateContent` and friends).
    Gemini,
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    Chat,
}

/// Routes a request and builds the scripted answer.
pub(crate) fn answer(
    method: &str,
    path: &str,
    body: &Value,
    script: &Script,
    n: u64,
) -> (Option<Api>, Reply) {
    let route = path.split('?').next().unwrap_or(path);
    if method != "POST" {
        // Claude Code probes `HEAD /` for connectivity.
        if route == "/" && matches!(method, "GET" | "HEAD") {
            return (None, json_reply(json!({}), "aux"));
        }
        return (None, not_found());
    }
    if route.ends_with("/messages/count_tokens") {
        return (
            Some(Api::Anthropic),
            json_reply(json!({ "input_tokens": 10 }), "aux"),
        );
    }
    if route.ends_with("/messages") {
        return (Some(Api::Anthropic), anthropic(body, script, n));
    }
    if route.ends_with("/responses") {
        return (Some(Api::Responses), responses(body, script, n));
    }
    if route.ends_with("/chat/completions") {
        return (Some(Api::Chat), chat(body, script, n));
    }
    if let Some((_, action)) = route.rsplit_once(':') {
        let reply = match action {
            "streamGenerateContent" => gemini(body, script, true),
            "generateContent" => gemini(body, script, false),
            "countTokens" => json_reply(json!({ "totalTokens": 10 }), "aux"),
            "embedContent" => json_reply(json!({ "embedding": { "values": [0.0] } }), "aux"),
            _ => return (None, not_found()),
        };
        return (Some(Api::Gemini), reply);
    }
    (None, not_found())
}

fn not_found() -> Reply {
    Reply {
        status: StatusCode::NOT_FOUND,
        content_type: "application/json",
        body: json!({ "error": { "message": "the fake LLM has no such route" } }).to_string(),
        kind: "not-found",
    }
}

fn json_reply(v: Value, kind: &'static str) -> Reply {
    Reply {
        status: StatusCode::OK,
        content_type: "application/json",
        body: v.to_string(),
        kind,
    }
}

fn sse_reply(body: String, kind: &'static str) -> Reply {
    Reply {
        status: StatusCode::OK,
        content_type: "text/event-stream",
        body,
        kind,
    }
}

fn kind_of(step: &Step<'_>) -> &'static str {
    match step {
        Step::Text(_) => "text",
        Step::Tool(..) => "tool",
        Step::AfterTool(_) => "after-tool",
    }
}

/// `event: NAME` + `data: JSON` (Anthropic and Responses style).
fn event(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// `data: JSON` only (Gemini and Chat Completions style).
fn data(out: &mut String, data: &str) {
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// The text of a message content that is a string or a list of `{type, text}` parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Builds the arguments of a write tool from its JSON schema: the path-like property gets
/// the path, the content-like one the content, and other required booleans `true`
/// (e.g. Vibe's `overwrite`).
fn write_args(schema: Option<&Value>, w: &WriteFile) -> Value {
    let mut args = serde_json::Map::new();
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let Some(props) = props else {
        return json!({ "file_path": w.path, "content": w.content });
    };
    for (name, prop) in props {
        let n = name.to_ascii_lowercase();
        if matches!(
            n.as_str(),
            "file_path" | "path" | "filepath" | "absolute_path" | "filename"
        ) {
            args.insert(name.clone(), json!(w.path));
        } else if matches!(n.as_str(), "content" | "contents" | "text" | "file_text") {
            args.insert(name.clone(), json!(w.content));
        }
        let _ = prop;
    }
    let required = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in required.iter().filter_map(Value::as_str) {
        if args.contains_key(r) {
            continue;
        }
        let ty = props
            .get(r)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        if ty == Some("boolean") {
            args.insert(r.to_string(), json!(true));
        }
    }
    Value::Object(args)
}

/// The first tool in `names` order that the request offers, with its schema.
fn pick_tool<'a>(
    tools: &'a [(String, Option<Value>)],
    names: &[&str],
) -> Option<&'a (String, Option<Value>)> {
    names
        .iter()
        .find_map(|n| tools.iter().find(|(t, _)| t == n))
}

// ---------------------------------------------------------------- Anthropic

fn anthropic(body: &Value, script: &Script, n: u64) -> Reply {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-fake");
    let tools: Vec<(String, Option<Value>)> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some((
                        t.get("name")?.as_str()?.to_string(),
                        t.get("input_schema").cloned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let is_tool_result = |m: &Value| {
        m.get("content").and_then(Value::as_array).is_some_and(|c| {
            c.iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        })
    };
    let after_tool = messages.last().is_some_and(|m| {
        m.get("role").and_then(Value::as_str) == Some("user") && is_tool_result(m)
    });
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user") && !is_tool_result(m))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let mut step = script.step(&prompt, after_tool);
    let write_tool = pick_tool(&tools, &["Write"]);
    if let (Step::Tool(text, _), None) = (&step, write_tool) {
        // No write tool offered (a title or side call): answer with text only.
        step = Step::Text(text.clone().unwrap_or_else(|| "OK".into()));
    }
    let kind = if tools.is_empty() && !after_tool {
        "aux"
    } else {
        kind_of(&step)
    };
    let (text, tool) = match &step {
        Step::Text(t) | Step::AfterTool(t) => (Some(t.clone()), None),
        Step::Tool(t, w) => (
            t.clone(),
            write_tool.map(|(name, schema)| (name.clone(), write_args(schema.as_ref(), w))),
        ),
    };
    let id = format!("msg_fake_{n}");
    let stop = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if !stream {
        let mut content = Vec::new();
        if let Some(t) = &text {
            content.push(json!({ "type": "text", "text": t }));
        }
        if let Some((name, input)) = &tool {
            content.push(json!({ "type": "tool_use", "id": format!("toolu_fake_{n}"), "name": name, "input": input }));
        }
        return json_reply(
            json!({ "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
                    "stop_reason": stop, "stop_sequence": null,
                    "usage": { "input_tokens": 10, "output_tokens": 10 } }),
            kind,
        );
    }
    let mut out = String::new();
    event(
        &mut out,
        "message_start",
        &json!({ "type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": { "input_tokens": 10, "output_tokens": 1 } } }),
    );
    let mut index = 0;
    if let Some(t) = &text {
        event(
            &mut out,
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index,
            "content_block": { "type": "text", "text": "" } }),
        );
        for c in chunks(t) {
            event(
                &mut out,
                "content_block_delta",
                &json!({ "type": "content_block_delta", "index": index,
                "delta": { "type": "text_delta", "text": c } }),
            );
        }
        event(
            &mut out,
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": index }),
        );
        index += 1;
    }
    if let Some((name, input)) = &tool {
        event(
            &mut out,
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index,
            "content_block": { "type": "tool_use", "id": format!("toolu_fake_{n}"), "name": name, "input": {} } }),
        );
        event(
            &mut out,
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": index,
            "delta": { "type": "input_json_delta", "partial_json": input.to_string() } }),
        );
        event(
            &mut out,
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": index }),
        );
    }
    event(
        &mut out,
        "message_delta",
        &json!({ "type": "message_delta",
        "delta": { "stop_reason": stop, "stop_sequence": null }, "usage": { "output_tokens": 10 } }),
    );
    event(&mut out, "message_stop", &json!({ "type": "message_stop" }));
    sse_reply(out, kind)
}

// ---------------------------------------------------------------- OpenAI Responses

/// An `apply_patch` patch that creates (or replaces) `w.path`.
fn add_file_patch(w: &WriteFile) -> String {
    let mut p = format!("*** Begin Patch\n*** Add File: {}\n", w.path);
    for line in w.content.lines() {
        p.push('+');
        p.push_str(line);
        p.push('\n');
    }
    p.push_str("*** End Patch\n");
    p
}

fn responses(body: &Value, script: &Script, n: u64) -> Reply {
    let input = body
        .get("input")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-fake");
    // (name, type) of each offered tool.
    let tools: Vec<(String, String)> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    let ty = t.get("type")?.as_str()?.to_string();
                    let name = t
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or(&ty)
                        .to_string();
                    Some((name, ty))
                })
                .collect()
        })
        .unwrap_or_default();
    let after_tool = input.last().is_some_and(|i| {
        i.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("_call_output"))
    });
    let prompt = input
        .iter()
        .rev()
        .find(|i| {
            i.get("role").and_then(Value::as_str) == Some("user")
                && i.get("type").and_then(Value::as_str).unwrap_or("message") == "message"
        })
        .map(|i| content_text(i.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let step = script.step(&prompt, after_tool);
    let kind = if tools.is_empty() && !after_tool {
        "aux"
    } else {
        kind_of(&step)
    };
    let (text, tool_item) = match &step {
        Step::Text(t) | Step::AfterTool(t) => (Some(t.clone()), None),
        Step::Tool(t, w) => {
            let call_id = format!("call_fake_{n}");
            let patch = add_file_patch(w);
            let item = match tools.iter().find(|(name, _)| name == "apply_patch") {
                Some((_, ty)) if ty == "custom" => Some(json!({ "type": "custom_tool_call", "id": format!("ctc_fake_{n}"),
                    "status": "completed", "call_id": call_id, "name": "apply_patch", "input": patch })),
                Some(_) => Some(json!({ "type": "function_call", "id": format!("fc_fake_{n}"), "status": "completed",
                    "call_id": call_id, "name": "apply_patch",
                    "arguments": json!({ "input": patch }).to_string() })),
                None => tools
                    .iter()
                    .find(|(name, _)| matches!(name.as_str(), "shell" | "shell_command" | "exec_command"))
                    .map(|(name, _)| {
                        let cmd = format!("cat > '{}' <<'SAM_FAKE_EOF'\n{}\nSAM_FAKE_EOF", w.path, w.content.trim_end_matches('\n'));
                        let args = if name == "shell" {
                            json!({ "command": ["bash", "-lc", cmd] })
                        } else if name == "exec_command" {
                            json!({ "cmd": cmd })
                        } else {
                            json!({ "command": cmd })
                        };
                        json!({ "type": "function_call", "id": format!("fc_fake_{n}"), "status": "completed",
                            "call_id": call_id, "name": name, "arguments": args.to_string() })
                    }),
            };
            (t.clone(), item)
        }
    };
    let resp_id = format!("resp_fake_{n}");
    let mut out = String::new();
    let mut seq = 0u64;
    let mut ev = |out: &mut String, name: &str, mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!(name));
            o.insert("sequence_number".into(), json!(seq));
        }
        seq += 1;
        event(out, name, &v);
    };
    ev(
        &mut out,
        "response.created",
        json!({ "response": { "id": resp_id, "object": "response",
        "status": "in_progress", "model": model, "output": [] } }),
    );
    let mut index = 0;
    if let Some(t) = &text {
        let item_id = format!("msg_fake_{n}");
        ev(
            &mut out,
            "response.output_item.added",
            json!({ "output_index": index, "item": {
            "type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": [] } }),
        );
        for c in chunks(t) {
            ev(
                &mut out,
                "response.output_text.delta",
                json!({ "item_id": item_id, "output_index": index,
                "content_index": 0, "delta": c }),
            );
        }
        ev(
            &mut out,
            "response.output_item.done",
            json!({ "output_index": index, "item": {
            "type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{ "type": "output_text", "text": t, "annotations": [] }] } }),
        );
        index += 1;
    }
    if let Some(item) = tool_item {
        ev(
            &mut out,
            "response.output_item.added",
            json!({ "output_index": index, "item": item }),
        );
        ev(
            &mut out,
            "response.output_item.done",
            json!({ "output_index": index, "item": item }),
        );
    }
    ev(
        &mut out,
        "response.completed",
        json!({ "response": { "id": resp_id, "object": "response",
        "status": "completed", "model": model, "output": [],
        "usage": { "input_tokens": 10, "input_tokens_details": { "cached_tokens": 0 },
                   "output_tokens": 10, "output_tokens_details": { "reasoning_tokens": 0 },
                   "total_tokens": 20 } } }),
    );
    sse_reply(out, kind)
}

// ---------------------------------------------------------------- Gemini

/// A value that satisfies a (simple) JSON schema: the first enum value, "fake" strings, …
fn fill_schema(schema: &Value) -> Value {
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return e.clone();
    }
    let ty = schema
        .get("type")
        .map(|t| match t {
            Value::Array(a) => a
                .first()
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_ascii_lowercase(),
            _ => t.as_str().unwrap_or("string").to_ascii_lowercase(),
        })
        .unwrap_or_else(|| {
            if schema.get("properties").is_some() {
                "object".into()
            } else {
                "string".into()
            }
        });
    match ty.as_str() {
        "object" => {
            let mut o = serde_json::Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    o.insert(k.clone(), fill_schema(v));
                }
            }
            Value::Object(o)
        }
        "array" => json!([]),
        "boolean" => json!(false),
        "integer" | "number" => json!(0),
        _ => json!("fake"),
    }
}

fn gemini(body: &Value, script: &Script, stream: bool) -> Reply {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gen_config = body
        .get("generationConfig")
        .or_else(|| body.get("generation_config"));
    let schema = gen_config.and_then(|g| {
        g.get("responseJsonSchema")
            .or_else(|| g.get("responseSchema"))
    });
    let usage =
        json!({ "promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20 });
    if let Some(schema) = schema {
        // A structured side call (Gemini CLI's model router, next-speaker checks, …).
        let text = fill_schema(schema).to_string();
        let resp = json!({ "candidates": [{ "content": { "role": "model", "parts": [{ "text": text }] },
            "finishReason": "STOP", "index": 0 }], "usageMetadata": usage });
        return if stream {
            let mut out = String::new();
            data(&mut out, &resp.to_string());
            sse_reply(out, "aux")
        } else {
            json_reply(resp, "aux")
        };
    }
    let tools: Vec<(String, Option<Value>)> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
                .flatten()
                .filter_map(|f| {
                    let schema = f
                        .get("parametersJsonSchema")
                        .or_else(|| f.get("parameters"))
                        .cloned();
                    Some((f.get("name")?.as_str()?.to_string(), schema))
                })
                .collect()
        })
        .unwrap_or_default();
    let has = |c: &Value, key: &str| {
        c.get("parts")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p.get(key).is_some()))
    };
    let after_tool = contents.last().is_some_and(|c| has(c, "functionResponse"));
    let prompt = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str) == Some("user") && has(c, "text"))
        .map(|c| content_text(c.get("parts").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let mut step = script.step(&prompt, after_tool);
    let write_tool = pick_tool(&tools, &["write_file"]);
    if let (Step::Tool(text, _), None) = (&step, write_tool) {
        step = Step::Text(text.clone().unwrap_or_else(|| "OK".into()));
    }
    let kind = if tools.is_empty() && !after_tool {
        "aux"
    } else {
        kind_of(&step)
    };
    let (text, call) = match &step {
        Step::Text(t) | Step::AfterTool(t) => (Some(t.clone()), None),
        Step::Tool(t, w) => (
            t.clone(),
            write_tool.map(|(name, schema)| json!({ "functionCall": { "name": name, "args": write_args(schema.as_ref(), w) } })),
        ),
    };
    let candidate = |parts: Value, finish: bool| {
        let mut c = json!({ "content": { "role": "model", "parts": parts }, "index": 0 });
        if finish {
            c["finishReason"] = json!("STOP");
        }
        json!({ "candidates": [c], "usageMetadata": usage, "modelVersion": "gemini-fake" })
    };
    if !stream {
        let mut parts = Vec::new();
        if let Some(t) = &text {
            parts.push(json!({ "text": t }));
        }
        parts.extend(call);
        return json_reply(candidate(Value::Array(parts), true), kind);
    }
    let mut out = String::new();
    let pieces = text.as_deref().map(chunks).unwrap_or_default();
    let last_text = pieces.len();
    for (i, c) in pieces.into_iter().enumerate() {
        let finish = call.is_none() && i + 1 == last_text;
        data(
            &mut out,
            &candidate(json!([{ "text": c }]), finish).to_string(),
        );
    }
    if let Some(call) = call {
        data(&mut out, &candidate(json!([call]), true).to_string());
    }
    sse_reply(out, kind)
}

// ---------------------------------------------------------------- OpenAI Chat Completions

fn chat(body: &Value, script: &Script, n: u64) -> Reply {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let model = body.get("model").and_then(Value::as_str).unwrap_or("fake");
    let tools: Vec<(String, Option<Value>)> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    let f = t.get("function")?;
                    Some((
                        f.get("name")?.as_str()?.to_string(),
                        f.get("parameters").cloned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let after_tool = messages
        .last()
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let mut step = script.step(&prompt, after_tool);
    let write_tool = pick_tool(&tools, &["write_file", "write", "create_file"]);
    if let (Step::Tool(text, _), None) = (&step, write_tool) {
        step = Step::Text(text.clone().unwrap_or_else(|| "OK".into()));
    }
    let kind = if tools.is_empty() && !after_tool {
        "aux"
    } else {
        kind_of(&step)
    };
    let (text, call) = match &step {
        Step::Text(t) | Step::AfterTool(t) => (Some(t.clone()), None),
        Step::Tool(t, w) => (
            t.clone(),
            write_tool
                .map(|(name, schema)| (name.clone(), write_args(schema.as_ref(), w).to_string())),
        ),
    };
    let id = format!("chatcmpl-fake-{n}");
    let finish = if call.is_some() { "tool_calls" } else { "stop" };
    let usage = json!({ "prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20 });
    let call_json = |(name, args): &(String, String)| {
        json!({ "index": 0, "id": format!("call_fake_{n}"), "type": "function",
                "function": { "name": name, "arguments": args } })
    };
    if !stream {
        let mut message = json!({ "role": "assistant", "content": text });
        if let Some(c) = &call {
            let mut c = call_json(c);
            if let Some(o) = c.as_object_mut() {
                o.remove("index");
            }
            message["tool_calls"] = json!([c]);
        }
        return json_reply(
            json!({ "id": id, "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{ "index": 0, "message": message, "finish_reason": finish }], "usage": usage }),
            kind,
        );
    }
    let chunk = |delta: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({ "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        c.to_string()
    };
    let mut out = String::new();
    data(
        &mut out,
        &chunk(json!({ "role": "assistant", "content": "" }), None, None),
    );
    if let Some(t) = &text {
        for c in chunks(t) {
            data(&mut out, &chunk(json!({ "content": c }), None, None));
        }
    }
    if let Some(c) = &call {
        data(
            &mut out,
            &chunk(json!({ "tool_calls": [call_json(c)] }), None, None),
        );
    }
    data(&mut out, &chunk(json!({}), Some(finish), Some(&usage)));
    data(&mut out, "[DONE]");
    sse_reply(out, kind)
}
