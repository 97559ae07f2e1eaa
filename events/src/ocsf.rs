//! OCSF encoding (schema 1.8.0): flow records as Network Activity (class 4001).
//! Warden's own fields (rule, hook, generation, cgroup, container, socket
//! cookie) go under `unmapped.warden`, where OCSF puts producer extensions.

use super::community_id::community_id;
use super::{Flow, addr, boot_ns_to_unix_ms};
use serde::Serialize;
use serde_json::{Value, json};
use warden_common::kinds::Verdict;

pub const OCSF_VERSION: &str = "1.8.0";

/// OCSF Network Activity `activity_id`s used here.
const OPEN: u8 = 1;
const REFUSE: u8 = 5;
const LISTEN: u8 = 7;
/// `disposition_id` 15: Detected (audit mode: seen, not blocked).
const DETECTED: u8 = 15;

/// A flow record as OCSF Network Activity (for live views and the formats
/// that add to it). Sinks write [`write_network_activity`]'s bytes, the same
/// record without building a `Value`.
pub fn network_activity(f: &Flow, event_uid: &str) -> Value {
    serde_json::to_value(NetworkActivity::new(f, event_uid)).expect("plain data serializes")
}

/// [`network_activity`] as one JSON line appended to `buf`: typed fields
/// serialized straight to bytes, no allocation per field (building `Value`
/// trees was most of the encoder's time).
pub fn write_network_activity(f: &Flow, event_uid: &str, buf: &mut Vec<u8>) {
    serde_json::to_writer(buf, &NetworkActivity::new(f, event_uid)).expect("plain data serializes");
}

/// Serialized through `Display`, without an intermediate `String`.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `"<hook> <allowed|blocked|would be blocked (audit)> (<reason>)"`.
struct Message {
    hook: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.hook, self.outcome, self.reason)
    }
}

/// OCSF `metadata.product`: warden, for every record it writes.
#[derive(Serialize)]
pub struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

pub const PRODUCT: Product = Product {
    name: "ollama-warden",
    vendor_name: "ollama-warden",
    version: env!("CARGO_PKG_VERSION"),
};

#[derive(Serialize)]
struct Metadata<'a> {
    uid: &'a str,
    version: &'static str,
    /// `actor` comes with the host profile, `action_id`/`disposition_id`
    /// with the security_control profile.
    profiles: [&'static str; 2],
    product: Product,
}

#[derive(Serialize)]
struct Endpoint {
    ip: Shown<std::net::IpAddr>,
    port: u16,
}

#[derive(Serialize)]
struct Connection {
    protocol_name: &'static str,
    protocol_num: u8,
    direction_id: u8,
    direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    community_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<Shown<u64>>,
}

#[derive(Serialize)]
struct User<'a> {
    uid: Shown<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct File<'a> {
    path: &'a str,
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Process<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    user: User<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_line: Option<&'a str>,
}

#[derive(Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
}

#[derive(Serialize)]
struct Warden<'a> {
    hook: &'static str,
    reason: &'static str,
    rule_id: u32,
    policy_generation: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    would_block: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_cookie: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    systemd_unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_runtime: Option<&'static str>,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    warden: Warden<'a>,
}

#[derive(Serialize)]
struct NetworkActivity<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u8,
    category_name: &'static str,
    activity_id: u8,
    type_uid: u32,
    time: u64,
    severity_id: u8,
    status_id: u8,
    action_id: u8,
    disposition_id: u8,
    message: Shown<Message>,
    metadata: Metadata<'a>,
    dst_endpoint: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    connection_info: Connection,
    unmapped: Unmapped<'a>,
}

