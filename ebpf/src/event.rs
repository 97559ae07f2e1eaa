//! Ring-buffer records. A failed reservation is counted in `STATS`, never silent.

use crate::maps::{EVENTS, RULE_HITS, STATS, count};
use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use warden_common::{FlowEvent, stat};

/// Counts the verdict against its rule and, if `emit`, records it.
#[inline(always)]
pub fn record(ev: &FlowEvent, emit: bool) {
    count(&RULE_HITS, ev.rule_id);
    if !emit {
        return;
    }
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let mut ev = *ev;
            // SAFETY: helper without preconditions.
            ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            entry.write(ev);
            entry.submit(0);
        }
        None => count(&STATS, stat::EVENTS_LOST),
    }
}

pub const EMPTY: FlowEvent = FlowEvent {
    ts_ns: 0,
    cookie: 0,
    cgroup_id: 0,
    pid: 0,
    tgid: 0,
    uid: 0,
    gid: 0,
    ifindex: 0,
    rule_id: 0,
    generation: 0,
    family: 0,
    proto: 0,
    hook: 0,
    verdict: 0,
    reason: 0,
    _pad: [0; 2],
    sport: 0,
    dport: 0,
    saddr: [0; 16],
    daddr: [0; 16],
    comm: [0; 16],
};
