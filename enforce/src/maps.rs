//! warden's pinned maps, typed, and the double-buffered policy swap.
//!
//! A policy is written into the inactive slot, then `STATE[STATE_ACTIVE_SLOT]` is
//! flipped with one array write, which programs read once per run. After the flip a
//! global membarrier waits for an RCU grace period, so no program still runs on the
//! old slot when the next apply starts clearing it.

use super::EnforceError;
use crate::compile::{Compiled, lpm_addr};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use std::path::Path;
use warden_common::*;

pub struct Maps {
    pub state: Array<MapData, u32>,
    pub slot_meta: Array<MapData, SlotMeta>,
    pub ports: Array<MapData, PortBitmap>,
    pub ingress: LpmTrie<MapData, IngressKey, IngressRule>,
    pub ingress_hosts: HashMap<MapData, IngressKey, IngressRule>,
    pub cgroups: HashMap<MapData, CgroupKey, CgroupRule>,
    pub egress_cgroups: HashMap<MapData, CgroupKey, EgressPolicyRef>,
    pub egress: LpmTrie<MapData, EgressKey, EgressEntry>,
    pub egress_learned: HashMap<MapData, EgressKey, LearnedEntry>,
    pub remote: LpmTrie<MapData, IngressKey, IngressRule>,
    pub local_addrs: HashMap<MapData, Addr, u32>,
    pub rule_hits: PerCpuArray<MapData, u64>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Banned sources and when their bans end (CLOCK_MONOTONIC ns).
    pub bans: HashMap<MapData, Addr, u64>,
}

/// A cgroup id resolved from a policy path, with what it is granted.
pub struct ResolvedGrant {
    pub cgroup_id: u64,
    pub rule: CgroupRule,
}

pub struct ResolvedEgress {
    pub cgroup_id: Option<u64>,
}

fn typed<T>(map: Map, name: &str) -> Result<T, EnforceError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| EnforceError::Map {
        name: name.into(),
        source: e,
    })
}

impl Maps {
    /// Takes the maps out of a loaded object (`take(name)` returns the map).
    pub fn from_source(
        mut take: impl FnMut(&str) -> Result<Map, EnforceError>,
    ) -> Result<Self, EnforceError> {
        Ok(Self {
            state: typed(take("STATE")?, "STATE")?,
            slot_meta: typed(take("SLOT_META")?, "SLOT_META")?,
            ports: typed(take("PORTS")?, "PORTS")?,
            ingress: typed(take("INGRESS")?, "INGRESS")?,
            ingress_hosts: typed(take("INGRESS_HOSTS")?, "INGRESS_HOSTS")?,
            cgroups: typed(take("CGROUPS")?, "CGROUPS")?,
            egress_cgroups: typed(take("EGRESS_CGROUPS")?, "EGRESS_CGROUPS")?,
            egress: typed(take("EGRESS")?, "EGRESS")?,
            egress_learned: typed(take("EGRESS_LEARNED")?, "EGRESS_LEARNED")?,
            remote: typed(take("REMOTE")?, "REMOTE")?,
            local_addrs: typed(take("LOCAL_ADDRS")?, "LOCAL_ADDRS")?,
            rule_hits: typed(take("RULE_HITS")?, "RULE_HITS")?,
            stats: typed(take("STATS")?, "STATS")?,
            bans: typed(take("BANS")?, "BANS")?,
        })
    }

