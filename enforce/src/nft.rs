//! The nftables backend: the same compiled policy rendered into one table that
//! warden owns (`inet ollama_warden` by default), replaced in one `nft -f`
//! transaction. It never touches another table.
//!
//! Parity with the eBPF backend: ingress is checked in a `prerouting` chain after
//! conntrack's defragmentation (so fragments need no special case) and before DNAT
//! (so a container's published port 11434 is covered, as XDP covers it), local access and egress in an
//! `output` chain on new flows with `socket cgroupv2` (descendants match through
//! the ancestor `level`), and a drop in `output` makes connect()/sendmsg() fail with
//! EPERM as the cgroup hooks do. What nftables cannot express is listed by
//! [`GAPS`] and reported at start-up and by `warden status`.
//!
//! The ruleset is rendered as nft's text language: nft 1.0.6's JSON cannot
//! round-trip `socket cgroupv2 level`.

use super::ebpf::Applied;
use super::{EnforceError, ResolvedCgroups, nflog};
use crate::compile::Compiled;
use ipnet::IpNet;
use std::fmt::Write;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use warden_runtime::cgroupfs;

/// What the nft backend cannot enforce, for start-up, `status` and the docs.
pub const GAPS: &[&str] = &[
    "bind control: nftables has no hook on bind(); any process may bind the protected ports",
    "flow events carry addresses, ports and uid/gid but no pid, comm, cgroup or socket cookie (nftables sees packets, not system calls)",
    "denied local TCP connects fail with ECONNREFUSED (a reset), not EPERM",
    "local access and egress rules see only this network namespace: processes in containers with their own network namespace are not covered",
];

pub const DEFAULT_TABLE: &str = "ollama_warden";

/// The bans table's set for `source`, and the address as nft writes it.
fn ban_set(source: std::net::IpAddr) -> (&'static str, String) {
    match source.to_canonical() {
        std::net::IpAddr::V4(v4) => ("banned4", v4.to_string()),
        std::net::IpAddr::V6(v6) => ("banned6", v6.to_string()),
    }
}

/// The table that holds bans, next to warden's table (never replaced by a swap).
pub fn bans_table(table: &str) -> String {
    format!("{table}_bans")
}

/// NFLOG group the ruleset logs to (per network namespace).
pub const LOG_GROUP: u16 = 11434;

/// The end of a chain that judges local sockets. A dropped TCP SYN is retried
/// until the caller times out, so TCP is answered with a reset (connect() fails at
/// once with ECONNREFUSED); other protocols are dropped, which makes sendmsg()
/// fail with EPERM as the cgroup hooks do.
///
/// In audit mode the flow is logged under `audit_prefix` and returns to the
/// `output` chain, which goes on to the next check, as the cgroup hooks do.
fn local_deny(prefix: &str, audit_prefix: &str, audit: bool) -> String {
    if audit {
        return format!(
            "    counter log prefix \"{audit_prefix} 0\" group {LOG_GROUP} return comment \"rule 0\"\n  }}\n"
        );
    }
    let log = format!("log prefix \"{prefix} 0\" group {LOG_GROUP}");
    format!(
        "    meta l4proto tcp counter {log} reject with tcp reset comment \"rule 0\"\n    counter {log} drop comment \"rule 0\"\n  }}\n"
    )
}

pub struct NftBackend {
    table: String,
    /// The cgroup2 mount relative to /sys/fs/cgroup, which is where `socket
    /// cgroupv2` paths start ("" on unified hosts, "unified" on hybrid ones).
    cgroup_prefix: PathBuf,
    cgroup2: PathBuf,
}

