//! Audit mode: every decision is evaluated and reported as "would block", nothing
//! is blocked; switching to enforce is an ordinary atomic reload. Both backends.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_tests::Lab;

const PORT: u16 = 11434;

/// Every check a policy makes, each with a source it does not allow; in audit
/// mode all of them go through and are reported.
fn audit_lets_everything_through_and_reports_it(backend: &str) {
    let warden_tests::Topology {
        lab,
        srv,
        good,
        bad,
    } = warden_tests::topology();
    let policy = format!(
        r#"version = 1
mode = "audit"
[service]
ports = [{PORT}]
server_cgroups = ["{server}"]
[ingress]
allow = ["10.88.1.0/24", "fd00:88:1::/64"]
[local]
allow_cgroups = ["{proxy}"]
[[egress]]
cgroup = "{model}"
allow = [{{ net = "10.88.1.2", ports = [443], proto = "tcp" }}]
"#,
        server = lab.cgroup("server"),
        proxy = lab.cgroup("proxy"),
        model = lab.cgroup("model"),
    );
    let d = lab.daemon_with(
        Some(&srv),
        &lab.policy("p.toml", &policy),
        &["--backend", backend, "--event-format", "ocsf"],
    );
    let status = lab.status();
    assert_eq!(status["policy"]["mode"], "audit", "{status:#}");
    let mut server = lab.prober(Some(&srv), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let mut peer = lab.prober(Some(&good), None);
    assert_eq!(peer.ask("listen :: 8443"), "ok");

    let mut outside = lab.prober(Some(&bad), None);
    let mut rogue = lab.prober(Some(&srv), Some("rogue"));
    let mut model = lab.prober(Some(&srv), Some("model"));
    let mut allowed = lab.prober(Some(&good), None);
    assert_eq!(outside.connect("10.88.2.1", PORT), "connected", "ingress");
    assert_eq!(
        outside.connect("fd00:88:2::1", PORT),
        "connected",
        "ingress v6"
    );
    assert_eq!(rogue.connect("127.0.0.1", PORT), "connected", "local");
    assert_eq!(model.connect("10.88.1.2", 8443), "connected", "egress");
    assert_eq!(allowed.connect("10.88.1.1", PORT), "connected", "allowed");

    let would = |reason: &'static str, port: u16| {
        move |e: &Value| {
            e["unmapped"]["warden"]["reason"] == reason
                && e["dst_endpoint"]["port"] == port
                && e["unmapped"]["warden"]["would_block"] == true
                && e["action_id"] == 1
                && e["disposition_id"] == 15
        }
    };
    let mut seen = vec![
        d.wait_event("ingress would-deny", |e| {
            would("ingress_not_allowed", PORT)(e) && e["src_endpoint"]["ip"] == "10.88.2.2"
        }),
        d.wait_event("ingress v6 would-deny", |e| {
            would("ingress_not_allowed", PORT)(e) && e["src_endpoint"]["ip"] == "fd00:88:2::2"
        }),
        d.wait_event("local would-deny", would("local_not_allowed", PORT)),
        d.wait_event("egress would-deny", would("egress_not_allowed", 8443)),
    ];
    if backend == "ebpf" {
        // Bind control (the nft backend has no bind hook: a documented gap).
        assert_eq!(server.ask("close"), "ok");
        assert_eq!(rogue.ask(&format!("bind 0.0.0.0 {PORT}")), "ok", "bind");
        seen.push(d.wait_event("bind would-deny", would("bind_not_allowed", PORT)));
    }
    // The records are valid OCSF, and nothing was reported blocked.
    let verdicts = warden_tests::validate_ocsf(&seen);
    assert!(verdicts.iter().all(|v| v.starts_with("ok")), "{verdicts:?}");
    let blocked: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|e| e["class_uid"] == 4001 && e["action_id"] != 1)
        .collect();
    assert!(blocked.is_empty(), "audit blocked: {blocked:#?}");
}

#[test]
fn ebpf_audit_lets_everything_through_and_reports_it() {
    audit_lets_everything_through_and_reports_it("ebpf");
}

#[test]
fn nft_audit_lets_everything_through_and_reports_it() {
    audit_lets_everything_through_and_reports_it("nft");
}

