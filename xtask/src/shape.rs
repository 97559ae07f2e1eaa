//! `cargo xtask shape`: the workspace's crate graph and its longest functions,
//! the two figures a change of layout is judged by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use syn::visit::Visit;

/// Prints each workspace crate with the workspace crates it depends on, then the
/// `top` longest functions (lines from `fn` to the closing brace) of the
/// product's crates (not the test harness or xtask), tests excluded.
pub fn run(top: usize) -> Result<()> {
    let root = crate::cmd::workspace_root();
    let crates = print_graph(&root)?;
    let mut functions = Vec::new();
    for dir in crates {
        for file in rust_files(&dir.join("src")) {
            measure_file(&root, &file, &mut functions)?;
        }
    }
    functions.sort_by(|a, b| b.lines.cmp(&a.lines).then(a.name.cmp(&b.name)));
    println!("\nlongest functions (outside tests):");
    for f in functions.iter().take(top) {
        println!("{:5}  {}  {}", f.lines, f.name, f.place);
    }
    Ok(())
}

/// Prints the graph; returns the directories of the product's crates.
fn print_graph(root: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("cargo metadata")?;
    anyhow::ensure!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().context("no packages")?;
    let local: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut graph = BTreeMap::new();
    let mut dirs = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        if !matches!(name, "xtask" | "warden-tests")
            && let Some(dir) = p["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).parent())
        {
            dirs.push(dir.to_owned());
        }
        let mut deps: Vec<&str> = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|d| local.contains(d))
            .collect();
        deps.sort();
        deps.dedup();
        graph.insert(name, deps);
    }
    println!("crate graph (normal dependencies inside the workspace):");
    for (name, deps) in graph {
        println!(
            "  {name} -> {}",
            if deps.is_empty() {
                "-".to_string()
            } else {
                deps.join(", ")
            }
        );
    }
    Ok(dirs)
}

struct Function {
    name: String,
    place: String,
    lines: usize,
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn measure_file(root: &Path, file: &Path, out: &mut Vec<Function>) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let ast = syn::parse_file(&text).with_context(|| format!("parse {}", file.display()))?;
    let place = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut visitor = Lengths { place, out };
    visitor.visit_file(&ast);
    Ok(())
}

struct Lengths<'a> {
    place: String,
    out: &'a mut Vec<Function>,
}

impl Lengths<'_> {
    fn record(&mut self, name: &syn::Ident, block: &syn::Block) {
        let start = name.span().start().line;
        let end = block.brace_token.span.close().end().line;
        self.out.push(Function {
            name: name.to_string(),
            place: format!("{}:{start}", self.place),
            lines: end + 1 - start,
        });
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg")
                && a.meta
                    .require_list()
                    .is_ok_and(|l| l.tokens.to_string() == "test"))
    })
}

impl<'ast> Visit<'ast> for Lengths<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test(&f.attrs) {
            self.record(&f.sig.ident, &f.block);
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            self.record(&f.sig.ident, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
}
