//! Egress allowlists: which destinations (prefix, protocol, port) the policies
//! covering a cgroup allow. Shared by the system-call hooks (connect, sendmsg)
//! and the packet hooks (every packet of a restricted socket).

use crate::{
    cgroup::{self, Cgroup},
    maps::{EGRESS, EGRESS_LEARNED, dns_port, now_ns},
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
pub fn verdict(
    slot: u32,
    cg: &impl Cgroup,
    mut allows: impl FnMut(EgressPolicyRef) -> bool,
) -> Verdict {
    let mut would_deny = false;
    let denied = cgroup::for_each_egress_policy(slot, cg, |policy| {
        if allows(policy) {
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

/// The rule of egress policy `policy` that allows this destination: a
/// network rule, the daemon's resolver (policies with host rules) or an
/// address learned from DNS for one of its host rules, until it expires.
#[inline(always)]
pub fn rule(
    slot: u32,
    policy: EgressPolicyRef,
    daddr: &Addr,
    proto: u32,
    port: u16,
) -> Option<Match> {
    if proto == 0 {
        return None;
    }
    let key = EgressKey {
        slot_policy: (slot << 24 | (policy.policy & 0x00ff_ffff)).to_be_bytes(),
        addr: *daddr,
    };
    if let Some(rule_id) = network_rule(&key, proto, port) {
        return Some(Match {
            rule_id,
            learned: false,
        });
    }
    if policy.flags & egress_flags::HOSTS == 0 {
        return None;
    }
    if is_resolver(daddr, port) {
        return Some(Match {
            rule_id: RULE_DNS_RESOLVER,
            learned: false,
        });
    }
    learned_rule(&key, proto, port).map(|rule_id| Match {
        rule_id,
        learned: true,
    })
}

/// The rule that allowed a destination, and whether through a learned address.
#[derive(Clone, Copy)]
pub struct Match {
    pub rule_id: u32,
    pub learned: bool,
}

#[inline(always)]
fn network_rule(key: &EgressKey, proto: u32, port: u16) -> Option<u32> {
    let entry = EGRESS.get(&Key::new(EGRESS_KEY_FIXED_BITS + 128, *key))?;
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

#[inline(always)]
fn learned_rule(key: &EgressKey, proto: u32, port: u16) -> Option<u32> {
    // SAFETY: plain-data value read before the map can change.
    let entry = unsafe { EGRESS_LEARNED.get(key) }?;
    let now = now_ns();
    let mut i = 0;
    while i < EGRESS_RULES_PER_PREFIX {
        if i as u32 >= entry.len {
            break;
        }
        let r = &entry.rules[i];
        if r.protos & proto != 0 && r.port_lo <= port && port <= r.port_hi && now < r.expires_ns {
            return Some(r.rule_id);
        }
        i += 1;
    }
    None
}

/// `127.0.0.1` (also IPv4-mapped) or `::1`.
pub const LOOPBACK_V4: Addr = mapped_v4([127, 0, 0, 1]);
pub const LOOPBACK_V6: Addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Whether `addr:port` is the daemon's resolver.
#[inline(always)]
pub fn is_resolver(addr: &Addr, port: u16) -> bool {
    dns_port() == Some(port) && (*addr == LOOPBACK_V4 || *addr == LOOPBACK_V6)
}
