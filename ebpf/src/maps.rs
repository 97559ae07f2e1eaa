//! Maps shared with userspace. All are pinned by name under warden's bpffs
//! directory, so enforcement outlives the daemon and a restarted daemon adopts them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use warden_common::*;

/// `STATE[STATE_ACTIVE_SLOT]` is the slot programs read; `STATE[STATE_ABI]` the layout.
#[map(name = "STATE")]
pub static STATE: Array<u32> = Array::pinned(STATE_LEN, 0);

#[map(name = "SLOT_META")]
pub static SLOT_META: Array<SlotMeta> = Array::pinned(SLOTS, 0);

/// The protected ports of each slot, as a bitmap.
#[map(name = "PORTS")]
pub static PORTS: Array<PortBitmap> = Array::pinned(SLOTS, 0);

/// `BPF_F_NO_PREALLOC`: hash maps written only from userspace allocate entries
/// as they are added. Preallocating their full capacity cost most of the
/// daemon's start (about 1 s of kernel time here, 20 s under emulation) and
/// memory an ordinary policy never uses (map memory 32 -> 11 MiB, bpftool's
/// `bytes_memlock`); lookups cost the same.
const NO_PREALLOC: u32 = 1;

/// Ingress prefixes other than single hosts.
#[map(name = "INGRESS")]
pub static INGRESS: LpmTrie<IngressKey, IngressRule> = LpmTrie::pinned(MAX_INGRESS_PREFIXES, 0);

/// Single-host ingress entries (/32, /128), looked up before the trie.
#[map(name = "INGRESS_HOSTS")]
pub static INGRESS_HOSTS: HashMap<IngressKey, IngressRule> =
    HashMap::pinned(MAX_INGRESS_PREFIXES, NO_PREALLOC);

/// Cgroups that may connect to / bind the protected ports; flags already include
/// those of every listed ancestor.
#[map(name = "CGROUPS")]
pub static CGROUPS: HashMap<CgroupKey, CgroupRule> =
    HashMap::pinned(MAX_CGROUP_ENTRIES, NO_PREALLOC);

/// Cgroups with an egress allowlist.
#[map(name = "EGRESS_CGROUPS")]
pub static EGRESS_CGROUPS: HashMap<CgroupKey, EgressPolicyRef> =
    HashMap::pinned(MAX_CGROUP_ENTRIES, NO_PREALLOC);

#[map(name = "EGRESS")]
pub static EGRESS: LpmTrie<EgressKey, EgressEntry> = LpmTrie::pinned(MAX_EGRESS_PREFIXES, 0);

/// Networks where `[[remote]]` cgroups may reach the protected ports (key:
/// `slot << 16` then the address).
#[map(name = "REMOTE")]
pub static REMOTE: LpmTrie<IngressKey, IngressRule> = LpmTrie::pinned(MAX_REMOTE_PREFIXES, 0);

/// This host's addresses (IPv4-mapped), kept by the daemon: never remote.
#[map(name = "LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<Addr, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, NO_PREALLOC);

/// Single addresses learned from DNS for a policy's host rules (exact keys:
/// the prefix length is not used), each rule with its own expiry.
#[map(name = "EGRESS_LEARNED")]
pub static EGRESS_LEARNED: HashMap<EgressKey, LearnedEntry> =
    HashMap::pinned(MAX_LEARNED, NO_PREALLOC);

/// Where each steered socket meant its DNS traffic to go (by socket cookie).
#[map(name = "DNS_SOCKETS")]
pub static DNS_SOCKETS: LruHashMap<u64, DnsOrigin> = LruHashMap::pinned(MAX_DNS_SOCKETS, 0);

/// Allowed TCP connects whose record waits for its source (by socket cookie).
#[map(name = "CONNECTS")]
pub static CONNECTS: LruHashMap<u64, u8> = LruHashMap::pinned(MAX_DNS_SOCKETS, 0);

#[map(name = "RULE_HITS")]
pub static RULE_HITS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_RULES, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::LEN, 0);

#[map(name = "EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

/// Banned sources (IPv4-mapped) and when each ban ends (CLOCK_MONOTONIC ns).
#[map(name = "BANS")]
pub static BANS: HashMap<Addr, u64> = HashMap::pinned(MAX_BANS, NO_PREALLOC);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// The slot programs read; read once per run.
#[inline(always)]
pub fn active_slot() -> u32 {
    STATE.get(STATE_ACTIVE_SLOT).copied().unwrap_or(0) & 1
}

/// The metadata of `slot` (generation for events, flags).
#[inline(always)]
pub fn slot_meta(slot: u32) -> SlotMeta {
    SLOT_META.get(slot).copied().unwrap_or_default()
}

/// Records this CPU may still emit in the current window (0 in `STATE` = unlimited).
#[inline(always)]
pub fn event_budget() -> u32 {
    STATE.get(STATE_EVENT_BUDGET).copied().unwrap_or(0)
}

/// `STATE[STATE_BANS]`: 0, or [`BANS_ON`] with the proxy's port.
#[inline(always)]
pub fn bans() -> u32 {
    STATE.get(STATE_BANS).copied().unwrap_or(0)
}

/// The port of the daemon's resolver, if any policy has host rules.
#[inline(always)]
pub fn dns_port() -> Option<u16> {
    let v = STATE.get(STATE_DNS).copied().unwrap_or(0);
    if v & DNS_ON != 0 {
        Some(v as u16)
    } else {
        None
    }
}

/// CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }
}

/// Whether `saddr` is banned now.
#[inline(always)]
pub fn banned(saddr: &Addr) -> bool {
    // SAFETY: plain-data value copied out at once.
    match unsafe { BANS.get(saddr) } {
        Some(&until) => now_ns() < until,
        None => false,
    }
}

#[inline(always)]
pub fn port_protected(slot: u32, port: u16) -> bool {
    PORTS.get(slot).is_some_and(|b| b.contains(port))
}

#[inline(always)]
pub fn count(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}
