//! Enrichment of kernel records with what the kernel does not carry: executable,
//! command line, user name, cgroup path, systemd unit, container id.
//!
//! The process may be gone by the time its record is read: then the record says
//! so (`process_gone`) rather than guessing from a reused pid. Caches are bounded.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Entries per cache; a full cache is emptied (records keep flowing, lookups repeat).
const CACHE_LIMIT: usize = 4096;
/// Longest command line carried, in bytes.
const CMDLINE_LIMIT: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// The process exited before its record was read.
    pub gone: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupInfo {
    /// Relative to the cgroup2 mount, e.g. `system.slice/ollama.service`.
    pub path: Option<String>,
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub container_runtime: Option<&'static str>,
}

pub struct Enricher {
    cgroup2: PathBuf,
    procs: HashMap<(u32, String), ProcessInfo>,
    users: HashMap<u32, Option<String>>,
    cgroups: HashMap<u64, CgroupInfo>,
}

impl Enricher {
    pub fn new(cgroup2: PathBuf) -> Self {
        Self {
            cgroup2,
            procs: HashMap::new(),
            users: HashMap::new(),
            cgroups: HashMap::new(),
        }
    }

    /// Process details for `tgid`, if its thread `tid` still runs the command `comm`
    /// (the record's comm is the calling thread's; a pid that was reused by another
    /// program is reported as gone).
    pub fn process(&mut self, tgid: u32, tid: u32, comm: &str) -> ProcessInfo {
        let key = (tgid, comm.to_owned());
        if let Some(p) = self.procs.get(&key) {
            return p.clone();
        }
        let dir = PathBuf::from(format!("/proc/{tgid}"));
        let current_comm = std::fs::read_to_string(dir.join(format!("task/{tid}/comm")))
            .or_else(|_| std::fs::read_to_string(dir.join("comm")))
            .ok();
        let info = if current_comm.as_deref().map(str::trim) != Some(comm) {
            ProcessInfo {
                gone: true,
                ..Default::default()
            }
        } else {
            let exe = std::fs::read_link(dir.join("exe"))
                .ok()
                .map(|p| p.display().to_string());
            let cmdline = std::fs::read(dir.join("cmdline")).ok().map(|mut b| {
                b.truncate(CMDLINE_LIMIT);
                let s: Vec<String> = b
                    .split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                s.join(" ")
            });
            ProcessInfo {
                exe,
                cmdline,
                gone: false,
            }
        };
        bounded_insert(&mut self.procs, key, info.clone());
        info
    }

    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        if let Some(u) = self.users.get(&uid) {
            return u.clone();
        }
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| {
                passwd.lines().find_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
                })
            });
        bounded_insert(&mut self.users, uid, name.clone());
        name
    }

    /// Path, unit and container of cgroup `id`, found through the process (while it
    /// runs) or else by searching the hierarchy (bounded).
    pub fn cgroup(&mut self, id: u64, tgid: u32) -> CgroupInfo {
        if id == 0 {
            return CgroupInfo::default();
        }
        if let Some(c) = self.cgroups.get(&id) {
            return c.clone();
        }
        let from_proc = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))
            .ok()
            .and_then(|s| {
                let path = s
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))?
                    .trim_start_matches('/')
                    .to_owned();
                (inode(&self.cgroup2.join(&path)) == Some(id)).then_some(path)
            });
        let path = from_proc.or_else(|| find_cgroup(&self.cgroup2, id));
        let info = path.map(|p| describe_cgroup(&p)).unwrap_or_default();
        bounded_insert(&mut self.cgroups, id, info.clone());
        info
    }
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= CACHE_LIMIT {
        map.clear();
    }
    map.insert(k, v);
}

fn inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// Breadth-first search for the cgroup directory with inode `id` (at most 20k dirs).
fn find_cgroup(root: &Path, id: u64) -> Option<String> {
    let mut queue = std::collections::VecDeque::from([root.to_owned()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > 20_000 {
            return None;
        }
        if inode(&dir) == Some(id) {
            return dir.strip_prefix(root).ok().map(|p| p.display().to_string());
        }
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}

/// The systemd unit and container (if any) a cgroup path shows.
pub fn describe_cgroup(path: &str) -> CgroupInfo {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let unit = segments
        .iter()
        .rev()
        .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
        .map(|s| s.to_string());
    let container = segments.iter().rev().find_map(|s| {
        let s = s.strip_suffix(".scope").unwrap_or(s);
        [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
            ("", "docker"),
        ]
        .iter()
        .find_map(|(prefix, runtime)| {
            let id = s.strip_prefix(prefix)?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (id.to_owned(), *runtime))
        })
    });
    CgroupInfo {
        path: Some(path.to_owned()),
        unit,
        container_runtime: container.as_ref().map(|c| c.1),
        container_id: container.map(|c| c.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_containers_from_cgroup_paths() {
        let c = describe_cgroup("system.slice/ollama.service");
        assert_eq!(c.unit.as_deref(), Some("ollama.service"));
        assert_eq!(c.container_id, None);
        let id = "a".repeat(64);
        let c = describe_cgroup(&format!("system.slice/docker-{id}.scope"));
        assert_eq!(
            (c.container_id.as_deref(), c.container_runtime),
            (Some(id.as_str()), Some("docker"))
        );
        let c = describe_cgroup(&format!(
            "kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
        ));
        assert_eq!(c.container_runtime, Some("containerd"));
        let c = describe_cgroup(&format!("docker/{id}"));
        assert_eq!(c.container_runtime, Some("docker"));
        assert_eq!(
            describe_cgroup("user.slice/user-1000.slice/session-3.scope")
                .unit
                .as_deref(),
            Some("session-3.scope")
        );
    }

    #[test]
    fn a_reused_or_exited_pid_is_reported_gone() {
        let mut e = Enricher::new(PathBuf::from("/nonexistent"));
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let p = e.process(me, me, comm.trim());
        assert!(!p.gone && p.exe.is_some() && p.cmdline.is_some());
        assert!(e.process(me, me, "not-this-program").gone);
        assert_eq!(e.user_name(0).as_deref(), Some("root"));
    }
}
