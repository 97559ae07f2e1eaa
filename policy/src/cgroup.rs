//! Cgroup paths as policies name them: relative to the cgroup2 mount, normalised, never
//! the root cgroup.
//!
//! A rule for a cgroup covers its descendants, so a path that silently meant "the root"
//! (an empty string, `/`, `a/..`) would cover every process on the host. Everything that
//! could be read two ways is therefore rejected rather than repaired; only one leading
//! `/` is accepted and stripped, because `/system.slice/x.service` is how
//! `/proc/PID/cgroup` prints paths.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Longest cgroup directory name the kernel accepts (NAME_MAX).
const MAX_SEGMENT_BYTES: usize = 255;

/// Deepest cgroup a policy may name (segments below the cgroup2 root): the
/// kernel programs walk a task's ancestors through level 15 (the walk's length
/// is most of what the verifier explores; `MAX_CGROUP_DEPTH` in warden-common).
pub const MAX_DEPTH: usize = 15;

/// Where cgroup2 is usually mounted; a path starting with it was copied from the
/// filesystem instead of from `/proc/PID/cgroup`.
const MOUNT_PREFIX: &str = "sys/fs/cgroup";

/// A normalised cgroup path relative to the cgroup2 mount, e.g. `system.slice/ollama.service`.
/// Never empty, no leading or trailing `/`, no `.`/`..` or empty segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CgroupPath(String);

/// Why a string is not a usable cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupPathError {
    #[error(
        "cgroup path {0:?} is the root cgroup: it would allow every process on the host; name a cgroup"
    )]
    Root(String),
    #[error("invalid cgroup path {0:?}: contains a NUL character")]
    Nul(String),
    #[error("invalid cgroup path {0:?}: contains a control character")]
    Control(String),
    #[error("invalid cgroup path `{0}`: empty segment (repeated `/`)")]
    EmptySegment(String),
    #[error("invalid cgroup path `{path}`: trailing `/`; write `{fixed}`")]
    TrailingSlash { path: String, fixed: String },
    #[error(
        "invalid cgroup path `{path}`: `{segment}` segments are not allowed; name the cgroup directly"
    )]
    DotSegment { path: String, segment: &'static str },
    #[error("invalid cgroup path {0:?}: a segment is only whitespace")]
    BlankSegment(String),
    #[error("invalid cgroup path {path:?}: segment {segment:?} starts or ends with whitespace")]
    PaddedSegment { path: String, segment: String },
    #[error("invalid cgroup path `{0}`: a segment is longer than 255 bytes")]
    TooLong(String),
    #[error(
        "cgroup path `{path}` is nested {depth} levels deep; warden matches cgroups at most {MAX_DEPTH} levels below the root: name an ancestor"
    )]
    TooDeep { path: String, depth: usize },
    #[error(
        "invalid cgroup path `{path}`: looks like a filesystem path; cgroup paths are relative to the cgroup2 mount: write `{fixed}`"
    )]
    MountPrefix { path: String, fixed: String },
    #[error(
        "unknown cgroup reference `{0}`: the only one is `@pod` (the Kubernetes pod warden runs in)"
    )]
    UnknownReference(String),
}

/// The reference to the cgroup of the Kubernetes pod the daemon runs in.
pub const OWN_POD: &str = "@pod";

