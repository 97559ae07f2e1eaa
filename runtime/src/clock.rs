//! The clocks warden reads: wall time for records, CLOCK_BOOTTIME for the
//! kernel's timestamps (`bpf_ktime_get_boot_ns`, NFLOG), CLOCK_MONOTONIC for
//! deadlines shared with the kernel (bans).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    (unix_ns() / 1_000_000) as u64
}

/// Now, in Unix nanoseconds.
pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// CLOCK_BOOTTIME in nanoseconds: the kernel programs' clock.
pub fn boot_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC in nanoseconds (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// A CLOCK_BOOTTIME timestamp of the kernel's, in Unix milliseconds.
pub fn boot_ns_to_unix_ms(ts_ns: u64) -> u64 {
    let boot_now = boot_ns();
    let wall_now = unix_ns() as u64;
    (wall_now.saturating_sub(boot_now.saturating_sub(ts_ns))) / 1_000_000
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter for the duration of the call.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_timestamp_of_now_is_now() {
        let ms = boot_ns_to_unix_ms(boot_ns());
        assert!(ms.abs_diff(unix_ms()) < 1_000, "{ms} vs {}", unix_ms());
    }
}
