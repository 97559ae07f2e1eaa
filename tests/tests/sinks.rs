//! Event sinks and loss accounting: a real rsyslog receives RFC 5424 over TCP and
//! UDP; a receiver that stops reading never delays a verdict and every event it
//! missed is counted; repeated denies are aggregated with the first reported at once.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use warden_tests::{Lab, Prober, enter, workspace};

const PORT: u16 = 11434;

fn policy(lab: &Lab) -> String {
    format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("ollama.service"),
        lab.cgroup("proxy.service"),
    )
}

/// A helper process inside `netns`, driven line by line; killed on drop.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(netns: &str, program: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        enter(&mut cmd, Some(netns), None);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(h.line(), "ready");
        h
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_owned()
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.line()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connects from `prober`: the verdict counts and latency percentiles.
fn connect_n(prober: &mut Prober, n: u32) -> Value {
    serde_json::from_str(&prober.ask(&format!("connectn 127.0.0.1 {PORT} {n}"))).unwrap()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_receiver_never_delays_verdicts_and_its_losses_are_counted_exactly() {
    const N: u32 = 50_000;
    let mut lab = Lab::new();
    let srv = lab.netns("srv");
    let pol = lab.policy("p.toml", &policy(&lab));
    let mut rogue = lab.prober(Some(&srv), Some("rogue.scope"));

    // Baseline: the same denies with only a file sink.
    let d = lab.daemon(Some(&srv), &pol);
    let base = connect_n(&mut rogue, N);
    assert_eq!(base["verdicts"]["denied"], N, "{base}");
    drop(d);

    // A TCP receiver that accepts and reads nothing.
    let received = lab.run_dir.join("received.jsonl");
    let mut receiver = Helper::spawn(
        &srv,
        &workspace().join("tests/helpers/receiver.py"),
        &["5140", received.to_str().unwrap()],
    );
    let d = lab.daemon_with(Some(&srv), &pol, &["--events", "tcp://127.0.0.1:5140"]);
    let stalled = connect_n(&mut rogue, N);
    assert_eq!(
        stalled["verdicts"]["denied"], N,
        "every verdict, on time: {stalled}"
    );
    let (b50, s50) = (
        base["p50_us"].as_f64().unwrap(),
        stalled["p50_us"].as_f64().unwrap(),
    );
    assert!(
        s50 <= 2.0 * b50 + 50.0,
        "connect() latency with a stalled sink: p50 {s50} µs vs {b50} µs without (p99 {} vs {})",
        stalled["p99_us"],
        base["p99_us"]
    );
    // The file sink gets every record while the TCP one is stuck.
    let flows =
        |d: &warden_tests::Daemon| d.events().iter().filter(|e| e["type"] == "flow").count() as u64;
    let sinks = |lab: &Lab| lab.status()["events"]["sinks"].clone();
    wait_until("the file sink to catch up", 30, || {
        let s = sinks(&lab);
        flows(&d) + s[0]["dropped"].as_u64().unwrap() >= u64::from(N)
    });
    // A loss event said so while it happened.
    let loss = d.wait_event("a loss event", |e| {
        e["type"] == "loss" && e["since_last_report"]["sink_dropped"].as_u64() > Some(0)
    });
    assert_eq!(loss["sinks"][1]["sink"], "tcp://127.0.0.1:5140");

    // The receiver recovers; the daemon stops; everything is accounted for.
    assert_eq!(receiver.ask("read"), "ok");
    wait_until("the TCP sink to drain", 30, || {
        sinks(&lab)[1]["pending"] == 0
    });
    let events_file = d.events.clone();
    drop(d);
    let lines = receiver.ask("report").parse::<u64>().unwrap();
    let status = lab.status()["events"].clone();
    let (file, tcp) = (&status["sinks"][0], &status["sinks"][1]);
    let n = |v: &Value| v.as_u64().unwrap();
    eprintln!("baseline {base}\nstalled sink {stalled}\nreceived {lines}\n{status}");
    assert_eq!(n(&tcp["pending"]), 0, "{status}");
    assert!(
        n(&tcp["dropped"]) + n(&tcp["failed"]) > 0,
        "the stalled receiver lost events: {status}"
    );
    assert_eq!(
        lines,
        n(&tcp["written"]),
        "written means received: {status}"
    );
    assert_eq!(
        n(&tcp["written"]) + n(&tcp["dropped"]) + n(&tcp["failed"]),
        n(&file["written"]) + n(&file["dropped"]) + n(&file["failed"]),
        "both sinks were offered the same events: {status}"
    );
    let file_lines = std::fs::read_to_string(&events_file).unwrap();
    assert_eq!(file_lines.lines().count() as u64, n(&file["written"]));
    let file_flows = file_lines
        .lines()
        .filter(|l| l.contains("\"type\":\"flow\""))
        .count() as u64;
    assert_eq!(
        file_flows
            + n(&file["dropped"])
            + n(&file["failed"])
            + n(&status["queue_dropped"])
            + n(&status["kernel_lost"]),
        u64::from(N),
        "every deny is delivered or counted: {status}"
    );
    assert_eq!(
        n(&status["kernel_lost"]),
        0,
        "the ring-buffer reader never waited for the stalled sink: {status}"
    );
    // The receiver got a subset of the file's flows, and every lifecycle event:
    // those are never dropped, not even the `loss` events raised while it stalled.
    let received = std::fs::read_to_string(&received).unwrap();
    let is_flow = |l: &&str| l.contains("\"type\":\"flow\"");
    let file_flows: std::collections::HashSet<&str> = file_lines.lines().filter(is_flow).collect();
    assert!(
        received
            .lines()
            .filter(is_flow)
            .all(|l| file_flows.contains(l))
    );
    let lifecycle = |text: &str| {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !is_flow(l))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let sent = lifecycle(&file_lines);
    assert!(
        sent.iter()
            .filter(|l| l.contains("\"type\":\"loss\""))
            .count()
            >= 1
    );
    assert_eq!(
        lifecycle(&received),
        sent,
        "every lifecycle event reached the stalled sink"
    );
    let last: Value = serde_json::from_str(file_lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "stop", "stop is the last event");
}

/// A private rsyslogd in `netns`: TCP (octet-counted) and UDP on loopback, every
/// message written as one JSON object per line.
struct Rsyslog {
    child: Child,
    out: std::path::PathBuf,
}

impl Rsyslog {
    fn start(lab: &Lab, netns: &str, tcp: u16, udp: u16) -> Self {
        let dir = lab.run_dir.join("rsyslog");
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let out = dir.join("out.jsonl");
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
module(load="imudp")
module(load="imtcp")
template(name="jsonl" type="list" option.jsonf="on") {{
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" format="jsonf" dateFormat="rfc3339")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}}
ruleset(name="warden") {{ action(type="omfile" file="{out}" template="jsonl") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="warden")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="warden")
"#,
            work = dir.join("work").display(),
            out = out.display(),
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap());
        enter(&mut cmd, Some(netns), None);
        let child = cmd
            .spawn()
            .expect("rsyslogd (apt package rsyslog; cargo xtask setup)");
        let r = Self { child, out };
        let mut probe = Prober::spawn(Some(netns), None);
        wait_until("rsyslogd to listen", 10, || {
            probe.ask(&format!("connect 127.0.0.1 {tcp} 0.2")) == "connected"
        });
        r
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rsyslog_receives_rfc5424_over_tcp_and_udp() {
    let mut lab = Lab::new();
    let srv = lab.netns("srv");
    let rsyslog = Rsyslog::start(&lab, &srv, 5514, 5515);
    let d = lab.daemon_with(
        Some(&srv),
        &lab.policy("p.toml", &policy(&lab)),
        &[
            "--event-format",
            "ocsf",
            "--events",
            "syslog+tcp://127.0.0.1:5514",
            "--events",
            "syslog+udp://127.0.0.1:5515?facility=local3",
        ],
    );
    let daemon_pid = d.pid();
    let mut rogue = lab.prober(Some(&srv), Some("rogue.scope"));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    let mut proxy = lab.prober(Some(&srv), Some("proxy.service"));
    assert_eq!(proxy.connect("127.0.0.1", PORT), "refused");
    let file = d.events.clone();
    drop(d);
    let sent: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        sent.len() >= 5,
        "start, policy, deny, allow, stop: {sent:#?}"
    );
    wait_until("rsyslog to write every message", 10, || {
        rsyslog.received().len() >= 2 * sent.len()
    });
    let got = rsyslog.received();
    for (input, facility) in [("imtcp", "4"), ("imudp", "19")] {
        let msgs: Vec<&Value> = got.iter().filter(|m| m["input"] == input).collect();
        let events: Vec<Value> = msgs
            .iter()
            .map(|m| serde_json::from_str(m["msg"].as_str().unwrap()).expect("MSG is the event"))
            .collect();
        let mut want = sent.clone();
        let mut have = events.clone();
        let key = |e: &Value| e["metadata"]["uid"].as_str().unwrap().to_owned();
        want.sort_by_key(key);
        have.sort_by_key(key);
        assert_eq!(have, want, "{input}: every event, once, unchanged");
        for (m, e) in msgs.iter().zip(&events) {
            assert_eq!(m["version"], "1", "RFC 5424");
            assert_eq!(m["facility"], facility, "{m}");
            assert_eq!(m["app_name"], "ollama-warden");
            assert_eq!(m["procid"], daemon_pid.to_string());
            assert!(
                m["structured_data"]
                    .as_str()
                    .unwrap()
                    .contains("[origin software=\"ollama-warden\""),
                "{m}"
            );
            let (msgid, severity) = match e["class_uid"].as_u64().unwrap() {
                4001 if e["disposition_id"] == 2 => ("flow", "4"),
                4001 => ("flow", "6"),
                _ => (e["unmapped"]["warden"]["event"].as_str().unwrap(), "5"),
            };
            assert_eq!(m["msgid"], msgid, "{m}");
            assert_eq!(m["severity"], severity, "{m}");
        }
        let deny = events
            .iter()
            .find(|e| e["disposition_id"] == 2)
            .expect("the deny");
        assert_eq!(deny["actor"]["process"]["pid"], rogue.pid());
    }
}

#[test]
fn repeated_denies_are_aggregated_and_the_first_is_reported_at_once() {
    let mut lab = Lab::new();
    let srv = lab.netns("srv");
    let d = lab.daemon_with(
        Some(&srv),
        &lab.policy("p.toml", &policy(&lab)),
        &["--aggregate-secs", "3"],
    );
    let mut rogue = lab.prober(Some(&srv), Some("rogue.scope"));
    let pid = rogue.pid();
    let start = Instant::now();
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    d.wait_event("the first deny", |e| {
        e["pid"] == pid && e.get("count").is_none()
    });
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the first deny is reported at once, not with its window"
    );
    let burst = connect_n(&mut rogue, 500);
    assert_eq!(burst["verdicts"]["denied"], 500);
    // Another process is another source: reported at once too.
    let mut other = lab.prober(Some(&srv), Some("rogue.scope"));
    assert_eq!(other.connect("127.0.0.1", PORT), "denied");
    let other_pid = other.pid();
    d.wait_event("the other process's deny", |e| e["pid"] == other_pid);
    let agg = d.wait_event("the aggregate", |e| {
        e["pid"] == pid && e.get("count").is_some()
    });
    assert_eq!(agg["count"], 500, "{agg}");
    assert!(agg["first_time_ms"].as_u64() <= agg["time_ms"].as_u64());
    let mine: Vec<Value> = d.events().into_iter().filter(|e| e["pid"] == pid).collect();
    assert_eq!(mine.len(), 2, "one first deny, one aggregate: {mine:#?}");
    assert_eq!(
        lab.status()["events"]["aggregated"],
        500,
        "status counts what aggregation folded"
    );
}
