//! The proxy lab: a throwaway PKI (`tests/helpers/make-ca.sh`), the stand-in
//! Ollama (`fake_ollama.py`), and a `warden proxy` between them, all on
//! loopback and all removed when the lab drops — also when a test panics.
//!
//! Config text given to [`ProxyLab::start`] may use placeholders that the lab
//! fills with real credentials made by the `warden token` commands:
//! `@token:NAME@` (a fresh token's hash; the token is in [`ProxyLab::token`])
//! and `@basic:PASSWORD@` (an argon2id hash).

use crate::{enter, warden_bin, workspace};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where the lab's processes run (default: this test's namespace and cgroup,
/// the stand-in on any free port).
#[derive(Default, Clone)]
pub struct Placement {
    pub netns: Option<String>,
    pub upstream_cgroup: Option<PathBuf>,
    pub proxy_cgroup: Option<PathBuf>,
    /// 0 = any free port.
    pub upstream_port: u16,
    /// Extra top-level config lines (e.g. `report = "..."`).
    pub top: String,
    /// Where the proxy listens (default 127.0.0.1, any free port).
    pub listen: Option<String>,
    /// Extra subject alternative names for the server certificate (`IP:10.0.0.1`).
    pub server_san: Option<String>,
}

pub struct ProxyLab {
    pub dir: PathBuf,
    place: Placement,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT` of the stand-in Ollama.
    pub upstream_url: String,
    upstream_port: u16,
    tokens: HashMap<String, String>,
    upstream: Child,
    proxy: Option<Child>,
    curls: std::sync::atomic::AtomicUsize,
}

pub fn python() -> PathBuf {
    let p = workspace().join("target/pyenv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup`",
        p.display()
    );
    p
}

pub fn helper(name: &str) -> PathBuf {
    workspace().join("tests/helpers").join(name)
}

