//! The compact view: one readable line per decision, for a terminal
//! (`warden events`, and the daemon's own stdout on a terminal), rendered from
//! the OCSF encoding:
//!
//! ```text
//! 14:03:07.412 DENY   connect4     pid 4242 curl (session-3.scope) → 127.0.0.1:11434  local_not_allowed  rule 0 no rule allows it
//! ```
//!
//! Time (UTC), verdict (`ALLOW`, `DENY`, `AUDIT` for would-deny; coloured on
//! a terminal), hook, who (process and unit or container, or the socket's
//! owner for packets), source → destination (with the host name a host rule
//! allowed), reason, the proxy identity of a correlated connection (or
//! `unattributed`), and the rule with the file:line it was written at.

use serde_json::Value;

/// Colours for a terminal, or none.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Ansi,
}

/// One line for an OCSF event; `origin(rule_id)` gives a rule's file:line:col.
pub fn line(v: &Value, origin: &dyn Fn(u64) -> Option<String>, style: Style) -> String {
    let time = clock(v["time"].as_u64().unwrap_or(0));
    let w = &v["unmapped"]["warden"];
    if v["class_uid"] == 4002 {
        return http(v, &time, style);
    }
    if v["class_uid"] != 4001 {
        let msg = v["message"].as_str().unwrap_or("");
        return format!("{time} {}  {msg}", paint("EVENT ", "36", style));
    }
    let (word, colour) = if w["would_block"] == true {
        ("AUDIT ", "33")
    } else if v["action_id"] == 1 {
        ("ALLOW ", "32")
    } else {
        ("DENY  ", "31")
    };
    let mut out = format!(
        "{time} {} {:<12} {}",
        paint(word, colour, style),
        w["hook"].as_str().unwrap_or("?"),
        who(v)
    );
    let src = endpoint(&v["src_endpoint"]);
    let mut dst = endpoint(&v["dst_endpoint"]).unwrap_or_default();
    if let Some(host) = v["dst_endpoint"]["hostname"].as_str() {
        dst = format!("{dst} ({host})");
    }
    match src {
        Some(src) => out.push_str(&format!(" {src} → {dst}")),
        None => out.push_str(&format!(" → {dst}")),
    }
    out.push_str(&format!("  {}", w["reason"].as_str().unwrap_or("?")));
    if let Some(q) = v["query"]["hostname"].as_str() {
        out.push_str(&format!(" {q}"));
    }
    if let Some(p) = w.get("proxy") {
        let identity = p["identity"].as_str().unwrap_or("?");
        out.push_str(&format!("  via proxy: {identity}"));
        if let Some(model) = p["model"].as_str() {
            out.push_str(&format!(" model {model}"));
        }
    } else if w["unattributed"] == true {
        out.push_str(&format!("  {}", paint("unattributed", "31", style)));
    }
    if let Some(id) = w["rule_id"].as_u64() {
        out.push_str(&format!("  rule {id}"));
        if let Some(rule) = w["rule"].as_str() {
            out.push_str(&format!(" {rule}"));
        }
        if let Some(at) = origin(id).filter(|o| !o.is_empty()) {
            out.push_str(&format!(" ({at})"));
        }
    }
    if let Some(n) = v["count"].as_u64() {
        out.push_str(&format!("  ×{n}"));
    }
    out
}

/// A proxy request: status, method and path, identity, model, why refused.
fn http(v: &Value, time: &str, style: Style) -> String {
    let (word, colour) = if v["action_id"] == 1 {
        ("HTTP  ", "32")
    } else {
        ("HTTP  ", "31")
    };
    let req = &v["http_request"];
    let mut out = format!(
        "{time} {} {} {} {}",
        paint(word, colour, style),
        v["http_response"]["code"].as_u64().unwrap_or(0),
        req["http_method"].as_str().unwrap_or("-"),
        req["url"]["path"].as_str().unwrap_or("")
    );
    if let Some(src) = endpoint(&v["src_endpoint"]) {
        out.push_str(&format!("  from {src}"));
    }
    if let Some(id) = v["actor"]["user"]["name"].as_str() {
        out.push_str(&format!("  {id}"));
    }
    if let Some(m) = v["unmapped"]["warden"]["model"].as_str() {
        out.push_str(&format!(" model {m}"));
    }
    if let Some(why) = v["status_detail"].as_str() {
        out.push_str(&format!("  {why}"));
    }
    if let Some(id) = req["uid"].as_str() {
        out.push_str(&format!("  request {id}"));
    }
    out
}

