//! NFLOG reader for the nftables backend: rules that log do so to one netlink log
//! group, with a prefix naming the verdict and rule (`warden <kind> <rule id>`);
//! each packet becomes a [`FlowEvent`] of the same shape the eBPF programs emit.
//!
//! nftables sees packets, not system calls, so these records have no pid, comm,
//! cgroup id or socket cookie; uid/gid come with locally generated packets.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use warden_common::{FlowEvent, mapped_v4};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_FLAGS: u16 = 6;
/// Number every message of the group, so gaps (messages the kernel could not
/// queue on a full socket) are counted exactly.
const NFULNL_CFG_F_SEQ: u16 = 0x0001;
const NFULA_SEQ: u16 = 12;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_UID: u16 = 11;
const NFULA_GID: u16 = 14;

/// Log prefixes rendered into the ruleset, and what they mean.
pub const INGRESS_ALLOW: &str = "warden ingress-allow";
pub const INGRESS_DENY: &str = "warden ingress-deny";
pub const LOCAL_ALLOW: &str = "warden local-allow";
pub const LOCAL_DENY: &str = "warden local-deny";
pub const EGRESS_DENY: &str = "warden egress-deny";
/// A banned source's packet (the bans table).
pub const BANNED: &str = "warden banned";
/// Audit mode: what the deny rule would have dropped, let through.
pub const INGRESS_WOULD_DENY: &str = "warden ingress-would-deny";
pub const LOCAL_WOULD_DENY: &str = "warden local-would-deny";
pub const EGRESS_WOULD_DENY: &str = "warden egress-would-deny";

pub struct NflogSocket {
    fd: OwnedFd,
    next_seq: Option<u32>,
    lost: u64,
}

impl NflogSocket {
    /// Binds to NFLOG `group` in this network namespace.
    pub fn bind(group: u16) -> std::io::Result<Self> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; bound with the kernel-assigned port id.
        unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Room for a burst (a flow log per new connection): 4 MiB, beyond
        // rmem_max where CAP_NET_ADMIN allows it.
        let size: libc::c_int = 4 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: an int option on our socket.
            let rc = unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let s = Self {
            fd,
            // The instance is ours from the bind on: its sequence starts at 0.
            next_seq: Some(0),
            lost: 0,
        };
        s.config(group, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND, 0, 0, 0])?;
        // copy_range (be32) then copy_mode: the first 128 bytes hold every header we read.
        let mut mode = 128u32.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0, 0, 0]);
        s.config(group, NFULA_CFG_MODE, &mode)?;
        s.config(group, NFULA_CFG_FLAGS, &NFULNL_CFG_F_SEQ.to_be_bytes())?;
        Ok(s)
    }

    fn config(&self, group: u16, attr: u16, payload: &[u8]) -> std::io::Result<()> {
        let attr_len = 4 + payload.len();
        let len = 16 + 4 + align4(attr_len);
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
        msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg.extend_from_slice(&[0; 8]); // seq, pid
        msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]); // nfgenmsg: family, version
        msg.extend_from_slice(&group.to_be_bytes()); // res_id
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&attr.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(len, 0);
        // SAFETY: sending a local buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads every queued log message; returns the flow events among them.
    pub fn read(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: reading into a local buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                // ENOBUFS: the kernel dropped messages; the sequence gap counts them.
                if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                return out;
            }
            for seq in parse_messages(&buf[..n as usize], &mut out) {
                if let Some(expected) = self.next_seq {
                    self.lost += u64::from(seq.wrapping_sub(expected));
                }
                self.next_seq = Some(seq.wrapping_add(1));
            }
        }
    }

    /// Log messages the kernel dropped because this socket was full.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

