//! The validated, merged policy: what the enforcement backends compile.
//!
//! Every value that came from a file keeps its [`Origin`], so a deny event or a
//! compile error can name the line that caused it. All types serialise (origins as
//! `"file:line:col"`, networks as strings) for `warden policy show`.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::cgroup::CgroupPath;
use crate::diagnostic::Origin;
use crate::host::HostPattern;
use crate::ports::{PortRange, Proto};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Located<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Located<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }
}

/// A complete policy, merged from one or more files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Protected TCP ports; sorted, deduplicated, never empty.
    pub ports: Vec<u16>,
    /// Cgroups (and descendants) that may bind the protected ports and connect to them.
    pub server_cgroups: Vec<Located<CgroupPath>>,
    pub ingress: Ingress,
    /// Further local cgroups (and descendants) that may connect to the protected ports.
    pub local_allow: Vec<Located<CgroupPath>>,
    /// Mode of the local checks: connects to and binds of the protected ports.
    pub local_mode: Mode,
    /// Outbound allowlists, one per cgroup; cgroups without one are not restricted.
    pub egress: Vec<EgressPolicy>,
    /// Local cgroups that may reach the protected ports on other hosts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteAccess>,
    /// Files merged into this policy, in merge order (`<embedded default>` for the default).
    #[serde(serialize_with = "serialize_paths")]
    pub sources: Vec<PathBuf>,
}

/// Remote sources allowed to reach the protected ports (enforced by XDP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingress {
    /// `["*"]` (every non-loopback interface, the default) or interface names.
    pub interfaces: Vec<String>,
    /// Sources allowed to reach every protected port; empty = none (local access only).
    pub allow: Vec<Located<IpNet>>,
    /// Extra sources for one protected port each, sorted by port, one entry per port.
    pub per_port: Vec<PortIngress>,
    pub mode: Mode,
}

/// Whether a section's denials are enforced or only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied traffic is blocked (and reported).
    #[default]
    Enforce,
    /// Every decision is evaluated and reported; what would be denied passes,
    /// reported as `would_deny`. For rolling a policy out safely.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Extra sources allowed to reach one protected port, on top of [`Ingress::allow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortIngress {
    pub port: u16,
    pub allow: Vec<Located<IpNet>>,
    /// The first `[[ingress.port]]` block for this port.
    pub origin: Origin,
}

/// Outbound allowlist for a cgroup and its descendants: everything not allowed is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressPolicy {
    pub cgroup: CgroupPath,
    /// Empty = deny all outbound traffic (written `allow = []`).
    pub allow: Vec<EgressRule>,
    /// Rules naming hosts (`host = "…"`): enforced by the addresses DNS
    /// answers for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostRule>,
    pub mode: Mode,
    /// The `[[egress]]` block.
    pub origin: Origin,
}

/// One allowed destination of an [`EgressPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    pub net: IpNet,
    /// Destination ports as written; empty = every port.
    pub ports: Vec<PortRange>,
    pub proto: Proto,
    /// The `[[egress.allow]]` block (or inline table).
    pub origin: Origin,
}

/// `[[remote]]`: these cgroups (and descendants) may connect to the protected
/// ports on these networks, and never on this host, by any address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteAccess {
    pub cgroups: Vec<Located<CgroupPath>>,
    pub to: Vec<Located<IpNet>>,
    pub origin: Origin,
}

/// One allowed host name (or leading-wildcard pattern) of an [`EgressPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRule {
    pub host: HostPattern,
    /// Destination ports as written; empty = every port.
    pub ports: Vec<PortRange>,
    pub proto: Proto,
    pub origin: Origin,
}

impl Policy {
    /// Sources allowed to reach `port`: the global allowlist and that port's extra one,
    /// sorted and deduplicated. Only meaningful for a port in [`Policy::ports`]; others
    /// are not filtered at all.
    pub fn ingress_allow_for(&self, port: u16) -> Vec<IpNet> {
        let extra = self.ingress.per_port.iter().filter(|p| p.port == port);
        let mut nets: Vec<IpNet> = self
            .ingress
            .allow
            .iter()
            .chain(extra.flat_map(|p| p.allow.iter()))
            .map(|l| l.value)
            .collect();
        nets.sort();
        nets.dedup();
        nets
    }

    /// True if any section only audits.
    pub fn audits(&self) -> bool {
        self.ingress.mode == Mode::Audit
            || self.local_mode == Mode::Audit
            || self.egress.iter().any(|e| e.mode == Mode::Audit)
    }

    /// Whether any egress policy names hosts (the daemon then runs its resolver).
    pub fn has_host_rules(&self) -> bool {
        self.egress.iter().any(|e| !e.hosts.is_empty())
    }

    /// The egress policy that names exactly `cgroup`, if any.
    pub fn egress_for(&self, cgroup: &CgroupPath) -> Option<&EgressPolicy> {
        self.egress.iter().find(|e| &e.cgroup == cgroup)
    }
}

fn serialize_paths<S: Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
    // Lossy, so a non-UTF-8 file name can never make `policy show` fail.
    serializer.collect_seq(paths.iter().map(|p| Path::display(p).to_string()))
}
