//! The eBPF backend: loads warden's object with its maps pinned under bpffs,
//! attaches the programs through bpf links and pins the links, so enforcement
//! stays exactly as it is if the daemon dies. A restarted daemon adopts what is
//! pinned (no detach, no second attach) and only swaps in its policy.

use super::maps::{Maps, ResolvedEgress, ResolvedGrant};
use super::pins::{self, HeldLink};
use super::{EnforceError, ResolvedCgroups};
use crate::compile::Compiled;
use crate::kernel_log::{KernelLogLevel, KernelLogger, ToTracing};
use crate::learned::Learned;
use aya::maps::{MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};
use warden_common::CgroupRule;
use warden_runtime::cgroupfs;

/// The object built from the `warden-ebpf` crate by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/warden-ebpf"));

/// cgroup programs, attached at the attach cgroup (the cgroup2 root by default):
/// the system-call hooks, then the packet hooks.
pub const CGROUP_PROGRAMS: [&str; 10] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "bind4",
    "bind6",
    "skb_egress",
    "skb_ingress",
];
const XDP_PROGRAM: &str = "xdp_ingress";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, Clone)]
pub struct Options {
    /// Warden's own bpffs directory, e.g. `/sys/fs/bpf/ollama-warden`.
    pub pin_dir: PathBuf,
    /// Where the cgroup programs attach; `None` = the cgroup2 root (the whole host).
    pub attach_cgroup: Option<PathBuf>,
    /// The kernel programs' debug diagnostics (off: compiled away at load).
    pub kernel_log: KernelLogLevel,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pin_dir: Path::new("/sys/fs/bpf").join(warden_common::PIN_DIR),
            attach_cgroup: None,
            kernel_log: KernelLogLevel::Off,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub generation: u32,
    pub slot: u32,
    /// Policy cgroups that do not exist (yet): nothing is granted to them until they do.
    pub unresolved: Vec<String>,
    /// The cgroup ids that were resolved, to notice when that changes.
    #[serde(skip)]
    pub resolved_ids: Vec<Option<u64>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub program: String,
    pub target: String,
    pub state: AttachState,
    /// How XDP runs on the interface (XDP attachments this daemon made).
    pub mode: Option<XdpAttachMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachState {
    /// Attached by this daemon.
    Attached,
    /// Pinned by an earlier run and held as it is.
    Adopted,
    /// Detached from an interface that went away.
    Detached,
    /// Not an Ethernet interface: XDP's parser cannot read its frames.
    Unsupported,
    /// The attach failed (another XDP program?); the other interfaces go on.
    Failed,
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Adopted => "adopted",
            Self::Detached => "detached",
            Self::Unsupported => "unsupported",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// In the driver.
    Native,
    /// In the kernel's generic (skb) path, where the driver has no XDP.
    Generic,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

pub struct EbpfBackend {
    ebpf: Ebpf,
    pub maps: Maps,
    events: Option<RingBuf<MapData>>,
    logger: Option<KernelLogger>,
    pin_dir: PathBuf,
    cgroup2: PathBuf,
    attach_cgroup: PathBuf,
    /// Every link attached or adopted, held open while the daemon runs.
    held: Vec<HeldLink>,
    /// Addresses learned from DNS for host rules, written with every policy.
    pub learned: Learned,
}

impl EbpfBackend {
    /// Loads the object, creating the pinned maps or reusing those already pinned.
    pub fn open(opts: &Options) -> Result<Self, EnforceError> {
        let missing = super::kernel::missing();
        if !missing.is_empty() {
            return Err(EnforceError::Kernel(missing.join("; ")));
        }
        ensure_bpffs(&opts.pin_dir)?;
        for dir in [opts.pin_dir.clone(), opts.pin_dir.join("links")] {
            pins::ensure_private_dir(&dir).map_err(EnforceError::UntrustedPinDir)?;
        }
        let cgroup2 = cgroupfs::cgroup2_mount()?;
        let attach_cgroup = opts
            .attach_cgroup
            .clone()
            .unwrap_or_else(|| cgroup2.clone());
        let log_level = opts.kernel_log.global();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_dir)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)?;
        let logger = match opts.kernel_log {
            KernelLogLevel::Off => None,
            _ => Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing)
                    .map_err(|e| EnforceError::Bpffs(format!("kernel log: {e}")))?,
            ),
        };
        let maps = Maps::from_source(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| EnforceError::Bpffs(format!("object has no map {name}")))
        })?;
        let events = ebpf
            .take_map("EVENTS")
            .map(RingBuf::try_from)
            .transpose()
            .map_err(|e| EnforceError::Map {
                name: "EVENTS".into(),
                source: e,
            })?;
        let backend = Self {
            ebpf,
            maps,
            events,
            logger,
            pin_dir: opts.pin_dir.clone(),
            cgroup2,
            attach_cgroup,
            held: Vec::new(),
            learned: Learned::default(),
        };
        // A previous daemon may have died between a flip and its barrier: make sure
        // no program still reads the inactive slot before it is rewritten.
        super::maps::wait_for_running_programs();
        let abi = backend.maps.abi()?;
        if abi != 0 && abi != warden_common::ABI_VERSION {
            return Err(EnforceError::AbiMismatch {
                pinned: abi,
                ours: warden_common::ABI_VERSION,
            });
        }
        Ok(backend)
    }

    /// Records an answer for `name` and allows its addresses under the policy
    /// in force at once; returns how many (policy, address) entries changed.
    pub fn learn(
        &mut self,
        compiled: &Compiled,
        name: &str,
        answers: &[(std::net::IpAddr, u32)],
        grace_s: u64,
    ) -> Result<usize, EnforceError> {
        let changed = self.learned.learn(name, answers, grace_s);
        if changed.is_empty() {
            return Ok(0);
        }
        let (entries, _) = self.learned.entries(compiled, Some(&changed));
        let slot = self.maps.active_slot()?;
        self.maps.write_learned(slot, &entries)?;
        Ok(entries.len())
    }

    /// Forgets expired answers, in the table and in the kernel.
    pub fn expire_learned(&mut self, compiled: &Compiled) -> Result<bool, EnforceError> {
        if !self.learned.expire() {
            return Ok(false);
        }
        let (entries, _) = self.learned.entries(compiled, None);
        let slot = self.maps.active_slot()?;
        self.maps.replace_learned(slot, &entries)?;
        Ok(true)
    }

    pub fn cgroup2_root(&self) -> &Path {
        &self.cgroup2
    }

    /// The drain of the programs' debug records, when `--kernel-log-level` asked
    /// for them (taken once, by the daemon's event loop).
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// The ring buffer of flow events (taken once, by the event reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Resolves the policy's cgroups and swaps the policy in as `generation`.
    pub fn apply(&mut self, compiled: &Compiled, generation: u32) -> Result<Applied, EnforceError> {
        let resolved = ResolvedCgroups::resolve(&self.cgroup2, compiled);
        let grants: Vec<ResolvedGrant> = compiled
            .cgroups
            .iter()
            .zip(&resolved.grants)
            .filter_map(|(g, id)| {
                id.map(|cgroup_id| ResolvedGrant {
                    cgroup_id,
                    rule: CgroupRule {
                        flags: g.flags,
                        rule_id: g.rule_id,
                    },
                })
            })
            .collect();
        let egress: Vec<ResolvedEgress> = resolved
            .egress
            .iter()
            .map(|&cgroup_id| ResolvedEgress { cgroup_id })
            .collect();
        let (learned, _) = self.learned.entries(compiled, None);
        let slot = self
            .maps
            .swap_in(compiled, &grants, &egress, &learned, generation)?;
        Ok(Applied {
            generation,
            slot,
            unresolved: resolved.unresolved(compiled),
            resolved_ids: resolved.ids(),
        })
    }

    /// Attaches the cgroup programs unless pinned links from an earlier run exist.
    pub fn attach_cgroup_programs(&mut self) -> Result<Vec<Attachment>, EnforceError> {
        let mut out = Vec::new();
        for name in CGROUP_PROGRAMS {
            let pin = self.pin_dir.join("links").join(name);
            let target = self.attach_cgroup.display().to_string();
            if PinnedLink::from_pin(&pin).is_ok() {
                self.hold(&pin)?;
                out.push(Attachment {
                    program: name.into(),
                    target,
                    state: AttachState::Adopted,
                    mode: None,
                });
                continue;
            }
            let perr = |e| EnforceError::Program {
                name: name.into(),
                source: e,
            };
            let cgroup =
                std::fs::File::open(&self.attach_cgroup).map_err(|e| EnforceError::Io {
                    path: self.attach_cgroup.clone(),
                    source: e,
                })?;
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| EnforceError::Bpffs(format!("object has no program {name}")))?;
            // Through a bpf link (5.7+) the attachment always coexists with other
            // programs (multi-attach); link_create rejects attach flags, so pass none.
            let link = if let Some(direction) = skb_direction(name) {
                let prog: &mut CgroupSkb = program.try_into().map_err(perr)?;
                prog.load().map_err(perr)?;
                let id = prog
                    .attach(&cgroup, direction, CgroupAttachMode::Single)
                    .map_err(perr)?;
                prog.take_link(id).map_err(perr)?.try_into()
            } else {
                let prog: &mut CgroupSockAddr = program.try_into().map_err(perr)?;
                prog.load().map_err(perr)?;
                let id = prog
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(perr)?;
                prog.take_link(id).map_err(perr)?.try_into()
            };
            let link: FdLink = link.map_err(|e| {
                EnforceError::Bpffs(format!(
                    "{name}: the kernel has no bpf links for cgroups: {e}"
                ))
            })?;
            link.pin(&pin).map_err(|e| EnforceError::Pin {
                path: pin.clone(),
                source: e,
            })?;
            self.hold(&pin)?;
            out.push(Attachment {
                program: name.into(),
                target,
                state: AttachState::Attached,
                mode: None,
            });
        }
        Ok(out)
    }

    fn attach_xdp(
        &mut self,
        ifindex: u32,
        name: &str,
        pin: &Path,
    ) -> Result<XdpAttachMode, EnforceError> {
        let perr = |e| EnforceError::Program {
            name: XDP_PROGRAM.into(),
            source: e,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| EnforceError::Bpffs(format!("object has no program {XDP_PROGRAM}")))?
            .try_into()
            .map_err(perr)?;
        if prog.fd().is_err() {
            prog.load().map_err(perr)?;
        }
        let (id, mode) = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, XdpAttachMode::Native),
            Err(_) => (
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(|e| EnforceError::Interface {
                        iface: name.to_owned(),
                        reason: format!("cannot attach XDP (another XDP program?): {e}"),
                    })?,
                XdpAttachMode::Generic,
            ),
        };
        let link = FdLink::try_from(prog.take_link(id).map_err(perr)?).map_err(|e| {
            EnforceError::Interface {
                iface: name.to_owned(),
                reason: format!("no bpf link support: {e}"),
            }
        })?;
        link.pin(pin).map_err(|e| EnforceError::Pin {
            path: pin.to_owned(),
            source: e,
        })?;
        Ok(mode)
    }

    /// Makes the XDP attachments match `compiled.interfaces` in this network
    /// namespace: attaches where missing (native mode, else generic), keeps pinned
    /// ones, and unpins links whose interface is gone.
    pub fn sync_xdp(&mut self, compiled: &Compiled) -> Result<Vec<Attachment>, EnforceError> {
        let links = self.pin_dir.join("links");
        let current = interfaces();
        let wanted: Vec<(u32, String)> = current
            .into_iter()
            .filter(|(_, name)| {
                if compiled.all_interfaces() {
                    name != "lo"
                } else {
                    compiled.interfaces.contains(name)
                }
            })
            .collect();
        for name in &compiled.interfaces {
            if name != "*" && !wanted.iter().any(|(_, n)| n == name) {
                return Err(EnforceError::Interface {
                    iface: name.clone(),
                    reason: "no such interface in this network namespace".into(),
                });
            }
        }
        let mut out = Vec::new();
        // Unpin links of interfaces that went away or are no longer wanted.
        for (path, ifindex, name) in pinned_xdp_links(&links) {
            if !wanted.iter().any(|(i, n)| *i == ifindex && *n == name) {
                self.held.retain(|h| h.pin != path);
                pins::detach_pinned_link(&path);
                let _ = std::fs::remove_file(&path);
                out.push(Attachment {
                    program: XDP_PROGRAM.into(),
                    target: name,
                    state: AttachState::Detached,
                    mode: None,
                });
            }
        }
        for (ifindex, name) in wanted {
            let pin = links.join(format!("xdp-{ifindex}-{name}"));
            let (state, mode) = if PinnedLink::from_pin(&pin).is_ok() {
                if !self.held.iter().any(|h| h.pin == pin) {
                    self.hold(&pin)?;
                }
                (AttachState::Adopted, None)
            } else if !is_ethernet(&name) {
                // The parser expects an Ethernet header; tun/wireguard/ipip/IPoIB
                // frames would be misread (and pass), so say so instead.
                tracing::warn!(
                    "{name} is not an Ethernet interface; XDP ingress does not cover it"
                );
                (AttachState::Unsupported, None)
            } else {
                // One interface failing must not leave the others unprotected.
                match self.attach_xdp(ifindex, &name, &pin) {
                    Ok(mode) => {
                        self.hold(&pin)?;
                        (AttachState::Attached, Some(mode))
                    }
                    Err(e) => {
                        tracing::warn!("XDP not attached to {name}: {e}");
                        (AttachState::Failed, None)
                    }
                }
            };
            out.push(Attachment {
                program: XDP_PROGRAM.into(),
                target: name,
                state,
                mode,
            });
        }
        Ok(out)
    }
}