impl AsRawFd for NflogSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends the flow events in `buf` to `out`; returns the sequence numbers of
/// the packet messages seen.
fn parse_messages(mut buf: &[u8], out: &mut Vec<FlowEvent>) -> Vec<u32> {
    let mut seqs = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        if len < 16 || len > buf.len() {
            break;
        }
        if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && len >= 20 {
            seqs.extend(attr_u32(&buf[20..len], NFULA_SEQ));
            if let Some(ev) = parse_packet(&buf[20..len]) {
                out.push(ev);
            }
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    seqs
}

/// A big-endian u32 attribute.
fn attr_u32(mut attrs: &[u8], want: u16) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == want && len >= 8 {
            return Some(u32::from_be_bytes(attrs[4..8].try_into().ok()?));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

/// One NFULNL_MSG_PACKET's attributes → a flow event (None if not one of warden's).
fn parse_packet(mut attrs: &[u8]) -> Option<FlowEvent> {
    let (mut prefix, mut payload, mut uid, mut gid, mut ifindex) = (None, None, 0, 0, 0);
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let v = &attrs[4..len];
        match ty {
            NFULA_PREFIX => {
                prefix = Some(String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
            }
            NFULA_PAYLOAD => payload = Some(v),
            NFULA_UID if v.len() >= 4 => uid = u32::from_be_bytes(v[..4].try_into().ok()?),
            NFULA_GID if v.len() >= 4 => gid = u32::from_be_bytes(v[..4].try_into().ok()?),
            NFULA_IFINDEX_INDEV if v.len() >= 4 => {
                ifindex = u32::from_be_bytes(v[..4].try_into().ok()?)
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    let prefix = prefix?;
    let (kind, rule) = prefix.trim().rsplit_once(' ')?;
    use warden_common::kinds::{Hook, Reason, Verdict};
    let (hook_id, verdict_id, reason_id) = match kind {
        INGRESS_ALLOW => (Hook::NftInput, Verdict::Allow, Reason::IngressAllowed),
        INGRESS_DENY => (Hook::NftInput, Verdict::Deny, Reason::IngressNotAllowed),
        LOCAL_ALLOW => (Hook::NftOutput, Verdict::Allow, Reason::LocalAllowed),
        LOCAL_DENY => (Hook::NftOutput, Verdict::Deny, Reason::LocalNotAllowed),
        EGRESS_DENY => (Hook::NftOutput, Verdict::Deny, Reason::EgressNotAllowed),
        BANNED => (Hook::NftInput, Verdict::Deny, Reason::Banned),
        INGRESS_WOULD_DENY => (
            Hook::NftInput,
            Verdict::WouldDeny,
            Reason::IngressNotAllowed,
        ),
        LOCAL_WOULD_DENY => (Hook::NftOutput, Verdict::WouldDeny, Reason::LocalNotAllowed),
        EGRESS_WOULD_DENY => (
            Hook::NftOutput,
            Verdict::WouldDeny,
            Reason::EgressNotAllowed,
        ),
        _ => return None,
    };
    let mut ev: FlowEvent = FlowEvent {
        rule_id: rule.parse().ok()?,
        ..zero()
    };
    ev.hook = hook_id.code();
    ev.verdict = verdict_id.code();
    ev.reason = reason_id.code();
    ev.uid = uid;
    ev.gid = gid;
    ev.ifindex = ifindex;
    ev.ts_ns = boot_ns();
    let p = payload?;
    let l4 = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            ev.family = libc::AF_INET as u16;
            ev.proto = p[9];
            ev.saddr = mapped_v4(p[12..16].try_into().ok()?);
            ev.daddr = mapped_v4(p[16..20].try_into().ok()?);
            (p[0] & 0x0f) as usize * 4
        }
        6 if p.len() >= 40 => {
            ev.family = libc::AF_INET6 as u16;
            ev.proto = p[6];
            ev.saddr = p[8..24].try_into().ok()?;
            ev.daddr = p[24..40].try_into().ok()?;
            40
        }
        _ => return None,
    };
    if p.len() >= l4 + 4 {
        ev.sport = u16::from_be_bytes([p[l4], p[l4 + 1]]);
        ev.dport = u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]);
    }
    Some(ev)
}

fn zero() -> FlowEvent {
    // SAFETY: FlowEvent is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

use warden_runtime::clock::boot_ns;
