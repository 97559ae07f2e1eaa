//! Who reached the model: the proxy's upstream connections joined with the
//! kernel's connection events by socket cookie, and every connection to the
//! protected port that did not come through the proxy flagged.

use serde_json::Value;
use std::collections::HashMap;
use warden_tests::Lab;
use warden_tests::proxy::{Placement, ProxyLab};

const PORT: u16 = 11434;

const IDENTITIES: &str = r#"
[[identity]]
name = "alice"
tokens = ["@token:alice@"]
models = ["llama3*"]

[[identity]]
name = "bob"
tokens = ["@token:bob@"]
models = ["*"]

[[identity]]
name = "carol"
tokens = ["@token:carol@"]
models = ["mistral"]
"#;

struct Setup {
    lab: Lab,
    ns: String,
    daemon: warden_tests::Daemon,
    proxy: ProxyLab,
}

fn setup() -> Setup {
    setup_with("raw")
}

fn setup_with(format: &str) -> Setup {
    let mut lab = Lab::new();
    let ns = lab.netns("corr");
    let policy = format!(
        "version = 1\n[service]\nports = [{PORT}]\nserver_cgroups = [\"{server}\"]\n[local]\nallow_cgroups = [\"{proxy}\", \"{other}\"]\n",
        server = lab.cgroup("server"),
        proxy = lab.cgroup("proxy"),
        other = lab.cgroup("other"),
    );
    let socket = lab.run_dir.join("proxy.sock");
    let daemon = lab.daemon_with(
        Some(&ns),
        &lab.policy("p.toml", &policy),
        &[
            "--correlate-secs",
            "1",
            "--proxy-cgroup",
            &lab.cgroup_rel("proxy"),
            "--event-format",
            format,
        ],
    );
    let proxy = ProxyLab::start_in(
        IDENTITIES,
        &["--delay-ms", "1"],
        Placement {
            netns: Some(ns.clone()),
            upstream_cgroup: Some(lab.cgroup.join("server")),
            proxy_cgroup: Some(lab.cgroup.join("proxy")),
            upstream_port: PORT,
            top: format!("report = \"{}\"\n", socket.display()),
            ..Default::default()
        },
    );
    Setup {
        lab,
        ns,
        daemon,
        proxy,
    }
}

fn joined(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e.get("proxy").is_some()).collect()
}