    /// Opens the maps pinned in `dir` without creating anything.
    pub fn open_pinned(dir: &Path) -> Result<Self, EnforceError> {
        Self::from_source(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(|e| EnforceError::Map {
                name: name.into(),
                source: e,
            })?;
            Ok(match name {
                "STATE" | "SLOT_META" | "PORTS" => Map::Array(data),
                "INGRESS" | "EGRESS" | "REMOTE" => Map::LpmTrie(data),
                "CGROUPS" | "EGRESS_CGROUPS" | "INGRESS_HOSTS" | "BANS" | "EGRESS_LEARNED"
                | "LOCAL_ADDRS" => Map::HashMap(data),
                _ => Map::PerCpuArray(data),
            })
        })
    }

    fn get_state(&self, index: u32) -> Result<u32, EnforceError> {
        self.state.get(&index, 0).map_err(|e| EnforceError::Map {
            name: "STATE".into(),
            source: e,
        })
    }

    pub fn active_slot(&self) -> Result<u32, EnforceError> {
        Ok(self.get_state(STATE_ACTIVE_SLOT)? & 1)
    }

    pub fn abi(&self) -> Result<u32, EnforceError> {
        self.get_state(STATE_ABI)
    }

    pub fn slot_meta(&self, slot: u32) -> Result<SlotMeta, EnforceError> {
        self.slot_meta.get(&slot, 0).map_err(|e| EnforceError::Map {
            name: "SLOT_META".into(),
            source: e,
        })
    }

    /// The generation in force (0 when nothing was ever applied).
    pub fn generation(&self) -> Result<u32, EnforceError> {
        self.slot_meta(self.active_slot()?).map(|m| m.generation)
    }

    /// Writes `compiled` into the inactive slot and makes it the active one.
    pub fn swap_in(
        &mut self,
        compiled: &Compiled,
        grants: &[ResolvedGrant],
        egress: &[ResolvedEgress],
        learned: &[crate::learned::Entry],
        generation: u32,
    ) -> Result<u32, EnforceError> {
        let abi = self.abi()?;
        if abi != 0 && abi != ABI_VERSION {
            return Err(EnforceError::AbiMismatch {
                pinned: abi,
                ours: ABI_VERSION,
            });
        }
        let slot = 1 - self.active_slot()?;
        self.clear_slot(slot)?;
        let mut flags = 0;
        if compiled.ingress_audit {
            flags |= slot_flags::AUDIT_INGRESS;
        }
        if compiled.local_audit {
            flags |= slot_flags::AUDIT_LOCAL;
        }
        flags |= self.write_ingress(slot, compiled)?;
        self.write_grants(slot, grants)?;
        self.write_remote(slot, compiled)?;
        flags |= self.write_egress(slot, compiled, egress)?;
        self.write_learned(slot, learned)?;
        let mut ports = PortBitmap::EMPTY;
        for &p in &compiled.ports {
            ports.insert(p);
        }
        self.ports.set(slot, ports, 0).map_err(map_error("PORTS"))?;
        self.slot_meta
            .set(slot, SlotMeta { generation, flags }, 0)
            .map_err(map_error("SLOT_META"))?;
        self.state
            .set(STATE_ABI, ABI_VERSION, 0)
            .map_err(map_error("STATE"))?;
        // The flip: one 4-byte array write, seen whole by every program run.
        self.state
            .set(STATE_ACTIVE_SLOT, slot, 0)
            .map_err(map_error("STATE"))?;
        wait_for_running_programs();
        Ok(slot)
    }

    /// The ingress allowlist; returns the slot flags telling the programs
    /// which of its two maps are worth a lookup. A host entry is the longest
    /// match there can be: the program looks hosts up first (when the slot has
    /// any) and walks the trie only when the slot has prefixes.
    fn write_ingress(&mut self, slot: u32, compiled: &Compiled) -> Result<u32, EnforceError> {
        let mut flags = slot_flags::NO_INGRESS_HOSTS;
        for e in &compiled.ingress {
            let (len, addr) = lpm_addr(e.net);
            let key = IngressKey {
                slot_port: (slot << 16 | e.port as u32).to_be_bytes(),
                addr,
            };
            let rule = IngressRule { rule_id: e.rule_id };
            if len == 128 {
                flags &= !slot_flags::NO_INGRESS_HOSTS;
                self.ingress_hosts
                    .insert(key, rule, 0)
                    .map_err(map_error("INGRESS_HOSTS"))?;
            } else {
                flags |= slot_flags::INGRESS_PREFIXES;
                self.ingress
                    .insert(&Key::new(INGRESS_KEY_FIXED_BITS + len, key), rule, 0)
                    .map_err(map_error("INGRESS"))?;
            }
        }
        Ok(flags)
    }

    /// The cgroups that may connect to (and bind) the protected ports.
    fn write_grants(&mut self, slot: u32, grants: &[ResolvedGrant]) -> Result<(), EnforceError> {
        for g in grants {
            let key = CgroupKey {
                slot,
                _pad: 0,
                cgroup_id: g.cgroup_id,
            };
            self.cgroups
                .insert(key, g.rule, 0)
                .map_err(map_error("CGROUPS"))?;
        }
        Ok(())
    }

    /// Each restricted cgroup's policy and its prefixes; returns the slot flag
    /// telling the programs whether any cgroup is restricted.
    fn write_egress(
        &mut self,
        slot: u32,
        compiled: &Compiled,
        egress: &[ResolvedEgress],
    ) -> Result<u32, EnforceError> {
        let mut flags = 0;
        for (index, (c, r)) in compiled.egress.iter().zip(egress).enumerate() {
            let Some(cgroup_id) = r.cgroup_id else {
                continue;
            };
            flags |= slot_flags::EGRESS;
            let key = CgroupKey {
                slot,
                _pad: 0,
                cgroup_id,
            };
            let mut policy_flags = 0;
            if c.audit {
                policy_flags |= egress_flags::AUDIT;
            }
            if !c.hosts.is_empty() {
                policy_flags |= egress_flags::HOSTS;
            }
            let policy = EgressPolicyRef {
                policy: index as u32,
                flags: policy_flags,
            };
            self.egress_cgroups
                .insert(key, policy, 0)
                .map_err(map_error("EGRESS_CGROUPS"))?;
            let slot_policy = (slot << 24 | index as u32).to_be_bytes();
            for p in &c.prefixes {
                let (len, addr) = lpm_addr(p.net);
                let mut entry = EgressEntry::default();
                entry.rules[..p.rules.len()].copy_from_slice(&p.rules);
                entry.len = p.rules.len() as u32;
                let key = Key::new(EGRESS_KEY_FIXED_BITS + len, EgressKey { slot_policy, addr });
                self.egress
                    .insert(&key, entry, 0)
                    .map_err(map_error("EGRESS"))?;
            }
        }
        Ok(flags)
    }

    /// The `[[remote]]` networks of `slot`.
    fn write_remote(&mut self, slot: u32, compiled: &Compiled) -> Result<(), EnforceError> {
        for r in &compiled.remote {
            let (len, addr) = lpm_addr(r.net);
            let key = IngressKey {
                slot_port: (slot << 16).to_be_bytes(),
                addr,
            };
            self.remote
                .insert(
                    &Key::new(INGRESS_KEY_FIXED_BITS + len, key),
                    IngressRule { rule_id: r.rule_id },
                    0,
                )
                .map_err(map_error("REMOTE"))?;
        }
        Ok(())
    }

    /// Makes `LOCAL_ADDRS` exactly `addrs` (this host's addresses: never
    /// remote). Added first, then the stale removed, so no address that is
    /// still the host's is missing in between.
    pub fn set_local_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), EnforceError> {
        let want: Vec<Addr> = addrs.iter().map(|&a| mapped(a)).collect();
        for a in &want {
            self.local_addrs
                .insert(a, 1, 0)
                .map_err(map_error("LOCAL_ADDRS"))?;
        }
        clear_hash(&mut self.local_addrs, "LOCAL_ADDRS", |k| !want.contains(k))
    }

    /// Writes learned addresses into `slot` (replacing their entries).
    pub fn write_learned(
        &mut self,
        slot: u32,
        entries: &[crate::learned::Entry],
    ) -> Result<(), EnforceError> {
        for (index, addr, entry) in entries {
            let key = EgressKey {
                slot_policy: (slot << 24 | index).to_be_bytes(),
                addr: *addr,
            };
            self.egress_learned
                .insert(key, entry, 0)
                .map_err(map_error("EGRESS_LEARNED"))?;
        }
        Ok(())
    }

    /// Makes `slot`'s learned addresses exactly `entries`: those not among
    /// them (expired) are removed, the others rewritten.
    pub fn replace_learned(
        &mut self,
        slot: u32,
        entries: &[crate::learned::Entry],
    ) -> Result<(), EnforceError> {
        let keep = |k: &EgressKey| {
            u32::from(k.slot_policy[0]) != slot
                || entries.iter().any(|(i, a, _)| {
                    k.addr == *a && u32::from_be_bytes(k.slot_policy) & 0x00ff_ffff == *i
                })
        };
        clear_hash(&mut self.egress_learned, "EGRESS_LEARNED", |k| !keep(k))?;
        self.write_learned(slot, entries)
    }

    /// Turns DNS steering on with the daemon's resolver at `port` (or off).
    pub fn set_dns_port(&mut self, port: Option<u16>) -> Result<(), EnforceError> {
        let v = port.map_or(0, |p| DNS_ON | u32::from(p));
        self.state.set(STATE_DNS, v, 0).map_err(map_error("STATE"))
    }

    /// Empties a slot before a policy is written into it.
    fn clear_slot(&mut self, slot: u32) -> Result<(), EnforceError> {
        let ingress_slot = |k: &IngressKey| {
            u32::from(u16::from_be_bytes([k.slot_port[0], k.slot_port[1]])) == slot
        };
        clear_trie(&mut self.ingress, "INGRESS", ingress_slot)?;
        clear_hash(&mut self.ingress_hosts, "INGRESS_HOSTS", ingress_slot)?;
        clear_trie(&mut self.egress, "EGRESS", |k| {
            u32::from(k.slot_policy[0]) == slot
        })?;
        clear_trie(&mut self.remote, "REMOTE", ingress_slot)?;
        clear_hash(&mut self.egress_learned, "EGRESS_LEARNED", |k| {
            u32::from(k.slot_policy[0]) == slot
        })?;
        clear_hash(&mut self.cgroups, "CGROUPS", |k| k.slot == slot)?;
        clear_hash(&mut self.egress_cgroups, "EGRESS_CGROUPS", |k| {
            k.slot == slot
        })?;
        self.ports
            .set(slot, PortBitmap::EMPTY, 0)
            .map_err(map_error("PORTS"))
    }

    /// Sets how many records each CPU may emit per budget window (0 = no limit).
    pub fn set_event_budget(&mut self, per_window: u32) -> Result<(), EnforceError> {
        self.state
            .set(STATE_EVENT_BUDGET, per_window, 0)
            .map_err(|e| EnforceError::Map {
                name: "STATE".into(),
                source: e,
            })
    }

    /// Bans `source` for `duration`; `proxy_port`, when given, is the auth
    /// proxy's port, which banned sources cannot reach either (besides the
    /// protected ports).
    pub fn ban(
        &mut self,
        source: std::net::IpAddr,
        duration: std::time::Duration,
        proxy_port: Option<u16>,
    ) -> Result<(), EnforceError> {
        let err = |e| EnforceError::Map {
            name: "BANS".into(),
            source: e,
        };
        let until = monotonic_ns().saturating_add(duration.as_nanos() as u64);
        self.bans.insert(mapped(source), until, 0).map_err(err)?;
        let old = self.get_state(STATE_BANS)?;
        let port = proxy_port.map_or(old & 0xffff, u32::from);
        self.state
            .set(STATE_BANS, BANS_ON | port, 0)
            .map_err(|e| EnforceError::Map {
                name: "STATE".into(),
                source: e,
            })
    }

    /// Lifts a ban; false if `source` was not banned.
    pub fn unban(&mut self, source: std::net::IpAddr) -> Result<bool, EnforceError> {
        match self.bans.remove(&mapped(source)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(EnforceError::Map {
                name: "BANS".into(),
                source: e,
            }),
        }
    }

    /// Bans in force: the source and the time left. Expired ones are removed.
    pub fn bans_in_force(&mut self) -> Vec<(std::net::IpAddr, std::time::Duration)> {
        let now = monotonic_ns();
        let all: Vec<(Addr, u64)> = self.bans.iter().filter_map(Result::ok).collect();
        let mut out = Vec::new();
        for (addr, until) in all {
            if until <= now {
                let _ = self.bans.remove(&addr);
                continue;
            }
            let ip = std::net::Ipv6Addr::from(addr);
            let ip = ip
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
            out.push((ip, std::time::Duration::from_nanos(until - now)));
        }
        out.sort();
        out
    }

    /// Sum over CPUs of a per-CPU counter.
    pub fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// A source address as the kernel maps key it (IPv4 IPv4-mapped).
