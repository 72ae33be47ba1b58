//! The `devcontainer.json` subset SAM builds, parsed with no IO.
//!
//! Supported: `image`, `build.dockerfile`/`context`/`args`, `features` (local ones,
//! `./path` in the repo; OCI references are refused with a clear error for now),
//! `containerEnv`, `remoteUser`, `containerUser`, `postCreateCommand` (string, array
//! or object of commands), `forwardPorts`. JSON with comments and trailing commas is
//! accepted. Other keys are ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Largest `devcontainer.json` read.
pub const MAX_CONFIG: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DevcontainerError {
    #[error("devcontainer.json is not valid JSON (with comments): {0}")]
    Json(String),
    #[error("devcontainer.json needs `image` or `build.dockerfile`")]
    NoImage,
    #[error(
        "devcontainer feature {0:?} is an OCI reference: OCI features are not supported yet; use a local feature (\"./path\") or install it in the Dockerfile"
    )]
    OciFeature(String),
    #[error("path {0:?} in devcontainer.json leaves the repository")]
    Escape(String),
    #[error("devcontainer.json is larger than 256 KiB")]
    TooLarge,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Raw {
    image: Option<String>,
    build: Option<RawBuild>,
    #[serde(default)]
    features: BTreeMap<String, Value>,
    #[serde(default)]
    container_env: BTreeMap<String, String>,
    remote_user: Option<String>,
    container_user: Option<String>,
    post_create_command: Option<Value>,
    #[serde(default)]
    forward_ports: Vec<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct RawBuild {
    dockerfile: Option<String>,
    context: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, String>,
}

/// A parsed config; every path is relative to the repository root, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevContainer {
    pub image: Option<String>,
    pub build: Option<Build>,
    /// Local features in key order.
    pub features: Vec<Feature>,
    pub container_env: BTreeMap<String, String>,
    pub remote_user: Option<String>,
    pub container_user: Option<String>,
    /// Commands run one after the other, each either a shell line or an argv.
    pub post_create: Vec<Command>,
    pub forward_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub dockerfile: String,
    /// `""` is the repository root.
    pub context: String,
    pub args: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Folder in the repo holding `install.sh` and `devcontainer-feature.json`.
    pub path: String,
    /// Options given in devcontainer.json (defaults come from the feature's own json).
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(a) => a.clone(),
        }
    }
}

/// Parses `text`, found in folder `config_dir` of the repo (`.devcontainer` or `""`).
pub fn parse(text: &str, config_dir: &str) -> Result<DevContainer, DevcontainerError> {
    if text.len() > MAX_CONFIG {
        return Err(DevcontainerError::TooLarge);
    }
    let clean = strip_jsonc(text);
    let raw: Raw =
        serde_json::from_str(&clean).map_err(|e| DevcontainerError::Json(e.to_string()))?;
    let build = match raw.build {
        Some(RawBuild {
            dockerfile: Some(df),
            context,
            args,
        }) => Some(Build {
            dockerfile: join(config_dir, &df)?,
            context: join(config_dir, context.as_deref().unwrap_or("."))?,
            args,
        }),
        _ => None,
    };
    if build.is_none() && raw.image.is_none() {
        return Err(DevcontainerError::NoImage);
    }
    let mut features = Vec::new();
    for (key, value) in raw.features {
        if !(key.starts_with("./") || key.starts_with("../")) {
            return Err(DevcontainerError::OciFeature(key));
        }
        let options = match value {
            Value::Object(m) => m.into_iter().map(|(k, v)| (k, value_string(&v))).collect(),
            Value::String(s) => BTreeMap::from([("version".to_string(), s)]),
            _ => BTreeMap::new(),
        };
        features.push(Feature {
            path: join(config_dir, &key)?,
            options,
        });
    }
    let post_create = match raw.post_create_command {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![Command::Shell(s)],
        Some(Value::Array(a)) => vec![Command::Argv(a.iter().map(value_string).collect())],
        Some(Value::Object(m)) => m
            .into_iter()
            .map(|(_, v)| match v {
                Value::Array(a) => Command::Argv(a.iter().map(value_string).collect()),
                v => Command::Shell(value_string(&v)),
            })
            .collect(),
        Some(v) => vec![Command::Shell(value_string(&v))],
    };
    let forward_ports = raw
        .forward_ports
        .iter()
        .filter_map(|v| match v {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.rsplit(':').next().and_then(|p| p.parse().ok()),
            _ => None,
        })
        .collect();
    Ok(DevContainer {
        image: raw.image,
        build,
        features,
        container_env: raw.container_env,
        remote_user: raw.remote_user,
        container_user: raw.container_user,
        post_create,
        forward_ports,
    })
}

