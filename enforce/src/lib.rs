//! Enforcement: a validated [`warden_policy::Policy`] compiled into
//! backend-neutral entries ([`compile`]), and the backends that load them:
//! [`ebpf`] (preferred: programs loaded, pinned and attached, policies swapped
//! atomically between two slots by [`maps`]) and [`nft`] (fallback), the
//! kernel's features probed first ([`kernel`]), pins and their trust ([`pins`]),
//! banned sources ([`ban`]).

pub mod ban;
pub mod compile;
pub mod ebpf;
pub mod kernel;
pub mod kernel_log;
pub mod learned;
pub mod maps;
pub mod nflog;
pub mod nft;
pub mod pins;

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnforceError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    /// The pin directory is not warden's alone: never a reason to fall back.
    #[error("untrusted pin directory: {0}")]
    UntrustedPinDir(String),
    #[error("this kernel lacks what the eBPF programs need: {0}")]
    Kernel(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pinned state has map layout {pinned}, this warden uses {ours}; run `warden down` first (it stops enforcement) or use the matching warden version"
    )]
    AbiMismatch { pinned: u32, ours: u32 },
    #[error("interface {iface}: {reason}")]
    Interface { iface: String, reason: String },
    #[error("nftables: {0}")]
    Nft(String),
    #[error(transparent)]
    Cgroup(#[from] warden_runtime::cgroupfs::CgroupfsError),
}

/// What the kernel counted but did not deliver since the maps were pinned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Ring buffer full.
    pub lost: u64,
    /// Beyond the per-CPU event budget.
    pub suppressed: u64,
}

use crate::compile::Compiled;
use aya::maps::{MapData, RingBuf};
use ebpf::{Applied, Attachment, EbpfBackend};
use nft::NftBackend;

/// The policy's cgroups resolved to cgroup ids, now, in policy order. A cgroup
/// that does not exist (yet) is `None`: it is granted nothing until it appears.
pub struct ResolvedCgroups {
    pub grants: Vec<Option<u64>>,
    pub egress: Vec<Option<u64>>,
}

impl ResolvedCgroups {
    pub fn resolve(cgroup2: &std::path::Path, c: &Compiled) -> Self {
        let id = |p: &warden_policy::CgroupPath| {
            warden_runtime::cgroupfs::cgroup_id(&cgroup2.join(p.as_str())).ok()
        };
        Self {
            grants: c.cgroups.iter().map(|g| id(&g.cgroup)).collect(),
            egress: c.egress.iter().map(|e| id(&e.cgroup)).collect(),
        }
    }

    /// All ids, grants then egress (compared between rescans).
    pub fn ids(&self) -> Vec<Option<u64>> {
        self.grants.iter().chain(&self.egress).copied().collect()
    }

    /// The paths that did not resolve.
    pub fn unresolved(&self, c: &Compiled) -> Vec<String> {
        let grants = c.cgroups.iter().map(|g| &g.cgroup).zip(&self.grants);
        let egress = c.egress.iter().map(|e| &e.cgroup).zip(&self.egress);
        grants
            .chain(egress)
            .filter(|(_, id)| id.is_none())
            .map(|(p, _)| match warden_runtime::cgroupfs::own_pod() {
                Err(why) if p.is_own_pod() => format!("{p} ({why})"),
                _ => p.to_string(),
            })
            .collect()
    }
}

