//! Warden as `packaging/kubernetes/` deploys it: the daemon in one container of a
//! pod, in a cgroup namespace of its own (a container's default), the proxy in a
//! second container of the same pod. The policy names the pod as `@pod`, whose
//! cgroup path (`…-pod<UID>.slice`) no policy file can know in advance. The lab
//! builds the kubelet's cgroup layout (systemd driver) below its own cgroup.

use warden_tests::proxy::{Placement, ProxyLab};
use warden_tests::{Daemon, Lab};

const PORT: u16 = 11434;

/// A pod's cgroup as the kubelet's systemd driver names it.
fn pod(uid: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

fn policy(lab: &Lab) -> String {
    format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"@pod\"]\n",
        lab.cgroup("ollama")
    )
}

/// The daemon started in `container` (below the lab cgroup) with a new cgroup
/// namespace rooted there, as a container runtime starts it.
fn daemon_in_container(lab: &Lab, ns: &str, container: &str, extra: &[&str]) -> Daemon {
    let cg = lab.cgroup.join(container);
    std::fs::create_dir_all(&cg).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --cgroup \"$0\" \"$@\"",
        cg.display()
    );
    Daemon::start_under(
        &["sh", "-c", &script],
        lab,
        Some(ns),
        &lab.policy("p.toml", &policy(lab)),
        extra,
    )
}

#[test]
fn pod_reference_admits_the_daemons_own_pod_and_its_proxy_reports() {
    let mut lab = Lab::new();
    let ns = lab.netns("node");
    let warden_pod = pod("1b4e28ba-2fa1-41d2-883f-0016d3cca427");
    let other_pod = pod("6fa459ea-ee8a-4ca4-894e-db77e160355e");
    let socket = lab.run_dir.join("proxy.sock");
    let d = daemon_in_container(
        &lab,
        &ns,
        &format!("{warden_pod}/cri-containerd-warden.scope"),
        &[
            "--correlate-secs",
            "1",
            "--proxy-cgroup",
            "@pod",
            "--event-format",
            "raw",
        ],
    );
    let own_ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(
        own_ns(d.pid()),
        own_ns(std::process::id()),
        "the daemon has a cgroup namespace of its own"
    );

    // The resolved pod: no unresolved cgroups, and the rule names `@pod`.
    let status = lab.status();
    assert_eq!(
        status["policy"]["unresolved_cgroups"],
        serde_json::json!([]),
        "{status}"
    );

    let proxy_container = format!("{warden_pod}/cri-containerd-proxy.scope");
    lab.cgroup(&proxy_container);
    let proxy = ProxyLab::start_in(
        "[[identity]]\nname = \"alice\"\ntokens = [\"@token:alice@\"]\nmodels = [\"*\"]\n",
        &[],
        Placement {
            netns: Some(ns.clone()),
            upstream_cgroup: Some(lab.cgroup.join("ollama")),
            proxy_cgroup: Some(
                lab.cgroup
                    .join(format!("{warden_pod}/cri-containerd-proxy.scope")),
            ),
            upstream_port: PORT,
            top: format!("report = \"{}\"\n", socket.display()),
            ..Default::default()
        },
    );
    // The proxy's container reaches Ollama, and its report (read through the
    // daemon's cgroup namespace) names the identity.
    let (code, _) = proxy.post(
        "/api/chat",
        proxy.token("alice"),
        r#"{"model":"llama3","messages":[],"stream":false}"#,
    );
    assert_eq!(code, 200);
    let e = d.wait_event("correlated", |e| e.get("proxy").is_some());
    assert_eq!(e["proxy"]["identity"], "alice", "{e}");
    assert_eq!(e["rule"], "@pod may connect", "{e}");
    assert_eq!(e["pid"].as_u64(), Some(u64::from(proxy.proxy_pid())));

    // Any container of the pod may connect; another pod may not.
    let mut sidecar = lab.prober(
        Some(&ns),
        Some(&format!("{warden_pod}/cri-containerd-debug.scope")),
    );
    assert_eq!(sidecar.connect("127.0.0.1", PORT), "connected");
    let mut neighbour = lab.prober(
        Some(&ns),
        Some(&format!("{other_pod}/cri-containerd-app.scope")),
    );
    assert_eq!(neighbour.connect("127.0.0.1", PORT), "denied");
    let pid = neighbour.pid();
    let denied = d.wait_event("neighbour deny", |e| {
        e["verdict"] == "deny" && e["pid"] == pid
    });
    assert_eq!(denied["rule_id"], 0, "{denied}");
}

#[test]
fn pod_reference_outside_a_pod_matches_nothing_and_says_why() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let d = daemon_in_container(&lab, &ns, "system.slice/ollama-warden.service", &[]);
    let unresolved = lab.status()["policy"]["unresolved_cgroups"].clone();
    assert_eq!(
        unresolved[0].as_str().unwrap_or_default(),
        format!(
            "@pod (warden's cgroup {} is not a container in a Kubernetes pod)",
            lab.cgroup_rel("system.slice/ollama-warden.service")
        ),
        "{unresolved}"
    );
    let mut server = lab.prober(Some(&ns), Some("ollama"));
    assert_eq!(server.ask(&format!("listen 127.0.0.1 {PORT}")), "ok");
    let mut neighbour = lab.prober(Some(&ns), Some("system.slice/app.service"));
    assert_eq!(neighbour.connect("127.0.0.1", PORT), "denied");
    let pid = neighbour.pid();
    d.wait_event("deny", |e| {
        e["pid"] == pid && e["reason"] == "local_not_allowed"
    });
}
