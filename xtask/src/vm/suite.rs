//! The privileged integration suite inside a guest kernel: the same test
//! binaries `cargo xtask test` runs, with the host's tools over 9p.

use super::{initramfs, kernel::Kernel, qemu};
use crate::cmd;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The kernel smoke (CI runs it on each kernel): every program type enforcing
/// (XDP with the crafted frames, the sock_addr hooks with DNS steering and
/// recvmsg, cgroup_skb with the Community ID), `[[remote]]`, the packet
/// bypasses, pins surviving the daemon, and the nftables fallback. About a
/// dozen daemon starts: each costs ~25 s under emulation (the verifier).
pub const SMOKE: &[(&str, &[&str])] = &[
    (
        "ingress",
        &[
            "remote_sources_outside_the_allowlist_are_dropped",
            "crafted_frames_are_classified_or_dropped",
        ],
    ),
    (
        "local",
        &[
            "only_allowed_cgroups_connect_by_any_address_form",
            "only_server_cgroups_bind",
        ],
    ),
    (
        "egress",
        &["restricted_cgroup_reaches_only_its_allowed_destinations"],
    ),
    (
        "dns",
        &["host_rules_allow_what_dns_answers_for_the_name_and_nothing_else"],
    ),
    (
        "remote",
        &["a_remote_grant_reaches_other_hosts_and_never_this_one"],
    ),
    (
        "live",
        &["an_allowed_connection_carries_the_community_id_of_its_packets"],
    ),
    (
        "kernel_log",
        &["kernel_logs_are_absent_unless_asked_for_and_then_name_each_verdict"],
    ),
    (
        "bypass",
        &[
            "routing_header_cannot_take_packets_past_the_policy",
            "icmp_echo_sockets_carry_nothing_out",
            "mptcp_subflows_are_judged_by_the_socket_owner",
            "inbound_peers_are_judged_like_outbound_ones",
        ],
    ),
    (
        "lifecycle",
        &["enforcement_survives_sigkill_restart_adopts_and_down_removes"],
    ),
    (
        "parity",
        &["both_backends_give_the_same_verdicts_except_documented_gaps"],
    ),
];

pub struct TestBinary {
    pub name: String,
    pub path: PathBuf,
    /// libtest filters: the tests of this binary to run (all when empty).
    pub filters: Vec<String>,
}

/// Builds warden and the integration test binaries; returns those `only`
/// names (binary, filters), or all.
pub fn build(only: Option<&[(String, Vec<String>)]>) -> Result<Vec<TestBinary>> {
    crate::run::build(false)?;
    let out = cmd::cargo()
        .args(["test", "--package", "warden-tests", "--tests", "--no-run"])
        .args(["--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        anyhow::bail!("building the integration tests failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(exe), Some(name)) = (
            is_test,
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
        ) {
            let filters = match only {
                None => Some(Vec::new()),
                Some(o) => o.iter().find(|(n, _)| n == name).map(|(_, f)| f.clone()),
            };
            if let Some(filters) = filters {
                bins.push(TestBinary {
                    name: name.to_owned(),
                    path: exe.into(),
                    filters,
                });
            }
        }
    }
    if let Some(only) = only {
        for (want, _) in only {
            if !bins.iter().any(|b| &b.name == want) {
                anyhow::bail!("no integration test binary named `{want}` (tests/tests/{want}.rs)");
            }
        }
    }
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bins)
}

pub struct Outcome {
    pub binary: String,
    pub passed: usize,
    pub failed: Vec<String>,
    pub ignored: usize,
    pub secs: u64,
    /// False when the binary never finished (the guest was killed or crashed).
    pub finished: bool,
    pub exit: i32,
}

/// Boots `kernel` with `bins` staged in `dir` and runs each with `filter`
/// (instead of its own filters, when given).
pub fn run(
    kernel: &Kernel,
    bins: &[TestBinary],
    filter: &[String],
    dir: &Path,
) -> Result<(Vec<Outcome>, Duration)> {
    let job = dir.join("job");
    let _ = std::fs::remove_dir_all(&job);
    std::fs::create_dir_all(job.join("bin"))?;
    std::fs::create_dir_all(job.join("out"))?;
    let root = cmd::workspace_root();
    strip_into(&root.join("target/debug/warden"), &job.join("bin/warden"))?;
    for b in bins {
        strip_into(&b.path, &job.join("bin").join(&b.name))?;
    }
    std::fs::write(job.join("run.sh"), run_script(bins, filter, &root))?;
    let initrd = dir.join("initrd.cpio");
    initramfs::build(&kernel.modules, &initrd)?;
    let append = format!("console=ttyS0 panic=-1 quiet WARDEN_WS={}", root.display());
    let deadline = Duration::from_secs(600 + 300 * bins.len() as u64);
    let took = qemu::Qemu::new(&kernel.image, &initrd, &append, 3072)
        .share("usr", Path::new("/usr"), true)
        .share("etc", Path::new("/etc"), true)
        .share("ws", &root, true)
        .share("mods", &kernel.modules, true)
        .share("job", &job, false)
        .run(&dir.join("console.log"), deadline)?;
    let outcomes = bins
        .iter()
        .map(|b| outcome(&b.name, &job.join("out")))
        .collect::<Result<_>>()?;
    Ok((outcomes, took))
}

