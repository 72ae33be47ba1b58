//! Typed, schema-checking reads over an Automerge document.
//!
//! Every function names the field it reads (`path`) in its error, so a broken document gives
//! an error such as ``conversation schema violation at `messages[2].text`: expected a Text
//! object, found a string``.

use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value};

use crate::SchemaError;

fn describe(v: &Value<'_>) -> &'static str {
    match v {
        Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => "a map",
        Value::Object(ObjType::List) => "a list",
        Value::Object(ObjType::Text) => "a Text object",
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Bytes(_) => "bytes",
            ScalarValue::Str(_) => "a string",
            ScalarValue::Int(_) => "an int",
            ScalarValue::Uint(_) => "a uint",
            ScalarValue::F64(_) => "a float",
            ScalarValue::Counter(_) => "a counter",
            ScalarValue::Timestamp(_) => "a timestamp",
            ScalarValue::Boolean(_) => "a boolean",
            ScalarValue::Unknown { .. } => "an unknown scalar type",
            ScalarValue::Null => "null",
        },
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn get<'a, D: ReadDoc>(
    doc: &'a D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<Value<'a>>, SchemaError> {
    match doc.get(obj, key) {
        Ok(v) => Ok(v.map(|(v, _)| v)),
        Err(e) => Err(SchemaError::new(path, format!("unreadable: {e}"))),
    }
}

fn get_obj_value<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<(Value<'static>, ObjId)>, SchemaError> {
    match doc.get(obj, key) {
        Ok(v) => Ok(v.map(|(v, id)| (v.into_owned(), id))),
        Err(e) => Err(SchemaError::new(path, format!("unreadable: {e}"))),
    }
}

/// A required string field.
pub(crate) fn req_str<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<String, SchemaError> {
    let p = join(path, key);
    as_req_str(get(doc, obj, key, &p)?, p)
}

fn as_req_str(v: Option<Value<'_>>, p: String) -> Result<String, SchemaError> {
    match v {
        Some(Value::Scalar(s)) if matches!(s.as_ref(), ScalarValue::Str(_)) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(s.to_string()),
            _ => Err(SchemaError::new(p, "expected a string")),
        },
        Some(v) => Err(SchemaError::new(
            p,
            format!("expected a string, found {}", describe(&v)),
        )),
        None => Err(SchemaError::new(p, "missing (expected a string)")),
    }
}

/// An optional string field: absent or `null` is `None`.
pub(crate) fn opt_str<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<String>, SchemaError> {
    let p = join(path, key);
    as_opt_str(get(doc, obj, key, &p)?, p)
}

fn as_opt_str(v: Option<Value<'_>>, p: String) -> Result<Option<String>, SchemaError> {
    match v {
        None => Ok(None),
        Some(Value::Scalar(s)) => match s.as_ref() {
            ScalarValue::Null => Ok(None),
            ScalarValue::Str(s) => Ok(Some(s.to_string())),
            _ => Err(SchemaError::new(
                p,
                format!(
                    "expected a string or null, found {}",
                    describe(&Value::Scalar(s))
                ),
            )),
        },
        Some(v) => Err(SchemaError::new(
            p,
            format!("expected a string or null, found {}", describe(&v)),
        )),
    }
}

/// A required integer field (`int`, `uint` or `timestamp` are accepted).
pub(crate) fn req_int<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<i64, SchemaError> {
    let p = join(path, key);
    as_req_int(get(doc, obj, key, &p)?, p)
}

fn as_req_int(v: Option<Value<'_>>, p: String) -> Result<i64, SchemaError> {
    match v {
        Some(Value::Scalar(s)) => match s.as_ref() {
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Ok(*i),
            ScalarValue::Uint(u) => {
                i64::try_from(*u).map_err(|_| SchemaError::new(p.clone(), "integer out of range"))
            }
            _ => Err(SchemaError::new(
                p,
                format!("expected an integer, found {}", describe(&Value::Scalar(s))),
            )),
        },
        Some(v) => Err(SchemaError::new(
            p,
            format!("expected an integer, found {}", describe(&v)),
        )),
        None => Err(SchemaError::new(p, "missing (expected an integer)")),
    }
}

/// An optional integer field: absent or `null` is `None`.
pub(crate) fn opt_int<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    path: &str,
) -> Result<Option<i64>, SchemaError> {
    let p = join(path, key);
    match get(doc, obj, key, &p)? {
        None => Ok(None),
        Some(Value::Scalar(s)) if matches!(s.as_ref(), ScalarValue::Null) => Ok(None),
        v => as_req_int(v, p).map(Some),
    }
}

fn type_name(t: ObjType) -> &'static str {
    describe(&Value::Object(t))
}

fn same_kind(a: ObjType, b: ObjType) -> bool {
    matches!(
        (a, b),
        (ObjType::Map | ObjType::Table, ObjType::Map | ObjType::Table)
            | (ObjType::List, ObjType::List)
            | (ObjType::Text, ObjType::Text)
    )
}

/// A required object field of type `ty`.
pub(crate) fn req_obj<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    ty: ObjType,
    path: &str,
) -> Result<ObjId, SchemaError> {
    let p = join(path, key);
    as_req_obj(get_obj_value(doc, obj, key, &p)?, ty, p)
}

