//! From paths on disk to policy text: files as given, directories as their `*.toml`
//! files (not recursive, sorted by name, hidden files skipped so editor lock files such
//! as `.#10-lab.toml` are never read as policy).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, LineIndex, Origin};
use crate::merge::{Fragment, merge};
use crate::model::Policy;
use crate::parse::parse_file;

/// One input to a merge: a file's text, or why it could not be read.
pub(crate) enum Source {
    Text {
        path: Arc<Path>,
        text: String,
    },
    Unreadable {
        path: Arc<Path>,
        diagnostic: Diagnostic,
    },
}

/// Checks a policy file's exact bytes before they are parsed (e.g. a signature);
/// `Err` carries the reason the file is refused.
pub type Verifier<'a> = &'a dyn Fn(&Path, &[u8]) -> Result<(), String>;

/// Expands `paths` into files and reads them; problems become [`Source::Unreadable`].
pub(crate) fn read_sources(paths: &[PathBuf], verify: Option<Verifier<'_>>) -> Vec<Source> {
    let mut files: Vec<Result<PathBuf, Source>> = Vec::new();
    for path in paths {
        match fs::metadata(path) {
            Err(e) => files.push(Err(unreadable(
                path,
                format!("cannot read policy path: {e}"),
            ))),
            Ok(meta) if meta.is_dir() => match toml_files_in(path) {
                Ok(found) if found.is_empty() => files.push(Err(unreadable(
                    path,
                    "directory contains no *.toml policy files".to_owned(),
                ))),
                Ok(found) => files.extend(found.into_iter().map(Ok)),
                Err(e) => files.push(Err(unreadable(path, format!("cannot list directory: {e}")))),
            },
            Ok(_) => files.push(Ok(path.clone())),
        }
    }
    // The same file named twice (`dir` and `dir/a.toml`) is read once, not merged with itself.
    let mut seen = HashSet::new();
    files
        .into_iter()
        .filter_map(|f| match f {
            Ok(path) => {
                let key = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                seen.insert(key).then(|| read_file(&path, verify))
            }
            Err(source) => Some(source),
        })
        .collect()
}

fn toml_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_policy = name
            .to_str()
            .is_some_and(|n| !n.starts_with('.') && n.ends_with(".toml"));
        // `fs::metadata` follows symlinks: a link to a policy file counts, a dangling one is an error below.
        if is_policy && !fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn read_file(path: &Path, verify: Option<Verifier<'_>>) -> Source {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return unreadable(path, format!("cannot read policy file: {e}")),
    };
    // The bytes verified are the bytes parsed: no window to swap the file between.
    if let Some(Err(reason)) = verify.map(|v| v(path, &bytes)) {
        return unreadable(path, reason);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Source::Text {
            path: Arc::from(path),
            text,
        },
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let (line, col) = LineIndex::new(&prefix).position(valid);
            let origin = Origin::new(Arc::from(path), line, col);
            let diagnostic =
                Diagnostic::new(origin, "policy files must be UTF-8; invalid byte here");
            Source::Unreadable {
                path: Arc::from(path),
                diagnostic,
            }
        }
    }
}

fn unreadable(path: &Path, message: String) -> Source {
    let path: Arc<Path> = Arc::from(path);
    let diagnostic = Diagnostic::new(Origin::start_of(path.clone()), message);
    Source::Unreadable { path, diagnostic }
}

/// Parses every source and merges them; all problems from all files in one list.
pub(crate) fn parse_and_merge(sources: Vec<Source>) -> Result<Policy, Vec<Diagnostic>> {
    if sources.is_empty() {
        let origin = Origin::start_of(Path::new("<arguments>"));
        return Err(vec![Diagnostic::new(origin, "no policy file given")]);
    }
    let mut fragments = Vec::with_capacity(sources.len());
    let mut diagnostics = Vec::new();
    for source in sources {
        match source {
            Source::Text { path, text } => {
                let (fragment, found) = parse_file(path, &text);
                fragments.push(fragment);
                diagnostics.extend(found);
            }
            Source::Unreadable { path, diagnostic } => {
                let mut fragment = Fragment::empty(path);
                fragment.complete = false;
                fragments.push(fragment);
                diagnostics.push(diagnostic);
            }
        }
    }
    merge(fragments, diagnostics)
}
