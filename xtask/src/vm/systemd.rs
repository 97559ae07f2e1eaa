//! A Debian 12 host with systemd as PID 1, booted on its own kernel (6.1) from
//! a root filesystem image made once by debootstrap and cached. Each run boots
//! a copy with a second disk holding the payload (two builds of the .deb, the
//! stand-in Ollama, tests/vm/systemd_check.py); the check runs as a oneshot
//! unit, writes its results to that disk and powers the guest off.

use super::{cache_dir, qemu::Qemu};
use crate::cmd;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SUITE: &str = "bookworm";
/// What the host has besides a minimal Debian: systemd, the tools the check
/// uses, and what the package recommends (nftables).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "kmod",
    "nftables",
    "python3",
    "curl",
    "openssl",
    "procps",
    "passwd",
];
/// Debian's cloud kernel: 6.1, with virtio and ext4 in its initrd.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Runs the payload's check at boot, then powers off whatever it found.
const CHECK_UNIT: &str = "\
[Unit]
Description=ollama-warden VM check (cargo xtask vm --systemd)
After=multi-user.target
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'mkdir -p /payload && mount /dev/vdb /payload && python3 /payload/systemd_check.py; sync; systemctl poweroff --no-block'
[Install]
WantedBy=multi-user.target
";
/// Changes whenever the image's recipe does (also the cache key's input).
const RECIPE: &str = "1";

pub fn run() -> Result<()> {
    let base = rootfs()?;
    let dir = cmd::workspace_root().join("target/vm/systemd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.img");
    cmd::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(base.join("root.img"))
            .arg(&disk),
    )?;
    let payload = payload(&dir)?;
    println!("vm: booting the systemd host (Debian {SUITE}, {KERNEL_PACKAGE})");
    let took = Qemu::new(
        &base.join("vmlinuz"),
        &base.join("initrd.img"),
        "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=false",
        2048,
    )
    .disk(&disk)
    .disk(&payload)
    .run(&dir.join("console.log"), Duration::from_secs(1200))?;
    let results = debugfs_cat(&payload, "/results.jsonl")?;
    let outcome = report(&results, took);
    if outcome.is_err() {
        println!(
            "--- the guest's journal (ollama*) ---\n{}",
            debugfs_cat(&payload, "/journal.txt")?
        );
    }
    outcome
}

/// The cached image: `<cache>/systemd-<key>/{root.img,vmlinuz,initrd.img}`.
fn rootfs() -> Result<PathBuf> {
    let mirror = mirror();
    let key = fnv(&format!(
        "{RECIPE}|{SUITE}|{mirror}|{}|{KERNEL_PACKAGE}|{CHECK_UNIT}",
        PACKAGES.join(",")
    ));
    let dir = cache_dir().join(format!("systemd-{key:016x}"));
    if dir.join("root.img").exists() {
        return Ok(dir);
    }
    println!("vm: building the systemd host's root filesystem (debootstrap {SUITE}, once)");
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(PACKAGES.join(","))
            .arg(SUITE)
            .arg(&root)
            .arg(&mirror),
    )?;
    // No services start in the chroot while the kernel is installed.
    let rc_d = root.join("usr/sbin/policy-rc.d");
    super::initramfs::write_executable(&rc_d, "#!/bin/sh\nexit 101\n")?;
    cmd::run(
        Command::new("chroot")
            .arg(&root)
            .args([
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                KERNEL_PACKAGE,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    std::fs::remove_file(&rc_d)?;
    std::fs::write(root.join("etc/fstab"), "/dev/vda / ext4 defaults 0 1\n")?;
    std::fs::write(root.join("etc/hostname"), "warden-vm\n")?;
    let units = root.join("etc/systemd/system");
    std::fs::write(units.join("warden-vm-check.service"), CHECK_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/warden-vm-check.service",
        wants.join("warden-vm-check.service"),
    )?;
    // The console belongs to the check's output.
    std::os::unix::fs::symlink("/dev/null", units.join("serial-getty@ttyS0.service"))?;
    let boot = root.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("no /boot/{prefix}* in the root filesystem"))
    };
    std::fs::copy(find("vmlinuz-")?, tmp.join("vmlinuz"))?;
    std::fs::copy(find("initrd.img-")?, tmp.join("initrd.img"))?;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "root", "-d"])
            .arg(&root)
            .arg(tmp.join("root.img"))
            .arg("3G"),
    )?;
    std::fs::remove_dir_all(&root)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Two versions of the .deb (install, then upgrade), the stand-in Ollama and
/// the check, on an ext4 image the guest mounts at /payload.
fn payload(dir: &Path) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    crate::run::build(false)?;
    let files = dir.join("payload");
    std::fs::create_dir_all(&files)?;
    for (version, name) in [("0.1.0~vm1", "v1.deb"), ("0.1.0~vm2", "v2.deb")] {
        let out = Command::new(root.join("packaging/deb/build.sh"))
            .arg(root.join("target/debug/warden"))
            .arg(version)
            .arg(dir.join("debs"))
            .output()?;
        if !out.status.success() {
            bail!(
                "packaging/deb/build.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        std::fs::rename(&deb, files.join(name))?;
    }
    for (src, name) in [
        ("tests/vm/systemd_check.py", "systemd_check.py"),
        ("tests/helpers/fake_ollama.py", "fake_ollama.py"),
    ] {
        std::fs::copy(root.join(src), files.join(name))?;
    }
    let img = dir.join("payload.img");
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "payload", "-d"])
            .arg(&files)
            .arg(&img)
            .arg("512M"),
    )?;
    Ok(img)
}

fn report(results: &str, took: Duration) -> Result<()> {
    println!(
        "\n== xtask vm --systemd: {:.0}s from boot to power-off ==",
        took.as_secs_f64()
    );
    let mut failed = 0;
    let mut done = false;
    for line in results.lines() {
        let r: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("result line {line:?}"))?;
        if r["check"] == "done" {
            done = true;
            continue;
        }
        let ok = r["ok"] == true;
        failed += usize::from(!ok);
        println!(
            "  {:<44} {:<4} {:>6.1}s  {}",
            r["check"].as_str().unwrap_or("?"),
            if ok { "ok" } else { "FAIL" },
            r["secs"].as_f64().unwrap_or(0.0),
            r["detail"].as_str().unwrap_or("")
        );
    }
    if failed > 0 || !done {
        bail!(
            "the systemd host check failed ({failed} failed{}); console: target/vm/systemd/console.log",
            if done { "" } else { ", did not finish" }
        );
    }
    Ok(())
}

/// A file from an ext4 image, without mounting it.
fn debugfs_cat(img: &Path, path: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .context("debugfs (package e2fsprogs)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian mirror this machine's apt uses (deb822 sources), else deb.debian.org.
fn mirror() -> String {
    std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .map(|u| u.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|u| u.ends_with("/debian"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// FNV-1a: a cache key, not a digest.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
