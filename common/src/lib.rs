//! Types shared by warden's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel and user
//! sides agree byte for byte; sizes are checked at compile time. The `user`
//! feature implements `aya::Pod` so userspace can read and write the maps.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one lookup structure serves both families and an IPv4-mapped IPv6 address
//! matches exactly the IPv4 rules that cover it.
#![no_std]

/// Directory under bpffs where warden pins its maps and links.
pub const PIN_DIR: &str = "ollama-warden";
/// Bumped whenever a map layout or map semantics change; a daemon refuses to
/// adopt pinned state of another layout.
pub const ABI_VERSION: u32 = 5;

/// Policy slots: userspace fills the inactive one, then flips `STATE[ACTIVE_SLOT]`.
pub const SLOTS: u32 = 2;
/// Index of the active slot in the `STATE` array.
pub const STATE_ACTIVE_SLOT: u32 = 0;
/// Index of the ABI version in the `STATE` array.
pub const STATE_ABI: u32 = 1;
/// Index of the event budget in the `STATE` array: records each CPU may emit per
/// window of [`EVENT_WINDOW_SHIFT`] (0 = unlimited). Records beyond it are counted
/// in `stat::EVENTS_SUPPRESSED`; the verdict and its rule counter are unaffected.
pub const STATE_EVENT_BUDGET: u32 = 2;
/// Index of the ban switch in the `STATE` array: 0 = no bans (the `BANS` map
/// is not looked up); otherwise [`BANS_ON`] and, in the low 16 bits, the auth
/// proxy's port, which banned sources cannot reach either.
pub const STATE_BANS: u32 = 3;
pub const BANS_ON: u32 = 1 << 31;
/// Index of the DNS switch in the `STATE` array: 0 = no host rules; otherwise
/// [`DNS_ON`] and, in the low 16 bits, the port of the daemon's resolver on
/// loopback (`127.0.0.1`, `::1`), where the DNS traffic of cgroups with host
/// rules is steered.
pub const STATE_DNS: u32 = 4;
pub const DNS_ON: u32 = 1 << 31;
pub const STATE_LEN: u32 = 5;
/// Sources the `BANS` map can hold.
pub const MAX_BANS: u32 = 65_536;
/// Budget windows are `coarse_ns >> EVENT_WINDOW_SHIFT` (about 1.05 ms).
pub const EVENT_WINDOW_SHIFT: u32 = 20;

/// `SlotMeta::flags` bits.
pub mod slot_flags {
    /// The slot's ingress allowlist has prefixes other than single hosts (those
    /// live in the `INGRESS` trie; hosts in the `INGRESS_HOSTS` hash).
    pub const INGRESS_PREFIXES: u32 = 1;
    /// Ingress only audits: a source outside the allowlist passes, recorded as
    /// `WOULD_DENY`.
    pub const AUDIT_INGRESS: u32 = 2;
    /// Local access and bind control only audit.
    pub const AUDIT_LOCAL: u32 = 4;
    /// At least one egress policy resolved to a cgroup: the packet hooks judge
    /// restricted sockets' packets (without it they only guard the service ports).
    pub const EGRESS: u32 = 8;
    /// The slot's ingress allowlist has no single hosts: the `INGRESS_HOSTS`
    /// lookup (a 20-byte hash) is skipped. Said as an absence, so a slot
    /// written before the flag existed is still looked up.
    pub const NO_INGRESS_HOSTS: u32 = 16;
}

/// `EgressPolicyRef::flags` bits.
pub mod egress_flags {
    /// The egress policy only audits.
    pub const AUDIT: u32 = 1;
    /// The policy has host rules: its DNS traffic goes to the daemon's
    /// resolver, and the addresses it learned are looked up.
    pub const HOSTS: u32 = 2;
}

/// Ancestor levels the programs walk (0, the root, through 15): a policy names
/// cgroups at most 15 levels deep (`warden_policy::cgroup::MAX_DEPTH`); tasks may
/// be nested deeper. Verification time grows with it (32 levels cost 240 ms per
/// sock_addr program, 16 about a third of that).
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Port rules one egress prefix can carry (after folding covering prefixes in).
pub const EGRESS_RULES_PER_PREFIX: usize = 8;
/// Rule ids index the per-rule counters.
pub const MAX_RULES: u32 = 65_536;