/// The backend the daemon enforces with.
pub enum Backend {
    Ebpf(Box<EbpfBackend>),
    Nft(NftBackend),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ebpf(_) => "ebpf",
            Self::Nft(_) => "nft",
        }
    }

    /// What this backend cannot enforce.
    pub fn gaps(&self) -> &'static [&'static str] {
        match self {
            Self::Ebpf(_) => &[],
            Self::Nft(_) => nft::GAPS,
        }
    }

    /// The generation in force (0 if none).
    pub fn generation(&self) -> Result<u32, EnforceError> {
        match self {
            Self::Ebpf(b) => b.maps.generation(),
            Self::Nft(b) => Ok(b.generation()),
        }
    }

    /// Swaps `compiled` in as the next generation.
    pub fn apply_next(&mut self, compiled: &Compiled) -> Result<Applied, EnforceError> {
        let generation = self.generation()? + 1;
        match self {
            Self::Ebpf(b) => b.apply(compiled, generation),
            Self::Nft(b) => b.apply(compiled, generation),
        }
    }

    /// Attaches what is not attached yet (eBPF programs; nothing for nft).
    pub fn attach(&mut self, compiled: &Compiled) -> Result<Vec<Attachment>, EnforceError> {
        match self {
            Self::Ebpf(b) => {
                let mut a = b.attach_cgroup_programs()?;
                a.extend(b.sync_xdp(compiled)?);
                Ok(a)
            }
            Self::Nft(_) => Ok(Vec::new()),
        }
    }

    /// Bans `source` (its packets to the protected ports and `proxy_port` are
    /// dropped) for `duration`.
    pub fn ban(
        &mut self,
        source: std::net::IpAddr,
        duration: std::time::Duration,
        proxy_port: Option<u16>,
    ) -> Result<(), EnforceError> {
        match self {
            Self::Ebpf(b) => b.maps.ban(source, duration, proxy_port),
            Self::Nft(b) => b.ban(source, duration, proxy_port),
        }
    }

    /// Allows the addresses of an answer for a name a host rule allows
    /// (eBPF; the nft backend learns nothing: host rules allow nothing there).
    pub fn learn(
        &mut self,
        compiled: &Compiled,
        name: &str,
        answers: &[(std::net::IpAddr, u32)],
        grace_s: u64,
    ) -> Result<usize, EnforceError> {
        match self {
            Self::Ebpf(b) => b.learn(compiled, name, answers, grace_s),
            Self::Nft(_) => Ok(0),
        }
    }

    /// Forgets expired answers; true if any did.
    pub fn expire_learned(&mut self, compiled: &Compiled) -> Result<bool, EnforceError> {
        match self {
            Self::Ebpf(b) => b.expire_learned(compiled),
            Self::Nft(_) => Ok(false),
        }
    }

    /// The table of learned addresses (empty on nft).
    pub fn learned(&mut self) -> Option<&mut learned::Learned> {
        match self {
            Self::Ebpf(b) => Some(&mut b.learned),
            Self::Nft(_) => None,
        }
    }

    /// Tells the kernel this host's addresses, which `[[remote]]` never
    /// covers (eBPF only; nft's rules name the local addresses themselves).
    pub fn set_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), EnforceError> {
        match self {
            Self::Ebpf(b) => b.maps.set_local_addrs(addrs),
            Self::Nft(_) => Ok(()),
        }
    }

    /// Steers host-rule cgroups' DNS to the resolver at `port` (eBPF only).
    pub fn set_dns_port(&mut self, port: Option<u16>) -> Result<(), EnforceError> {
        match self {
            Self::Ebpf(b) => b.maps.set_dns_port(port),
            Self::Nft(_) => Ok(()),
        }
    }

    /// Pins again what disappeared from the pin directory (eBPF only).
    pub fn restore_pins(&self) -> Vec<String> {
        match self {
            Self::Ebpf(b) => b.restore_pins(),
            Self::Nft(_) => Vec::new(),
        }
    }

    /// Follows interfaces that appeared or went away.
    pub fn sync_interfaces(
        &mut self,
        compiled: &Compiled,
    ) -> Result<Vec<Attachment>, EnforceError> {
        match self {
            Self::Ebpf(b) => b.sync_xdp(compiled),
            Self::Nft(_) => Ok(Vec::new()),
        }
    }

    pub fn resolve_ids(&self, compiled: &Compiled) -> Vec<Option<u64>> {
        let cgroup2 = match self {
            Self::Ebpf(b) => b.cgroup2_root(),
            Self::Nft(b) => b.cgroup2_root(),
        };
        ResolvedCgroups::resolve(cgroup2, compiled).ids()
    }

    /// Flow records the kernel could not queue (eBPF ring buffer full) and
    /// those it suppressed (event budget spent), since the maps were first
    /// pinned. The nft backend's losses are NFLOG's: see
    /// [`nflog::NflogSocket::lost`].
    pub fn kernel_losses(&self) -> KernelCounters {
        use warden_common::stat;
        match self {
            Self::Ebpf(b) => KernelCounters {
                lost: maps::Maps::sum(&b.maps.stats, stat::EVENTS_LOST),
                suppressed: maps::Maps::sum(&b.maps.stats, stat::EVENTS_SUPPRESSED),
            },
            Self::Nft(_) => Default::default(),
        }
    }

    /// Caps the records each CPU emits per second (0 = no cap); the eBPF
    /// backend only (NFLOG has its own queue limits).
    pub fn set_event_rate(&mut self, per_cpu_per_sec: u32) -> Result<(), EnforceError> {
        match self {
            Self::Ebpf(b) => {
                // Budget windows are 2^EVENT_WINDOW_SHIFT ns long.
                let window_ns = (1u64 << warden_common::EVENT_WINDOW_SHIFT) as f64;
                let per_window = (per_cpu_per_sec as f64 * window_ns / 1e9).ceil() as u32;
                b.maps.set_event_budget(per_window)
            }
            Self::Nft(_) => Ok(()),
        }
    }

    /// The kernel programs' debug records (eBPF, with `--kernel-log-level`).
    pub fn take_kernel_logger(&mut self) -> Option<kernel_log::KernelLogger> {
        match self {
            Self::Ebpf(b) => b.take_logger(),
            Self::Nft(_) => None,
        }
    }

    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        match self {
            Self::Ebpf(b) => b.take_events(),
            Self::Nft(_) => None,
        }
    }
}
