//! Warden as `packaging/kubernetes/` deploys it: the daemon in one container of a
//! pod, in a cgroup namespace of its own (a container's default), the proxy in a
//! second container of the same pod. The policy names the pod as `@pod`, whose
//! cgroup path (`…-pod<UID>.slice`) no policy file can know in advance. The lab
//! builds the kubelet's cgroup layout (systemd driver) below its own cgroup.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use warden_tests::proxy::{Placement, ProxyLab, python};
use warden_tests::{Daemon, Lab, warden_bin, workspace};

const PORT: u16 = 11434;

fn manifest_dir() -> PathBuf {
    workspace().join("packaging/kubernetes")
}

/// The Kubernetes objects of `packaging/kubernetes/` (kustomization's resources,
/// in order), as JSON.
fn manifests() -> Vec<Value> {
    let dir = manifest_dir();
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]))";
    let kustomization = run(Command::new(python())
        .args(["-c", script])
        .arg(dir.join("kustomization.yaml")));
    let kustomization: Vec<Value> = serde_json::from_str(&kustomization).unwrap();
    let files: Vec<PathBuf> = kustomization[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect();
    let out = run(Command::new(python()).args(["-c", script]).args(&files));
    serde_json::from_str(&out).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in packaging/kubernetes/"))
}

fn container<'a>(daemonset: &'a Value, name: &str) -> &'a Value {
    daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The value after `flag` in a command line.
fn flag<'a>(command: &[&'a str], flag: &str) -> &'a str {
    let i = command
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} in {command:?}"));
    command[i + 1]
}

/// Where `container` mounts the volume that `pred` picks.
fn mount_of(daemonset: &Value, container_name: &str, pred: impl Fn(&Value) -> bool) -> String {
    let spec = &daemonset["spec"]["template"]["spec"];
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| pred(v))
        .unwrap();
    container(daemonset, container_name)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{container_name} mounts {}", volume["name"]))["mountPath"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The DaemonSet's daemon arguments for the lab: without `--policy` (the lab
