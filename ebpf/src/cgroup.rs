//! The cgroup a decision is about, and its policy entries.
//!
//! Rules name a cgroup and cover its descendants, so a lookup walks the
//! cgroup's ancestors. Whose cgroup that is depends on the hook: the calling
//! task's for system calls ([`Task`]), the socket's for packets ([`Socket`]):
//! a packet may be sent from a kernel worker (MPTCP subflows, TCP timers) or
//! from softirq, where the current task says nothing about who owns it.

use crate::maps::{CGROUPS, EGRESS_CGROUPS};
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
};
use warden_common::{CgroupKey, CgroupRule, EgressPolicyRef, MAX_CGROUP_DEPTH};

/// A cgroup and its ancestors, as the kernel numbers them (root = level 0).
pub trait Cgroup {
    fn id(&self) -> u64;
    /// The ancestor at `level`; 0 past the cgroup's own level.
    fn ancestor(&self, level: u32) -> u64;
}

/// The calling task's cgroup (system-call hooks).
pub struct Task;

impl Cgroup for Task {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    }
    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    }
}

/// The cgroup of the socket a packet belongs to (cgroup_skb hooks). For a
/// request socket (a SYN-ACK) it is the listener's; 0 without a full socket.
pub struct Socket(pub *mut __sk_buff);

impl Cgroup for Socket {
    #[inline(always)]
    fn id(&self) -> u64 {
        // SAFETY: the context pointer of a cgroup_skb program.
        unsafe { bpf_skb_cgroup_id(self.0) }
    }
    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        // SAFETY: the context pointer of a cgroup_skb program.
        unsafe { bpf_skb_ancestor_cgroup_id(self.0, level as i32) }
    }
}

/// The deepest listed cgroup containing `cg`. Userspace folds each listed
/// ancestor's flags into its descendants' entries, so the deepest match is the union.
#[inline(always)]
pub fn access_rule(slot: u32, cg: &impl Cgroup) -> Option<CgroupRule> {
    let own = cg.id();
    let mut key = CgroupKey {
        slot,
        _pad: 0,
        cgroup_id: own,
    };
    // SAFETY: plain-data value copied out before the map can change.
    if let Some(rule) = unsafe { CGROUPS.get(&key) } {
        return Some(*rule);
    }
    // From the root down, until past the cgroup's own level: the last match is
    // the deepest. Costs one helper call per level, not one per possible level.
    let mut found = None;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        key.cgroup_id = cg.ancestor(level);
        if key.cgroup_id == 0 || key.cgroup_id == own {
            break;
        }
        if let Some(rule) = unsafe { CGROUPS.get(&key) } {
            found = Some(*rule);
        }
        level += 1;
    }
    found
}

/// Calls `check` with every egress policy that applies to `cg` (its own and
/// its ancestors'); stops at the first `Some` verdict. Returns `None` if no
/// policy applies or none returned a verdict.
#[inline(always)]
pub fn for_each_egress_policy<R>(
    slot: u32,
    cg: &impl Cgroup,
    mut check: impl FnMut(EgressPolicyRef) -> Option<R>,
) -> Option<R> {
    let mut key = CgroupKey {
        slot,
        _pad: 0,
        cgroup_id: 0,
    };
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        key.cgroup_id = cg.ancestor(level);
        if key.cgroup_id == 0 {
            break;
        }
        // SAFETY: plain-data value copied out before the map can change.
        if let Some(p) = unsafe { EGRESS_CGROUPS.get(&key) } {
            if let Some(r) = check(*p) {
                return Some(r);
            }
        }
        level += 1;
    }
    None
}
