//! The daemon's metrics (Prometheus text): the [`StatusReport`] rendered, the
//! same pinned counters and state file `warden status` reads, at scrape time.

use std::fmt::Write as _;

use warden_runtime::metrics::{help, label};

use warden_events::pipeline::{Losses, SinkLosses};

use crate::status::{KernelCounters, StatusReport};

/// The daemon's metrics, from a status report.
pub fn render_daemon(r: &StatusReport) -> String {
    let mut o = String::new();
    enforcement(&mut o, r);
    if let Some(rules) = &r.rules {
        rule_hits(&mut o, rules);
    }
    if let Some(c) = &r.counters {
        for (name, text, field) in KERNEL_COUNTERS {
            counter(&mut o, name, text, field(c));
        }
    }
    gauge(
        &mut o,
        "warden_bans",
        "Sources banned now",
        r.bans.len() as u64,
    );
    if !r.proxy_certificates.is_empty() {
        let name = "warden_proxy_certificate_expiry_seconds";
        help(
            &mut o,
            name,
            "gauge",
            "Seconds until the proxy's certificate expires (negative: expired)",
        );
        for c in &r.proxy_certificates {
            let _ = writeln!(
                o,
                "{name}{{certificate=\"{}\",subject=\"{}\"}} {}",
                label(&c.certificate),
                label(&c.subject),
                c.seconds_left
            );
        }
    }
    if let Some(d) = &r.dns {
        let name = "warden_dns_questions_total";
        help(
            &mut o,
            name,
            "counter",
            "Questions the resolver for host rules took, by outcome",
        );
        for (outcome, n) in [
            ("answered", d.answered),
            ("refused", d.refused),
            ("failed", d.failed),
            ("dropped", d.dropped),
        ] {
            let _ = writeln!(o, "{name}{{outcome=\"{outcome}\"}} {n}");
        }
        gauge(
            &mut o,
            "warden_dns_learned_addresses",
            "Addresses allowed now for host rules (name, address pairs)",
            d.learned,
        );
    }
    if let Some(e) = &r.events {
        for (key, text, field) in EVENT_COUNTERS {
            counter(
                &mut o,
                &format!("warden_events_{key}_total"),
                text,
                field(e),
            );
        }
        for (key, text, field) in SINK_COUNTERS {
            let name = format!("warden_sink_{key}_total");
            help(&mut o, &name, "counter", text);
            for s in &e.sinks {
                let _ = writeln!(o, "{name}{{sink=\"{}\"}} {}", label(&s.sink), field(s));
            }
        }
    }
    o
}

/// Whether warden enforces, with which backend, and which policy.
fn enforcement(o: &mut String, r: &StatusReport) {
    let enforcing = u64::from(r.enforcing);
    gauge(
        o,
        "warden_enforcing",
        "1 while warden's enforcement is attached",
        enforcing,
    );
    help(
        o,
        "warden_backend_info",
        "gauge",
        "The enforcement backend in use",
    );
    let _ = writeln!(
        o,
        "warden_backend_info{{backend=\"{}\"}} 1",
        r.backend.as_str()
    );
    let generation = r.generation.unwrap_or(0).into();
    gauge(
        o,
        "warden_policy_generation",
        "Generation of the policy in force",
        generation,
    );
    if let Some(p) = &r.policy {
        let text = "The policy in force: digest and mode (enforce, audit, mixed)";
        help(o, "warden_policy_info", "gauge", text);
        let (digest, mode) = (label(&p.digest), p.mode.as_str());
        let _ = writeln!(
            o,
            "warden_policy_info{{digest=\"{digest}\",mode=\"{mode}\"}} 1"
        );
    }
}

fn rule_hits(o: &mut String, rules: &[crate::status::RuleHits]) {
    let text = "Verdicts per policy rule (rule 0 is the default deny); packets for XDP and nft, calls for cgroup hooks";
    help(o, "warden_rule_hits_total", "counter", text);
    for rule in rules {
        let (kind, origin) = (label(&rule.kind), label(&rule.origin));
        let _ = writeln!(
            o,
            "warden_rule_hits_total{{rule=\"{}\",kind=\"{kind}\",origin=\"{origin}\"}} {}",
            rule.id, rule.hits
        );
    }
}

type Field<T> = fn(&T) -> u64;