impl EbpfBackend {
    fn hold(&mut self, pin: &Path) -> Result<(), EnforceError> {
        let link = HeldLink::open(pin).map_err(|e| EnforceError::Io {
            path: pin.to_owned(),
            source: e,
        })?;
        self.held.push(link);
        Ok(())
    }

    /// Pins again every held link whose pin disappeared (its program stayed
    /// attached: the daemon holds it); returns the pins restored.
    pub fn restore_pins(&self) -> Vec<String> {
        let mut restored = Vec::new();
        for h in &self.held {
            match h.restore() {
                Ok(true) => restored.push(h.pin.display().to_string()),
                Ok(false) => {}
                Err(e) => tracing::error!("cannot pin {} again: {e}", h.pin.display()),
            }
        }
        restored
    }
}

/// The direction of a packet hook; `None` for the system-call hooks.
fn skb_direction(program: &str) -> Option<CgroupSkbAttachType> {
    match program {
        "skb_egress" => Some(CgroupSkbAttachType::Egress),
        "skb_ingress" => Some(CgroupSkbAttachType::Ingress),
        _ => None,
    }
}

/// Whether `name` carries Ethernet frames (ARPHRD_ETHER), asked through an ioctl so
/// the answer is about this network namespace's device.
fn is_ethernet(name: &str) -> bool {
    const ARPHRD_ETHER: u16 = 1;
    if name.len() >= libc::IFNAMSIZ {
        return false;
    }
    // SAFETY: a zeroed ifreq with a NUL-terminated name; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr);
        libc::close(fd);
        rc == 0 && ifr.ifr_ifru.ifru_hwaddr.sa_family == ARPHRD_ETHER
    }
}

