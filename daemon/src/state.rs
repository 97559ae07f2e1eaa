//! The daemon's state file (`<run-dir>/state.json`): what `warden status` and
//! `warden down` read to describe and stop a running daemon.

use crate::run::Options;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use warden_enforce::compile::{Compiled, PolicyMode, RuleInfo};
use warden_enforce::ebpf::{Applied, Attachment};
use warden_policy::Policy;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    pub backend: String,
    pub nft_table: String,
    pub pin_dir: PathBuf,
    pub generation: u32,
    pub digest: String,
    /// Whether the policy blocks; the auditing sections.
    #[serde(default)]
    pub mode: PolicyMode,
    #[serde(default)]
    pub audit: Vec<String>,
    pub sources: Vec<String>,
    /// The policy paths as given (`--policy`; empty: the embedded default).
    #[serde(default)]
    pub policy_paths: Vec<String>,
    /// The key policy files must be signed by (`--require-signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
    pub ports: Vec<u16>,
    pub rules: Vec<StateRule>,
    pub attachments: Vec<serde_json::Value>,
    pub unresolved_cgroups: Vec<String>,
    /// Event delivery and losses, updated as they change.
    #[serde(default)]
    pub events: warden_events::pipeline::Losses,
    /// Signed policy sets in force: (directory, serial); an older serial is
    /// refused as a replay, also by the next daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_sets: Vec<(String, u64)>,
    /// The proxy's certificates and when each expires, as it last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_certificates: Vec<warden_events::reports::CertificateInfo>,
    /// The resolver for host rules, when it runs; updated as it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRule {
    pub id: u32,
    pub kind: String,
    pub description: String,
    pub origin: String,
}

impl From<&RuleInfo> for StateRule {
    fn from(r: &RuleInfo) -> Self {
        Self {
            id: r.id,
            kind: r.kind.into(),
            description: r.description.to_string(),
            origin: r.origin.clone(),
        }
    }
}

impl DaemonState {
    pub fn new(
        opts: &Options,
        backend: &str,
        policy: &Policy,
        c: &Compiled,
        applied: &Applied,
        att: &[Attachment],
    ) -> Self {
        let mut s = Self {
            pid: std::process::id(),
            backend: backend.into(),
            nft_table: opts.nft_table.clone(),
            pin_dir: opts.ebpf.pin_dir.clone(),
            generation: 0,
            digest: String::new(),
            mode: PolicyMode::Enforce,
            audit: Vec::new(),
            sources: Vec::new(),
            policy_paths: opts
                .policy
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            signature_key: opts.require_signature.clone(),
            ports: Vec::new(),
            rules: Vec::new(),
            attachments: att
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect(),
            unresolved_cgroups: Vec::new(),
            events: Default::default(),
            dns: None,
            policy_sets: Vec::new(),
            proxy_certificates: Vec::new(),
        };
        s.policy_applied(policy, c, applied);
        s
    }

    pub fn policy_applied(&mut self, policy: &Policy, c: &Compiled, applied: &Applied) {
        self.generation = applied.generation;
        self.digest = c.digest.clone();
        self.mode = c.mode();
        self.audit = c.audit_sections();
        self.sources = policy
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        self.ports = c.ports.clone();
        self.rules = c.rules.iter().map(StateRule::from).collect();
        self.unresolved_cgroups = applied.unresolved.clone();
    }

    pub fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(run_dir)?;
        let tmp = run_dir.join("state.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, run_dir.join("state.json"))
    }

    pub fn read(run_dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(run_dir.join("state.json")).ok()?).ok()
    }
}
