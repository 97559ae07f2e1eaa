//! The invalid-policy corpus: every case under `policies/invalid/` must be rejected with
//! exactly the diagnostics its expectation file lists.
//!
//! - `NAME.toml` is one file; `NAME.expected` holds its diagnostics.
//! - `NAME/` is a multi-file case loaded as a directory (its `*.toml` files, sorted);
//!   `NAME/expected` holds the diagnostics.
//!
//! Paths in expectations are relative to the repository root, as `warden policy check
//! policies/invalid/NAME.toml` run from there would print them. After an intended change
//! of messages, regenerate with `WARDEN_BLESS=1 cargo test -p warden-policy --test corpus`
//! and review the diff.

use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::canonicalize(&root).unwrap_or(root)
}

/// The diagnostics for `case` (absolute), with the repository root stripped from paths.
fn diagnostics(root: &Path, case: &Path) -> String {
    match warden_policy::load_paths(&[case.to_path_buf()]) {
        Ok(_) => "<accepted>\n".to_owned(),
        Err(diagnostics) => {
            let prefix = format!("{}/", root.display());
            diagnostics
                .iter()
                .map(|d| format!("{}\n", d.to_string().replace(&prefix, "")))
                .collect()
        }
    }
}

#[test]
fn invalid_corpus() {
    let root = repo_root();
    let corpus = root.join("policies/invalid");
    let bless = std::env::var_os("WARDEN_BLESS").is_some();
    let mut entries: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();

    let mut cases = 0;
    let mut failures = Vec::new();
    for path in &entries {
        let expected_path = if path.is_dir() {
            path.join("expected")
        } else if path.extension().is_some_and(|e| e == "toml") {
            path.with_extension("expected")
        } else {
            let orphan = path.extension().is_some_and(|e| e == "expected")
                && !path.with_extension("toml").exists();
            assert!(!orphan, "{} has no matching .toml case", path.display());
            continue;
        };
        cases += 1;
        let actual = diagnostics(&root, path);
        let name = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        assert_ne!(
            actual, "<accepted>\n",
            "{name}: an invalid case was accepted"
        );
        if bless {
            fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if expected != actual {
            failures.push(format!(
                "== {name}\n-- expected\n{expected}-- actual\n{actual}"
            ));
        }
    }
    assert!(
        cases >= 17,
        "only {cases} corpus cases found in {}",
        corpus.display()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
