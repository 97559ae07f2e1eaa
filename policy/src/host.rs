//! Host names in egress rules: `registry.ollama.ai` (exactly that name) or
//! `*.r2.cloudflarestorage.com` (one label, any, in front of the rest).
//!
//! The kernel enforces addresses, so a name is allowed through the addresses
//! DNS answers for it (the daemon's resolver learns them). Names are compared
//! in lowercase, without the root's trailing dot.

use std::fmt;

use serde::{Serialize, Serializer};

/// A checked host name or leading-wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    /// Lowercase, no trailing dot; for a wildcard, the part after `*.`.
    name: String,
    wildcard: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host name")]
    Empty,
    #[error("`{0}` is an address: write it as `net = \"{0}\"`")]
    Address(String),
    #[error("`*` may only be the whole first label (`*.example.com`)")]
    WildcardPlace,
    #[error(
        "`{0}` would allow every name under a top-level domain: name the domain (`*.example.{0}`)"
    )]
    WildcardTooWide(String),
    #[error("empty label in `{0}` (two dots, or a leading dot)")]
    EmptyLabel(String),
    #[error("label `{0}` is longer than 63 bytes")]
    LongLabel(String),
    #[error("`{0}` is longer than 253 bytes")]
    LongName(String),
    #[error("`{0}` has a character a host name cannot have (letters, digits, `-` and `_` only)")]
    Character(String),
    #[error("label `{0}` starts or ends with `-`")]
    Hyphen(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, HostError> {
        let lower = raw.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(HostError::Empty);
        }
        if lower.parse::<std::net::IpAddr>().is_ok() || lower.contains('/') && ipnet_like(&lower) {
            return Err(HostError::Address(raw.to_owned()));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower.clone()),
        };
        if name.contains('*') {
            return Err(HostError::WildcardPlace);
        }
        if name.len() > 253 {
            return Err(HostError::LongName(raw.to_owned()));
        }
        for label in name.split('.') {
            check_label(label, raw)?;
        }
        if wildcard && !name.contains('.') {
            return Err(HostError::WildcardTooWide(name));
        }
        Ok(Self { name, wildcard })
    }

    /// Whether `qname` (any case, trailing dot or not) is a name this allows.
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.trim_end_matches('.');
        if !self.wildcard {
            return q.eq_ignore_ascii_case(&self.name);
        }
        // One label, then `.name`.
        let Some(split) = q.len().checked_sub(self.name.len() + 1) else {
            return false;
        };
        let (label, rest) = q.split_at(split);
        !label.is_empty()
            && !label.contains('.')
            && rest.as_bytes()[0] == b'.'
            && rest[1..].eq_ignore_ascii_case(&self.name)
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

fn ipnet_like(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(a, _)| a.parse::<std::net::IpAddr>().is_ok())
}

fn check_label(label: &str, raw: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel(raw.to_owned()));
    }
    if label.len() > 63 {
        return Err(HostError::LongLabel(label.to_owned()));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(HostError::Character(raw.to_owned()));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::Hyphen(label.to_owned()));
    }
    Ok(())
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wildcards_match_what_they_say() {
        let exact = HostPattern::parse("Registry.Ollama.AI.").unwrap();
        assert_eq!(exact.to_string(), "registry.ollama.ai");
        assert!(exact.matches("registry.ollama.ai"));
        assert!(exact.matches("REGISTRY.ollama.ai."));
        assert!(!exact.matches("x.registry.ollama.ai"));
        assert!(!exact.matches("registry.ollama.ai.evil.com"));
        assert!(!exact.matches("ollama.ai"));

        let wild = HostPattern::parse("*.r2.cloudflarestorage.com").unwrap();
        assert!(wild.matches("abc.r2.cloudflarestorage.com"));
        assert!(wild.matches("ABC.r2.cloudflarestorage.com."));
        assert!(
            !wild.matches("r2.cloudflarestorage.com"),
            "the domain itself"
        );
        assert!(
            !wild.matches("a.b.r2.cloudflarestorage.com"),
            "one label only"
        );
        assert!(!wild.matches("xr2.cloudflarestorage.com"));
        assert!(!wild.matches(".r2.cloudflarestorage.com"));
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let err = |s: &str| HostPattern::parse(s).unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert!(err("10.0.0.1").contains("net = \"10.0.0.1\""));
        assert!(err("10.0.0.0/8").contains("is an address"));
        assert!(err("a.*.example.com").contains("whole first label"));
        assert!(err("*example.com").contains("whole first label"));
        assert!(err("*.com").contains("top-level"));
        assert!(err("a..b").contains("empty label"));
        assert!(err("exa mple.com").contains("character"));
        assert!(err("-a.example.com").contains("`-`"));
        assert!(err(&format!("{}.com", "a".repeat(64))).contains("63"));
    }
}
