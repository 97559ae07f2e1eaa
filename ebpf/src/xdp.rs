//! XDP ingress allowlist (Linux 4.8; bpf links 5.9): packets to a protected port
//! from a source outside that port's allowlist are dropped at the driver.
//!
//! The parser is defensive: anything that could be for a protected port but cannot
//! be classified with certainty (truncated headers, bad IHL, an IPv6 extension
//! chain too long to walk, a first fragment too short to carry the ports) is
//! dropped and counted. Non-first fragments pass: they carry no ports, and without
//! their first fragment (which is judged here) they never reassemble.

use crate::{
    event::{self, EMPTY},
    maps::{
        INGRESS, INGRESS_HOSTS, STATS, active_slot, banned, bans, count, port_protected, slot_meta,
    },
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use warden_common::*;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers walked before giving up.
const MAX_EXT_HEADERS: u32 = 8;

enum Class {
    /// Not for a protected port (or not IP at all): pass untouched.
    Pass,
    /// Might be for a protected port but unreadable: drop.
    Malformed,
    /// A TCP/UDP packet with readable ports.
    L4 {
        family: u16,
        proto: u8,
        saddr: Addr,
        daddr: Addr,
        sport: u16,
        dport: u16,
        syn: bool,
    },
}

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let slot = active_slot();
    let bans = bans();
    // A port that is neither protected nor the proxy's under bans passes as
    // soon as it is read: nothing else of the packet is looked at.
    let wanted =
        |dport: u16| port_protected(slot, dport) || (bans != 0 && (bans & 0xffff) as u16 == dport);
    match classify(&ctx, wanted) {
        Class::Pass => XDP_PASS,
        Class::Malformed => {
            count(&STATS, stat::MALFORMED);
            XDP_DROP
        }
        Class::L4 {
            family,
            proto,
            saddr,
            daddr,
            sport,
            dport,
            syn,
        } => {
            let protected = port_protected(slot, dport);
            // Banned sources reach neither the protected ports nor the proxy.
            if bans != 0 && (protected || (bans & 0xffff) as u16 == dport) && banned(&saddr) {
                count(&STATS, stat::BANNED_DROPPED);
                let mut ev = EMPTY;
                ev.family = family;
                ev.proto = proto;
                ev.hook = hook::XDP;
                ev.generation = slot_meta(slot).generation;
                ev.saddr = saddr;
                ev.daddr = daddr;
                ev.sport = sport;
                ev.dport = dport;
                ev.ifindex = ctx.ingress_ifindex() as u32;
                ev.verdict = verdict::DENY;
                ev.reason = reason::BANNED;
                ev.rule_id = RULE_DEFAULT_DENY;
                // One record per connection attempt.
                event::record(&ev, syn);
                return XDP_DROP;
            }
            if !protected {
                return XDP_PASS;
            }
            let meta = slot_meta(slot);
            let key = IngressKey {
                slot_port: (slot << 16 | dport as u32).to_be_bytes(),
                addr: saddr,
            };
            let host = if meta.flags & slot_flags::NO_INGRESS_HOSTS == 0 {
                // SAFETY: the value is copied out before the program returns.
                unsafe { INGRESS_HOSTS.get(&key) }
            } else {
                None
            };
            let rule = match host {
                Some(r) => Some(r.rule_id),
                None if meta.flags & slot_flags::INGRESS_PREFIXES != 0 => INGRESS
                    .get(&Key::new(INGRESS_KEY_FIXED_BITS + 128, key))
                    .map(|r| r.rule_id),
                None => None,
            };
            let ifindex = ctx.ingress_ifindex() as u32;
            let ev = |verdict: u8, reason: u8, rule_id: u32| {
                let mut ev = EMPTY;
                ev.family = family;
                ev.proto = proto;
                ev.hook = hook::XDP;
                ev.generation = meta.generation;
                ev.saddr = saddr;
                ev.daddr = daddr;
                ev.sport = sport;
                ev.dport = dport;
                ev.ifindex = ifindex;
                ev.verdict = verdict;
                ev.reason = reason;
                ev.rule_id = rule_id;
                ev
            };
            match rule {
                Some(rule_id) => {
                    // One record per new connection, not per packet.
                    event::record_built(rule_id, syn, || {
                        ev(verdict::ALLOW, reason::INGRESS_ALLOWED, rule_id)
                    });
                    XDP_PASS
                }
                None if meta.flags & slot_flags::AUDIT_INGRESS != 0 => {
                    // Audit passes the flow: one record per new connection or datagram.
                    event::record_built(RULE_DEFAULT_DENY, syn || proto == IPPROTO_UDP, || {
                        ev(
                            verdict::WOULD_DENY,
                            reason::INGRESS_NOT_ALLOWED,
                            RULE_DEFAULT_DENY,
                        )
                    });
                    XDP_PASS
                }
                None => {
                    // A flood past the budget is counted, its records not built.
                    event::record_built(RULE_DEFAULT_DENY, true, || {
                        ev(
                            verdict::DENY,
                            reason::INGRESS_NOT_ALLOWED,
                            RULE_DEFAULT_DENY,
                        )
                    });
                    XDP_DROP
                }
            }
        }
    }
}

/// Bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: `at` checked the bounds; unaligned read of plain bytes.
    at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Headers further into the frame than this are not walked (the frame is judged
/// malformed): the bound lets the verifier prove every variable-offset read.
const MAX_HEADER_OFFSET: usize = 1024;

/// The four bytes at a variable offset, straight from the frame. No
/// `bpf_xdp_load_bytes` (Linux 5.18): bounded direct reads work on every kernel
/// warden supports, and the program is not loaded for multi-buffer frames, so
/// the headers are always in the linear part. Every caller's header is at least
/// four bytes long (a narrower check is folded into one the verifier cannot use).
#[inline(always)]
fn load4(ctx: &XdpContext, off: usize) -> Option<[u8; 4]> {
    u32::try_from(read4(ctx, off)).ok().map(u32::to_be_bytes)
}

/// [`load4`]'s read, big-endian, or -1. Not inlined: the slow paths' copies
/// would overflow the 512-byte stack. A plain integer comes back (an `Option`
/// leaves bits of the return register unset, which the verifier refuses).
#[inline(never)]
fn read4(ctx: &XdpContext, off: usize) -> i64 {
    if off > MAX_HEADER_OFFSET {
        return -1;
    }
    match at::<[u8; 4]>(ctx, off) {
        // SAFETY: `at` checked the bounds; unaligned read of plain bytes.
        Some(p) => u32::from_be_bytes(unsafe { *p }) as i64,
        None => -1,
    }
}

/// The ports and TCP flags at `l4`, or `Pass` (as `Err`) when `wanted` says
/// the destination port is of no interest; `direct` when `l4` is one of the
/// common constant offsets (read straight from the packet, cheapest).
#[inline(always)]
fn ports(
    ctx: &XdpContext,
    l4: usize,
    proto: u8,
    direct: bool,
    wanted: impl Fn(u16) -> bool,
) -> Result<(u16, u16, bool), Class> {
    if direct {
        // One bounds check for TCP's ports and flags; the ports alone for UDP
        // (or a TCP header cut short, which carries no SYN).
        let tcp = if proto == IPPROTO_TCP {
            at::<[u8; 14]>(ctx, l4)
        } else {
            None
        };
        let (b, flags) = match tcp {
            // SAFETY: `at` checked the bounds; unaligned read of plain bytes.
            Some(t) => unsafe { ([(*t)[0], (*t)[1], (*t)[2], (*t)[3]], (*t)[13]) },
            None => {
                // SAFETY: as above.
                let u = at::<[u8; 4]>(ctx, l4).map(|p| unsafe { *p });
                (u.ok_or(Class::Malformed)?, 0)
            }
        };
        let dport = u16::from_be_bytes([b[2], b[3]]);
        if !wanted(dport) {
            return Err(Class::Pass);
        }
        let syn = proto == IPPROTO_TCP && flags & 0x12 == 0x02;
        return Ok((u16::from_be_bytes([b[0], b[1]]), dport, syn));
    }
    let b = load4(ctx, l4).ok_or(Class::Malformed)?;
    let dport = u16::from_be_bytes([b[2], b[3]]);
    if !wanted(dport) {
        return Err(Class::Pass);
    }
    let syn = proto == IPPROTO_TCP
        && load4(ctx, l4 + 12)
            .map(|b| b[1])
            .is_some_and(|f| f & 0x12 == 0x02);
    Ok((u16::from_be_bytes([b[0], b[1]]), dport, syn))
}

#[inline(always)]
fn classify(ctx: &XdpContext, wanted: impl Fn(u16) -> bool) -> Class {
    let Some(mut proto) = be16_at(ctx, 12) else {
        // Shorter than an Ethernet header: the stack drops it anyway.
        return Class::Pass;
    };
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    let mut tags = 0;
    while tags < 2 && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        match be16_at(ctx, off + 2) {
            Some(p) => proto = p,
            None => return Class::Malformed,
        }
        off += 4;
        tags += 1;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, off, wanted),
        ETH_P_IPV6 => ipv6(ctx, off, wanted),
        // A third tag could hide IP from this parser; the stack would not
        // deliver it locally either, but drop rather than guess.
        ETH_P_8021Q | ETH_P_8021AD => Class::Malformed,
        _ => Class::Pass,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize, wanted: impl Fn(u16) -> bool) -> Class {
    let Some(hdr) = at::<[u8; 20]>(ctx, off) else {
        return Class::Malformed;
    };
    // SAFETY: bounds checked by `at`.
    let h = unsafe { *hdr };
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Class::Malformed;
    }
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Class::Pass;
    }
    if frag & 0x1fff != 0 {
        count(&STATS, stat::FRAGMENTS_PASSED);
        return Class::Pass;
    }
    // The ports must lie inside both the frame and the IP datagram.
    if total_len < ihl + 4 {
        return Class::Malformed;
    }
    let (sport, dport, syn) = match ports(ctx, off + ihl, proto, ihl == 20, wanted) {
        Ok(p) => p,
        Err(class) => return class,
    };
    Class::L4 {
        family: 2,
        proto,
        saddr: mapped_v4([h[12], h[13], h[14], h[15]]),
        daddr: mapped_v4([h[16], h[17], h[18], h[19]]),
        sport,
        dport,
        syn,
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize, wanted: impl Fn(u16) -> bool) -> Class {
    let Some(hdr) = at::<[u8; 40]>(ctx, off) else {
        return Class::Malformed;
    };
    // SAFETY: bounds checked by `at`.
    let h = unsafe { &*hdr };
    if h[0] >> 4 != 6 {
        return Class::Malformed;
    }
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    saddr.copy_from_slice(&h[8..24]);
    daddr.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut walked = 0;
    loop {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => break,
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some([nh, len, ..]) = load4(ctx, l4) else {
                    return Class::Malformed;
                };
                next = nh;
                l4 += (len as usize + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some([nh, len, ..]) = load4(ctx, l4) else {
                    return Class::Malformed;
                };
                next = nh;
                l4 += (len as usize + 2) * 4;
            }
            // Fragment header: 8 bytes; only the first fragment carries ports.
            44 => {
                let Some([nh, _, fo_hi, fo_lo]) = load4(ctx, l4) else {
                    return Class::Malformed;
                };
                if u16::from_be_bytes([fo_hi, fo_lo]) & 0xfff8 != 0 {
                    count(&STATS, stat::FRAGMENTS_PASSED);
                    return Class::Pass;
                }
                next = nh;
                l4 += 8;
            }
            // ICMPv6, ESP, no-next-header and everything else carry no ports.
            _ => return Class::Pass,
        }
        walked += 1;
        if walked >= MAX_EXT_HEADERS {
            return Class::Malformed;
        }
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    if payload_len < l4 - off - 40 + 4 {
        return Class::Malformed;
    }
    let (sport, dport, syn) = match ports(ctx, l4, next, walked == 0, wanted) {
        Ok(p) => p,
        Err(class) => return class,
    };
    Class::L4 {
        family: 10,
        proto: next,
        saddr,
        daddr,
        sport,
        dport,
        syn,
    }
}
