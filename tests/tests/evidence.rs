//! `warden evidence`: a bundle an auditor checks with standard tools alone
//! (tests/helpers/check_evidence.py: tarfile, `sha256sum -c`, `minisign -V`),
//! which holds the policy in force with its signatures, the decisions of the
//! period as they were made, and the proxy's identities without a secret.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use warden_tests::proxy::{helper, python};
use warden_tests::{Lab, keypair, sh, warden_bin, workspace};

const PORT: u16 = 11434;

fn warden(args: &[&str]) -> String {
    let out = Command::new(warden_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The independent check: (passed, what it printed).
fn check(bundle: &Path, public: &str, out: &Path) -> (bool, String) {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(python())
        .arg(helper("check_evidence.py"))
        .arg(bundle)
        .arg(public)
        .arg(out)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text)
}

fn part(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn an_evidence_bundle_checks_against_its_signed_sums_and_tells_what_happened() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let (public, secret) = keypair(&lab.run_dir, "team");
    let (other_public, _) = keypair(&lab.run_dir, "other");
    let dir = lab.run_dir.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    let policy_file = dir.join("10.toml");
    let policy = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("server"),
        lab.cgroup("proxy")
    );
    std::fs::write(&policy_file, &policy).unwrap();
    warden(&["policy", "sign", dir.to_str().unwrap(), "--key", &secret]);
    let d = lab.daemon_with(
        Some(&ns),
        &dir,
        &["--require-signature", &public, "--event-format", "ocsf"],
    );

    // The decisions of the period: 4 denies, 2 allows.
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let mut client = lab.prober(Some(&ns), Some("proxy"));
    for _ in 0..4 {
        assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    }
    for _ in 0..2 {
        assert_eq!(client.connect("127.0.0.1", PORT), "connected");
    }
    let connects = |verdict: u64| {
        move |e: &Value| e["unmapped"]["warden"]["hook"] == "connect4" && e["action_id"] == verdict
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.events().iter().filter(|e| connects(2)(e)).count() < 4
        || d.events().iter().filter(|e| connects(1)(e)).count() < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the six connects were recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A proxy config with one identity of each kind.
    let token = warden(&["token", "new", "alice"]);
    let (token, token_line) = token.split_once('\n').unwrap();
    let token_hash = token_line.split('"').nth(1).unwrap().to_owned();
    let mut basic = Command::new(warden_bin())
        .args(["token", "basic", "bob"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(basic.stdin.take().unwrap(), "correct horse").unwrap();
    let basic = basic.wait_with_output().unwrap();
    assert!(basic.status.success());
    let phc = String::from_utf8_lossy(&basic.stdout)
        .split('"')
        .nth(1)
        .unwrap()
        .to_owned();
    let proxy_config = lab.run_dir.join("proxy.toml");
    std::fs::write(
        &proxy_config,
        format!(
            "listen = \"127.0.0.1:8443\"\nupstream = \"http://127.0.0.1:{PORT}\"\n\
             [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n\
             [[content_rule]]\nname = \"no-keys\"\npattern = \"BEGIN PRIVATE KEY\"\naction = \"refuse\"\n\
             [[identity]]\nname = \"alice\"\ntokens = [\"{token_hash}\"]\nmodels = [\"llama3*\"]\n\
             [[identity]]\nname = \"bob\"\nbasic = \"{phc}\"\nmodels = [\"*\"]\nadmin = true\n\
             [[identity]]\nname = \"carol\"\nmtls = [\"carol.example\"]\nmodels = [\"qwen*\"]\nsources = [\"10.0.0.0/8\"]\n"
        ),
    )
    .unwrap();

    let bundle = lab.run_dir.join("evidence.tar");
    let units = workspace().join("packaging/systemd");
    let evidence = |bundle: &Path, key: &str| {
        lab.warden_in(
            Some(&ns),
            &[
                "evidence",
                "--since",
                "1h",
                "--out",
                bundle.to_str().unwrap(),
                "--key",
                key,
                "--events",
                d.events.to_str().unwrap(),
                "--proxy-config",
                proxy_config.to_str().unwrap(),
                "--unit-dir",
                units.to_str().unwrap(),
            ],
        )
    };
    let said = evidence(&bundle, &secret);
    assert!(said.contains("signed"), "{said}");

    let out = lab.run_dir.join("checked");
    let (ok, text) = check(&bundle, &public, &out);
    assert!(ok, "the bundle checks: {text}");
    // The check can fail: another key, a changed part, an added file.
    let (ok, text) = check(&bundle, &other_public, &lab.run_dir.join("other"));
    assert!(!ok && text.contains("minisign"), "{text}");
    let tampered = lab.run_dir.join("tampered.tar");
    let repack = |edit: &str| {
        let t = lab.run_dir.join("t");
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        sh(&format!("tar -xf {} -C {}", bundle.display(), t.display()));
        sh(&format!(
            "cd {} && {edit} && find . -type f -printf '%P\\n' | tar -cf {} -T -",
            t.display(),
            tampered.display()
        ));
    };
    repack("sed -i 's/\"deny\": 4/\"deny\": 0/' events.json");
    let (ok, text) = check(&tampered, &public, &lab.run_dir.join("t1"));
    assert!(!ok && text.contains("events.json"), "{text}");
    repack("echo '{}' > extra.json");
    let (ok, text) = check(&tampered, &public, &lab.run_dir.join("t2"));
    assert!(!ok && text.contains("extra.json"), "{text}");

    // The policy in force, signed as a set, as the files on disk.
    let status = lab.status();
    let p = part(&out, "policy.json");
    assert_eq!(p["in_force"]["digest"], status["policy"]["digest"], "{p}");
    assert_eq!(p["signature"]["required"], true);
    assert_eq!(p["signature"]["sets_in_force"][0]["serial"], 1, "{p}");
    let f = &p["files"][0];
    assert_eq!(f["path"], policy_file.to_str().unwrap(), "{p}");
    assert_eq!(f["signature"], "signed set, serial 1");
    let copy = out.join(f["copy"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(copy).unwrap(), policy);
    assert!(
        out.join(format!(
            "policy{}",
            dir.join("MANIFEST.json.minisig").display()
        ))
        .exists()
    );
    assert_eq!(p["on_disk"]["matches_in_force"], true, "{p}");
    assert_eq!(p["on_disk"]["signatures_verified"], true, "{p}");

    // Enforcement, hardening, doctor.
    let e = part(&out, "enforcement.json");
    assert_eq!(e["status"]["enforcing"], true, "{e}");
    assert_eq!(e["status"]["backend"], "ebpf", "{e}");
    let u = part(&out, "units.json");
    let daemon_unit = u["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["unit"] == "ollama-warden.service")
        .unwrap();
    let exposure = daemon_unit["exposure"]
        .as_f64()
        .unwrap_or_else(|| panic!("{u}"));
    assert!((0.0..=3.0).contains(&exposure), "{u}");
    let doc = part(&out, "doctor.json");
    assert!(!doc["checks"].as_array().unwrap().is_empty(), "{doc}");

    // Identities: names, kinds and models; no secret anywhere in the bundle.
    let px = part(&out, "proxy.json");
    let ids = px["identities"].as_array().unwrap();
    let kinds: Vec<(&str, &Value)> = ids
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), &i["kinds"]))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alice", &serde_json::json!(["token"])),
            ("bob", &serde_json::json!(["basic"])),
            ("carol", &serde_json::json!(["mtls"]))
        ],
        "{px}"
    );
    assert_eq!(ids[0]["models"], serde_json::json!(["llama3*:*"]));
    assert_eq!(ids[1]["admin"], true);
    assert_eq!(ids[2]["sources"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(px["content_rules"][0]["name"], "no-keys");
    let token_hex = token_hash.trim_start_matches("sha256:");
    for entry in walk(&out) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [token, token_hex, phc.as_str(), "BEGIN PRIVATE KEY"] {
            assert!(!text.contains(secret), "{} holds a secret", entry.display());
        }
    }

    // The period's decisions, exactly as made.
    let ev = part(&out, "events.json");
    assert_eq!(
        ev["by_reason"]["deny connect4 local_not_allowed"], 4,
        "{ev}"
    );
    assert_eq!(ev["by_reason"]["allow connect4 local_allowed"], 2, "{ev}");
    assert_eq!(ev["lifecycle"]["start"], 1, "{ev}");
    assert_eq!(ev["policy_changes"][0]["event"], "policy_applied", "{ev}");
    assert_eq!(
        ev["policy_changes"][0]["digest"], status["policy"]["digest"],
        "{ev}"
    );
    assert_eq!(ev["unreadable"], 0, "{ev}");

    // A file changed behind the signature: the daemon keeps its policy and
    // the next bundle says the disk no longer matches, with the rejection.
    std::fs::write(&policy_file, policy.replace("proxy", "rogue")).unwrap();
    d.wait_event("the rejection", |e| {
        e["unmapped"]["warden"]["event"] == "policy_rejected"
    });
    let second = lab.run_dir.join("second.tar");
    evidence(&second, &secret);
    let out2 = lab.run_dir.join("checked2");
    let (ok, text) = check(&second, &public, &out2);
    assert!(ok, "{text}");
    let p = part(&out2, "policy.json");
    assert_eq!(p["on_disk"]["matches_in_force"], false, "{p}");
    assert!(
        p["on_disk"]["error"].as_str().unwrap().contains("10.toml"),
        "{p}"
    );
    let ev = part(&out2, "events.json");
    assert_eq!(ev["lifecycle"]["policy_rejected"], 1, "{ev}");
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