fn as_req_obj(v: Option<(Value<'_>, ObjId)>, ty: ObjType, p: String) -> Result<ObjId, SchemaError> {
    match v {
        Some((Value::Object(t), id)) if same_kind(t, ty) => Ok(id),
        Some((v, _)) => Err(SchemaError::new(
            p,
            format!("expected {}, found {}", type_name(ty), describe(&v)),
        )),
        None => Err(SchemaError::new(
            p,
            format!("missing (expected {})", type_name(ty)),
        )),
    }
}

/// An optional object field of type `ty`: absent or `null` is `None`.
pub(crate) fn opt_obj<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    ty: ObjType,
    path: &str,
) -> Result<Option<ObjId>, SchemaError> {
    let p = join(path, key);
    as_opt_obj(get_obj_value(doc, obj, key, &p)?, ty, p)
}

fn as_opt_obj(
    v: Option<(Value<'_>, ObjId)>,
    ty: ObjType,
    p: String,
) -> Result<Option<ObjId>, SchemaError> {
    match v {
        None => Ok(None),
        Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Null) => Ok(None),
        v => as_req_obj(v, ty, p).map(Some),
    }
}

/// The visible fields of one map object, read with a single `map_range` (one seek into the op
/// set instead of one per key). Same checks and error messages as the free functions.
pub(crate) struct Fields<'a> {
    items: Vec<(std::borrow::Cow<'a, str>, Value<'static>, Option<ObjId>)>,
}

impl<'a> Fields<'a> {
    pub(crate) fn read<D: ReadDoc>(doc: &'a D, obj: &ObjId) -> Self {
        let items = doc
            .map_range(obj, ..)
            .map(|i| {
                let id = matches!(i.value, automerge::ValueRef::Object(_)).then(|| i.id());
                (i.key, i.value.into_value(), id)
            })
            .collect();
        Self { items }
    }

    fn value(&self, key: &str) -> Option<Value<'_>> {
        self.items
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.clone())
    }

    fn obj(&self, key: &str) -> Option<(Value<'_>, ObjId)> {
        self.items
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, id)| (v.clone(), id.clone().unwrap_or(automerge::ROOT)))
    }

    pub(crate) fn req_str(&self, key: &str, path: &str) -> Result<String, SchemaError> {
        as_req_str(self.value(key), join(path, key))
    }

    pub(crate) fn opt_str(&self, key: &str, path: &str) -> Result<Option<String>, SchemaError> {
        as_opt_str(self.value(key), join(path, key))
    }

    pub(crate) fn req_int(&self, key: &str, path: &str) -> Result<i64, SchemaError> {
        as_req_int(self.value(key), join(path, key))
    }

    pub(crate) fn req_obj(&self, key: &str, ty: ObjType, path: &str) -> Result<ObjId, SchemaError> {
        as_req_obj(self.obj(key), ty, join(path, key))
    }

    pub(crate) fn opt_obj(
        &self,
        key: &str,
        ty: ObjType,
        path: &str,
    ) -> Result<Option<ObjId>, SchemaError> {
        as_opt_obj(self.obj(key), ty, join(path, key))
    }
}

/// The object at index `i` of a list, which must be of type `ty`.
pub(crate) fn list_obj<D: ReadDoc>(
    doc: &D,
    list: &ObjId,
    i: usize,
    ty: ObjType,
    path: &str,
) -> Result<ObjId, SchemaError> {
    let p = format!("{path}[{i}]");
    match doc.get(list, i) {
        Ok(Some((Value::Object(t), id))) if same_kind(t, ty) => Ok(id),
        Ok(Some((v, _))) => Err(SchemaError::new(
            p,
            format!("expected {}, found {}", type_name(ty), describe(&v)),
        )),
        Ok(None) => Err(SchemaError::new(p, "missing list element")),
        Err(e) => Err(SchemaError::new(p, format!("unreadable: {e}"))),
    }
}

/// Every element of a list, each of which must be an object of type `ty` (one `list_range`
/// instead of one indexed lookup per element). Same errors as [`list_obj`].
pub(crate) fn list_objs<D: ReadDoc>(
    doc: &D,
    list: &ObjId,
    ty: ObjType,
    path: &str,
) -> Result<Vec<ObjId>, SchemaError> {
    let mut out = Vec::with_capacity(doc.length(list));
    for item in doc.list_range(list, ..) {
        match item.value {
            automerge::ValueRef::Object(t) if same_kind(t, ty) => out.push(item.id()),
            v => {
                let i = item.index;
                return Err(SchemaError::new(
                    format!("{path}[{i}]"),
                    format!(
                        "expected {}, found {}",
                        type_name(ty),
                        describe(&v.into_value())
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A list of strings.
pub(crate) fn str_list<D: ReadDoc>(
    doc: &D,
    list: &ObjId,
    path: &str,
) -> Result<Vec<String>, SchemaError> {
    let mut out = Vec::new();
    for i in 0..doc.length(list) {
        let p = format!("{path}[{i}]");
        match doc.get(list, i) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(s) => out.push(s.to_string()),
                _ => {
                    return Err(SchemaError::new(
                        p,
                        format!("expected a string, found {}", describe(&Value::Scalar(s))),
                    ));
                }
            },
            Ok(Some((v, _))) => {
                return Err(SchemaError::new(
                    p,
                    format!("expected a string, found {}", describe(&v)),
                ));
            }
            Ok(None) => return Err(SchemaError::new(p, "missing list element")),
            Err(e) => return Err(SchemaError::new(p, format!("unreadable: {e}"))),
        }
    }
    Ok(out)
}

/// The content of a Text object.
pub(crate) fn text<D: ReadDoc>(doc: &D, obj: &ObjId, path: &str) -> Result<String, SchemaError> {
    doc.text(obj)
        .map_err(|e| SchemaError::new(path, format!("unreadable text: {e}")))
}
