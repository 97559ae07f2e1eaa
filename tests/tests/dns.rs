//! Egress by host name: the model server's DNS is steered to the daemon's
//! resolver whatever resolver it names, only allowed names are answered, and
//! only the addresses answered for them are reachable, until their TTL ends.
//! A real DNS server runs in the lab's "internet" namespace; the model server
//! is `nobody` without capabilities, resolving through the C library.

use std::time::Duration;
use warden_tests::Lab;

const DNS: &str = "10.77.0.53";
const ROGUE_DNS: &str = "10.77.0.54";
const REGISTRY: &str = "10.77.0.10";
const REGISTRY_NEW: &str = "10.77.0.11";
const CDN: &str = "10.77.0.12";
const ELSEWHERE: &str = "10.77.0.20";

#[test]
fn host_rules_allow_what_dns_answers_for_the_name_and_nothing_else() {
    let mut lab = Lab::new();
    let host = lab.netns("host");
    let net = lab.netns("net");
    let peer_addrs: Vec<String> = [DNS, ROGUE_DNS, REGISTRY, REGISTRY_NEW, CDN, ELSEWHERE]
        .iter()
        .map(|a| format!("{a}/24"))
        .collect();
    let peer_addrs: Vec<&str> = peer_addrs.iter().map(String::as_str).collect();
    lab.veth(&host, &["10.77.0.1/24"], &net, &peer_addrs);
    let mut dns = lab.dns_server(&net, DNS);
    let mut rogue = lab.dns_server(&net, ROGUE_DNS);
    for cmd in [
        "set registry.test A 3 10.77.0.10",
        "set a.cdn.test A 60 10.77.0.12",
        "set a.b.cdn.test A 60 10.77.0.12",
        "set evil.test A 60 10.77.0.20",
    ] {
        assert_eq!(dns.ask(cmd), "ok", "{cmd}");
    }
    assert_eq!(rogue.ask("set registry.test A 60 10.77.0.20"), "ok");
    let mut web = lab.prober(Some(&net), None);
    assert_eq!(web.ask("listen :: 443"), "ok");
    assert_eq!(web.ask("listen :: 8443"), "ok");

    let model = lab.cgroup("model");
    let policy = format!(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["{model}"]
[[egress]]
cgroup = "{model}"
[[egress.allow]]
host = "registry.test"
ports = [443]
proto = "tcp"
[[egress.allow]]
host = "*.cdn.test"
ports = [443]
"#
    );
    let daemon_args = [
        "--dns-port",
        "54",
        "--dns-upstream",
        "10.77.0.53:53",
        "--dns-grace-secs",
        "0",
    ];
    let policy = lab.policy("p.toml", &policy);
    let mut d = lab.daemon_with(Some(&host), &policy, &daemon_args);
    let mut server = lab.attacker_with_resolver(Some(&host), "model/runner", DNS);
    let mut other = lab.prober(Some(&host), Some("other"));

    // Before any answer, nothing is reachable: not the registry, not an address
    // the model server knows by heart.
    assert_eq!(server.connect(REGISTRY, 443), "denied");
    assert_eq!(server.connect(ELSEWHERE, 443), "denied");

    // The C library's resolver (glibc checks where the answer came from).
    assert_eq!(server.ask("resolve registry.test"), REGISTRY);
    assert_eq!(server.connect(REGISTRY, 443), "connected");
    assert_eq!(
        server.connect(REGISTRY, 8443),
        "denied",
        "the rule's ports only"
    );
    assert_eq!(
        server.connect(REGISTRY_NEW, 443),
        "denied",
        "another address"
    );
    assert_eq!(
        server.connect(ELSEWHERE, 443),
        "denied",
        "a hard-coded address"
    );
    let allowed = d.wait_event("connect allowed for registry.test", |e| {
        e["reason"] == "host_allowed" && e["dst_addr"] == REGISTRY
    });
    assert_eq!(allowed["host"], "registry.test");
    assert_eq!(allowed["verdict"], "allow");

    // One leading label under a wildcard, not two.
    assert_eq!(server.ask("resolve a.cdn.test"), CDN);
    assert_eq!(server.ask("dns 10.77.0.53 a.b.cdn.test"), "refused");

    // A name no rule allows is refused, never asked upstream, and reported.
    assert_eq!(server.ask("dns 10.77.0.53 evil.test"), "refused");
    assert!(server.ask("resolve evil.test").starts_with("error:"));
    let refused = d.wait_event("evil.test refused", |e| {
        e["reason"] == "name_not_allowed" && e["host"] == "evil.test"
    });
    assert_eq!(refused["verdict"], "deny");
    assert_eq!(refused["hook"], "dns");

    // Another resolver, over UDP (connected, or sendto with the reply's source
    // checked) or TCP: the question still reaches only the daemon, which asks
    // the real one. The rogue resolver hears nothing.
    assert_eq!(server.ask("dns 10.77.0.54 registry.test"), REGISTRY);
    assert_eq!(server.ask("dns 10.77.0.54 registry.test udpsend"), REGISTRY);
    assert_eq!(server.ask("dns 10.77.0.54 registry.test tcp"), REGISTRY);
    assert_eq!(server.ask("dns 10.77.0.54 evil.test tcp"), "refused");
    assert_eq!(rogue.ask("asked"), "none");
    let asked = dns.ask("asked");
    assert!(
        !asked.contains("evil.test"),
        "forbidden names are not forwarded: {asked}"
    );
    assert!(!asked.contains("a.b.cdn.test"), "{asked}");

    // Positive control: a cgroup without host rules is not steered.
    assert_eq!(other.ask("dns 10.77.0.54 registry.test"), ELSEWHERE);
    assert_eq!(rogue.ask("asked"), "registry.test/1");

    // The answer changes, and the old one's TTL (3 s) runs out: the old
    // address closes, the new one stays open for its own TTL.
    assert_eq!(dns.ask("set registry.test A 60 10.77.0.11"), "ok");
    assert_eq!(server.ask("resolve registry.test"), REGISTRY_NEW);
    assert_eq!(server.connect(REGISTRY_NEW, 443), "connected");
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        server.connect(REGISTRY, 443),
        "denied",
        "the old answer expired"
    );
    assert_eq!(server.connect(REGISTRY_NEW, 443), "connected");

    // Learned addresses are listed with their time left, and the resolver's
    // questions are counted.
    std::thread::sleep(Duration::from_millis(400));
    let status = lab.status();
    assert!(status["dns"]["refused"].as_u64() >= Some(4), "{status}");
    assert!(status["dns"]["answered"].as_u64() >= Some(6), "{status}");
    assert_eq!(status["dns"]["dropped"], 0, "{status}");
    let learned = status["learned"].as_array().cloned().unwrap_or_default();
    assert!(
        learned
            .iter()
            .any(|l| l["name"] == "a.cdn.test" && l["address"] == CDN),
        "{status}"
    );

    // A restart keeps what was learned (no re-query), and opens nothing new.
    assert_eq!(dns.ask("set registry.test A 300 10.77.0.10"), "ok");
    assert_eq!(server.ask("resolve registry.test"), REGISTRY);
    assert!(d.stop(Duration::from_secs(5)), "daemon stops on SIGTERM");
    assert_eq!(
        server.connect(REGISTRY, 443),
        "connected",
        "while no daemon runs"
    );
    assert_eq!(
        server.connect(ELSEWHERE, 443),
        "denied",
        "while no daemon runs"
    );
    // This time refusals answer NXDOMAIN.
    let nxdomain = [&daemon_args[..], &["--dns-refuse", "nxdomain"]].concat();
    let _d = lab.daemon_with(Some(&host), &policy, &nxdomain);
    assert_eq!(
        server.connect(REGISTRY, 443),
        "connected",
        "after the restart"
    );
    assert_eq!(server.connect(CDN, 443), "connected", "after the restart");
    assert_eq!(
        server.connect(ELSEWHERE, 443),
        "denied",
        "after the restart"
    );
    assert!(server.ask("resolve evil.test").starts_with("error:"));
    assert_eq!(server.ask("dns 10.77.0.53 evil.test"), "nxdomain");
}
