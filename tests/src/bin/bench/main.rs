//! `cargo xtask bench [NAME...]`: measurements, not tests. Each benchmark runs
//! its baseline in the same run, repeats, and writes its section of
//! `BENCHMARKS.md` (median, spread, ratio to the baseline, the goal, and the
//! command that reproduces it). Nothing here asserts a timing.
//!
//! Benchmarks: `xdp` (the XDP program's cost per frame vs an empty program,
//! `xdp.rs`), `flood` (SYN flood drop rate, XDP vs an nftables rule,
//! `flood.rs`), `connect` (connect() cost with warden's hooks and 1k egress
//! rules vs none), `apply` (100k CIDRs compiled and swapped in, eBPF and nft),
//! `proxy` (wrk: direct vs `warden proxy` vs nginx, `proxy.rs`), `hostile`
//! (a legitimate client's p99 and the proxy's RSS under attack, `hostile.rs`), `pipeline`
//! (kernel records to an OCSF file, `pipeline.rs`), `footprint` (daemon and
//! proxy RSS, idle and with 1,000 open streams).
//!
//! Needs root; run through `cargo xtask bench`, which builds release binaries.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use warden_tests::proxy::{Placement, ProxyLab};
use warden_tests::{Lab, enter, workspace};

mod bpf;
mod flood;
mod hostile;
mod packet;
mod pipeline;
mod proxy;
mod xdp;

const ALL: &[&str] = &[
    "xdp",
    "flood",
    "pipeline",
    "connect",
    "apply",
    "proxy",
    "hostile",
    "footprint",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__connect-loop") {
        connect_loop(args[1].parse().unwrap(), args[2].parse().unwrap());
        return;
    }
    let names: Vec<&str> = if args.is_empty() {
        ALL.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for name in names {
        eprintln!("bench: {name} ...");
        let section = match name {
            "xdp" => xdp::run(),
            "flood" => flood::run(),
            "pipeline" => pipeline::run(),
            "proxy" => proxy::run(),
            "hostile" => hostile::run(),
            "connect" => connect(),
            "apply" => apply(),
            "footprint" => footprint(),
            other => {
                eprintln!("unknown benchmark `{other}`; known: {}", ALL.join(", "));
                std::process::exit(2);
            }
        };
        println!("{section}");
        write_section(name, &section);
    }
}

/// Median and spread of repeated measurements.
pub struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

pub fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
        n: v.len(),
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |x: f64| {
            if x >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        };
        write!(
            f,
            "{} ({}–{}, n={})",
            p(self.median),
            p(self.min),
            p(self.max),
            self.n
        )
    }
}

// ---------------------------------------------------------------- connect

const CONNECTS: usize = 5_000;
const REPEATS: usize = 21;
/// The daemon as it runs in production (the lab's defaults are for tests).
pub const PRODUCTION: &[&str] = &[
    "--rescan-secs",
    "1",
    "--loss-report-secs",
    "10",
    "--aggregate-secs",
    "10",
    "--kernel-event-rate",
    "100000",
];

/// The child: a listener and `n` connect/accept/close cycles in one thread;
/// prints the median ns per cycle. On loopback the handshake completes inside
/// connect(), so accept() finds the connection queued: no thread is woken,
/// and the cycle is the network stack's work (and warden's hooks) alone, not
/// the scheduler's (a wake-up across vCPUs made cycles of one run 11 or 25 µs
/// by where the accepting thread happened to sleep).
fn connect_loop(n: usize, port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    // Closed with a reset (SO_LINGER 0): no TIME_WAIT sockets piling up and
    // slowing later runs down.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // The median cycle, not the mean: one cycle now and then takes a timer
    // interrupt or a preemption, which would weigh on the mean.
    let mut cycles = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (accepted, _) = l.accept().expect("accept");
        // SAFETY: a valid socket and a linger struct of the right size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
        drop(accepted);
        cycles.push(t.elapsed().as_nanos() as f64);
    }
    cycles.sort_by(f64::total_cmp);
    println!("{}", cycles[n / 2]);
}

