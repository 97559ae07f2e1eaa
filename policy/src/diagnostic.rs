//! Where a problem is and what it is: [`Origin`] (`file:line:col`) and [`Diagnostic`].
//!
//! Positions are 1-based; columns count characters, not bytes, so they match what an
//! editor shows for non-ASCII lines.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A position in a policy file: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl Origin {
    pub fn new(file: impl Into<Arc<Path>>, line: usize, col: usize) -> Self {
        Self {
            file: file.into(),
            line,
            col,
        }
    }

    /// `file:1:1`, for problems that concern a whole file (missing keys, unreadable file).
    pub fn start_of(file: impl Into<Arc<Path>>) -> Self {
        Self::new(file, 1, 1)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// Serialised as the `"file:line:col"` string, so `warden policy show` stays readable.
impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One problem in a policy, displayed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct Diagnostic {
    pub origin: Origin,
    pub message: String,
}

impl Diagnostic {
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        Self {
            origin,
            message: message.into(),
        }
    }
}

/// Turns byte offsets of one file's text into 1-based line and character column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
    /// Whether each line is pure ASCII.
    ascii_lines: Vec<bool>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        // Columns on an ASCII line are byte distances: no counting per lookup
        // (a 100k-element array on one line would otherwise cost seconds).
        let ascii_lines = line_starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = line_starts.get(i + 1).copied().unwrap_or(text.len());
                text.as_bytes()[start..end].is_ascii()
            })
            .collect();
        Self {
            text,
            line_starts,
            ascii_lines,
        }
    }

    /// `(line, col)` of a byte offset. An offset at or past the end points just after the
    /// last character (the same place toml_edit's own messages point at for "unexpected
    /// end of input"), not at a line that does not exist.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let len = self.text.len();
        if len > 0 && offset >= len {
            let (line, col) = self.position(len - 1);
            return (line, col + 1);
        }
        let mut offset = offset.min(len);
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
            - 1;
        let start = self.line_starts.get(line).copied().unwrap_or(0).min(offset);
        let col = if self.ascii_lines.get(line).copied().unwrap_or(false) {
            offset - start
        } else {
            self.text
                .get(start..offset)
                .map_or(0, |s| s.chars().count())
        } + 1;
        (line + 1, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let idx = LineIndex::new("ab\nçé = 1\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(3), (2, 1));
        // 'ç' and 'é' are two bytes each: byte 7 is the space after them, column 3.
        assert_eq!(idx.position(7), (2, 3));
        // Inside a multi-byte character: snaps back to its start.
        assert_eq!(idx.position(4), (2, 1));
    }

    #[test]
    fn end_of_input_points_after_the_last_character() {
        let idx = LineIndex::new("a = [1,\n  2\n");
        assert_eq!(idx.position(12), (2, 5));
        assert_eq!(idx.position(99), (2, 5));
        assert_eq!(LineIndex::new("").position(0), (1, 1));
        assert_eq!(LineIndex::new("é").position(2), (1, 2));
    }

    #[test]
    fn display_is_file_line_col_message() {
        let d = Diagnostic::new(Origin::new(Path::new("p/a.toml"), 3, 7), "bad");
        assert_eq!(d.to_string(), "p/a.toml:3:7: bad");
    }
}
