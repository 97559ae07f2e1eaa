//! Bans end to end: wrong tokens from a client host cross the proxy's
//! brute-force threshold, the proxy hands the ban to the daemon, and the
//! kernel drops that host's packets to the proxy's port and the protected
//! ports (XDP, or the nft bans table) until the ban expires or an operator
//! lifts it with `warden ban del`.

use std::time::Duration;
use warden_tests::Lab;
use warden_tests::proxy::{Placement, ProxyLab};

const PORT: u16 = 11434;

fn ban_end_to_end(backend: &str) {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let client = lab.netns("client");
    // .2 attacks, .3 is a legitimate client the policy allows explicitly.
    lab.veth(
        &host,
        &["10.77.0.1/24"],
        &client,
        &["10.77.0.2/24", "10.77.0.3/24"],
    );
    let policy = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{server}\"]\n[ingress]\nallow = [\"10.77.0.3/32\"]\n[local]\nallow_cgroups = [\"{proxy}\"]\n",
        server = lab.cgroup("server"),
        proxy = lab.cgroup("proxy"),
    );
    let socket = lab.run_dir.join("proxy.sock");
    let d = lab.daemon_with(
        Some(&host),
        &lab.policy("p.toml", &policy),
        &[
            "--backend",
            backend,
            "--correlate-secs",
            "1",
            "--proxy-cgroup",
            &lab.cgroup_rel("proxy"),
        ],
    );
    let proxy = ProxyLab::start_in(
        "[brute_force]\nfailures = 5\nban = \"60s\"\n\n[[identity]]\nname = \"alice\"\ntokens = [\"@token:alice@\"]\nmodels = [\"*\"]\n",
        &[],
        Placement {
            netns: Some(host.clone()),
            upstream_cgroup: Some(lab.cgroup.join("server")),
            proxy_cgroup: Some(lab.cgroup.join("proxy")),
            upstream_port: PORT,
            top: format!("report = \"{}\"\n", socket.display()),
            listen: Some("10.77.0.1:0".into()),
            server_san: Some("IP:10.77.0.1".into()),
        },
    );
    let proxy_port: u16 = proxy.url.rsplit(':').next().unwrap().parse().unwrap();
    d.wait_event("proxy_connected", |e| e["type"] == "proxy_connected");
    let mut remote = lab.prober(Some(&client), None);
    let reach = |remote: &mut warden_tests::Prober, src: &str, port: u16| {
        remote.ask(&format!("connectfrom {src} 10.77.0.1 {port}"))
    };
    assert_eq!(reach(&mut remote, "10.77.0.2", proxy_port), "connected");

    let attack = proxy.hostile_in(&client, &["tokens", "owt_wrong", "5", "10.77.0.2"]);
    assert!(
        attack["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == 401),
        "{attack}"
    );
    let ban = d.wait_event("ban", |e| e["type"] == "ban" && e["source"] == "10.77.0.2");
    assert_eq!(ban["enforced"], backend, "{ban}");
    assert_eq!(ban["failures"], 5);
    assert_eq!(ban["proxy_port"], proxy_port);

    // The kernel drops the banned host's SYNs; another host is untouched.
    assert_eq!(reach(&mut remote, "10.77.0.2", proxy_port), "timeout");
    assert_eq!(reach(&mut remote, "10.77.0.2", PORT), "timeout");
    assert_eq!(reach(&mut remote, "10.77.0.3", proxy_port), "connected");
    let warden = |args: &[&str]| lab.warden_in(Some(&host), args);
    let st: serde_json::Value = serde_json::from_str(&warden(&["status", "--json"])).unwrap();
    let bans = st["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{st}");
    assert_eq!(bans[0]["source"], "10.77.0.2");
    if backend == "ebpf" {
        assert!(
            st["counters"]["banned_dropped"].as_u64().unwrap() >= 2,
            "{st}"
        );
        d.wait_event("XDP banned record", |e| {
            e["reason"] == "banned" && e["src_addr"] == "10.77.0.2"
        });
    }
    let list = warden(&["ban", "list", "--json"]);
    assert!(list.contains("\"10.77.0.2\""), "{list}");

    // Lifted by hand.
    warden(&["ban", "del", "10.77.0.2"]);
    assert_eq!(reach(&mut remote, "10.77.0.2", proxy_port), "connected");
    // Banned by hand, and lifted by its expiry.
    // Long enough to probe before it ends, also on a slow (emulated) machine.
    let ban = warden_tests::patience(Duration::from_secs(2));
    warden(&[
        "ban",
        "add",
        "10.77.0.2",
        "--for",
        &format!("{}s", ban.as_secs()),
    ]);
    assert_eq!(reach(&mut remote, "10.77.0.2", proxy_port), "timeout");
    std::thread::sleep(ban + Duration::from_millis(500));
    assert_eq!(reach(&mut remote, "10.77.0.2", proxy_port), "connected");
    assert_eq!(warden(&["ban", "list"]).trim(), "no bans");

    // A source the policy allows explicitly is refused by the proxy but not
    // banned in the kernel (the daemon runs without --ban-allowed-sources).
    proxy.hostile_in(&client, &["tokens", "owt_wrong", "5", "10.77.0.3"]);
    let ban = d.wait_event("ban of an allowed source", |e| {
        e["type"] == "ban" && e["source"] == "10.77.0.3"
    });
    assert_eq!(ban["enforced"], false, "{ban}");
    assert!(
        ban["reason"]
            .as_str()
            .unwrap()
            .contains("the policy allows this source"),
        "{ban}"
    );
    assert_eq!(reach(&mut remote, "10.77.0.3", proxy_port), "connected");
}

#[test]
fn a_ban_is_enforced_by_xdp_until_it_expires_or_is_lifted() {
    ban_end_to_end("ebpf");
}

#[test]
fn a_ban_is_enforced_by_nftables_until_it_expires_or_is_lifted() {
    ban_end_to_end("nft");
}
