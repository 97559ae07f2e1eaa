//! Compiles a [`Policy`] into the entries every backend loads.
//!
//! The compiled form is backend-neutral: protected ports, (port, source prefix)
//! ingress entries, cgroup grants with ancestors' grants folded in, and egress
//! prefixes that each carry every rule covering them. Each entry keeps a rule id
//! that indexes the per-rule counters and names the policy line it came from.

use ipnet::{IpNet, Ipv6Net};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use thiserror::Error;
use warden_common::{
    CG_MAY_BIND, CG_MAY_CONNECT, CG_MAY_CONNECT_REMOTE, EGRESS_RULES_PER_PREFIX, MAX_RULES,
    PROTO_TCP, PROTO_UDP, PortRule, RULE_DEFAULT_DENY,
};
use warden_policy::{CgroupPath, HostPattern, Located, Mode, Policy, Proto};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "{origin}: egress prefix {net} of cgroup {cgroup} is covered by {count} port rules; at most {max} fit (merge port ranges)"
    )]
    TooManyEgressRules {
        origin: String,
        cgroup: String,
        net: IpNet,
        count: usize,
        max: usize,
    },
    #[error("the policy has {0} rules; at most {max} are supported", max = MAX_RULES - 1)]
    TooManyRules(usize),
    #[error(
        "{origin}: [[egress]] for `@pod` is, on this host, the cgroup {cgroup} that another [[egress]] block names; write one block"
    )]
    SameEgressCgroup { origin: String, cgroup: String },
}

/// One policy rule: what a rule id in an event or counter refers to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: u32,
    pub kind: &'static str,
    pub description: std::sync::Arc<str>,
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IngressEntry {
    pub port: u16,
    pub net: IpNet,
    pub rule_id: u32,
}

/// A network where `[[remote]]` cgroups may reach the protected ports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RemoteEntry {
    pub net: IpNet,
    pub rule_id: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CgroupGrant {
    pub cgroup: CgroupPath,
    /// `CG_MAY_CONNECT` / `CG_MAY_BIND`, including those of listed ancestors.
    pub flags: u32,
    pub rule_id: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EgressPrefix {
    pub net: IpNet,
    #[serde(serialize_with = "ser_port_rules")]
    pub rules: Vec<PortRule>,
}

/// A host rule: the port rules its learned addresses get.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CompiledHost {
    pub host: HostPattern,
    #[serde(serialize_with = "ser_port_rules")]
    pub rules: Vec<PortRule>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CompiledEgress {
    pub cgroup: CgroupPath,
    pub prefixes: Vec<EgressPrefix>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<CompiledHost>,
    /// Denials are reported as `would_deny` and let through.
    pub audit: bool,
}

/// What the backends load; `Compiled::rules[i].id == i`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Compiled {
    pub ports: Vec<u16>,
    pub interfaces: Vec<String>,
    pub ingress: Vec<IngressEntry>,
    pub cgroups: Vec<CgroupGrant>,
    pub egress: Vec<CompiledEgress>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteEntry>,
    pub rules: Vec<RuleInfo>,
    pub digest: String,
    /// Ingress denials are reported as `would_deny` and let through.
    pub ingress_audit: bool,
    /// Local connect and bind denials are reported as `would_deny` and let through.
    pub local_audit: bool,
    /// Rules that mean something other than they may seem to, as
    /// `file:line:col: warning: …` (printed by `policy check`).
    pub warnings: Vec<String>,
}

impl Compiled {
    /// Whether a host rule of any egress policy allows `name`.
    pub fn allows_name(&self, name: &str) -> bool {
        self.egress
            .iter()
            .flat_map(|e| &e.hosts)
            .any(|h| h.host.matches(name))
    }

    /// Whether any egress policy has host rules (the resolver is needed).
    pub fn has_hosts(&self) -> bool {
        self.egress.iter().any(|e| !e.hosts.is_empty())
    }

    /// Whether a policy with host rules only audits.
    pub fn audits_hosts(&self) -> bool {
        self.egress.iter().any(|e| e.audit && !e.hosts.is_empty())
    }

