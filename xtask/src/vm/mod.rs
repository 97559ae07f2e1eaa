//! `cargo xtask vm`: the privileged suite on other kernels, and a systemd host,
//! in qemu guests. Nothing is installed or changed on the machine that runs it:
//! guests see the host's files read-only (or get their own disk image).
//!
//! Downloads and images are cached outside the workspace ([`cache_dir`]), so a
//! fresh clone reuses them; `target/vm/` holds each run's job, logs and console.

mod initramfs;
mod kernel;
mod qemu;
mod suite;
mod systemd;

use crate::cmd;
use anyhow::{Result, bail};
use std::path::PathBuf;

pub struct Args {
    pub kernels: Vec<String>,
    pub tests: Option<String>,
    pub systemd: bool,
    pub filter: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !cmd::is_root() {
        bail!("the guests run the privileged suite; run as root");
    }
    crate::setup::run()?;
    if args.systemd {
        return systemd::run();
    }
    suites(args)
}

/// `cargo xtask test`'s stages: the kernel smoke on one kernel, and the systemd host.
pub fn smoke(kernel: &str) -> Result<()> {
    suites(&Args {
        kernels: vec![kernel.to_owned()],
        tests: Some("smoke".into()),
        systemd: false,
        filter: Vec::new(),
    })
}

pub use systemd::run as systemd_host;

fn suites(args: &Args) -> Result<()> {
    let only: Option<Vec<(String, Vec<String>)>> = args.tests.as_deref().map(|t| match t {
        "smoke" => suite::SMOKE
            .iter()
            .map(|(b, f)| (b.to_string(), f.iter().map(|s| s.to_string()).collect()))
            .collect(),
        t => t.split(',').map(|b| (b.to_owned(), Vec::new())).collect(),
    });
    let names: Vec<String> = if args.kernels.is_empty() {
        kernel::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        args.kernels.clone()
    };
    let kernels = names
        .iter()
        .map(|n| kernel::resolve(n))
        .collect::<Result<Vec<_>>>()?;
    let bins = suite::build(only.as_deref())?;
    let (accel, _) = qemu::accelerator();
    let mut all_ok = true;
    let mut report = String::new();
    for k in &kernels {
        let dir = cmd::workspace_root().join("target/vm").join(&k.name);
        std::fs::create_dir_all(&dir)?;
        println!(
            "vm: {} ({}, {accel}): {} test binaries",
            k.name,
            k.release,
            bins.len()
        );
        let (outcomes, took) = match suite::run(k, &bins, &args.filter, &dir) {
            Ok(r) => r,
            Err(e) => {
                all_ok = false;
                report += &format!("\n{} ({}): {e:#}\n", k.name, k.release);
                continue;
            }
        };
        report += &format!(
            "\n{} ({}, {accel}): {:.0}s in the guest\n",
            k.name,
            k.release,
            took.as_secs_f64()
        );
        for o in &outcomes {
            all_ok &= o.ok();
            report += &o.summary(&dir.join("job/out"));
        }
    }
    println!("\n== xtask vm summary =={report}");
    if !all_ok {
        bail!("the suite failed in a guest");
    }
    Ok(())
}

/// Where kernels and root filesystems are kept between runs and clones:
/// `$WARDEN_VM_CACHE`, else `~/.cache/ollama-warden/vm`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WARDEN_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/ollama-warden/vm")
        })
}
