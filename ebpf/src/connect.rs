//! cgroup `connect4`/`connect6` (Linux 4.17) and `sendmsg4`/`sendmsg6` (4.18),
//! attached at the cgroup2 root so they see every process on the host.
//!
//! Two checks, in order:
//! 1. Local access: a destination port that is protected may be reached only from a
//!    cgroup allowed to connect, whatever the destination address (loopback, any
//!    local address, the wildcard, IPv4-mapped IPv6 — all are the same port);
//!    a `[[remote]]` cgroup only on its remote networks, never on this host.
//! 2. Egress: every egress policy covering the task's cgroup (its own and its
//!    ancestors') must allow the destination, protocol and port. These give the
//!    caller EPERM and an event with its process; [`crate::packet`] judges the
//!    packets that really leave, whoever sends them.
//!
//! Returning 0 makes the syscall fail with EPERM. A section in audit mode
//! records `WOULD_DENY` instead and lets the call through.

use crate::{
    cgroup::{self, Cgroup, Task},
    dns,
    egress::{self, Verdict},
    event::{self, EMPTY},
    maps::{RULE_HITS, active_slot, count, port_protected, slot_meta},
    remote,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use warden_common::*;

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::SENDMSG6)
}

/// The verdict-independent part of an event: who is calling, to where.
#[inline(always)]
pub fn caller_event(ctx: &SockAddrContext, hook: u8, generation: u32) -> FlowEvent {
    // SAFETY: the context pointer is valid for the program's whole run.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let v6 = matches!(hook, hook::CONNECT6 | hook::SENDMSG6 | hook::BIND6);
    let mut ev = EMPTY;
    if v6 {
        let w = sa.user_ip6;
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        ev.daddr = a;
        ev.family = AF_INET6;
    } else {
        ev.daddr = mapped_v4(sa.user_ip4.to_ne_bytes());
        ev.family = AF_INET;
    }
    ev.dport = u16::from_be(sa.user_port as u16);
    ev.proto = sa.protocol as u8;
    ev.hook = hook;
    ev.generation = generation;
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    let uid_gid = bpf_get_current_uid_gid();
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.cgroup_id = Task.id();
    // SAFETY: valid context of a cgroup/sock_addr program.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    ev
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, hook: u8) -> i32 {
    let slot = active_slot();
    let meta = slot_meta(slot);
    let mut ev = caller_event(ctx, hook, meta.generation);
    let is_connect = matches!(hook, hook::CONNECT4 | hook::CONNECT6);

    if port_protected(slot, ev.dport) {
        let access = cgroup::access_rule(slot, &Task);
        let remote = access
            .filter(|r| r.flags & CG_MAY_CONNECT_REMOTE != 0)
            .and_then(|_| remote::allowed(slot, &ev.daddr));
        match (access, remote) {
            (Some(rule), _) if rule.flags & CG_MAY_CONNECT != 0 => {
                ev.verdict = verdict::ALLOW;
                ev.reason = reason::LOCAL_ALLOWED;
                ev.rule_id = rule.rule_id;
                // Every accepted connection is recorded; datagrams only counted.
                event::record_allowed_connect(&ev, is_connect);
            }
            (_, Some(rule_id)) => {
                ev.verdict = verdict::ALLOW;
                ev.reason = reason::REMOTE_ALLOWED;
                ev.rule_id = rule_id;
                event::record_allowed_connect(&ev, is_connect);
            }
            (rule, None) => {
                ev.reason = reason::LOCAL_NOT_ALLOWED;
                ev.rule_id = rule.map(|r| r.rule_id).unwrap_or(RULE_DEFAULT_DENY);
                if meta.flags & slot_flags::AUDIT_LOCAL == 0 {
                    ev.verdict = verdict::DENY;
                    event::record(&ev, true);
                    return DENY;
                }
                // Audit: report, and go on to the egress check as if allowed.
                ev.verdict = verdict::WOULD_DENY;
                event::record(&ev, true);
            }
        }
    }

    if meta.flags & slot_flags::EGRESS == 0 {
        return ALLOW;
    }
    if dns::steer(
        ctx,
        slot,
        &ev,
        matches!(hook, hook::CONNECT6 | hook::SENDMSG6),
    ) {
        return ALLOW;
    }
    let proto = egress::proto_bit(ev.proto);
    let mut host_rule = None;
    let v = egress::verdict(slot, &Task, |policy| {
        match egress::rule(slot, policy, &ev.daddr, proto, ev.dport) {
            Some(m) if m.learned => {
                host_rule = Some(m.rule_id);
                true
            }
            Some(m) => {
                count(&RULE_HITS, m.rule_id);
                true
            }
            None => false,
        }
    });
    if v == Verdict::Allowed {
        if let Some(rule_id) = host_rule {
            // Allowed for a host name: recorded, so the event can name it.
            ev.verdict = verdict::ALLOW;
            ev.reason = reason::HOST_ALLOWED;
            ev.rule_id = rule_id;
            event::record_allowed_connect(&ev, is_connect);
        }
        return ALLOW;
    }
    ev.verdict = if v == Verdict::Denied {
        verdict::DENY
    } else {
        verdict::WOULD_DENY
    };
    ev.reason = reason::EGRESS_NOT_ALLOWED;
    ev.rule_id = RULE_DEFAULT_DENY;
    event::record(&ev, true);
    if v == Verdict::Denied { DENY } else { ALLOW }
}
