//! sock_ops at `TCP_CONNECT_CB` (Linux 4.13): the source address and port
//! of a TCP connection, which exist only once connect() has chosen them,
//! after the connect hooks ran. Sent for the connections connect4/6 allowed
//! and recorded (`CONNECTS`), so the daemon completes their records with
//! the 5-tuple (and its Community ID). Every other socket costs one lookup.

use crate::{
    event::{self, EMPTY},
    maps::CONNECTS,
};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB, helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops, programs::SockOpsContext,
};
use warden_common::*;

const AF_INET: u32 = 2;

#[sock_ops]
pub fn tcp_connect(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: valid context of a sock_ops program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: presence test only.
    if unsafe { CONNECTS.get(&cookie) }.is_none() {
        return 1;
    }
    let _ = CONNECTS.remove(&cookie);
    let mut ev = EMPTY;
    ev.hook = hook::SOCK_OPS;
    ev.verdict = verdict::ALLOW;
    ev.proto = 6;
    ev.cookie = cookie;
    let ops = ctx.ops;
    // Each context field read on its own, at its constant offset: the
    // verifier refuses loads through a context pointer the compiler moved.
    // SAFETY: fields of the program's context, valid for its run.
    let field = |f: *const u32| unsafe { core::ptr::read_volatile(f) };
    // SAFETY: only the addresses of context fields are taken.
    let (family, ip4, port) = unsafe {
        (
            field(core::ptr::addr_of!((*ops).family)),
            field(core::ptr::addr_of!((*ops).local_ip4)),
            field(core::ptr::addr_of!((*ops).local_port)),
        )
    };
    if family == AF_INET {
        ev.family = 2;
        ev.saddr = mapped_v4(ip4.to_ne_bytes());
    } else {
        ev.family = 10;
        // SAFETY: as above.
        let w = unsafe {
            [
                field(core::ptr::addr_of!((*ops).local_ip6[0])),
                field(core::ptr::addr_of!((*ops).local_ip6[1])),
                field(core::ptr::addr_of!((*ops).local_ip6[2])),
                field(core::ptr::addr_of!((*ops).local_ip6[3])),
            ]
        };
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        ev.saddr = a;
    }
    // Host byte order, as the kernel keeps the local port.
    ev.sport = port as u16;
    event::emit_record(&ev);
    1
}
