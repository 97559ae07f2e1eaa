//! Per-cgroup egress allowlists: TCP, connected and unconnected UDP, IPv4 and
//! IPv6, descendants included, other cgroups untouched.

use warden_tests::Lab;

#[test]
fn restricted_cgroup_reaches_only_its_allowed_destinations() {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let peer = lab.netns("peer");
    lab.veth(
        &host,
        &["10.66.0.1/24", "fd00:66::1/64"],
        &peer,
        &["10.66.0.2/24", "fd00:66::2/64"],
    );
    let policy = format!(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["{model}"]
[[egress]]
cgroup = "{model}"
[[egress.allow]]
net = "10.66.0.2/32"
ports = [443]
proto = "tcp"
[[egress.allow]]
net = "10.66.0.0/24"
ports = [53]
proto = "udp"
"#,
        model = lab.cgroup("model")
    );
    let d = lab.daemon(Some(&host), &lab.policy("p.toml", &policy));
    let mut peer_srv = lab.prober(Some(&peer), None);
    for cmd in [
        "listen :: 443",
        "listen :: 8443",
        "udplisten :: 53",
        "udplisten :: 54",
    ] {
        assert_eq!(peer_srv.ask(cmd), "ok", "{cmd}");
    }
    let mut model = lab.prober(Some(&host), Some("model/runner")); // a descendant
    let mut other = lab.prober(Some(&host), Some("other"));

    assert_eq!(model.connect("10.66.0.2", 443), "connected");
    assert_eq!(
        model.connect("::ffff:10.66.0.2", 443),
        "connected",
        "IPv4-mapped matches the IPv4 rule"
    );
    assert_eq!(model.connect("10.66.0.2", 8443), "denied");
    assert_eq!(model.connect("fd00:66::2", 443), "denied", "no IPv6 rule");
    assert_eq!(model.ask("udpsend 10.66.0.2 53"), "ok");
    assert_eq!(model.ask("udpconnect 10.66.0.2 53"), "ok");
    assert_eq!(model.ask("udpsend 10.66.0.2 54"), "denied");
    assert_eq!(model.ask("udpconnect 10.66.0.2 54"), "denied");
    assert_eq!(model.ask("udpsend ::ffff:10.66.0.2 54"), "denied");
    assert_eq!(
        model.connect("127.0.0.1", 443),
        "denied",
        "loopback is a destination like any other"
    );

    assert_eq!(
        other.connect("10.66.0.2", 8443),
        "connected",
        "cgroups without egress policy are untouched"
    );
    assert_eq!(other.ask("udpsend 10.66.0.2 54"), "ok");

    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(peer_srv.ask("received 53"), "2");
    assert_eq!(
        peer_srv.ask("received 54"),
        "1",
        "only the unrestricted cgroup's datagram arrived"
    );

    let pid = model.pid();
    for (hook, port) in [
        ("connect4", 8443),
        ("sendmsg4", 54),
        ("connect4", 54),
        ("connect6", 443),
    ] {
        let ev = d.wait_event(&format!("{hook} deny to {port}"), |e| {
            e["hook"] == hook && e["dst_port"] == port && e["pid"] == pid
        });
        assert_eq!(ev["verdict"], "deny");
        assert_eq!(ev["reason"], "egress_not_allowed");
    }
}