fn wait_for_line(path: &Path, prefix: &str, what: &str) -> String {
    let deadline = Instant::now() + crate::patience(Duration::from_secs(20));
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(prefix)) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "{what} did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ProxyLab {
    /// Starts the stand-in (with `upstream_args`) and a proxy configured with
    /// `body` after the lab's own `listen`/`upstream`/`audit`/`[tls]` lines.
    pub fn start(body: &str, upstream_args: &[&str]) -> Self {
        Self::start_in(body, upstream_args, Placement::default())
    }

    /// Like [`ProxyLab::start`], with the processes placed as `place` says.
    pub fn start_in(body: &str, upstream_args: &[&str], place: Placement) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "warden-proxy-{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = dir.join("pki");
        let ok = Command::new("sh")
            .env("SERVER_SAN", place.server_san.as_deref().unwrap_or(""))
            .arg(helper("make-ca.sh"))
            .arg(&pki)
            .args(["alice", "carol"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "make-ca.sh failed");
        let up_out = dir.join("upstream.out");
        let mut cmd = Command::new(python());
        cmd.arg(helper("fake_ollama.py"))
            .args(["--port", &place.upstream_port.to_string(), "--log"])
            .arg(dir.join("upstream.jsonl"))
            .args(upstream_args)
            .stdout(std::fs::File::create(&up_out).unwrap())
            .stderr(Stdio::inherit());
        enter(
            &mut cmd,
            place.netns.as_deref(),
            place.upstream_cgroup.as_deref(),
        );
        let upstream = cmd.spawn().unwrap();
        let line = wait_for_line(&up_out, "listening", "the stand-in Ollama");
        let upstream_port: u16 = line.split(' ').nth(1).unwrap().trim().parse().unwrap();
        let mut lab = Self {
            url: String::new(),
            upstream_url: format!("http://127.0.0.1:{upstream_port}"),
            upstream_port,
            dir,
            place,
            tokens: HashMap::new(),
            upstream,
            proxy: None,
            curls: Default::default(),
        };
        lab.write_config(body);
        lab.start_proxy();
        lab
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("proxy.toml")
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.dir.join("pki").join(file)
    }

    /// The token made for `@token:NAME@`.
    pub fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }

    /// The full config file for `body` (placeholders filled).
    pub fn config_text(&mut self, body: &str) -> String {
        let mut text = format!(
            "listen = \"{listen}\"\nupstream = \"http://127.0.0.1:{up}\"\naudit = [\"audit.jsonl\"]\naudit_body_sha256 = true\n{top}\n[tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/clients-ca.pem\"\n\n",
            listen = self.place.listen.clone().unwrap_or_else(|| format!(
                "127.0.0.1:{}",
                self.url
                    .rsplit(':')
                    .next()
                    .filter(|_| !self.url.is_empty())
                    .unwrap_or("0")
            )),
            up = self.upstream_port,
            top = self.place.top,
        );
        let mut rest = body;
        while let Some(start) = rest.find('@') {
            text.push_str(&rest[..start]);
            let end = rest[start + 1..].find('@').expect("placeholder closed") + start + 1;
            let ph = &rest[start + 1..end];
            if let Some(name) = ph.strip_prefix("token:") {
                let out = run(Command::new(warden_bin()).args(["token", "new", name]));
                let mut lines = out.lines();
                let token = lines.next().unwrap().to_owned();
                let hash = lines.next().unwrap().split('"').nth(1).unwrap().to_owned();
                self.tokens.insert(name.to_owned(), token);
                text.push_str(&hash);
            } else if let Some(pw) = ph.strip_prefix("basic:") {
                let mut child = Command::new(warden_bin())
                    .args(["token", "basic", "x"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
                let out = child.wait_with_output().unwrap();
                let line = String::from_utf8(out.stdout).unwrap();
                text.push_str(line.trim().split('"').nth(1).unwrap());
            } else {
                panic!("unknown placeholder @{ph}@");
            }
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        text
    }

    /// Rewrites the config file (placeholders filled); the proxy sees the change.
    pub fn write_config(&mut self, body: &str) {
        let text = self.config_text(body);
        let tmp = self.dir.join("proxy.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    fn start_proxy(&mut self) {
        let err = self.dir.join("proxy.err");
        let mut cmd = Command::new(warden_bin());
        cmd.args(["proxy", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap());
        enter(
            &mut cmd,
            self.place.netns.as_deref(),
            self.place.proxy_cgroup.as_deref(),
        );
        let child = cmd.spawn().unwrap();
        self.proxy = Some(child);
        let line = wait_for_line(&err, "listening on", "warden proxy");
        let url = line.split(' ').find(|w| w.starts_with("https://")).unwrap();
        self.url = url.to_owned();
    }

    /// Restarts the proxy pointed at another upstream port (a faster stand-in,
    /// for the benchmarks; a reload keeps the upstream), with `body` as the
    /// rest of the config.
    pub fn retarget(&mut self, port: u16, body: &str) {
        self.stop();
        self.upstream_port = port;
        self.write_config(body);
        self.start_proxy();
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().expect("running").id()
    }

    /// What the proxy said on stderr so far.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.err")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.proxy.as_ref().unwrap().id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, sig) };
    }

    /// Stops the proxy (SIGTERM) and waits for it; returns its stderr.
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.proxy.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        self.proxy_log()
    }

    /// Runs `proxy_client.py ARGS` (stdin from `input`); its JSON output.
    pub fn client(&self, args: &[&str], input: Option<&str>) -> Value {
        self.run_helper("proxy_client.py", args, input)
    }

    /// Runs `hostile.py ARGS` (the resilience tests' attackers); its JSON output.
    pub fn hostile(&self, args: &[&str]) -> Value {
        self.run_helper("hostile.py", args, None)
    }

    /// Like [`ProxyLab::hostile`], from network namespace `netns`.
    pub fn hostile_in(&self, netns: &str, args: &[&str]) -> Value {
        self.run_helper_in(Some(netns), "hostile.py", args, None)
    }

    fn run_helper(&self, name: &str, args: &[&str], input: Option<&str>) -> Value {
        self.run_helper_in(self.place.netns.as_deref(), name, args, input)
    }

    fn run_helper_in(
        &self,
        netns: Option<&str>,
        name: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Value {
        let mut cmd = Command::new(python());
        cmd.arg(helper(name))
            .args(args)
            .env("PROXY_URL", &self.url)
            .env("CA", self.pki("server-ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        enter(&mut cmd, netns, None);
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{name} {args:?}: {e}\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// curl against the proxy: `(status, body)`; status 0 when curl failed.
    /// How many requests [`ProxyLab::curl`] has sent.
    pub fn curl_count(&self) -> usize {
        self.curls.load(Ordering::SeqCst)
    }

    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        self.curls.fetch_add(1, Ordering::SeqCst);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(self.pki("server-ca.pem"))
        .args(args)
        .arg(format!("{}{path}", self.url));
        enter(&mut cmd, self.place.netns.as_deref(), None);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            eprintln!(
                "curl {path} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        (code, body.to_owned())
    }

    /// curl with a bearer token.
    pub fn get(&self, path: &str, token: &str) -> (u16, String) {
        self.curl(path, &["-H", &format!("Authorization: Bearer {token}")])
    }

    pub fn post(&self, path: &str, token: &str, json: &str) -> (u16, String) {
        self.curl(
            path,
            &[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                json,
            ],
        )
    }

    fn jsonl(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Audit records written so far.
    pub fn audit(&self) -> Vec<Value> {
        Self::jsonl(&self.dir.join("audit.jsonl"))
    }

    /// Waits for exactly `n` audit records (one per request sent so far);
    /// fails if fewer arrive or more follow.
    pub fn audit_wait(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(10));
        loop {
            let a = self.audit();
            if a.len() >= n {
                std::thread::sleep(Duration::from_millis(300));
                let a = self.audit();
                assert_eq!(a.len(), n, "audit records: {a:#?}");
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} audit records: {a:#?}",
                a.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests the stand-in Ollama received.
    pub fn upstream_log(&self) -> Vec<Value> {
        Self::jsonl(&self.dir.join("upstream.jsonl"))
    }

    /// A single audit record's request id (as returned in `x-request-id`).
    pub fn record<'a>(records: &'a [Value], request_id: &str) -> Option<&'a Value> {
        records.iter().find(|r| r["metadata"]["uid"] == request_id)
    }
}

fn run(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for ProxyLab {
    fn drop(&mut self) {
        self.stop();
        let _ = self.upstream.kill();
        let _ = self.upstream.wait();
        if std::thread::panicking() {
            eprintln!("--- warden proxy stderr ---\n{}", self.proxy_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
