//! The calling task's cgroup and its policy entries.
//!
//! Rules name a cgroup and cover its descendants, so a lookup walks the task's
//! ancestors (`bpf_get_current_ancestor_cgroup_id`, Linux 5.7).

use crate::maps::{CGROUPS, EGRESS_CGROUPS};
use aya_ebpf::helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use warden_common::{CgroupKey, CgroupRule, EgressPolicyRef, MAX_CGROUP_DEPTH};

#[inline(always)]
pub fn current_id() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn ancestor(level: u32) -> u64 {
    // SAFETY: helper without preconditions; returns 0 past the task's own level.
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
}

/// The deepest listed cgroup containing the task. Userspace folds each listed
/// ancestor's flags into its descendants' entries, so the deepest match is the union.
#[inline(always)]
pub fn access_rule(slot: u32) -> Option<CgroupRule> {
    let mut key = CgroupKey {
        slot,
        _pad: 0,
        cgroup_id: current_id(),
    };
    // SAFETY: plain-data value copied out before the map can change.
    if let Some(rule) = unsafe { CGROUPS.get(&key) } {
        return Some(*rule);
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        key.cgroup_id = ancestor(level);
        if key.cgroup_id == 0 {
            continue;
        }
        if let Some(rule) = unsafe { CGROUPS.get(&key) } {
            return Some(*rule);
        }
    }
    None
}

/// Calls `check` with every egress policy that applies to the task, deepest first;
/// stops at the first `Some` verdict. Returns `None` if no policy applies or none
/// returned a verdict.
#[inline(always)]
pub fn for_each_egress_policy<R>(
    slot: u32,
    mut check: impl FnMut(EgressPolicyRef) -> Option<R>,
) -> Option<R> {
    let own = current_id();
    let mut key = CgroupKey {
        slot,
        _pad: 0,
        cgroup_id: own,
    };
    if let Some(p) = unsafe { EGRESS_CGROUPS.get(&key) } {
        if let Some(r) = check(*p) {
            return Some(r);
        }
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        level -= 1;
        key.cgroup_id = ancestor(level);
        if key.cgroup_id == 0 || key.cgroup_id == own {
            continue;
        }
        if let Some(p) = unsafe { EGRESS_CGROUPS.get(&key) } {
            if let Some(r) = check(*p) {
                return Some(r);
            }
        }
    }
    None
}
