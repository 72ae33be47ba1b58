//! Schema checks and reads of whole messages.

use std::collections::HashMap;

use automerge::{ChangeHash, ObjId, ObjType, ROOT, ReadDoc};

use super::MsgEntry;
use crate::SchemaError;
use crate::access::{self, Fields, join};
use crate::ids::{self, MessageId};
use crate::schema::{
    MessageView, ParentRef, PermissionAnswer, PermissionOption, PermissionView, PlanEntry, Role,
    SCHEMA_VERSION, ServedBy, Status, ToolStatus, ToolView, Usage,
};

/// Checks every root field except the content of `messages`; returns the `messages` list.
pub(crate) fn validate_header<D: ReadDoc>(doc: &D) -> Result<ObjId, SchemaError> {
    let schema = access::req_int(doc, &ROOT, "schema", "")?;
    if schema != SCHEMA_VERSION {
        return Err(SchemaError::new(
            "schema",
            format!("unsupported schema version {schema} (this build reads {SCHEMA_VERSION})"),
        ));
    }
    let id = access::req_str(doc, &ROOT, "id", "")?;
    if !ids::is_doc_id(&id) {
        return Err(SchemaError::new(
            "id",
            format!("invalid conversation id {id:?}"),
        ));
    }
    access::req_obj(doc, &ROOT, "title", ObjType::Text, "")?;
    access::req_int(doc, &ROOT, "created_at", "")?;
    access::req_str(doc, &ROOT, "agent", "")?;
    let ws = access::req_obj(doc, &ROOT, "workspace", ObjType::Map, "")?;
    node_id(doc, &ws, "node", "workspace")?;
    access::req_str(doc, &ws, "id", "workspace")?;
    read_parent(doc)?;
    read_plan(doc)?;
    read_usage(doc)?;
    read_served_by(doc)?;
    super::hosts::read_hosts(doc)?;
    access::req_obj(doc, &ROOT, "messages", ObjType::List, "")
}

pub(super) fn node_id<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<String, SchemaError> {
    let s = access::req_str(doc, obj, key, path)?;
    if ids::is_node_id(&s) {
        Ok(s)
    } else {
        Err(SchemaError::new(
            join(path, key),
            format!("{s:?} is not a NodeId (64 lowercase hex chars)"),
        ))
    }
}

fn node_id_f(f: &Fields<'_>, key: &str, path: &str) -> Result<String, SchemaError> {
    let s = f.req_str(key, path)?;
    if ids::is_node_id(&s) {
        Ok(s)
    } else {
        Err(SchemaError::new(
            join(path, key),
            format!("{s:?} is not a NodeId (64 lowercase hex chars)"),
        ))
    }
}

fn message_id_f(f: &Fields<'_>, key: &str, path: &str) -> Result<MessageId, SchemaError> {
    let s = f.req_str(key, path)?;
    if ids::check_message_id(&s) {
        Ok(MessageId::from_checked(s))
    } else {
        Err(SchemaError::new(
            join(path, key),
            format!("{s:?} is not a message id (1..=64 chars of [0-9a-zA-Z_-])"),
        ))
    }
}

fn enum_field_f<T>(
    f: &Fields<'_>,
    key: &str,
    path: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
) -> Result<T, SchemaError> {
    let s = f.req_str(key, path)?;
    parse(&s).ok_or_else(|| {
        SchemaError::new(
            join(path, key),
            format!("unknown value {s:?} (expected {expected})"),
        )
    })
}

fn message_id<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<MessageId, SchemaError> {
    let s = access::req_str(doc, obj, key, path)?;
    if ids::check_message_id(&s) {
        Ok(MessageId::from_checked(s))
    } else {
        Err(SchemaError::new(
            join(path, key),
            format!("{s:?} is not a message id (1..=64 chars of [0-9a-zA-Z_-])"),
        ))
    }
}

