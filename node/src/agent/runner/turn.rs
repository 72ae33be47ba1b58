//! One running turn: translates what the agent sends over ACP (message chunks, tool
//! calls, plans, permission requests) into writes to the conversation document.

use super::*;

pub(super) fn stop_name(r: StopReason) -> &'static str {
    match r {
        StopReason::EndTurn => "end of turn",
        StopReason::MaxTokens => "maximum tokens reached",
        StopReason::MaxTurnRequests => "maximum requests in a turn reached",
        StopReason::Refusal => "refused",
        StopReason::Cancelled => "cancelled",
        _ => "unknown reason",
    }
}

pub(super) struct PendingPerm {
    pub(super) slot: Slot,
    pub(super) responder: Responder<RequestPermissionResponse>,
}

/// State of one running turn.
pub(super) struct Turn {
    pub(super) w: Writer,
    pub(super) policy: PermissionPolicy,
    /// The message chunks are appended to, and its role.
    pub(super) open: Option<(Slot, MsgRole)>,
    pub(super) tools: HashMap<String, Slot>,
    pub(super) perms: Vec<PendingPerm>,
    pub(super) cancelled_by: Option<String>,
}

pub(super) fn kind_str(k: &ToolKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "other".into())
}

pub(super) fn tool_status(s: &ToolCallStatus) -> ToolStatus {
    match s {
        ToolCallStatus::InProgress => ToolStatus::InProgress,
        ToolCallStatus::Completed => ToolStatus::Completed,
        ToolCallStatus::Failed => ToolStatus::Failed,
        _ => ToolStatus::Pending,
    }
}

pub(super) fn block_text(b: &ContentBlock) -> String {
    match b {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(_) => "[image]".into(),
        ContentBlock::Audio(_) => "[audio]".into(),
        ContentBlock::ResourceLink(l) => format!("[{}]", l.uri),
        _ => "[resource]".into(),
    }
}

pub(super) fn content_text(c: &[ToolCallContent]) -> String {
    let mut out = String::new();
    for item in c {
        match item {
            ToolCallContent::Content(c) => out.push_str(&block_text(&c.content)),
            ToolCallContent::Diff(d) => out.push_str(&format!("[diff {}]\n", d.path.display())),
            ToolCallContent::Terminal(t) => {
                out.push_str(&format!("[terminal {}]\n", t.terminal_id.0))
            }
            _ => {}
        }
    }
    out
}

impl Turn {
    pub(super) fn cancel_reason(&self) -> Option<String> {
        self.cancelled_by
            .as_ref()
            .map(|b| format!("cancelled by {b}"))
    }

    fn close_open(&mut self) {
        if let Some((slot, _)) = self.open.take() {
            self.w.send(Op::Status(slot, Status::Done, None));
        }
    }

    fn chunk(&mut self, role: MsgRole, text: String) {
        if text.is_empty() {
            return;
        }
        let slot = match self.open {
            Some((s, r)) if r == role => s,
            _ => {
                self.close_open();
                let s = self.w.slot();
                self.w.send(Op::Start(s, role));
                self.open = Some((s, role));
                s
            }
        };
        self.w.send(Op::Chunk(slot, text));
    }

