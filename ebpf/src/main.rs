//! warden's kernel programs, one file per hook family.
//!
//! - [`xdp`]: XDP ingress allowlist for the protected ports (Linux 4.8; links 5.9).
//! - [`connect`]: cgroup `connect4/6` and `sendmsg4/6` — local access to the
//!   protected ports and per-cgroup egress allowlists (Linux 4.17 / 4.18).
//! - [`dns`]: DNS steering to the daemon's resolver for cgroups with host
//!   rules, and cgroup `recvmsg4/6` to give the replies their resolver's address (5.2).
//! - [`remote`]: `[[remote]]` cgroups reaching the protected ports on other hosts only.
//! - [`bind`]: cgroup `bind4/6` — only server cgroups may bind a protected port (4.17).
//! - [`packet`]: cgroup_skb `egress/ingress` — the packets of restricted sockets,
//!   judged by the socket's cgroup, and packets for protected ports (4.10).
//!
//! All policy lives in [`maps`], double-buffered in two slots: userspace fills the
//! inactive slot and flips `STATE[STATE_ACTIVE_SLOT]`. A program reads the active
//! slot once and uses only that slot's entries, so it sees one whole policy.
#![no_std]
#![no_main]

mod bind;
mod cgroup;
mod connect;
mod dns;
mod egress;
mod event;
mod maps;
mod packet;
mod remote;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
