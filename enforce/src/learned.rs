//! Addresses learned from DNS for host rules, and when each expires.
//!
//! The daemon's resolver records the addresses it answered for a name a
//! host rule allows; [`Learned::entries`] turns them into the kernel's
//! `EGRESS_LEARNED` entries: for each egress policy, each address that one of
//! its host rules' names resolved to, with that rule's ports and the answer's
//! expiry. The kernel compares the expiry itself, so an address stops being
//! allowed when its answer (plus the grace) expires, whether or not the
//! daemon is running. Names, not rules, are kept, so a new policy finds the
//! addresses of the names it allows at once, and a daemon that restarts reads
//! them back from its state directory ([`Learned::load`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use warden_common::{Addr, EGRESS_RULES_PER_PREFIX, LearnedEntry, LearnedRule};
use warden_runtime::clock::monotonic_ns;

use crate::compile::Compiled;

/// name → address → expiry (CLOCK_MONOTONIC ns).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    names: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    /// The boot the expiries are on (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    boot: String,
}

/// One learned address, for `status` and `policy show --compiled`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LearnedAddress {
    pub name: String,
    pub address: IpAddr,
    pub expires_in_s: u64,
}

/// One kernel entry: (egress policy index, address) and its rules.
pub type Entry = (u32, Addr, LearnedEntry);

impl Learned {
    /// Records that `name` resolves to `answers` (address, TTL in seconds):
    /// each is allowed until its TTL plus `grace` from now. Returns the
    /// addresses whose entries changed.
    pub fn learn(&mut self, name: &str, answers: &[(IpAddr, u32)], grace_s: u64) -> Vec<IpAddr> {
        let now = monotonic_ns();
        let addrs = self.names.entry(name.to_ascii_lowercase()).or_default();
        let mut changed = Vec::new();
        for &(addr, ttl) in answers {
            let addr = canonical(addr);
            let until = now + (u64::from(ttl) + grace_s) * 1_000_000_000;
            let e = addrs.entry(addr).or_insert(0);
            if until > *e {
                *e = until;
                changed.push(addr);
            }
        }
        changed
    }

    /// Forgets what expired; returns whether anything did.
    pub fn expire(&mut self) -> bool {
        let now = monotonic_ns();
        let before = self.len();
        for addrs in self.names.values_mut() {
            addrs.retain(|_, until| *until > now);
        }
        self.names.retain(|_, a| !a.is_empty());
        self.len() != before
    }

