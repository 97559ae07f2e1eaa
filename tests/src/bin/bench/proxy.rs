//! Proxy throughput and latency: the same load generator (`wrk`) against the
//! stand-in directly, through `warden proxy` and through nginx configured for
//! the same job (TLS, bearer check, admin routes refused); time to first byte
//! of a streamed generation (curl) on the same three paths.

use crate::{Stats, stats};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use warden_tests::proxy::{Placement, ProxyLab};
use warden_tests::{Lab, enter};

const RUNS: usize = 3;
const SECS: u32 = 5;
const CONNECTIONS: u32 = 50;
const STREAMS: usize = 30;
const IDENTITY: &str =
    "[[identity]]\nname = \"bench\"\ntokens = [\"@token:bench@\"]\nmodels = [\"*\"]\n";

/// An nginx run privately from `dir` (never as a service).
struct Nginx(Child);

impl Nginx {
    fn start(ns: &str, dir: &Path, name: &str, http: &str) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes auto;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n\
                 \x20 fastcgi_temp_path {d}/{name}-fcgi;\n  uwsgi_temp_path {d}/{name}-uwsgi;\n  scgi_temp_path {d}/{name}-scgi;\n\
                 {http}\n}}\n"
            ),
        )
        .unwrap();
        let mut c = Command::new("nginx");
        c.arg("-e")
            .arg(dir.join(format!("{name}.err")))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        enter(&mut c, Some(ns), None);
        let n = Nginx(c.spawn().expect("start nginx"));
        std::thread::sleep(Duration::from_millis(500));
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our child (nginx's master stops its workers).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
        let _ = self.0.wait();
    }
}

fn free_port(ns: &str) -> u16 {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])",
    ]);
    enter(&mut c, Some(ns), None);
    String::from_utf8(c.output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One wrk run: (requests/s, p50 ms, p99 ms).
fn wrk(ns: &str, url: &str, token: Option<&str>) -> (f64, f64, f64) {
    wrk_with(Some(ns), url, token, 2, CONNECTIONS, SECS)
}

/// One wrk run with `threads`, `connections`, `secs` (in `ns`, else here):
/// (requests/s, p50 ms, p99 ms); every response must be 2xx.
pub fn wrk_with(
    ns: Option<&str>,
    url: &str,
    token: Option<&str>,
    threads: u32,
    connections: u32,
    secs: u32,
) -> (f64, f64, f64) {
    let mut c = Command::new("wrk");
    c.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
        url,
    ]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    enter(&mut c, ns, None);
    let out = c.output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap() / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap()
        } else {
            v.trim_end_matches('s').parse::<f64>().unwrap() * 1000.0
        }
    };
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("wrk printed no `{prefix}`: {out}"))
    };
    assert!(
        !out.contains("Non-2xx"),
        "every request must succeed: {out}"
    );
    (
        find("Requests/sec:").trim().parse().unwrap(),
        ms(&find("50%")),
        ms(&find("99%")),
    )
}