/// passes its own) and with the pod's run directory in the lab's.
fn daemon_args(lab: &Lab) -> Vec<String> {
    let objects = manifests();
    let ds = object(&objects, "DaemonSet", "ollama-warden");
    let command = strings(&container(ds, "warden")["command"]);
    assert_eq!(command[..2], ["warden", "daemon"]);
    let run = mount_of(ds, "warden", |v| v.get("emptyDir").is_some());
    let mut out = Vec::new();
    let mut rest = command[2..].iter();
    while let Some(a) = rest.next() {
        if *a == "--policy" {
            rest.next();
            continue;
        }
        out.push(a.replace(&run, &lab.run_dir.display().to_string()));
    }
    out
}

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
    // The DaemonSet's arguments, and a join window (the lab's default is none).
    let mut args = daemon_args(&lab);
    args.extend(["--correlate-secs".into(), "1".into()]);
    let socket = PathBuf::from(flag(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "--proxy-socket",
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = daemon_in_container(
        &lab,
        &ns,
        &format!("{warden_pod}/cri-containerd-warden.scope"),
        &args,
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

#[test]
fn manifests_validate_and_what_they_mount_loads() {
    // The API schemas, strictly (unknown fields are errors), at the newest
    // version the validator carries and at the oldest the manifests need
    // (appArmorProfile is 1.30).
    let dir = manifest_dir();
    let objects = manifests();
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    assert_eq!(
        files.len(),
        objects.len(),
        "kustomization lists every manifest"
    );
    let validator = python().with_file_name("kubernetes-validate");
    for version in ["1.37.0", "1.30.0"] {
        run(Command::new(&validator)
            .args(["--strict", "-k", version])
            .args(&files));
    }

    // The ConfigMap is a policy.d that `warden policy check` accepts.
    let tmp = tempdir();
    let cm = object(&objects, "ConfigMap", "ollama-warden-policy");
    let policy_d = tmp.join("policy.d");
    std::fs::create_dir(&policy_d).unwrap();
    for (name, text) in cm["data"].as_object().unwrap() {
        std::fs::write(policy_d.join(name), text.as_str().unwrap()).unwrap();
    }
    let checked = run(Command::new(warden_bin())
        .args(["policy", "check"])
        .arg(&policy_d));
    assert!(checked.starts_with("ok: "), "{checked}");
    let compiled = run(Command::new(warden_bin())
        .args(["policy", "show", "--compiled"])
        .arg(&policy_d));
    assert!(compiled.contains("@pod may connect"), "{compiled}");

    // The Secret's proxy.toml passes `warden proxy --check` with a key pair
    // where the TLS Secret is mounted.
    let ds = object(&objects, "DaemonSet", "ollama-warden");
    let secret = object(&objects, "Secret", "ollama-warden-proxy");
    let tls_mount = mount_of(ds, "proxy", |v| {
        v["secret"]["secretName"] == "ollama-warden-proxy-tls"
    });
    let tls = tmp.join("tls");
    std::fs::create_dir(&tls).unwrap();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ollama-warden",
            "-keyout",
        ])
        .arg(tls.join("tls.key"))
        .arg("-out")
        .arg(tls.join("tls.crt")));
    let proxy_toml = secret["stringData"]["proxy.toml"].as_str().unwrap();
    let config = tmp.join("proxy.toml");
    std::fs::write(
        &config,
        proxy_toml.replace(&tls_mount, &tls.display().to_string()),
    )
    .unwrap();
    run(Command::new(warden_bin())
        .args(["proxy", "--check", "--config"])
        .arg(&config));

    // The pieces refer to each other.
    let daemon = strings(&container(ds, "warden")["command"]);
    let proxy = strings(&container(ds, "proxy")["command"]);
    assert_eq!(
        flag(&daemon, "--policy"),
        mount_of(ds, "warden", |v| v["configMap"]["name"]
            == "ollama-warden-policy")
    );
    let config_mount = mount_of(ds, "proxy", |v| {
        v["secret"]["secretName"] == "ollama-warden-proxy"
    });
    assert_eq!(
        flag(&proxy, "--config"),
        format!("{config_mount}/proxy.toml")
    );
    let socket = flag(&daemon, "--proxy-socket");
    assert!(
        proxy_toml
            .lines()
            .any(|l| l == format!("report = \"{socket}\"")),
        "the proxy reports where the daemon listens: {proxy_toml}"
    );
    let run_dir = mount_of(ds, "proxy", |v| v.get("emptyDir").is_some());
    assert_eq!(
        run_dir,
        mount_of(ds, "warden", |v| v.get("emptyDir").is_some())
    );
    assert!(
        Path::new(socket).starts_with(&run_dir),
        "{socket} is on the shared volume"
    );
    assert_eq!(flag(&daemon, "--proxy-cgroup"), "@pod");
    assert_eq!(flag(&daemon, "--events"), "stdout");

    // The daemon gets the capabilities its systemd unit is bounded to, no more.
    let unit = std::fs::read_to_string(workspace().join("packaging/systemd/ollama-warden.service"))
        .unwrap();
    let mut bounded: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let caps = &container(ds, "warden")["securityContext"]["capabilities"];
    let mut added: Vec<String> = strings(&caps["add"])
        .iter()
        .map(|s| s.to_string())
        .collect();
    bounded.sort();
    added.sort();
    assert_eq!(added, bounded);
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    let proxy_ctx = &container(ds, "proxy")["securityContext"];
    assert_eq!(proxy_ctx["runAsNonRoot"], true);
    assert_eq!(strings(&proxy_ctx["capabilities"]["drop"]), ["ALL"]);
    assert!(proxy_ctx["capabilities"].get("add").is_none());
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("warden-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