impl NftBackend {
    pub fn open(table: &str) -> Result<Self, EnforceError> {
        nft(&["list", "tables"], None)?;
        let cgroup2 = cgroupfs::cgroup2_mount()?;
        let cgroup_prefix = cgroup2.strip_prefix("/sys/fs/cgroup").map(Path::to_owned).map_err(|_| {
            EnforceError::Nft(format!(
                "cgroup2 is mounted at {}; nft's `socket cgroupv2` only resolves paths below /sys/fs/cgroup",
                cgroup2.display()
            ))
        })?;
        Ok(Self {
            table: table.to_owned(),
            cgroup_prefix,
            cgroup2,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The generation recorded in the table's comment (0 when there is no table).
    pub fn generation(&self) -> u32 {
        nft(&["list", "table", "inet", &self.table], None)
            .ok()
            .and_then(|out| {
                let g = out.split("generation=").nth(1)?;
                g.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// Replaces warden's table with `compiled` in one transaction.
    pub fn apply(&mut self, compiled: &Compiled, generation: u32) -> Result<Applied, EnforceError> {
        let resolved = ResolvedCgroups::resolve(&self.cgroup2, compiled);
        let exists = |ids: &[Option<u64>]| ids.iter().map(Option::is_some).collect::<Vec<_>>();
        let script = render(
            &self.table,
            &self.cgroup_prefix,
            compiled,
            &exists(&resolved.grants),
            &exists(&resolved.egress),
            generation,
        );
        nft(&["-f", "-"], Some(&script))?;
        Ok(Applied {
            generation,
            slot: 0,
            unresolved: resolved.unresolved(compiled),
            resolved_ids: resolved.ids(),
        })
    }

    /// Per-rule counters: `(rule id, packets)`, summed over the rules of each id.
    pub fn counters(table: &str) -> Vec<(u32, u64)> {
        let Ok(out) = nft(&["-j", "list", "table", "inet", table], None) else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return Vec::new();
        };
        let mut sums: std::collections::BTreeMap<u32, u64> = Default::default();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            let Some(id) = rule["comment"]
                .as_str()
                .and_then(|c| c.strip_prefix("rule ")?.parse().ok())
            else {
                continue;
            };
            let packets = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e["counter"]["packets"].as_u64())
                .unwrap_or(0);
            *sums.entry(id).or_default() += packets;
        }
        sums.into_iter().collect()
    }

    /// Deletes warden's tables (`warden down`); Ok(false) if there were none.
    pub fn down(table: &str) -> Result<bool, EnforceError> {
        let _ = nft(&["delete", "table", "inet", &bans_table(table)], None);
        if nft(&["list", "table", "inet", table], None).is_err() {
            return Ok(false);
        }
        nft(&["delete", "table", "inet", table], None)?;
        Ok(true)
    }

    /// Bans `source` from the protected ports and `proxy_port` for
    /// `duration`. Bans live in a table of their own (`TABLE_bans`), which a
    /// policy swap never replaces, in sets whose elements time out by
    /// themselves.
    pub fn ban(
        &mut self,
        source: std::net::IpAddr,
        duration: std::time::Duration,
        proxy_port: Option<u16>,
    ) -> Result<(), EnforceError> {
        let t = bans_table(&self.table);
        if nft(&["list", "table", "inet", &t], None).is_err() {
            let script = format!(
                "table inet {t} {{\n  set banned4 {{ type ipv4_addr; flags timeout; }}\n  set banned6 {{ type ipv6_addr; flags timeout; }}\n  set ports {{ type inet_service; }}\n  chain ingress {{\n    type filter hook prerouting priority -160; policy accept;\n    ip saddr @banned4 th dport @ports counter log prefix \"{prefix} 0\" group {LOG_GROUP} drop\n    ip6 saddr @banned6 th dport @ports counter log prefix \"{prefix} 0\" group {LOG_GROUP} drop\n  }}\n}}\n",
                prefix = nflog::BANNED,
            );
            nft(&["-f", "-"], Some(&script))?;
        }
        let mut ports = self.protected_ports();
        ports.extend(proxy_port);
        let (set, addr) = ban_set(source);
        let mut script = format!(
            "add element inet {t} {set} {{ {addr} timeout {}s }}\n",
            duration.as_secs().max(1)
        );
        if !ports.is_empty() {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let _ = writeln!(
                script,
                "add element inet {t} ports {{ {} }}",
                list.join(", ")
            );
        }
        // An element that exists keeps its old timeout: replace it.
        let _ = self.unban(source);
        nft(&["-f", "-"], Some(&script))?;
        Ok(())
    }

    /// Lifts a ban; false if `source` was not banned.
    pub fn unban(&mut self, source: std::net::IpAddr) -> Result<bool, EnforceError> {
        let (set, addr) = ban_set(source);
        let t = bans_table(&self.table);
        Ok(nft(
            &[
                "delete",
                "element",
                "inet",
                &t,
                set,
                &format!("{{ {addr} }}"),
            ],
            None,
        )
        .is_ok())
    }

    /// Bans in force: the source and the time left.
    pub fn bans(&self) -> Vec<(std::net::IpAddr, std::time::Duration)> {
        let t = bans_table(&self.table);
        let mut out = Vec::new();
        for set in ["banned4", "banned6"] {
            let Ok(text) = nft(&["-j", "list", "set", "inet", &t, set], None) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            for item in v["nftables"].as_array().into_iter().flatten() {
                for e in item["set"]["elem"].as_array().into_iter().flatten() {
                    let elem = &e["elem"];
                    let (Some(ip), Some(left)) = (
                        elem["val"].as_str().and_then(|a| a.parse().ok()),
                        elem["expires"].as_u64(),
                    ) else {
                        continue;
                    };
                    out.push((ip, std::time::Duration::from_secs(left)));
                }
            }
        }
        out.sort();
        out
    }

    /// The protected ports of the policy in force (the main table's `ports` set).
    fn protected_ports(&self) -> Vec<u16> {
        let Ok(text) = nft(&["-j", "list", "set", "inet", &self.table, "ports"], None) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["set"]["elem"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
            .collect()
    }

    pub fn cgroup2_root(&self) -> &Path {
        &self.cgroup2
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, EnforceError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            EnforceError::Nft(format!(
                "cannot run nft (install the nftables package): {e}"
            ))
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| EnforceError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EnforceError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(EnforceError::Nft(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cgroup_match(prefix: &Path, cgroup: &str) -> String {
    let level = cgroup.split('/').count();
    format!(
        "socket cgroupv2 level {level} \"{}\"",
        prefix.join(cgroup).display()
    )
}

/// The whole table as an `nft -f` script: create-if-missing, delete, define, so
/// that applying it is one atomic transaction whatever was there before.
pub fn render(
    table: &str,
    cgroup_prefix: &Path,
    c: &Compiled,
    cgroup_exists: &[bool],
    egress_exists: &[bool],
    generation: u32,
) -> String {
    let mut s = String::new();
    let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
    let ports = ports.join(", ");
    let _ = writeln!(
        s,
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{"
    );
    let _ = writeln!(
        s,
        "  comment \"ollama-warden generation={generation} {}\"",
        c.digest
    );
    let _ = writeln!(
        s,
        "  set ports {{ type inet_service; elements = {{ {ports} }} }}"
    );

    // Ingress: consecutive entries of one (port, rule) share a named interval
    // set per family, matched by one rule that keeps the rule's counter. Order
    // is kept (the first matching rule names the connection), and a 100k-network
    // list is two sets and a few rules, not 200k rules to load and walk.
    let mut sets = String::new();
    let mut rules = String::new();
    let mut runs = 0usize;
    let mut i = 0;
    while i < c.ingress.len() {
        let (port, rule) = (c.ingress[i].port, c.ingress[i].rule_id);
        let end = c.ingress[i..]
            .iter()
            .position(|e| e.port != port || e.rule_id != rule)
            .map_or(c.ingress.len(), |n| i + n);
        for (fam, ty, v4) in [("ip", "ipv4_addr", true), ("ip6", "ipv6_addr", false)] {
            let nets: Vec<String> = c.ingress[i..end]
                .iter()
                .filter(|e| matches!(e.net, IpNet::V4(_)) == v4)
                .map(|e| e.net.to_string())
                .collect();
            if nets.is_empty() {
                continue;
            }
            let name = format!("ingress_{runs}_{fam}");
            let _ = writeln!(
                sets,
                "  set {name} {{ type {ty}; flags interval; auto-merge; elements = {{ {} }} }}",
                nets.join(", ")
            );
            // New connections are logged (one event each), later packets just pass.
            let _ = writeln!(
                rules,
                "    th dport {port} {fam} saddr @{name} ct state new counter log prefix \"{} {rule}\" group {LOG_GROUP} accept comment \"rule {rule}\"",
                nflog::INGRESS_ALLOW,
            );
            let _ = writeln!(rules, "    th dport {port} {fam} saddr @{name} accept");
        }
        runs += 1;
        i = end;
    }
    s.push_str(&sets);
    let _ = writeln!(
        s,
        "  chain ingress {{\n    type filter hook prerouting priority -150; policy accept;"
    );
    s.push_str("    iif \"lo\" accept\n");
    if !c.all_interfaces() {
        let names: Vec<String> = c.interfaces.iter().map(|i| format!("\"{i}\"")).collect();
        let _ = writeln!(s, "    iifname != {{ {} }} accept", names.join(", "));
    }
    s.push_str("    meta l4proto != { tcp, udp } accept\n    th dport != @ports accept\n");
    s.push_str(&rules);
    if c.ingress_audit {
        // Audit: log each new flow that would be dropped, count every packet.
        let _ = writeln!(
            s,
            "    ct state new counter log prefix \"{} 0\" group {LOG_GROUP} accept comment \"rule 0\"\n    counter accept comment \"rule 0\"\n  }}",
            nflog::INGRESS_WOULD_DENY
        );
    } else {
        let _ = writeln!(
            s,
            "    counter log prefix \"{} 0\" group {LOG_GROUP} drop comment \"rule 0\"\n  }}",
            nflog::INGRESS_DENY
        );
    }

    // Output: new flows only, as the cgroup hooks see connect()/sendmsg().
    let _ = writeln!(
        s,
        "  chain output {{\n    type filter hook output priority 0; policy accept;"
    );
    s.push_str("    ct state established,related accept\n");
    s.push_str("    meta l4proto { tcp, udp } th dport @ports jump local_access\n");
    for (i, (e, exists)) in c.egress.iter().zip(egress_exists).enumerate() {
        if *exists {
            let _ = writeln!(
                s,
                "    {} jump egress_{i}",
                cgroup_match(cgroup_prefix, e.cgroup.as_str())
            );
        }
    }
    s.push_str("  }\n");

    let _ = writeln!(s, "  chain local_access {{");
    for (g, exists) in c.cgroups.iter().zip(cgroup_exists) {
        if *exists && g.flags & warden_common::CG_MAY_CONNECT != 0 {
            let _ = writeln!(
                s,
                "    {} counter log prefix \"{} {rule}\" group {LOG_GROUP} return comment \"rule {rule}\"",
                cgroup_match(cgroup_prefix, g.cgroup.as_str()),
                nflog::LOCAL_ALLOW,
                rule = g.rule_id
            );
        }
    }
    s.push_str(&local_deny(
        nflog::LOCAL_DENY,
        nflog::LOCAL_WOULD_DENY,
        c.local_audit,
    ));

    for (i, e) in c.egress.iter().enumerate() {
        let _ = writeln!(s, "  chain egress_{i} {{");
        for p in &e.prefixes {
            // A prefix carries the rules of the prefixes that cover it too (folded for
            // the eBPF trie); rendering those again here is redundant but harmless.
            // IPv6 sockets reaching IPv4-mapped addresses send IPv4 packets, so the
            // IPv4 rule covers them as the mapped trie entry does in the eBPF backend.
            let (fam, net) = match p.net {
                IpNet::V4(_) => ("ip", p.net.to_string()),
                IpNet::V6(_) => ("ip6", p.net.to_string()),
            };
            for r in &p.rules {
                let protos: Vec<&str> = [
                    (warden_common::PROTO_TCP, "tcp"),
                    (warden_common::PROTO_UDP, "udp"),
                ]
                .iter()
                .filter(|(bit, _)| r.protos & bit != 0)
                .map(|(_, n)| *n)
                .collect();
                let ports = if r.port_lo == 0 && r.port_hi == u16::MAX {
                    String::new()
                } else if r.port_lo == r.port_hi {
                    format!(" th dport {}", r.port_lo)
                } else {
                    format!(" th dport {}-{}", r.port_lo, r.port_hi)
                };
                let _ = writeln!(
                    s,
                    "    {fam} daddr {net} meta l4proto {{ {} }}{ports} counter return comment \"rule {}\"",
                    protos.join(", "),
                    r.rule_id
                );
            }
        }
        s.push_str(&local_deny(
            nflog::EGRESS_DENY,
            nflog::EGRESS_WOULD_DENY,
            e.audit,
        ));
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;

    #[test]
    fn renders_one_table_with_cgroup_levels_and_both_families() {
        let policy = warden_policy::parse_str(
            Path::new("t.toml"),
            r#"version = 1
[service]
ports = [11434]
server_cgroups = ["system.slice/ollama.service"]
[ingress]
allow = ["10.0.0.0/8", "fd00::/8"]
[[egress]]
cgroup = "system.slice/ollama.service"
[[egress.allow]]
net = "10.1.2.3"
ports = [443]
proto = "tcp"
"#,
        )
        .unwrap();
        let c = compile(&policy, None).unwrap();
        let s = render(
            "ollama_warden",
            Path::new("unified"),
            &c,
            &[true],
            &[true],
            7,
        );
        assert!(s.starts_with("table inet ollama_warden {}\ndelete table inet ollama_warden\n"));
        assert!(s.contains("generation=7"));
        assert!(s.contains(
            "set ingress_0_ip { type ipv4_addr; flags interval; auto-merge; elements = { 10.0.0.0/8 } }"
        ));
        assert!(s.contains(
            "set ingress_1_ip6 { type ipv6_addr; flags interval; auto-merge; elements = { fd00::/8 } }"
        ));
        assert!(s.contains("th dport 11434 ip saddr @ingress_0_ip ct state new counter log prefix \"warden ingress-allow 1\" group 11434 accept comment \"rule 1\""));
        assert!(s.contains("th dport 11434 ip6 saddr @ingress_1_ip6 accept"));
        assert!(s.contains(
            "socket cgroupv2 level 2 \"unified/system.slice/ollama.service\" counter log prefix \"warden local-allow 3\""
        ));
        assert!(s.contains(
            "socket cgroupv2 level 2 \"unified/system.slice/ollama.service\" jump egress_0"
        ));
        assert!(
            s.contains("ip daddr 10.1.2.3/32 meta l4proto { tcp } th dport 443 counter return")
        );
        assert_eq!(
            s.matches("table inet").count(),
            3,
            "only warden's own table is named"
        );
        assert!(!s.contains("would-deny"));
    }

    #[test]
    fn audit_sections_log_and_let_through() {
        let policy = warden_policy::parse_str(
            Path::new("t.toml"),
            r#"version = 1
mode = "audit"
[service]
ports = [11434]
server_cgroups = ["s"]
[local]
mode = "enforce"
[[egress]]
cgroup = "s"
allow = []
"#,
        )
        .unwrap();
        let c = compile(&policy, None).unwrap();
        let s = render("t", Path::new(""), &c, &[true], &[true], 1);
        assert!(s.contains("ct state new counter log prefix \"warden ingress-would-deny 0\" group 11434 accept comment \"rule 0\"\n    counter accept comment \"rule 0\""));
        assert!(!s.contains("ingress-deny"));
        // Local access enforces: a reset and a drop.
        assert!(s.contains("log prefix \"warden local-deny 0\" group 11434 reject with tcp reset"));
        // Egress audits: logged, and back to the output chain.
        assert!(s.contains("counter log prefix \"warden egress-would-deny 0\" group 11434 return comment \"rule 0\""));
        assert!(!s.contains("egress-deny"));
        assert_eq!(c.mode(), "mixed");
        assert_eq!(c.audit_sections(), ["ingress", "egress:s"]);
    }
}
