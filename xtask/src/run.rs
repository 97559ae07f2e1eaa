//! `cargo xtask build` and `cargo xtask run`.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

pub fn build(release: bool) -> Result<()> {
    let mut c = cmd::cargo();
    c.args(["build", "--package", "warden"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)
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
