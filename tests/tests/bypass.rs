//! Kernel enforcement an unprivileged process cannot walk around.
//!
//! Each attacker runs as `nobody` with no capabilities, in an egress-restricted
//! (or otherwise denied) cgroup, and the verdict is read where it matters: on
//! the peer's wire (a packet sniffer in the peer's namespace), not only from
//! the attacker's system-call results. Every negative check has a positive
//! control beside it: the same trick from an unrestricted cgroup does reach
//! the wire, so the sniffer would have seen the attack had it got out.

use std::time::Duration;
use warden_tests::{Daemon, Lab, Prober, sh};

const HOST: &[&str] = &["10.66.0.1/24", "fd00:66::1/64"];
/// .2 is the allowed destination, .3 one the policy never allowed, .4 a peer
/// allowed on every TCP port (a source that may also connect in).
const PEER: &[&str] = &[
    "10.66.0.2/24",
    "10.66.0.3/24",
    "10.66.0.4/24",
    "fd00:66::2/64",
    "fd00:66::3/64",
];

struct Net {
    lab: Lab,
    host: String,
    peer: String,
    /// The peer's end of the veth (sniffed).
    peer_if: String,
}

fn net() -> Net {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let peer = lab.netns("peer");
    let (_, peer_if) = lab.veth(&host, HOST, &peer, PEER);
    // Neighbours resolved before the first test connect (which has 0.5 s).
    let mut warm = lab.prober(Some(&host), None);
    for addr in ["10.66.0.2", "fd00:66::2", "fd00:66::3"] {
        assert_eq!(
            warm.ask(&format!("connect {addr} 9 2")),
            "refused",
            "{addr}"
        );
    }
    Net {
        lab,
        host,
        peer,
        peer_if,
    }
}

/// The model server is both the server of the protected port and
/// egress-restricted, as Ollama is in a hardened deployment.
fn policy(lab: &Lab) -> String {
    format!(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["{model}"]
[ingress]
allow = ["10.66.0.0/24"]
[local]
allow_cgroups = ["{client}"]
[[egress]]
cgroup = "{model}"
[[egress.allow]]
net = "10.66.0.2/32"
ports = [443]
proto = "tcp"
[[egress.allow]]
net = "fd00:66::2/128"
ports = [443, 53]
[[egress.allow]]
net = "10.66.0.4/32"
proto = "tcp"
"#,
        model = lab.cgroup("model"),
        client = lab.cgroup("client"),
    )
}

impl Net {
    fn daemon(&self, extra: &[&str]) -> Daemon {
        let p = self.lab.policy("p.toml", &policy(&self.lab));
        self.lab.daemon_with(Some(&self.host), &p, extra)
    }

    /// A root prober in the peer's namespace, sniffing its interface.
    fn peer(&self) -> Prober {
        let mut p = self.lab.prober(Some(&self.peer), None);
        assert_eq!(p.ask(&format!("sniff {}", self.peer_if)), "ok");
        p
    }

    fn attacker(&self, cgroup: &str) -> Prober {
        self.lab.attacker(Some(&self.host), cgroup)
    }
}

fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The packet hooks' deny of `reason` to `dst`, from the lab cgroup `cgroup`.
fn packet_deny(d: &Daemon, lab: &Lab, hook: &str, reason: &str, addr: &str) -> serde_json::Value {
    let cg = warden_tests::cgroup_id(&lab.cgroup.join("model"));
    d.wait_event(&format!("{hook} {reason} {addr}"), |e| {
        e["hook"] == hook
            && e["reason"] == reason
            && (e["dst_addr"] == addr || e["src_addr"] == addr)
            && e["cgroup_id"] == cg
    })
}

#[test]
fn routing_header_cannot_take_packets_past_the_policy() {
    let n = net();
    let d = n.daemon(&[]);
    let mut peer = n.peer();
    assert_eq!(peer.ask("listen :: 443"), "ok");
    assert_eq!(peer.ask("udplisten :: 53"), "ok");
    let mut model = n.attacker("model");

    assert_eq!(model.connect("fd00:66::2", 443), "connected", "allowed");
    assert_eq!(
        model.ask("rthdr fd00:66::2 443 fd00:66::3 tcp"),
        "timeout",
        "the SYN never leaves"
    );
    assert_eq!(model.ask("rthdr fd00:66::2 53 fd00:66::3 udp"), "denied");
    settle();
    assert_eq!(peer.ask("seen fd00:66::3"), "0", "nothing reached the hop");
    let ev = packet_deny(&d, &n.lab, "skb-egress", "source_routed", "fd00:66::3");
    assert_eq!(ev["verdict"], "deny");

    // Control: the same header from an unrestricted cgroup reaches the hop.
    let mut other = n.attacker("other");
    assert_eq!(other.ask("rthdr fd00:66::2 53 fd00:66::3 udp"), "ok");
    settle();
    assert_ne!(
        peer.ask("seen fd00:66::3"),
        "0",
        "the sniffer sees such packets"
    );
}