fn mapped(ip: std::net::IpAddr) -> Addr {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => mapped_v4(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// CLOCK_MONOTONIC in nanoseconds (what `bpf_ktime_get_ns` reads).
use warden_runtime::clock::monotonic_ns;

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> EnforceError {
    move |source| EnforceError::Map {
        name: name.into(),
        source,
    }
}

/// Removes the keys `in_slot` selects from a hash map. A failed key walk
/// fails the apply rather than leave stale entries behind.
fn clear_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    in_slot: impl Fn(&K) -> bool,
) -> Result<(), EnforceError> {
    let keys = map
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_error(name))?;
    for k in keys.iter().filter(|k| in_slot(k)) {
        map.remove(k).map_err(map_error(name))?;
    }
    Ok(())
}

/// [`clear_hash`] for an LPM trie.
fn clear_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    in_slot: impl Fn(&K) -> bool,
) -> Result<(), EnforceError> {
    let keys = map
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_error(name))?;
    for k in keys.iter().filter(|k| in_slot(&k.data())) {
        map.remove(k).map_err(map_error(name))?;
    }
    Ok(())
}

/// Waits until every BPF program that might have read the old active slot has
/// returned: MEMBARRIER_CMD_GLOBAL performs `synchronize_rcu()`, and warden's
/// programs run inside RCU read-side sections (non-sleepable programs).
pub fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse CMD_GLOBAL; programs run for microseconds.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