impl CgroupPath {
    /// Normalises and validates `raw` (see the module docs for the rules).
    pub fn new(raw: &str) -> Result<Self, CgroupPathError> {
        let owned = || raw.to_owned();
        if raw.contains('\0') {
            return Err(CgroupPathError::Nul(owned()));
        }
        if raw.chars().any(char::is_control) {
            return Err(CgroupPathError::Control(owned()));
        }
        if raw == OWN_POD {
            return Ok(Self(raw.to_owned()));
        }
        if raw.starts_with('@') {
            return Err(CgroupPathError::UnknownReference(owned()));
        }
        let rest = raw.strip_prefix('/').unwrap_or(raw);
        if rest.is_empty() {
            return Err(CgroupPathError::Root(owned()));
        }
        if let Some(below) = rest.strip_prefix(MOUNT_PREFIX)
            && (below.is_empty() || below.starts_with('/'))
        {
            let fixed = below.trim_matches('/');
            if fixed.is_empty() {
                return Err(CgroupPathError::Root(owned()));
            }
            return Err(CgroupPathError::MountPrefix {
                path: owned(),
                fixed: fixed.to_owned(),
            });
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() > MAX_DEPTH && segments.iter().all(|s| !s.is_empty()) {
            return Err(CgroupPathError::TooDeep {
                path: owned(),
                depth: segments.len(),
            });
        }
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            if segment.is_empty() {
                if i == last && segments[..last].iter().all(|s| !s.is_empty()) {
                    let fixed = rest.trim_end_matches('/').to_owned();
                    return Err(CgroupPathError::TrailingSlash {
                        path: owned(),
                        fixed,
                    });
                }
                return Err(CgroupPathError::EmptySegment(owned()));
            }
            if *segment == "." || *segment == ".." {
                let segment = if *segment == "." { "." } else { ".." };
                return Err(CgroupPathError::DotSegment {
                    path: owned(),
                    segment,
                });
            }
            if segment.trim().is_empty() {
                return Err(CgroupPathError::BlankSegment(owned()));
            }
            if segment.trim() != *segment {
                return Err(CgroupPathError::PaddedSegment {
                    path: owned(),
                    segment: (*segment).to_owned(),
                });
            }
            if segment.len() > MAX_SEGMENT_BYTES {
                return Err(CgroupPathError::TooLong(owned()));
            }
        }
        Ok(Self(rest.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `@pod`: a pod's cgroup path changes with every re-creation
    /// (`…-pod<UID>.slice`), so a policy names it by reference and the daemon
    /// resolves it where it runs (see `warden_runtime::cgroupfs::own_pod`).
    pub fn is_own_pod(&self) -> bool {
        self.0 == OWN_POD
    }

    /// Path segments from the top, e.g. `["system.slice", "ollama.service"]`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// True if `other` is this cgroup or one of its descendants (rules cover descendants).
    pub fn covers(&self, other: &CgroupPath) -> bool {
        other.0 == self.0
            || (other.0.len() > self.0.len()
                && other.0.starts_with(&self.0)
                && other.0.as_bytes()[self.0.len()] == b'/')
    }
}

impl FromStr for CgroupPath {
    type Err = CgroupPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CgroupPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        CgroupPath::new(raw)
            .map(|c| c.to_string())
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    fn err(raw: &str) -> String {
        match CgroupPath::new(raw) {
            Ok(c) => panic!("{raw:?} accepted as {c}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn strips_exactly_one_leading_slash() {
        assert_eq!(
            ok("system.slice/ollama.service"),
            "system.slice/ollama.service"
        );
        assert_eq!(
            ok("/system.slice/ollama.service"),
            "system.slice/ollama.service"
        );
        assert!(err("//system.slice").contains("empty segment"));
    }

    #[test]
    fn root_is_rejected_in_every_spelling() {
        for raw in ["", "/", "/sys/fs/cgroup", "sys/fs/cgroup/"] {
            assert!(err(raw).contains("root cgroup"), "{raw:?}");
        }
    }

    #[test]
    fn ambiguous_segments_are_rejected() {
        assert!(err("a/../b").contains("`..` segments"));
        assert!(err("..").contains("`..` segments"));
        assert!(err("./a").contains("`.` segments"));
        assert!(err("a//b").contains("empty segment"));
        assert!(err("a/b/").contains("trailing `/`; write `a/b`"));
        assert!(err("a/ /b").contains("only whitespace"));
        assert!(err(" a").contains("starts or ends with whitespace"));
        assert!(err("a\0b").contains("NUL"));
        assert!(err("a\nb").contains("control character"));
        assert!(err(&"x".repeat(256)).contains("longer than 255"));
        assert_eq!(ok(&"x".repeat(255)).len(), 255);
    }

    #[test]
    fn filesystem_paths_get_a_hint() {
        assert_eq!(
            err("/sys/fs/cgroup/system.slice/ollama.service"),
            "invalid cgroup path `/sys/fs/cgroup/system.slice/ollama.service`: looks like a \
             filesystem path; cgroup paths are relative to the cgroup2 mount: write \
             `system.slice/ollama.service`"
        );
        // A cgroup that merely starts with the same letters is fine.
        assert_eq!(ok("sys/fs/cgroupx"), "sys/fs/cgroupx");
    }

    #[test]
    fn the_pod_reference_is_the_only_one() {
        assert!(CgroupPath::new("@pod").unwrap().is_own_pod());
        assert!(!CgroupPath::new("pod").unwrap().is_own_pod());
        assert!(err("@pods").contains("unknown cgroup reference `@pods`"));
        assert!(err("@pod/x").contains("unknown cgroup reference"));
        // `@` inside a path is an ordinary character (systemd template instances).
        assert_eq!(
            ok("system.slice/getty@tty1.service"),
            "system.slice/getty@tty1.service"
        );
    }

    #[test]
    fn covers_itself_and_descendants_only() {
        let slice = CgroupPath::new("system.slice").unwrap();
        let svc = CgroupPath::new("system.slice/ollama.service").unwrap();
        let other = CgroupPath::new("system.slicex/a").unwrap();
        assert!(slice.covers(&slice));
        assert!(slice.covers(&svc));
        assert!(!svc.covers(&slice));
        assert!(!slice.covers(&other));
        assert_eq!(
            svc.segments().collect::<Vec<_>>(),
            ["system.slice", "ollama.service"]
        );
    }
}
