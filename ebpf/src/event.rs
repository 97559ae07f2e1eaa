//! Ring-buffer records. A failed reservation is counted in `STATS`, never silent.
//!
//! Each recorded verdict is also a debug diagnostic (aya-log), off unless the
//! daemon runs with `--kernel-log-level`: the level is a read-only global the
//! verifier folds, so with logging off the calls are removed at load.

use crate::maps::{CONNECTS, EVENT_BUDGET, EVENTS, RULE_HITS, STATS, count, event_budget};
use aya_ebpf::helpers::generated::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns};
use warden_common::{EVENT_WINDOW_SHIFT, FlowEvent, stat};

/// Counts the verdict against its rule and, if `emit`, records it.
#[inline(always)]
pub fn record(ev: &FlowEvent, emit: bool) {
    record_built(ev.rule_id, emit, || *ev);
}

/// Records an allowed connect; a TCP one then waits for its source address
/// and port (the egress packet hook sends them from the connection's SYN).
/// Only the connect hooks call this, so no other program carries the map.
#[inline(always)]
pub fn record_allowed_connect(ev: &FlowEvent, is_connect: bool) {
    record(ev, is_connect);
    if is_connect && ev.proto == 6 {
        let _ = CONNECTS.insert(&ev.cookie, &0u8, 0);
    }
}

/// Records `ev` (within the CPU's budget), counted against no rule.
#[inline(always)]
pub fn emit_record(ev: &FlowEvent) {
    emit_built(|| *ev);
}

/// [`record`] with the record built only when it is emitted: a flood past
/// the CPU's budget costs the counters, not the building of a record.
#[inline(always)]
pub fn record_built(rule_id: u32, emit: bool, build: impl FnOnce() -> FlowEvent) {
    count(&RULE_HITS, rule_id);
    if emit {
        emit_built(build);
    }
}

#[inline(always)]
fn emit_built(build: impl FnOnce() -> FlowEvent) {
    if !within_budget() {
        count(&STATS, stat::EVENTS_SUPPRESSED);
        return;
    }
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let mut ev = build();
            // SAFETY: helper without preconditions.
            ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            entry.write(ev);
            // SAFETY: the entry was just written whole; it lives in the ring
            // buffer (not on the stack) until submitted.
            log_verdict(unsafe { &*entry.as_ptr() });
            entry.submit(0);
        }
        None => count(&STATS, stat::EVENTS_LOST),
    }
}

/// The debug diagnostic of a recorded verdict, read from its ring-buffer
/// record. Out of line: the formatting needs stack of its own, which the
/// hooks' frames cannot spare.
#[inline(never)]
fn log_verdict(ev: &FlowEvent) {
    aya_log_ebpf::debug!(
        &(),
        "hook {} verdict {} reason {} rule {} gen {} cgroup {} {:i} -> {:i} port {}",
        ev.hook,
        ev.verdict,
        ev.reason,
        ev.rule_id,
        ev.generation,
        ev.cgroup_id,
        ev.saddr,
        ev.daddr,
        ev.dport
    );
}

/// Whether this CPU may emit one more record in the current window. A flood
/// costs one per-CPU lookup per packet instead of a ring-buffer reservation.
#[inline(always)]
fn within_budget() -> bool {
    let budget = event_budget() as u64;
    if budget == 0 {
        return true;
    }
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: helper without preconditions.
    let window = unsafe { bpf_ktime_get_coarse_ns() } >> EVENT_WINDOW_SHIFT;
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let b = unsafe { &mut *b };
    if b.window != window {
        b.window = window;
        b.used = 0;
    }
    if b.used >= budget {
        return false;
    }
    b.used += 1;
    true
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
