//! Request targets made unambiguous before they are judged.
//!
//! Ollama decodes percent-encoding before routing (so `/api%2Fpull` reaches the
//! pull handler), Go's ServeMux redirects non-clean paths (`//`, `/./`, `/../`)
//! and gin redirects trailing slashes. A proxy that judges the raw path and
//! forwards it lets the upstream read it differently. So a path is accepted only
//! if it has exactly one reading: percent-encoded unreserved characters are
//! decoded (RFC 3986 §6.2.2.2), and everything that the upstream could read
//! another way — an encoded `/`, `\`, `%`, control or non-ASCII byte, a dot
//! segment, an empty segment, a trailing slash, a backslash — is refused. The
//! canonical path is what the route table judges and what is forwarded.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub path: String,
    /// The query, verbatim (validated): no Ollama route reads it for routing.
    pub query: Option<String>,
}

impl Canonical {
    /// `path[?query]`, as forwarded.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    NotOriginForm,
    BadPercentEncoding,
    EncodedDelimiter,
    DotSegment,
    EmptySegment,
    TrailingSlash,
    Backslash,
    ForbiddenCharacter,
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotOriginForm => "the request target must be a path starting with `/`",
            Self::BadPercentEncoding => "malformed percent-encoding",
            Self::EncodedDelimiter => {
                "a percent-encoded delimiter, `%`, control or non-ASCII byte in the path"
            }
            Self::DotSegment => "a `.` or `..` segment in the path",
            Self::EmptySegment => "an empty segment (`//`) in the path",
            Self::TrailingSlash => "a trailing `/` in the path",
            Self::Backslash => "a backslash in the path",
            Self::ForbiddenCharacter => "a character not allowed in a URL path or query",
        })
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%` (handled separately).
fn pchar(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The one reading of `target` (origin-form `path[?query]`), or why it has more.
pub fn canonicalize(target: &str) -> Result<Canonical, Ambiguity> {
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !raw_path.starts_with('/') {
        return Err(Ambiguity::NotOriginForm);
    }
    let bytes = raw_path.as_bytes();
    let mut path = String::with_capacity(raw_path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Ambiguity::BadPercentEncoding);
                };
                let decoded = h << 4 | l;
                if !unreserved(decoded) {
                    return Err(Ambiguity::EncodedDelimiter);
                }
                path.push(decoded as char);
                i += 3;
            }
            b'\\' => return Err(Ambiguity::Backslash),
            b'/' => {
                path.push('/');
                i += 1;
            }
            _ if pchar(b) => {
                path.push(b as char);
                i += 1;
            }
            _ => return Err(Ambiguity::ForbiddenCharacter),
        }
    }
    if path != "/" {
        if path.ends_with('/') {
            return Err(Ambiguity::TrailingSlash);
        }
        for seg in path[1..].split('/') {
            match seg {
                "" => return Err(Ambiguity::EmptySegment),
                "." | ".." => return Err(Ambiguity::DotSegment),
                _ => {}
            }
        }
    }
    if let Some(q) = query {
        let ok = q
            .bytes()
            .all(|b| pchar(b) || matches!(b, b'/' | b'?' | b'%'));
        if !ok || q.contains('#') {
            return Err(Ambiguity::ForbiddenCharacter);
        }
    }
    Ok(Canonical {
        path,
        query: query.filter(|q| !q.is_empty()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) -> String {
        canonicalize(t).unwrap().target()
    }

    fn refused(t: &str) -> Ambiguity {
        canonicalize(t).unwrap_err()
    }

    #[test]
    fn plain_and_unreserved_encodings_have_one_reading() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/api/chat"), "/api/chat");
        assert_eq!(ok("/%61pi/ch%61t"), "/api/chat");
        assert_eq!(ok("/v1/models/llama3:8b"), "/v1/models/llama3:8b");
        assert_eq!(ok("/v1/models/qwen2.5%7Ecoder"), "/v1/models/qwen2.5~coder");
        assert_eq!(ok("/api/tags?"), "/api/tags");
        assert_eq!(ok("/api/tags?x=1&y=%20"), "/api/tags?x=1&y=%20");
    }

    #[test]
    fn every_second_reading_is_refused() {
        use Ambiguity::*;
        for (t, why) in [
            ("/api%2Fpull", EncodedDelimiter),
            ("/api%2fpull", EncodedDelimiter),
            ("/api/%70ull%2F", EncodedDelimiter),
            ("/api/pull%00", EncodedDelimiter),
            ("/api/pull%3Fx", EncodedDelimiter),
            ("/api/pull%23", EncodedDelimiter),
            ("/api/%252Fpull", EncodedDelimiter),
            ("/api/pull%5C", EncodedDelimiter),
            ("/api/%C3%A9", EncodedDelimiter),
            ("/api/pull%2", BadPercentEncoding),
            ("/api/pull%zz", BadPercentEncoding),
            ("/api//pull", EmptySegment),
            ("//api/pull", EmptySegment),
            ("/api/./pull", DotSegment),
            ("/api/chat/../pull", DotSegment),
            ("/api/chat/%2e%2e/pull", DotSegment),
            ("/api/chat/.%2E/pull", DotSegment),
            ("/api/pull/", TrailingSlash),
            ("/api/pull/.", DotSegment),
            ("/api\\pull", Backslash),
            ("/api/pull#frag", ForbiddenCharacter),
            ("/api/pu ll", ForbiddenCharacter),
            ("/api/pull\t", ForbiddenCharacter),
            ("/api/tags?a=b#c", ForbiddenCharacter),
            ("/api/tags?a\"", ForbiddenCharacter),
            ("api/pull", NotOriginForm),
            ("http://127.0.0.1:11434/api/pull", NotOriginForm),
            ("*", NotOriginForm),
        ] {
            assert_eq!(refused(t), why, "{t}");
        }
    }
}
