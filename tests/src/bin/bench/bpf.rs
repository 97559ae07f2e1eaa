//! The few bpf(2) commands the benchmarks need, as raw syscalls: open a pinned
//! link, find its program, load an empty XDP program, BPF_PROG_TEST_RUN, and
//! the kernel's run-time statistics of a program.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `union bpf_attr`, zeroed, written field by field at its offsets.
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
    fn call(&mut self, cmd: i64) -> std::io::Result<i64> {
        // SAFETY: a 128-byte attribute buffer, larger than every command reads.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), 128u32) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

fn fd(rc: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us.
    unsafe { OwnedFd::from_raw_fd(rc as RawFd) }
}

/// The program behind a pinned bpf link.
pub fn pinned_link_program(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    let link = fd(Attr::new().u64(0, path.as_ptr() as u64).call(BPF_OBJ_GET)?);
    // struct bpf_link_info { type, id, prog_id, ... }
    let mut info = [0u8; 64];
    Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(&link) as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .call(BPF_OBJ_GET_INFO_BY_FD)?;
    let prog_id = u32::from_ne_bytes(info[8..12].try_into().unwrap());
    Ok(fd(Attr::new()
        .u32(0, prog_id)
        .call(BPF_PROG_GET_FD_BY_ID)?))
}

/// Turns on the kernel's per-program run-time statistics for as long as the
/// returned descriptor is open (BPF_ENABLE_STATS, Linux 5.8): the same as
/// `kernel.bpf_stats_enabled`, without changing the sysctl.
pub fn enable_stats() -> std::io::Result<OwnedFd> {
    const BPF_ENABLE_STATS: i64 = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    Ok(fd(Attr::new()
        .u32(0, BPF_STATS_RUN_TIME)
        .call(BPF_ENABLE_STATS)?))
}

/// A program's (runs, nanoseconds spent in it) since it was loaded, counted
/// while statistics are enabled.
pub fn run_stats(prog: &OwnedFd) -> std::io::Result<(u64, u64)> {
    // struct bpf_prog_info: run_time_ns at 192, run_cnt at 200.
    let mut info = [0u8; 216];
    Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(prog) as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64)
        .call(BPF_OBJ_GET_INFO_BY_FD)?;
    let at = |off: usize| u64::from_ne_bytes(info[off..off + 8].try_into().unwrap());
    Ok((at(200), at(192)))
}

fn load_xdp(insns: &[u8]) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    Ok(fd(Attr::new()
        .u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, (insns.len() / 8) as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .call(BPF_PROG_LOAD)?))
}

/// The XDP program a lab's daemon attached (from its first pinned XDP link).
pub fn lab_xdp_program(pin_dir: &Path) -> OwnedFd {
    let pin = std::fs::read_dir(pin_dir.join("links"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("xdp-"))
        .expect("warden's XDP link is pinned")
        .path();
    pinned_link_program(&pin).expect("warden's XDP program")
}

/// `r0 = XDP_PASS; exit`: the cheapest XDP program there is.
pub fn empty_xdp() -> std::io::Result<OwnedFd> {
    load_xdp(&[
        0xb7, 0, 0, 0, 2, 0, 0, 0, // mov64 r0, XDP_PASS
        0x95, 0, 0, 0, 0, 0, 0, 0, // exit
    ])
}

/// A per-CPU array of one u64 counter.
pub fn counter_map() -> std::io::Result<OwnedFd> {
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    Ok(fd(Attr::new()
        .u32(0, BPF_MAP_TYPE_PERCPU_ARRAY)
        .u32(4, 4)
        .u32(8, 8)
        .u32(12, 1)
        .call(BPF_MAP_CREATE)?))
}

/// Counts every frame in `counter` (see [`counter_map`]) and drops it: the
/// least a program that drops can do.
pub fn counting_drop_xdp(counter: &OwnedFd) -> std::io::Result<OwnedFd> {
    let m = (std::os::fd::AsRawFd::as_raw_fd(counter) as u32).to_le_bytes();
    load_xdp(&[
        0x62, 0x0a, 0xfc, 0xff, 0, 0, 0, 0, // *(u32 *)(r10 - 4) = 0
        0x18, 0x11, 0, 0, m[0], m[1], m[2], m[3], // r1 = the map (ld_imm64, map fd)
        0, 0, 0, 0, 0, 0, 0, 0, //
        0xbf, 0xa2, 0, 0, 0, 0, 0, 0, // r2 = r10
        0x07, 0x02, 0, 0, 0xfc, 0xff, 0xff, 0xff, // r2 += -4
        0x85, 0, 0, 0, 1, 0, 0, 0, // call bpf_map_lookup_elem
        0x15, 0x00, 3, 0, 0, 0, 0, 0, // if r0 == 0 goto drop
        0x79, 0x01, 0, 0, 0, 0, 0, 0, // r1 = *(u64 *)(r0 + 0)
        0x07, 0x01, 0, 0, 1, 0, 0, 0, // r1 += 1
        0x7b, 0x10, 0, 0, 0, 0, 0, 0, // *(u64 *)(r0 + 0) = r1
        0xb7, 0x00, 0, 0, 1, 0, 0, 0, // drop: r0 = XDP_DROP
        0x95, 0, 0, 0, 0, 0, 0, 0, // exit
    ])
}

/// `return bpf_redirect(ifindex, 0)`: sends every frame out of `ifindex`.
pub fn redirect_xdp(ifindex: u32) -> std::io::Result<OwnedFd> {
    let i = ifindex.to_le_bytes();
    load_xdp(&[
        0xb7, 0x01, 0, 0, i[0], i[1], i[2], i[3], // mov64 r1, ifindex
        0xb7, 0x02, 0, 0, 0, 0, 0, 0, // mov64 r2, 0
        0x85, 0, 0, 0, 23, 0, 0, 0, // call bpf_redirect
        0x95, 0, 0, 0, 0, 0, 0, 0, // exit
    ])
}

/// Attaches `prog` to `ifindex` (of the calling thread's namespace) in native
/// mode; detached when the returned link is closed.
pub fn attach_xdp(prog: &OwnedFd, ifindex: u32) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: i64 = 28;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    Ok(fd(Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(prog) as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, XDP_FLAGS_DRV_MODE)
        .call(BPF_LINK_CREATE)?))
}