/// The `parent` field.
pub(crate) fn read_parent<D: ReadDoc>(doc: &D) -> Result<Option<ParentRef>, SchemaError> {
    let Some(p) = access::opt_obj(doc, &ROOT, "parent", ObjType::Map, "")? else {
        return Ok(None);
    };
    let conversation = access::req_str(doc, &p, "conversation", "parent")?;
    let heads_obj = access::req_obj(doc, &p, "heads", ObjType::List, "parent")?;
    let mut heads = Vec::new();
    for (i, h) in access::str_list(doc, &heads_obj, "parent.heads")?
        .into_iter()
        .enumerate()
    {
        let hash: ChangeHash = h.parse().map_err(|_| {
            SchemaError::new(
                format!("parent.heads[{i}]"),
                format!("{h:?} is not a change hash (64 hex chars)"),
            )
        })?;
        heads.push(hash);
    }
    let message_id = message_id(doc, &p, "message_id", "parent")?;
    Ok(Some(ParentRef {
        conversation,
        heads,
        message_id,
    }))
}

/// The `plan` field (absent or null: empty).
pub(crate) fn read_plan<D: ReadDoc>(doc: &D) -> Result<Vec<PlanEntry>, SchemaError> {
    let Some(list) = access::opt_obj(doc, &ROOT, "plan", ObjType::List, "")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for i in 0..doc.length(&list) {
        let e = access::list_obj(doc, &list, i, ObjType::Map, "plan")?;
        let p = format!("plan[{i}]");
        out.push(PlanEntry {
            content: access::req_str(doc, &e, "content", &p)?,
            status: access::req_str(doc, &e, "status", &p)?,
            priority: access::req_str(doc, &e, "priority", &p)?,
        });
    }
    Ok(out)
}

/// The `usage` field (absent or null: empty).
pub(crate) fn read_usage<D: ReadDoc>(doc: &D) -> Result<Usage, SchemaError> {
    let Some(map) = access::opt_obj(doc, &ROOT, "usage", ObjType::Map, "")? else {
        return Ok(Usage::new());
    };
    let mut out = Usage::new();
    for key in doc.keys(&map) {
        let v = access::req_int(doc, &map, &key, "usage")?;
        out.insert(key, v);
    }
    Ok(out)
}

/// The `served_by` field (absent or null: empty).
pub(crate) fn read_served_by<D: ReadDoc>(doc: &D) -> Result<Vec<ServedBy>, SchemaError> {
    let Some(list) = access::opt_obj(doc, &ROOT, "served_by", ObjType::List, "")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for i in 0..doc.length(&list) {
        let e = access::list_obj(doc, &list, i, ObjType::Map, "served_by")?;
        let p = format!("served_by[{i}]");
        out.push(ServedBy {
            node: node_id(doc, &e, "node", &p)?,
            workspace: access::req_str(doc, &e, "workspace", &p)?,
            from_message: message_id(doc, &e, "from_message", &p)?,
        });
    }
    Ok(out)
}

/// Checks every message and builds the id → object index; duplicate ids are an error.
pub(crate) fn validate_messages<D: ReadDoc>(
    doc: &D,
    msgs: &ObjId,
) -> Result<HashMap<MessageId, MsgEntry>, SchemaError> {
    let n = doc.length(msgs);
    let mut index = HashMap::with_capacity(n);
    let mut seen: HashMap<MessageId, usize> = HashMap::with_capacity(n);
    for (i, obj) in access::list_objs(doc, msgs, ObjType::Map, "messages")?
        .into_iter()
        .enumerate()
    {
        let path = format!("messages[{i}]");
        let (view, text) = read_message(doc, &obj, &path, false)?;
        if let Some(first) = seen.insert(view.id.clone(), i) {
            return Err(SchemaError::new(
                format!("{path}.id"),
                format!(
                    "duplicate message id {} (also at messages[{first}])",
                    view.id
                ),
            ));
        }
        index.insert(view.id, MsgEntry { obj, text });
    }
    Ok(index)
}

