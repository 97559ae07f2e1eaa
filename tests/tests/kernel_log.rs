//! The kernel programs' debug diagnostics (aya-log): absent from the loaded
//! programs unless asked for, and when asked for, one `warden kernel` line
//! per recorded verdict in the daemon's log.

use std::time::Duration;
use warden_tests::{Lab, patience};

const PORT: u16 = 11434;

fn policy(lab: &Lab) -> String {
    format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("server"),
        lab.cgroup("client")
    )
}

/// Translated bytes of the connect4 program attached at the lab's cgroup.
fn connect4_bytes(lab: &Lab) -> u64 {
    let out = warden_tests::sh(&format!("bpftool -j cgroup show {}", lab.cgroup.display()));
    let attached: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    let id = attached
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["attach_type"] == "cgroup_inet4_connect")
        .and_then(|p| p["id"].as_u64())
        .expect("connect4 attached");
    let out = warden_tests::sh(&format!("bpftool -j prog show id {id}"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    v["bytes_xlated"].as_u64().expect("bytes_xlated")
}

/// Runs a daemon with `extra`, makes one denied and one allowed connect;
/// returns the daemon's log and connect4's translated size.
fn run(extra: &[&str]) -> (String, u64) {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let p = lab.policy("p.toml", &policy(&lab));
    let mut d = lab.daemon_with(Some(&ns), &p, extra);
    let mut server = lab.prober(Some(&ns), Some("server"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    assert_eq!(
        lab.prober(Some(&ns), Some("rogue"))
            .connect("127.0.0.1", PORT),
        "denied"
    );
    assert_eq!(
        lab.prober(Some(&ns), Some("client"))
            .connect("127.0.0.1", PORT),
        "connected"
    );
    d.wait_event("deny", |e| e["verdict"] == "deny");
    let bytes = connect4_bytes(&lab);
    std::thread::sleep(patience(Duration::from_millis(200)));
    assert!(
        d.stop(patience(Duration::from_secs(10))),
        "the daemon stops"
    );
    (
        std::fs::read_to_string(&d.stderr).unwrap_or_default(),
        bytes,
    )
}

#[test]
fn kernel_logs_are_absent_unless_asked_for_and_then_name_each_verdict() {
    let (quiet, quiet_bytes) = run(&[]);
    assert!(
        !quiet.contains("warden kernel:"),
        "no kernel lines by default:\n{quiet}"
    );

    let (loud, loud_bytes) = run(&["--kernel-log-level", "debug", "--log-level", "info"]);
    let lines: Vec<&str> = loud
        .lines()
        .filter(|l| l.starts_with("warden kernel: DEBUG "))
        .collect();
    // warden_common: hook 2 = connect4; verdict 1 = allow, 2 = deny.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("hook 2 verdict 2 ") && l.contains(&format!("port {PORT}"))),
        "the denied connect, named:\n{loud}"
    );
    assert!(
        lines.iter().any(|l| l.contains("hook 2 verdict 1 ")),
        "the allowed connect, named:\n{loud}"
    );
    eprintln!("connect4 translated: {quiet_bytes} bytes with kernel logs off, {loud_bytes} on");
    eprintln!("{}", lines.first().unwrap_or(&""));
    // Off, the verifier removed the log calls: the loaded program is smaller.
    assert!(
        quiet_bytes < loud_bytes,
        "connect4 {quiet_bytes} bytes off, {loud_bytes} on"
    );
}
