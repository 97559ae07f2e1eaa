//! Guest kernels: Debian's packaged kernels, downloaded once and unpacked into
//! the VM cache, or the host's own when its image is on disk.

use super::cache_dir;
use crate::cmd;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Short names for the kernels operators run (docs/OPERATIONS.md, "Kernels"):
/// Debian 12 and Amazon Linux 2023 ship 6.1; Debian 13 and RHEL 10 ship 6.12.
const DEBIAN_KERNELS: &[(&str, &str)] = &[
    ("6.1", "linux-image-6.1.0-57-amd64"),
    ("6.12", "linux-image-6.12.117+deb12-amd64"),
];

/// The kernels `cargo xtask vm` boots when none is named.
pub const DEFAULT: &[&str] = &["6.1", "6.12"];

pub struct Kernel {
    /// What the user called it (`6.1`, a package name, `host`).
    pub name: String,
    /// Its `uname -r`.
    pub release: String,
    pub image: PathBuf,
    /// `lib/modules/<release>`, with a modules.dep.
    pub modules: PathBuf,
}

pub fn resolve(name: &str) -> Result<Kernel> {
    if name == "host" {
        return host();
    }
    let package = DEBIAN_KERNELS
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, p)| *p)
        .or_else(|| name.starts_with("linux-image-").then_some(name))
        .with_context(|| {
            let known: Vec<&str> = DEBIAN_KERNELS.iter().map(|(a, _)| *a).collect();
            format!(
                "unknown kernel `{name}`: use {}, `host`, or a Debian linux-image-* package name",
                known.join(", ")
            )
        })?;
    let dir = cache_dir().join("kernels").join(package);
    if !dir.join(".ready").exists() {
        unpack(package, &dir)?;
    }
    let modules = modules_dir(&dir)?;
    let release = file_name(&modules);
    Ok(Kernel {
        name: name.to_owned(),
        image: dir.join(format!("boot/vmlinuz-{release}")),
        modules,
        release,
    })
}

/// The running kernel, where its image and modules are on this machine (many
/// cloud and nested machines boot a kernel that is not on their disk).
fn host() -> Result<Kernel> {
    let release = cmd::output(Command::new("uname").arg("-r")).context("uname -r")?;
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    let modules = PathBuf::from(format!("/lib/modules/{release}"));
    if !image.exists() || !modules.join("modules.dep").exists() {
        bail!(
            "the host's kernel {release} is not on this machine ({} or {} missing): \
             its result is the one `cargo xtask test` gives on the host itself",
            image.display(),
            modules.join("modules.dep").display()
        );
    }
    Ok(Kernel {
        name: "host".into(),
        release,
        image,
        modules,
    })
}

/// `apt-get download`, `dpkg-deb -x`, then `depmod` (the package ships no
/// modules.dep: its postinst makes one).
fn unpack(package: &str, dir: &Path) -> Result<()> {
    println!("vm: fetching {package}");
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    cmd::apt(&format!("download {package}"), || {
        let mut c = Command::new("apt-get");
        c.args(["download", "-q", package]).current_dir(&tmp);
        c
    })?;
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let root = tmp.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let release = file_name(&modules_dir(&root)?);
    let base = if root.join("usr/lib/modules").is_dir() {
        root.join("usr")
    } else {
        root.clone()
    };
    cmd::run(Command::new("depmod").arg("-b").arg(&base).arg(&release))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&root, dir)?;
    std::fs::remove_dir_all(&tmp)?;
    std::fs::write(dir.join(".ready"), package)?;
    Ok(())
}

fn modules_dir(root: &Path) -> Result<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("no lib/modules/<release> in {}", root.display()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