    pub fn len(&self) -> usize {
        self.names.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The kernel entries `compiled` gets from what was learned, for every
    /// address or only those in `only`. An address allowed by more host rules
    /// than an entry holds keeps the first [`EGRESS_RULES_PER_PREFIX`]; the
    /// count of those left out is returned too.
    pub fn entries(&self, compiled: &Compiled, only: Option<&[IpAddr]>) -> (Vec<Entry>, usize) {
        let mut out: BTreeMap<(u32, IpAddr), LearnedEntry> = BTreeMap::new();
        let mut left_out = 0;
        for (index, e) in compiled.egress.iter().enumerate() {
            for h in &e.hosts {
                for (name, addrs) in &self.names {
                    if !h.host.matches(name) {
                        continue;
                    }
                    for (&addr, &until) in addrs {
                        if only.is_some_and(|o| !o.contains(&addr)) {
                            continue;
                        }
                        let entry = out.entry((index as u32, addr)).or_default();
                        for r in &h.rules {
                            left_out += usize::from(!push(entry, r, until));
                        }
                    }
                }
            }
        }
        let entries = out
            .into_iter()
            .map(|((index, addr), entry)| (index, addr16(addr), entry))
            .collect();
        (entries, left_out)
    }

    /// The name `addr` was learned for, among those `wanted` accepts (the
    /// latest to expire first).
    pub fn name_of(&self, addr: IpAddr, wanted: impl Fn(&str) -> bool) -> Option<&str> {
        self.names
            .iter()
            .filter(|(name, _)| wanted(name))
            .filter_map(|(name, addrs)| addrs.get(&addr).map(|until| (until, name)))
            .max()
            .map(|(_, name)| name.as_str())
    }

    /// What was learned, with the time left.
    pub fn list(&self) -> Vec<LearnedAddress> {
        let now = monotonic_ns();
        self.names
            .iter()
            .flat_map(|(name, addrs)| {
                addrs.iter().map(move |(&address, &until)| LearnedAddress {
                    name: name.clone(),
                    address,
                    expires_in_s: until.saturating_sub(now).div_ceil(1_000_000_000),
                })
            })
            .collect()
    }

    /// Reads what an earlier daemon of this boot learned (nothing otherwise).
    pub fn load(path: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        match serde_json::from_str::<Self>(&text) {
            Ok(mut l) if l.boot == boot_id() => {
                l.expire();
                l
            }
            _ => Self::default(),
        }
    }

    /// Writes the table for the next daemon (replaced atomically).
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        self.boot = boot_id();
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

/// Adds a rule (the same rule again keeps the later expiry); false if full.
fn push(entry: &mut LearnedEntry, r: &warden_common::PortRule, until: u64) -> bool {
    let len = entry.len as usize;
    if let Some(same) = entry.rules[..len]
        .iter_mut()
        .find(|x| x.rule_id == r.rule_id && x.port_lo == r.port_lo && x.port_hi == r.port_hi)
    {
        same.expires_ns = same.expires_ns.max(until);
        return true;
    }
    if len == EGRESS_RULES_PER_PREFIX {
        return false;
    }
    entry.rules[len] = LearnedRule {
        rule_id: r.rule_id,
        port_lo: r.port_lo,
        port_hi: r.port_hi,
        protos: r.protos,
        _pad: 0,
        expires_ns: until,
    };
    entry.len += 1;
    true
}

/// IPv4 as IPv4, whatever form the answer had.
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The kernel's 16-byte form (IPv4-mapped).
fn addr16(addr: IpAddr) -> Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;

    fn compiled(text: &str) -> Compiled {
        let p = warden_policy::parse_str(Path::new("t.toml"), text).unwrap();
        compile(&p, None).unwrap()
    }

    #[test]
    fn learned_names_become_entries_of_the_policies_that_allow_them() {
        let c = compiled(
            r#"version = 1
[service]
ports = [11434]
server_cgroups = ["a"]
[[egress]]
cgroup = "a"
[[egress.allow]]
host = "registry.ollama.ai"
ports = [443]
proto = "tcp"
[[egress]]
cgroup = "b"
[[egress.allow]]
host = "*.example.com"
[[egress.allow]]
net = "10.0.0.0/8"
"#,
        );
        let mut l = Learned::default();
        let v4: IpAddr = "104.18.1.2".parse().unwrap();
        let v6: IpAddr = "2606:4700::1".parse().unwrap();
        assert_eq!(
            l.learn("Registry.Ollama.AI", &[(v4, 60), (v6, 30)], 5),
            [v4, v6]
        );
        assert!(
            l.learn("registry.ollama.ai", &[(v4, 10)], 5).is_empty(),
            "a shorter TTL keeps the longer"
        );
        l.learn("cdn.example.com", &[(v4, 60)], 0);
        l.learn("other.org", &[("1.1.1.1".parse().unwrap(), 60)], 0);

        let (entries, left_out) = l.entries(&c, None);
        assert_eq!(left_out, 0);
        let summary: Vec<(u32, Addr, u32, u16)> = entries
            .iter()
            .map(|(p, a, e)| (*p, *a, e.len, e.rules[0].port_lo))
            .collect();
        assert_eq!(
            summary,
            [
                (0, addr16(v4), 1, 443),
                (0, addr16(v6), 1, 443),
                (1, addr16(v4), 1, 0),
            ],
            "other.org is allowed by no rule"
        );
        let only = l.entries(&c, Some(&[v6])).0;
        assert_eq!(only.len(), 1);
        let exp = entries[0].2.rules[0].expires_ns;
        let now = monotonic_ns();
        assert!(exp > now + 64_000_000_000 && exp <= now + 65_000_000_000);
        assert_eq!(l.list().len(), 4);
    }

    #[test]
    fn expired_answers_are_forgotten_and_other_boots_not_read() {
        let mut l = Learned::default();
        l.learn("a.example", &[("10.0.0.1".parse().unwrap(), 0)], 0);
        l.learn("b.example", &[("10.0.0.2".parse().unwrap(), 600)], 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.expire());
        assert_eq!(l.list().len(), 1);

        let dir = std::env::temp_dir().join(format!("warden-learned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("learned.json");
        l.save(&path).unwrap();
        assert_eq!(Learned::load(&path).list(), l.list());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(&boot_id(), "another-boot")).unwrap();
        assert!(
            Learned::load(&path).is_empty(),
            "expiries of another boot mean nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
