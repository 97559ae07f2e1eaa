//! Finding the cgroup2 hierarchy and turning cgroup paths into cgroup ids.
//!
//! The cgroup2 mount is read from mountinfo, never assumed: real hosts mount it at
//! `/sys/fs/cgroup`, hybrid ones at `/sys/fs/cgroup/unified`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

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

#[cfg(test)]
mod tests {
    use super::*;

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