#[test]
fn icmp_echo_sockets_carry_nothing_out() {
    let n = net();
    // systemd's default: every group may open ICMP echo sockets.
    sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ping_group_range='0 2147483647'",
        n.host
    ));
    let d = n.daemon(&[]);
    let mut peer = n.peer();
    let mut model = n.attacker("model");
    assert_eq!(model.ask("ping 10.66.0.3"), "denied");
    // ICMPv6 echo sockets do not report the drop to the sender.
    assert_ne!(model.ask("ping fd00:66::3"), "reply");
    assert_eq!(model.ask("ping 10.66.0.2"), "denied", "no rule allows ICMP");
    settle();
    assert_eq!(peer.ask("seen 10.66.0.3"), "0");
    assert_eq!(peer.ask("seen fd00:66::3"), "0");
    let ev = packet_deny(&d, &n.lab, "skb-egress", "egress_not_allowed", "10.66.0.3");
    assert_eq!(ev["proto"], "icmp");

    let mut other = n.attacker("other");
    assert_eq!(other.ask("ping 10.66.0.3"), "reply", "control");
    assert_eq!(other.ask("ping fd00:66::3"), "reply", "control");
}

#[test]
fn mptcp_subflows_are_judged_by_the_socket_owner() {
    let n = net();
    // The client accepts announced addresses; the server announces .3.
    for ns in [&n.host, &n.peer] {
        sh(&format!(
            "ip -n {ns} mptcp limits set subflows 2 add_addr_accepted 2"
        ));
    }
    sh(&format!(
        "ip -n {} mptcp endpoint add 10.66.0.3 dev {} signal",
        n.peer, n.peer_if
    ));
    let d = n.daemon(&[]);
    let mut peer = n.peer();
    assert_eq!(peer.ask("mptcplisten 0.0.0.0 443"), "ok");
    let mut model = n.attacker("model");
    assert_eq!(model.ask("mptcp 10.66.0.2 443 1.5"), "connected");
    settle();
    assert_eq!(
        peer.ask("seen 10.66.0.3"),
        "0",
        "no subflow to the announced address"
    );
    let ev = packet_deny(&d, &n.lab, "skb-egress", "egress_not_allowed", "10.66.0.3");
    assert_eq!(ev["dst_port"], 443);

    let mut other = n.attacker("other");
    assert_eq!(other.ask("mptcp 10.66.0.2 443 1.5"), "connected");
    settle();
    assert_ne!(
        peer.ask("seen 10.66.0.3"),
        "0",
        "control: an unrestricted socket's subflow reaches the announced address"
    );
}

#[test]
fn inbound_peers_are_judged_like_outbound_ones() {
    let n = net();
    let d = n.daemon(&[]);
    let mut peer = n.lab.prober(Some(&n.peer), None);
    let mut model = n.attacker("model");
    assert_eq!(model.ask("listen 0.0.0.0 9000"), "ok");
    assert_eq!(model.ask("udplisten 0.0.0.0 9001"), "ok");
    assert_eq!(
        peer.ask("connectfrom 10.66.0.3 10.66.0.1 9000"),
        "timeout",
        "a host the policy does not allow cannot connect in"
    );
    assert_eq!(
        peer.ask("connectfrom 10.66.0.4 10.66.0.1 9000"),
        "connected",
        "a host allowed on every TCP port can"
    );
    assert_eq!(peer.ask("udpsend 10.66.0.1 9001"), "ok");
    settle();
    assert_eq!(
        model.ask("received 9001"),
        "0",
        "nor can it send datagrams in"
    );
    packet_deny(
        &d,
        &n.lab,
        "skb-ingress",
        "inbound_not_allowed",
        "10.66.0.3",
    );

    // The service port is the ingress policy's: the restricted server still
    // serves remote and local clients.
    assert_eq!(model.ask("listen 0.0.0.0 11434"), "ok");
    assert_eq!(
        peer.ask("connectfrom 10.66.0.3 10.66.0.1 11434"),
        "connected"
    );
    let mut client = n.lab.prober(Some(&n.host), Some("client"));
    assert_eq!(client.connect("127.0.0.1", 11434), "connected");
    // And its allowed outbound traffic is untouched.
    assert_eq!(peer.ask("listen 0.0.0.0 443"), "ok");
    assert_eq!(model.connect("10.66.0.2", 443), "connected");
}

