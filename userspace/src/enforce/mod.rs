//! Enforcement backends. The eBPF backend is the one that exists today; the
//! nftables fallback renders the same [`Compiled`](crate::compile::Compiled) policy.

pub mod ebpf;
pub mod maps;

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnforceError {
    #[error("bpffs: {0}")]
    Bpffs(String),
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
    #[error(transparent)]
    Cgroup(#[from] crate::cgroupfs::CgroupfsError),
}
