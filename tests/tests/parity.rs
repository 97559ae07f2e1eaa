//! One traffic matrix — ingress, local access, egress, bind; IPv4 and IPv6 —
//! against both backends. The verdicts must be the same, except the documented
//! gaps of the nftables backend (bind control).

use std::collections::BTreeMap;
use warden_tests::Lab;

const PORT: u16 = 11434;

/// `case → (verdict seen, verdict the policy asks for)`.
fn matrix(backend: &str) -> BTreeMap<String, (String, &'static str)> {
    let warden_tests::Topology {
        lab,
        srv,
        good,
        bad,
    } = warden_tests::topology();
    let policy = format!(
        r#"version = 1
[service]
ports = [{PORT}]
server_cgroups = ["{server}"]
[ingress]
allow = ["10.88.1.0/24", "fd00:88:1::/64"]
[local]
allow_cgroups = ["{proxy}"]
[[egress]]
cgroup = "{model}"
allow = [
  {{ net = "10.88.1.2", ports = [443], proto = "tcp" }},
  {{ net = "fd00:88:1::2", ports = [443], proto = "tcp" }},
  {{ net = "10.88.1.0/24", ports = [53], proto = "udp" }},
]
"#,
        server = lab.cgroup("server"),
        proxy = lab.cgroup("proxy"),
        model = lab.cgroup("model"),
    );
    let d = lab.daemon_with(
        Some(&srv),
        &lab.policy("p.toml", &policy),
        &["--backend", backend],
    );
    let mut server = lab.prober(Some(&srv), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    assert_eq!(server.ask(&format!("listen :: {}", PORT + 1)), "ok");
    let mut peer = lab.prober(Some(&good), None);
    for cmd in [
        "listen :: 443",
        "listen :: 8443",
        "udplisten :: 53",
        "udplisten :: 54",
    ] {
        assert_eq!(peer.ask(cmd), "ok");
    }
    let mut m = BTreeMap::new();
    let mut record = |k: String, got: String, want: &'static str| {
        m.insert(k, (got, want));
    };
    let mut good_p = lab.prober(Some(&good), None);
    let mut bad_p = lab.prober(Some(&bad), None);
    for (g, b) in [("10.88.1.1", "10.88.2.1"), ("fd00:88:1::1", "fd00:88:2::1")] {
        record(
            format!("ingress allowed source → {g}"),
            good_p.connect(g, PORT),
            "connected",
        );
        record(
            format!("ingress denied source → {b}"),
            bad_p.connect(b, PORT),
            "timeout",
        );
        record(
            format!("ingress denied source → {b} other port"),
            bad_p.connect(b, PORT + 1),
            "connected",
        );
    }
    let mut proxy = lab.prober(Some(&srv), Some("proxy/worker"));
    let mut rogue = lab.prober(Some(&srv), Some("rogue"));
    for addr in [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "10.88.1.1",
        "fd00:88:1::1",
        "0.0.0.0",
    ] {
        record(
            format!("local allowed cgroup → {addr}"),
            proxy.connect(addr, PORT),
            "connected",
        );
        record(
            format!("local rogue cgroup → {addr}"),
            rogue.connect(addr, PORT),
            "denied",
        );
        record(
            format!("local rogue cgroup → {addr} other port"),
            rogue.connect(addr, PORT + 1),
            "connected",
        );
    }
    let mut model = lab.prober(Some(&srv), Some("model"));
    for (what, cmd, want) in [
        (
            "egress tcp allowed v4",
            "connect 10.88.1.2 443 0.5",
            "connected",
        ),
        (
            "egress tcp allowed v6",
            "connect fd00:88:1::2 443 0.5",
            "connected",
        ),
        (
            "egress tcp allowed mapped",
            "connect ::ffff:10.88.1.2 443 0.5",
            "connected",
        ),
        (
            "egress tcp other port",
            "connect 10.88.1.2 8443 0.5",
            "denied",
        ),
        (
            "egress tcp other host",
            "connect 10.88.2.2 443 0.5",
            "denied",
        ),
        ("egress udp allowed", "udpsend 10.88.1.2 53", "ok"),
        ("egress udp other port", "udpsend 10.88.1.2 54", "denied"),
        (
            "egress connected udp other port",
            "udpconnect 10.88.1.2 54",
            "denied",
        ),
    ] {
        record(what.into(), model.ask(cmd), want);
    }
    // While the server is stopped, nothing else may take its port.
    assert_eq!(server.ask("close"), "ok");
    record(
        "bind by rogue cgroup".into(),
        rogue.ask(&format!("bind 0.0.0.0 {PORT}")),
        "denied",
    );
    // The same denies produce events of the same shape on both backends.
    let events = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            if d.events().iter().any(pred) {
                return "seen".to_string();
            }
            if std::time::Instant::now() > deadline {
                return "missing".to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let deny = |reason: &'static str, port: u16| {
        move |e: &serde_json::Value| {
            e["type"] == "flow"
                && e["verdict"] == "deny"
                && e["reason"] == reason
                && e["dst_port"] == port
        }
    };
    m.insert(
        "event: ingress deny names the source".into(),
        (
            events(&|e| deny("ingress_not_allowed", PORT)(e) && e["src_addr"] == "10.88.2.2"),
            "seen",
        ),
    );
    m.insert(
        "event: local deny".into(),
        (events(&deny("local_not_allowed", PORT)), "seen"),
    );
    m.insert(
        "event: egress deny".into(),
        (events(&deny("egress_not_allowed", 8443)), "seen"),
    );
    m.insert(
        "event: accepted local connection".into(),
        (
            events(&|e| e["verdict"] == "allow" && e["reason"] == "local_allowed"),
            "seen",
        ),
    );
    m
}

