//! The suite VMs' initramfs: busybox, [`INIT`], and the few modules it needs
//! before the host's /usr is mounted (virtio, 9p, overlay), decompressed
//! because busybox's insmod reads only plain .ko files.

use crate::cmd;
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// PID 1 in the guest (`init.sh`).
const INIT: &str = include_str!("init.sh");

/// Loaded in this order with their dependencies first; a module built into
/// the kernel is skipped.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Writes `out` (an uncompressed newc cpio). Mount points the guest needs
/// beyond these are made by `init.sh` (the workspace's, in the right tmpfs).
pub fn build(modules: &Path, out: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "usr",
        "etc",
        "root",
        "modules",
        "job",
        "var/tmp",
        "var/lib",
        "var/log",
        "var/cache",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    // Debian's merged /usr: the host's binaries and libraries are found once
    // /usr is mounted.
    for l in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l))?;
    }
    std::fs::copy("/usr/bin/busybox", root.join("busybox"))
        .context("busybox-static is not installed")?;
    write_executable(&root.join("init"), INIT)?;
    let order = boot_modules(modules, &root.join("modules"))?;
    std::fs::write(root.join("modules/order"), order.join("\n") + "\n")?;
    cmd::run(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio --quiet -o -H newc > '{}'",
                out.display()
            ))
            .current_dir(&root),
    )?;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Copies [`BOOT_MODULES`] and what they depend on (modules.dep) into `dest`,
/// decompressed; returns their file names in load order.
fn boot_modules(modules: &Path, dest: &Path) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("{}/modules.dep", modules.display()))?;
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let by_name: HashMap<String, &str> = deps.keys().map(|m| (module_name(m), *m)).collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for want in BOOT_MODULES {
        match by_name.get(*want) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.lines().any(|l| module_name(l) == *want) => {}
            None => bail!("module {want} is neither in modules.dep nor built in"),
        }
    }
    order
        .iter()
        .map(|rel| {
            let name = format!("{}.ko", module_name(rel));
            decompress(&modules.join(rel), &dest.join(&name))?;
            Ok(name)
        })
        .collect()
}

fn visit<'a>(
    m: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    seen: &mut HashSet<&'a str>,
    order: &mut Vec<&'a str>,
) {
    if !seen.insert(m) {
        return;
    }
    for d in deps.get(m).into_iter().flatten() {
        visit(d, deps, seen, order);
    }
    order.push(m);
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; dashes and underscores are the same to the kernel.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn decompress(src: &Path, dest: &Path) -> Result<()> {
    let tool = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            std::fs::copy(src, dest)?;
            return Ok(());
        }
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .output()
        .with_context(|| format!("{tool} (for {})", src.display()))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", src.display());
    }
    std::fs::write(dest, out.stdout)?;
    Ok(())
}

pub fn write_executable(path: &PathBuf, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
