//! Finding the cgroup2 hierarchy and turning cgroup paths into cgroup ids.
//!
//! The cgroup2 mount is read from mountinfo, never assumed: real hosts mount it at
//! `/sys/fs/cgroup`, hybrid ones at `/sys/fs/cgroup/unified`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;
use warden_policy::CgroupPath;

#[derive(Debug, Error)]
pub enum CgroupfsError {
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); warden needs cgroup v2")]
    NotMounted,
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
}

/// The cgroup2 mount point of this mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupfsError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupfsError::Mountinfo)?;
    parse_mountinfo(&info).ok_or(CgroupfsError::NotMounted)
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split(' ').next()?;
        let mount_point = left.split(' ').nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The cgroup id of a directory in the cgroup2 hierarchy: its inode number (kernfs
/// node id, which is what `bpf_get_current_cgroup_id` returns on 64-bit kernels).
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The cgroup of the Kubernetes pod this process runs in, relative to the cgroup2
/// mount (what a policy's `@pod` stands for), or why there is none. Found once: a
/// process does not change pods.
pub fn own_pod() -> &'static Result<CgroupPath, String> {
    static POD: OnceLock<Result<CgroupPath, String>> = OnceLock::new();
    POD.get_or_init(|| {
        let cgroup2 = cgroup2_mount().map_err(|e| e.to_string())?;
        let own = own_cgroup(&cgroup2)
            .ok_or("warden's own cgroup is not in the cgroup2 hierarchy it can see")?;
        pod_of(&own)
    })
}

/// The parent of `own` if it is named like a kubelet pod cgroup:
/// `kubepods-<qos>-pod<UID>.slice` (systemd driver, `-` in the UID written `_`)
/// or `pod<UID>` (cgroupfs driver).
fn pod_of(own: &str) -> Result<CgroupPath, String> {
    let not_pod = || format!("warden's cgroup {own} is not a container in a Kubernetes pod");
    let (parent, _) = own.rsplit_once('/').ok_or_else(not_pod)?;
    let name = parent.rsplit('/').next().unwrap_or(parent);
    let uid = match name.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod").map(|(_, uid)| uid),
        None => name.strip_prefix("pod"),
    };
    let uid_like = |u: &str| {
        u.len() == 36
            && u.chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
    };
    match uid {
        Some(u) if uid_like(u) => CgroupPath::new(parent).map_err(|e| e.to_string()),
        _ => Err(not_pod()),
    }
}

/// A cgroup path as `/proc/PID/cgroup` shows it to this process (relative to its
/// cgroup namespace, possibly with `..`) made relative to the cgroup2 root; `None`
/// for a path above the root.
pub fn from_namespace(seen: &str) -> Option<String> {
    static ROOT: OnceLock<String> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        // The namespace root is this process's cgroup minus the part
        // `/proc/self/cgroup` shows (empty when it shares the host's namespace).
        let own_seen = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own_seen = own_seen
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let own = cgroup2_mount().ok().and_then(|m| own_cgroup(&m));
        match own {
            Some(own) if !own_seen.contains("..") => {
                let rel = own_seen.trim_matches('/');
                own.strip_suffix(rel)
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_owned()
            }
            _ => String::new(),
        }
    });
    let mut parts: Vec<&str> = root.split('/').filter(|s| !s.is_empty()).collect();
    for seg in seen.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if seg == ".." {
            parts.pop()?;
        } else {
            parts.push(seg);
        }
    }
    Some(parts.join("/"))
}

/// This process's cgroup relative to `cgroup2`. `/proc/self/cgroup` names it when
/// the process shares the host's cgroup namespace; in a private one (a container's
/// default) it reads `/`, and the hierarchy is searched for the cgroup whose
/// `cgroup.procs` lists this process (pids there are shown in the reader's pid
/// namespace, so this works with or without the host's).
fn own_cgroup(cgroup2: &Path) -> Option<String> {
    let pid = std::process::id().to_string();
    let lists_me = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.lines().any(|l| l == pid))
    };
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let named = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    if !named.is_empty() && !named.starts_with("..") && lists_me(&cgroup2.join(named)) {
        return Some(named.to_owned());
    }
    let mut stack = vec![cgroup2.to_owned()];
    while let Some(dir) = stack.pop() {
        if dir != cgroup2 && lists_me(&dir) {
            return Some(dir.strip_prefix(cgroup2).ok()?.to_str()?.to_owned());
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_of_both_kubelet_drivers() {
        let uid = "3f1c1a2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
        let systemd = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        );
        assert_eq!(
            pod_of(&format!("{systemd}/cri-containerd-0123.scope"))
                .unwrap()
                .as_str(),
            systemd
        );
        let guaranteed = format!("kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_"));
        assert_eq!(
            pod_of(&format!("{guaranteed}/cri-containerd-0123.scope"))
                .unwrap()
                .as_str(),
            guaranteed
        );
        let cgroupfs = format!("kubepods/besteffort/pod{uid}");
        assert_eq!(
            pod_of(&format!("{cgroupfs}/0123abcd")).unwrap().as_str(),
            cgroupfs
        );
        for not_pod in [
            "system.slice/ollama-warden.service",
            "ollama-warden.service",
            "kubepods.slice/kubepods-burstable.slice/x.scope",
            "a/pod123/x",
        ] {
            let e = pod_of(not_pod).unwrap_err();
            assert!(
                e.contains("not a container in a Kubernetes pod"),
                "{not_pod}: {e}"
            );
        }
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                      36 25 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
        let spaced = "30 24 0:26 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(spaced), Some(PathBuf::from("/mnt/cg two")));
    }
}
