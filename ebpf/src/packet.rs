//! cgroup_skb `egress`/`ingress` (Linux 4.10; bpf links 5.7): the packets that
//! really leave and arrive, judged by the cgroup of the socket they belong to.
//!
//! The system-call hooks judge the address a process asks for; a packet can
//! still go elsewhere or come from elsewhere:
//! - its own route: an IPv6 routing header (`IPV6_RTHDR`, also as ancillary
//!   data) or IPv4 options (source routing) send it to a hop the policy never
//!   judged. Refused outright for restricted sockets (`SOURCE_ROUTED`);
//! - other protocols: ICMP echo sockets and raw sockets never pass the
//!   sendmsg hooks. Egress rules name TCP and UDP, so nothing else leaves a
//!   restricted socket;
//! - kernel workers: MPTCP opens additional subflows from a worker thread, so
//!   the connect hooks see the worker's cgroup; the packets carry the
//!   restricted socket's cgroup and are judged by it;
//! - inbound peers: a restricted socket's packets from a peer are judged like
//!   packets to it (remote address, remote port, protocol), so a host the
//!   policy does not allow can neither connect in nor answer a datagram. The
//!   protected service ports are the exception: who may reach them is the
//!   ingress and local-access policy's business.
//! - packets for a protected port delivered to a socket outside the server
//!   cgroups: a port taken without bind() (autobind, where
//!   `ip_local_port_range` covers it) is never judged by the bind hooks.
//!
//! Cost: a TCP segment that is neither a SYN nor source-routed passes after
//! reading its headers (straight from the packet for the common shapes; its
//! peer was judged at the SYN, in one direction or the other); SYNs, datagrams
//! and other protocols of restricted sockets take the cgroup walk and one trie
//! lookup per policy.

use crate::{
    cgroup::{self, Cgroup, Socket},
    egress::{self, IPPROTO_TCP, IPPROTO_UDP, Verdict},
    event::{self, EMPTY},
    maps::{CONNECTS, active_slot, port_protected, slot_meta},
};
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb, programs::SkBuffContext,
};
use warden_common::*;

const PASS: i32 = 1;
const DROP: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before the packet counts as unreadable.
const MAX_EXT_HEADERS: u32 = 6;

/// What the hooks read from a packet (the data starts at the IP header).
/// Always fully initialised: the verifier refuses copies of undefined bytes.
struct Packet {
    /// IPv4 or IPv6 with every header the hooks need present.
    readable: bool,
    family: u16,
    proto: u8,
    saddr: Addr,
    daddr: Addr,
    /// 0 unless TCP or UDP.
    sport: u16,
    dport: u16,
    /// A TCP SYN without ACK: a new connection.
    syn: bool,
    /// An IPv6 routing header or IPv4 options.
    source_routed: bool,
}

impl Packet {
    /// A TCP segment of a connection whose peer was judged at its SYN.
    #[inline(always)]
    fn established_tcp(&self) -> bool {
        self.readable && self.proto == IPPROTO_TCP && !self.syn && !self.source_routed
    }

    #[inline(always)]
    fn has_ports(&self) -> bool {
        self.readable && matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP)
    }
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let p = parse(&ctx);
    if p.established_tcp() {
        return PASS;
    }
    if p.syn {
        connection_source(&ctx, &p);
    }
    let slot = active_slot();
    let meta = slot_meta(slot);
    if p.syn && through_loopback(&ctx) && port_protected(slot, p.dport) {
        if local_client(&ctx, slot, meta, &p) == DROP {
            return DROP;
        }
    }
    if meta.flags & slot_flags::EGRESS == 0 {
        return PASS;
    }
    // The remote end of an outgoing packet is its destination.
    judge_peer(&ctx, slot, meta, &p, hook::SKB_EGRESS)
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    let p = parse(&ctx);
    let slot = active_slot();
    if p.has_ports() && port_protected(slot, p.dport) {
        if p.proto == IPPROTO_TCP && !p.syn {
            return PASS;
        }
        return server_socket(&ctx, slot, &p);
    }
    if p.readable && p.proto == IPPROTO_TCP && !p.syn {
        return PASS;
    }
    let meta = slot_meta(slot);
    if meta.flags & slot_flags::EGRESS == 0 {
        return PASS;
    }
    judge_peer(&ctx, slot, meta, &p, hook::SKB_INGRESS)
}