    /// The description of rule `id`, shared (events carry it).
    pub fn rule_description(&self, id: u32) -> Option<std::sync::Arc<str>> {
        self.rules.get(id as usize).map(|r| r.description.clone())
    }

    /// Every interface except loopback when the policy says `*`.
    pub fn all_interfaces(&self) -> bool {
        self.interfaces.iter().any(|i| i == "*")
    }

    /// Every section audits (the daemon's `--audit`): nothing is blocked.
    pub fn audit_everything(&mut self) {
        self.ingress_audit = true;
        self.local_audit = true;
        for e in &mut self.egress {
            e.audit = true;
        }
    }

    /// The sections that only audit: `ingress`, `local`, `egress:<cgroup>`.
    pub fn audit_sections(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ingress_audit {
            out.push("ingress".to_owned());
        }
        if self.local_audit {
            out.push("local".to_owned());
        }
        out.extend(
            self.egress
                .iter()
                .filter(|e| e.audit)
                .map(|e| format!("egress:{}", e.cgroup)),
        );
        out
    }

    /// `"enforce"`, `"audit"` (every section) or `"mixed"`, for status and logs.
    pub fn mode(&self) -> PolicyMode {
        let audited = self.audit_sections().len();
        match audited {
            0 => PolicyMode::Enforce,
            n if n == 2 + self.egress.len() => PolicyMode::Audit,
            _ => PolicyMode::Mixed,
        }
    }
}

/// Whether a policy blocks: every section enforces, every section audits
/// (reports `would_deny`, blocks nothing), or some of each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
    Mixed,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
            Self::Mixed => "mixed",
        }
    }
}

/// Above this many ingress networks, they share one rule per file.
pub const MAX_RULES_PER_NETWORK: usize = 16_384;

/// Compiles `policy` for the host it runs on: `pod` is what `@pod` stands for
/// there ([`warden_runtime::cgroupfs::own_pod`]); without one, `@pod` stays as written and
/// matches no cgroup. The digest is the policy's, the same on every host.
pub fn compile(policy: &Policy, pod: Option<&CgroupPath>) -> Result<Compiled, CompileError> {
    let here = |c: &CgroupPath| match pod {
        Some(pod) if c.is_own_pod() => pod.clone(),
        _ => c.clone(),
    };
    let mut rules = RuleTable::default();
    let ingress = compile_ingress(policy, &mut rules);
    let cgroups = compile_grants(policy, &here, &mut rules);
    let egress = compile_egress(policy, &here, &mut rules)?;
    let remote = compile_remote(policy, &mut rules);
    if rules.0.len() >= MAX_RULES as usize {
        return Err(CompileError::TooManyRules(rules.0.len()));
    }
    Ok(Compiled {
        ports: policy.ports.clone(),
        interfaces: policy.ingress.interfaces.clone(),
        ingress,
        cgroups,
        egress,
        remote,
        rules: rules.0,
        digest: policy.digest(),
        ingress_audit: policy.ingress.mode == Mode::Audit,
        local_audit: policy.local_mode == Mode::Audit,
        warnings: mapped_range_warnings(policy),
    })
}

/// The rules verdicts are attributed to; rule 0 is the default deny.
struct RuleTable(Vec<RuleInfo>);

impl Default for RuleTable {
    fn default() -> Self {
        Self(vec![RuleInfo {
            id: RULE_DEFAULT_DENY,
            kind: "default-deny",
            description: "no rule allows it".into(),
            origin: String::new(),
        }])
    }
}

impl RuleTable {
    fn add(&mut self, kind: &'static str, description: String, origin: String) -> u32 {
        let id = self.0.len() as u32;
        self.0.push(RuleInfo {
            id,
            kind,
            description: description.into(),
            origin,
        });
        id
    }
}