fn value_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `base/rel` normalised; `..` may not leave the repository.
pub fn join(base: &str, rel: &str) -> Result<String, DevcontainerError> {
    if rel.starts_with('/') {
        return Err(DevcontainerError::Escape(rel.to_string()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in base.split('/').chain(rel.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(DevcontainerError::Escape(rel.to_string()));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Removes `//` and `/* */` comments and trailing commas, outside strings.
pub fn strip_jsonc(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_string = false;
    while i < chars.len() {
        let c = chars[i];
        if in_string {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == '"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match (c, chars.get(i + 1)) {
            ('"', _) => {
                in_string = true;
                out.push(c);
                i += 1;
            }
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ('/', Some('*')) => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
                out.push(' ');
            }
            ('}', _) | (']', _) => {
                // Drop a trailing comma (comments were never copied to `out`).
                let trimmed = out.trim_end().len();
                if out[..trimmed].ends_with(',') {
                    out.truncate(trimmed - 1);
                }
                out.push(c);
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Env var name of a feature option, as the devcontainer spec makes it.
pub fn option_env_name(option: &str) -> String {
    let mut s: String = option
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// Defaults of a feature's options from its `devcontainer-feature.json`.
pub fn feature_defaults(feature_json: &str) -> BTreeMap<String, String> {
    let Ok(v) = serde_json::from_str::<Value>(&strip_jsonc(feature_json)) else {
        return BTreeMap::new();
    };
    v.get("options")
        .and_then(Value::as_object)
        .map(|opts| {
            opts.iter()
                .filter_map(|(k, o)| o.get("default").map(|d| (k.clone(), value_string(d))))
                .collect()
        })
        .unwrap_or_default()
}

/// Single-quotes `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The Dockerfile that installs local features on top of `base`. `features` pairs
/// each feature with its merged options (defaults overridden by devcontainer.json).
pub fn features_dockerfile(
    base: &str,
    restore_user: Option<&str>,
    remote_user: &str,
    features: &[(Feature, BTreeMap<String, String>)],
) -> String {
    let mut d = format!("FROM {base}\nUSER root\n");
    for (i, (f, options)) in features.iter().enumerate() {
        let mut env = String::new();
        for (k, v) in options {
            env.push_str(&format!("{}={} ", option_env_name(k), sh_quote(v)));
        }
        d.push_str(&format!(
            "COPY [\"{path}/\", \"/tmp/sam-features/{i}/\"]\nRUN cd /tmp/sam-features/{i} && chmod +x install.sh && env {env}_REMOTE_USER={ru} _CONTAINER_USER={ru} ./install.sh && rm -rf /tmp/sam-features/{i}\n",
            path = f.path.replace('"', "\\\""),
            ru = sh_quote(remote_user),
        ));
    }
    if let Some(u) = restore_user.filter(|u| !u.is_empty()) {
        d.push_str(&format!("USER {u}\n"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc() {
        let text = r#"// top
        {
          "image": "x:1", /* inline */
          "url": "http://a//b", // trailing
          "list": [1, 2,],
          "s": "a \" // not a comment",
        }"#;
        let v: Value = serde_json::from_str(&strip_jsonc(text)).expect("parses");
        assert_eq!(v["url"], "http://a//b");
        assert_eq!(v["s"], "a \" // not a comment");
        assert_eq!(v["list"], serde_json::json!([1, 2]));
    }

    #[test]
    fn full_subset() {
        let text = r#"{
            "build": { "dockerfile": "Dockerfile", "context": "..", "args": { "A": "1" } },
            "features": { "./features/hello": { "greeting": "hi" }, "./f2": "2" },
            "containerEnv": { "FOO": "bar" },
            "remoteUser": "sam",
            "postCreateCommand": "echo done > /tmp/x",
            "forwardPorts": [3000, "db:5432"],
        }"#;
        let d = parse(text, ".devcontainer").expect("parse");
        let b = d.build.expect("build");
        assert_eq!(b.dockerfile, ".devcontainer/Dockerfile");
        assert_eq!(b.context, "");
        assert_eq!(d.features[0].path, ".devcontainer/f2");
        assert_eq!(d.features[1].path, ".devcontainer/features/hello");
        assert_eq!(d.features[1].options["greeting"], "hi");
        assert_eq!(d.forward_ports, [3000, 5432]);
        assert_eq!(d.post_create, [Command::Shell("echo done > /tmp/x".into())]);
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            parse("{ nope", ""),
            Err(DevcontainerError::Json(_))
        ));
        assert_eq!(parse("{}", ""), Err(DevcontainerError::NoImage));
        let oci = r#"{"image":"x","features":{"ghcr.io/devcontainers/features/node:1":{}}}"#;
        assert!(matches!(
            parse(oci, ""),
            Err(DevcontainerError::OciFeature(_))
        ));
        let esc = r#"{"build":{"dockerfile":"../../x"}}"#;
        assert!(matches!(
            parse(esc, ".devcontainer"),
            Err(DevcontainerError::Escape(_))
        ));
    }

    #[test]
    fn feature_helpers() {
        assert_eq!(option_env_name("install-tools"), "INSTALL_TOOLS");
        let defaults =
            feature_defaults(r#"{"options":{"greeting":{"type":"string","default":"hello"}}}"#);
        assert_eq!(defaults["greeting"], "hello");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let f = Feature {
            path: "f".into(),
            options: BTreeMap::new(),
        };
        let d = features_dockerfile("img", Some("sam"), "sam", &[(f, defaults)]);
        assert!(d.contains("GREETING='hello'"));
        assert!(d.ends_with("USER sam\n"));
    }

    #[test]
    fn garbage_never_panics() {
        for s in ["", "/*", "\"", "{\"a\":/", ",,,]", "{\"image\":1}"] {
            let _ = parse(s, "");
        }
    }
}