#[test]
fn a_proxied_request_names_its_identity_and_bypasses_are_flagged() {
    let s = setup();
    let (lab, d, p) = (&s.lab, &s.daemon, &s.proxy);
    let alice = p.token("alice").to_owned();
    let (code, _) = p.post(
        "/api/chat",
        &alice,
        r#"{"model":"llama3","messages":[],"stream":false}"#,
    );
    assert_eq!(code, 200);

    // Exactly one correlated event, naming alice, her address and the proxy's socket.
    let e = d.wait_event("correlated", |e| e.get("proxy").is_some());
    let audit = p.audit_wait(1);
    let cookie = audit[0]["unmapped"]["warden"]["socket_cookie"]
        .as_u64()
        .unwrap();
    assert_eq!(e["socket_cookie"].as_u64(), Some(cookie), "{e}");
    assert_eq!(e["proxy"]["identity"], "alice");
    assert_eq!(e["proxy"]["request_id"], audit[0]["metadata"]["uid"]);
    assert_eq!(e["proxy"]["model"], "llama3:latest");
    assert_eq!(e["proxy"]["client"]["ip"], "127.0.0.1");
    assert_eq!(
        e["proxy"]["client"]["port"],
        audit[0]["src_endpoint"]["port"]
    );
    assert_eq!(e["dst_port"], PORT);
    assert_eq!(e["verdict"], "allow");
    assert!(
        e["proxy"]["community_id"]
            .as_str()
            .unwrap()
            .starts_with("1:")
    );
    assert_eq!(
        e["pid"].as_u64(),
        Some(u64::from(p.proxy_pid())),
        "the proxy's process: {e}"
    );

    // A local process outside the allowed cgroups: denied, with its identity.
    let mut rogue = lab.prober(Some(&s.ns), Some("rogue"));
    assert_eq!(rogue.connect("127.0.0.1", PORT), "denied");
    let pid = rogue.pid();
    let denied = d.wait_event("rogue deny", |e| e["verdict"] == "deny" && e["pid"] == pid);
    assert_eq!(denied["comm"], "python3");
    assert!(denied.get("proxy").is_none());

    // An allowed cgroup that is not the proxy, connecting directly: unattributed.
    let mut other = lab.prober(Some(&s.ns), Some("other"));
    assert_eq!(other.connect("127.0.0.1", PORT), "connected");
    let opid = other.pid();
    let un = d.wait_event("unattributed", |e| {
        e["unattributed"] == true && e["pid"] == opid
    });
    assert_eq!(un["verdict"], "allow");
    assert!(un.get("proxy").is_none());

    // A process in an allowed cgroup cannot vouch for itself: the socket refuses it.
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", &format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\ntry:\n  s.sendall(b'{{}}\\n')\nexcept OSError:\n  pass  # refused and closed before it could send",
        lab.run_dir.join("proxy.sock").display()
    )]);
    warden_tests::enter(&mut cmd, Some(&s.ns), Some(&lab.cgroup.join("other")));
    assert!(cmd.status().unwrap().success());
    d.wait_event("proxy_rejected", |e| {
        e["type"] == "proxy_rejected" && e["reason"] == "cgroup"
    });
    assert_eq!(
        joined(&d.events()).len(),
        1,
        "still exactly one correlated event"
    );

    // Even inside the proxy's cgroup, a process can only vouch for its own
    // connections: a parent reporting its child's socket explains nothing.
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(warden_tests::proxy::helper("forge_report.py"))
        .arg(lab.run_dir.join("proxy.sock"))
        .arg(PORT.to_string())
        .arg("mallory");
    warden_tests::enter(&mut cmd, Some(&s.ns), Some(&lab.cgroup.join("proxy")));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let un = d.wait_event("forged child unattributed", |e| {
        e["unattributed"] == true && e["pid"] == child
    });
    assert!(un.get("proxy").is_none(), "{un}");
    assert!(
        !d.events()
            .iter()
            .any(|e| e["proxy"]["identity"] == "mallory"),
        "a forged report attributed a connection"
    );
}

