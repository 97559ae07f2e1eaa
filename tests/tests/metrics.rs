//! The Prometheus endpoints of the daemon and the proxy, scraped with curl and
//! read with the reference parser (prometheus_client).

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warden_tests::proxy::{Placement, ProxyLab, helper, python};
use warden_tests::{Lab, enter};

const PORT: u16 = 11434;

/// `curl http://ADDR/metrics` (in `ns`), parsed: one JSON object per sample.
fn scrape(ns: Option<&str>, addr: &str) -> Vec<Value> {
    let mut curl = Command::new("curl");
    curl.args(["-sf", &format!("http://{addr}/metrics")]);
    enter(&mut curl, ns, None);
    let out = curl.output().unwrap();
    assert!(out.status.success(), "scrape {addr} failed");
    let mut parse = Command::new(python())
        .arg(helper("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parse.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = parse.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the reference parser rejects the exposition: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

#[test]
fn daemon_metrics_count_rules_drops_and_the_policy_in_force() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let policy = lab.policy(
        "p.toml",
        &format!(
            "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
            lab.cgroup("server"),
            lab.cgroup("client")
        ),
    );
    let _d = lab.daemon_with(Some(&ns), &policy, &["--metrics", "127.0.0.1:9464"]);
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 127.0.0.1 {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let mut client = lab.prober(Some(&ns), Some("client"));
    for _ in 0..3 {
        assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    }
    assert_eq!(client.connect("127.0.0.1", PORT), "connected");

    let m = scrape(Some(&ns), "127.0.0.1:9464");
    assert_eq!(value(&m, "warden_enforcing", &[]), Some(1.0));
    assert_eq!(
        value(&m, "warden_backend_info", &[("backend", "ebpf")]),
        Some(1.0)
    );
    assert_eq!(value(&m, "warden_policy_generation", &[]), Some(1.0));
    assert_eq!(
        value(&m, "warden_policy_info", &[("mode", "enforce")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "warden_rule_hits_total",
            &[("rule", "0"), ("kind", "default-deny")]
        ),
        Some(3.0),
        "three denied connects"
    );
    let local = m
        .iter()
        .find(|s| s["name"] == "warden_rule_hits_total" && s["labels"]["kind"] == "local")
        .expect("the local rule");
    assert_eq!(local["value"], 1.0);
    assert!(
        local["labels"]["origin"]
            .as_str()
            .unwrap()
            .ends_with("p.toml:6:18")
    );
    assert_eq!(value(&m, "warden_kernel_events_lost_total", &[]), Some(0.0));
    // Event delivery, as the state file reports it (updated as it changes).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(Some(&ns), "127.0.0.1:9464");
        if value(&m, "warden_events_records_total", &[]).unwrap_or(0.0) >= 4.0 {
            assert!(m.iter().any(|s| s["name"] == "warden_sink_written_total"));
            break;
        }
        assert!(Instant::now() < deadline, "records never counted: {m:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn proxy_metrics_count_requests_by_identity_route_group_and_status() {
    let mut lab = ProxyLab::start_in(
        "[[identity]]\nname = \"alice\"\ntokens = [\"@token:alice@\"]\nmodels = [\"llama3*\"]\n",
        &[],
        Placement {
            top: "metrics = \"127.0.0.1:0\"".into(),
            ..Default::default()
        },
    );
    let token = lab.token("alice").to_owned();
    assert_eq!(lab.get("/api/tags", &token).0, 200);
    assert_eq!(
        lab.post(
            "/api/generate",
            &token,
            r#"{"model":"llama3","prompt":"hi","stream":false}"#
        )
        .0,
        200
    );
    assert_eq!(lab.get("/api/tags", "wrong-token").0, 401);
    assert_eq!(
        lab.post("/api/pull", &token, r#"{"model":"llama3"}"#).0,
        403,
        "not an admin"
    );
    let log = lab.proxy_log();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
        .to_owned();
    // Records are counted as they are written, right after each response.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(None, &addr);
        let total: f64 = m
            .iter()
            .filter(|s| s["name"] == "warden_proxy_requests_total")
            .map(|s| s["value"].as_f64().unwrap())
            .sum();
        if total >= 4.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let req = |identity: &str, group: &str, status: &str| {
        value(
            &m,
            "warden_proxy_requests_total",
            &[
                ("identity", identity),
                ("route_group", group),
                ("status", status),
            ],
        )
    };
    assert_eq!(req("alice", "list", "200"), Some(1.0), "{m:#?}");
    assert_eq!(req("alice", "inference", "200"), Some(1.0));
    assert_eq!(req("-", "list", "401"), Some(1.0));
    assert_eq!(req("alice", "model_admin", "403"), Some(1.0));
    assert_eq!(
        value(&m, "warden_proxy_request_duration_seconds_count", &[]),
        Some(4.0)
    );
    assert!(value(&m, "warden_proxy_time_to_first_byte_seconds_count", &[]).unwrap() >= 2.0);
    assert_eq!(value(&m, "warden_proxy_active_requests", &[]), Some(0.0));
    let _ = lab.stop();
}
