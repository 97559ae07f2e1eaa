//! warden's bpffs directory: trusted before use, its links held while the
//! daemon runs, and pins put back when they disappear.
//!
//! Whoever can write the pin directory can delete a link's pin, and the last
//! reference to a link going away detaches its program. So the directory must
//! be warden's alone (owner, mode 0700, a real directory on bpffs), and the
//! daemon keeps a descriptor of every link it attached or adopted: a deleted
//! pin then detaches nothing while the daemon runs, and is pinned again.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Why a directory cannot hold warden's pins.
pub fn untrusted(dir: &Path) -> Option<String> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let owner = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    let problem = if meta.file_type().is_symlink() {
        "is a symbolic link".to_owned()
    } else if !meta.is_dir() {
        "is not a directory".to_owned()
    } else if meta.uid() != owner {
        format!("is owned by uid {}, not {owner}", meta.uid())
    } else if mode != 0o700 {
        format!("has mode {mode:04o}, not 0700")
    } else if !super::ebpf::is_bpffs(dir) {
        "is not on a bpf filesystem".to_owned()
    } else {
        return None;
    };
    Some(format!(
        "{} {problem}: another user could have created it to delete warden's pins (which detaches enforcement); check what is in it, remove it, and start again",
        dir.display()
    ))
}

/// Creates `dir` (mode 0700) or checks that the one there is trustworthy.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have narrowed the mode further; make it exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    match untrusted(dir) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// A descriptor of a pinned link, held so the link stays attached whatever
/// happens to its pin, and used to pin it again.
pub struct HeldLink {
    pub pin: PathBuf,
    fd: OwnedFd,
}

impl HeldLink {
    /// Opens the link pinned at `pin`.
    pub fn open(pin: &Path) -> std::io::Result<Self> {
        Ok(Self {
            pin: pin.to_owned(),
            fd: obj_get(pin)?,
        })
    }

    /// Pins the link again if its pin is gone; true if it did.
    pub fn restore(&self) -> std::io::Result<bool> {
        if std::fs::symlink_metadata(&self.pin).is_ok() {
            return Ok(false);
        }
        let path = c_path(&self.pin)?;
        // bpf_attr for BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags (u32).
        let attr = [path.as_ptr() as u64, self.fd.as_raw_fd() as u32 as u64];
        // SAFETY: bpf(2) reads `attr` (16 bytes) and the C string it points to.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_PIN,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// `BPF_LINK_DETACH` on a pinned link: synchronous, whoever else holds it.
/// Best effort: a link type without detach support is released by the unpin.
pub fn detach_pinned_link(pin: &Path) {
    let Ok(fd) = obj_get(pin) else {
        return;
    };
    // bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let attr = [fd.as_raw_fd() as u32, 0];
    // SAFETY: bpf(2) reads `attr` (8 bytes); `fd` stays open during the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        );
    }
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn obj_get(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = c_path(pin)?;
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let attr = [path.as_ptr() as u64, 0u64];
    // SAFETY: bpf(2) reads `attr` (16 bytes) and the C string it points to.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_directory_is_trusted() {
        let base = std::env::temp_dir().join(format!("warden-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(untrusted(&dir).unwrap().contains("has mode 1777, not 0700"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Private now, but not on bpffs (a temp directory).
        assert!(untrusted(&dir).unwrap().contains("not on a bpf filesystem"));
        let link = base.join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(untrusted(&link).unwrap().contains("symbolic link"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