/// An IPv6 rule that contains the IPv4-mapped range matches IPv6 only: said
/// where it is written.
fn mapped_range_warnings(policy: &Policy) -> Vec<String> {
    let ingress = policy
        .ingress
        .allow
        .iter()
        .chain(policy.ingress.per_port.iter().flat_map(|p| &p.allow))
        .map(|l| (l.value, &l.origin));
    let egress = policy
        .egress
        .iter()
        .flat_map(|e| &e.allow)
        .map(|r| (r.net, &r.origin));
    ingress
        .chain(egress)
        .filter(|(net, _)| covers_mapped(*net))
        .map(|(net, origin)| {
            format!(
                "{origin}: warning: `{net}` contains the IPv4-mapped range ::ffff:0:0/96 but matches IPv6 only; IPv4 needs its own rule (e.g. 0.0.0.0/0)"
            )
        })
        .collect()
}

/// Ingress entries, one per (port, network). One rule per network gives each
/// deny its exact line; a long list (a threat-intel feed, a cloud's ranges)
/// gets one rule per file instead, so the rule table stays bounded (the event
/// still names the source address).
fn compile_ingress(policy: &Policy, rules: &mut RuleTable) -> Vec<IngressEntry> {
    let per_port = policy.ingress.per_port.iter().map(|p| p.allow.len());
    let grouped = policy.ingress.allow.len() + per_port.sum::<usize>() > MAX_RULES_PER_NETWORK;
    let mut group_ids: BTreeMap<(String, Option<u16>), u32> = BTreeMap::new();
    let mut rule_for = |net: &Located<IpNet>, port: Option<u16>, reach: String| -> u32 {
        if !grouped {
            let description = format!("{} may reach {reach}", net.value);
            return rules.add("ingress", description, net.origin.to_string());
        }
        let file = net.origin.file.display().to_string();
        *group_ids.entry((file.clone(), port)).or_insert_with(|| {
            let description = format!("the ingress allow list of {file} may reach {reach}");
            rules.add("ingress", description, net.origin.to_string())
        })
    };
    let mut ingress = Vec::new();
    for l in &policy.ingress.allow {
        let rule_id = rule_for(l, None, format!("{:?}", policy.ports));
        for &port in &policy.ports {
            ingress.extend(ipv6_only(l.value).map(|net| IngressEntry { port, net, rule_id }));
        }
    }
    for p in &policy.ingress.per_port {
        for l in &p.allow {
            let rule_id = rule_for(l, Some(p.port), p.port.to_string());
            let port = p.port;
            ingress.extend(ipv6_only(l.value).map(|net| IngressEntry { port, net, rule_id }));
        }
    }
    ingress
}

/// Grants by cgroup path; a path listed twice gets the union. The kernel
/// matches the deepest listed cgroup, so each grant folds its listed
/// ancestors' flags in.
fn compile_grants(
    policy: &Policy,
    here: &impl Fn(&CgroupPath) -> CgroupPath,
    rules: &mut RuleTable,
) -> Vec<CgroupGrant> {
    let mut grants: BTreeMap<CgroupPath, (u32, u32)> = BTreeMap::new();
    for l in &policy.server_cgroups {
        let description = format!("{} may bind and connect", l.value);
        let id = rules.add("bind", description, l.origin.to_string());
        grants.entry(here(&l.value)).or_insert((0, id)).0 |= CG_MAY_BIND | CG_MAY_CONNECT;
    }
    for l in &policy.local_allow {
        let id = rules.add(
            "local",
            format!("{} may connect", l.value),
            l.origin.to_string(),
        );
        grants.entry(here(&l.value)).or_insert((0, id)).0 |= CG_MAY_CONNECT;
    }
    for r in &policy.remote {
        for l in &r.cgroups {
            let id = rules.add(
                "remote",
                format!(
                    "{} may connect to the protected ports of other hosts",
                    l.value
                ),
                l.origin.to_string(),
            );
            grants.entry(here(&l.value)).or_insert((0, id)).0 |= CG_MAY_CONNECT_REMOTE;
        }
    }
    grants
        .iter()
        .map(|(path, &(flags, rule_id))| {
            let inherited = grants
                .iter()
                .filter(|(other, _)| other.covers(path))
                .fold(flags, |acc, (_, (f, _))| acc | f);
            CgroupGrant {
                cgroup: path.clone(),
                flags: inherited,
                rule_id,
            }
        })
        .collect()
}