/// Milliseconds from the request sent to the first streamed byte, `STREAMS` times.
fn ttfb(ns: &str, url: &str, token: Option<&str>, cacert: &Path) -> Vec<f64> {
    (0..STREAMS)
        .map(|_| {
            let mut c = Command::new("curl");
            c.args([
                "-sS",
                "-N",
                "--http1.1",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
            ])
            .arg("--cacert")
            .arg(cacert)
            .args([
                "-w",
                "%{time_pretransfer} %{time_starttransfer} %{http_code}",
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"model":"llama3.2","prompt":"hi","stream":true}"#,
            ]);
            if let Some(t) = token {
                c.args(["-H", &format!("Authorization: Bearer {t}")]);
            }
            c.arg(format!("{url}/api/generate"));
            enter(&mut c, Some(ns), None);
            let out = String::from_utf8(c.output().unwrap().stdout).unwrap();
            let f: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(f.get(2), Some(&"200"), "stream through {url}: {out}");
            (f[1].parse::<f64>().unwrap() - f[0].parse::<f64>().unwrap()) * 1000.0
        })
        .collect()
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run() -> String {
    let mut lab = Lab::new();
    let ns = lab.netns("px");
    // The Python stand-in (streams) behind a fast stand-in for small requests.
    let mut proxy = ProxyLab::start_in(
        IDENTITY,
        &[],
        Placement {
            netns: Some(ns.clone()),
            ..Default::default()
        },
    );
    let dir = proxy.dir.clone();
    let py = proxy.upstream_url.rsplit(':').next().unwrap().to_owned();
    let up = free_port(&ns);
    let _upstream = Nginx::start(
        &ns,
        &dir,
        "upstream",
        &format!(
            "  access_log off;\n  server {{\n    listen 127.0.0.1:{up};\n\
             \x20   location = /api/version {{ default_type application/json; return 200 '{{\"version\":\"0.12.6\"}}'; }}\n\
             \x20   location / {{ proxy_pass http://127.0.0.1:{py}; proxy_http_version 1.1; proxy_set_header Host 127.0.0.1:{py}; proxy_buffering off; }}\n  }}"
        ),
    );
    proxy.retarget(up, IDENTITY);
    let token = proxy.token("bench").to_owned();
    let (status, body) = proxy.get("/api/version", &token);
    assert!(
        status == 200 && body.contains("0.12.6"),
        "the proxy answers from the fast stand-in: {status} {body}"
    );
    let ng = free_port(&ns);
    let pki = dir.join("pki");
    let _nginx = Nginx::start(
        &ns,
        &dir,
        "proxy",
        &format!(
            "  access_log {d}/nginx-access.log combined buffer=64k;\n\
             \x20 upstream ollama {{ server 127.0.0.1:{up}; keepalive 64; }}\n\
             \x20 map_hash_bucket_size 256;\n\
             \x20 map $http_authorization $authorized {{ \"Bearer {token}\" 1; default 0; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{ng} ssl;\n\
             \x20   ssl_certificate {p}/server.pem;\n    ssl_certificate_key {p}/server.key;\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
             \x20   if ($authorized = 0) {{ return 401; }}\n\
             \x20   location ~ ^/api/(pull|push|create|delete|copy|blobs) {{ return 403; }}\n\
             \x20   location / {{ proxy_pass http://ollama; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host 127.0.0.1:{up}; proxy_buffering off; }}\n  }}",
            d = dir.display(),
            p = pki.display(),
        ),
    );
    let targets = [
        (
            "direct to the stand-in (plain HTTP)",
            format!("http://127.0.0.1:{up}"),
            None,
        ),
        (
            "through `warden proxy` (TLS, bearer)",
            proxy.url.clone(),
            Some(token.as_str()),
        ),
        (
            "through nginx (TLS, bearer map)",
            format!("https://127.0.0.1:{ng}"),
            Some(token.as_str()),
        ),
    ];
    let mut rps = vec![Vec::new(); 3];
    let mut p50 = vec![Vec::new(); 3];
    let mut p99 = vec![Vec::new(); 3];
    for _ in 0..RUNS {
        for (i, (_, url, tok)) in targets.iter().enumerate() {
            let (r, a, b) = wrk(&ns, &format!("{url}/api/version"), *tok);
            rps[i].push(r);
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    let cacert = pki.join("server-ca.pem");
    let firsts: Vec<Vec<f64>> = targets
        .iter()
        .map(|(_, url, tok)| ttfb(&ns, url, *tok, &cacert))
        .collect();
    let s: Vec<(Stats, Stats, Stats)> = (0..3)
        .map(|i| {
            (
                stats(rps[i].clone()),
                stats(p50[i].clone()),
                stats(p99[i].clone()),
            )
        })
        .collect();
    let mut rows = String::new();
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let (r, a, b) = &s[i];
        rows += &format!(
            "| {name} | {r} | {:.2} | {a} | {b} | {:+.2} | {:.2} | {:.2} |\n",
            r.median / s[0].0.median,
            b.median - s[0].2.median,
            percentile(firsts[i].clone(), 0.5),
            percentile(firsts[i].clone(), 0.99),
        );
    }
    let (w, n) = (&s[1], &s[2]);
    let added_p99 = w.2.median - s[0].2.median;
    format!(
        "## Proxy\n\n\
         `wrk -t2 -c{CONNECTIONS} -d{SECS}s --latency` on `GET /api/version` (small JSON, \
         keep-alive), {RUNS} runs per path, alternating; the upstream is a fast stand-in \
         (nginx returning Ollama's JSON) so the proxies, not the stand-in, are measured. \
         `warden proxy` runs as configured by the tests (audit log on); nginx \
         (Debian package, `worker_processes auto`) is configured for the same job: TLS \
         1.2/1.3 with the same certificate, the bearer token checked by a `map`, admin \
         routes refused, upstream keep-alive, access log on. Time to first byte: {STREAMS} \
         streamed `POST /api/generate` by curl (new connection each, measured from the \
         request sent) through the fast stand-in to the Python stand-in, which streams \
         NDJSON.\n\n\
         | path | req/s: median (min–max, runs) | ratio | p50 ms | p99 ms | added p99 ms | TTFB p50 ms | TTFB p99 ms |\n\
         |---|---|---|---|---|---|---|---|\n{rows}\n\
         warden vs nginx throughput: {:.2}× (goal ≥ 1, {}); warden's added p99: {added_p99:.2} ms \
         (goal ≤ 1 ms, {}).\n\n\
         Reproduce: `cargo xtask bench proxy`\n",
        w.0.median / n.0.median,
        if w.0.median >= n.0.median {
            "met"
        } else {
            "missed"
        },
        if added_p99 <= 1.0 { "met" } else { "missed" },
    )
}
