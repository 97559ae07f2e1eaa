//! Signed policies: with `--require-signature`, only files signed (minisign) by the
//! given key load; unsigned, tampered and foreign-signed files are rejected and the
//! running policy stays.

use std::path::Path;
use std::process::Command;
use warden_tests::{Lab, keypair, sh};

const PORT: u16 = 11434;

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

/// A push of a whole signed set: the files, then `warden policy sign`.
fn sign_set(lab: &Lab, dir: &Path, secret: &str, serial: Option<u64>) {
    let mut args = vec!["policy", "sign", dir.to_str().unwrap(), "--key", secret];
    let s = serial.map(|s| s.to_string());
    if let Some(s) = &s {
        args.extend(["--serial", s]);
    }
    let out = lab.warden(&args);
    assert!(out.starts_with("signed "), "{out}");
}

#[test]
fn signed_sets_refuse_replayed_trimmed_and_extended_directories() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let (public, secret) = keypair(&lab.run_dir, "team");
    let dir = lab.run_dir.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    let base = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n",
        lab.cgroup("server")
    );
    let allow = |who: &str| {
        format!(
            "version = 1\n[local]\nallow_cgroups = [\"{}\"]\n",
            lab.cgroup(who)
        )
    };
    std::fs::write(dir.join("10-base.toml"), &base).unwrap();
    std::fs::write(dir.join("20-clients.toml"), allow("old")).unwrap();
    sign_set(&lab, &dir, &secret, None);
    let serial1: Vec<(String, Vec<u8>)> =
        ["MANIFEST.json", "MANIFEST.json.minisig", "20-clients.toml"]
            .iter()
            .map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap()))
            .collect();

    let d = lab.daemon_with(Some(&ns), &dir, &["--require-signature", &public]);
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut old = lab.prober(Some(&ns), Some("old"));
    let mut new = lab.prober(Some(&ns), Some("new"));
    assert_eq!(old.connect("127.0.0.1", PORT), "connected");
    assert_eq!(new.connect("127.0.0.1", PORT), "denied");

    // Serial 2 moves the allowance from `old` to `new`.
    std::fs::write(dir.join("20-clients.toml"), allow("new")).unwrap();
    sign_set(&lab, &dir, &secret, None);
    d.wait_event("serial 2 applied", |e| {
        e["type"] == "policy_applied" && e["generation"] == 2
    });
    assert_eq!(new.connect("127.0.0.1", PORT), "connected");
    assert_eq!(old.connect("127.0.0.1", PORT), "denied");

    let rejected = |what: &str, needle: &str| {
        let ev = d.wait_event(what, |e| {
            e["type"] == "policy_rejected" && e["error"].as_str().unwrap_or("").contains(needle)
        });
        assert_eq!(ev["generation_in_force"], 2, "{ev}");
    };
    // Replayed: serial 1's files and signed manifest, exactly as they were.
    for (name, bytes) in &serial1 {
        std::fs::write(dir.join(format!(".{name}")), bytes).unwrap();
        std::fs::rename(dir.join(format!(".{name}")), dir.join(name)).unwrap();
    }
    rejected(
        "a replayed set",
        "policy set serial 1 is older than serial 2 in force",
    );
    assert_eq!(
        old.connect("127.0.0.1", PORT),
        "denied",
        "the replay took no effect"
    );
    assert_eq!(new.connect("127.0.0.1", PORT), "connected");

    // Back to serial 3, then trimmed (a signed fragment deleted) and extended
    // (an unsigned one added).
    std::fs::write(dir.join("20-clients.toml"), allow("new")).unwrap();
    sign_set(&lab, &dir, &secret, Some(3));
    d.wait_event("serial 3, unchanged", |e| e["type"] == "policy_unchanged");
    std::fs::remove_file(dir.join("20-clients.toml")).unwrap();
    rejected(
        "a trimmed set",
        "20-clients.toml is in the signed manifest (serial 3) but missing",
    );
    std::fs::write(dir.join("20-clients.toml"), allow("new")).unwrap();
    std::fs::write(dir.join("30-extra.toml"), allow("old")).unwrap();
    rejected(
        "an extended set",
        "30-extra.toml is not in the signed manifest (serial 3)",
    );
    // A listed file changed after signing.
    std::fs::remove_file(dir.join("30-extra.toml")).unwrap();
    std::fs::write(dir.join("20-clients.toml"), allow("old")).unwrap();
    rejected("a changed fragment", "does not match the signed manifest");
    assert_eq!(
        old.connect("127.0.0.1", PORT),
        "denied",
        "no rejected set took effect"
    );
    assert_eq!(new.connect("127.0.0.1", PORT), "connected");

    // A new daemon refuses to start with an older set than the one in force.
    drop(d);
    for (name, bytes) in &serial1 {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let out = Command::new(warden_tests::warden_bin())
        .args(lab.dir_args())
        .args([
            "daemon",
            "--policy",
            dir.to_str().unwrap(),
            "--require-signature",
            &public,
        ])
        .args([
            "--attach-cgroup",
            lab.cgroup.to_str().unwrap(),
            "--dns-port",
            "0",
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serial 1 is older than serial 3 in force"),
        "{err}"
    );
    assert_eq!(
        new.connect("127.0.0.1", PORT),
        "connected",
        "pinned enforcement stays"
    );
    assert_eq!(old.connect("127.0.0.1", PORT), "denied");
}