/// The `[[remote]]` networks, one rule each (IPv6 ones without the IPv4-mapped range).
fn compile_remote(policy: &Policy, rules: &mut RuleTable) -> Vec<RemoteEntry> {
    let mut out = Vec::new();
    for r in &policy.remote {
        for net in &r.to {
            let description = format!("the protected ports of {} may be reached", net.value);
            let rule_id = rules.add("remote", description, net.origin.to_string());
            out.extend(ipv6_only(net.value).map(|net| RemoteEntry { net, rule_id }));
        }
    }
    out
}

/// Each restricted cgroup's allowlist, folded per prefix for the kernel's trie.
fn compile_egress(
    policy: &Policy,
    here: &impl Fn(&CgroupPath) -> CgroupPath,
    rules: &mut RuleTable,
) -> Result<Vec<CompiledEgress>, CompileError> {
    let mut egress: Vec<CompiledEgress> = Vec::new();
    for e in &policy.egress {
        let cgroup = here(&e.cgroup);
        if let Some(twin) = egress.iter().find(|c| c.cgroup == cgroup) {
            return Err(CompileError::SameEgressCgroup {
                origin: e.origin.to_string(),
                cgroup: twin.cgroup.to_string(),
            });
        }
        let port_rules: Vec<(IpNet, PortRule, String)> = e
            .allow
            .iter()
            .flat_map(|r| egress_port_rules(&e.cgroup, r, rules))
            .collect();
        let mut folded = fold_egress(&cgroup, &port_rules)?;
        folded.audit = e.mode == Mode::Audit;
        folded.hosts = e
            .hosts
            .iter()
            .map(|h| compile_host(&e.cgroup, h, rules))
            .collect();
        egress.push(folded);
    }
    Ok(egress)
}

/// One egress rule as (network, ports and protocols) entries, one per
/// network and port range.
fn egress_port_rules(
    cgroup: &CgroupPath,
    r: &warden_policy::EgressRule,
    rules: &mut RuleTable,
) -> Vec<(IpNet, PortRule, String)> {
    let description = format!(
        "{cgroup} may reach {} {}{}",
        r.net,
        r.proto,
        ports_text(&r.ports)
    );
    let rule_id = rules.add("egress", description, r.origin.to_string());
    let per_range = port_rules(rule_id, r.proto, &r.ports);
    ipv6_only(r.net)
        .flat_map(|net| per_range.iter().map(move |&rule| (net, rule)))
        .map(|(net, rule)| (net, rule, r.origin.to_string()))
        .collect()
}

/// A host rule's port rules, under one rule id.
fn compile_host(
    cgroup: &CgroupPath,
    h: &warden_policy::HostRule,
    rules: &mut RuleTable,
) -> CompiledHost {
    let description = format!(
        "{cgroup} may reach {} {}{}",
        h.host,
        h.proto,
        ports_text(&h.ports)
    );
    let rule_id = rules.add("egress_host", description, h.origin.to_string());
    CompiledHost {
        host: h.host.clone(),
        rules: port_rules(rule_id, h.proto, &h.ports),
    }
}

/// One (protocols, port range) entry per range; no ranges = every port.
fn port_rules(rule_id: u32, proto: Proto, ports: &[warden_policy::PortRange]) -> Vec<PortRule> {
    let protos = match proto {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Any => PROTO_TCP | PROTO_UDP,
    };
    let ranges: Vec<(u16, u16)> = if ports.is_empty() {
        vec![(0, u16::MAX)]
    } else {
        ports.iter().map(|p| (p.lo, p.hi)).collect()
    };
    ranges
        .into_iter()
        .map(|(port_lo, port_hi)| PortRule {
            rule_id,
            port_lo,
            port_hi,
            protos,
        })
        .collect()
}

/// `::ffff:0:0/96`: where the kernel maps keep IPv4 addresses.
const MAPPED: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
    Ok(n) => n,
    Err(_) => panic!("a valid prefix"),
};

/// Whether an IPv6 network contains the IPv4-mapped range (`::/0`, `::/64`).
fn covers_mapped(net: IpNet) -> bool {
    matches!(net, IpNet::V6(v6) if v6.contains(&MAPPED))
}