/// The SYN of a TCP connection connect4/6 allowed and recorded (`CONNECTS`):
/// its source address and port, which exist only once connect() chose them,
/// complete that record (and give it its Community ID). Every other SYN costs
/// one lookup, in a hook that runs anyway (a sock_ops program would run for
/// every TCP socket at about nine points of each connection). Out of line:
/// the record needs stack of its own, which the hook's frame cannot spare.
#[inline(never)]
fn connection_source(ctx: &SkBuffContext, p: &Packet) {
    // SAFETY: the context pointer of a cgroup_skb program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: presence test only.
    if unsafe { CONNECTS.get(&cookie) }.is_none() {
        return;
    }
    // The first SYN only: a retransmit finds nothing.
    let _ = CONNECTS.remove(&cookie);
    let mut ev = EMPTY;
    ev.hook = hook::CONNECT_SOURCE;
    ev.verdict = verdict::ALLOW;
    ev.proto = IPPROTO_TCP;
    ev.cookie = cookie;
    ev.family = p.family;
    ev.saddr = p.saddr;
    ev.sport = p.sport;
    event::emit_record(&ev);
}

/// The kernel's loopback device is always interface 1 (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Whether the packet leaves through loopback: its destination is this host
/// (in the socket's network namespace), whatever address it was sent to.
#[inline(always)]
fn through_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context pointer of a cgroup_skb program.
    unsafe { (*ctx.skb.skb).ifindex == LOOPBACK_IFINDEX }
}

/// A SYN for a protected port of this host: only from a cgroup allowed to
/// connect. The connect hooks decided already; this holds where they were
/// told otherwise: a `[[remote]]` cgroup's connect to an address the host
/// has gained since the daemon last read its addresses.
#[inline(always)]
fn local_client(ctx: &SkBuffContext, slot: u32, meta: SlotMeta, p: &Packet) -> i32 {
    let socket = Socket(ctx.skb.skb);
    let rule = cgroup::access_rule(slot, &socket);
    if rule.is_some_and(|r| r.flags & CG_MAY_CONNECT != 0) {
        return PASS;
    }
    // Auditing, the connect hook reported this connection already.
    if meta.flags & slot_flags::AUDIT_LOCAL != 0 {
        return PASS;
    }
    let mut ev = packet_event(ctx, p, hook::SKB_EGRESS, meta.generation);
    ev.reason = reason::LOCAL_NOT_ALLOWED;
    ev.rule_id = rule.map(|r| r.rule_id).unwrap_or(RULE_DEFAULT_DENY);
    ev.verdict = verdict::DENY;
    event::record(&ev, true);
    DROP
}

/// A new connection or a datagram for a protected port: only a socket of a
/// server cgroup may take it.
#[inline(always)]
fn server_socket(ctx: &SkBuffContext, slot: u32, p: &Packet) -> i32 {
    let socket = Socket(ctx.skb.skb);
    let rule = cgroup::access_rule(slot, &socket);
    if rule.is_some_and(|r| r.flags & CG_MAY_BIND != 0) {
        return PASS;
    }
    let meta = slot_meta(slot);
    let audit = meta.flags & slot_flags::AUDIT_LOCAL != 0;
    let mut ev = packet_event(ctx, p, hook::SKB_INGRESS, meta.generation);
    ev.reason = reason::NOT_SERVER_SOCKET;
    ev.rule_id = rule.map(|r| r.rule_id).unwrap_or(RULE_DEFAULT_DENY);
    ev.verdict = if audit {
        verdict::WOULD_DENY
    } else {
        verdict::DENY
    };
    event::record(&ev, true);
    if audit { PASS } else { DROP }
}