#[test]
fn autobind_cannot_take_a_protected_port() {
    let n = net();
    let d = n.daemon(&[]);
    let range = |r: &str| {
        sh(&format!(
            "ip netns exec {} sysctl -qw net.ipv4.ip_local_port_range='{r}'",
            n.host
        ))
    };
    // listen() without bind() takes a port from ip_local_port_range, where
    // no bind hook runs.
    range("11434 11434");
    let mut squatter = n.attacker("squatter");
    let port = squatter.ask("autolisten");
    range("32768 60999");
    assert_eq!(port, "11434", "the kernel handed out the protected port");
    let mut client = n.lab.prober(Some(&n.host), Some("client"));
    assert_eq!(
        client.connect("127.0.0.1", 11434),
        "timeout",
        "the squatter never sees a connection"
    );
    let cg = warden_tests::cgroup_id(&n.lab.cgroup.join("squatter"));
    d.wait_event("not_server_socket", |e| {
        e["hook"] == "skb-ingress" && e["reason"] == "not_server_socket" && e["cgroup_id"] == cg
    });

    // Control: once it lets go, the server's own listener is reached.
    assert_eq!(squatter.ask("close"), "ok");
    let mut server = n.lab.prober(Some(&n.host), Some("model"));
    assert_eq!(server.ask("listen 0.0.0.0 11434"), "ok");
    assert_eq!(client.connect("127.0.0.1", 11434), "connected");
}

#[test]
fn ipv6_rules_do_not_open_ipv4() {
    let n = net();
    let policy = format!(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["{server}"]
[ingress]
allow = ["::/0"]
[[egress]]
cgroup = "{model}"
[[egress.allow]]
net = "::/0"
ports = [443]
proto = "tcp"
"#,
        server = n.lab.cgroup("server"),
        model = n.lab.cgroup("model"),
    );
    let path = n.lab.policy("v6.toml", &policy);
    let _d = n.lab.daemon(Some(&n.host), &path);
    let mut peer = n.lab.prober(Some(&n.peer), None);
    assert_eq!(peer.ask("listen :: 443"), "ok");
    let mut model = n.attacker("model");
    assert_eq!(model.connect("fd00:66::2", 443), "connected");
    assert_eq!(
        model.connect("10.66.0.2", 443),
        "denied",
        "::/0 is not IPv4"
    );
    assert_eq!(model.connect("::ffff:10.66.0.2", 443), "denied");

    let mut server = n.lab.prober(Some(&n.host), Some("server"));
    assert_eq!(server.ask("listen :: 11434"), "ok");
    assert_eq!(
        peer.ask("connectfrom fd00:66::2 fd00:66::1 11434"),
        "connected"
    );
    assert_eq!(
        peer.ask("connectfrom 10.66.0.2 10.66.0.1 11434"),
        "timeout",
        "an IPv6 ingress source list admits no IPv4 source"
    );

    // `policy check` says so where a rule covers the mapped range.
    let check = std::process::Command::new(warden_tests::warden_bin())
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("v6.toml:6:10: warning: `::/0` contains the IPv4-mapped range"),
        "{stderr}"
    );
}

/// Unmounts a bpffs the test mounted (lazily: pins inside go with it).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn local_policy(lab: &Lab) -> std::path::PathBuf {
    let text = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n",
        lab.cgroup("server")
    );
    lab.policy("local.toml", &text)
}

#[test]
fn a_squatted_pin_directory_is_refused() {
    let mut lab = Lab::new();
    // bpffs as `mount -t bpf bpf DIR` leaves it: world-writable, sticky.
    let mnt = lab.run_dir.join("bpffs");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount -t bpf bpf {0} && chmod 1777 {0}",
        mnt.display()
    ));
    let _mount = Unmount(mnt.clone());
    lab.pin_dir = mnt.join("ollama-warden");
    // An unprivileged user gets there before the daemon's first start.
    sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups mkdir -p {}/links",
        lab.pin_dir.display()
    ));
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(warden_tests::warden_bin())
        .args(lab.dir_args())
        .arg("daemon")
        .arg("--policy")
        .arg(local_policy(&lab))
        .arg("--attach-cgroup")
        .arg(&lab.cgroup)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not the timeout's 124: the daemon refused at once.
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "refused at once: {:?} {stderr}",
        out.status
    );
    assert!(
        stderr.contains("ollama-warden is owned by uid 65534"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("falling back"),
        "no fallback to nftables: {stderr}"
    );
    assert!(lab.cgroup_programs().is_empty(), "nothing attached");
}

