//! Egress allowlists: which destinations (prefix, protocol, port) the policies
//! covering a cgroup allow. Shared by the system-call hooks (connect, sendmsg)
//! and the packet hooks (every packet of a restricted socket).

use crate::{
    cgroup::{self, Cgroup},
    maps::EGRESS,
};
use aya_ebpf::maps::lpm_trie::Key;
use warden_common::*;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An egress verdict over every policy on the cgroup's path.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No policy applies, or all allow.
    Allowed,
    /// An auditing policy would deny; none that enforces does.
    WouldDeny,
    Denied,
}

/// Every egress policy on `cg`'s path must allow: `allows(policy)` says whether
/// one does. An auditing policy that would deny does not stop the walk: an
/// enforcing one further up may still deny for real.
#[inline(always)]
pub fn verdict(slot: u32, cg: &impl Cgroup, mut allows: impl FnMut(u32) -> bool) -> Verdict {
    let mut would_deny = false;
    let denied = cgroup::for_each_egress_policy(slot, cg, |policy| {
        if allows(policy.policy) {
            None
        } else if policy.flags & egress_flags::AUDIT != 0 {
            would_deny = true;
            None
        } else {
            Some(())
        }
    });
    match (denied, would_deny) {
        (Some(()), _) => Verdict::Denied,
        (None, true) => Verdict::WouldDeny,
        (None, false) => Verdict::Allowed,
    }
}

/// The protocol bit of an IP protocol number (0: no rule can allow it).
#[inline(always)]
pub fn proto_bit(proto: u8) -> u32 {
    match proto {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => 0,
    }
}

/// The id of the rule of egress policy `policy` that allows this destination.
#[inline(always)]
pub fn rule(slot: u32, policy: u32, daddr: &Addr, proto: u32, port: u16) -> Option<u32> {
    if proto == 0 {
        return None;
    }
    let tag = (slot << 24 | (policy & 0x00ff_ffff)).to_be_bytes();
    let key = Key::new(
        EGRESS_KEY_FIXED_BITS + 128,
        EgressKey {
            slot_policy: tag,
            addr: *daddr,
        },
    );
    let entry = EGRESS.get(&key)?;
    let mut i = 0;
    while i < EGRESS_RULES_PER_PREFIX {
        if i as u32 >= entry.len {
            break;
        }
        let r = &entry.rules[i];
        if r.protos & proto != 0 && r.port_lo <= port && port <= r.port_hi {
            return Some(r.rule_id);
        }
        i += 1;
    }
    None
}