/// Every egress policy of the socket's cgroup must allow the packet's remote
/// end: its destination leaving, its source arriving. A packet that cannot
/// be read, carries its own route or is neither TCP nor UDP is allowed by none.
#[inline(always)]
fn judge_peer(ctx: &SkBuffContext, slot: u32, meta: SlotMeta, p: &Packet, hook: u8) -> i32 {
    let socket = Socket(ctx.skb.skb);
    let outgoing = hook == hook::SKB_EGRESS;
    let (addr, port) = if outgoing {
        (&p.daddr, p.dport)
    } else {
        (&p.saddr, p.sport)
    };
    let judgeable = p.readable && !(outgoing && p.source_routed);
    let proto = egress::proto_bit(p.proto);
    let v = egress::verdict(slot, &socket, |policy| {
        judgeable && egress::rule(slot, policy, addr, proto, port).is_some()
    });
    if v == Verdict::Allowed {
        return PASS;
    }
    // An auditing policy lets the packet through; a TCP SYN or a datagram on
    // its own route was judged and reported by the connect/sendmsg hooks
    // already, so only what they never see is reported here.
    if v == Verdict::WouldDeny && outgoing && p.has_ports() && !p.source_routed {
        return PASS;
    }
    let mut ev = packet_event(ctx, p, hook, meta.generation);
    ev.reason = if !p.readable {
        reason::MALFORMED
    } else if p.source_routed && outgoing {
        reason::SOURCE_ROUTED
    } else if outgoing {
        reason::EGRESS_NOT_ALLOWED
    } else {
        reason::INBOUND_NOT_ALLOWED
    };
    ev.rule_id = RULE_DEFAULT_DENY;
    ev.verdict = if v == Verdict::Denied {
        verdict::DENY
    } else {
        verdict::WOULD_DENY
    };
    event::record(&ev, true);
    if v == Verdict::Denied { DROP } else { PASS }
}

#[inline(always)]
fn packet_event(ctx: &SkBuffContext, p: &Packet, hook: u8, generation: u32) -> FlowEvent {
    let mut ev = EMPTY;
    ev.hook = hook;
    ev.generation = generation;
    ev.family = p.family;
    ev.proto = p.proto;
    ev.saddr = p.saddr;
    ev.daddr = p.daddr;
    ev.sport = p.sport;
    ev.dport = p.dport;
    fill_socket(ctx, &mut ev);
    ev
}

/// The socket's side of an event: its cgroup, owner and cookie (no process:
/// packets are sent from softirq and kernel workers too).
#[inline(always)]
fn fill_socket(ctx: &SkBuffContext, ev: &mut FlowEvent) {
    ev.cgroup_id = Socket(ctx.skb.skb).id();
    ev.uid = ctx.get_socket_uid();
    // SAFETY: the context pointer of a cgroup_skb program.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
}

/// Reads the IP header (and IPv6 extension headers) and the ports; not
/// `readable` if it is not IPv4/IPv6 or is truncated.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Packet {
    let mut p = Packet {
        readable: false,
        family: 0,
        proto: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        syn: false,
        source_routed: false,
    };
    p.readable = read_direct(ctx, &mut p).is_some() || read(ctx, &mut p).is_some();
    p
}