pub const MAX_INGRESS_PREFIXES: u32 = 262_144;
pub const MAX_EGRESS_PREFIXES: u32 = 65_536;
/// Remote networks (`[[remote]]`) per both slots.
pub const MAX_REMOTE_PREFIXES: u32 = 16_384;
/// This host's addresses, as the daemon last read them.
pub const MAX_LOCAL_ADDRS: u32 = 4_096;
/// (policy, address) pairs learned from DNS answers, per both slots.
pub const MAX_LEARNED: u32 = 65_536;
/// Sockets whose DNS destination was steered, remembered so their replies
/// seem to come from the resolver they asked (least recently used go first).
pub const MAX_DNS_SOCKETS: u32 = 16_384;
pub const MAX_CGROUP_ENTRIES: u32 = 16_384;
pub const EVENTS_BYTES: u32 = 4 << 20;

/// Rule id used when no rule matched (the default deny of a protected port or
/// of an egress policy).
pub const RULE_DEFAULT_DENY: u32 = 0;
/// Rule id of the daemon's resolver, which every policy with host rules may
/// reach (never assigned to a policy rule: tables hold fewer than `MAX_RULES`).
pub const RULE_DNS_RESOLVER: u32 = MAX_RULES - 1;

/// `PORTS` value: one bit per port, one bitmap per slot (written in one syscall).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    pub words: [u64; 1024],
}

impl PortBitmap {
    pub const EMPTY: Self = Self { words: [0; 1024] };

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        self.words[(port >> 6) as usize] & (1u64 << (port & 63)) != 0
    }

    pub fn insert(&mut self, port: u16) {
        self.words[(port >> 6) as usize] |= 1u64 << (port & 63);
    }
}

/// `CGROUPS` value flags.
pub const CG_MAY_CONNECT: u32 = 1;
pub const CG_MAY_BIND: u32 = 2;
/// May connect to the protected ports on the `REMOTE` networks, never on
/// this host (`[[remote]]`).
pub const CG_MAY_CONNECT_REMOTE: u32 = 4;

/// Protocol bits in [`PortRule::protos`].
pub const PROTO_TCP: u32 = 1;
pub const PROTO_UDP: u32 = 2;

/// Which hook produced an event.
pub mod hook {
    pub const XDP: u8 = 1;
    pub const CONNECT4: u8 = 2;
    pub const CONNECT6: u8 = 3;
    pub const SENDMSG4: u8 = 4;
    pub const SENDMSG6: u8 = 5;
    pub const BIND4: u8 = 6;
    pub const BIND6: u8 = 7;
    /// nftables backend: the ingress (input) chain, read back through NFLOG.
    pub const NFT_INPUT: u8 = 8;
    /// nftables backend: the local access and egress (output) chains.
    pub const NFT_OUTPUT: u8 = 9;
    /// cgroup_skb egress: a packet leaving a socket, judged by the socket's cgroup.
    pub const SKB_EGRESS: u8 = 10;
    /// cgroup_skb ingress: a packet delivered to a socket, judged by its cgroup.
    pub const SKB_INGRESS: u8 = 11;
    /// The daemon's resolver: a DNS question from a cgroup with host rules.
    pub const DNS: u8 = 12;
    /// The first SYN of a TCP connection connect4/6 allowed and recorded, as
    /// the egress packet hook saw it: its source address and port (completes
    /// that record; never published alone).
    pub const CONNECT_SOURCE: u8 = 13;
    /// Never sent: what userspace reads a code it does not know as.
    pub const UNKNOWN: u8 = 0;
}

pub mod verdict {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
    /// Denied by a section in audit mode: let through, and reported.
    pub const WOULD_DENY: u8 = 3;
}

