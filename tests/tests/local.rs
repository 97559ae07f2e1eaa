//! Local access to the protected port: allowed and denied cgroups, by every way of
//! addressing this host; bind control. Verdicts and events both asserted.

use std::os::unix::fs::MetadataExt;
use warden_tests::Lab;

const PORT: u16 = 11434;

fn policy(lab: &Lab) -> String {
    format!(
        r#"version = 1
[service]
ports = [{PORT}]
server_cgroups = ["{server}"]
[local]
allow_cgroups = ["{proxy}"]
"#,
        server = lab.cgroup("server"),
        proxy = lab.cgroup("proxy"),
    )
}

#[test]
fn only_allowed_cgroups_connect_by_any_address_form() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let peer = lab.netns("peer");
    lab.veth(
        &ns,
        &["10.77.0.1/24", "fd00:77::1/64"],
        &peer,
        &["10.77.0.2/24", "fd00:77::2/64"],
    );
    sh_ns(&ns, "ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true");
    let d = lab.daemon(Some(&ns), &lab.policy("p.toml", &policy(&lab)));

    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let mut proxy = lab.prober(Some(&ns), Some("proxy/worker")); // a descendant counts
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let rogue_pid = rogue.pid();
    let rogue_cgroup = std::fs::metadata(lab.cgroup.join("rogue")).unwrap().ino();

    let forms = [
        "127.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "10.77.0.1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.77.0.1",
        "fd00:77::1",
    ];
    for addr in forms {
        assert_eq!(
            proxy.connect(addr, PORT),
            "connected",
            "allowed cgroup via {addr}"
        );
        assert_eq!(
            server.connect(addr, PORT),
            "connected",
            "server cgroup via {addr}"
        );
        assert_eq!(
            rogue.connect(addr, PORT),
            "denied",
            "rogue cgroup via {addr}"
        );
        // Other ports are none of warden's business.
        assert_eq!(
            rogue.connect(addr, PORT + 1),
            "refused",
            "rogue to an unprotected port via {addr}"
        );
    }

    for addr in forms {
        let ev = d.wait_event(&format!("deny of rogue to {addr}"), |e| {
            e["verdict"] == "deny" && e["pid"] == rogue_pid && e["dst_addr"] == addr
        });
        assert_eq!(ev["reason"], "local_not_allowed");
        assert_eq!(ev["comm"], "python3");
        assert_eq!(ev["cgroup_id"], rogue_cgroup);
        assert_eq!(ev["dst_port"], PORT);
        assert!(ev["socket_cookie"].as_u64().unwrap() > 0);
        assert!(ev["hook"] == "connect4" || ev["hook"] == "connect6");
    }
    let allowed = d
        .events()
        .into_iter()
        .filter(|e| e["verdict"] == "allow" && e["reason"] == "local_allowed")
        .count();
    assert!(
        allowed >= 2 * forms.len(),
        "every accepted connection is recorded ({allowed})"
    );
    assert!(
        d.events().iter().all(|e| e["dst_port"] != PORT + 1),
        "unprotected ports produce no events"
    );
}

#[test]
fn only_server_cgroups_bind_the_port_even_while_the_server_is_stopped() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let d = lab.daemon(Some(&ns), &lab.policy("p.toml", &policy(&lab)));
    let mut squatter = lab.prober(Some(&ns), Some("proxy")); // may connect, not bind
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    for addr in ["0.0.0.0", "127.0.0.1", "::", "::1", "::ffff:127.0.0.1"] {
        assert_eq!(
            squatter.ask(&format!("bind {addr} {PORT}")),
            "denied",
            "bind {addr}"
        );
        assert_eq!(
            rogue.ask(&format!("listen {addr} {PORT}")),
            "denied",
            "listen {addr}"
        );
        assert_eq!(
            rogue.ask(&format!("udplisten {addr} {PORT}")),
            "denied",
            "udp bind {addr}"
        );
    }
    assert_eq!(rogue.ask(&format!("bind 127.0.0.1 {}", PORT + 1)), "ok");
    let mut server = lab.prober(Some(&ns), Some("server/child"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let pid = rogue.pid();
    let ev = d.wait_event("bind deny", |e| e["hook"] == "bind4" && e["pid"] == pid);
    assert_eq!(ev["reason"], "bind_not_allowed");
    assert_eq!(ev["bind_port"], PORT);
    d.wait_event("bind allow", |e| e["reason"] == "bind_allowed");
}

#[test]
fn denial_depends_on_the_attached_program() {
    // Without warden, the same rogue process reaches the port: the tests above
    // observe the programs, not a side effect of the lab.
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen :: {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "connected");
    let d = lab.daemon(Some(&ns), &lab.policy("p.toml", &policy(&lab)));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    drop(d);
    lab.warden(&["down"]);
    assert_eq!(
        rogue.connect("127.0.0.1", PORT),
        "connected",
        "warden down removes enforcement"
    );
}

fn sh_ns(ns: &str, cmd: &str) {
    warden_tests::sh(&format!("ip netns exec {ns} sh -c '{cmd}'"));
}
