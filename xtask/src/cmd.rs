//! Small helpers for running commands and reporting what failed.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Runs a command with inherited stdio; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs an apt-get command; if it fails, refreshes the package lists (fresh
/// machines often have none) and runs it once more.
pub fn apt(what: &str, mut make: impl FnMut() -> Command) -> Result<()> {
    let mut attempt = || -> Result<bool> { Ok(make().status()?.success()) };
    if attempt()? {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    if !attempt()? {
        bail!("apt-get could not {what}");
    }
    Ok(())
}

/// Runs a command quietly and returns its trimmed stdout, or None if it fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
