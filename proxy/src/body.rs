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
use serde_json::value::RawValue;
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
    /// Nested deeper than Go's decoder reads.
    TooDeep,
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
            Self::TooDeep => write!(f, "the body is nested deeper than {MAX_DEPTH} levels"),
        }
    }
}

/// An object's entries in order, duplicates kept (serde_json's map would
/// merge them), each value left as the raw bytes it is in the body: judging a
/// 16 MiB body of nested arrays costs no value tree, only a scan.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
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

/// One object level whose keys are unambiguous, in order; a value may be
/// replaced (the cap) without touching the others' bytes.
struct Object<'a> {
    entries: Vec<(String, Field<'a>)>,
}

enum Field<'a> {
    Raw(&'a RawValue),
    Set(Value),
    Object(Object<'a>),
}

impl<'a> Object<'a> {
    fn checked(entries: Entries<'a>) -> Result<Self, BodyError> {
        let mut out: Vec<(String, Field<'a>)> = Vec::with_capacity(entries.0.len());
        for (k, v) in entries.0 {
            if fold(&k) != k || out.iter().any(|(e, _)| *e == k) {
                return Err(BodyError::AmbiguousKey(k));
            }
            out.push((k, Field::Raw(v)));
        }
        Ok(Self { entries: out })
    }

    fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.entries.iter().find_map(|(k, v)| match v {
            Field::Raw(r) if k == key => Some(*r),
            _ => None,
        })
    }

    fn contains(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    fn set(&mut self, key: &str, field: Field<'a>) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = field,
            None => self.entries.push((key.to_owned(), field)),
        }
    }

    fn object_mut(&mut self, key: &str) -> Option<&mut Object<'a>> {
        self.entries.iter_mut().find_map(|(k, v)| match v {
            Field::Object(o) if k == key => Some(o),
            _ => None,
        })
    }

    /// The JSON text: untouched values byte for byte, keys re-escaped.
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k).expect("a string serialises");
            out.push(b':');
            match v {
                Field::Raw(r) => out.extend_from_slice(r.get().as_bytes()),
                Field::Set(v) => serde_json::to_writer(&mut *out, v).expect("a value serialises"),
                Field::Object(o) => o.write(out),
            }
        }
        out.push(b'}');
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub model: Option<String>,
    /// The body to forward: the bytes judged, with the cap applied.
    pub body: Vec<u8>,
}

/// Go's `encoding/json` refuses values nested deeper than this; so does the
/// proxy (serde_json skips a raw value at any depth without complaint).
const MAX_DEPTH: usize = 10_000;

/// Whether no array or object in `json` is nested deeper than `limit`
/// (brackets inside strings do not count). One pass, no allocation.
fn nesting_within(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn parse<'a>(bytes: &'a [u8]) -> Result<Object<'a>, BodyError> {
    let entries: Entries<'a> = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            BodyError::NotAnObject
        } else {
            BodyError::NotJson(e.to_string())
        }
    })?;
    Object::checked(entries)
}

/// Reads the model of a JSON request and caps its generation length at `cap`
/// tokens (when the route generates text). Memory: the body, the forwarded
/// copy (made only if `may_use` accepts the model: a refused request costs no
/// copy), and one pointer per key of the two levels read; values are scanned,
/// never built.
pub fn inspect(
    route: &Route,
    body: &[u8],
    cap: Option<u64>,
    may_use: impl Fn(&str) -> bool,
) -> Result<Inspected, BodyError> {
    if !nesting_within(body, MAX_DEPTH) {
        return Err(BodyError::TooDeep);
    }
    let mut top = parse(body)?;
    if let Some(options) = top.raw("options")
        && options.get().starts_with('{')
    {
        let options = parse(options.get().as_bytes())?;
        top.set("options", Field::Object(options));
    }
    let model = match route.model {
        ModelIn::Body => Some(model_of(&top, route.dialect)?),
        _ => None,
    };
    if model.as_deref().is_some_and(|m| !may_use(m)) {
        return Ok(Inspected {
            model,
            body: Vec::new(),
        });
    }
    if let Some(cap) = cap {
        apply_cap(route, &mut top, cap);
    }
    let mut out = Vec::with_capacity(body.len() + 32);
    top.write(&mut out);
    Ok(Inspected { model, body: out })
}

fn model_of(top: &Object, dialect: Dialect) -> Result<String, BodyError> {
    let field = |k: &str| match top.raw(k) {
        None => Ok(None),
        // null, or a string; anything else (a number, an object) is ambiguous.
        Some(r) => match serde_json::from_str::<Option<String>>(r.get()) {
            Ok(Some(s)) if !s.is_empty() => Ok(Some(s)),
            Ok(_) => Ok(None),
            Err(_) => Err(BodyError::AmbiguousModel),
        },
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
fn apply_cap(route: &Route, top: &mut Object, cap: u64) {
    let generates = !route.pattern.contains("embed") && route.model != ModelIn::None;
    if !generates || route.group != super::routes::Group::Inference {
        return;
    }
    // Only an integer is read; anything else is replaced by the cap.
    let capped =
        |v: Option<&RawValue>| match v.and_then(|r| serde_json::from_str::<i64>(r.get()).ok()) {
            // Ollama: -1 is "no limit", -2 "fill the context".
            Some(n) if n >= 0 && (n as u64) <= cap => Value::from(n),
            _ => Value::from(cap),
        };
    match route.dialect {
        Dialect::Native => {
            if top.object_mut("options").is_none() {
                top.set(
                    "options",
                    Field::Object(Object {
                        entries: Vec::new(),
                    }),
                );
            }
            let o = top.object_mut("options").expect("set above");
            let v = capped(o.raw("num_predict"));
            o.set("num_predict", Field::Set(v));
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
                if top.contains(f) || *f == fields[0] {
                    let v = capped(top.raw(f));
                    top.set(f, Field::Set(v));
                }
            }
        }
    }
}

/// The text a model is asked about in a (judged, forwarded) body: `prompt`,
/// `system`, `suffix`, `input`, and every string in `messages` (a message's
/// `content`, or the `text` of its parts), as each dialect sends them. Only
/// those fields are decoded; the rest stays raw.
pub fn prompt_texts(body: &[u8]) -> Vec<String> {
    let Ok(top) = parse(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in ["prompt", "system", "suffix", "input", "messages"] {
        if let Some(raw) = top.raw(key)
            && let Ok(v) = serde_json::from_str::<Value>(raw.get())
        {
            collect_text(&v, &mut out);
        }
    }
    out
}

fn collect_text(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(o) => {
            for key in ["content", "text", "prompt", "input"] {
                if let Some(x) = o.get(key) {
                    collect_text(x, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(nesting_within(br#"{"a":[[1]]}"#, 3));
        assert!(!nesting_within(br#"{"a":[[1]]}"#, 2));
        assert!(nesting_within(br#"{"a":"[[[[[[\"[[["}"#, 1));
        let deep = format!(
            "{{\"model\":\"x\",\"m\":{}{}}}",
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        assert_eq!(
            inspect(
                find("POST", "/api/chat").unwrap().0,
                deep.as_bytes(),
                None,
                |_| true
            ),
            Err(BodyError::TooDeep)
        );
    }
    use crate::routes::find;
    use serde_json::json;

    fn route(p: &str) -> &'static Route {
        find("POST", p).unwrap().0
    }

    fn body(v: &str, p: &str, cap: Option<u64>) -> Result<(Option<String>, Value), BodyError> {
        inspect(route(p), v.as_bytes(), cap, |_| true)
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
