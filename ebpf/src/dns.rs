//! DNS steering for cgroups whose egress policy has host rules.
//!
//! Their DNS traffic (UDP and TCP port 53, to whatever resolver they name)
//! is sent to the daemon's resolver on loopback instead: connect4/6 and
//! sendmsg4/6 rewrite the destination, and recvmsg4/6 (Linux 5.2) give the
//! replies the address the socket asked, so a resolver library that checks
//! where its answer came from (glibc does) accepts it. The daemon answers only
//! names a host rule allows, and learns their addresses into
//! `EGRESS_LEARNED` before it releases the answer.

use crate::{
    cgroup::{self, Task},
    egress::{IPPROTO_TCP, IPPROTO_UDP, LOOPBACK_V4, LOOPBACK_V6},
    maps::{DNS_SOCKETS, STATS, count, dns_port},
};
use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warden_common::*;

const DNS_PORT: u16 = 53;
/// Replies are never refused (recvmsg programs must return 1).
const PASS: i32 = 1;

/// Steers `ev`'s destination to the daemon's resolver if it is DNS from a
/// cgroup with host rules; returns whether it did. `v6`: an IPv6 hook.
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, slot: u32, ev: &FlowEvent, v6: bool) -> bool {
    if ev.dport != DNS_PORT || !(ev.proto == IPPROTO_UDP || ev.proto == IPPROTO_TCP) {
        return false;
    }
    let Some(port) = dns_port() else {
        return false;
    };
    let has_hosts = cgroup::for_each_egress_policy(slot, &Task, |p| {
        (p.flags & egress_flags::HOSTS != 0).then_some(())
    });
    if has_hosts.is_none() {
        return false;
    }
    // SAFETY: the context pointer is valid and writable for the program's run.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let origin = DnsOrigin {
        addr: ev.daddr,
        port: sa.user_port,
        _pad: 0,
    };
    let _ = DNS_SOCKETS.insert(&ev.cookie, &origin, 0);
    // `v6` is a constant of each program: connect4/sendmsg4 may write only
    // `user_ip4`, connect6/sendmsg6 only `user_ip6`.
    if !v6 {
        sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
    } else {
        let to = if ev.daddr[..12] == LOOPBACK_V4[..12] {
            LOOPBACK_V4
        } else {
            LOOPBACK_V6
        };
        set_ip6(sa, &to);
    }
    sa.user_port = u32::from(port.to_be());
    count(&STATS, stat::DNS_STEERED);
    true
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid and writable for the program's run.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if from_resolver(sa.user_port) && sa.user_ip4 == u32::from_ne_bytes([127, 0, 0, 1]) {
        if let Some(o) = origin(&ctx) {
            if o.addr[..12] == LOOPBACK_V4[..12] {
                sa.user_ip4 = u32::from_ne_bytes([o.addr[12], o.addr[13], o.addr[14], o.addr[15]]);
                sa.user_port = o.port;
            }
        }
    }
    PASS
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid and writable for the program's run.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if from_resolver(sa.user_port) {
        let from = sa.user_ip6;
        if from == words(&LOOPBACK_V6) || from == words(&LOOPBACK_V4) {
            if let Some(o) = origin(&ctx) {
                set_ip6(sa, &o.addr);
                sa.user_port = o.port;
            }
        }
    }
    PASS
}

#[inline(always)]
fn from_resolver(user_port: u32) -> bool {
    dns_port().is_some_and(|p| user_port == u32::from(p.to_be()))
}

#[inline(always)]
fn origin(ctx: &SockAddrContext) -> Option<DnsOrigin> {
    // SAFETY: valid context of a cgroup/sock_addr program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: plain-data value copied out at once.
    unsafe { DNS_SOCKETS.get(&cookie) }.copied()
}

/// Writes `user_ip6` one 32-bit word at a time (the access size every
/// supported kernel accepts; wider stores came later).
#[inline(always)]
fn set_ip6(sa: &mut bpf_sock_addr, a: &Addr) {
    let w = words(a);
    let mut i = 0;
    while i < 4 {
        // SAFETY: a field of the program's writable context.
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], w[i]) };
        i += 1;
    }
}

/// An address as `bpf_sock_addr::user_ip6` holds it (network order words).
#[inline(always)]
fn words(a: &Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