/// `net` as the kernel maps must hold it for the rule to mean what it says: an
/// IPv6 network that contains the IPv4-mapped range is that network minus the
/// range (one sibling prefix per bit between its length and /96), so an IPv6
/// rule never matches IPv4. Other networks are themselves.
fn ipv6_only(net: IpNet) -> impl Iterator<Item = IpNet> {
    let pieces: Vec<IpNet> = match net {
        IpNet::V6(v6) if v6.contains(&MAPPED) => {
            let bits = u128::from(MAPPED.addr());
            (v6.prefix_len()..MAPPED.prefix_len())
                .map(|len| {
                    // The first `len` bits of the mapped range, bit `len` flipped.
                    let keep = if len == 0 { 0 } else { !0u128 << (128 - len) };
                    let bit = 1u128 << (127 - len);
                    let sibling = (bits & keep) | (!bits & bit);
                    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(sibling), len + 1).expect("len < 128"))
                })
                .collect()
        }
        other => vec![other],
    };
    pieces.into_iter()
}

/// Each distinct prefix carries the rules of every prefix that contains it, so the
/// kernel's longest-prefix match alone finds every rule that applies.
fn fold_egress(
    cgroup: &CgroupPath,
    rules: &[(IpNet, PortRule, String)],
) -> Result<CompiledEgress, CompileError> {
    let mut nets: Vec<IpNet> = rules.iter().map(|(n, _, _)| mapped(*n)).collect();
    nets.sort();
    nets.dedup();
    let mut prefixes = Vec::with_capacity(nets.len());
    for net in nets {
        let covering: Vec<PortRule> = rules
            .iter()
            .filter(|(n, _, _)| mapped(*n).contains(&net))
            .map(|(_, r, _)| *r)
            .collect();
        if covering.len() > EGRESS_RULES_PER_PREFIX {
            let origin = rules
                .iter()
                .find(|(n, _, _)| mapped(*n) == net)
                .map(|r| r.2.clone());
            return Err(CompileError::TooManyEgressRules {
                origin: origin.unwrap_or_default(),
                cgroup: cgroup.to_string(),
                net: unmapped(net),
                count: covering.len(),
                max: EGRESS_RULES_PER_PREFIX,
            });
        }
        prefixes.push(EgressPrefix {
            net: unmapped(net),
            rules: covering,
        });
    }
    Ok(CompiledEgress {
        cgroup: cgroup.clone(),
        prefixes,
        hosts: Vec::new(),
        audit: false,
    })
}

/// IPv4 networks as IPv4-mapped IPv6, the form the kernel maps use.
pub fn mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V4(v4) => IpNet::new(v4.addr().to_ipv6_mapped().into(), 96 + v4.prefix_len())
            .expect("prefix length of a mapped IPv4 network is at most 128"),
        v6 => v6,
    }
}

fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// The (prefix length, 16 bytes) a kernel LPM key stores for `net`.
pub fn lpm_addr(net: IpNet) -> (u32, [u8; 16]) {
    let m = mapped(net);
    let addr = match m.network() {
        std::net::IpAddr::V6(a) => a.octets(),
        std::net::IpAddr::V4(_) => unreachable!("mapped() returns IPv6"),
    };
    (m.prefix_len() as u32, addr)
}

fn ports_text(ports: &[warden_policy::PortRange]) -> String {
    if ports.is_empty() {
        return " any port".into();
    }
    let list: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.lo == p.hi {
                p.lo.to_string()
            } else {
                format!("{}-{}", p.lo, p.hi)
            }
        })
        .collect();
    format!(" port {}", list.join(","))
}