const KERNEL_COUNTERS: [(&str, &str, Field<KernelCounters>); 5] = [
    (
        "warden_kernel_events_lost_total",
        "Flow records the kernel could not queue (ring buffer full)",
        |c| c.events_lost,
    ),
    (
        "warden_kernel_events_suppressed_total",
        "Flow records not emitted because a CPU's event budget was spent",
        |c| c.events_suppressed,
    ),
    (
        "warden_malformed_dropped_total",
        "Frames dropped because they could not be classified",
        |c| c.malformed_dropped,
    ),
    (
        "warden_fragments_passed_total",
        "Non-first IP fragments passed",
        |c| c.fragments_passed,
    ),
    (
        "warden_banned_dropped_total",
        "Packets from banned sources dropped by XDP",
        |c| c.banned_dropped,
    ),
];

const EVENT_COUNTERS: [(&str, &str, Field<Losses>); 6] = [
    ("records", "Flow records read from the kernel", |e| {
        e.records
    }),
    (
        "queue_dropped",
        "Records dropped because the encoder's queue was full",
        |e| e.queue_dropped,
    ),
    ("aggregated", "Denies folded into aggregate events", |e| {
        e.aggregated
    }),
    ("proxy_reports", "Reports received from the proxy", |e| {
        e.proxy_reports
    }),
    (
        "correlated",
        "Local connections joined with a proxy report",
        |e| e.correlated,
    ),
    (
        "unattributed",
        "Local connections to a protected port no proxy report explained",
        |e| e.unattributed,
    ),
];

const SINK_COUNTERS: [(&str, &str, Field<SinkLosses>); 3] = [
    ("written", "Events written, per sink", |s| s.written),
    (
        "dropped",
        "Events dropped because a sink's queue was full, per sink",
        |s| s.dropped,
    ),
    ("failed", "Events lost to write errors, per sink", |s| {
        s.failed
    }),
];

fn gauge(o: &mut String, name: &str, text: &str, v: u64) {
    help(o, name, "gauge", text);
    let _ = writeln!(o, "{name} {v}");
}

fn counter(o: &mut String, name: &str, text: &str, v: u64) {
    help(o, name, "counter", text);
    let _ = writeln!(o, "{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn daemon_metrics_render_the_status_report() {
        let r: StatusReport = serde_json::from_value(json!({
            "enforcing": true, "backend": "ebpf", "generation": 3, "pin_dir": "/p",
            "daemon": { "running": true, "pid": 7 }, "links": [], "bans": [],
            "policy": { "digest": "sha256:ab", "mode": "mixed", "audit": [], "sources": [],
                        "ports": [11434], "unresolved_cgroups": [] },
            "rules": [{ "id": 0, "kind": "default-deny", "description": "", "origin": "", "hits": 7 },
                      { "id": 1, "kind": "local", "description": "", "origin": "p.toml:5:3", "hits": 2 }],
            "counters": { "events_lost": 1, "events_suppressed": 0, "malformed_dropped": 0,
                          "fragments_passed": 0, "banned_dropped": 0 },
            "events": { "kernel_lost": 0, "records": 9, "queue_dropped": 0, "aggregated": 0,
                        "sinks": [{ "sink": "stdout", "written": 9, "dropped": 0, "failed": 0, "pending": 0 }] },
            "proxy_certificates": [{ "certificate": "server", "subject": "CN=gpu1", "path": "/etc/c.pem",
                                     "not_after": 100, "seconds_left": 86400 }],
            "dns": { "answered": 5, "refused": 2, "failed": 0, "dropped": 0, "learned": 3 },
        }))
        .unwrap();
        let m = render_daemon(&r);
        assert!(
            m.contains("warden_rule_hits_total{rule=\"0\",kind=\"default-deny\",origin=\"\"} 7\n")
        );
        assert!(m.contains("warden_policy_info{digest=\"sha256:ab\",mode=\"mixed\"} 1\n"));
        assert!(m.contains("warden_kernel_events_lost_total 1\n"));
        assert!(m.contains("warden_sink_written_total{sink=\"stdout\"} 9\n"));
        assert!(m.contains("warden_enforcing 1\n") && m.contains("warden_policy_generation 3\n"));
        assert!(m.contains(
            "warden_proxy_certificate_expiry_seconds{certificate=\"server\",subject=\"CN=gpu1\"} 86400\n"
        ));
        assert!(m.contains("warden_dns_questions_total{outcome=\"refused\"} 2\n"));
        assert!(m.contains("warden_dns_learned_addresses 3\n"));
        // Every sample line belongs to a declared metric.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(m.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
