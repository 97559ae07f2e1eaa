//! JSON request bodies made unambiguous: the model a request is about, and the
//! generation-length cap, read the way Ollama will read them.
//!
//! Ollama decodes bodies with Go's `encoding/json`, which matches object keys to
//! fields case-insensitively with Unicode simple folding (`"MODEL"`, and
//! `"max_toKens"` with a Kelvin sign, reach the same fields as `"model"` and
//! `"max_tokens"`), and lets the last of duplicate keys win. Every field of
//! Ollama's, OpenAI's and Anthropic's request bodies is lower-case ASCII, so a
//! key at the levels read here (the top level and `options`) must already be in
//! folded form and must not repeat; anything else is refused. The body that is
//! forwarded is the one judged: re-serialised after the cap is applied.

use super::routes::{Dialect, ModelIn, Route};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    NotJson(String),
    NotAnObject,
    /// A key a Go decoder could read as another (case, Unicode folding) or a duplicate.
    AmbiguousKey(String),
    /// `model` and `name` name different models, or the model is not a string.
    AmbiguousModel,
    NoModel,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson(e) => write!(f, "the body is not JSON: {e}"),
            Self::NotAnObject => f.write_str("the body is not a JSON object"),
            Self::AmbiguousKey(k) => write!(
                f,
                "key {k:?} could be read as another key (keys must be lower-case and unique)"
            ),
            Self::AmbiguousModel => f.write_str("`model` and `name` disagree, or are not strings"),
            Self::NoModel => f.write_str("the request names no model"),
        }
    }
}

/// An object's entries in order, duplicates kept (serde_json's map would merge them).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Go's `bytes.EqualFold` key folding, as far as it can reach ASCII field names.
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(|c| match c {
            '\u{212A}' => "k".chars().collect::<Vec<_>>(),
            '\u{017F}' => "s".chars().collect(),
            c => c.to_lowercase().collect(),
        })
        .collect()
}

/// Checks the keys of one object level; returns them as a JSON map.
fn unambiguous(entries: Vec<(String, Value)>) -> Result<serde_json::Map<String, Value>, BodyError> {
    let mut map = serde_json::Map::new();
    for (k, v) in entries {
        if fold(&k) != k || map.contains_key(&k) {
            return Err(BodyError::AmbiguousKey(k));
        }
        map.insert(k, v);
    }
    Ok(map)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub model: Option<String>,
    /// The body to forward (re-serialised).
    pub body: Vec<u8>,
}

/// Reads the model of a JSON request and caps its generation length at `cap`
/// tokens (when the route generates text).
pub fn inspect(route: &Route, body: &[u8], cap: Option<u64>) -> Result<Inspected, BodyError> {
    let entries: Entries = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            BodyError::NotAnObject
        } else {
            BodyError::NotJson(e.to_string())
        }
    })?;
    let mut top = unambiguous(entries.0)?;
    if let Some(options) = top.get("options").cloned()
        && options.is_object()
    {
        let entries: Entries =
            serde_json::from_value(options).map_err(|e| BodyError::NotJson(e.to_string()))?;
        top.insert("options".into(), Value::Object(unambiguous(entries.0)?));
    }
    let model = match route.model {
        ModelIn::Body => Some(model_of(&top, route.dialect)?),
        _ => None,
    };
    if let Some(cap) = cap {
        apply_cap(route, &mut top, cap);
    }
    Ok(Inspected {
        model,
        body: serde_json::to_vec(&Value::Object(top)).expect("a map serialises"),
    })
}

fn model_of(top: &serde_json::Map<String, Value>, dialect: Dialect) -> Result<String, BodyError> {
    let field = |k: &str| match top.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(BodyError::AmbiguousModel),
    };
    let model = field("model")?;
    // Native routes still accept the older `name` (show, pull, push, delete).
    let name = match dialect {
        Dialect::Native => field("name")?,
        _ => None,
    };
    match (model, name) {
        (Some(m), Some(n)) if m != n => Err(BodyError::AmbiguousModel),
        (Some(m), _) | (None, Some(m)) => Ok(m),
        (None, None) => Err(BodyError::NoModel),
    }
}

