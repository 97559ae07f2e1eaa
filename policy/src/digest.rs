//! [`Policy::digest`]: a fingerprint of what a policy enforces, not of how it was written.
//!
//! The digest hashes a canonical form that leaves out origins and file names and
//! normalises everything whose order or spelling does not change a verdict: ports and
//! cgroups sorted, a cgroup dropped when an ancestor in the same list already covers it,
//! ingress reduced to each protected port's effective (aggregated) source set, egress
//! rules sorted with their port ranges merged. Two policies with the same digest give
//! the same verdicts; the daemon logs it with every policy generation.

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cgroup::CgroupPath;
use crate::model::{Located, Mode, Policy};
use crate::ports::{PortRange, Proto, canonical_ranges};

/// Bumped whenever the canonical form changes, so old and new digests never collide.
const CANONICAL_FORMAT: &str = "ollama-warden/policy-digest/1";

#[derive(Serialize)]
struct Canonical<'a> {
    format: &'static str,
    ports: &'a [u16],
    bind: Vec<&'a str>,
    connect: Vec<&'a str>,
    interfaces: Vec<&'a str>,
    ingress: Vec<(u16, Vec<String>)>,
    egress: Vec<CanonicalEgress<'a>>,
    /// Sections that only audit (`"ingress"`, `"local"`, `"egress:<cgroup>"`),
    /// sorted; left out when empty, so enforcing policies keep their digest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    audit: Vec<String>,
    /// (cgroup, remote network) pairs, sorted; left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remote: Vec<(String, String)>,
}

#[derive(Serialize)]
struct CanonicalEgress<'a> {
    cgroup: &'a str,
    allow: Vec<CanonicalRule>,
    /// Absent without host rules, so a policy without them keeps its digest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<CanonicalHost>,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct CanonicalHost {
    host: String,
    ports: Vec<(u16, u16)>,
    proto: Proto,
}

#[derive(Serialize)]
struct CanonicalRule {
    net: String,
    /// Merged ranges as `(lo, hi)`; empty = every port.
    ports: Vec<(u16, u16)>,
    proto: Proto,
}

impl Policy {
    /// `"sha256:<hex>"` of the policy's canonical form (semantic: see `digest.rs`).
    pub fn digest(&self) -> String {
        let canonical = self.canonical();
        // Serialising plain strings, integers and sequences cannot fail.
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        let hash = Sha256::digest(&bytes);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    fn canonical(&self) -> Canonical<'_> {
        let server: Vec<&CgroupPath> = self.server_cgroups.iter().map(|l| &l.value).collect();
        let connect: Vec<&CgroupPath> = server
            .iter()
            .copied()
            .chain(
                self.local_allow
                    .iter()
                    .map(|l: &Located<CgroupPath>| &l.value),
            )
            .collect();
        let mut interfaces: Vec<&str> =
            self.ingress.interfaces.iter().map(String::as_str).collect();
        interfaces.sort_unstable();
        interfaces.dedup();
        let ingress = self
            .ports
            .iter()
            .map(|&port| {
                let nets = IpNet::aggregate(&self.ingress_allow_for(port));
                (port, nets.iter().map(IpNet::to_string).collect())
            })
            .collect();
        let mut egress: Vec<CanonicalEgress<'_>> = self
            .egress
            .iter()
            .map(|e| {
                let mut allow: Vec<(IpNet, Vec<PortRange>, Proto)> = e
                    .allow
                    .iter()
                    .map(|r| (r.net, canonical_ranges(&r.ports), r.proto))
                    .collect();
                allow.sort();
                allow.dedup();
                let mut hosts: Vec<CanonicalHost> = e
                    .hosts
                    .iter()
                    .map(|h| CanonicalHost {
                        host: h.host.to_string(),
                        ports: canonical_ranges(&h.ports)
                            .iter()
                            .map(|r| (r.lo, r.hi))
                            .collect(),
                        proto: h.proto,
                    })
                    .collect();
                hosts.sort();
                hosts.dedup();
                CanonicalEgress {
                    hosts,
                    cgroup: e.cgroup.as_str(),
                    allow: allow
                        .into_iter()
                        .map(|(net, ports, proto)| CanonicalRule {
                            net: net.to_string(),
                            ports: ports.iter().map(|r| (r.lo, r.hi)).collect(),
                            proto,
                        })
                        .collect(),
                }
            })
            .collect();
        egress.sort_by(|a, b| a.cgroup.cmp(b.cgroup));
        let mut audit: Vec<String> = self
            .egress
            .iter()
            .filter(|e| e.mode == Mode::Audit)
            .map(|e| format!("egress:{}", e.cgroup))
            .collect();
        if self.ingress.mode == Mode::Audit {
            audit.push("ingress".into());
        }
        if self.local_mode == Mode::Audit {
            audit.push("local".into());
        }
        audit.sort();
        let mut remote: Vec<(String, String)> = self
            .remote
            .iter()
            .flat_map(|r| {
                r.cgroups.iter().flat_map(|c| {
                    r.to.iter()
                        .map(|n| (c.value.to_string(), n.value.to_string()))
                })
            })
            .collect();
        remote.sort();
        remote.dedup();
        Canonical {
            format: CANONICAL_FORMAT,
            ports: &self.ports,
            bind: outermost(server),
            connect: outermost(connect),
            interfaces,
            ingress,
            egress,
            audit,
            remote,
        }
    }
}

/// Sorted cgroups, leaving out any that another in the list already covers.
fn outermost(mut cgroups: Vec<&CgroupPath>) -> Vec<&str> {
    cgroups.sort();
    cgroups.dedup();
    let mut kept: Vec<&CgroupPath> = Vec::new();
    for c in cgroups {
        // Sorted order puts an ancestor before its descendants.
        if !kept.iter().any(|k| k.covers(c)) {
            kept.push(c);
        }
    }
    kept.into_iter().map(CgroupPath::as_str).collect()
}
