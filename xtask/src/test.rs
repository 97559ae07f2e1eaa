//! `cargo xtask test`: everything CI checks, in order, with a summary at the end.
//! A filter runs only the matching integration tests on the host (no guests).

use crate::cmd;
use anyhow::{Result, bail};
use std::time::Instant;

pub fn run(setup: bool, vms: bool, filter: Option<&str>) -> Result<()> {
    let mut results: Vec<(&str, bool, f64)> = Vec::new();
    let mut record = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
        let start = Instant::now();
        let r = f();
        if let Err(e) = &r {
            eprintln!("xtask test: {name} failed: {e:#}");
        }
        results.push((name, r.is_ok(), start.elapsed().as_secs_f64()));
        r.is_ok()
    };
    let ok = (!setup || record("setup", &mut crate::setup::run))
        && record("fmt", &mut || {
            cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))
        })
        && record("clippy", &mut || {
            // Clippy never runs the binary: skip building the eBPF object for it.
            cmd::run(cmd::cargo().env("AYA_BUILD_SKIP", "1").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--exclude",
                "warden-ebpf",
                "--",
                "-D",
                "warnings",
            ]))
        })
        && record("unit tests", &mut || cmd::run(cmd::cargo().arg("test")))
        && record("integration tests", &mut || {
            if !cmd::is_root() {
                bail!("the integration tests need root (network namespaces, cgroups, bpffs)");
            }
            crate::run::build(false)?;
            let mut c = cmd::cargo();
            c.env(
                "WARDEN_BIN",
                cmd::workspace_root().join("target/debug/warden"),
            );
            c.args([
                "test",
                "--package",
                "warden-tests",
                "--",
                "--test-threads=2",
            ]);
            if let Some(f) = filter {
                c.arg(f);
            }
            cmd::run(&mut c)
        })
        // Other kernels and a real systemd host, in qemu guests (`cargo xtask vm`).
        && (!vms || record("vm smoke 6.1", &mut || crate::vm::smoke("6.1")))
        && (!vms || record("vm smoke 6.12", &mut || crate::vm::smoke("6.12")))
        && (!vms || record("vm systemd host", &mut crate::vm::systemd_host));
    println!("\n== xtask test summary ==");
    for (name, passed, secs) in &results {
        println!(
            "  {:<18} {:<4} {secs:>7.1}s",
            name,
            if *passed { "ok" } else { "FAIL" }
        );
    }
    if !ok {
        bail!("tests failed");
    }
    Ok(())
}
