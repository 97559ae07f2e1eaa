//! Model names the way Ollama resolves them, and the allowlist globs matched
//! against them.
//!
//! Ollama reads `llama3`, `llama3:latest`, `library/llama3` and
//! `registry.ollama.ai/library/llama3:latest` as one model, and compares names
//! case-insensitively. Every spelling is reduced to one canonical form before an
//! allowlist is consulted, so no spelling reaches a model its short name could not.

use std::fmt;

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// Longest model name accepted (Ollama's own limit is about this size).
const MAX_NAME: usize = 350;

/// A model name in canonical form: lower-case, `[host/namespace/]model:tag`,
/// with the default host and namespace left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelName(String);

impl ModelName {
    /// Canonicalises a name as a request gives it; `None` if Ollama would not
    /// read it as a model name.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || raw.len() > MAX_NAME {
            return None;
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/');
        if !raw.chars().all(ok) {
            return None;
        }
        let lower = raw.to_ascii_lowercase();
        // The tag follows the last ':' after the last '/' (a host may carry a port).
        let last_slash = lower.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match lower[last_slash..].rfind(':') {
            Some(i) => (&lower[..last_slash + i], &lower[last_slash + i + 1..]),
            None => (lower.as_str(), DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *model),
            [namespace, model] => (DEFAULT_HOST, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => return None,
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with(['.', '-', '_'])
                && p.chars().all(|c| c != ':')
                && !p.contains("..")
        };
        // Only a host may carry a `:port`.
        let host_ok = match host.split_once(':') {
            Some((h, port)) => {
                part_ok(h) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            }
            None => part_ok(host),
        };
        if !host_ok || ![namespace, model, tag].into_iter().all(part_ok) {
            return None;
        }
        Some(Self(
            if host == DEFAULT_HOST && namespace == DEFAULT_NAMESPACE {
                format!("{model}:{tag}")
            } else {
                format!("{host}/{namespace}/{model}:{tag}")
            },
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `host/namespace/model:tag` even for the default registry's library.
    pub fn qualified(&self) -> String {
        match self.0.contains('/') {
            true => self.0.clone(),
            false => format!("{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/{}", self.0),
        }
    }

    /// A cloud model (`…:cloud`, `…-cloud`): it runs on ollama.com and spends
    /// the account the server is signed in to.
    pub fn is_cloud(&self) -> bool {
        self.0
            .rsplit_once(':')
            .is_some_and(|(_, tag)| tag.ends_with("cloud"))
    }
}

/// A registry allowlist entry (`pull_from`): a glob over qualified names,
/// e.g. `registry.ollama.ai/library/*` (the library's models, every tag) or
/// `registry.example.com:5000/team/*`. Wildcards stay within one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryGlob(String);

impl RegistryGlob {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.matches('/').count() != 2 {
            return Err(format!(
                "`{raw}` must name host/namespace/model (wildcards allowed, e.g. registry.ollama.ai/library/*)"
            ));
        }
        let glob = ModelGlob::parse(raw)?;
        let name = glob.0;
        Ok(Self(match name.contains('/') {
            true => name,
            false => format!("{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/{name}"),
        }))
    }

    pub fn matches(&self, name: &ModelName) -> bool {
        glob(self.0.as_bytes(), name.qualified().as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allowlist entry: a glob (`*` any run of characters, `?` one, neither
/// crossing `/` or `:`) over canonical names. A pattern without a tag matches
/// every tag of its models, except cloud tags (`…-cloud`, which run on
/// ollama.com under the server's account): those must be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelGlob(String);

impl ModelGlob {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "*" {
            return Ok(Self("*".into()));
        }
        // Canonicalise the pattern with its wildcards standing in as letters.
        let (a, b) = ("wildcardstar", "wildcardqmark");
        let probe = raw.replace('*', a).replace('?', b);
        let has_tag = raw
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        let name = ModelName::parse(&probe).ok_or_else(|| {
            format!("`{raw}` is not a model name or pattern (letters, digits, . - _ : / * ?)")
        })?;
        let mut glob = name.0.replace(a, "*").replace(b, "?");
        if !has_tag {
            let cut = glob.rfind(':').expect("canonical names carry a tag");
            glob.truncate(cut);
            glob.push_str(":*");
        }
        Ok(Self(glob))
    }

    pub fn matches(&self, name: &ModelName) -> bool {
        let tag_of = |s: &str| s.rsplit_once(':').map_or("", |(_, t)| t).to_owned();
        let cloud = tag_of(&name.0).ends_with("cloud");
        if cloud && self.0 != "*" && tag_of(&self.0).contains(['*', '?']) {
            return false;
        }
        glob(self.0.as_bytes(), name.0.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Iterative glob match with backtracking to the last `*` (linear in practice,
/// never exponential). Wildcards stay within one part of a name: they never
/// match `/` or `:`, so `llama3*` cannot reach another host, namespace or tag.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    if pattern == b"*" {
        return true;
    }
    let sep = |c: u8| c == b'/' || c == b':';
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if (c == b'?' && !sep(text[t])) || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) if !sep(text[st]) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                _ => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> String {
        ModelName::parse(s)
            .map(|n| n.0)
            .unwrap_or_else(|| "-".into())
    }

    #[test]
    fn spellings_of_one_model_are_one_name() {
        for s in [
            "llama3",
            "llama3:latest",
            "LLAMA3",
            "library/llama3",
            "registry.ollama.ai/library/llama3:latest",
            "Registry.Ollama.AI/Library/Llama3",
        ] {
            assert_eq!(name(s), "llama3:latest", "{s}");
        }
        assert_eq!(name("llama3:8b"), "llama3:8b");
        assert_eq!(name("me/tiny:q4"), "registry.ollama.ai/me/tiny:q4");
        assert_eq!(
            name("example.com:5000/team/model:v1"),
            "example.com:5000/team/model:v1"
        );
        for bad in [
            "",
            "a b",
            "../x",
            "a/b/c/d",
            "x:",
            ":x",
            "a//b",
            "a@sha256:1",
            "ünicode",
            "a%2fb",
        ] {
            assert_eq!(name(bad), "-", "{bad:?}");
        }
    }

    #[test]
    fn globs_match_canonical_names() {
        let g = |p: &str, n: &str| {
            ModelGlob::parse(p)
                .unwrap()
                .matches(&ModelName::parse(n).unwrap())
        };
        assert!(g("llama3*", "llama3"));
        assert!(g("llama3*", "llama3.1:70b"));
        assert!(g("llama3*", "registry.ollama.ai/library/llama3:8b"));
        assert!(g("nomic-embed-text", "nomic-embed-text:v1.5"));
        assert!(g("nomic-embed-text:latest", "NOMIC-embed-text"));
        assert!(!g("nomic-embed-text:latest", "nomic-embed-text:v1.5"));
        assert!(!g("llama3*", "mistral"));
        assert!(!g("llama3*", "evil.example/library/llama3"));
        assert!(g("*", "evil.example/library/llama3"));
        // Wildcards stay within one part of the name.
        assert!(!g("llama3", "llama3:5000/team/secret"));
        assert!(!g("llama3*", "llama3.corp.example/x/secret"));
        // Cloud models (run on ollama.com under the server's account) are
        // matched only by a pattern naming their tag.
        assert!(!g("gpt-oss", "gpt-oss:120b-cloud"));
        assert!(!g("gpt-oss:*", "gpt-oss:120b-cloud"));
        assert!(g("gpt-oss:120b-cloud", "gpt-oss:120b-cloud"));
        assert!(g("gpt-oss:120b", "gpt-oss:120b"));
        assert!(g("team/*", "team/anything:v2"));
        assert!(!g("team/*", "team/a/b"));
        assert!(g("qwen?:7b", "qwen2:7b"));
        assert!(!g("qwen?:7b", "qwen25:7b"));
        assert!(ModelGlob::parse("a b").is_err());
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(&b"*a".repeat(20), &[b'a'; 60]));
        assert!(!glob(&b"*a".repeat(20), &[b'a'; 10]));
    }

    #[test]
    fn registry_globs_match_qualified_names() {
        let name = |s: &str| ModelName::parse(s).unwrap();
        let library = RegistryGlob::parse("registry.ollama.ai/library/*").unwrap();
        assert!(library.matches(&name("llama3")));
        assert!(library.matches(&name("registry.ollama.ai/library/llama3:8b")));
        assert!(
            !library.matches(&name("someone/llama3")),
            "another namespace"
        );
        assert!(
            !library.matches(&name("evil.example.com/library/llama3")),
            "another registry"
        );
        let team = RegistryGlob::parse("registry.example.com:5000/team/*").unwrap();
        assert!(team.matches(&name("registry.example.com:5000/team/m:v2")));
        assert!(
            !team.matches(&name("registry.example.com/team/m")),
            "another port"
        );
        for bad in ["llama3", "library/*", "a/b/c/d", "*"] {
            assert!(RegistryGlob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cloud_models_are_told_by_their_tag() {
        let name = |s: &str| ModelName::parse(s).unwrap();
        assert!(name("gpt-oss:120b-cloud").is_cloud());
        assert!(name("qwen3-coder:cloud").is_cloud());
        assert!(!name("llama3").is_cloud());
        assert!(!name("cloudy:latest").is_cloud());
    }
}