#[test]
fn both_backends_give_the_same_verdicts_except_documented_gaps() {
    let ebpf = matrix("ebpf");
    let nft = matrix("nft");
    let wrong: Vec<String> = ebpf
        .iter()
        .filter(|(_, (got, want))| got != want)
        .map(|(k, (got, want))| format!("ebpf {k}: {got}, policy says {want}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // nft answers a denied TCP connect with a reset (ECONNREFUSED) where the cgroup
    // hook returns EPERM: both fail at once, neither reaches the port.
    let same = |ebpf: &str, nft: &str, case: &str| {
        ebpf == nft || (ebpf == "denied" && nft == "refused" && !case.contains("udp"))
    };
    // Documented in docs/DESIGN-NOTES.md and reported by `warden status`.
    let gaps = ["bind by rogue cgroup"];
    let diffs: Vec<String> = ebpf
        .iter()
        .filter(|(k, (got, _))| !same(got, &nft[*k].0, k) && !gaps.contains(&k.as_str()))
        .map(|(k, (got, _))| format!("{k}: ebpf {got}, nft {}", nft[k].0))
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(
        nft["bind by rogue cgroup"].0, "ok",
        "the documented gap is real (if this fails, update the docs)"
    );
}

fn local_policy(lab: &Lab) -> String {
    format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("server"),
        lab.cgroup("proxy")
    )
}

#[test]
fn auto_falls_back_to_nft_loudly_and_nft_enforcement_outlives_the_daemon() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let p = lab.policy("p.toml", &local_policy(&lab));
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    // eBPF cannot start: the pin directory is not on a bpf filesystem.
    let not_bpffs = lab.run_dir.join("no-bpffs/pins");
    let not_bpffs = not_bpffs.to_str().unwrap();
    let d = lab.daemon_with(
        Some(&ns),
        &p,
        &["--backend", "auto", "--pin-dir", not_bpffs],
    );
    let ev = d.wait_event("backend_fallback", |e| e["type"] == "backend_fallback");
    assert!(
        ev["error"].as_str().unwrap().contains("bpf filesystem"),
        "{ev}"
    );
    let start = d.wait_event("start", |e| e["type"] == "start");
    assert_eq!(start["backend"], "nft");
    assert!(
        start["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g.as_str().unwrap().starts_with("bind control"))
    );
    assert!(
        std::fs::read_to_string(&d.stderr)
            .unwrap()
            .contains("warden: WARN eBPF enforcement unavailable")
    );

    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let mut proxy = lab.prober(Some(&ns), Some("proxy"));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "refused");
    assert_eq!(proxy.connect("127.0.0.1", PORT), "connected");
    d.kill();
    assert_eq!(
        rogue.connect("::ffff:127.0.0.1", PORT),
        "refused",
        "the table outlives the daemon"
    );
    assert_eq!(proxy.connect("127.0.0.1", PORT), "connected");
    let table = warden_tests::sh(&format!("ip netns exec {ns} nft list tables"));
    assert_eq!(
        table.trim(),
        format!("table inet {}", lab.nft_table),
        "exactly one table, warden's own"
    );
}

#[test]
fn a_forced_backend_that_cannot_start_fails_clearly() {
    let lab = Lab::new();
    let p = lab.policy("p.toml", &local_policy(&lab));
    let out = std::process::Command::new(warden_tests::warden_bin())
        .args([
            "--pin-dir",
            lab.run_dir.join("x/pins").to_str().unwrap(),
            "--run-dir",
            lab.run_dir.to_str().unwrap(),
        ])
        .args([
            "daemon",
            "--backend",
            "ebpf",
            "--policy",
            p.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "EX_UNAVAILABLE");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not on a bpf filesystem"), "{err}");
}
