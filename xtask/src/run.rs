//! `cargo xtask build`, `cargo xtask run` and `cargo xtask demo`.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

/// `cargo build [--release]`, exactly: the workspace's default members, so
/// the binaries are the ones a plain `cargo build` made (a `--package warden`
/// build unifies dependency features differently and would rebuild them).
pub fn build(release: bool) -> Result<()> {
    let mut c = cmd::cargo();
    c.arg("build");
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)
}

/// Builds warden and the demo, then runs the demo as root (it builds its lab
/// of namespaces and cgroups, and removes it).
pub fn demo() -> Result<()> {
    crate::setup::run()?;
    build(false)?;
    cmd::run(cmd::cargo().args(["build", "--package", "warden-tests", "--bin", "demo"]))?;
    let root = cmd::workspace_root();
    let mut c = if cmd::is_root() {
        Command::new(root.join("target/debug/demo"))
    } else {
        let mut s = Command::new("sudo");
        s.arg(root.join("target/debug/demo"));
        s
    };
    c.env("WARDEN_BIN", root.join("target/debug/warden"));
    cmd::run(&mut c)
}

/// Builds release binaries, then runs the benchmarks as root; they rewrite
/// their sections of BENCHMARKS.md.
pub fn bench(names: &[String]) -> Result<()> {
    crate::setup::run()?;
    build(true)?;
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "--package",
        "warden-tests",
        "--bin",
        "bench",
    ]))?;
    let root = cmd::workspace_root();
    let mut c = if cmd::is_root() {
        Command::new(root.join("target/release/bench"))
    } else {
        let mut s = Command::new("sudo");
        s.arg(root.join("target/release/bench"));
        s
    };
    c.args(names)
        .env("WARDEN_BIN", root.join("target/release/warden"));
    cmd::run(&mut c)
}

/// Builds the release binary and packs it into `target/deb/` as a .deb
/// (packaging/deb/build.sh, plain dpkg-deb).
pub fn deb() -> Result<()> {
    build(true)?;
    let root = cmd::workspace_root();
    cmd::run(
        Command::new(root.join("packaging/deb/build.sh"))
            .arg(root.join("target/release/warden"))
            .arg(env!("CARGO_PKG_VERSION"))
            .arg(root.join("target/deb")),
    )
}

/// Builds, then runs `warden daemon` as root on its embedded default policy.
pub fn daemon(args: &[String]) -> Result<()> {
    crate::setup::run()?;
    build(true)?;
    let bin = cmd::workspace_root().join("target/release/warden");
    let mut c = if cmd::is_root() {
        Command::new(&bin)
    } else {
        let mut s = Command::new("sudo");
        s.arg(&bin);
        s
    };
    c.arg("daemon").args(args);
    cmd::run(&mut c)
}
