//! `cargo xtask setup`: make a fresh machine able to build and test warden.
//!
//! Every step checks first and installs only what is missing, so a second run
//! takes seconds. A step that cannot install says what is missing and how to fix it.

use crate::cmd::{self, output};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian packages the build, the lab and the tests use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "bpftool",
    "procps",
    "curl",
    "python3-venv",
    "minisign",
    // A real syslog receiver for the sink tests (run privately by the tests).
    "rsyslog",
    // The proxy tests' throwaway PKI (tests/helpers/make-ca.sh).
    "openssl",
    // The proxy benchmark: its load generator, and the reverse proxy it is
    // compared with (run privately by the benchmark, never as a service).
    "wrk",
    "nginx",
    // `systemd-analyze security` scores the shipped units (tests/tests/units.rs).
    "systemd",
    // `cargo xtask vm`: guests under qemu, their initramfs (busybox, cpio, the
    // kernels' compressed modules), the systemd host's root filesystem, and
    // stripped copies of the test binaries.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "debootstrap",
    "e2fsprogs",
    "binutils",
];

/// While it exists, Debian maintainer scripts start no services: installing a
/// package must not leave a daemon (nginx, rsyslog) running on this machine.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run() -> Result<()> {
    let start = Instant::now();
    step("apt packages", apt_packages)?;
    step("nightly rust-src", rust_src)?;
    step("bpf-linker", bpf_linker)?;
    step("bpffs", bpffs)?;
    step("python test deps", python_venv)?;
    step("ECS field definitions", ecs_fields)?;
    println!("setup: ready in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn step(name: &str, f: fn() -> Result<String>) -> Result<()> {
    let start = Instant::now();
    let what = f().with_context(|| format!("setup step `{name}`"))?;
    println!(
        "setup: {name:<18} {what} ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apt_packages() -> Result<String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            // The status's third word: `unknown ok not-installed` is a package
            // dpkg has heard of, not one it has.
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| s.split_whitespace().nth(2) != Some("installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok("present".into());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages: {}; run as root or `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let ours = !std::path::Path::new(POLICY_RC_D).exists();
    if ours {
        std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(
            POLICY_RC_D,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    let result = install_missing(&missing);
    if ours {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result
}

fn install_missing(missing: &[&str]) -> Result<String> {
    cmd::apt(&format!("install {}", missing.join(" ")), || {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    })?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn nightly_sysroot() -> Result<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("no nightly toolchain: install it with `rustup toolchain install nightly`")
}

fn rust_src() -> Result<String> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok("present".into());
    }
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("could not add rust-src; it needs network access to static.rust-lang.org")?;
    Ok("installed".into())
}

/// bpf-linker must link against the same LLVM as the nightly rustc that emits the
/// bitcode, so it is built against the nightly toolchain's own libLLVM.
fn bpf_linker() -> Result<String> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        return Ok(format!("present ({v})"));
    }
    let sysroot = nightly_sysroot()?;
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let llvm = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` does not print an LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default();
    let lib = find_libllvm(&sysroot.join("lib"))?;
    // The linker keeps an rpath to this prefix, so it lives beside the cargo home.
    let prefix = cargo_home().join("warden-llvm").join(major);
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    for name in [
        "libLLVM.so".to_owned(),
        lib.file_name().unwrap().to_string_lossy().into_owned(),
    ] {
        let link = libdir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    cmd::run(
        Command::new("cargo")
            .args(["install", "--locked", "bpf-linker", "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| {
        format!(
            "building bpf-linker against LLVM {llvm} from {}",
            lib.display()
        )
    })?;
    Ok(format!("built against LLVM {llvm}"))
}

fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", dir.display()))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn bpffs() -> Result<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&"/sys/fs/bpf") && l.contains(" - bpf ")
    });
    if mounted {
        return Ok("mounted".into());
    }
    if !cmd::is_root() {
        bail!("bpffs is not mounted; run `sudo mount -t bpf -o mode=0700 bpf /sys/fs/bpf`");
    }
    // 0700, as systemd mounts it: without a mode bpffs is world-writable.
    cmd::run(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", "/sys/fs/bpf"]))?;
    Ok("mounted now".into())
}

/// Python packages the tests use (validators, real client libraries), in a venv
/// under `target/` so nothing outside the checkout changes.
const PYTHON_PACKAGES: &[&str] = &[
    "ocsf-json-schema==1.2.0",
    "jsonschema==4.23.0",
    "ollama==0.6.3",
    "openai==3.54.0",
    "httpx==0.28.1",
    // The metrics endpoints' output, read by the reference parser.
    "prometheus-client==0.21.1",
    // packaging/kubernetes/ checked against the Kubernetes API schemas.
    "kubernetes-validate==1.37.0",
];

pub fn python_venv_dir() -> PathBuf {
    cmd::workspace_root().join("target/pyenv")
}

/// The venv's interpreter: Debian's, which `cargo xtask vm` guests see too (a
/// per-user one, such as pyenv's under /root, is not on the shared /usr).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn python_venv() -> Result<String> {
    let venv = python_venv_dir();
    let python = venv.join("bin/python");
    let stamp = venv.join("warden-packages.txt");
    let wanted = format!("{SYSTEM_PYTHON}\n{}", PYTHON_PACKAGES.join("\n"));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok("present".into());
    }
    // Made again from scratch: an older venv may have another interpreter.
    let _ = std::fs::remove_dir_all(&venv);
    cmd::run(Command::new(SYSTEM_PYTHON).arg("-m").arg("venv").arg(&venv))
        .context("creating the test venv needs python3-venv")?;
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )
    .context("pip install of the test packages (needs PyPI)")?;
    std::fs::write(&stamp, wanted)?;
    Ok(format!("installed {}", PYTHON_PACKAGES.join(" ")))
}

/// The published ECS field definitions (`ecs_flat.yml` of ECS 8.11, as carried by
/// Elastic's `@elastic/ecs` npm package), as JSON for the ECS validation test.
const ECS_PACKAGE: &str = "@elastic/ecs@8.11.5";

pub fn ecs_fields_path() -> PathBuf {
    cmd::workspace_root().join("target/ecs/ecs_flat.json")
}

fn ecs_fields() -> Result<String> {
    let out = ecs_fields_path();
    if out.exists() {
        return Ok("present".into());
    }
    let dir = out.parent().expect("has a parent").to_owned();
    std::fs::create_dir_all(&dir)?;
    cmd::run(
        Command::new("npm")
            .args(["pack", "--silent", ECS_PACKAGE])
            .current_dir(&dir),
    )
    .context("npm (Node.js) fetches the ECS field definitions; install nodejs and npm")?;
    cmd::run(
        Command::new("tar")
            .args(["xzf", "elastic-ecs-8.11.5.tgz"])
            .current_dir(&dir),
    )?;
    let json = output(
        Command::new("node")
            .arg("-e")
            .arg(
                "const m=require('./package/build/commonjs/index.js');\
                 process.stdout.write(JSON.stringify({ecs_version:m.EcsVersion,fields:m.EcsFlat}))",
            )
            .current_dir(&dir),
    )
    .context("node could not read the @elastic/ecs package")?;
    std::fs::write(&out, json)?;
    Ok(format!("fetched {ECS_PACKAGE}"))
}