/// The process (pid, name, unit or container) or the socket's owner.
fn who(v: &Value) -> String {
    let w = &v["unmapped"]["warden"];
    let place = w["systemd_unit"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            w["container_id"]
                .as_str()
                .map(|c| format!("container {}", &c[..c.len().min(12)]))
        })
        .or_else(|| w["cgroup"].as_str().map(str::to_owned));
    let p = &v["actor"]["process"];
    let mut s = if let Some(pid) = p["pid"].as_u64() {
        format!("pid {pid} {}", p["name"].as_str().unwrap_or("?"))
    } else if let Some(uid) = v["actor"]["user"]["uid"].as_str() {
        format!("uid {uid}")
    } else if let Some(i) = w["ifindex"].as_u64() {
        format!("if {i}")
    } else {
        "-".to_owned()
    };
    if let Some(place) = place {
        s.push_str(&format!(" ({place})"));
    }
    s
}

fn endpoint(e: &Value) -> Option<String> {
    let ip = e["ip"].as_str()?;
    let port = e["port"].as_u64().unwrap_or(0);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

fn clock(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

fn paint(s: &str, colour: &str, style: Style) -> String {
    match style {
        Style::Plain => s.to_owned(),
        Style::Ansi => format!("\x1b[{colour}m{s}\x1b[0m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoder, EventFormat};
    use warden_common::{FlowEvent, hook, mapped_v4, reason, verdict};

    fn event(h: u8, v: u8, r: u8) -> FlowEvent {
        // SAFETY: plain data, every field set or zero.
        let mut ev: FlowEvent = unsafe { std::mem::zeroed() };
        ev.hook = h;
        ev.verdict = v;
        ev.reason = r;
        ev.family = 2;
        ev.proto = 6;
        ev.daddr = mapped_v4([127, 0, 0, 1]);
        ev.dport = 11434;
        ev.comm = *b"curl\0\0\0\0\0\0\0\0\0\0\0\0";
        ev
    }

    fn render(item: crate::live::Item) -> String {
        let mut e = Encoder::new(EventFormat::Ocsf, "/nonexistent".into());
        let mut v = item.encode(&mut e);
        v["time"] = 50_587_412u64.into(); // 14:03:07.412 UTC
        let origin = |id: u64| (id == 3).then(|| "p.toml:9:1".to_owned());
        line(&v, &origin, Style::Plain)
    }

    #[test]
    fn a_deny_an_allow_a_correlated_request_and_an_xdp_drop() {
        let mut deny = event(hook::CONNECT4, verdict::DENY, reason::LOCAL_NOT_ALLOWED);
        deny.tgid = 4242;
        deny.pid = 4242;
        let deny = crate::live::Item::Flow(deny, Some("no rule allows it".into()));
        assert_eq!(
            render(deny),
            "14:03:07.412 DENY   connect4     pid 4242 curl → 127.0.0.1:11434  local_not_allowed  rule 0 no rule allows it"
        );

        let mut allow = event(hook::CONNECT4, verdict::ALLOW, reason::HOST_ALLOWED);
        allow.tgid = 77;
        allow.daddr = mapped_v4([104, 18, 0, 1]);
        allow.dport = 443;
        allow.rule_id = 3;
        let allow = crate::live::Item::Named(
            allow,
            Some("ollama may reach registry.ollama.ai tcp port 443".into()),
            "registry.ollama.ai".into(),
        );
        assert_eq!(
            render(allow),
            "14:03:07.412 ALLOW  connect4     pid 77 curl → 104.18.0.1:443 (registry.ollama.ai)  host_allowed  rule 3 ollama may reach registry.ollama.ai tcp port 443 (p.toml:9:1)"
        );

        let mut proxied = event(hook::CONNECT4, verdict::ALLOW, reason::LOCAL_ALLOWED);
        proxied.tgid = 900;
        proxied.cookie = 11;
        proxied.comm = *b"warden\0\0\0\0\0\0\0\0\0\0";
        let report: crate::correlate::ProxyReport = serde_json::from_value(serde_json::json!({
            "cookie": 11, "identity": "alice", "request_id": "r-1", "model": "llama3:8b",
            "client": "10.0.0.7:50000", "listener": "10.0.0.1:8443",
            "local": "127.0.0.1:40000", "upstream": "127.0.0.1:11434", "time_ms": 1
        }))
        .unwrap();
        let joined = crate::live::Item::Joined(proxied, None, Some(Box::new(report)));
        assert_eq!(
            render(joined),
            "14:03:07.412 ALLOW  connect4     pid 900 warden 127.0.0.1:40000 → 127.0.0.1:11434  local_allowed  via proxy: alice model llama3:8b  rule 0"
        );

        let mut xdp = event(hook::XDP, verdict::DENY, reason::INGRESS_NOT_ALLOWED);
        xdp.saddr = mapped_v4([203, 0, 113, 9]);
        xdp.sport = 51000;
        xdp.daddr = mapped_v4([10, 0, 0, 1]);
        xdp.ifindex = 2;
        xdp.comm = [0; 16];
        assert_eq!(
            render(crate::live::Item::Flow(xdp, None)),
            "14:03:07.412 DENY   xdp          if 2 203.0.113.9:51000 → 10.0.0.1:11434  ingress_not_allowed  rule 0"
        );
    }
}