/// Reads and checks one message. With `with_text == false` Text objects are checked for
/// their type only and returned empty (cheap: no O(length) read). Also returns the Text
/// object that streamed chunks go to (the last segment).
pub(crate) fn read_message<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    path: &str,
    with_text: bool,
) -> Result<(MessageView, ObjId), SchemaError> {
    let f = Fields::read(doc, obj);
    let id = message_id_f(&f, "id", path)?;
    let role = enum_field_f(&f, "role", path, Role::parse, Role::expected())?;
    let author = node_id_f(&f, "author", path)?;
    let created_at = f.req_int("created_at", path)?;
    let text_obj = f.req_obj("text", ObjType::Text, path)?;
    let mut text = if with_text {
        access::text(doc, &text_obj, &join(path, "text"))?
    } else {
        String::new()
    };
    // Streamed text continues in `more` (Text segments, see the schema doc).
    let mut tail = text_obj;
    if let Some(more) = f.opt_obj("more", ObjType::List, path)? {
        let more_path = join(path, "more");
        for i in 0..doc.length(&more) {
            let seg = access::list_obj(doc, &more, i, ObjType::Text, &more_path)?;
            if with_text {
                text.push_str(&access::text(doc, &seg, &format!("{more_path}[{i}]"))?);
            }
            tail = seg;
        }
    }
    let status = enum_field_f(&f, "status", path, Status::parse, Status::expected())?;
    let reason = f.opt_str("reason", path)?;
    let tool = match f.opt_obj("tool", ObjType::Map, path)? {
        Some(t) => Some(read_tool(doc, &t, &join(path, "tool"), with_text)?),
        None if role == Role::Tool => {
            return Err(SchemaError::new(
                join(path, "tool"),
                "missing (required on a tool message)",
            ));
        }
        None => None,
    };
    let permission = match f.opt_obj("permission", ObjType::Map, path)? {
        Some(p) => Some(read_permission(doc, &p, &join(path, "permission"))?),
        None if role == Role::Permission => {
            return Err(SchemaError::new(
                join(path, "permission"),
                "missing (required on a permission message)",
            ));
        }
        None => None,
    };
    Ok((
        MessageView {
            id,
            role,
            author,
            created_at,
            text,
            status,
            reason,
            tool,
            permission,
        },
        tail,
    ))
}

fn read_tool<D: ReadDoc>(
    doc: &D,
    t: &ObjId,
    path: &str,
    with_text: bool,
) -> Result<ToolView, SchemaError> {
    let f = Fields::read(doc, t);
    let output_obj = f.req_obj("output", ObjType::Text, path)?;
    let output = if with_text {
        access::text(doc, &output_obj, &join(path, "output"))?
    } else {
        String::new()
    };
    let locations = f.req_obj("locations", ObjType::List, path)?;
    Ok(ToolView {
        kind: f.req_str("kind", path)?,
        title: f.req_str("title", path)?,
        input: f.req_str("input", path)?,
        output,
        status: enum_field_f(
            &f,
            "status",
            path,
            ToolStatus::parse,
            ToolStatus::expected(),
        )?,
        locations: access::str_list(doc, &locations, &join(path, "locations"))?,
    })
}

fn read_permission<D: ReadDoc>(
    doc: &D,
    p: &ObjId,
    path: &str,
) -> Result<PermissionView, SchemaError> {
    let opts = access::req_obj(doc, p, "options", ObjType::List, path)?;
    let opts_path = join(path, "options");
    let mut options = Vec::new();
    for i in 0..doc.length(&opts) {
        let o = access::list_obj(doc, &opts, i, ObjType::Map, &opts_path)?;
        let op = format!("{opts_path}[{i}]");
        options.push(PermissionOption {
            id: access::req_str(doc, &o, "id", &op)?,
            name: access::req_str(doc, &o, "name", &op)?,
            kind: access::req_str(doc, &o, "kind", &op)?,
        });
    }
    let ans = access::req_obj(doc, p, "answers", ObjType::List, path)?;
    let ans_path = join(path, "answers");
    let mut answers = Vec::new();
    for i in 0..doc.length(&ans) {
        let a = access::list_obj(doc, &ans, i, ObjType::Map, &ans_path)?;
        let ap = format!("{ans_path}[{i}]");
        answers.push(PermissionAnswer {
            option: access::req_str(doc, &a, "option", &ap)?,
            by: node_id(doc, &a, "by", &ap)?,
            at: access::req_int(doc, &a, "at", &ap)?,
        });
    }
    let chosen = answers.iter().min().cloned();
    Ok(PermissionView {
        options,
        answers,
        chosen,
    })
}
