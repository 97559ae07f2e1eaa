//! `[[remote]]`: a gateway's cgroup reaches Ollama on another host, and never
//! this host's port, by any address form, including an address the host
//! gains while the daemon runs. The gateway is `nobody` without capabilities.

use warden_tests::Lab;

#[test]
fn a_remote_grant_reaches_other_hosts_and_never_this_one() {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let gpu2 = lab.netns("gpu2");
    let (host_if, _) = lab.veth(
        &host,
        &["10.88.0.1/24", "fd00:88::1/64"],
        &gpu2,
        &["10.88.0.2/24", "fd00:88::2/64"],
    );
    let model = lab.cgroup("model");
    let gateway = lab.cgroup("gateway");
    let policy = format!(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["{model}"]
[[remote]]
cgroups = ["{gateway}"]
to = ["10.88.0.0/24", "fd00:88::/64"]
"#
    );
    let _d = lab.daemon(Some(&host), &lab.policy("p.toml", &policy));
    let mut local_ollama = lab.prober(Some(&host), Some("model"));
    assert_eq!(local_ollama.ask("listen :: 11434"), "ok");
    let mut remote_ollama = lab.prober(Some(&gpu2), None);
    assert_eq!(remote_ollama.ask("listen :: 11434"), "ok");
    let mut gw = lab.attacker(Some(&host), "gateway/worker");
    let mut other = lab.attacker(Some(&host), "other");

    // The remote host, over IPv4 and IPv6.
    assert_eq!(gw.connect("10.88.0.2", 11434), "connected");
    assert_eq!(gw.connect("fd00:88::2", 11434), "connected");
    assert_eq!(gw.connect("::ffff:10.88.0.2", 11434), "connected");
    assert_eq!(
        other.connect("10.88.0.2", 11434),
        "denied",
        "no grant, no remote"
    );

    // This host, by every address form, although 10.88.0.1 and fd00:88::1
    // are inside the remote networks.
    for addr in [
        "10.88.0.1",
        "fd00:88::1",
        "::ffff:10.88.0.1",
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
    ] {
        assert_eq!(gw.connect(addr, 11434), "denied", "{addr}");
    }

    // An address the host gains now, inside the remote network: this host
    // at once (the kernel drops the SYN that would leave through loopback,
    // whether or not the daemon has read the address yet).
    warden_tests::sh(&format!(
        "ip -n {host} addr add 10.88.0.77/24 dev {host_if} nodad"
    ));
    let v = gw.ask("connect 10.88.0.77 11434 1.0 fresh");
    assert_ne!(v, "connected", "a new address of this host");
    let mut client = lab.prober(Some(&host), Some("model/client"));
    assert_eq!(
        client.connect("10.88.0.77", 11434),
        "connected",
        "positive control: the address works for a cgroup allowed locally"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        gw.connect("10.88.0.77", 11434),
        "denied",
        "once the daemon read it"
    );
}