/// Runs `prog` on `repeat` copies of `frame` as live frames arriving on
/// `ifindex` (BPF_F_TEST_XDP_LIVE_FRAMES): XDP_TX and redirects really transmit,
/// which makes a redirecting program a packet generator (as xdp-trafficgen does).
pub fn transmit_live(
    prog: &OwnedFd,
    frame: &[u8],
    repeat: u32,
    ifindex: u32,
) -> std::io::Result<()> {
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    // (data_end must be the frame's length).
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(prog) as u32)
        .u32(8, frame.len() as u32)
        .u64(16, frame.as_ptr() as u64)
        .u32(32, repeat)
        .u32(40, ctx.len() as u32)
        .u64(48, ctx.as_ptr() as u64)
        .u32(64, BPF_F_TEST_XDP_LIVE_FRAMES)
        .call(BPF_PROG_TEST_RUN)?;
    Ok(())
}

/// Runs `prog` on `packet` `repeat` times in the kernel; returns the verdict and
/// the kernel's mean nanoseconds per run.
pub fn test_run(prog: &OwnedFd, packet: &[u8], repeat: u32) -> std::io::Result<(u32, u32)> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut a = Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(prog) as u32)
        .u32(8, packet.len() as u32)
        .u32(12, out.len() as u32)
        .u64(16, packet.as_ptr() as u64)
        .u64(24, out.as_mut_ptr() as u64)
        .u32(32, repeat);
    a.call(BPF_PROG_TEST_RUN)?;
    Ok((a.get_u32(4), a.get_u32(36)))
}

const BPF_MAP_LOOKUP_ELEM: i64 = 1;

/// Sum over CPUs of `index` in a pinned per-CPU array of u64 counters.
pub fn percpu_sum(pin: &Path, index: u32) -> std::io::Result<u64> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    let map = fd(Attr::new().u64(0, path.as_ptr() as u64).call(BPF_OBJ_GET)?);
    percpu_sum_of(&map, index)
}

/// Sum over CPUs of `index` in a per-CPU array of u64 counters.
pub fn percpu_sum_of(map: &OwnedFd, index: u32) -> std::io::Result<u64> {
    let mut values = vec![0u64; possible_cpus()];
    Attr::new()
        .u32(0, std::os::fd::AsRawFd::as_raw_fd(map) as u32)
        .u64(8, (&raw const index) as u64)
        .u64(16, values.as_mut_ptr() as u64)
        .call(BPF_MAP_LOOKUP_ELEM)?;
    Ok(values.iter().sum())
}

/// Per-CPU map values are laid out for every possible CPU.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .filter_map(|r| {
            let mut it = r.split('-').map(|x| x.parse::<usize>().ok());
            match (it.next().flatten(), it.next().flatten()) {
                (Some(a), Some(b)) => Some(b - a + 1),
                (Some(_), None) => Some(1),
                _ => None,
            }
        })
        .sum::<usize>()
        .max(1)
}