#[test]
fn under_concurrent_load_every_request_is_joined_to_its_own_flow() {
    let s = setup();
    let (d, p) = (&s.daemon, &s.proxy);
    let mut threads = Vec::new();
    for (who, model) in [
        ("alice", "llama3"),
        ("bob", "mistral"),
        ("carol", "mistral"),
    ] {
        let (url, ca, token, ns) = (
            p.url.clone(),
            p.pki("server-ca.pem"),
            p.token(who).to_owned(),
            s.ns.clone(),
        );
        threads.push(std::thread::spawn(move || {
            // 100 requests per identity, 10 at a time, over fresh connections.
            let body = format!(r#"{{"model":"{model}","prompt":"hi","stream":false}}"#);
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c").arg(format!(
                "seq 100 | xargs -P 10 -I{{}} curl -s -o /dev/null -w '%{{http_code}}\\n' --cacert {} -H 'Authorization: Bearer {token}' -d '{body}' {url}/api/generate",
                ca.display()
            ));
            warden_tests::enter(&mut cmd, Some(&ns), None);
            let out = cmd.output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        }));
    }
    for t in threads {
        let codes = t.join().unwrap();
        assert_eq!(
            codes.lines().filter(|c| *c == "200").count(),
            100,
            "{codes}"
        );
    }
    // Upstream connections are kept per identity: every request names the
    // socket it rode, and every socket carries one identity's requests only.
    let audit = p.audit_wait(300);
    let mut by_cookie: HashMap<u64, Vec<&Value>> = HashMap::new();
    for r in &audit {
        let cookie = r["unmapped"]["warden"]["socket_cookie"].as_u64().unwrap();
        by_cookie.entry(cookie).or_default().push(r);
    }
    let reused = audit
        .iter()
        .filter(|r| r["unmapped"]["warden"]["upstream_reused"] == true)
        .count();
    assert_eq!(
        reused + by_cookie.len(),
        300,
        "each socket's first request opened it, the others reused it"
    );
    assert!(
        by_cookie.len() < 300,
        "connections were reused ({} sockets for 300 requests)",
        by_cookie.len()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let events = loop {
        let ev = d.events();
        if joined(&ev).len() >= by_cookie.len() || std::time::Instant::now() > deadline {
            break ev;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let j = joined(&events);
    let mut lag: Vec<i64> = j
        .iter()
        .map(|e| e["time_ms"].as_i64().unwrap() - e["proxy"]["connected_ms"].as_i64().unwrap())
        .collect();
    lag.sort();
    eprintln!(
        "{} sockets for 300 requests; flow time - connect time (ms): min {} p50 {} max {}",
        by_cookie.len(),
        lag[0],
        lag[lag.len() / 2],
        lag[lag.len() - 1]
    );
    let un: Vec<&Value> = events
        .iter()
        .filter(|e| e["unattributed"] == true || e["type"] != "flow")
        .collect();
    assert_eq!(
        j.len(),
        by_cookie.len(),
        "every upstream socket's connect joined; others: {un:#?}"
    );
    let mut seen = std::collections::HashSet::new();
    for e in j {
        let cookie = e["socket_cookie"].as_u64().unwrap();
        assert!(seen.insert(cookie), "joined twice: {e}");
        let rode = by_cookie
            .get(&cookie)
            .unwrap_or_else(|| panic!("no request for {e}"));
        // The request it was opened for, then only that identity's requests.
        let opened: Vec<_> = rode
            .iter()
            .filter(|r| r["unmapped"]["warden"]["upstream_reused"] != true)
            .collect();
        assert_eq!(opened.len(), 1, "{e}");
        assert_eq!(e["proxy"]["request_id"], opened[0]["metadata"]["uid"]);
        for r in rode {
            assert_eq!(
                e["proxy"]["identity"], r["actor"]["user"]["name"],
                "mis-attributed: {e} vs {r}"
            );
        }
    }
    let unattributed = events.iter().filter(|e| e["unattributed"] == true).count();
    assert_eq!(unattributed, 0, "no proxied connection left unexplained");
}

/// `cargo xtask demo` stays truthful: it exits non-zero when what the SIEM
/// received differs from what its scenario should produce.
#[test]
fn the_demo_scenario_produces_what_it_promises() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("correlated: identity reached Ollama"),
        "{text}"
    );
}

/// Correlated and unattributed events are valid OCSF and ECS.
#[test]
fn joined_events_validate_as_ocsf_and_ecs() {
    for format in ["ocsf", "ecs"] {
        let s = setup_with(format);
        let (lab, d, p) = (&s.lab, &s.daemon, &s.proxy);
        let (code, _) = p.post(
            "/api/chat",
            p.token("alice"),
            r#"{"model":"llama3","messages":[],"stream":false}"#,
        );
        assert_eq!(code, 200);
        let mut other = lab.prober(Some(&s.ns), Some("other"));
        assert_eq!(other.connect("127.0.0.1", PORT), "connected");
        let ext = |e: &Value| -> Value {
            if format == "ocsf" {
                e["unmapped"]["warden"].clone()
            } else {
                e["ollama_warden"].clone()
            }
        };
        let joined = d.wait_event("correlated", |e| ext(e)["proxy"].is_object());
        let un = d.wait_event("unattributed", |e| ext(e)["unattributed"] == true);
        assert_eq!(ext(&joined)["proxy"]["identity"], "alice");
        if format == "ocsf" {
            assert_eq!(joined["actor"]["user"]["name"], "alice");
            assert_eq!(un["severity_id"], 3);
            let verdicts = warden_tests::validate_ocsf(&[joined.clone(), un.clone()]);
            assert_eq!(verdicts, ["ok 4001", "ok 4001"], "{joined:#}\n{un:#}");
        } else {
            assert_eq!(joined["related"]["user"][0], "alice");
            let verdicts = warden_tests::validate_ecs(&[joined.clone(), un.clone()]);
            assert!(
                verdicts.iter().all(|v| v.starts_with("ok")),
                "{verdicts:?}\n{joined:#}"
            );
        }
        eprintln!("{format} correlated:\n{joined:#}\n{format} unattributed:\n{un:#}");
    }
}

