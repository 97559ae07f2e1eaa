//! What the daemon and the proxy share beneath their own concerns.
//!
//! - [`cgroupfs`]: finding cgroup2 and cgroup ids.
//! - [`clock`]: wall, boot and monotonic time, one place.
//! - [`metrics`]: Prometheus text exposition and its `GET /metrics` endpoint.
//! - [`sync`]: locks that outlive a panic.
//! - [`units`]: sizes and durations as files spell them.
//! - [`watch`]: inotify on files and cgroup parents, rtnetlink for new interfaces.

pub mod cgroupfs;
pub mod clock;
pub mod metrics;
pub mod sync;
pub mod units;
pub mod watch;

/// An error and its sources on one line: `outer: inner: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
