//! The nftables backend: the same compiled policy as one table that warden
//! owns (`inet ollama_warden` by default), built with the `nftables` crate's
//! typed schema ([`ruleset`]) and replaced in one `nft -f` transaction. It
//! never touches another table.
//!
//! The main table loads through nft's text language ([`text`]: JSON cannot
//! express `socket cgroupv2 level`); the bans table and its elements load as
//! JSON. Counters, sets and the generation are read back as typed JSON
//! listings of warden's own tables. What nftables cannot express is listed
//! by [`GAPS`] and reported at start-up and by `warden status`.

pub mod ruleset;
pub mod text;

use crate::compile::Compiled;
use crate::ebpf::Applied;
use crate::{EnforceError, ResolvedCgroups, nflog};
use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::stmt::{Counter, Statement};
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
    "[[remote]]: cgroups it names get no access to the protected ports of other hosts (fail closed)",
    "egress host rules: DNS is not steered and no addresses are learned, so a host rule allows nothing (fail closed; write `net` rules for this backend)",
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

    /// The generation of the policy the table holds (0 when there is no table).
    pub fn generation(&self) -> u32 {
        rules(&self.table)
            .iter()
            .find_map(|r| r.comment.as_deref()?.strip_prefix(ruleset::GENERATION_MARK))
            .and_then(|g| g.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Replaces warden's table with `compiled` in one transaction.
    pub fn apply(&mut self, compiled: &Compiled, generation: u32) -> Result<Applied, EnforceError> {
        let resolved = ResolvedCgroups::resolve(&self.cgroup2, compiled);
        let exists = |ids: &[Option<u64>]| ids.iter().map(Option::is_some).collect::<Vec<_>>();
        let table = ruleset::build(
            &self.table,
            compiled,
            &exists(&resolved.grants),
            &exists(&resolved.egress),
            generation,
        );
        let script = text::render(&table, &self.cgroup_prefix).map_err(EnforceError::Nft)?;
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
        let mut sums: std::collections::BTreeMap<u32, u64> = Default::default();
        for rule in rules(table) {
            let Some(id) = rule
                .comment
                .as_deref()
                .and_then(|c| c.strip_prefix("rule ")?.parse().ok())
            else {
                continue;
            };
            let packets = rule.expr.iter().find_map(|e| match e {
                Statement::Counter(Counter::Anonymous(Some(c))) => c.packets,
                _ => None,
            });
            *sums.entry(id).or_default() += packets.unwrap_or(0) as u64;
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
            apply_json(&ruleset::bans_table(&t))?;
        }
        let mut ports = self.protected_ports();
        ports.extend(proxy_port);
        let (set, addr) = ban_set(source);
        // An element that exists keeps its old timeout: replace it.
        let _ = self.unban(source);
        let timeout = duration.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        apply_json(&ruleset::elements(
            &t,
            set,
            true,
            vec![(ruleset::string(addr), Some(timeout))],
        ))?;
        if !ports.is_empty() {
            let ports = ports.iter().map(|p| (ruleset::number(*p), None)).collect();
            apply_json(&ruleset::elements(&t, "ports", true, ports))?;
        }
        Ok(())
    }

    /// Lifts a ban; false if `source` was not banned.
    pub fn unban(&mut self, source: std::net::IpAddr) -> Result<bool, EnforceError> {
        let (set, addr) = ban_set(source);
        let t = bans_table(&self.table);
        let delete = ruleset::elements(&t, set, false, vec![(ruleset::string(addr), None)]);
        Ok(apply_json(&delete).is_ok())
    }

    /// Bans in force: the source and the time left.
    pub fn bans(&self) -> Vec<(std::net::IpAddr, std::time::Duration)> {
        let t = bans_table(&self.table);
        let mut out: Vec<_> = ["banned4", "banned6"]
            .into_iter()
            .flat_map(|set| set_elements(&t, set))
            .filter_map(|e| match e {
                Expression::Named(NamedExpression::Elem(e)) => {
                    let Expression::String(ip) = *e.val else {
                        return None;
                    };
                    let left = std::time::Duration::from_secs(e.expires?.into());
                    Some((ip.parse().ok()?, left))
                }
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// The protected ports of the policy in force (the main table's `ports` set).
    fn protected_ports(&self) -> Vec<u16> {
        set_elements(&self.table, "ports")
            .into_iter()
            .filter_map(|e| match e {
                Expression::Number(p) => u16::try_from(p).ok(),
                _ => None,
            })
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

/// The text script that replaces warden's table with `c` (for `warden policy
/// show --compiled` and the tests; [`NftBackend::apply`] loads the same).
pub fn script(
    table: &str,
    cgroup_prefix: &Path,
    c: &Compiled,
    cgroup_exists: &[bool],
    egress_exists: &[bool],
    generation: u32,
) -> Result<String, String> {
    let t = ruleset::build(table, c, cgroup_exists, egress_exists, generation);
    text::render(&t, cgroup_prefix)
}

/// Applies a typed batch as JSON in one transaction (`nft -j -f -`).
fn apply_json(n: &Nftables) -> Result<(), EnforceError> {
    let json = serde_json::to_string(n).map_err(|e| EnforceError::Nft(e.to_string()))?;
    nft(&["-j", "-f", "-"], Some(&json)).map(|_| ())
}

/// A typed listing of one of warden's tables, or one of its sets (never the
/// whole ruleset: other tables may hold what the schema does not model).
fn listing(args: &[&str]) -> Option<Nftables<'static>> {
    let mut full = vec!["-j", "list"];
    full.extend_from_slice(args);
    let out = nft(&full, None).ok()?;
    match serde_json::from_str(&out) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!("cannot read nft's listing of {}: {e}", args.join(" "));
            None
        }
    }
}

/// The rules of warden's table `inet <table>`. Read from the terse listing
/// of the inet ruleset (`nft -t -j list ruleset inet`): listing the table
/// itself also dumps its sets' elements, which for 100k networks took nft
/// about a second, where the terse ruleset takes milliseconds. Only
/// warden's rules are read into the typed schema: other tables may hold
/// what it does not model.
fn rules(table: &str) -> Vec<nftables::schema::Rule<'static>> {
    let Ok(out) = nft(&["-t", "-j", "list", "ruleset", "inet"], None) else {
        return Vec::new();
    };
    let listed: serde_json::Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("cannot read nft's listing of the inet ruleset: {e}");
            return Vec::new();
        }
    };
    listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == table && r["family"] == "inet")
        .filter_map(|r| serde_json::from_value(r.clone()).ok())
        .collect()
}