#[test]
fn deleted_pins_detach_nothing_and_come_back() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let d = lab.daemon(Some(&ns), &local_policy(&lab));
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask("listen 127.0.0.1 11434"), "ok");
    let mut rogue = lab.attacker(Some(&ns), "rogue");
    assert_eq!(rogue.connect("127.0.0.1", 11434), "denied");
    std::fs::remove_file(lab.pin_dir.join("links/connect4")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rogue.connect("127.0.0.1", 11434),
        "denied",
        "the running daemon holds its links"
    );
    let ev = d.wait_event("pins_restored", |e| e["type"] == "pins_restored");
    assert_eq!(ev["pins"].as_array().unwrap().len(), 1, "{ev}");
    assert!(lab.pin_dir.join("links/connect4").exists());
    assert_eq!(lab.status()["enforcing"], true);

    // Without a daemon a missing pin is a detached program: status says so.
    d.kill();
    std::fs::remove_file(lab.pin_dir.join("links/connect4")).unwrap();
    let st = lab.status();
    assert_eq!(st["enforcing"], false, "{st}");
    assert_eq!(st["missing_links"], serde_json::json!(["connect4"]));
}

#[test]
fn a_recreated_cgroup_is_restricted_at_once() {
    let n = net();
    // No periodic rescan to lean on: only the cgroup watch can notice.
    let d = n.daemon(&["--rescan-secs", "600"]);
    let mut peer = n.lab.prober(Some(&n.peer), None);
    assert_eq!(peer.ask("listen 0.0.0.0 8443"), "ok");
    let mut model = n.attacker("model");
    assert_eq!(model.connect("10.66.0.2", 8443), "denied");
    drop(model);

    // As systemd restarts a unit: the cgroup goes, one of the same name comes.
    let dir = n.lab.cgroup.join("model");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&dir).is_err() {
        assert!(std::time::Instant::now() < deadline, "cgroup still busy");
        std::thread::sleep(Duration::from_millis(10));
    }
    let created = std::time::Instant::now();
    std::fs::create_dir(&dir).unwrap();
    let new_id = warden_tests::cgroup_id(&dir);
    let ev = d.wait_event_for("cgroups_resolved", Duration::from_secs(5), |e| {
        e["type"] == "cgroups_resolved" && e["unresolved"].as_array().is_some_and(|u| u.is_empty())
    });
    eprintln!(
        "re-created cgroup {new_id} restricted after {:?} (generation {})",
        created.elapsed(),
        ev["generation"]
    );
    let mut model = n.attacker("model");
    assert_eq!(
        model.connect("10.66.0.2", 8443),
        "denied",
        "egress restricted"
    );
    assert_eq!(model.ask("listen 0.0.0.0 11434"), "ok", "server grant back");
}

#[test]
fn a_new_interface_is_covered_at_once() {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let peer = lab.netns("peer");
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n[ingress]\nallow = [\"10.67.0.3/32\"]\n",
        lab.cgroup("server")
    );
    let d = lab.daemon_with(
        Some(&host),
        &lab.policy("p.toml", &policy),
        &["--rescan-secs", "600"],
    );
    let mut server = lab.prober(Some(&host), Some("server"));
    assert_eq!(server.ask("listen 0.0.0.0 11434"), "ok");
    // Plugged in after the daemon started.
    lab.veth(
        &host,
        &["10.67.0.1/24"],
        &peer,
        &["10.67.0.2/24", "10.67.0.3/24"],
    );
    let ev = d.wait_event_for("attachments_changed", Duration::from_secs(5), |e| {
        e["type"] == "attachments_changed"
    });
    assert_eq!(ev["attachments"][0]["state"], "attached", "{ev}");
    let mut remote = lab.prober(Some(&peer), None);
    assert_eq!(
        remote.ask("connectfrom 10.67.0.2 10.67.0.1 11434"),
        "timeout",
        "dropped by XDP on the new interface"
    );
    assert_eq!(
        remote.ask("connectfrom 10.67.0.3 10.67.0.1 11434"),
        "connected",
        "the allowed source gets through"
    );
}