/// The guest's script: each binary in turn, one test at a time unless
/// `WARDEN_VM_TEST_THREADS` says otherwise (the guest has two vCPUs; a daemon
/// start keeps one busy verifying for seconds).
fn run_script(bins: &[TestBinary], filter: &[String], root: &Path) -> String {
    let mut s = String::from(
        "# Generated by `cargo xtask vm`.\n\
         cp -r /job/bin /tmp/bin\n\
         uname -r > /job/out/kernel\n",
    );
    // Waits for what must happen scale with the emulation's slowness; verdicts
    // never depend on them.
    let patience = if qemu::accelerator().0 == "kvm" {
        2
    } else {
        10
    };
    s += &format!("export WARDEN_TEST_PATIENCE={patience}\n");
    let threads: u32 = std::env::var("WARDEN_VM_TEST_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    s += &format!("cd {}/tests\n", shell_quote(&root.display().to_string()));
    for b in bins {
        let filters = if filter.is_empty() {
            &b.filters
        } else {
            filter
        };
        let filters: Vec<String> = filters.iter().map(|f| shell_quote(f)).collect();
        s += &format!(
            "echo 'vm: {name}' > /dev/console\n\
             start=$(date +%s)\n\
             WARDEN_BIN=/tmp/bin/warden RUST_BACKTRACE=1 /tmp/bin/{name} --test-threads={threads} {filter} \
             > /job/out/{name}.log 2>&1\n\
             echo \"$? $(( $(date +%s) - start ))\" > /job/out/{name}.rc\n",
            name = b.name,
            filter = filters.join(" "),
        );
    }
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies a binary without its debug info: a fraction of the bytes to move over 9p.
fn strip_into(src: &Path, dest: &Path) -> Result<()> {
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(dest),
    )
    .with_context(|| format!("copying {}", src.display()))
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.finished && self.exit == 0 && self.failed.is_empty()
    }

    /// One line for the binary, one per failed test (with the log under `out`).
    pub fn summary(&self, out: &Path) -> String {
        let note = if !self.finished {
            " (did not finish)".to_owned()
        } else if !self.ok() && self.failed.is_empty() {
            format!(" (exit {})", self.exit)
        } else {
            String::new()
        };
        let mut s = format!(
            "  {:<12} {:<4} {:>3} passed {:>2} failed {:>2} ignored {:>5}s{note}\n",
            self.binary,
            if self.ok() { "ok" } else { "FAIL" },
            self.passed,
            self.failed.len(),
            self.ignored,
            self.secs,
        );
        let log = out.join(format!("{}.log", self.binary));
        for f in &self.failed {
            s += &format!("      FAILED {f}  (log: {})\n", log.display());
        }
        s
    }
}

fn outcome(name: &str, out: &Path) -> Result<Outcome> {
    let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
    let rc = std::fs::read_to_string(out.join(format!("{name}.rc"))).ok();
    let mut o = Outcome {
        binary: name.to_owned(),
        passed: 0,
        failed: Vec::new(),
        ignored: 0,
        secs: 0,
        finished: rc.is_some(),
        exit: -1,
    };
    if let Some(rc) = rc {
        let mut it = rc
            .split_whitespace()
            .map(|v| v.parse::<i64>().unwrap_or(-1));
        o.exit = it.next().unwrap_or(-1) as i32;
        o.secs = it.next().unwrap_or(0).max(0) as u64;
    }
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        if rest.ends_with(" ... ok") {
            o.passed += 1;
        } else if let Some(test) = rest.strip_suffix(" ... FAILED") {
            o.failed.push(test.to_owned());
        } else if rest.ends_with(" ... ignored") {
            o.ignored += 1;
        }
    }
    Ok(o)
}