/// The common shapes (IPv4 without options, IPv6 without extension headers,
/// TCP or UDP, headers in the linear part) read straight from the packet: one
/// bounds check instead of four helper calls. Anything else: `None`, and
/// [`read`] copies the bytes out.
#[inline(always)]
fn read_direct(ctx: &SkBuffContext, p: &mut Packet) -> Option<()> {
    // SAFETY: the context pointer of a cgroup_skb program; data/data_end are
    // readable with CAP_BPF and the verifier checks every access against them.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // Both families' headers are at least 20 bytes (a one-byte check gets
    // folded into a comparison the verifier cannot use).
    if start + 20 > end {
        return None;
    }
    // SAFETY: 20 bytes, bounds checked above.
    let h = unsafe { &*(start as *const [u8; 20]) };
    let (l4, proto) = match h[0] >> 4 {
        4 => {
            if h[0] & 0x0f != 5 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            p.family = AF_INET;
            p.saddr = mapped_v4([h[12], h[13], h[14], h[15]]);
            p.daddr = mapped_v4([h[16], h[17], h[18], h[19]]);
            (start + 20, h[9])
        }
        6 => {
            if start + 40 > end {
                return None;
            }
            // SAFETY: 40 bytes, bounds checked above.
            let h = unsafe { &*(start as *const [u8; 40]) };
            p.family = AF_INET6;
            p.saddr.copy_from_slice(&h[8..24]);
            p.daddr.copy_from_slice(&h[24..40]);
            (start + 40, h[6])
        }
        _ => return None,
    };
    match proto {
        IPPROTO_TCP => {
            if l4 + 14 > end {
                return None;
            }
            // SAFETY: 14 bytes of TCP header, bounds checked above.
            let t = unsafe { &*(l4 as *const [u8; 14]) };
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            p.syn = t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
        IPPROTO_UDP => {
            if l4 + 4 > end {
                return None;
            }
            // SAFETY: the ports, bounds checked above.
            let u = unsafe { &*(l4 as *const [u8; 4]) };
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        _ => return None,
    }
    p.proto = proto;
    Some(())
}

#[inline(always)]
fn read(ctx: &SkBuffContext, p: &mut Packet) -> Option<()> {
    let first: u8 = ctx.load(0).ok()?;
    let l4 = match first >> 4 {
        4 => {
            let h: [u8; 20] = ctx.load(0).ok()?;
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return None;
            }
            p.family = AF_INET;
            p.proto = h[9];
            p.source_routed = ihl > 20;
            p.saddr = mapped_v4([h[12], h[13], h[14], h[15]]);
            p.daddr = mapped_v4([h[16], h[17], h[18], h[19]]);
            // A non-first fragment has no ports (the hooks see whole packets:
            // before fragmentation leaving, after reassembly arriving).
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            ihl
        }
        6 => {
            let h: [u8; 40] = ctx.load(0).ok()?;
            p.family = AF_INET6;
            p.saddr.copy_from_slice(&h[8..24]);
            p.daddr.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut off = 40usize;
            let mut i = 0;
            while i < MAX_EXT_HEADERS {
                match next {
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        if next == 43 {
                            p.source_routed = true;
                        }
                        let e: [u8; 2] = ctx.load(off).ok()?;
                        next = e[0];
                        off += (e[1] as usize + 1) * 8;
                    }
                    // Fragment: only a first fragment carries the ports.
                    44 => {
                        let e: [u8; 4] = ctx.load(off).ok()?;
                        if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                            return None;
                        }
                        next = e[0];
                        off += 8;
                    }
                    // Authentication header.
                    51 => {
                        let e: [u8; 2] = ctx.load(off).ok()?;
                        next = e[0];
                        off += (e[1] as usize + 2) * 4;
                    }
                    _ => break,
                }
                i += 1;
            }
            if matches!(next, 0 | 43 | 60 | 44 | 51) {
                return None;
            }
            p.proto = next;
            off
        }
        _ => return None,
    };
    if matches!(p.proto, IPPROTO_TCP | IPPROTO_UDP) {
        let ports: [u8; 4] = ctx.load(l4).ok()?;
        p.sport = u16::from_be_bytes([ports[0], ports[1]]);
        p.dport = u16::from_be_bytes([ports[2], ports[3]]);
        if p.proto == IPPROTO_TCP {
            let flags: u8 = ctx.load(l4 + 13).ok()?;
            p.syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        }
    }
    Some(())
}