fn run_connect_loop(ns: &str, cgroup: Option<&Path>, port: u16) -> f64 {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["__connect-loop", &CONNECTS.to_string(), &port.to_string()]);
    enter(&mut c, Some(ns), cgroup);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn connect() -> String {
    let mut lab = Lab::new();
    let ns = lab.netns("bench");
    let client = lab.cgroup("client");
    let mut rules = String::new();
    for i in 0..999u32 {
        let _ = writeln!(
            rules,
            "[[egress.allow]]\nnet = \"10.{}.{}.0/24\"\nports = [443]\nproto = \"tcp\"",
            (i >> 8) & 255,
            i & 255
        );
    }
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{server}\"]\n[local]\nallow_cgroups = []\n[[egress]]\ncgroup = \"{client}\"\n{rules}[[egress.allow]]\nnet = \"127.0.0.0/8\"\n",
        server = lab.cgroup("server"),
    );
    let _d = lab.daemon_with(Some(&ns), &lab.policy("p.toml", &policy), PRODUCTION);
    let hooked = lab.cgroup.join("client");
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for i in 0..REPEATS {
        // Alternate, so drift affects both alike. Outside the lab's cgroup no
        // warden program runs: that is the baseline.
        let port = 20_000 + i as u16 * 2;
        base.push(run_connect_loop(&ns, None, port) / 1000.0);
        with.push(run_connect_loop(&ns, Some(&hooked), port + 1) / 1000.0);
    }
    let (b, w) = (stats(base), stats(with));
    let ratio = w.median / b.median;
    let made_of = programs_per_cycle(&lab, &ns, &hooked, (w.median - b.median) * 1000.0);
    format!(
        "## connect() overhead\n\n\
         A loopback connect/accept/close cycle in one thread (closed by reset, so no TIME_WAIT build-up; the handshake completes inside connect(), so no thread is woken), \
         {CONNECTS} per run (each run's median cycle), {REPEATS} runs alternating: \
         a process outside warden's cgroup (no programs) vs one in a cgroup with warden's \
         connect hooks and an egress policy of 1,000 rules (the destination matches the last).\n\n\
         | | µs per cycle: median (min–max, runs) | ratio | goal |\n|---|---|---|---|\n\
         | baseline: no warden programs | {b} | 1.00 | |\n\
         | warden: connect4 + egress lookup + packet hooks, 1k rules | {w} | {ratio:.3} | ≤ 1.05 {} |\n\n\
         {made_of}\n\
         Reproduce: `cargo xtask bench connect`\n",
        if ratio <= 1.05 { "(met)" } else { "(missed)" }
    )
}

const PROFILED_RUNS: usize = 3;

/// What `added_ns` per cycle is made of: each hook program's own time per
/// cycle, from the kernel's run-time statistics, in runs of their own (the
/// statistics cost two clock reads per program run).
fn programs_per_cycle(lab: &Lab, ns: &str, hooked: &Path, added_ns: f64) -> String {
    let programs = [
        ("connect4", "connect4 (the connect() call)"),
        ("skb_egress", "skb_egress (each packet sent)"),
        ("skb_ingress", "skb_ingress (each packet received)"),
    ]
    .map(|(name, what)| {
        let link = lab.pin_dir.join("links").join(name);
        (what, bpf::pinned_link_program(&link).expect(name))
    });
    let counters = || programs.each_ref().map(|(_, p)| bpf::run_stats(p).unwrap());
    let on = bpf::enable_stats().expect("BPF_ENABLE_STATS");
    let before = counters();
    for i in 0..PROFILED_RUNS {
        run_connect_loop(ns, Some(hooked), 20_000 + (REPEATS * 2 + i) as u16);
    }
    let after = counters();
    drop(on);
    let cycles = (PROFILED_RUNS * CONNECTS) as f64;
    let mut rows = String::new();
    let mut total = 0.0;
    for (((what, _), (r0, t0)), (r1, t1)) in programs.iter().zip(before).zip(after) {
        let (runs, ns) = ((r1 - r0) as f64, (t1 - t0) as f64);
        total += ns / cycles;
        let _ = writeln!(
            rows,
            "| {what} | {:.2} | {:.0} | {:.0} |",
            runs / cycles,
            ns / runs.max(1.0),
            ns / cycles
        );
    }
    format!(
        "What the added time is made of: {PROFILED_RUNS} more runs of the hooked loop with the \
         kernel's run-time statistics on (`BPF_ENABLE_STATS`), each program's runs and time \
         per cycle. The rest of the added time is spent outside the programs, in the kernel \
         running its cgroup hooks.\n\n\
         | program | runs per cycle | ns per run | ns per cycle |\n|---|---|---|---|\n\
         {rows}| all three | | | {total:.0} of {added_ns:.0} added |\n"
    )
}

// ---------------------------------------------------------------- apply

const CIDRS: u32 = 100_000;

/// `n` distinct quoted IPv4 /32 prefixes, spread over 11.0.0.0 to 110.255.255.255
/// (never loopback, never the labs' addresses); `seed` picks another set.
pub fn allowlist(n: u32, seed: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let v = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
            let v = (v & 0x00ff_ffff) | (((v >> 24) % 100 + 11) << 24);
            format!(
                "\"{}.{}.{}.{}/32\"",
                v >> 24,
                (v >> 16) & 255,
                (v >> 8) & 255,
                v & 255
            )
        })
        .collect()
}

fn big_policy(lab: &Lab, seed: u32) -> String {
    format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n[ingress]\ninterfaces = [\"*\"]\nallow = [{}]\n",
        lab.cgroup_rel("server"),
        allowlist(CIDRS, seed).join(",")
    )
}

fn apply_backend(backend: &str) -> (Stats, Stats) {
    let mut lab = Lab::new();
    let ns = lab.netns("apply");
    let small = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n",
        lab.cgroup("server")
    );
    let path = lab.policy("p.toml", &small);
    let mut args = vec!["--backend", backend];
    args.extend_from_slice(PRODUCTION);
    let d = lab.daemon_with(Some(&ns), &path, &args);
    let (mut load, mut swap) = (Vec::new(), Vec::new());
    for i in 0..3u32 {
        let text = big_policy(&lab, i * 7919);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let generation = i + 2;
        let e = d.wait_event_for("policy_applied", Duration::from_secs(120), |e| {
            e["type"] == "policy_applied" && e["generation"] == generation
        });
        load.push(e["load_ms"].as_f64().unwrap());
        swap.push(e["apply_ms"].as_f64().unwrap());
    }
    (stats(load), stats(swap))
}

