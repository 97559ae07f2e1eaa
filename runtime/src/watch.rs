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

/// Watching where the policy's cgroups live (inotify on their parents), so a
/// cgroup that is created or re-created (a unit restart) gets its grants and
/// egress restriction at once instead of at the next rescan.
///
/// Each path's deepest existing ancestor is watched for directories created,
/// removed or renamed; after any event the watches are set up again, since
/// the set of existing ancestors may have changed.
pub struct CgroupWatch {
    fd: OwnedFd,
    cgroup2: PathBuf,
    paths: Vec<String>,
}

impl CgroupWatch {
    /// `paths` are relative to the cgroup2 mount, as policies write them.
    pub fn new(cgroup2: &Path, paths: Vec<String>) -> std::io::Result<Self> {
        // SAFETY: inotify_init1 has no pointer arguments.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let w = Self {
            // SAFETY: a fresh fd we own.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            cgroup2: cgroup2.to_owned(),
            paths,
        };
        w.arm();
        Ok(w)
    }

    /// Watches the deepest existing ancestor of every path (adding a watch
    /// that exists already only refreshes it).
    fn arm(&self) {
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_ONLYDIR;
        for p in &self.paths {
            let mut dir = self.cgroup2.join(p.trim_start_matches('/'));
            dir.pop();
            while !dir.is_dir() && dir.starts_with(&self.cgroup2) && dir.pop() {}
            let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and C string. A failure (the directory went away
            // meanwhile) is caught by the next event or the periodic rescan.
            unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        }
    }

    /// Reads all pending notifications and re-arms; true if there were any.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            any = true;
        }
        if any {
            self.arm();
        }
        any
    }
}

impl AsRawFd for CgroupWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Interfaces and addresses appearing in this network namespace (rtnetlink
/// link and address notifications), so XDP covers a new interface, and a new
/// address counts as this host's, at once instead of at the next rescan.
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    pub fn new() -> std::io::Result<Self> {
        const RTMGRP_LINK: u32 = 1;
        const RTMGRP_IPV4_IFADDR: u32 = 0x10;
        const RTMGRP_IPV6_IFADDR: u32 = 0x100;
        // SAFETY: plain socket(2) call.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is valid; family and groups set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        // SAFETY: bind with a sockaddr_nl of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads all pending notifications; true if there were any (an overrun,
    /// ENOBUFS, counts as one: something changed).
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a local buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                any = true;
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                any = true;
                continue;
            }
            return any;
        }
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
