//! ECS encoding (Elastic Common Schema 8.11) of flow records.

use super::community_id::community_id;
use super::{Flow, addr, boot_ns_to_unix_ms};
use serde_json::{Value, json};
use warden_common::kinds::Verdict;

pub const ECS_VERSION: &str = "8.11.0";

pub fn network_event(f: &Flow, event_uid: &str) -> Value {
    let ev = f.ev;
    let hook = ev.hook();
    let would_block = ev.verdict() == Verdict::WouldDeny;
    let allowed = ev.verdict().let_through();
    let inbound = hook.is_inbound();
    let transport = super::proto_name(ev.proto);
    let dst = addr(ev.daddr, ev.family);
    let mut o = json!({
        "@timestamp": rfc3339_ms(boot_ns_to_unix_ms(ev.ts_ns)),
        "ecs": { "version": ECS_VERSION },
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection", if allowed { "allowed" } else { "denied" }],
            "outcome": if allowed { "success" } else { "failure" },
            "action": ev.reason().as_str(),
            "id": event_uid,
            "module": "ollama_warden",
            "dataset": "ollama_warden.flow",
        },
        "observer": { "product": "ollama-warden", "vendor": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        "network": {
            "transport": transport,
            "type": if ev.family == 10 { "ipv6" } else { "ipv4" },
            "direction": if inbound { "ingress" } else { "egress" },
        },
        "destination": { "ip": dst.to_string(), "port": ev.dport },
        "rule": { "id": ev.rule_id.to_string() },
        "ollama_warden": { "hook": hook.as_str(), "policy_generation": ev.generation },
    });
    if let Some(rule) = f.rule {
        o["rule"]["name"] = rule.into();
    }
    if would_block {
        o["ollama_warden"]["would_block"] = true.into();
    }
    if hook.is_packet() || ev.sport != 0 {
        let src = addr(ev.saddr, ev.family);
        o["source"] = json!({ "ip": src.to_string(), "port": ev.sport });
        if ev.sport != 0 && matches!(ev.proto, 6 | 17) {
            o["network"]["community_id"] =
                community_id(ev.proto, src, ev.sport, dst, ev.dport).into();
        }
    }
    if ev.tgid != 0 {
        let mut p =
            json!({ "pid": ev.tgid, "name": super::comm(&ev.comm), "thread": { "id": ev.pid } });
        if let Some(info) = &f.process {
            if let Some(exe) = &info.exe {
                p["executable"] = exe.clone().into();
            }
            if let Some(cmd) = &info.cmdline {
                p["command_line"] = cmd.clone().into();
            }
        }
        o["process"] = p;
        o["user"] = json!({ "id": ev.uid.to_string() });
        if let Some(name) = &f.user {
            o["user"]["name"] = name.clone().into();
        }
    }
    if let Some(c) = &f.cgroup {
        if let Some(id) = &c.container_id {
            o["container"] = json!({ "id": id, "runtime": c.container_runtime });
        }
        o["ollama_warden"]["cgroup"] =
            json!({ "id": ev.cgroup_id, "path": c.path, "systemd_unit": c.unit });
    }
    if ev.cookie != 0 {
        o["ollama_warden"]["socket_cookie"] = ev.cookie.into();
    }
    o
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`rfc3339_ms`]: `YYYY-MM-DDTHH:MM:SS[.fff]Z` as Unix
/// milliseconds (`None` for anything else).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let num = |t: &str| t.parse::<i64>().ok();
    let mut d = date.splitn(3, '-').map(num);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(num);
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let millis = num(&format!("{frac:0<3}")[..3])?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm).
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60 + ss)
        .ok()
        .map(|secs| secs * 1000 + millis as u64)
}

/// Warden's lifecycle events in ECS.
pub fn lifecycle(kind: &str, fields: Value, event_uid: &str) -> Value {
    let (category, kind_type, outcome) = match kind {
        "start" => ("process", "start", "success"),
        "stop" => ("process", "end", "success"),
        "policy_rejected" => ("configuration", "change", "failure"),
        "policy_unchanged" => ("configuration", "info", "success"),
        "loss" => ("process", "info", "failure"),
        _ => ("configuration", "change", "success"),
    };
    json!({
        "@timestamp": rfc3339_ms(super::now_ms()),
        "ecs": { "version": ECS_VERSION },
        "event": {
            "kind": "event",
            "category": [category],
            "type": [kind_type],
            "outcome": outcome,
            "action": kind,
            "id": event_uid,
            "module": "ollama_warden",
            "dataset": "ollama_warden.lifecycle",
        },
        "observer": { "product": "ollama-warden", "vendor": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        "ollama_warden": fields,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_read_back() {
        for ms in [0, 951_782_400_123, 1_796_083_200_999, 4_107_542_399_000] {
            let text = super::rfc3339_ms(ms);
            assert_eq!(super::parse_rfc3339_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(
            super::parse_rfc3339_ms("2026-12-01T20:02:05Z"),
            Some(1_796_155_325_000)
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-12-01 00:00:00Z",
            "2026-12-01T00:00:00",
            "x",
        ] {
            assert_eq!(super::parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_795_335_280_773),
            "2026-11-22T08:14:40.773Z"
        );
        assert_eq!(
            super::rfc3339_ms(951_825_600_001),
            "2000-02-29T12:00:00.001Z"
        );
    }
}