fn set_elements(table: &str, set: &str) -> Vec<Expression<'static>> {
    let Some(n) = listing(&["set", "inet", table, set]) else {
        return Vec::new();
    };
    n.objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Set(s)) => s.elem.clone(),
            _ => None,
        })
        .flat_map(|e| e.into_owned())
        .collect()
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
        let s = script(
            "ollama_warden",
            Path::new("unified"),
            &c,
            &[true],
            &[true],
            7,
        )
        .unwrap();
        assert!(s.starts_with("add table inet ollama_warden\ndelete table inet ollama_warden\nadd table inet ollama_warden\n"));
        assert!(s.contains("comment \"ollama-warden generation=7 sha256:"));
        assert!(s.contains(
            "add set inet ollama_warden ingress_0_ip { type ipv4_addr; flags interval; auto-merge; elements = { 10.0.0.0/8 }; }"
        ));
        assert!(s.contains(
            "add set inet ollama_warden ingress_1_ip6 { type ipv6_addr; flags interval; auto-merge; elements = { fd00::/8 }; }"
        ));
        assert!(s.contains("th dport 11434 ip saddr @ingress_0_ip ct state new counter log prefix \"warden ingress-allow 1\" group 11434 accept comment \"rule 1\""));
        assert!(s.contains("th dport 11434 ip6 saddr @ingress_1_ip6 accept\n"));
        assert!(s.contains(
            "socket cgroupv2 level 2 \"unified/system.slice/ollama.service\" ct state new counter log prefix \"warden local-allow 3\""
        ));
        assert!(s.contains(
            "socket cgroupv2 level 2 \"unified/system.slice/ollama.service\" jump egress_0"
        ));
        assert!(s.contains("ip daddr 10.1.2.3/32 tcp dport 443 counter return"));
        assert!(
            s.lines().all(|l| l.split(' ').nth(2) == Some("inet")
                && l.split(' ').nth(3) == Some("ollama_warden")),
            "only warden's own table is named: {s}"
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
        let s = script("t", Path::new(""), &c, &[true], &[true], 1).unwrap();
        assert!(s.contains("ct state new counter log prefix \"warden ingress-would-deny 0\" group 11434 accept comment \"rule 0\"\nadd rule inet t ingress counter accept comment \"rule 0\""));
        assert!(!s.contains("ingress-deny"));
        // Local access enforces: a reset and a drop.
        assert!(s.contains("log prefix \"warden local-deny 0\" group 11434 reject with tcp reset"));
        // Egress audits: logged, and back to the output chain.
        assert!(s.contains("counter log prefix \"warden egress-would-deny 0\" group 11434 return comment \"rule 0\""));
        assert!(!s.contains("egress-deny"));
        assert_eq!(c.mode(), crate::compile::PolicyMode::Mixed);
        assert_eq!(c.audit_sections(), ["ingress", "egress:s"]);
    }

    /// The round trip through a real nft, in a network namespace of the test
    /// thread's own (the host's ruleset is never touched): the typed ruleset
    /// rendered as text loads in one transaction, and its typed JSON listing
    /// holds every rule in order with the same selectors, logs and verdicts,
    /// the counters and generation read back, and the cgroup levels the JSON
    /// listing drops are in nft's text listing. Bans round-trip as JSON.
    #[test]
    fn the_typed_ruleset_loads_and_reads_back_through_nft() {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "skipped: needs root for a network namespace (cargo xtask test runs it as root)"
            );
            return;
        }
        std::thread::spawn(round_trip_in_own_netns).join().unwrap();
    }

    fn round_trip_in_own_netns() {
        // SAFETY: unshare(2) with a flag; it affects only this thread.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
        let cgroup2 = warden_runtime::cgroupfs::cgroup2_mount().unwrap();
        let cgroup = format!("warden-nft-round-trip-{}", std::process::id());
        let _removed_after = TempCgroup::create(cgroup2.join(&cgroup));
        let policy = warden_policy::parse_str(
            Path::new("rt.toml"),
            &format!(
                r#"version = 1
[service]
ports = [11434, 8443]
server_cgroups = ["{cgroup}"]
[ingress]
interfaces = ["veth-rt0"]
allow = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.1", "fd00::/8"]
[[egress]]
cgroup = "{cgroup}"
[[egress.allow]]
net = "198.51.100.0/24"
ports = ["1000-2000"]
proto = "udp"
"#
            ),
        )
        .unwrap();
        let c = compile(&policy, None).unwrap();
        let table = "warden_round_trip";
        let mut backend = NftBackend::open(table).unwrap();
        backend.apply(&c, 5).unwrap();

        let built = ruleset::build(table, &c, &[true], &[true], 5);
        let listed = rules(table);
        for chain in ["ingress", "output", "local_access", "egress_0"] {
            let want: Vec<_> = built_rules(&built, chain).map(shape).collect();
            let got: Vec<_> = listed
                .iter()
                .filter(|r| r.chain == chain)
                .map(shape)
                .collect();
            assert!(!want.is_empty(), "{chain} has rules");
            assert_eq!(got, want, "chain {chain} as listed by nft");
        }
        assert_eq!(backend.generation(), 5);
        let counted: Vec<u32> = NftBackend::counters(table).iter().map(|c| c.0).collect();
        for r in &c.rules {
            assert!(
                counted.contains(&r.id),
                "rule {} has a counter ({counted:?})",
                r.id
            );
        }
        let text = nft(&["list", "chain", "inet", table, "local_access"], None).unwrap();
        let prefix = cgroup2
            .strip_prefix("/sys/fs/cgroup")
            .unwrap()
            .join(&cgroup);
        let level = format!("socket cgroupv2 level 1 \"{}\"", prefix.display());
        assert!(text.contains(&level), "{level} in:\n{text}");

        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        backend
            .ban(ip, std::time::Duration::from_secs(300), Some(4443))
            .unwrap();
        let bans = backend.bans();
        assert!(
            matches!(bans.as_slice(), [(b, left)] if *b == ip && left.as_secs() <= 300 && left.as_secs() > 200),
            "{bans:?}"
        );
        assert_eq!(
            set_elements(&bans_table(table), "ports").len(),
            3,
            "protected ports and the proxy's"
        );
        assert!(backend.unban(ip).unwrap());
        assert!(backend.bans().is_empty());
        assert!(NftBackend::down(table).unwrap());
    }

    /// A cgroup that exists for the test and is removed after it, also on failure.
    struct TempCgroup(PathBuf);

    impl TempCgroup {
        fn create(path: PathBuf) -> Self {
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn built_rules<'a>(
        n: &'a Nftables<'static>,
        chain: &'a str,
    ) -> impl Iterator<Item = &'a nftables::schema::Rule<'static>> {
        n.objects.iter().filter_map(move |o| match o {
            NfObject::CmdObject(nftables::schema::NfCmd::Add(NfListObject::Rule(r)))
                if r.chain == chain =>
            {
                Some(r)
            }
            _ => None,
        })
    }

    /// A rule as nft keeps it: its comment and each statement's selector or
    /// kind (nft normalizes values, e.g. sets of one element and merged
    /// intervals, so those are compared by the listing tests above).
    fn shape(r: &nftables::schema::Rule) -> (Option<String>, Vec<String>) {
        let statements = r
            .expr
            .iter()
            .map(|s| match s {
                Statement::Match(m) => serde_json::to_string(&m.left).unwrap(),
                Statement::Log(Some(l)) => format!("log {:?} {:?}", l.prefix, l.group),
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_object()?.keys().next().cloned())
                    .unwrap_or_default(),
            })
            .collect();
        (r.comment.as_ref().map(|c| c.to_string()), statements)
    }
}
