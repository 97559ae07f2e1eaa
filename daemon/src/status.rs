//! The status report: what `warden status` prints, `--json` serializes, the
//! daemon's metrics render and `warden doctor` checks. Read from the pinned
//! maps (or warden's nft table) and the running daemon's state file, so it
//! describes enforcement whether or not a daemon is running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_common::stat;
use warden_enforce::compile::PolicyMode;
use warden_enforce::maps::Maps;
use warden_enforce::nft::NftBackend;
use warden_enforce::{ebpf, pins};
use warden_events::pipeline::Losses;

use crate::state::DaemonState;

/// Which backend holds the enforcement in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ebpf,
    Nft,
    /// Nothing pinned and no warden table: not enforcing.
    None,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Nft => "nft",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every attachment of the policy in force is done (the state file is
    /// written only once a start has attached everything, XDP included).
    pub enforcing: bool,
    pub backend: BackendKind,
    pub pin_dir: PathBuf,
    pub daemon: DaemonProcess,
    /// The pinned links (eBPF).
    pub links: Vec<String>,
    /// Cgroup programs not pinned: detached, unless a running daemon holds
    /// them and will pin them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_links: Vec<String>,
    /// Why the pin directory is not trusted (not root's, not 0700, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_dir_problem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<KernelCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleHits>>,
    /// `inet <table>` (nft backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_table: Option<String>,
    /// What the nft backend cannot enforce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<String>,
    pub bans: Vec<Ban>,
    /// Addresses learned from DNS for egress host rules, and the seconds
    /// each stays allowed (TTL plus grace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<warden_enforce::learned::LearnedAddress>,
    /// The proxy's certificates (as it last reported them) and the seconds
    /// each has left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_certificates: Vec<CertificateStatus>,
    /// The resolver's questions since the daemon started, as of its last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsStats>,
    /// Event delivery since the daemon started, as of its last update (the
    /// pinned kernel counter since enforcement started is `counters.events_lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Losses>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInForce>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub certificate: String,
    pub subject: String,
    pub path: String,
    pub not_after: i64,
    /// Negative once expired.
    pub seconds_left: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonProcess {
    pub running: bool,
    pub pid: Option<u32>,
}

/// The pinned per-CPU counters, summed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub events_suppressed: u64,
    pub malformed_dropped: u64,
    pub fragments_passed: u64,
    pub banned_dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleHits {
    pub id: u32,
    pub kind: String,
    pub description: String,
    pub origin: String,
    pub hits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ban {
    pub source: String,
    pub seconds_left: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyInForce {
    pub digest: String,
    pub mode: PolicyMode,
    /// The sections that only audit.
    pub audit: Vec<String>,
    pub sources: Vec<String>,
    pub ports: Vec<u16>,
    pub unresolved_cgroups: Vec<String>,
}

/// Reads the report for the enforcement pinned in `pin_dir` (or held in the
/// nft table `nft_table`) and the daemon whose state is in `run_dir`.
pub fn report(pin_dir: &Path, run_dir: &Path, nft_table: &str) -> StatusReport {
    let state = DaemonState::read(run_dir);
    let mut r = StatusReport {
        enforcing: false,
        backend: BackendKind::None,
        pin_dir: pin_dir.to_owned(),
        daemon: DaemonProcess {
            running: state.as_ref().is_some_and(|s| process_is_warden(s.pid)),
            pid: state.as_ref().map(|s| s.pid),
        },
        links: pinned_links(pin_dir),
        missing_links: Vec::new(),
        pin_dir_problem: pin_dir.exists().then(|| pins::untrusted(pin_dir)).flatten(),
        generation: None,
        active_slot: None,
        counters: None,
        rules: None,
        nft_table: None,
        not_enforced: Vec::new(),
        bans: bans(pin_dir, nft_table),
        learned: warden_enforce::learned::Learned::load(&run_dir.join(crate::run::LEARNED_FILE))
            .list(),
        dns: state.as_ref().and_then(|s| s.dns),
        proxy_certificates: state
            .as_ref()
            .map(|s| {
                let now = (warden_runtime::clock::unix_ms() / 1000) as i64;
                s.proxy_certificates
                    .iter()
                    .map(|c| CertificateStatus {
                        certificate: c.certificate.clone(),
                        subject: c.subject.clone(),
                        path: c.path.clone(),
                        not_after: c.not_after,
                        seconds_left: c.not_after - now,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        events: state.as_ref().map(|s| s.events.clone()),
        policy: state.as_ref().map(policy_in_force),
    };
    if let Ok(maps) = Maps::open_pinned(pin_dir) {
        read_ebpf(&mut r, &maps, state.as_ref());
    } else {
        read_nft(&mut r, nft_table, state.as_ref());
    }
    r
}

/// The eBPF backend's part: enforcing once the state file exists, every
/// cgroup program is pinned and the pin directory is trusted.
fn read_ebpf(r: &mut StatusReport, maps: &Maps, state: Option<&DaemonState>) {
    r.backend = BackendKind::Ebpf;
    r.missing_links = ebpf::CGROUP_PROGRAMS
        .iter()
        .filter(|p| !r.links.iter().any(|l| l == *p))
        .map(|p| p.to_string())
        .collect();
    r.enforcing = state.is_some() && r.missing_links.is_empty() && r.pin_dir_problem.is_none();
    r.generation = Some(maps.generation().unwrap_or(0));
    r.active_slot = Some(maps.active_slot().unwrap_or(0));
    let sum = |i| Maps::sum(&maps.stats, i);
    r.counters = Some(KernelCounters {
        events_lost: sum(stat::EVENTS_LOST),
        events_suppressed: sum(stat::EVENTS_SUPPRESSED),
        malformed_dropped: sum(stat::MALFORMED),
        fragments_passed: sum(stat::FRAGMENTS_PASSED),
        banned_dropped: sum(stat::BANNED_DROPPED),
    });
    r.rules = Some(rule_hits(state, |id| Maps::sum(&maps.rule_hits, id)));
}

/// The nft backend's part: enforcing whenever warden's table has its rules.
fn read_nft(r: &mut StatusReport, nft_table: &str, state: Option<&DaemonState>) {
    let counters = NftBackend::counters(nft_table);
    if counters.is_empty() {
        return;
    }
    r.enforcing = true;
    r.backend = BackendKind::Nft;
    r.nft_table = Some(format!("inet {nft_table}"));
    r.not_enforced = warden_enforce::nft::GAPS
        .iter()
        .map(|g| g.to_string())
        .collect();
    r.generation = Some(
        NftBackend::open(nft_table)
            .map(|b| b.generation())
            .unwrap_or(0),
    );
    let hits = |id| counters.iter().find(|(i, _)| *i == id).map_or(0, |c| c.1);
    r.rules = Some(rule_hits(state, hits));
}

fn rule_hits(state: Option<&DaemonState>, hits: impl Fn(u32) -> u64) -> Vec<RuleHits> {
    let rules = state.map(|s| s.rules.as_slice()).unwrap_or_default();
    rules
        .iter()
        .map(|r| RuleHits {
            id: r.id,
            kind: r.kind.clone(),
            description: r.description.clone(),
            origin: r.origin.clone(),
            hits: hits(r.id),
        })
        .collect()
}

fn pinned_links(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn bans(pin_dir: &Path, nft_table: &str) -> Vec<Ban> {
    warden_enforce::ban::in_force(pin_dir, nft_table)
        .into_iter()
        .map(|(ip, left)| Ban {
            source: ip.to_string(),
            seconds_left: left.as_secs(),
        })
        .collect()
}

fn policy_in_force(s: &DaemonState) -> PolicyInForce {
    PolicyInForce {
        digest: s.digest.clone(),
        mode: s.mode,
        audit: s.audit.clone(),
        sources: s.sources.clone(),
        ports: s.ports.clone(),
        unresolved_cgroups: s.unresolved_cgroups.clone(),
    }
}

/// Whether `pid` is a running warden (a stale state file names a dead one).
pub fn process_is_warden(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "warden")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_pinned_reads_as_not_enforcing() {
        let dir = std::env::temp_dir().join(format!("warden-status-{}", std::process::id()));
        let r = report(
            &dir.join("pins"),
            &dir.join("run"),
            "warden_status_test_absent",
        );
        assert!(!r.enforcing);
        assert_eq!(r.backend, BackendKind::None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["backend"], "none");
        assert_eq!(json["daemon"]["running"], false);
        assert!(json.get("generation").is_none() && json.get("missing_links").is_none());
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert!(!back.enforcing);
    }
}
