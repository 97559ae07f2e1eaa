//! `warden events`: a live subscription to the running daemon gets exactly
//! the decisions it made, in the format asked; a subscriber that does not
//! read is dropped and counted while the sinks and other subscribers lose
//! nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::{Lab, warden_bin};

const PORT: u16 = 11434;

/// `warden events ARGS` in the background; its JSON lines as they come.
struct Follower {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    fn start(lab: &Lab, args: &[&str]) -> Self {
        let mut child = Command::new(warden_bin())
            .args(lab.dir_args())
            .arg("events")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("warden events");
        let out = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                sink.lock().unwrap().push(v);
            }
        });
        Self { child, lines }
    }

    fn flows(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "flow" && pred(v))
            .count()
    }

    /// Waits until `pred` holds for `n` flows (and no more arrive for a moment).
    fn wait(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + warden_tests::patience(Duration::from_secs(20));
        while self.flows(&pred) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.flows(&pred), n, "{what}");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_subscriber_gets_exactly_the_decisions_and_a_slow_one_is_dropped_alone() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let model = lab.cgroup("model");
    let policy =
        format!("version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{model}\"]\n");
    let d = lab.daemon(Some(&ns), &lab.policy("p.toml", &policy));
    let mut server = lab.prober(Some(&ns), Some("model"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let rogue_pid = rogue.pid();
    let mut client = lab.prober(Some(&ns), Some("model/client"));
    let client_pid = client.pid();

    // Everything the daemon keeps, then live; denies only, for the second.
    let all = Follower::start(&lab, &["--follow", "--since", "1h", "--format", "json"]);
    let denies = Follower::start(
        &lab,
        &["--follow", "--format", "json", "--filter", "verdict=deny"],
    );
    std::thread::sleep(Duration::from_millis(500));

    for _ in 0..5 {
        assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    }
    for _ in 0..3 {
        assert_eq!(client.connect("127.0.0.1", PORT), "connected");
    }
    let denied = |v: &Value| {
        v["hook"] == "connect4"
            && v["verdict"] == "deny"
            && v["pid"] == rogue_pid
            && v["reason"] == "local_not_allowed"
            && v["dst_port"] == PORT
    };
    let allowed = |v: &Value| {
        v["hook"] == "connect4"
            && v["verdict"] == "allow"
            && v["pid"] == client_pid
            && v["reason"] == "local_allowed"
    };
    all.wait("every deny", 5, denied);
    all.wait("every allow", 3, allowed);
    denies.wait("the filter's denies", 5, denied);
    assert_eq!(
        denies.flows(|v| v["verdict"] != "deny"),
        0,
        "the filter lets only denies through"
    );
    // The same decisions as the daemon's own sink.
    assert_eq!(d.events().iter().filter(|v| denied(v)).count(), 5);
    assert_eq!(d.events().iter().filter(|v| allowed(v)).count(), 3);

    // Without --follow: the recent decisions, then exit; compact lines name
    // the rule and where it was written.
    let out = lab.warden(&["events", "--format", "compact"]);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" connect4 ")).collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains(" DENY ")).count(),
        5,
        "{out}"
    );
    let allow_line = lines
        .iter()
        .find(|l| l.contains(" ALLOW "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        allow_line.contains(&format!("pid {client_pid} python3")),
        "{allow_line}"
    );
    assert!(
        allow_line.contains("local_allowed  rule 1 "),
        "{allow_line}"
    );
    assert!(allow_line.contains("p.toml:4:19)"), "{allow_line}");

    // A subscriber that never reads: dropped once it is a queue behind; the
    // sink and the reading subscriber lose nothing.
    let mut stalled =
        std::os::unix::net::UnixStream::connect(lab.run_dir.join("events.sock")).unwrap();
    writeln!(stalled, r#"{{"format":"raw"}}"#).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    const FLOOD: usize = 12_000;
    let burst = rogue.ask(&format!("connectn 127.0.0.1 {PORT} {FLOOD}"));
    let burst: Value = serde_json::from_str(&burst).unwrap();
    assert_eq!(burst["verdicts"]["denied"], FLOOD, "{burst}");
    all.wait("every deny of the flood", 5 + FLOOD, denied);
    let status = lab.status();
    assert_eq!(status["events"]["subscribers_dropped"], 1, "{status}");
    for s in status["events"]["sinks"].as_array().unwrap() {
        assert_eq!(s["dropped"], 0, "{status}");
        assert_eq!(s["failed"], 0, "{status}");
    }
    assert_eq!(d.events().iter().filter(|v| denied(v)).count(), 5 + FLOOD);
    drop(stalled);
}

#[test]
fn an_allowed_connection_carries_the_community_id_of_its_packets() {
    let mut lab = Lab::new();
    let ns = lab.netns("host");
    let model = lab.cgroup("model");
    let policy =
        format!("version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{model}\"]\n");
    let d = lab.daemon_with(
        Some(&ns),
        &lab.policy("p.toml", &policy),
        &["--event-format", "ocsf"],
    );
    let mut server = lab.prober(Some(&ns), Some("model"));
    assert_eq!(server.ask(&format!("listen 0.0.0.0 {PORT}")), "ok");
    let mut sniffer = lab.prober(Some(&ns), None);
    assert_eq!(sniffer.ask(&format!("capture lo {PORT}")), "ok");
    let mut client = lab.prober(Some(&ns), Some("model/client"));
    let mut rogue = lab.prober(Some(&ns), Some("rogue"));
    let rogue_pid = rogue.pid();

    assert_eq!(client.connect("127.0.0.1", PORT), "connected");
    std::thread::sleep(Duration::from_millis(200));
    let captured = sniffer.ask("captured");
    let fields: Vec<&str> = captured.split(' ').collect();
    assert_eq!(fields.len(), 5, "the SYN was captured: {captured}");
    let (sport, cid) = (fields[1].parse::<u64>().unwrap(), fields[4]);
    let ev = d.wait_event("the allowed connect with its source", |e| {
        e["unmapped"]["warden"]["hook"] == "connect4"
            && e["action_id"] == 1
            && e["src_endpoint"]["port"] == sport
    });
    assert_eq!(ev["src_endpoint"]["ip"], fields[0]);
    assert_eq!(
        ev["connection_info"]["community_uid"], cid,
        "the Community ID of the captured packets: {ev}"
    );

    // A denied connect never gets a source port, so it has no Community ID.
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    let denied = d.wait_event("the denied connect", |e| {
        e["unmapped"]["warden"]["hook"] == "connect4" && e["actor"]["process"]["pid"] == rogue_pid
    });
    assert!(
        denied["connection_info"].get("community_uid").is_none(),
        "{denied}"
    );
}