/// Why a verdict was reached.
pub mod reason {
    /// Source address is in the port's ingress allowlist.
    pub const INGRESS_ALLOWED: u8 = 1;
    /// Source address is not in the port's ingress allowlist.
    pub const INGRESS_NOT_ALLOWED: u8 = 2;
    /// A frame that might be for a protected port could not be classified.
    pub const MALFORMED: u8 = 3;
    /// The connecting cgroup (or an ancestor) may reach the protected port.
    pub const LOCAL_ALLOWED: u8 = 4;
    pub const LOCAL_NOT_ALLOWED: u8 = 5;
    /// The binding cgroup (or an ancestor) is a server cgroup.
    pub const BIND_ALLOWED: u8 = 6;
    pub const BIND_NOT_ALLOWED: u8 = 7;
    pub const EGRESS_ALLOWED: u8 = 8;
    pub const EGRESS_NOT_ALLOWED: u8 = 9;
    /// An egress-restricted socket's packet carries its own route (an IPv6
    /// routing header, IPv4 options such as source routing): its destination
    /// is not the one the policy judged.
    pub const SOURCE_ROUTED: u8 = 10;
    /// A packet for a protected port reached a socket outside the server
    /// cgroups (a port taken without bind(), e.g. by autobind).
    pub const NOT_SERVER_SOCKET: u8 = 11;
    /// A packet from a peer the restricted socket's egress policy does not
    /// allow (inbound connections and datagrams are judged like outbound ones).
    pub const INBOUND_NOT_ALLOWED: u8 = 12;
    /// The source is banned (brute force seen by the proxy, or an operator's
    /// `warden ban add`) until its ban expires.
    pub const BANNED: u8 = 13;
    /// A DNS question for a name no host rule allows (refused by the resolver).
    pub const NAME_NOT_ALLOWED: u8 = 14;
    /// A connection to an address learned from DNS for a name a host rule allows.
    pub const HOST_ALLOWED: u8 = 15;
    /// A connection to a protected port on another host, from a cgroup a
    /// `[[remote]]` block names, to one of its networks.
    pub const REMOTE_ALLOWED: u8 = 16;
    /// Never sent: what userspace reads a code it does not know as.
    pub const UNKNOWN: u8 = 0;
}

/// Indices of the per-CPU `STATS` counters.
pub mod stat {
    /// Ring-buffer reservations that failed: events lost in the kernel.
    pub const EVENTS_LOST: u32 = 0;
    /// Frames dropped because they could not be classified.
    pub const MALFORMED: u32 = 1;
    /// Non-first IP fragments passed (the first fragment carries the ports).
    pub const FRAGMENTS_PASSED: u32 = 2;
    /// Records not emitted because the CPU's event budget was spent (a flood):
    /// counted, and the verdicts still counted per rule.
    pub const EVENTS_SUPPRESSED: u32 = 3;
    /// Packets from banned sources dropped by XDP.
    pub const BANNED_DROPPED: u32 = 4;
    /// DNS connects and datagrams steered to the daemon's resolver.
    pub const DNS_STEERED: u32 = 5;
    pub const LEN: u32 = 8;
}

/// A 16-byte address; IPv4 is IPv4-mapped.
pub type Addr = [u8; 16];

/// Key of the `CGROUPS` and `EGRESS_CGROUPS` hash maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub slot: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
}

/// Value of the `CGROUPS` map: what a cgroup (and its descendants) may do.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRule {
    pub flags: u32,
    pub rule_id: u32,
}

/// Data part of an `INGRESS` LPM key: (slot, port) then the source address.
/// Prefix length counts from the start of `slot_port`. Also the whole key of
/// `INGRESS_HOSTS`, which holds the single-host entries (/32, /128): a hash
/// lookup costs the same at any size, a trie walk grows with the list.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressKey {
    /// `slot << 16 | port`, big-endian so the LPM trie matches it bit by bit.
    pub slot_port: [u8; 4],
    pub addr: Addr,
}

/// Bits of an `IngressKey` before the address starts.
pub const INGRESS_KEY_FIXED_BITS: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressRule {
    pub rule_id: u32,
}

/// Data part of an `EGRESS` LPM key: (slot, egress policy index) then the destination.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressKey {
    /// `slot << 24 | policy index`, big-endian.
    pub slot_policy: [u8; 4],
    pub addr: Addr,
}

