//! The sources banned from the protected ports and the proxy's port, as the
//! kernel holds them (eBPF: the pinned `BANS` map; nftables: warden's ban
//! sets). Bans come from the proxy's brute-force detection through the
//! daemon, or from an operator (`warden ban`); each ends by itself.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::maps::Maps;
use crate::nft::NftBackend;

/// Where bans are kept on this host: the eBPF maps if pinned, else warden's
/// nft table.
pub enum BanStore {
    Ebpf(Box<Maps>),
    Nft(NftBackend),
}

impl BanStore {
    pub fn open(pin_dir: &Path, nft_table: &str) -> Result<Self, String> {
        if let Ok(m) = Maps::open_pinned(pin_dir) {
            return Ok(Self::Ebpf(Box::new(m)));
        }
        match NftBackend::open(nft_table) {
            Ok(b) if b.generation() > 0 => Ok(Self::Nft(b)),
            _ => Err("no warden enforcement on this host (nothing pinned, no nft table)".into()),
        }
    }

    /// The bans in force (source, time left).
    pub fn list(&mut self) -> Vec<(IpAddr, Duration)> {
        match self {
            Self::Ebpf(m) => m.bans_in_force(),
            Self::Nft(b) => b.bans(),
        }
    }

    pub fn add(&mut self, source: IpAddr, duration: Duration) -> Result<(), String> {
        match self {
            Self::Ebpf(m) => m.ban(source, duration, None).map_err(|e| e.to_string()),
            Self::Nft(b) => b.ban(source, duration, None).map_err(|e| e.to_string()),
        }
    }

    /// Lifts a ban; false if `source` was not banned.
    pub fn remove(&mut self, source: IpAddr) -> Result<bool, String> {
        match self {
            Self::Ebpf(m) => m.unban(source).map_err(|e| e.to_string()),
            Self::Nft(b) => b.unban(source).map_err(|e| e.to_string()),
        }
    }
}

/// The bans in force (source, time left); none where nothing enforces.
pub fn in_force(pin_dir: &Path, nft_table: &str) -> Vec<(IpAddr, Duration)> {
    BanStore::open(pin_dir, nft_table)
        .map(|mut s| s.list())
        .unwrap_or_default()
}