impl<'a> NetworkActivity<'a> {
    fn new(f: &'a Flow, event_uid: &'a str) -> Self {
        let ev = f.ev;
        // Audit mode: the flow went through (Allowed) and would have been blocked
        // (disposition Detected, `unmapped.warden.would_block`).
        let hook = ev.hook();
        let would_block = ev.verdict() == Verdict::WouldDeny;
        let allowed = ev.verdict().let_through();
        let inbound = hook.is_inbound();
        let activity = match (allowed, hook.is_bind()) {
            (false, _) => REFUSE,
            (true, true) => LISTEN,
            (true, false) => OPEN,
        };
        let dst = addr(ev.daddr, ev.family);
        // Packets carry a source; system calls carry a process, and an allowed
        // TCP connect its source too once the kernel chose it (its SYN).
        let has_source = hook.is_packet() || ev.sport != 0;
        let src = addr(ev.saddr, ev.family);
        let cgroup = f.cgroup.as_ref();
        let actor = if hook.has_socket_owner() {
            // nftables and the packet hooks see a local packet's owner, not its process.
            Some(Actor {
                process: None,
                user: Some(user(f)),
            })
        } else if !hook.is_packet() {
            Some(Actor {
                process: Some(process(f)),
                user: None,
            })
        } else {
            None
        };
        Self {
            class_uid: 4001,
            class_name: "Network Activity",
            category_uid: 4,
            category_name: "Network Activity",
            activity_id: activity,
            type_uid: 400100 + activity as u32,
            time: boot_ns_to_unix_ms(ev.ts_ns),
            severity_id: if allowed && !would_block { 1 } else { 3 },
            status_id: if allowed { 1 } else { 2 },
            action_id: if allowed { 1 } else { 2 },
            disposition_id: match (allowed, would_block) {
                (_, true) => DETECTED,
                (true, _) => 1,
                _ => 2,
            },
            message: Shown(Message {
                hook: hook.as_str(),
                outcome: if would_block {
                    "would be blocked (audit)"
                } else if allowed {
                    "allowed"
                } else {
                    "blocked"
                },
                reason: ev.reason().as_str(),
            }),
            metadata: Metadata {
                uid: event_uid,
                version: OCSF_VERSION,
                profiles: ["host", "security_control"],
                product: PRODUCT,
            },
            dst_endpoint: Endpoint {
                ip: Shown(dst),
                port: ev.dport,
            },
            src_endpoint: has_source.then_some(Endpoint {
                ip: Shown(src),
                port: ev.sport,
            }),
            actor,
            connection_info: Connection {
                protocol_name: super::proto_name(ev.proto),
                protocol_num: ev.proto,
                direction_id: if inbound { 1 } else { 2 },
                direction: if inbound { "Inbound" } else { "Outbound" },
                community_uid: (has_source && ev.sport != 0 && matches!(ev.proto, 6 | 17))
                    .then(|| community_id(ev.proto, src, ev.sport, dst, ev.dport)),
                uid: (ev.cookie != 0).then_some(Shown(ev.cookie)),
            },
            unmapped: Unmapped {
                warden: Warden {
                    hook: hook.as_str(),
                    reason: ev.reason().as_str(),
                    rule_id: ev.rule_id,
                    policy_generation: ev.generation,
                    rule: f.rule,
                    would_block,
                    ifindex: (has_source && ev.ifindex != 0).then_some(ev.ifindex),
                    socket_cookie: (ev.cookie != 0).then_some(ev.cookie),
                    cgroup_id: cgroup.map(|_| ev.cgroup_id),
                    cgroup: cgroup.and_then(|c| c.path.as_deref()),
                    systemd_unit: cgroup.and_then(|c| c.unit.as_deref()),
                    container_id: cgroup.and_then(|c| c.container_id.as_deref()),
                    container_runtime: cgroup.and_then(|c| c.container_runtime),
                },
            },
        }
    }
}

fn user<'a>(f: &'a Flow) -> User<'a> {
    User {
        uid: Shown(f.ev.uid),
        name: f.user.as_deref(),
    }
}

fn process<'a>(f: &'a Flow) -> Process<'a> {
    let ev = f.ev;
    let info = f.process.as_ref();
    let exe = info.and_then(|i| i.exe.as_deref());
    Process {
        name: super::comm(&ev.comm),
        pid: (ev.tgid != 0).then_some(ev.tgid),
        tid: (ev.tgid != 0).then_some(ev.pid),
        user: user(f),
        file: exe.map(|exe| File {
            path: exe,
            name: exe.rsplit('/').next().unwrap_or(exe),
            type_id: 1,
            kind: "Regular File",
        }),
        cmd_line: info.and_then(|i| i.cmdline.as_deref()),
    }
}

/// Warden's own lifecycle (start, stop, policy applied/rejected, backend fallback)
/// as OCSF Application Lifecycle (class 6002); the details under `unmapped.warden`.
pub fn application_lifecycle(kind: &str, fields: Value, event_uid: &str) -> Value {
    const START: u8 = 3;
    const STOP: u8 = 4;
    const UPDATE: u8 = 8;
    const OTHER: u8 = 99;
    let (activity, failed, severity) = match kind {
        "start" => (START, false, 1),
        "stop" => (STOP, false, 1),
        "policy_applied" | "cgroups_resolved" | "attachments_changed" => (UPDATE, false, 1),
        "policy_rejected" => (UPDATE, true, 3),
        "backend_fallback" | "pins_restored" => (OTHER, false, 4),
        "loss" => (OTHER, false, 3),
        _ => (OTHER, false, 1),
    };
    let product = json!({ "name": "ollama-warden", "vendor_name": "ollama-warden", "version": env!("CARGO_PKG_VERSION") });
    let mut warden = json!({ "event": kind });
    if let (Some(w), Value::Object(f)) = (warden.as_object_mut(), fields) {
        w.extend(f);
    }
    let mut message = kind.replace('_', " ");
    if let Some(e) = warden["error"].as_str() {
        message = format!("{message}: {e}");
    }
    if kind == "loss" {
        message = format!(
            "events lost: {} since start ({})",
            warden["lost_total"], warden["since_last_report"]
        );
    }
    let mut o = json!({
        "class_uid": 6002,
        "class_name": "Application Lifecycle",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity,
        "type_uid": 600200 + activity as u32,
        "time": super::now_ms(),
        "severity_id": severity,
        "status_id": if failed { 2 } else { 1 },
        "message": message,
        "app": product.clone(),
        "metadata": { "uid": event_uid, "version": OCSF_VERSION, "product": product },
        "unmapped": { "warden": warden },
    });
    if activity == OTHER {
        o["activity_name"] = kind.into();
    }
    o
}
