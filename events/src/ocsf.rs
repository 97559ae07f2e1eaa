//! OCSF encoding (schema 1.8.0): flow records as Network Activity (class 4001).
//! Warden's own fields (rule, hook, generation, cgroup, container, socket
//! cookie) go under `unmapped.warden`, where OCSF puts producer extensions.

use super::community_id::community_id;
use super::{Flow, addr, boot_ns_to_unix_ms};
use serde_json::{Value, json};
use warden_common::kinds::Verdict;

pub const OCSF_VERSION: &str = "1.8.0";

/// OCSF Network Activity `activity_id`s used here.
const OPEN: u8 = 1;
const REFUSE: u8 = 5;
const LISTEN: u8 = 7;
/// `disposition_id` 15: Detected (audit mode: seen, not blocked).
const DETECTED: u8 = 15;

pub fn network_activity(f: &Flow, event_uid: &str) -> Value {
    let ev = f.ev;
    // Audit mode: the flow went through (Allowed) and would have been blocked
    // (disposition Detected, `unmapped.warden.would_block`).
    let hook = ev.hook();
    let would_block = ev.verdict() == Verdict::WouldDeny;
    let allowed = ev.verdict().let_through();
    let is_bind = hook.is_bind();
    let inbound = hook.is_inbound();
    let activity = match (allowed, is_bind) {
        (false, _) => REFUSE,
        (true, true) => LISTEN,
        (true, false) => OPEN,
    };
    let proto_name = super::proto_name(ev.proto);
    let dst = addr(ev.daddr, ev.family);
    let mut connection = json!({
        "protocol_name": proto_name,
        "protocol_num": ev.proto,
        "direction_id": if inbound { 1 } else { 2 },
        "direction": if inbound { "Inbound" } else { "Outbound" },
    });
    let mut o = json!({
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity,
        "type_uid": 400100 + activity as u32,
        "time": boot_ns_to_unix_ms(ev.ts_ns),
        "severity_id": if allowed && !would_block { 1 } else { 3 },
        "status_id": if allowed { 1 } else { 2 },
        "action_id": if allowed { 1 } else { 2 },
        "disposition_id": match (allowed, would_block) { (_, true) => DETECTED, (true, _) => 1, _ => 2 },
        "message": format!("{} {} ({})", hook.as_str(), if would_block { "would be blocked (audit)" } else if allowed { "allowed" } else { "blocked" }, ev.reason().as_str()),
        "metadata": {
            "uid": event_uid,
            "version": OCSF_VERSION,
            // `actor` comes with the host profile, `action_id`/`disposition_id`
            // with the security_control profile.
            "profiles": ["host", "security_control"],
            "product": { "name": "ollama-warden", "vendor_name": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        },
        "dst_endpoint": { "ip": dst.to_string(), "port": ev.dport },
    });
    let mut warden = json!({
        "hook": hook.as_str(),
        "reason": ev.reason().as_str(),
        "rule_id": ev.rule_id,
        "policy_generation": ev.generation,
    });
    if let Some(rule) = f.rule {
        warden["rule"] = rule.into();
    }
    if would_block {
        warden["would_block"] = true.into();
    }
    // Packets carry a source; system calls carry a process, and an allowed
    // TCP connect its source too once the kernel chose it (sock_ops).
    if hook.is_packet() || ev.sport != 0 {
        let src = addr(ev.saddr, ev.family);
        o["src_endpoint"] = json!({ "ip": src.to_string(), "port": ev.sport });
        if ev.sport != 0 && matches!(ev.proto, 6 | 17) {
            connection["community_uid"] =
                community_id(ev.proto, src, ev.sport, dst, ev.dport).into();
        }
        if ev.ifindex != 0 {
            warden["ifindex"] = ev.ifindex.into();
        }
    }
    if hook.has_socket_owner() {
        // nftables and the packet hooks see a local packet's owner, not its process.
        o["actor"] = json!({ "user": user(f) });
    } else if !hook.is_packet() {
        o["actor"] = json!({ "process": process(f) });
    }
    if ev.cookie != 0 {
        connection["uid"] = ev.cookie.to_string().into();
        warden["socket_cookie"] = ev.cookie.into();
    }
    if let Some(c) = &f.cgroup {
        warden["cgroup_id"] = ev.cgroup_id.into();
        for (k, v) in [
            ("cgroup", &c.path),
            ("systemd_unit", &c.unit),
            ("container_id", &c.container_id),
        ] {
            if let Some(v) = v {
                warden[k] = v.clone().into();
            }
        }
        if let Some(rt) = c.container_runtime {
            warden["container_runtime"] = rt.into();
        }
    }
    o["connection_info"] = connection;
    o["unmapped"] = json!({ "warden": warden });
    o
}

fn user(f: &Flow) -> Value {
    let mut user = json!({ "uid": f.ev.uid.to_string() });
    if let Some(name) = &f.user {
        user["name"] = name.clone().into();
    }
    user
}

fn process(f: &Flow) -> Value {
    let ev = f.ev;
    let comm = super::comm(&ev.comm);
    let mut p = json!({ "name": comm });
    if ev.tgid != 0 {
        p["pid"] = ev.tgid.into();
        p["tid"] = ev.pid.into();
    }
    p["user"] = user(f);
    if let Some(info) = &f.process {
        if let Some(exe) = &info.exe {
            let name = exe.rsplit('/').next().unwrap_or(exe);
            p["file"] = json!({ "path": exe, "name": name, "type_id": 1, "type": "Regular File" });
        }
        if let Some(cmd) = &info.cmdline {
            p["cmd_line"] = cmd.clone().into();
        }
    }
    p
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