fn ser_port_rules<S: serde::Serializer>(rules: &[PortRule], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(rules.len()))?;
    for r in rules {
        let protos = match r.protos {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => "any",
        };
        seq.serialize_element(&serde_json::json!({
            "rule_id": r.rule_id, "ports": format!("{}-{}", r.port_lo, r.port_hi), "proto": protos,
        }))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    #[test]
    fn policies_name_no_cgroup_deeper_than_the_programs_walk() {
        // Level L is matched while the walk visits it: levels 0..MAX_CGROUP_DEPTH.
        assert_eq!(
            warden_policy::MAX_CGROUP_DEPTH as u32 + 1,
            warden_common::MAX_CGROUP_DEPTH
        );
    }

    use super::*;
    use std::path::Path;

    fn policy(text: &str) -> Policy {
        warden_policy::parse_str(Path::new("t.toml"), text).expect("valid test policy")
    }

    #[test]
    fn a_long_ingress_list_shares_one_rule_per_file() {
        let nets = |n: u32| {
            (0..n)
                .map(|i| format!("\"11.{}.{}.0/24\"", i >> 8, i & 255))
                .collect::<Vec<_>>()
                .join(",")
        };
        let text = |n| {
            format!(
                "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n[ingress]\nallow = [{}]\n",
                nets(n)
            )
        };
        let small = compile(&policy(&text(3)), None).unwrap();
        assert_eq!(
            small.rules.iter().filter(|r| r.kind == "ingress").count(),
            3
        );
        assert_eq!(
            small.rules[small.ingress[2].rule_id as usize].origin,
            "t.toml:6:38"
        );
        let n = MAX_RULES_PER_NETWORK as u32 + 1;
        let big = compile(&policy(&text(n)), None).unwrap();
        assert_eq!(big.ingress.len(), n as usize);
        let ids: std::collections::BTreeSet<u32> = big.ingress.iter().map(|e| e.rule_id).collect();
        assert_eq!(ids.len(), 1, "one rule for the whole list");
        let r = &big.rules[*ids.first().unwrap() as usize];
        assert_eq!(
            &*r.description,
            "the ingress allow list of t.toml may reach [11434]"
        );
    }

    #[test]
    fn pod_reference_is_the_pod_of_this_host() {
        let p = policy(
            r#"version = 1
[service]
ports = [11434]
server_cgroups = ["kubepods.slice"]
[local]
allow_cgroups = ["@pod"]
[[egress]]
cgroup = "@pod"
allow = []
"#,
        );
        let pod = CgroupPath::new("kubepods.slice/kubepods-pod0.slice").unwrap();
        let c = compile(&p, Some(&pod)).unwrap();
        let grant = c.cgroups.iter().find(|g| g.cgroup == pod).unwrap();
        assert_eq!(
            grant.flags,
            CG_MAY_BIND | CG_MAY_CONNECT,
            "folds in its ancestor"
        );
        assert_eq!(c.egress[0].cgroup, pod);
        assert!(
            c.rules
                .iter()
                .any(|r| &*r.description == "@pod may connect")
        );
        assert_eq!(
            c.digest,
            compile(&p, None).unwrap().digest,
            "one digest everywhere"
        );
        let elsewhere = compile(&p, None).unwrap();
        assert!(elsewhere.cgroups.iter().any(|g| g.cgroup.is_own_pod()));

        let twin = policy(
            r#"version = 1
[service]
ports = [11434]
server_cgroups = []
[[egress]]
cgroup = "@pod"
allow = []
[[egress]]
cgroup = "kubepods.slice/kubepods-pod0.slice"
allow = []
"#,
        );
        let err = compile(&twin, Some(&pod)).unwrap_err().to_string();
        assert!(err.contains("another [[egress]] block names"), "{err}");
        assert!(compile(&twin, None).is_ok());
    }

    #[test]
    fn ancestors_flags_fold_into_descendants() {
        let c = compile(
            &policy(
                r#"version = 1
[service]
ports = [11434]
server_cgroups = ["a"]
[local]
allow_cgroups = ["a/b", "c"]
"#,
            ),
            None,
        )
        .unwrap();
        let flags = |p: &str| {
            c.cgroups
                .iter()
                .find(|g| g.cgroup.as_str() == p)
                .unwrap()
                .flags
        };
        assert_eq!(flags("a"), CG_MAY_BIND | CG_MAY_CONNECT);
        assert_eq!(flags("a/b"), CG_MAY_BIND | CG_MAY_CONNECT);
        assert_eq!(flags("c"), CG_MAY_CONNECT);
    }

    #[test]
    fn egress_prefixes_carry_covering_rules_and_ipv4_is_mapped() {
        let c = compile(
            &policy(
                r#"version = 1
[service]
ports = [11434]
server_cgroups = ["s"]
[[egress]]
cgroup = "s"
[[egress.allow]]
net = "10.0.0.0/8"
ports = [53]
proto = "udp"
[[egress.allow]]
net = "10.1.0.0/16"
ports = [443, "8000-8100"]
proto = "tcp"
"#,
            ),
            None,
        )
        .unwrap();
        let e = &c.egress[0];
        assert_eq!(e.prefixes.len(), 2);
        let narrow = e
            .prefixes
            .iter()
            .find(|p| p.net.prefix_len() == 16)
            .unwrap();
        assert_eq!(narrow.rules.len(), 3, "the /8 rule covers the /16 too");
        let wide = e.prefixes.iter().find(|p| p.net.prefix_len() == 8).unwrap();
        assert_eq!(wide.rules.len(), 1);
        assert_eq!(lpm_addr("10.1.0.0/16".parse().unwrap()).0, 96 + 16);
        assert_eq!(lpm_addr("fd00::/8".parse().unwrap()).0, 8);
    }

    #[test]
    fn ingress_entries_per_port_and_rule_ids_index_rules() {
        let c = compile(
            &policy(
                r#"version = 1
[service]
ports = [11434, 11435]
server_cgroups = ["s"]
[ingress]
allow = ["192.0.2.0/24", "2001:db8::/32"]
[[ingress.port]]
port = 11435
allow = ["198.51.100.7"]
"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.ingress.len(), 5);
        for (i, r) in c.rules.iter().enumerate() {
            assert_eq!(r.id as usize, i);
        }
        assert!(
            c.ingress
                .iter()
                .all(|e| c.rules[e.rule_id as usize].kind == "ingress")
        );
    }

    #[test]
    fn ipv6_networks_never_cover_ipv4() {
        let pieces: Vec<IpNet> = ipv6_only("::/0".parse().unwrap()).collect();
        assert_eq!(pieces.len(), 96);
        let mapped_v4: IpNet = "::ffff:10.0.0.1/128".parse().unwrap();
        assert!(pieces.iter().all(|p| !p.contains(&mapped_v4)));
        // Together with the mapped range they cover everything, each address once.
        for probe in [
            "::1/128",
            "2001:db8::1/128",
            "fd00::/8",
            "::fffe:0:0/96",
            "ffff::/16",
        ] {
            let probe: IpNet = probe.parse().unwrap();
            assert_eq!(
                pieces.iter().filter(|p| p.contains(&probe)).count(),
                1,
                "{probe}"
            );
        }
        assert_eq!(ipv6_only("::/64".parse().unwrap()).count(), 32);
        let plain: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!(ipv6_only(plain).collect::<Vec<_>>(), vec![plain]);
        let v4: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(ipv6_only(v4).collect::<Vec<_>>(), vec![v4]);

        let c = compile(
            &policy(
                "version = 1\n[service]\nports = [11434]\nserver_cgroups = []\n[ingress]\nallow = [\"::/0\"]\n[[egress]]\ncgroup = \"m\"\n[[egress.allow]]\nnet = \"::/0\"\nports = [443]\n",
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.ingress.len(), 96);
        assert!(
            c.egress[0]
                .prefixes
                .iter()
                .all(|p| !p.net.contains(&mapped_v4))
        );
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("`::/0` contains the IPv4-mapped range"));
    }

    #[test]
    fn too_many_rules_on_one_prefix_is_an_error() {
        let mut text = String::from(
            "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n[[egress]]\ncgroup = \"s\"\n",
        );
        for p in 0..9 {
            text += &format!(
                "[[egress.allow]]\nnet = \"10.0.0.0/8\"\nports = [{}]\n",
                100 + p
            );
        }
        let err = compile(&policy(&text), None).unwrap_err();
        assert!(
            matches!(err, CompileError::TooManyEgressRules { count: 9, .. }),
            "{err}"
        );
    }
}
