//! Event pipeline throughput: denied SYNs run through warden's attached XDP
//! program by BPF_PROG_TEST_RUN (each one a kernel record: no event budget, no
//! aggregation), read by the daemon, encoded as OCSF and written to a file.
//! First paced at the goal rate, then as fast as the kernel can emit; every
//! record offered must be written or counted as lost.

use crate::{bpf, packet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use warden_tests::Lab;

const SECS: f64 = 10.0;
const GOAL: f64 = 200_000.0;

struct Outcome {
    offered: u64,
    records: u64,
    written: u64,
    counted_lost: u64,
    secs: f64,
    cpu_pct: f64,
    peak_rss_mib: f64,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Offers records for `SECS`: `per_ms` per millisecond, or as fast as possible.
fn run_once(per_ms: Option<u32>) -> Outcome {
    let mut lab = Lab::new();
    let (a, b) = (lab.netns("pa"), lab.netns("pb"));
    lab.veth(&a, &["10.204.0.1/24"], &b, &["10.204.0.2/24"]);
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n\
         [ingress]\ninterfaces = [\"*\"]\nallow = [\"192.0.2.0/24\"]\n",
        lab.cgroup("server")
    );
    // One file, never rotated, so every line written can be counted.
    let sink = format!(
        "file://{}?max_bytes=1000G",
        lab.run_dir.join("pipeline.jsonl").display()
    );
    let mut d = lab.daemon_with(
        Some(&a),
        &lab.policy("p.toml", &policy),
        &[
            "--events",
            &sink,
            "--kernel-event-rate",
            "0",
            "--aggregate-secs",
            "0",
            "--event-format",
            "ocsf",
            "--loss-report-secs",
            "1",
        ],
    );
    let prog = bpf::lab_xdp_program(&lab.pin_dir);
    let frame = packet::syn4(
        Ipv4Addr::new(203, 0, 113, 7),
        Ipv4Addr::new(10, 204, 0, 1),
        40000,
        11434,
    );
    let pid = d.pid();
    let cpu0 = cpu_ticks(pid);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(SECS);
    let mut offered = 0u64;
    let mut tick = start;
    while Instant::now() < end {
        match per_ms {
            Some(n) => {
                bpf::test_run(&prog, &frame, n).unwrap();
                offered += n as u64;
                tick += Duration::from_millis(1);
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            None => {
                bpf::test_run(&prog, &frame, 10_000).unwrap();
                offered += 10_000;
            }
        }
    }
    // Until the daemon has read everything the kernel queued.
    let stats = || lab.status()["events"].clone();
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let r = stats()["records"].as_u64().unwrap_or(0);
        if r == last {
            break;
        }
        last = r;
    }
    let secs = start.elapsed().as_secs_f64() - 1.5;
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0;
    let peak = crate::status_mib(pid, "VmHWM");
    assert!(d.stop(Duration::from_secs(10)), "the daemon stops in time");
    let e = stats();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let sink = &e["sinks"][0];
    let counted_lost = n(&e["kernel_lost"])
        + n(&e["kernel_suppressed"])
        + n(&e["queue_dropped"])
        + n(&sink["dropped"])
        + n(&sink["failed"]);
    let flows = std::io::BufRead::lines(std::io::BufReader::new(
        std::fs::File::open(&d.events).unwrap(),
    ))
    .map_while(Result::ok)
    .filter(|l| l.contains("\"class_uid\":4001"))
    .count() as u64;
    let _ = std::fs::remove_file(&d.events);
    Outcome {
        offered,
        records: n(&e["records"]),
        written: flows,
        counted_lost,
        secs,
        cpu_pct: cpu / secs * 100.0,
        peak_rss_mib: peak,
    }
}

pub fn run() -> String {
    let paced = run_once(Some((GOAL / 1000.0) as u32));
    let flat = run_once(None);
    let row = |name: &str, o: &Outcome| {
        let unaccounted = o.offered as i64 - o.written as i64 - o.counted_lost as i64;
        format!(
            "| {name} | {} | {} | {} | {:.0} | {} | {unaccounted} | {:.0} | {:.1} |\n",
            o.offered,
            o.records,
            o.written,
            o.written as f64 / o.secs,
            o.counted_lost,
            o.cpu_pct,
            o.peak_rss_mib
        )
    };
    let met =
        paced.counted_lost == 0 && paced.written == paced.offered && paced.peak_rss_mib <= 64.0;
    format!(
        "## Event pipeline\n\n\
         Denied SYNs run through warden's attached XDP program by `BPF_PROG_TEST_RUN`, each \
         one a kernel record (`--kernel-event-rate 0`, `--aggregate-secs 0`), read by the \
         daemon, encoded as OCSF and written to a file, for {SECS} s: paced at {GOAL} records/s \
         (a batch every millisecond), then as fast as the kernel emits them. Written counts \
         OCSF Network Activity lines in the file; lost counts every loss counter \
         (kernel ring, queue, sink); unaccounted = offered − written − lost. Written/s is over \
         the run plus the drain after it. CPU is the daemon's (100% = one core).\n\n\
         | run | offered | read by the daemon | written | written/s | counted lost | unaccounted | daemon CPU % | daemon peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|\n{}{}\n\
         Goal: ≥ 200k records/s with no unaccounted loss, daemon RSS ≤ 64 MiB: {}.\n\n\
         Reproduce: `cargo xtask bench pipeline`\n",
        row(&format!("paced, {}k/s", GOAL / 1000.0), &paced),
        row("unpaced", &flat),
        if met { "met" } else { "missed" },
    )
}
