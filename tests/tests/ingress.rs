//! XDP ingress allowlist with real traffic over veth, IPv4 and IPv6, and the
//! frame parser against crafted frames (BPF_PROG_TEST_RUN through bpftool).

use warden_tests::{Lab, sh, topology};

const PORT: u16 = 11434;

fn policy(lab: &Lab) -> String {
    format!(
        r#"version = 1
[service]
ports = [{PORT}]
server_cgroups = ["{}"]
[ingress]
interfaces = ["*"]
allow = ["10.88.1.0/24", "fd00:88:1::/64"]
"#,
        lab.cgroup("server")
    )
}

#[test]
fn remote_sources_outside_the_allowlist_are_dropped() {
    let t = topology();
    let d = t
        .lab
        .daemon(Some(&t.srv), &t.lab.policy("p.toml", &policy(&t.lab)));
    let mut server = t.lab.prober(Some(&t.srv), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    assert_eq!(server.ask(&format!("listen :: {}", PORT + 1)), "ok");
    let mut good = t.lab.prober(Some(&t.good), None);
    let mut bad = t.lab.prober(Some(&t.bad), None);

    for (g, b) in [("10.88.1.1", "10.88.2.1"), ("fd00:88:1::1", "fd00:88:2::1")] {
        assert_eq!(good.connect(g, PORT), "connected", "allowed source to {g}");
        assert_eq!(bad.connect(b, PORT), "timeout", "denied source to {b}");
        assert_eq!(
            bad.connect(b, PORT + 1),
            "connected",
            "other ports pass untouched ({b})"
        );
    }
    for (src, family) in [("10.88.2.2", "ipv4"), ("fd00:88:2::2", "ipv6")] {
        let ev = d.wait_event(&format!("xdp deny of {src}"), |e| {
            e["hook"] == "xdp" && e["src_addr"] == src
        });
        assert_eq!(ev["verdict"], "deny");
        assert_eq!(ev["reason"], "ingress_not_allowed");
        assert_eq!(ev["dst_port"], PORT);
        assert_eq!(ev["family"], family);
        assert!(ev["ifindex"].as_u64().unwrap() > 0);
    }
    for src in ["10.88.1.2", "fd00:88:1::2"] {
        let ev = d.wait_event(&format!("xdp allow of {src}"), |e| {
            e["hook"] == "xdp" && e["src_addr"] == src
        });
        assert_eq!(ev["verdict"], "allow");
        assert_eq!(
            ev["rule"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .contains(':'),
            src.contains(':')
        );
    }
    assert!(
        d.events().iter().all(|e| e["dst_port"] != PORT + 1),
        "no events for other ports"
    );
    let xdp: Vec<_> = t.lab.status()["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.as_str().unwrap().starts_with("xdp-"))
        .cloned()
        .collect();
    assert_eq!(
        xdp.len(),
        2,
        "one XDP link per non-loopback interface: {xdp:?}"
    );
}

#[test]
fn interfaces_that_appear_later_are_covered() {
    let mut t = topology();
    // One source on the network that appears later is allowed, one is not.
    let text = policy(&t.lab).replace("\"10.88.1.0/24\"", "\"10.88.1.0/24\", \"10.88.3.3/32\"");
    let d = t.lab.daemon(Some(&t.srv), &t.lab.policy("p.toml", &text));
    let late = t.lab.netns("late");
    t.lab.veth(
        &t.srv,
        &["10.88.3.1/24"],
        &late,
        &["10.88.3.2/24", "10.88.3.3/24"],
    );
    d.wait_event("attachment of the new interface", |e| {
        e["type"] == "attachments_changed"
    });
    let mut server = t.lab.prober(Some(&t.srv), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let mut client = t.lab.prober(Some(&late), None);
    assert_eq!(
        client.ask(&format!("connectfrom 10.88.3.2 10.88.3.1 {PORT}")),
        "timeout",
        "dropped on the new interface"
    );
    assert_eq!(
        client.ask(&format!("connectfrom 10.88.3.3 10.88.3.1 {PORT}")),
        "connected",
        "the allowed source passes on the new interface"
    );
}

#[test]
fn single_hosts_are_matched_with_and_without_prefixes_and_swapped_out() {
    // Hosts (/32, /128) live in a hash map the program reads first; other
    // prefixes in the trie, walked only when the slot has any.
    let t = topology();
    let with = |allow: &str| {
        format!(
            "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n\
             [ingress]\ninterfaces = [\"*\"]\nallow = [{allow}]\n",
            t.lab.cgroup("server")
        )
    };
    let path = t
        .lab
        .policy("p.toml", &with(r#""10.88.2.2/32", "fd00:88:2::2/128""#));
    let d = t.lab.daemon(Some(&t.srv), &path);
    let mut server = t.lab.prober(Some(&t.srv), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let mut good = t.lab.prober(Some(&t.good), None);
    let mut bad = t.lab.prober(Some(&t.bad), None);
    let check =
        |good: &mut warden_tests::Prober, bad: &mut warden_tests::Prober, g: &str, b: &str| {
            for (p, addr4, addr6, want) in [
                (good, "10.88.1.1", "fd00:88:1::1", g),
                (bad, "10.88.2.1", "fd00:88:2::1", b),
            ] {
                assert_eq!(p.connect(addr4, PORT), want, "to {addr4}");
                assert_eq!(p.connect(addr6, PORT), want, "to {addr6}");
            }
        };
    // Hosts only.
    check(&mut good, &mut bad, "timeout", "connected");
    let ev = d.wait_event("allow of the listed host", |e| {
        e["hook"] == "xdp" && e["src_addr"] == "10.88.2.2" && e["verdict"] == "allow"
    });
    assert!(
        ev["rule"].as_str().unwrap().contains("10.88.2.2/32"),
        "{ev}"
    );
    // Hosts and a prefix.
    let reload = |text: String, generation: u32| {
        std::fs::write(&path, text).unwrap();
        d.wait_event("reload", |e| {
            e["type"] == "policy_applied" && e["generation"] == generation
        });
    };
    reload(
        with(r#""10.88.1.0/24", "fd00:88:1::/64", "10.88.2.2/32", "fd00:88:2::2/128""#),
        2,
    );
    check(&mut good, &mut bad, "connected", "connected");
    // The hosts are gone from the new slot, the prefix stays.
    reload(with(r#""10.88.1.0/24", "fd00:88:1::/64""#), 3);
    check(&mut good, &mut bad, "connected", "timeout");
}

// ---- crafted frames ----

const DROP: u32 = 1;
const PASS: u32 = 2;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(src: [u8; 4], proto: u8, frag: u16, ihl_words: u8, l4: &[u8]) -> Vec<u8> {
    let hl = (ihl_words as usize * 4).max(20);
    let total = (hl + l4.len()) as u16;
    let mut h = vec![0x40 | ihl_words, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 88, 1, 1]);
    h.resize(hl, 1); // options: NOPs
    h.extend_from_slice(l4);
    h
}

fn tcp(dport: u16) -> Vec<u8> {
    let mut t = vec![0x9c, 0x40];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// Source fd00:88:`subnet`::2 (subnet 1 is allowed, 2 is not).
fn ipv6(subnet: u8, exts: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
    // exts: (this header's type, its bytes without the next-header byte)
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(|e| e.0).unwrap_or(proto);
        body.push(next);
        body.extend_from_slice(bytes);
    }
    body.extend_from_slice(l4);
    let first = exts.first().map(|e| e.0).unwrap_or(proto);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&[0xfd, 0, 0, 0x88, 0, subnet, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend_from_slice(&[0xfd, 0, 0, 0x88, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend_from_slice(&body);
    h
}

fn run_xdp(lab: &Lab, frame: &[u8]) -> u32 {
    run_xdp_repeat(lab, frame, 1)
}

/// Runs the attached XDP program `repeat` times on `frame` (BPF_PROG_TEST_RUN).
fn run_xdp_repeat(lab: &Lab, frame: &[u8], repeat: u32) -> u32 {
    let link = std::fs::read_dir(lab.pin_dir.join("links"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("xdp-"))
        .expect("an XDP link is pinned")
        .path();
    let info: serde_json::Value = serde_json::from_str(&sh(&format!(
        "bpftool -j link show pinned {}",
        link.display()
    )))
    .unwrap();
    let file = lab.run_dir.join("frame.bin");
    std::fs::write(&file, frame).unwrap();
    let out = sh(&format!(
        "bpftool prog run id {} data_in {} repeat {repeat} 2>&1",
        info["prog_id"],
        file.display()
    ));
    let rv = out
        .lines()
        .find_map(|l| l.strip_prefix("Return value: "))
        .unwrap_or_else(|| panic!("{out}"));
    rv.split(',').next().unwrap().trim().parse().unwrap()
}

#[test]
fn crafted_frames_are_classified_or_dropped() {
    let t = topology();
    let _d = t
        .lab
        .daemon(Some(&t.srv), &t.lab.policy("p.toml", &policy(&t.lab)));
    let lab = &t.lab;
    let good = [10, 88, 1, 2];
    let bad = [10, 88, 2, 2];
    let frame = |ethertype: u16, payload: Vec<u8>| [eth(ethertype), payload].concat();
    let hop = |len8: u8| {
        let mut v = vec![len8];
        v.resize(7 + len8 as usize * 8, 1);
        v
    };

    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "allowed IPv4 source",
            frame(0x0800, ipv4(good, 6, 0, 5, &tcp(PORT))),
            PASS,
        ),
        (
            "denied IPv4 source",
            frame(0x0800, ipv4(bad, 6, 0, 5, &tcp(PORT))),
            DROP,
        ),
        (
            "denied source, other port",
            frame(0x0800, ipv4(bad, 6, 0, 5, &tcp(PORT + 1))),
            PASS,
        ),
        (
            "denied source, UDP to the port",
            frame(0x0800, ipv4(bad, 17, 0, 5, &tcp(PORT)[..8])),
            DROP,
        ),
        (
            "IPv4 options before TCP",
            frame(0x0800, ipv4(bad, 6, 0, 15, &tcp(PORT))),
            DROP,
        ),
        (
            "IPv4 options, allowed source",
            frame(0x0800, ipv4(good, 6, 0, 15, &tcp(PORT))),
            PASS,
        ),
        (
            "IHL below 5",
            frame(0x0800, ipv4(bad, 6, 0, 4, &tcp(PORT))),
            DROP,
        ),
        (
            "first fragment too short for ports",
            frame(0x0800, ipv4(bad, 6, 0x2000, 5, &tcp(PORT)[..2])),
            DROP,
        ),
        (
            "non-first fragment",
            frame(0x0800, ipv4(bad, 6, 0x0003, 5, &tcp(PORT))),
            PASS,
        ),
        (
            "truncated IPv4 header",
            frame(0x0800, ipv4(bad, 6, 0, 5, &[])[..12].to_vec()),
            DROP,
        ),
        (
            "802.1Q-tagged, denied",
            [
                eth(0x8100),
                vec![0, 5, 0x08, 0x00],
                ipv4(bad, 6, 0, 5, &tcp(PORT)),
            ]
            .concat(),
            DROP,
        ),
        (
            "QinQ-tagged, denied",
            [
                eth(0x88a8),
                vec![0, 5, 0x81, 0x00, 0, 6, 0x08, 0x00],
                ipv4(bad, 6, 0, 5, &tcp(PORT)),
            ]
            .concat(),
            DROP,
        ),
        (
            "three VLAN tags",
            [
                eth(0x88a8),
                vec![0, 5, 0x81, 0, 0, 6, 0x81, 0, 0, 7, 0x08, 0],
            ]
            .concat(),
            DROP,
        ),
        ("ARP", frame(0x0806, vec![0; 28]), PASS),
        (
            "allowed IPv6 source",
            frame(0x86dd, ipv6(1, &[], 6, &tcp(PORT))),
            PASS,
        ),
        (
            "denied IPv6 source",
            frame(0x86dd, ipv6(2, &[], 6, &tcp(PORT))),
            DROP,
        ),
        (
            "IPv6 hop-by-hop then TCP, denied",
            frame(0x86dd, ipv6(2, &[(0, hop(1))], 6, &tcp(PORT))),
            DROP,
        ),
        (
            "IPv6 ext chain, allowed",
            frame(
                0x86dd,
                ipv6(1, &[(0, hop(0)), (60, hop(2)), (43, hop(0))], 6, &tcp(PORT)),
            ),
            PASS,
        ),
        (
            "IPv6 first fragment, denied",
            frame(
                0x86dd,
                ipv6(2, &[(44, vec![0, 0, 1, 0, 0, 0, 1])], 6, &tcp(PORT)),
            ),
            DROP,
        ),
        (
            "IPv6 later fragment",
            frame(
                0x86dd,
                ipv6(2, &[(44, vec![0, 0, 9, 0, 0, 0, 1])], 6, &tcp(PORT)),
            ),
            PASS,
        ),
        (
            "IPv6 nine extension headers",
            frame(0x86dd, ipv6(2, &vec![(60, hop(0)); 9], 6, &tcp(PORT))),
            DROP,
        ),
        (
            "IPv6 ext header past the frame",
            frame(
                0x86dd,
                ipv6(2, &[(0, hop(1))], 6, &tcp(PORT))[..44].to_vec(),
            ),
            DROP,
        ),
        (
            "IPv6 ICMPv6",
            frame(0x86dd, ipv6(2, &[], 58, &[128, 0, 0, 0])),
            PASS,
        ),
    ];
    let mut failures = Vec::new();
    for (name, f, want) in &cases {
        let got = run_xdp(lab, f);
        if got != *want {
            failures.push(format!("{name}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let malformed = lab.status()["counters"]["malformed_dropped"]
        .as_u64()
        .unwrap();
    assert_eq!(malformed, 6, "each unclassifiable frame is counted");
}

/// Floods 1M denied SYNs through the XDP program (far more than the 4 MiB ring
/// holds before the daemon can drain it) and checks that every record is
/// delivered or counted; returns the daemon's loss counters.
fn flood_is_accounted_exactly(extra: &[&str]) -> serde_json::Value {
    let t = topology();
    let mut args = vec!["--aggregate-secs", "1"];
    args.extend_from_slice(extra);
    let d = t.lab.daemon_with(
        Some(&t.srv),
        &t.lab.policy("p.toml", &policy(&t.lab)),
        &args,
    );
    let flood = 1_000_000u64;
    let frame = [eth(0x0800), ipv4([10, 88, 2, 9], 6, 0, 5, &tcp(PORT))].concat();
    assert_eq!(run_xdp_repeat(&t.lab, &frame, flood as u32), DROP);
    // Repeated denies from one source are aggregated: the first is reported alone,
    // the rest by count.
    let count = || {
        d.events()
            .iter()
            .filter(|e| e["src_addr"] == "10.88.2.9")
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum::<u64>()
    };
    let mut last = u64::MAX;
    while count() != last {
        last = count();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    let events = t.lab.status()["events"].clone();
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    let not_delivered = n(&events["kernel_lost"])
        + n(&events["kernel_suppressed"])
        + n(&events["queue_dropped"])
        + n(&events["sinks"][0]["dropped"])
        + n(&events["sinks"][0]["failed"]);
    assert_eq!(
        last + not_delivered,
        flood,
        "every record is either delivered or counted as lost ({events})"
    );
    assert!(
        d.events().len() < 100,
        "aggregation keeps a flood from one source to a handful of events"
    );
    let hits = t.lab.status()["rules"][0]["hits"].as_u64().unwrap();
    assert!(
        hits >= flood,
        "every verdict is counted against its rule ({hits})"
    );
    events
}

#[test]
fn a_record_flood_is_held_to_the_event_budget_and_counted() {
    let events = flood_is_accounted_exactly(&["--kernel-event-rate", "20000"]);
    let suppressed = events["kernel_suppressed"].as_u64().unwrap();
    assert!(
        suppressed > 500_000,
        "20k records/s per CPU let only a few percent of the flood through ({events})"
    );
    assert_eq!(events["kernel_lost"], 0, "the ring never filled ({events})");
}

#[test]
fn without_a_budget_a_record_flood_overflows_the_ring_and_is_counted() {
    let events = flood_is_accounted_exactly(&["--kernel-event-rate", "0"]);
    assert_eq!(events["kernel_suppressed"], 0, "{events}");
    let overflow = events["kernel_lost"].as_u64().unwrap()
        + events["queue_dropped"].as_u64().unwrap()
        + events["sinks"][0]["dropped"].as_u64().unwrap();
    assert!(
        overflow > 0,
        "the ring buffer or a queue overflowed ({events})"
    );
}

#[test]
fn non_ethernet_interfaces_are_reported_not_silently_covered() {
    let t = topology();
    sh(&format!(
        "ip -n {} tuntap add dev wtun0 mode tun && ip -n {} link set wtun0 up",
        t.srv, t.srv
    ));
    let d = t
        .lab
        .daemon(Some(&t.srv), &t.lab.policy("p.toml", &policy(&t.lab)));
    let start = d.wait_event("start", |e| e["type"] == "start");
    let att = start["attachments"].as_array().unwrap();
    let tun = att
        .iter()
        .find(|a| a["target"] == "wtun0")
        .expect("the tun device is listed");
    assert_eq!(tun["state"], "unsupported", "{start}");
    assert_eq!(
        att.iter()
            .filter(|a| a["state"] == "attached" && a["program"] == "xdp_ingress")
            .count(),
        2
    );
    assert!(
        std::fs::read_to_string(&d.stderr)
            .unwrap()
            .contains("wtun0 is not an Ethernet interface")
    );
}