/// Every address of every interface in this network namespace.
pub fn local_addresses() -> std::io::Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// `(ifindex, name)` of every interface in this network namespace.
pub fn interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// Pinned XDP links: `(path, ifindex, interface name)`.
pub fn pinned_xdp_links(links: &Path) -> Vec<(PathBuf, u32, String)> {
    let Ok(dir) = std::fs::read_dir(links) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let file = e.file_name().into_string().ok()?;
        let (ifindex, name) = file.strip_prefix("xdp-")?.split_once('-')?;
        Some((e.path(), ifindex.parse().ok()?, name.to_owned()))
    })
    .collect()
}

fn ensure_bpffs(pin_dir: &Path) -> Result<(), EnforceError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent != Path::new("/sys/fs/bpf") {
            return Err(EnforceError::Bpffs(format!(
                "{} is not on a bpf filesystem",
                parent.display()
            )));
        }
        // Mode 0700: mounted without a mode, bpffs is world-writable (1777)
        // and anyone could create warden's directory first.
        let rc = std::process::Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf", "/sys/fs/bpf"])
            .status();
        if !rc.is_ok_and(|s| s.success()) || !is_bpffs(parent) {
            return Err(EnforceError::Bpffs(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed; run `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`".into(),
            ));
        }
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid C string and a zeroed out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Detaches and unpins everything warden pinned in `pin_dir` (`warden down`).
/// Each link is detached explicitly before its pin goes: dropping the last
/// reference alone detaches from a kernel work queue, a moment later, and
/// `warden down` promises enforcement has stopped when it returns.
pub fn down(pin_dir: &Path) -> Result<Vec<String>, EnforceError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| EnforceError::Io { path, source: e }
    };
    let links = pin_dir.join("links");
    if links.exists() {
        for e in std::fs::read_dir(&links).map_err(io(&links))? {
            let p = e.map_err(io(&links))?.path();
            pins::detach_pinned_link(&p);
            std::fs::remove_file(&p).map_err(io(&p))?;
            removed.push(format!(
                "link {}",
                p.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
        std::fs::remove_dir(&links).map_err(io(&links))?;
    }
    for e in std::fs::read_dir(pin_dir).map_err(io(pin_dir))? {
        let p = e.map_err(io(pin_dir))?.path();
        std::fs::remove_file(&p).map_err(io(&p))?;
        removed.push(format!(
            "map {}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    std::fs::remove_dir(pin_dir).map_err(io(pin_dir))?;
    Ok(removed)
}
