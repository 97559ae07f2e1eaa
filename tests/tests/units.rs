//! The shipped systemd units: the daemon works with exactly the capabilities
//! its unit leaves it, and both units keep the hardening the docs report.

use warden_tests::{Daemon, sh, topology, workspace};

fn unit(name: &str) -> String {
    std::fs::read_to_string(workspace().join("packaging/systemd").join(name)).unwrap()
}

/// `CapabilityBoundingSet=` of a unit as a `setpriv --bounding-set` argument.
fn bounding_set(unit: &str) -> String {
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_daemon_enforces_with_only_its_units_capabilities() {
    let t = topology();
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n\
         [ingress]\ninterfaces = [\"*\"]\nallow = [\"10.88.1.0/24\"]\n\
         [local]\nallow_cgroups = []\n",
        t.lab.cgroup("server")
    );
    let caps = bounding_set(&unit("ollama-warden.service"));
    let d = Daemon::start_under(
        &[
            "setpriv",
            "--bounding-set",
            &caps,
            "--inh-caps",
            "-all",
            "--",
        ],
        &t.lab,
        Some(&t.srv),
        &t.lab.policy("p.toml", &policy),
        // No fallback: the eBPF backend must load with these capabilities,
        // and the resolver of host rules bind its privileged port (in the
        // lab's namespace).
        &["--backend", "ebpf", "--dns-port", "54"],
    );
    let status = t.lab.status();
    assert_eq!(status["backend"], "ebpf", "{status}");
    let resolver = warden_tests::sh(&format!("ip netns exec {} ss -Hlun 'sport = :54'", t.srv));
    assert!(
        resolver.contains("127.0.0.1:54"),
        "the resolver bound its port: {resolver:?}"
    );
    let mut server = t.lab.prober(Some(&t.srv), Some("server"));
    assert_eq!(server.ask("listen :: 11434"), "ok");
    let mut good = t.lab.prober(Some(&t.good), None);
    let mut bad = t.lab.prober(Some(&t.bad), None);
    assert_eq!(good.connect("10.88.1.1", 11434), "connected");
    assert_eq!(bad.connect("10.88.2.1", 11434), "timeout");
    let mut local = t.lab.prober(Some(&t.srv), Some("rogue"));
    assert_eq!(local.connect("127.0.0.1", 11434), "denied");
    let ev = d.wait_event("the local denial", |e| {
        e["hook"] == "connect4" && e["verdict"] == "deny"
    });
    assert_eq!(ev["reason"], "local_not_allowed", "{ev}");
}

#[test]
fn both_units_keep_their_hardening() {
    // Exposure as `systemd-analyze security` scores it (0 = locked down, 10 =
    // fully exposed); docs/OPERATIONS.md reports these figures.
    for (name, max) in [
        ("ollama-warden.service", 2.9),
        ("ollama-warden-proxy.service", 1.4),
    ] {
        let path = workspace().join("packaging/systemd").join(name);
        let out = sh(&format!(
            "systemd-analyze security --offline=true {} 2>&1",
            path.display()
        ));
        let score: f64 = out
            .lines()
            .find_map(|l| l.split("exposure level for ").nth(1))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no score: {out}"));
        assert!(score <= max, "{name}: exposure {score} > {max}\n{out}");
    }
}