/// Flips one policy between audit and enforce while a rogue local client and a
/// restricted model server keep connecting. Every attempt is reported exactly
/// once with the verdict it got, and (eBPF, whose records carry the policy
/// generation) every generation judged both sections in the same mode.
fn flips_between_audit_and_enforce_atomically(backend: &str) {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let enforce = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[[egress]]\ncgroup = \"{}\"\nallow = []\n",
        lab.cgroup("server"),
        lab.cgroup("model")
    );
    let audit = enforce.replacen("version = 1\n", "version = 1\nmode = \"audit\"\n", 1);
    let p = lab.policy("p.toml", &audit);
    let d = lab.daemon_with(Some(&ns), &p, &["--backend", backend]);
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 127.0.0.1 {PORT}")), "ok");
    assert_eq!(server.ask(&format!("listen 127.0.0.1 {}", PORT + 1)), "ok");

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let (mut rogue, mut model) = (
            lab.prober(Some(&ns), Some("rogue")),
            lab.prober(Some(&ns), Some("model")),
        );
        let (stop, results) = (stop.clone(), results.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Each attempt from a port of its own: one attempt, one SYN
                // (nft judges packets, and a reused 4-tuple can cost two).
                let r = (
                    rogue.ask(&format!("connect 127.0.0.1 {PORT} 0.5 fresh")),
                    model.ask(&format!("connect 127.0.0.1 {} 0.5 fresh", PORT + 1)),
                );
                results.lock().unwrap().push(r);
                // A steady stream, not a flood (losses under a flood are counted,
                // not attributed to a verdict).
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let flips = 20;
    for i in 0..flips {
        std::thread::sleep(Duration::from_millis(50));
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, if i % 2 == 0 { &enforce } else { &audit }).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        d.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        while warden_tests::state_generation(&lab) < i + 2 {
            assert!(Instant::now() < deadline, "flip {i} not applied");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    let results = results.lock().unwrap().clone();

    // Each attempt is one record; wait until they are all written.
    let flows = |reason: &str| {
        let events = d.events();
        events
            .into_iter()
            .filter(|e| e["type"] == "flow" && e["reason"] == reason)
            .collect::<Vec<Value>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while flows("local_not_allowed").len() + flows("egress_not_allowed").len() < 2 * results.len()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // What a blocked connect looks like: EPERM from a cgroup hook, a reset from nft.
    let blocked = if backend == "nft" {
        "refused"
    } else {
        "denied"
    };
    for (pick, reason) in [(0, "local_not_allowed"), (1, "egress_not_allowed")] {
        let got = |want: &str| {
            results
                .iter()
                .filter(|r| (if pick == 0 { &r.0 } else { &r.1 }) == want)
                .count()
        };
        let events = flows(reason);
        let count = |v: &str| events.iter().filter(|e| e["verdict"] == v).count();
        let lost = &lab.status()["events"];
        // A let-through attempt whose handshake outlived the probe's 0.5 s
        // (a full accept queue on a loaded machine) is a would-deny that
        // timed out: reported once all the same.
        // Its SYN, retransmitted once the flip to enforce has landed, is
        // judged again by the egress packet hook: one deny more, at most one
        // per timed-out attempt.
        let let_through = got("connected") + got("timeout");
        let what = format!(
            "{reason}: probes (connected or timed out, {blocked}) against events (would_deny, deny); {} probes ({} timed out); losses {lost}",
            results.len(),
            got("timeout"),
        );
        // nft records packets, not connect() calls: a let-through attempt
        // whose SYN went out twice (a reused 4-tuple answered with a
        // challenge, then a new SYN; about one in several thousand here) is
        // two records. Counted as such, at most one per thousand attempts;
        // the eBPF hooks record each call once, exactly.
        let duplicates = if backend == "nft" {
            1 + results.len() / 1000
        } else {
            0
        };
        assert!(
            (let_through..=let_through + duplicates).contains(&count("would_deny")),
            "{what}: {} would_deny for {let_through} let through",
            count("would_deny")
        );
        assert!(
            (got(blocked)..=got(blocked) + got("timeout")).contains(&count("deny")),
            "{what}: {} denies",
            count("deny")
        );
        assert_eq!(
            let_through + got(blocked),
            results.len(),
            "{reason}: only connected, timed out or {blocked}"
        );
        assert!(
            got("connected") > 0 && got(blocked) > 0,
            "{reason}: both modes were in force"
        );
    }
    if backend == "ebpf" {
        // Generation 1 audits, 2 enforces, 3 audits, ...: one mode per generation.
        let mut modes: std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> =
            Default::default();
        for e in flows("local_not_allowed")
            .into_iter()
            .chain(flows("egress_not_allowed"))
        {
            modes
                .entry(e["generation"].as_u64().unwrap())
                .or_default()
                .insert(e["verdict"].as_str().unwrap().to_owned());
        }
        for (generation, verdicts) in &modes {
            let want = if generation % 2 == 1 {
                "would_deny"
            } else {
                "deny"
            };
            assert_eq!(
                verdicts.iter().collect::<Vec<_>>(),
                [want],
                "generation {generation}"
            );
        }
        assert!(
            modes.len() > flips as usize / 2,
            "generations seen: {modes:?}"
        );
    }
}

#[test]
fn ebpf_flips_between_audit_and_enforce_atomically() {
    flips_between_audit_and_enforce_atomically("ebpf");
}

#[test]
fn nft_flips_between_audit_and_enforce_atomically() {
    flips_between_audit_and_enforce_atomically("nft");
}
