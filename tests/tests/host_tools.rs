//! `warden doctor` against a deliberately weak setup and a good one, and
//! `warden discover` against a host with clients; both in a lab network
//! namespace, with the stand-in Ollama as the server.

use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use warden_tests::enter;
use warden_tests::proxy::{Placement, ProxyLab, helper, python};
use warden_tests::{Lab, warden_bin, workspace};

const PORT: u16 = 11434;

/// The unit Ollama's installer writes (no hardening).
const STOCK_UNIT: &str = "[Unit]\nDescription=Ollama Service\nAfter=network-online.target\n\n\
[Service]\nExecStart=/usr/local/bin/ollama serve\nUser=ollama\nGroup=ollama\nRestart=always\n\
RestartSec=3\n\n[Install]\nWantedBy=default.target\n";

/// The stand-in Ollama on `host:PORT` in `ns`, in the lab's `server` cgroup,
/// with its model store at `models`.
struct Ollama(Child);

impl Ollama {
    /// `env`: extra environment (e.g. `OLLAMA_NO_CLOUD`).
    fn start(lab: &Lab, ns: &str, host: &str, models: &Path, env: &[(&str, &str)]) -> Self {
        let out = lab.run_dir.join(format!("ollama-{host}.out"));
        let mut cmd = Command::new(python());
        cmd.arg(helper("fake_ollama.py"))
            .args(["--host", host, "--port", &PORT.to_string(), "--log"])
            .arg(lab.run_dir.join("ollama.jsonl"))
            .env("OLLAMA_HOST", format!("{host}:{PORT}"))
            .env("OLLAMA_MODELS", models)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit());
        lab.cgroup("server");
        enter(&mut cmd, Some(ns), Some(&lab.cgroup.join("server")));
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("listening")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "stand-in did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Ollama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `warden ARGS` in `ns` with the lab's directories; (exit code, stdout).
fn warden_in(lab: &Lab, ns: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(warden_bin());
    cmd.args(lab.dir_args()).args(args);
    enter(&mut cmd, Some(ns), None);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn doctor(lab: &Lab, ns: &str, proxy_config: &Path, units: &Path) -> (i32, Vec<Value>) {
    let (code, out) = warden_in(
        lab,
        ns,
        &[
            "doctor",
            "--json",
            "--proxy-config",
            proxy_config.to_str().unwrap(),
            "--unit-dir",
            units.to_str().unwrap(),
            "--ollama-unit",
            "ollama.service",
        ],
    );
    let checks: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, checks)
}

fn with_status(checks: &[Value], status: &str) -> BTreeSet<String> {
    checks
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn models_dir(lab: &Lab, mode: u32) -> PathBuf {
    let dir = lab.run_dir.join(format!("models-{mode:o}"));
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

#[test]
fn doctor_flags_exactly_the_weaknesses_of_a_weak_setup_and_none_of_a_good_one() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");

    // Weak: Ollama on 0.0.0.0, a model store anyone may write, the installer's
    // unit without hardening, no proxy, no warden.
    let units = lab.run_dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(units.join("ollama.service"), STOCK_UNIT).unwrap();
    let loose = models_dir(&lab, 0o777);
    let no_proxy = lab.run_dir.join("no-proxy.toml");
    let (code, checks) = {
        let _ollama = Ollama::start(&lab, &ns, "0.0.0.0", &loose, &[]);
        doctor(&lab, &ns, &no_proxy, &units)
    };
    eprintln!("weak: {checks:#?}");
    assert_eq!(code, 1, "a failed check exits 1");
    let want: BTreeSet<String> = [
        "ollama-bind",
        "ollama-unit",
        "model-store",
        "proxy",
        "warden",
    ]
    .map(String::from)
    .into();
    assert_eq!(with_status(&checks, "fail"), want);
    let cloud = checks.iter().find(|c| c["id"] == "ollama-cloud").unwrap();
    assert_eq!(cloud["status"], "warn", "cloud models left on: {cloud}");
    for c in checks.iter().filter(|c| c["status"] == "fail") {
        assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
    }
    let bind = checks.iter().find(|c| c["id"] == "ollama-bind").unwrap();
    assert!(
        bind["detail"].as_str().unwrap().contains("0.0.0.0:11434"),
        "{bind}"
    );

    // Good: loopback only, the recommended drop-in, a private model store, the
    // proxy answering, warden enforcing with a working event sink.
    let dropin = units.join("ollama.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::copy(
        workspace().join("packaging/systemd/ollama.service.d/ollama-warden.conf"),
        dropin.join("ollama-warden.conf"),
    )
    .unwrap();
    let private = models_dir(&lab, 0o750);
    let _ollama = Ollama::start(
        &lab,
        &ns,
        "127.0.0.1",
        &private,
        &[("OLLAMA_NO_CLOUD", "1")],
    );
    let proxy = ProxyLab::start_in(
        "[[identity]]\nname = \"alice\"\ntokens = [\"@token:alice@\"]\nmodels = [\"llama3*\"]\n",
        &[],
        Placement {
            netns: Some(ns.clone()),
            // A fixed port, as a deployed config has (the lab's own netns).
            listen: Some("127.0.0.1:8443".into()),
            ..Default::default()
        },
    );
    let policy = lab.policy(
        "p.toml",
        &format!(
            "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n",
            lab.cgroup("server")
        ),
    );
    let _daemon = lab.daemon(Some(&ns), &policy);
    let (code, checks) = doctor(&lab, &ns, &proxy.config_path(), &units);
    eprintln!("good: {checks:#?}");
    assert_eq!(with_status(&checks, "fail"), BTreeSet::new());
    assert_eq!(code, 0);
    for id in [
        "ollama-bind",
        "ollama-unit",
        "model-store",
        "proxy",
        "warden",
        "event-sink",
        "ollama-cloud",
    ] {
        let c = checks.iter().find(|c| c["id"] == id).unwrap();
        assert_eq!(c["status"], "pass", "{c}");
    }
    // The test PKI lasts 2 days: the proxy's certificates are close to their end.
    let certs = checks.iter().find(|c| c["id"] == "proxy-certs").unwrap();
    assert_eq!(certs["status"], "warn", "{certs}");
    let detail = certs["detail"].as_str().unwrap();
    assert!(
        detail.contains("expires in 1 day(s)") || detail.contains("expires in 2 day(s)"),
        "{certs}"
    );
}

#[test]
fn discover_prints_a_valid_starting_policy_naming_the_server_and_its_clients() {
    let warden_tests::Topology {
        lab,
        srv,
        good,
        bad: _,
    } = warden_tests::topology();
    let models = models_dir(&lab, 0o750);
    let _ollama = Ollama::start(&lab, &srv, "0.0.0.0", &models, &[]);
    let mut local = lab.prober(Some(&srv), Some("client"));
    assert_eq!(local.ask(&format!("hold 127.0.0.1 {PORT}")), "connected");
    let mut remote = lab.prober(Some(&good), None);
    assert_eq!(remote.ask(&format!("hold 10.88.1.1 {PORT}")), "connected");

    let (code, text) = warden_in(&lab, &srv, &["discover"]);
    assert_eq!(code, 0);
    eprintln!("{text}");
    let file = lab.policy("discovered.toml", &text);
    let shown = lab.warden(&["policy", "show", file.to_str().unwrap()]);
    let p: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(p["ingress"]["mode"], "audit", "starts in audit mode");
    assert_eq!(p["server_cgroups"][0]["value"], lab.cgroup_rel("server"));
    let allow: Vec<&str> = p["ingress"]["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["value"].as_str().unwrap())
        .collect();
    assert_eq!(allow, ["10.88.1.2/32"]);
    let local: Vec<&str> = p["local_allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["value"].as_str().unwrap())
        .collect();
    assert!(
        local.contains(&lab.cgroup_rel("client").as_str()),
        "{local:?}"
    );
    assert!(
        text.contains("OLLAMA_HOST=0.0.0.0:11434"),
        "environment shown"
    );
    assert!(text.contains("WARNING: not bound to loopback"));
}
