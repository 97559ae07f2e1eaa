//! Prometheus text exposition (format 0.0.4) for the daemon and the proxy, on
//! a small HTTP/1.1 endpoint (`GET /metrics`), loopback unless told otherwise.
//!
//! The daemon's metrics are `warden status --json` rendered: the same pinned
//! counters and state file, read at scrape time. The proxy's are counted as
//! each request's audit record is written.

use crate::sync::Locked;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `render()` at `GET /metrics` on `addr` from a thread of its own.
pub fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let mut n = 0;
                // The request head; its body (there is none for GET) is ignored.
                while n < buf.len() {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or("");
                let mut parts = line.split(' ');
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, ctype, body) = match (method, target.split('?').next()) {
                    ("GET", Some("/metrics")) => ("200 OK", CONTENT_TYPE, render()),
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
                    _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

/// A label value, escaped for the exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The daemon's metrics, from a `warden status --json` report.
pub fn render_daemon(r: &Value) -> String {
    let mut o = String::new();
    help(
        &mut o,
        "warden_enforcing",
        "gauge",
        "1 while warden's enforcement is attached",
    );
    let _ = writeln!(o, "warden_enforcing {}", u8::from(r["enforcing"] == true));
    help(
        &mut o,
        "warden_backend_info",
        "gauge",
        "The enforcement backend in use",
    );
    let _ = writeln!(
        o,
        "warden_backend_info{{backend=\"{}\"}} 1",
        label(r["backend"].as_str().unwrap_or("none"))
    );
    help(
        &mut o,
        "warden_policy_generation",
        "gauge",
        "Generation of the policy in force",
    );
    let _ = writeln!(o, "warden_policy_generation {}", u(&r["generation"]));
    if let Some(mode) = r["policy"]["mode"].as_str() {
        help(
            &mut o,
            "warden_policy_info",
            "gauge",
            "The policy in force: digest and mode (enforce, audit, mixed)",
        );
        let _ = writeln!(
            o,
            "warden_policy_info{{digest=\"{}\",mode=\"{}\"}} 1",
            label(r["policy"]["digest"].as_str().unwrap_or("")),
            label(mode)
        );
    }
    if let Some(rules) = r["rules"].as_array() {
        help(
            &mut o,
            "warden_rule_hits_total",
            "counter",
            "Verdicts per policy rule (rule 0 is the default deny); packets for XDP and nft, calls for cgroup hooks",
        );
        for rule in rules {
            let _ = writeln!(
                o,
                "warden_rule_hits_total{{rule=\"{}\",kind=\"{}\",origin=\"{}\"}} {}",
                u(&rule["id"]),
                label(rule["kind"].as_str().unwrap_or("")),
                label(rule["origin"].as_str().unwrap_or("")),
                u(&rule["hits"])
            );
        }
    }
    for (key, name, text) in [
        (
            "events_lost",
            "warden_kernel_events_lost_total",
            "Flow records the kernel could not queue (ring buffer full)",
        ),
        (
            "events_suppressed",
            "warden_kernel_events_suppressed_total",
            "Flow records not emitted because a CPU's event budget was spent",
        ),
        (
            "malformed_dropped",
            "warden_malformed_dropped_total",
            "Frames dropped because they could not be classified",
        ),
        (
            "fragments_passed",
            "warden_fragments_passed_total",
            "Non-first IP fragments passed",
        ),
        (
            "banned_dropped",
            "warden_banned_dropped_total",
            "Packets from banned sources dropped by XDP",
        ),
    ] {
        if let Some(v) = r["counters"].get(key) {
            help(&mut o, name, "counter", text);
            let _ = writeln!(o, "{name} {}", u(v));
        }
    }
    if let Some(bans) = r["bans"].as_array() {
        help(&mut o, "warden_bans", "gauge", "Sources banned now");
        let _ = writeln!(o, "warden_bans {}", bans.len());
    }
    let e = &r["events"];
    if e.is_object() {
        for (key, text) in [
            ("records", "Flow records read from the kernel"),
            (
                "queue_dropped",
                "Records dropped because the encoder's queue was full",
            ),
            ("aggregated", "Denies folded into aggregate events"),
            ("proxy_reports", "Reports received from the proxy"),
            ("correlated", "Local connections joined with a proxy report"),
            (
                "unattributed",
                "Local connections to a protected port no proxy report explained",
            ),
        ] {
            let name = format!("warden_events_{key}_total");
            help(&mut o, &name, "counter", text);
            let _ = writeln!(o, "{name} {}", u(&e[key]));
        }
        if let Some(sinks) = e["sinks"].as_array() {
            for (key, text) in [
                ("written", "Events written, per sink"),
                (
                    "dropped",
                    "Events dropped because a sink's queue was full, per sink",
                ),
                ("failed", "Events lost to write errors, per sink"),
            ] {
                let name = format!("warden_sink_{key}_total");
                help(&mut o, &name, "counter", text);
                for s in sinks {
                    let _ = writeln!(
                        o,
                        "{name}{{sink=\"{}\"}} {}",
                        label(s["sink"].as_str().unwrap_or("")),
                        u(&s[key])
                    );
                }
            }
        }
    }
    o
}

/// Latency buckets (seconds): from a cached answer to a long generation.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The proxy's request metrics, updated as each request's record is written.
#[derive(Default)]
pub struct ProxyMetrics {
    /// (identity, route group, status) → requests. Bounded: identities come
    /// from the config, groups from the route table, statuses from HTTP.
    requests: Mutex<HashMap<(String, &'static str, u16), u64>>,
    duration: Histogram,
    ttfb: Histogram,
    /// Requests being answered now (streams included).
    pub in_flight: AtomicI64,
}

impl ProxyMetrics {
    pub fn request(
        &self,
        identity: Option<&str>,
        group: &'static str,
        status: u16,
        duration: Duration,
        ttfb: Option<Duration>,
    ) {
        let key = (identity.unwrap_or("-").to_owned(), group, status);
        *self.requests.locked().entry(key).or_default() += 1;
        self.duration.observe(duration);
        if let Some(t) = ttfb {
            self.ttfb.observe(t);
        }
    }

    /// `extra`: further counters as (name, help, value).
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut o = String::new();
        help(
            &mut o,
            "warden_proxy_requests_total",
            "counter",
            "Requests by identity (- = none), route group and status",
        );
        let mut rows: Vec<_> = self
            .requests
            .locked()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        rows.sort();
        for ((identity, group, status), n) in rows {
            let _ = writeln!(
                o,
                "warden_proxy_requests_total{{identity=\"{}\",route_group=\"{group}\",status=\"{status}\"}} {n}",
                label(&identity)
            );
        }
        help(
            &mut o,
            "warden_proxy_request_duration_seconds",
            "histogram",
            "Time from request to the end of the response",
        );
        self.duration
            .render(&mut o, "warden_proxy_request_duration_seconds");
        help(
            &mut o,
            "warden_proxy_time_to_first_byte_seconds",
            "histogram",
            "Time from request to the first response byte from Ollama",
        );
        self.ttfb
            .render(&mut o, "warden_proxy_time_to_first_byte_seconds");
        help(
            &mut o,
            "warden_proxy_active_requests",
            "gauge",
            "Requests being answered now, streams included",
        );
        let _ = writeln!(
            o,
            "warden_proxy_active_requests {}",
            self.in_flight.load(Relaxed)
        );
        for (name, text, v) in extra {
            help(&mut o, name, "counter", text);
            let _ = writeln!(o, "{name} {v}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn daemon_metrics_render_the_status_report() {
        let r = json!({
            "enforcing": true, "backend": "ebpf", "generation": 3,
            "policy": { "digest": "sha256:ab", "mode": "mixed" },
            "rules": [{ "id": 0, "kind": "default-deny", "origin": "", "hits": 7 },
                      { "id": 1, "kind": "local", "origin": "p.toml:5:3", "hits": 2 }],
            "counters": { "events_lost": 1, "events_suppressed": 0, "malformed_dropped": 0, "fragments_passed": 0 },
            "events": { "records": 9, "sinks": [{ "sink": "stdout", "written": 9, "dropped": 0, "failed": 0 }] },
        });
        let m = render_daemon(&r);
        assert!(
            m.contains("warden_rule_hits_total{rule=\"0\",kind=\"default-deny\",origin=\"\"} 7\n")
        );
        assert!(m.contains("warden_policy_info{digest=\"sha256:ab\",mode=\"mixed\"} 1\n"));
        assert!(m.contains("warden_kernel_events_lost_total 1\n"));
        assert!(m.contains("warden_sink_written_total{sink=\"stdout\"} 9\n"));
        // Every sample line belongs to a declared metric.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(m.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[test]
    fn histograms_are_cumulative() {
        let p = ProxyMetrics::default();
        p.request(
            Some("alice"),
            "inference",
            200,
            Duration::from_millis(3),
            Some(Duration::from_micros(900)),
        );
        p.request(None, "none", 401, Duration::from_secs(60), None);
        let m = p.render(&[]);
        assert!(m.contains("warden_proxy_requests_total{identity=\"alice\",route_group=\"inference\",status=\"200\"} 1"));
        assert!(m.contains(
            "warden_proxy_requests_total{identity=\"-\",route_group=\"none\",status=\"401\"} 1"
        ));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(m.contains("warden_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(m.contains("warden_proxy_time_to_first_byte_seconds_bucket{le=\"0.001\"} 1\n"));
    }
}