fn apply() -> String {
    let (el, ea) = apply_backend("ebpf");
    let (nl, na) = apply_backend("nft");
    let total = |l: &Stats, a: &Stats| l.median + a.median;
    format!(
        "## Policy apply time\n\n\
         A policy of {CIDRS} ingress CIDRs pushed by a file change to a running daemon, 3 times \
         (different CIDRs each time); timings from the daemon's `policy_applied` event \
         (`load_ms`: read, check and compile; `apply_ms`: swap into the backend).\n\n\
         | backend | load ms | apply ms | total ms (medians) | goal |\n|---|---|---|---|---|\n\
         | eBPF | {el} | {ea} | {:.0} | ≤ 500 {} |\n\
         | nft | {nl} | {na} | {:.0} | ≤ 3000 {} |\n\n\
         Reproduce: `cargo xtask bench apply`\n",
        total(&el, &ea),
        if total(&el, &ea) <= 500.0 {
            "(met)"
        } else {
            "(missed)"
        },
        total(&nl, &na),
        if total(&nl, &na) <= 3000.0 {
            "(met)"
        } else {
            "(missed)"
        },
    )
}

// ---------------------------------------------------------------- footprint

/// A memory figure of `/proc/PID/status` (`VmRSS`, `VmHWM`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS")
}

const STREAMS: usize = 1000;

fn footprint() -> String {
    let mut lab = Lab::new();
    let ns = lab.netns("fp");
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n[local]\nallow_cgroups = [\"{}\"]\n",
        lab.cgroup("server"),
        lab.cgroup("proxy")
    );
    let d = lab.daemon_with(Some(&ns), &lab.policy("p.toml", &policy), PRODUCTION);
    let proxy = ProxyLab::start_in(
        "[limits]\nmax_connections = 2048\nmax_connections_per_ip = 2048\n\
         [[identity]]\nname = \"a\"\ntokens = [\"@token:a@\"]\nmodels = [\"*\"]\n",
        // Slow tokens, so every stream is still open when memory is read.
        &["--delay-ms", "100"],
        Placement {
            netns: Some(ns.clone()),
            proxy_cgroup: Some(lab.cgroup.join("proxy")),
            upstream_cgroup: Some(lab.cgroup.join("server")),
            upstream_port: 11434,
            ..Default::default()
        },
    );
    // A little traffic first, so the figures are of a working process.
    for _ in 0..20 {
        proxy.get("/api/version", proxy.token("a"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (drss, prss) = (rss_mib(d.pid()), rss_mib(proxy.proxy_pid()));

    let mut c = Command::new(warden_tests::proxy::python());
    c.arg(warden_tests::proxy::helper("hold_streams.py"))
        .arg(&proxy.url)
        .arg(proxy.pki("server-ca.pem"))
        .arg(proxy.token("a"))
        .arg(STREAMS.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    enter(&mut c, Some(&ns), None);
    let mut holder = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        format!("ready {STREAMS}"),
        "{}",
        proxy.proxy_log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let streaming = rss_mib(proxy.proxy_pid());
    drop(holder.stdin.take());
    let _ = holder.wait();
    format!(
        "## Footprint\n\n\
         Resident memory (VmRSS) after start and 20 requests, and of the proxy while \
         {STREAMS} streamed generations are open at once (each TLS client has its first \
         NDJSON line and keeps reading).\n\n\
         | process | RSS MiB | goal |\n|---|---|---|\n\
         | `warden daemon` (eBPF backend, default sinks) | {drss:.1} | ≤ 64 {} |\n\
         | `warden proxy` (idle, 1 identity) | {prss:.1} | |\n\
         | `warden proxy` with {STREAMS} concurrent streams | {streaming:.1} | |\n\n\
         Reproduce: `cargo xtask bench footprint`\n",
        if drss <= 64.0 { "(met)" } else { "(missed)" }
    )
}

// ---------------------------------------------------------------- BENCHMARKS.md

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {}", kernel.trim())
}

/// Replaces (or appends) one benchmark's section of BENCHMARKS.md.
fn write_section(name: &str, section: &str) {
    let path = workspace().join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\n`cargo xtask bench` runs every benchmark below (release build) and rewrites \
         its section; `cargo xtask bench NAME` runs one. Each reports its baseline from the same \
         run, the median and spread over repeated runs, and the goal it is measured against.\n\n"
            .to_owned()
    });
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let block = format!("{start}\n{section}\nMeasured on: {}.\n{end}", machine());
    match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) => text.replace_range(a..b + end.len(), &block),
        _ => {
            text.push_str(&block);
            text.push_str("\n\n");
        }
    }
    std::fs::write(&path, text).unwrap();
}
