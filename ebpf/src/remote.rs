//! `[[remote]]`: cgroups that may reach the protected ports on other hosts.
//!
//! Fails closed: a destination is remote only if it is in a remote network
//! and is not this host by any address form: not loopback, not unspecified,
//! not an address the daemon read off the host's interfaces. An address the
//! host gains before the daemon notices is caught at the packet: a SYN for a
//! protected port that leaves through loopback is local, whatever its
//! address (see [`crate::packet`]).

use crate::{
    egress::LOOPBACK_V6,
    maps::{LOCAL_ADDRS, REMOTE},
};
use aya_ebpf::maps::lpm_trie::Key;
use warden_common::*;

/// The rule allowing `daddr` as a remote host's protected port, if any.
#[inline(always)]
pub fn allowed(slot: u32, daddr: &Addr) -> Option<u32> {
    if this_host(daddr) {
        return None;
    }
    let key = Key::new(
        INGRESS_KEY_FIXED_BITS + 128,
        IngressKey {
            slot_port: (slot << 16).to_be_bytes(),
            addr: *daddr,
        },
    );
    REMOTE.get(&key).map(|r| r.rule_id)
}

/// Loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::) or one of the
/// host's own addresses.
#[inline(always)]
fn this_host(a: &Addr) -> bool {
    let mapped = a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if mapped && (a[12] == 127 || a[12..] == [0, 0, 0, 0]) {
        return true;
    }
    if *a == LOOPBACK_V6 || *a == [0; 16] {
        return true;
    }
    // SAFETY: presence test only.
    unsafe { LOCAL_ADDRS.get(a) }.is_some()
}
