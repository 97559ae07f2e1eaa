//! cgroup `bind4`/`bind6` (Linux 4.17): only server cgroups may bind a protected
//! port, on any address, so nothing can squat it while the server restarts.

use crate::{
    cgroup,
    connect::caller_event,
    event,
    maps::{active_slot, port_protected, slot_meta},
};
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use warden_common::*;

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::BIND4)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::BIND6)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, hook: u8) -> i32 {
    let slot = active_slot();
    let meta = slot_meta(slot);
    let mut ev = caller_event(ctx, hook, meta.generation);
    if !port_protected(slot, ev.dport) {
        return 1;
    }
    let rule = cgroup::access_rule(slot, &cgroup::Task);
    ev.rule_id = rule.map(|r| r.rule_id).unwrap_or(RULE_DEFAULT_DENY);
    let allowed = rule.is_some_and(|r| r.flags & CG_MAY_BIND != 0);
    let audit = meta.flags & slot_flags::AUDIT_LOCAL != 0;
    if allowed {
        ev.verdict = verdict::ALLOW;
        ev.reason = reason::BIND_ALLOWED;
    } else {
        ev.verdict = if audit {
            verdict::WOULD_DENY
        } else {
            verdict::DENY
        };
        ev.reason = reason::BIND_NOT_ALLOWED;
    }
    event::record(&ev, true);
    (allowed || audit) as i32
}