/// `warden events ARGS` in the background; its stdout lines as they come.
fn follow(
    lab: &Lab,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(warden_tests::warden_bin())
        .args(lab.dir_args())
        .arg("events")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("warden events");
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    (child, lines)
}

fn wait_line(
    lines: &std::sync::Mutex<Vec<String>>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline =
        std::time::Instant::now() + warden_tests::patience(std::time::Duration::from_secs(10));
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| pred(l)) {
            return l.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line {what}: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_live_view_shows_proxied_requests_joined_with_their_connections() {
    let s = setup();
    let (lab, p) = (&s.lab, &s.proxy);
    let (mut all, lines) = follow(lab, &["--follow", "--format", "compact"]);
    let (mut only_carol, carol_lines) = follow(
        lab,
        &[
            "--follow",
            "--format",
            "compact",
            "--filter",
            "identity=carol",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));

    let (code, _) = p.post(
        "/api/chat",
        p.token("alice"),
        r#"{"model":"llama3","messages":[],"stream":false}"#,
    );
    assert_eq!(code, 200);
    let (code, _) = p.post(
        "/api/chat",
        p.token("carol"),
        r#"{"model":"llama3","messages":[],"stream":false}"#,
    );
    assert_eq!(code, 403);

    let request = wait_line(&lines, "alice's request", |l| {
        l.contains(" HTTP ") && l.contains("alice")
    });
    assert!(request.contains("200 POST /api/chat"), "{request}");
    assert!(request.contains("alice model llama3:latest"), "{request}");
    let id = request.rsplit("request ").next().unwrap().to_owned();
    let connect = wait_line(&lines, "alice's connection", |l| {
        l.contains("via proxy: alice")
    });
    assert!(
        connect.contains(" ALLOW ") && connect.contains(" connect4 "),
        "{connect}"
    );
    assert!(
        connect.contains(&format!("pid {} ", p.proxy_pid())),
        "{connect}"
    );
    let refused = wait_line(&lines, "carol's refusal", |l| {
        l.contains(" HTTP ") && l.contains("carol")
    });
    assert!(refused.contains("403 POST /api/chat"), "{refused}");
    assert!(!id.is_empty());

    let carol = wait_line(&carol_lines, "carol's refusal, filtered", |l| {
        l.contains("carol")
    });
    assert!(carol.contains("403"), "{carol}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        carol_lines
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.contains("carol")),
        "the identity filter shows carol's only: {:?}",
        carol_lines.lock().unwrap()
    );
    let _ = all.kill();
    let _ = only_carol.kill();
    let _ = all.wait();
    let _ = only_carol.wait();
}

#[test]
fn the_proxys_certificates_are_reported_and_their_end_announced() {
    let s = setup();
    let (lab, d) = (&s.lab, &s.daemon);
    // The test PKI lasts 2 days: the 7-day threshold is already crossed.
    let ev = d.wait_event("certificate_expiring", |e| {
        e["type"] == "certificate_expiring" && e["certificate"] == "server"
    });
    assert_eq!(ev["threshold_days"], 7, "{ev}");
    let days = ev["days_left"].as_i64().unwrap();
    assert!((1..=2).contains(&days), "{ev}");
    assert!(
        ev["subject"].as_str().unwrap().contains("localhost"),
        "{ev}"
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    let once = d
        .events()
        .iter()
        .filter(|e| e["type"] == "certificate_expiring" && e["certificate"] == "server")
        .count();
    assert_eq!(once, 1, "announced once per threshold");
    let status = lab.status();
    let server = status["proxy_certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["certificate"] == "server").cloned())
        .unwrap_or_else(|| panic!("{status}"));
    let left = server["seconds_left"].as_i64().unwrap();
    assert!(left > 86_400 && left <= 2 * 86_400, "{server}");
}
