//! Reading a span-preserving toml_edit document (shared by every warden config file):
//! tables written as `[t]` or `{ … }`,
//! arrays of tables written as `[[t]]` or `[{ … }]`, unknown keys with a "did you mean",
//! and positions for every diagnostic.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml_edit::{InlineTable, Item, Key, Table, Value};

use crate::diagnostic::{Diagnostic, LineIndex, Origin};

/// One file being checked: turns spans into [`Origin`]s and collects diagnostics.
pub struct FileCtx<'a> {
    pub file: Arc<Path>,
    lines: LineIndex<'a>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> FileCtx<'a> {
    pub fn new(file: Arc<Path>, text: &'a str) -> Self {
        Self {
            file,
            lines: LineIndex::new(text),
            diagnostics: Vec::new(),
        }
    }

    pub fn origin(&self, span: Option<Range<usize>>) -> Origin {
        let (line, col) = span.map_or((1, 1), |s| self.lines.position(s.start));
        Origin::new(self.file.clone(), line, col)
    }

    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let origin = self.origin(span);
        self.error_at(origin, message);
    }

    pub fn error_at(&mut self, origin: Origin, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(origin, message));
    }
}

/// A key and its value, with the best span for pointing at the value.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub key: &'a Key,
    pub item: &'a Item,
}

impl<'a> Entry<'a> {
    /// The value's span, or the key's when the value has none (implicit dotted tables).
    pub fn span(&self) -> Option<Range<usize>> {
        self.item.span().or_else(|| self.key.span())
    }

    pub fn value(&self) -> Option<&'a Value> {
        self.item.as_value()
    }
}

/// A table however it was written: `[name]`, dotted keys, or `{ inline }`.
#[derive(Clone, Copy)]
pub enum TableRef<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
}

impl<'a> TableRef<'a> {
    pub fn from_item(item: &'a Item) -> Option<Self> {
        match item {
            Item::Table(t) => Some(TableRef::Table(t)),
            Item::Value(Value::InlineTable(t)) => Some(TableRef::Inline(t)),
            _ => None,
        }
    }

    pub fn span(&self) -> Option<Range<usize>> {
        match self {
            TableRef::Table(t) => t.span(),
            TableRef::Inline(t) => t.span(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Entry<'a>> {
        let (key, item) = match self {
            TableRef::Table(t) => t.get_key_value(name)?,
            TableRef::Inline(t) => t.get_key_value(name)?,
        };
        if item.is_none() {
            return None;
        }
        Some(Entry { key, item })
    }

    /// Every key in the order written.
    pub fn entries(&self) -> Vec<Entry<'a>> {
        let names: Vec<&str> = match self {
            TableRef::Table(t) => t.iter().map(|(k, _)| k).collect(),
            TableRef::Inline(t) => t.iter().map(|(k, _)| k).collect(),
        };
        names.into_iter().filter_map(|n| self.get(n)).collect()
    }

    /// Reports every key not in `known`; `context` names the table ("in [ingress]").
    pub fn check_keys(&self, ctx: &mut FileCtx<'_>, known: &[&str], context: &str) {
        for entry in self.entries() {
            let name = entry.key.get();
            if known.contains(&name) {
                continue;
            }
            let mut message = format!(
                "unknown key `{name}` {context}; expected one of: {}",
                known.join(", ")
            );
            if let Some(suggestion) = closest(name, known) {
                message.push_str(&format!(" (did you mean `{suggestion}`?)"));
            }
            ctx.error(entry.key.span().or_else(|| entry.span()), message);
        }
    }
}

/// Elements of an array of tables however it was written: `[[name]]` blocks or an
/// inline array of inline tables. `None` if the item is neither; elements of an inline
/// array that are not tables come back as `Err(value)`.
pub fn array_of_tables(item: &Item) -> Option<Vec<Result<TableRef<'_>, &Value>>> {
    match item {
        Item::ArrayOfTables(a) => Some(a.iter().map(|t| Ok(TableRef::Table(t))).collect()),
        Item::Value(Value::Array(a)) => Some(
            a.iter()
                .map(|v| match v {
                    Value::InlineTable(t) => Ok(TableRef::Inline(t)),
                    other => Err(other),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// TOML's name for what was written, for "must be X, found Y" messages.
pub fn type_name(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => v.type_name(),
        Item::Table(t) if t.is_dotted() => "dotted-key table",
        other => other.type_name(),
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
pub fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_lowercase();
    // A key and its abbreviation or extension (`protocol` for `proto`) are a near miss too.
    let prefixes = |k: &str| lower.len() >= 3 && (k.starts_with(&lower) || lower.starts_with(k));
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 1 || (*d == 2 && k.chars().count() >= 5) || prefixes(k))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters; inputs are key names, so quadratic is fine, but
/// long keys are capped so hostile input cannot make it slow.
fn edit_distance(a: &str, b: &str) -> usize {
    const CAP: usize = 64;
    let a: Vec<char> = a.chars().take(CAP).collect();
    let b: Vec<char> = b.chars().take(CAP).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_near_misses() {
        let known = ["interfaces", "allow", "port"];
        assert_eq!(closest("alow", &known), Some("allow"));
        assert_eq!(closest("Allow", &known), Some("allow"));
        assert_eq!(closest("ports", &known), Some("port"));
        assert_eq!(closest("interface", &known), Some("interfaces"));
        assert_eq!(closest("deny", &known), None);
        assert_eq!(
            closest("protocol", &["net", "ports", "proto"]),
            Some("proto")
        );
        assert_eq!(closest("por", &["net", "ports", "proto"]), Some("ports"));
        assert_eq!(closest("x", &["net"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
