//! A compact OpenAPI 3.0/3.1 validator for the fakes: resolves the operation by method and
//! path template, checks path and query parameters, the request body and the response (status,
//! content type, body) against the declared schemas.
//!
//! Schema keywords checked: `$ref` (local JSON pointers), `type` (string or 3.1 array),
//! `nullable` (3.0), `enum`, `const`, `required`, `properties`, `additionalProperties`
//! (false or a schema), `items`, `minItems`/`maxItems`, `minLength`/`maxLength`,
//! `minimum`/`maximum`, `allOf`/`anyOf`/`oneOf`, `format: date-time`. Not checked: `pattern`,
//! other formats, `discriminator`, `readOnly`/`writeOnly`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

pub struct Spec {
    pub name: String,
    doc: Value,
    /// (method, template, segments)
    ops: Vec<(String, String, Vec<Seg>)>,
}

enum Seg {
    Lit(String),
    Param(String),
}

/// The operation a request matched.
pub struct Matched {
    pub method: String,
    pub template: String,
    pub operation_id: String,
    pub path_params: BTreeMap<String, String>,
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

impl Spec {
    pub fn load(path: &Path) -> Spec {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let doc: Value = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).expect("spec JSON")
        } else {
            serde_norway::from_str(&text).expect("spec YAML")
        };
        Self::from_value(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            doc,
        )
    }

    pub fn from_value(name: String, doc: Value) -> Spec {
        let mut ops = Vec::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (template, item) in paths {
                for m in METHODS {
                    if item.get(m).is_some() {
                        let segs = template
                            .trim_start_matches('/')
                            .split('/')
                            .map(
                                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                                    Some(p) => Seg::Param(p.to_owned()),
                                    None => Seg::Lit(s.to_owned()),
                                },
                            )
                            .collect();
                        ops.push((m.to_owned(), template.clone(), segs));
                    }
                }
            }
        }
        Spec { name, doc, ops }
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..32 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return Ok(v);
            };
            let ptr = r
                .strip_prefix('#')
                .ok_or_else(|| format!("non-local $ref {r}"))?;
            v = self
                .doc
                .pointer(ptr)
                .ok_or_else(|| format!("dangling $ref {r}"))?;
        }
        Err("$ref chain too long".into())
    }

    fn find(&self, method: &str, path: &str) -> Option<Matched> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, Matched)> = None;
        for (m, template, segs) in &self.ops {
            if !m.eq_ignore_ascii_case(method) || segs.len() != parts.len() {
                continue;
            }
            let mut params = BTreeMap::new();
            let mut lits = 0;
            let ok = segs.iter().zip(&parts).all(|(s, p)| match s {
                Seg::Lit(l) => {
                    lits += 1;
                    l == p
                }
                Seg::Param(name) => {
                    params.insert(name.clone(), (*p).to_owned());
                    !p.is_empty()
                }
            });
            if ok && best.as_ref().is_none_or(|(n, _)| lits > *n) {
                let op = &self.doc["paths"][template][m.as_str()];
                best = Some((
                    lits,
                    Matched {
                        method: m.clone(),
                        template: template.clone(),
                        operation_id: op["operationId"].as_str().unwrap_or("").to_owned(),
                        path_params: params,
                    },
                ));
            }
        }
        best.map(|(_, m)| m)
    }

    fn op(&self, m: &Matched) -> &Value {
        &self.doc["paths"][&m.template][m.method.as_str()]
    }

    fn parameters(&self, m: &Matched) -> Vec<Value> {
        let item = &self.doc["paths"][&m.template];
        let mut out = Vec::new();
        for list in [&item["parameters"], &self.op(m)["parameters"]] {
            for p in list.as_array().into_iter().flatten() {
                if let Ok(p) = self.resolve(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// Checks a request; `extra_query` names query parameters the spec leaves out but the API
    /// documents (each with a reason at the call site).
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        content_type: Option<&str>,
        body: &[u8],
        extra_query: &[&str],
    ) -> Result<Matched, Vec<String>> {
        let Some(m) = self.find(method, path) else {
            return Err(vec![format!(
                "{}: no operation for {method} {path}",
                self.name
            )]);
        };
        let mut errs = Vec::new();
        let params = self.parameters(&m);
        for p in &params {
            let name = p["name"].as_str().unwrap_or("");
            let schema = &p["schema"];
            match p["in"].as_str() {
                Some("path") => match m.path_params.get(name) {
                    Some(v) => self.check_param(&format!("path {name}"), v, schema, &mut errs),
                    None => errs.push(format!("path parameter {name} missing")),
                },
                Some("query") => {
                    let vals: Vec<&String> = query
                        .iter()
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v)
                        .collect();
                    if vals.is_empty() {
                        if p["required"].as_bool() == Some(true) {
                            errs.push(format!("required query parameter {name} missing"));
                        }
                        continue;
                    }
                    let schema = self.resolve(schema).unwrap_or(schema);
                    if schema["type"] == "array" {
                        let items = &schema["items"];
                        for v in vals {
                            self.check_param(&format!("query {name}"), v, items, &mut errs);
                        }
                    } else if vals.len() > 1 {
                        errs.push(format!("query parameter {name} given {} times", vals.len()));
                    } else {
                        self.check_param(&format!("query {name}"), vals[0], schema, &mut errs);
                    }
                }
                _ => {}
            }
        }
        for (k, _) in query {
            let declared = params
                .iter()
                .any(|p| p["in"] == "query" && p["name"].as_str() == Some(k));
            if !declared && !extra_query.contains(&k.as_str()) {
                errs.push(format!("query parameter {k} is not declared by the spec"));
            }
        }
        let op = self.op(&m);
        match op.get("requestBody").map(|b| self.resolve(b)) {
            None => {
                if !body.is_empty() {
                    errs.push("the operation takes no request body".into());
                }
            }
            Some(Err(e)) => errs.push(e),
            Some(Ok(rb)) => {
                if body.is_empty() {
                    if rb["required"].as_bool() == Some(true) {
                        errs.push("request body is required".into());
                    }
                } else {
                    self.check_content("request", &rb["content"], content_type, body, &mut errs);
                }
            }
        }
        if errs.is_empty() {
            Ok(m)
        } else {
            Err(errs
                .into_iter()
                .map(|e| format!("{} {} {}: {e}", self.name, m.method, m.template))
                .collect())
        }
    }

    /// Checks a response; `Err` when the spec does not declare the status at all.
    pub fn check_response(
        &self,
        m: &Matched,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<String>, ()> {
        let responses = &self.op(m)["responses"];
        let s = status.to_string();
        let class = format!("{}XX", status / 100);
        let Some(resp) = responses
            .get(&s)
            .or_else(|| responses.get(&class))
            .or_else(|| responses.get("default"))
        else {
            return Err(());
        };
        let mut errs = Vec::new();
        match self.resolve(resp) {
            Err(e) => errs.push(e),
            Ok(resp) => match resp.get("content") {
                None => {
                    if !body.is_empty() {
                        errs.push(format!("status {status} declares no body, got one"));
                    }
                }
                Some(content) => {
                    self.check_content("response", content, content_type, body, &mut errs)
                }
            },
        }
        Ok(errs
            .into_iter()
            .map(|e| format!("{} {} {} -> {status}: {e}", self.name, m.method, m.template))
            .collect())
    }

    fn check_content(
        &self,
        what: &str,
        content: &Value,
        content_type: Option<&str>,
        body: &[u8],
        errs: &mut Vec<String>,
    ) {
        let ct = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let major = format!("{}/*", ct.split('/').next().unwrap_or(""));
        let Some(media) = content
            .get(&ct)
            .or_else(|| content.get(&major))
            .or_else(|| content.get("*/*"))
        else {
            errs.push(format!("{what} content type {ct:?} is not declared"));
            return;
        };
        let schema = &media["schema"];
        if ct == "application/json" || ct.ends_with("+json") {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => self.validate_at(&v, schema, what, errs, 0),
                Err(e) => errs.push(format!("{what} body is not JSON: {e}")),
            }
        } else {
            let s = self.resolve(schema).unwrap_or(schema);
            if s["format"] != "binary" && std::str::from_utf8(body).is_err() {
                errs.push(format!("{what} body is not UTF-8 text"));
            }
            if !(s.get("type").is_none() || s["type"] == "string") {
                errs.push(format!("{what} is {ct}, but the schema is not a string"));
            }
        }
    }

    fn check_param(&self, at: &str, raw: &str, schema: &Value, errs: &mut Vec<String>) {
        let s = self.resolve(schema).unwrap_or(schema);
        let v = match s["type"].as_str() {
            Some("integer") => match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    errs.push(format!("{at}: {raw:?} is not an integer"));
                    return;
                }
            },
            Some("number") => match raw.parse::<f64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    errs.push(format!("{at}: {raw:?} is not a number"));
                    return;
                }
            },
            Some("boolean") => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    errs.push(format!("{at}: {raw:?} is not a boolean"));
                    return;
                }
            },
            _ => Value::String(raw.to_owned()),
        };
        self.validate_at(&v, schema, at, errs, 0);
    }

    /// Validates `v` against `schema`; the errors, empty when valid.
    pub fn validate(&self, v: &Value, schema: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        self.validate_at(v, schema, "$", &mut errs, 0);
        errs
    }

    fn validate_at(&self, v: &Value, schema: &Value, at: &str, errs: &mut Vec<String>, depth: u32) {
        if depth > 64 {
            errs.push(format!("{at}: schema nesting too deep"));
            return;
        }
        if let Some(b) = schema.as_bool() {
            if !b {
                errs.push(format!("{at}: no value allowed here"));
            }
            return;
        }
        if schema.get("$ref").is_some() {
            match self.resolve(schema) {
                Ok(target) => self.validate_at(v, target, at, errs, depth + 1),
                Err(e) => errs.push(format!("{at}: {e}")),
            }
        }
        if v.is_null() && schema["nullable"] == true {
            return;
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.is_empty() && !types.iter().any(|t| type_ok(v, t)) {
            errs.push(format!(
                "{at}: expected {}, got {}",
                types.join("|"),
                kind(v)
            ));
            return;
        }
        if let Some(e) = schema["enum"].as_array()
            && !e.contains(v)
        {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
        if let Some(c) = schema.get("const")
            && c != v
        {
            errs.push(format!("{at}: expected {c}, got {v}"));
        }
        for sub in schema["allOf"].as_array().into_iter().flatten() {
            self.validate_at(v, sub, at, errs, depth + 1);
        }
        for (key, need_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(subs) = schema[key].as_array() {
                let passing = subs
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        self.validate_at(v, s, at, &mut e, depth + 1);
                        e.is_empty()
                    })
                    .count();
                if passing == 0 || (need_one && passing > 1) {
                    errs.push(format!("{at}: {passing} of the {key} schemas match"));
                }
            }
        }
        match v {
            Value::Object(map) => {
                for r in schema["required"].as_array().into_iter().flatten() {
                    if let Some(r) = r.as_str()
                        && !map.contains_key(r)
                    {
                        errs.push(format!("{at}: required property {r} missing"));
                    }
                }
                let props = schema["properties"].as_object();
                for (k, val) in map {
                    let sub_at = format!("{at}.{k}");
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.validate_at(val, ps, &sub_at, errs, depth + 1),
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                errs.push(format!("{at}: property {k} is not allowed"))
                            }
                            Some(ap @ Value::Object(_)) => {
                                self.validate_at(val, ap, &sub_at, errs, depth + 1)
                            }
                            _ => {}
                        },
                    }
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if schema["minItems"].as_u64().is_some_and(|min| n < min) {
                    errs.push(format!("{at}: fewer than minItems"));
                }
                if schema["maxItems"].as_u64().is_some_and(|max| n > max) {
                    errs.push(format!("{at}: more than maxItems"));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate_at(item, item_schema, &format!("{at}[{i}]"), errs, depth + 1);
                    }
                }
            }
            Value::String(s) => {
                let n = s.chars().count() as u64;
                if schema["minLength"].as_u64().is_some_and(|min| n < min) {
                    errs.push(format!("{at}: shorter than minLength"));
                }
                if schema["maxLength"].as_u64().is_some_and(|max| n > max) {
                    errs.push(format!("{at}: longer than maxLength"));
                }
                if schema["format"] == "date-time" && !is_date_time(s) {
                    errs.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
                }
            }
            Value::Number(num) => {
                let x = num.as_f64().unwrap_or(0.0);
                if schema["minimum"].as_f64().is_some_and(|min| x < min) {
                    errs.push(format!("{at}: {x} below minimum"));
                }
                if schema["maximum"].as_f64().is_some_and(|max| x > max) {
                    errs.push(format!("{at}: {x} above maximum"));
                }
            }
            _ => {}
        }
    }
}

fn type_ok(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z')
            || s.ends_with('z')
            || s.as_bytes()[s.len() - 6] == b'+'
            || s.as_bytes()[s.len() - 6] == b'-')
}
