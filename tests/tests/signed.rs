//! Signed policies: with `--require-signature`, only files signed (minisign) by the
//! given key load; unsigned, tampered and foreign-signed files are rejected and the
//! running policy stays.

use std::path::Path;
use std::process::Command;
use warden_tests::{Lab, sh};

const PORT: u16 = 11434;

fn keypair(dir: &Path, name: &str) -> (String, String) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    sh(&format!(
        "minisign -G -W -f -p {} -s {} >/dev/null",
        public.display(),
        secret.display()
    ));
    (public.display().to_string(), secret.display().to_string())
}

fn sign(secret: &str, file: &Path) {
    sh(&format!(
        "minisign -S -s {secret} -m {} >/dev/null",
        file.display()
    ));
}

/// Writes `text` to `dir/name` (and its signature, if `secret`) as a push would:
/// signature first, then the file, each renamed into place.
fn push(dir: &Path, name: &str, text: &str, secret: Option<&str>) {
    let staging = dir.parent().unwrap().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let file = staging.join(name);
    std::fs::write(&file, text).unwrap();
    if let Some(secret) = secret {
        sign(secret, &file);
        std::fs::rename(
            staging.join(format!("{name}.minisig")),
            dir.join(format!("{name}.minisig")),
        )
        .unwrap();
    }
    std::fs::rename(&file, dir.join(name)).unwrap();
}

fn policy(lab: &Lab, allowed: &str) -> String {
    format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("server"),
        lab.cgroup(allowed)
    )
}

#[test]
fn only_policies_signed_by_the_key_are_applied() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let (public, secret) = keypair(&lab.run_dir, "team");
    let (_, other_secret) = keypair(&lab.run_dir, "intruder");
    let dir = lab.run_dir.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    push(&dir, "10.toml", &policy(&lab, "proxy"), Some(&secret));

    let d = lab.daemon_with(Some(&ns), &dir, &["--require-signature", &public]);
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");

    // An allow-all-ish push without a signature, with a foreign signature, and a
    // tampered one: all rejected, the signed policy stays.
    let evil = policy(&lab, "rogue");
    push(&dir, "10.toml", &evil, None);
    let ev = d.wait_event("rejected: stale signature", |e| {
        e["type"] == "policy_rejected"
    });
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("10.toml:1:1: signature check failed"),
        "{ev}"
    );
    push(&dir, "20.toml", &evil, None);
    d.wait_event("rejected: unsigned", |e| {
        e["type"] == "policy_rejected"
            && e["error"]
                .as_str()
                .unwrap()
                .contains("20.toml:1:1: unsigned policy file")
    });
    std::fs::remove_file(dir.join("20.toml")).unwrap();
    push(&dir, "10.toml", &evil, Some(&other_secret));
    d.wait_event("rejected: foreign key", |e| {
        e["type"] == "policy_rejected"
            && e["error"]
                .as_str()
                .unwrap()
                .contains("10.toml:1:1: signature check failed")
            && e["generation_in_force"] == 1
    });
    assert_eq!(
        rogue.connect("127.0.0.1", PORT),
        "denied",
        "no rejected push took effect"
    );

    // A properly signed change applies.
    push(&dir, "10.toml", &evil, Some(&secret));
    d.wait_event("applied", |e| {
        e["type"] == "policy_applied" && e["generation"] == 2
    });
    assert_eq!(rogue.connect("127.0.0.1", PORT), "connected");
}

#[test]
fn check_and_start_refuse_unsigned_files() {
    let lab = Lab::new();
    let (public, secret) = keypair(&lab.run_dir, "team");
    let file = lab.run_dir.join("p.toml");
    std::fs::write(&file, policy(&lab, "proxy")).unwrap();
    let warden = |args: &[&str]| {
        Command::new(warden_tests::warden_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();

    let out = warden(&["policy", "check", "--require-signature", &public, f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(&format!("{f}:1:1: unsigned policy file"))
    );

    sign(&secret, &file);
    let out = warden(&["policy", "check", "--require-signature", &public, f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&file, policy(&lab, "rogue")).unwrap();
    let run = lab.run_dir.to_str().unwrap();
    let out = warden(&[
        "--run-dir",
        run,
        "daemon",
        "--policy",
        f,
        "--require-signature",
        &public,
    ]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad policy at start-up is EX_USAGE"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature check failed"));
}