pub const EGRESS_KEY_FIXED_BITS: u32 = 32;

/// Value of the `EGRESS_CGROUPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressPolicyRef {
    pub policy: u32,
    /// [`egress_flags`] bits.
    pub flags: u32,
}

/// One allowed (protocols, port range) for a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub rule_id: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub protos: u32,
}

/// Value of the `EGRESS` trie: every rule covering the prefix, folded in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressEntry {
    pub rules: [PortRule; EGRESS_RULES_PER_PREFIX],
    pub len: u32,
    pub _pad: u32,
}

/// One host rule's (protocols, port range) for a learned address, and when
/// the DNS answer it came from expires (CLOCK_MONOTONIC ns, grace included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedRule {
    pub rule_id: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub protos: u32,
    pub _pad: u32,
    pub expires_ns: u64,
}

/// Value of the `EGRESS_LEARNED` hash (key: an `EgressKey` of a single address):
/// the host rules of one policy that allow the address, until each expires.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedEntry {
    pub rules: [LearnedRule; EGRESS_RULES_PER_PREFIX],
    pub len: u32,
    pub _pad: u32,
}

/// Value of the `DNS_SOCKETS` map (key: socket cookie): where a steered socket
/// meant to send its DNS traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    pub addr: Addr,
    /// Network byte order, as in `bpf_sock_addr::user_port`.
    pub port: u32,
    pub _pad: u32,
}

/// Per-CPU state of the event budget (`EVENT_BUDGET` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window: u64,
    pub used: u64,
}

/// Per-slot metadata (`SLOT_META` array, indexed by slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotMeta {
    pub generation: u32,
    pub flags: u32,
}

/// One ring-buffer record: a verdict on a packet, connect, sendmsg or bind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// SO_COOKIE of the socket (0 for XDP).
    pub cookie: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ifindex: u32,
    pub rule_id: u32,
    pub generation: u32,
    /// AF_INET or AF_INET6 (the socket's family; for XDP the packet's).
    pub family: u16,
    /// The IP protocol number (TCP, UDP; ICMP and others from the packet hooks).
    pub proto: u8,
    pub hook: u8,
    pub verdict: u8,
    pub reason: u8,
    pub _pad: [u8; 2],
    /// Host byte order; 0 when not yet known (connect before bind).
    pub sport: u16,
    pub dport: u16,
    pub saddr: Addr,
    pub daddr: Addr,
    pub comm: [u8; 16],
}

const _: () = {
    assert!(core::mem::size_of::<FlowEvent>() == 112);
    assert!(core::mem::align_of::<FlowEvent>() == 8);
    assert!(core::mem::size_of::<CgroupKey>() == 16);
    assert!(core::mem::size_of::<IngressKey>() == 20);
    assert!(core::mem::size_of::<EgressKey>() == 20);
    assert!(core::mem::size_of::<EgressEntry>() == 8 + 12 * EGRESS_RULES_PER_PREFIX);
    assert!(core::mem::size_of::<PortRule>() == 12);
    assert!(core::mem::size_of::<EventBudget>() == 16);
    assert!(core::mem::size_of::<LearnedRule>() == 24);
    assert!(core::mem::size_of::<LearnedEntry>() == 8 + 24 * EGRESS_RULES_PER_PREFIX);
    assert!(core::mem::size_of::<DnsOrigin>() == 24);
};

/// IPv4-mapped form of an IPv4 address in network byte order.
#[inline(always)]
pub const fn mapped_v4(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
pub mod kinds;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    macro_rules! plain_data {
        ($($t:ty),*) => {$(
            // SAFETY: repr(C) plain data without implicit padding (sizes are
            // asserted above), and every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    plain_data!(
        CgroupKey,
        CgroupRule,
        IngressKey,
        IngressRule,
        EgressKey,
        EgressPolicyRef,
        EgressEntry,
        LearnedEntry,
        DnsOrigin,
        SlotMeta,
        EventBudget,
        PortBitmap,
        FlowEvent
    );
}
