//! Kernel flow records as JSON lines, plus warden's lifecycle events.
//!
//! Three encodings: `raw` (the kernel record as it is, for tools and tests),
//! [`ocsf`] (the default) and [`ecs`]; the latter two carry the [`enrich`]ment.

pub mod aggregate;
pub mod community_id;
pub mod compact;
pub mod correlate;
pub mod ecs;
pub mod enrich;
pub mod live;
pub mod ocsf;
pub mod pipeline;
pub mod reports;
pub mod sink;
pub mod syslog;

use serde_json::{Value, json};
use std::net::{IpAddr, Ipv6Addr};
use warden_common::FlowEvent;
use warden_common::kinds::Hook;

/// The IANA protocol number's name, as events write it.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "ipv6-icmp",
        _ => "other",
    }
}

/// An address as the user would write it: IPv4-mapped addresses of IPv4
/// sockets/packets print as IPv4, an IPv6 socket's mapped address stays mapped.
pub fn addr(bytes: [u8; 16], family: u16) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (family, v6.to_ipv4_mapped()) {
        (2, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

pub use warden_runtime::clock::boot_ns_to_unix_ms;

pub(crate) fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// A kernel record with what userspace knows about it.
pub struct Flow<'a> {
    pub ev: &'a FlowEvent,
    pub rule: Option<&'a str>,
    pub process: Option<enrich::ProcessInfo>,
    pub user: Option<String>,
    pub cgroup: Option<enrich::CgroupInfo>,
}

impl<'a> Flow<'a> {
    /// Enriches `ev` (process, user, cgroup) unless it came from a packet hook.
    pub fn enriched(ev: &'a FlowEvent, rule: Option<&'a str>, e: &mut enrich::Enricher) -> Self {
        let from_process = ev.tgid != 0;
        Self {
            ev,
            rule,
            process: from_process.then(|| e.process(ev.tgid, ev.pid, &comm(&ev.comm))),
            user: (from_process || ev.hook().has_socket_owner())
                .then(|| e.user_name(ev.uid))
                .flatten(),
            cgroup: (ev.cgroup_id != 0).then(|| e.cgroup(ev.cgroup_id, ev.tgid)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// OCSF 1.8.0 (Network Activity for flows).
    Ocsf,
    /// Elastic Common Schema.
    Ecs,
    /// The kernel record as JSON, unenriched.
    Raw,
    /// One readable line per event (OCSF underneath): for a terminal.
    Compact,
}

/// Turns flow records into events of one format.
pub struct Encoder {
    format: EventFormat,
    enricher: enrich::Enricher,
    seq: u64,
}

impl Encoder {
    /// An encoder for `format`; [`EventFormat::Compact`] encodes OCSF, which
    /// [`compact::line`] renders.
    pub fn new(format: EventFormat, cgroup2: std::path::PathBuf) -> Self {
        let format = match format {
            EventFormat::Compact => EventFormat::Ocsf,
            f => f,
        };
        Self {
            format,
            enricher: enrich::Enricher::new(cgroup2),
            seq: 0,
        }
    }

    /// A lifecycle event (`start`, `stop`, `policy_applied`, `policy_rejected`, …).
    pub fn lifecycle(&mut self, kind: &str, fields: Value) -> Value {
        self.seq += 1;
        match self.format {
            EventFormat::Raw => lifecycle(kind, fields),
            EventFormat::Ocsf | EventFormat::Compact => {
                ocsf::application_lifecycle(kind, fields, &event_uid(self.seq))
            }
            EventFormat::Ecs => ecs::lifecycle(kind, fields, &event_uid(self.seq)),
        }
    }

    /// The report of repeated denies: the last one, with the count and the
    /// times of the first and last (OCSF `count`/`start_time`/`end_time`, ECS
    /// `event.start`/`event.end`).
    pub fn repeats(&mut self, r: &aggregate::Repeats<Option<String>>) -> Value {
        let mut v = self.flow(&r.last, r.context.as_deref());
        let (first, last) = (
            boot_ns_to_unix_ms(r.first_ns),
            boot_ns_to_unix_ms(r.last_ns),
        );
        match self.format {
            EventFormat::Raw => {
                v["count"] = r.count.into();
                v["first_time_ms"] = first.into();
                v["time_ms"] = last.into();
            }
            EventFormat::Ocsf | EventFormat::Compact => {
                v["count"] = r.count.into();
                v["start_time"] = first.into();
                v["end_time"] = last.into();
                v["unmapped"]["warden"]["aggregated"] = true.into();
                if let Some(m) = v["message"].as_str() {
                    v["message"] = format!("{m}, {} times", r.count).into();
                }
            }
            EventFormat::Ecs => {
                v["event"]["start"] = ecs::rfc3339_ms(first).into();
                v["event"]["end"] = ecs::rfc3339_ms(last).into();
                v["ollama_warden"]["count"] = r.count.into();
            }
        }
        v
    }

    /// How many events this encoder produced (the last one's sequence number).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A flow record as one JSON line written straight to bytes, in the
    /// formats that can (OCSF); `None` for the others, which go through
    /// [`Encoder::flow`]. The same record, numbered the same way.
    pub fn flow_line(&mut self, ev: &FlowEvent, rule: Option<&str>) -> Option<String> {
        if self.format != EventFormat::Ocsf {
            return None;
        }
        self.seq += 1;
        let uid = event_uid(self.seq);
        let mut buf = Vec::with_capacity(1024);
        let f = Flow::enriched(ev, rule, &mut self.enricher);
        ocsf::write_network_activity(&f, &uid, &mut buf);
        Some(String::from_utf8(buf).expect("serde_json writes UTF-8"))
    }

    pub fn flow(&mut self, ev: &FlowEvent, rule: Option<&str>) -> Value {
        self.seq += 1;
        let uid = || event_uid(self.seq);
        match self.format {
            EventFormat::Raw => flow_json(ev, rule),
            EventFormat::Ocsf | EventFormat::Compact => {
                ocsf::network_activity(&Flow::enriched(ev, rule, &mut self.enricher), &uid())
            }
            EventFormat::Ecs => {
                ecs::network_event(&Flow::enriched(ev, rule, &mut self.enricher), &uid())
            }
        }
    }
}

impl Encoder {
    /// A flow about a host name: a connection allowed for the name a host
    /// rule names (the destination's name), or a DNS question the resolver
    /// refused (the question). OCSF `dst_endpoint.hostname` / `query.hostname`,
    /// ECS `destination.domain` / `dns.question.name`.
    pub fn named(&mut self, ev: &FlowEvent, rule: Option<&str>, name: &str) -> Value {
        let mut v = self.flow(ev, rule);
        let question = ev.hook() == warden_common::kinds::Hook::Dns;
        match (self.format, question) {
            (EventFormat::Raw, _) => v["host"] = name.into(),
            (EventFormat::Ocsf | EventFormat::Compact, false) => {
                v["dst_endpoint"]["hostname"] = name.into()
            }
            (EventFormat::Ocsf | EventFormat::Compact, true) => {
                v["query"] = json!({ "hostname": name })
            }
            (EventFormat::Ecs, false) => v["destination"]["domain"] = name.into(),
            (EventFormat::Ecs, true) => v["dns"] = json!({ "question": { "name": name } }),
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            v["message"] = format!("{m} ({name})").into();
        }
        v
    }

    /// A local connection to a protected port after the join: with the proxy's
    /// report that explains it, or marked unattributed (`None`): it did not
    /// come through the proxy.
    pub fn joined(
        &mut self,
        ev: &FlowEvent,
        rule: Option<&str>,
        report: Option<&correlate::ProxyReport>,
    ) -> Value {
        let mut v = self.flow(ev, rule);
        let proxy = report.map(|r| {
            let outer = community_id::community_id(6, r.client.ip(), r.client.port(), r.listener.ip(), r.listener.port());
            // A socket bound to the unspecified address has no known source IP yet.
            let inner = (!r.local.ip().is_unspecified())
                .then(|| community_id::community_id(6, r.local.ip(), r.local.port(), r.upstream.ip(), r.upstream.port()));
            json!({
                "identity": r.identity,
                "request_id": r.request_id,
                "model": r.model,
                "client": { "ip": r.client.ip().to_canonical().to_string(), "port": r.client.port() },
                "listener": { "ip": r.listener.ip().to_canonical().to_string(), "port": r.listener.port() },
                "local": { "ip": r.local.ip().to_canonical().to_string(), "port": r.local.port() },
                "community_id": outer,
                "upstream_community_id": inner,
                "connected_ms": r.time_ms,
            })
        });
        match (self.format, proxy) {
            (EventFormat::Raw, Some(p)) => v["proxy"] = p,
            (EventFormat::Raw, None) => v["unattributed"] = true.into(),
            (EventFormat::Ocsf | EventFormat::Compact, Some(p)) => {
                v["actor"]["user"] = json!({ "name": p["identity"] });
                if v.get("src_endpoint").is_none()
                    && p["local"]["ip"] != "0.0.0.0"
                    && p["local"]["ip"] != "::"
                {
                    v["src_endpoint"] = p["local"].clone();
                }
                v["message"] = format!(
                    "{} through warden proxy for {}",
                    v["message"].as_str().unwrap_or("connect"),
                    p["identity"].as_str().unwrap_or("")
                )
                .into();
                v["unmapped"]["warden"]["proxy"] = p;
            }
            (EventFormat::Ocsf | EventFormat::Compact, None) => {
                v["severity_id"] = 3.into();
                v["message"] = format!(
                    "{}, not through warden proxy",
                    v["message"].as_str().unwrap_or("connect")
                )
                .into();
                v["unmapped"]["warden"]["unattributed"] = true.into();
            }
            (EventFormat::Ecs, Some(p)) => {
                let id = p["identity"].clone();
                v["related"]["user"] = json!([id]);
                v["ollama_warden"]["proxy"] = p;
            }
            (EventFormat::Ecs, None) => {
                v["ollama_warden"]["unattributed"] = true.into();
            }
        }
        v
    }
}

/// `<boot id>-<seq>`: unique across restarts of the daemon and reboots.
fn event_uid(seq: u64) -> String {
    static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        let nanos = warden_runtime::clock::unix_ns();
        format!("{:x}-{:x}", std::process::id(), nanos)
    });
    format!("{start}-{seq}")
}

/// The JSON record of one kernel flow event.
pub fn flow_json(ev: &FlowEvent, rule: Option<&str>) -> Value {
    let hook = ev.hook();
    let is_bind = hook.is_bind();
    let mut v = json!({
        "type": "flow",
        "time_ms": boot_ns_to_unix_ms(ev.ts_ns),
        "hook": hook.as_str(),
        "verdict": ev.verdict().as_str(),
        "reason": ev.reason().as_str(),
        "rule_id": ev.rule_id,
        "generation": ev.generation,
        "family": if ev.family == 10 { "ipv6" } else { "ipv4" },
        "proto": proto_name(ev.proto),
        "dst_addr": addr(ev.daddr, ev.family).to_string(),
        "dst_port": ev.dport,
    });
    let o = v.as_object_mut().expect("object");
    if let Some(rule) = rule {
        o.insert("rule".into(), rule.into());
    }
    if hook.is_packet() && hook != Hook::Xdp {
        // Packets, not system calls: addresses, ports and (locally) uid/gid only.
        o.insert(
            "src_addr".into(),
            addr(ev.saddr, ev.family).to_string().into(),
        );
        o.insert("src_port".into(), ev.sport.into());
        if hook == Hook::NftInput {
            o.insert("ifindex".into(), ev.ifindex.into());
        } else if hook == Hook::NftOutput {
            o.insert("uid".into(), ev.uid.into());
            o.insert("gid".into(), ev.gid.into());
        } else {
            // The socket's cgroup and owner: packets leave from softirq and
            // kernel workers too, so there is no process to name.
            o.insert("uid".into(), ev.uid.into());
            o.insert("cgroup_id".into(), ev.cgroup_id.into());
            o.insert("socket_cookie".into(), ev.cookie.into());
        }
    } else if hook == Hook::Xdp {
        o.insert(
            "src_addr".into(),
            addr(ev.saddr, ev.family).to_string().into(),
        );
        o.insert("src_port".into(), ev.sport.into());
        o.insert("ifindex".into(), ev.ifindex.into());
    } else {
        o.insert("pid".into(), ev.tgid.into());
        o.insert("tid".into(), ev.pid.into());
        o.insert("uid".into(), ev.uid.into());
        o.insert("gid".into(), ev.gid.into());
        o.insert("comm".into(), comm(&ev.comm).into());
        o.insert("cgroup_id".into(), ev.cgroup_id.into());
        o.insert("socket_cookie".into(), ev.cookie.into());
        if is_bind {
            // For binds the "destination" is the local address being bound.
            let (a, p) = (o.remove("dst_addr"), o.remove("dst_port"));
            o.insert("bind_addr".into(), a.unwrap_or_default());
            o.insert("bind_port".into(), p.unwrap_or_default());
        } else if ev.sport != 0 {
            // An allowed TCP connect, completed with its source (its SYN).
            let src = addr(ev.saddr, ev.family);
            o.insert("src_addr".into(), src.to_string().into());
            o.insert("src_port".into(), ev.sport.into());
            let dst = addr(ev.daddr, ev.family);
            let id = community_id::community_id(ev.proto, src, ev.sport, dst, ev.dport);
            o.insert("community_id".into(), id.into());
        }
    }
    v
}

pub use warden_runtime::clock::unix_ms as now_ms;

/// A lifecycle event (`start`, `policy_applied`, `policy_rejected`, ...).
pub fn lifecycle(kind: &str, fields: Value) -> Value {
    let mut v = json!({ "type": kind, "time_ms": now_ms() });
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_common::kinds::{Reason, Verdict};
    use warden_common::mapped_v4;

    #[test]
    fn mapped_addresses_print_by_family() {
        let a = mapped_v4([127, 0, 0, 1]);
        assert_eq!(addr(a, 2).to_string(), "127.0.0.1");
        assert_eq!(addr(a, 10).to_string(), "::ffff:127.0.0.1");
    }

    #[test]
    fn bind_events_name_the_bound_address() {
        // SAFETY: FlowEvent is plain data; all zeroes is a valid value.
        let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
        ev.hook = Hook::Bind4.code();
        ev.family = 2;
        ev.proto = 6;
        ev.verdict = Verdict::Deny.code();
        ev.reason = Reason::BindNotAllowed.code();
        ev.daddr = mapped_v4([0, 0, 0, 0]);
        ev.dport = 11434;
        ev.comm[..3].copy_from_slice(b"nc\0");
        let j = flow_json(&ev, None);
        assert_eq!(j["bind_port"], 11434);
        assert_eq!(j["bind_addr"], "0.0.0.0");
        assert_eq!(j["verdict"], "deny");
        assert_eq!(j["comm"], "nc");
        assert!(j.get("dst_port").is_none());
    }

    #[test]
    fn audit_verdicts_are_allowed_and_marked_would_block_in_every_format() {
        // SAFETY: FlowEvent is plain data; all zeroes is a valid value.
        let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
        ev.hook = Hook::Xdp.code();
        ev.family = 2;
        ev.proto = 6;
        ev.verdict = Verdict::WouldDeny.code();
        ev.reason = Reason::IngressNotAllowed.code();
        ev.saddr = mapped_v4([10, 0, 0, 9]);
        ev.daddr = mapped_v4([10, 0, 0, 1]);
        ev.sport = 40000;
        ev.dport = 11434;
        let f = Flow {
            ev: &ev,
            rule: None,
            process: None,
            user: None,
            cgroup: None,
        };
        assert_eq!(flow_json(&ev, None)["verdict"], "would_deny");
        let o = ocsf::network_activity(&f, "u");
        assert_eq!(
            (&o["action_id"], &o["disposition_id"], &o["activity_id"]),
            (&json!(1), &json!(15), &json!(1))
        );
        assert_eq!(o["unmapped"]["warden"]["would_block"], true);
        let e = ecs::network_event(&f, "u");
        assert_eq!(e["event"]["type"], json!(["connection", "allowed"]));
        assert_eq!(e["ollama_warden"]["would_block"], true);
        let mut denied = ev;
        denied.verdict = Verdict::Deny.code();
        let f = Flow { ev: &denied, ..f };
        let o = ocsf::network_activity(&f, "u");
        assert_eq!(
            (&o["action_id"], &o["disposition_id"]),
            (&json!(2), &json!(2))
        );
        assert!(o["unmapped"]["warden"].get("would_block").is_none());
    }
}
