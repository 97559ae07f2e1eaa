//! Watching policy files for changes (inotify), so a pushed policy applies without
//! a SIGHUP. Files are watched through their directory: editors and deployment
//! tools replace files by renaming a new one over the old, which a watch on the
//! old inode would never see.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub struct PolicyWatch {
    fd: OwnedFd,
    /// Watch descriptor → file name to react to (`None`: any `*.toml` in the directory).
    watches: Vec<(i32, Option<OsString>)>,
}

impl PolicyWatch {
    pub fn new(paths: &[PathBuf]) -> std::io::Result<Self> {
        // SAFETY: inotify_init1 has no pointer arguments.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut watches = Vec::new();
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE;
        for p in paths {
            let (dir, name) = if p.is_dir() {
                (p.clone(), None)
            } else {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                (dir.to_owned(), p.file_name().map(|n| n.to_owned()))
            };
            let c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
            // SAFETY: valid fd and C string.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
            if wd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            watches.push((wd, name));
        }
        Ok(Self { fd, watches })
    }

    /// Reads all pending notifications; true if one concerns a policy file.
    pub fn changed(&mut self) -> bool {
        let mut relevant = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a local buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return relevant;
            }
            let mut off = 0usize;
            while off + std::mem::size_of::<libc::inotify_event>() <= n as usize {
                // SAFETY: the kernel writes whole events; read unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let name_start = off + std::mem::size_of::<libc::inotify_event>();
                let name_bytes = &buf[name_start..name_start + ev.len as usize];
                let name = OsString::from_vec(
                    name_bytes.iter().copied().take_while(|&b| b != 0).collect(),
                );
                // A policy file or its signature (which may land after the file).
                let policy_name = name
                    .to_str()
                    .map(|n| n.strip_suffix(".minisig").unwrap_or(n).to_owned())
                    .unwrap_or_default();
                relevant |= self.watches.iter().any(|(wd, want)| {
                    *wd == ev.wd
                        && match want {
                            Some(w) => w.to_str() == Some(policy_name.as_str()),
                            None => policy_name.ends_with(".toml") && !policy_name.starts_with('.'),
                        }
                });
                off = name_start + ev.len as usize;
            }
        }
    }
}

impl AsRawFd for PolicyWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
