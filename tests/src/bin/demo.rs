//! `cargo xtask demo`: ollama-warden end to end in a throwaway lab, in about a
//! minute, with a readable view of what a SIEM would receive.
//!
//! The lab (network namespaces and cgroups, all removed at the end):
//! - **gpu-host**: a stand-in Ollama on 0.0.0.0:11434 (cgroup `server`), `warden
//!   daemon` enforcing a policy, `warden proxy` on :8443 (cgroup `proxy`), an
//!   operator's tool allowed to reach Ollama directly (cgroup `ops`) and a rogue
//!   local process (cgroup `rogue`);
//! - **client** (10.88.1.2): a legitimate client host, users alice and bob;
//! - **attacker** (10.88.2.2): a host on another network.
//!
//! Needs root; run through `cargo xtask demo`, which builds everything first.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use warden_tests::proxy::{Placement, ProxyLab};
use warden_tests::{Daemon, Lab, enter};

const PORT: u16 = 11434;
const HOST_TO_CLIENT: &str = "10.88.1.1";
const HOST_TO_ATTACKER: &str = "10.88.2.1";

fn main() {
    let started = Instant::now();
    let mut lab = Lab::new();
    let host = lab.netns("gpu-host");
    let client = lab.netns("client");
    let attacker = lab.netns("attacker");
    lab.veth(&host, &["10.88.1.1/24"], &client, &["10.88.1.2/24"]);
    lab.veth(&host, &["10.88.2.1/24"], &attacker, &["10.88.2.2/24"]);
    let (server, proxy_cg, ops) = (lab.cgroup("server"), lab.cgroup("proxy"), lab.cgroup("ops"));
    let policy = format!(
        r#"version = 1
[service]
ports = [{PORT}]
server_cgroups = ["{server}"]

[ingress]                 # no remote source reaches Ollama directly
interfaces = ["*"]
allow = []

[local]                   # only the proxy, and the operators' tool, connect locally
allow_cgroups = ["{proxy_cg}", "{ops}"]

[[egress]]                # the model server reaches nothing
cgroup = "{server}"
allow = []
"#
    );
    title("ollama-warden demo");
    println!("policy enforced on gpu-host:\n{}", indent(&policy));
    let socket = lab.run_dir.join("proxy.sock");
    let daemon = lab.daemon_with(
        Some(&host),
        &lab.policy("policy.toml", &policy),
        &[
            "--correlate-secs",
            "1",
            "--proxy-cgroup",
            &lab.cgroup_rel("proxy"),
        ],
    );
    let proxy = ProxyLab::start_in(
        r#"
[[identity]]
name = "alice"
tokens = ["@token:alice@"]
models = ["llama3*"]

[[identity]]
name = "bob"
tokens = ["@token:bob@"]
models = ["mistral", "nomic-embed-text"]
"#,
        &["--host", "0.0.0.0", "--delay-ms", "5"],
        Placement {
            netns: Some(host.clone()),
            upstream_cgroup: Some(lab.cgroup.join("server")),
            proxy_cgroup: Some(lab.cgroup.join("proxy")),
            upstream_port: PORT,
            top: format!("report = \"{}\"\n", socket.display()),
            listen: Some("0.0.0.0:0".into()),
            server_san: Some(format!("IP:{HOST_TO_CLIENT}")),
        },
    );
    let port = proxy.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://{HOST_TO_CLIENT}:{port}");
    println!("running: stand-in Ollama on gpu-host:{PORT}, warden daemon, warden proxy on {url}\n");
    let mut view = View::new(&daemon, &proxy);
    for name in ["server", "proxy", "ops", "rogue"] {
        let dir = lab.cgroup.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        view.cgroups
            .push((std::fs::metadata(&dir).unwrap().ino(), name));
    }
    view.settle();

    let curl = |who: &str, path: &str, body: &str| -> String {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(proxy.pki("server-ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {}", proxy.token(who))])
        .args(["-d", body, &format!("{url}{path}")]);
        enter(&mut c, Some(&client), None);
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };

    step("alice (client host) chats with llama3 through the proxy");
    let code = curl(
        "alice",
        "/api/chat",
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
    );
    println!("  client got HTTP {code}");
    view.show(1, 1);

    step("bob (client host) generates with mistral through the proxy");
    let code = curl(
        "bob",
        "/api/generate",
        r#"{"model":"mistral","prompt":"hi","stream":false}"#,
    );
    println!("  client got HTTP {code}");
    view.show(1, 1);

    step("alice asks for a model she is not allowed (mistral)");
    let code = curl("alice", "/api/chat", r#"{"model":"mistral","messages":[]}"#);
    println!("  client got HTTP {code}");
    view.show(0, 1);

    step("bob tries to pull a model (an admin route)");
    let code = curl("bob", "/api/pull", r#"{"model":"evil.example/x/backdoor"}"#);
    println!("  client got HTTP {code}");
    view.show(0, 1);

    step("a rogue process on gpu-host connects to 127.0.0.1:11434 directly");
    let mut rogue = lab.prober(Some(&host), Some("rogue"));
    println!("  connect: {}", rogue.connect("127.0.0.1", PORT));
    view.show(1, 0);

    step("the attacker host connects to gpu-host:11434 over the network");
    let mut outside = lab.prober(Some(&attacker), None);
    println!("  connect: {}", outside.connect(HOST_TO_ATTACKER, PORT));
    view.show(1, 0);

    step("the client host tries to skip the proxy (gpu-host:11434)");
    let mut skip = lab.prober(Some(&client), None);
    println!("  connect: {}", skip.connect(HOST_TO_CLIENT, PORT));
    view.show(1, 0);

    step("the model server tries to reach the internet (exfiltration, SSRF)");
    let mut srv = lab.prober(Some(&host), Some("server"));
    println!("  connect 10.88.2.2:443: {}", srv.connect("10.88.2.2", 443));
    view.show(1, 0);

    step("an operator's tool (allowed cgroup `ops`) talks to Ollama directly");
    let mut tool = lab.prober(Some(&host), Some("ops"));
    println!("  connect: {}", tool.connect("127.0.0.1", PORT));
    view.show(1, 0);

    let ok = view.summary(&[
        ("correlated: identity reached Ollama", 2),
        ("proxy forwarded a request", 2),
        ("proxy refused a request", 2),
        ("denied: local process to Ollama", 1),
        ("dropped at the NIC (XDP)", 2),
        ("denied: model server egress", 1),
        ("unattributed: allowed, not through the proxy", 1),
    ]);
    println!(
        "\ndone in {:.0} s; the lab is removed.",
        started.elapsed().as_secs_f64()
    );
    drop(view);
    drop(proxy);
    drop(daemon);
    drop(lab);
    if !ok {
        std::process::exit(1);
    }
}

fn title(t: &str) {
    println!("\n\x1b[1m== {t} ==\x1b[0m");
}

fn step(t: &str) {
    println!("\n\x1b[1m▶ {t}\x1b[0m");
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Prints what the daemon and the proxy reported, as it arrives.
struct View<'a> {
    daemon: &'a Daemon,
    proxy: &'a ProxyLab,
    events_seen: usize,
    audit_seen: usize,
    tally: Vec<(&'static str, usize)>,
    /// Cgroup ids (inode numbers) of the lab's cgroups, by name.
    cgroups: Vec<(u64, &'static str)>,
}

impl<'a> View<'a> {
    fn new(daemon: &'a Daemon, proxy: &'a ProxyLab) -> Self {
        Self {
            daemon,
            proxy,
            events_seen: 0,
            audit_seen: 0,
            tally: Vec::new(),
            cgroups: Vec::new(),
        }
    }

    /// Skips what was reported before the scenario (start-up events).
    fn settle(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
        self.events_seen = self.daemon.events().len();
        self.audit_seen = self.proxy.audit().len();
    }

    fn count(&mut self, what: &'static str) {
        match self.tally.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => self.tally.push((what, 1)),
        }
    }

    /// Waits (at most 3 s) for `flows` kernel flow events and `requests` proxy
    /// records, printing each as it comes.
    fn show(&mut self, flows: usize, requests: usize) {
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut got_flows, mut got_requests) = (0, 0);
        loop {
            let events = self.daemon.events();
            for e in &events[self.events_seen.min(events.len())..] {
                if e["type"] == "flow" {
                    got_flows += 1;
                    let (kind, line) = describe_flow(e, &self.cgroups);
                    self.count(kind);
                    println!("  {line}");
                }
            }
            self.events_seen = events.len();
            let audit = self.proxy.audit();
            for r in &audit[self.audit_seen.min(audit.len())..] {
                got_requests += 1;
                let (kind, line) = describe_request(r);
                self.count(kind);
                println!("  {line}");
            }
            self.audit_seen = audit.len();
            if (got_flows >= flows && got_requests >= requests) || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Prints the tally against what the scenario should produce; false if
    /// anything differs.
    fn summary(&self, expected: &[(&str, usize)]) -> bool {
        title("what the SIEM received");
        println!("  {:<46} {:>8} {:>5}", "event", "expected", "seen");
        let mut ok = true;
        for (what, want) in expected {
            let seen = self
                .tally
                .iter()
                .find(|(w, _)| w == what)
                .map_or(0, |(_, n)| *n);
            let mark = if seen == *want {
                "\x1b[32m✓\x1b[0m"
            } else {
                "\x1b[31m✗\x1b[0m"
            };
            ok &= seen == *want;
            println!("  {what:<46} {want:>8} {seen:>5} {mark}");
        }
        for (what, n) in &self.tally {
            if !expected.iter().any(|(w, _)| w == what) {
                ok = false;
                println!("  {what:<46} {:>8} {n:>5} \x1b[31m✗\x1b[0m", 0);
            }
        }
        ok
    }
}

fn describe_flow(e: &Value, cgroups: &[(u64, &str)]) -> (&'static str, String) {
    let dst = format!(
        "{}:{}",
        e["dst_addr"].as_str().unwrap_or("?"),
        e["dst_port"]
    );
    let who = || {
        let cg = e["cgroup_id"]
            .as_u64()
            .and_then(|id| cgroups.iter().find(|(i, _)| *i == id))
            .map_or("?", |(_, n)| n);
        format!(
            "pid {} ({}) in cgroup `{cg}`",
            e["pid"],
            e["comm"].as_str().unwrap_or("?")
        )
    };
    if let Some(p) = e.get("proxy") {
        let line = format!(
            "\x1b[32m[who reached Ollama]\x1b[0m {} from {}:{} — request {} model {} — via warden proxy ({}) → {dst}, socket {}",
            p["identity"].as_str().unwrap_or("?"),
            p["client"]["ip"].as_str().unwrap_or("?"),
            p["client"]["port"],
            p["request_id"].as_str().unwrap_or("?"),
            p["model"].as_str().unwrap_or("-"),
            who(),
            e["socket_cookie"],
        );
        return ("correlated: identity reached Ollama", line);
    }
    if e["unattributed"] == true {
        return (
            "unattributed: allowed, not through the proxy",
            format!(
                "\x1b[33m[unattributed]\x1b[0m {} connected to {dst} — allowed, but not through the proxy",
                who()
            ),
        );
    }
    match (e["verdict"].as_str(), e["hook"].as_str()) {
        (Some("deny"), Some("xdp")) => (
            "dropped at the NIC (XDP)",
            format!(
                "\x1b[31m[dropped at the NIC]\x1b[0m {}:{} → {dst} ({})",
                e["src_addr"].as_str().unwrap_or("?"),
                e["src_port"],
                e["reason"].as_str().unwrap_or("")
            ),
        ),
        (Some("deny"), _) if e["dst_port"] == PORT => (
            "denied: local process to Ollama",
            format!(
                "\x1b[31m[denied]\x1b[0m {} → {dst} ({})",
                who(),
                e["reason"].as_str().unwrap_or("")
            ),
        ),
        (Some("deny"), _) => (
            "denied: model server egress",
            format!(
                "\x1b[31m[egress denied]\x1b[0m {} → {dst} ({})",
                who(),
                e["reason"].as_str().unwrap_or("")
            ),
        ),
        _ => ("other flow", format!("[flow] {e}")),
    }
}

fn describe_request(r: &Value) -> (&'static str, String) {
    let who = r["actor"]["user"]["name"]
        .as_str()
        .unwrap_or("(unauthenticated)");
    let req = format!(
        "{} {} model {}",
        r["http_request"]["http_method"].as_str().unwrap_or("?"),
        r["http_request"]["url"]["path"].as_str().unwrap_or("?"),
        r["unmapped"]["warden"]["model"].as_str().unwrap_or("-")
    );
    match r["status_detail"]
        .as_str()
        .filter(|_| r["disposition_id"] == 2)
    {
        Some(why) => (
            "proxy refused a request",
            format!(
                "\x1b[31m[proxy refused]\x1b[0m {who}: {req} → {} ({why})",
                r["http_response"]["code"]
            ),
        ),
        None => (
            "proxy forwarded a request",
            format!(
                "\x1b[32m[proxy audit]\x1b[0m {who}: {req} → {} in {} ms, {} bytes",
                r["http_response"]["code"], r["duration"], r["traffic"]["bytes_out"]
            ),
        ),
    }
}