    pub(super) fn event(&mut self, ev: Event) {
        match ev {
            Event::Update(n) => self.update(n.update),
            Event::Permission(req, responder) => {
                self.close_open();
                if self.cancelled_by.is_some() || req.options.is_empty() {
                    let _ = responder.respond(RequestPermissionResponse::new(
                        RequestPermissionOutcome::Cancelled,
                    ));
                    return;
                }
                let options: Vec<PermissionOption> = req
                    .options
                    .iter()
                    .map(|o| PermissionOption {
                        id: o.option_id.0.to_string(),
                        name: o.name.clone(),
                        kind: serde_json::to_value(o.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect();
                let f = &req.tool_call.fields;
                let title = f
                    .title
                    .clone()
                    .unwrap_or_else(|| "the agent asks for permission".into());
                let slot = self.w.slot();
                self.w.send(Op::Permission(slot, title, options));
                let read_only = matches!(
                    f.kind,
                    Some(ToolKind::Read | ToolKind::Search | ToolKind::Fetch | ToolKind::Think)
                );
                let auto = match self.policy {
                    PermissionPolicy::AllowAll => true,
                    PermissionPolicy::AllowReads => read_only,
                    PermissionPolicy::Ask => false,
                };
                let pick = [
                    PermissionOptionKind::AllowOnce,
                    PermissionOptionKind::AllowAlways,
                ]
                .iter()
                .find_map(|k| req.options.iter().find(|o| o.kind == *k));
                match (auto, pick) {
                    (true, Some(o)) => {
                        let id = o.option_id.0.to_string();
                        self.w.send(Op::Answer(slot, id.clone()));
                        let _ = responder.respond(RequestPermissionResponse::new(
                            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id)),
                        ));
                    }
                    _ => self.perms.push(PendingPerm { slot, responder }),
                }
            }
        }
    }

    fn update(&mut self, u: SessionUpdate) {
        match u {
            SessionUpdate::AgentMessageChunk(c) => {
                self.chunk(MsgRole::Agent, block_text(&c.content))
            }
            SessionUpdate::AgentThoughtChunk(c) => {
                self.chunk(MsgRole::Thought, block_text(&c.content))
            }
            SessionUpdate::ToolCall(tc) => {
                self.close_open();
                let slot = self.w.slot();
                let status = tool_status(&tc.status);
                self.w.send(Op::Tool(
                    slot,
                    ToolCall {
                        kind: kind_str(&tc.kind),
                        title: tc.title.clone(),
                        input: tc
                            .raw_input
                            .as_ref()
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        status: Some(status),
                        locations: tc
                            .locations
                            .iter()
                            .map(|l| l.path.display().to_string())
                            .collect(),
                    },
                ));
                let out = content_text(&tc.content);
                if !out.is_empty() {
                    self.w.send(Op::ToolUpdate(
                        slot,
                        ToolCallUpdate {
                            output_chunk: Some(out),
                            ..Default::default()
                        },
                    ));
                }
                self.finish_tool(slot, status);
                self.tools.insert(tc.tool_call_id.0.to_string(), slot);
            }
            SessionUpdate::ToolCallUpdate(u) => {
                let key = u.tool_call_id.0.to_string();
                let f = u.fields;
                let slot = match self.tools.get(&key) {
                    Some(s) => *s,
                    None => {
                        self.close_open();
                        let s = self.w.slot();
                        self.w.send(Op::Tool(
                            s,
                            ToolCall {
                                kind: f
                                    .kind
                                    .as_ref()
                                    .map(kind_str)
                                    .unwrap_or_else(|| "other".into()),
                                title: f.title.clone().unwrap_or_else(|| key.clone()),
                                ..Default::default()
                            },
                        ));
                        self.tools.insert(key, s);
                        s
                    }
                };
                let status = f.status.as_ref().map(tool_status);
                let out = f
                    .content
                    .as_deref()
                    .map(content_text)
                    .filter(|s| !s.is_empty());
                self.w.send(Op::ToolUpdate(
                    slot,
                    ToolCallUpdate {
                        status,
                        output_chunk: out,
                        locations: f
                            .locations
                            .map(|l| l.iter().map(|l| l.path.display().to_string()).collect()),
                        title: f.title,
                    },
                ));
                if let Some(s) = status {
                    self.finish_tool(slot, s);
                }
            }
            SessionUpdate::Plan(p) => self.w.send(Op::Plan(
                p.entries
                    .iter()
                    .map(|e| PlanEntry {
                        content: e.content.clone(),
                        status: serde_json::to_value(&e.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        priority: serde_json::to_value(&e.priority)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect(),
            )),
            SessionUpdate::AvailableCommandsUpdate(c) => self.w.send(Op::Commands(
                c.available_commands
                    .iter()
                    .map(|c| (c.name.clone(), c.description.clone()))
                    .collect(),
            )),
            _ => {}
        }
    }

    fn finish_tool(&mut self, slot: Slot, s: ToolStatus) {
        match s {
            ToolStatus::Completed => self.w.send(Op::Status(slot, Status::Done, None)),
            ToolStatus::Failed => self.w.send(Op::Status(slot, Status::Failed, None)),
            _ => {}
        }
    }

    /// Answers the agent for every permission request answered in the document.
    pub(super) async fn check_answers(&mut self, docs: &crate::docs::DocHost, conv: &str) {
        if self.perms.is_empty() {
            return;
        }
        let ids: Vec<(usize, MessageId)> = self
            .perms
            .iter()
            .enumerate()
            .filter_map(|(i, q)| self.w.id(q.slot).map(|m| (i, m)))
            .collect();
        if ids.is_empty() {
            return;
        }
        let query: Vec<MessageId> = ids.iter().map(|(_, m)| m.clone()).collect();
        let Ok(answers) = docs
            .read(conv, move |c| {
                query
                    .iter()
                    .map(|m| {
                        c.message(m)
                            .and_then(|v| v.permission)
                            .and_then(|p| p.chosen)
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        let mut done = Vec::new();
        for ((i, _), a) in ids.into_iter().zip(answers) {
            if let Some(a) = a {
                done.push((i, a));
            }
        }
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, a) in done {
            let q = self.perms.remove(i);
            info!(option = %a.option, by = %a.by, "permission answered");
            let _ = q.responder.respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(a.option)),
            ));
        }
    }

    pub(super) fn drop_perms(&mut self, status: Status) {
        for q in std::mem::take(&mut self.perms) {
            let _ = q.responder.respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Cancelled,
            ));
            self.w
                .send(Op::Status(q.slot, status, self.cancel_reason()));
        }
    }

    pub(super) fn finish(&mut self, status: Status, reason: Option<String>) {
        let perm_status = if status == Status::Cancelled {
            Status::Cancelled
        } else {
            Status::Interrupted
        };
        self.drop_perms(perm_status);
        if let Some((slot, _)) = self.open.take() {
            self.w.send(Op::Status(slot, status, reason));
        }
    }
}

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}