/// Generation routes: the length fields each dialect reads, capped (and set when absent).
fn apply_cap(route: &Route, top: &mut serde_json::Map<String, Value>, cap: u64) {
    let generates = !route.pattern.contains("embed") && route.model != ModelIn::None;
    if !generates || route.group != super::routes::Group::Inference {
        return;
    }
    let capped = |v: Option<&Value>| match v.and_then(Value::as_i64) {
        // Ollama: -1 is "no limit", -2 "fill the context".
        Some(n) if n >= 0 && (n as u64) <= cap => Value::from(n),
        _ => Value::from(cap),
    };
    match route.dialect {
        Dialect::Native => {
            let options = top
                .entry("options")
                .or_insert_with(|| Value::Object(Default::default()));
            if !options.is_object() {
                *options = Value::Object(Default::default());
            }
            let o = options.as_object_mut().expect("an object");
            let v = capped(o.get("num_predict"));
            o.insert("num_predict".into(), v);
        }
        Dialect::OpenAi | Dialect::Anthropic => {
            let fields: &[&str] = if route.pattern == "/v1/responses" {
                &["max_output_tokens"]
            } else if route.dialect == Dialect::Anthropic {
                &["max_tokens"]
            } else {
                &["max_tokens", "max_completion_tokens"]
            };
            for f in fields {
                if top.contains_key(*f) || *f == fields[0] {
                    let v = capped(top.get(*f));
                    top.insert((*f).into(), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::routes::find;
    use serde_json::json;

    fn route(p: &str) -> &'static Route {
        find("POST", p).unwrap().0
    }

    fn body(v: &str, p: &str, cap: Option<u64>) -> Result<(Option<String>, Value), BodyError> {
        inspect(route(p), v.as_bytes(), cap)
            .map(|i| (i.model, serde_json::from_slice(&i.body).unwrap()))
    }

    #[test]
    fn the_model_is_read_like_ollama_reads_it() {
        let (m, _) = body(r#"{"model":"llama3","prompt":"hi"}"#, "/api/generate", None).unwrap();
        assert_eq!(m.as_deref(), Some("llama3"));
        let (m, _) = body(r#"{"name":"llama3"}"#, "/api/show", None).unwrap();
        assert_eq!(m.as_deref(), Some("llama3"));
        let (m, _) = body(r#"{"model":"a","name":"a"}"#, "/api/show", None).unwrap();
        assert_eq!(m.as_deref(), Some("a"));
        // OpenAI routes have no `name` fallback; `name` is just another field there.
        let (m, _) = body(r#"{"model":"a","name":"b"}"#, "/v1/chat/completions", None).unwrap();
        assert_eq!(m.as_deref(), Some("a"));
    }

    #[test]
    fn second_readings_are_refused() {
        for (b, p, err) in [
            (
                r#"{"model":"ok","MODEL":"secret"}"#,
                "/api/chat",
                BodyError::AmbiguousKey("MODEL".into()),
            ),
            (
                r#"{"Model":"secret"}"#,
                "/api/chat",
                BodyError::AmbiguousKey("Model".into()),
            ),
            (
                r#"{"model":"ok","model":"secret"}"#,
                "/api/chat",
                BodyError::AmbiguousKey("model".into()),
            ),
            (
                "{\"model\":\"a\",\"max_to\u{212A}ens\":999999}",
                "/v1/chat/completions",
                BodyError::AmbiguousKey("max_to\u{212A}ens".into()),
            ),
            (
                r#"{"model":"a","options":{"num_predict":1,"NUM_PREDICT":-1}}"#,
                "/api/generate",
                BodyError::AmbiguousKey("NUM_PREDICT".into()),
            ),
            (
                r#"{"model":"a","name":"b"}"#,
                "/api/show",
                BodyError::AmbiguousModel,
            ),
            (r#"{"model":["a"]}"#, "/api/chat", BodyError::AmbiguousModel),
            (r#"{"prompt":"x"}"#, "/api/generate", BodyError::NoModel),
            (r#"{"model":""}"#, "/api/generate", BodyError::NoModel),
            (r#"["model","a"]"#, "/api/generate", BodyError::NotAnObject),
        ] {
            assert_eq!(body(b, p, None).unwrap_err(), err, "{b}");
        }
        assert!(matches!(
            body(r#"{"model":"a""#, "/api/chat", None).unwrap_err(),
            BodyError::NotJson(_)
        ));
    }

    #[test]
    fn generation_length_is_capped_in_each_dialect() {
        let (_, v) = body(r#"{"model":"a"}"#, "/api/generate", Some(256)).unwrap();
        assert_eq!(v["options"]["num_predict"], 256);
        let (_, v) = body(
            r#"{"model":"a","options":{"num_predict":-1,"temperature":0.2}}"#,
            "/api/chat",
            Some(256),
        )
        .unwrap();
        assert_eq!(
            v["options"],
            json!({"num_predict": 256, "temperature": 0.2})
        );
        let (_, v) = body(
            r#"{"model":"a","options":{"num_predict":10}}"#,
            "/api/chat",
            Some(256),
        )
        .unwrap();
        assert_eq!(v["options"]["num_predict"], 10, "smaller requests stand");
        let (_, v) = body(
            r#"{"model":"a","max_tokens":100000,"max_completion_tokens":5000}"#,
            "/v1/chat/completions",
            Some(256),
        )
        .unwrap();
        assert_eq!(
            (v["max_tokens"].clone(), v["max_completion_tokens"].clone()),
            (json!(256), json!(256))
        );
        let (_, v) = body(r#"{"model":"a"}"#, "/v1/responses", Some(64)).unwrap();
        assert_eq!(v["max_output_tokens"], 64);
        let (_, v) = body(
            r#"{"model":"a","max_tokens":4096}"#,
            "/v1/messages",
            Some(64),
        )
        .unwrap();
        assert_eq!(v["max_tokens"], 64);
        let (_, v) = body(r#"{"model":"a","input":"x"}"#, "/api/embed", Some(64)).unwrap();
        assert!(v.get("options").is_none(), "embeddings generate no tokens");
    }
}
