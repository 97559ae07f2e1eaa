//! XDP decision cost: warden's attached XDP program run by BPF_PROG_TEST_RUN on
//! fixed frames against an empty XDP program loaded in the same run.

use crate::{PRODUCTION, Stats, allowlist, bpf, packet, stats};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use warden_tests::Lab;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 7;
const SIZES: [u32; 3] = [1, 1_000, 100_000];

pub fn run() -> String {
    let mut lab = Lab::new();
    let (a, b) = (lab.netns("xa"), lab.netns("xb"));
    lab.veth(&a, &["10.200.0.1/24"], &b, &["10.200.0.2/24"]);
    let server = lab.cgroup_rel("server");
    lab.cgroup("server");
    let policy = |n: u32| {
        format!(
            "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{server}\"]\n\
             [ingress]\ninterfaces = [\"*\"]\nallow = [{}]\n",
            allowlist(n, 0).join(",")
        )
    };
    let path = lab.policy("p.toml", &policy(SIZES[0]));
    let d = lab.daemon_with(Some(&a), &path, PRODUCTION);
    let warden = bpf::lab_xdp_program(&lab.pin_dir);
    let empty = bpf::empty_xdp().expect("load an empty XDP program");

    let first: Ipv4Addr = allowlist(1, 0)[0]
        .trim_matches('"')
        .trim_end_matches("/32")
        .parse()
        .unwrap();
    let dst = Ipv4Addr::new(10, 200, 0, 1);
    let outsider = Ipv4Addr::new(203, 0, 113, 9);
    let kinds: [(&str, Vec<u8>, u32); 4] = [
        (
            "allowed source, protected port",
            packet::syn4(first, dst, 40000, 11434),
            2,
        ),
        (
            "denied source, protected port",
            packet::syn4(outsider, dst, 40000, 11434),
            1,
        ),
        (
            "unprotected port",
            packet::syn4(outsider, dst, 40000, 22),
            2,
        ),
        (
            "IPv6, denied source, protected port",
            packet::syn6(
                "2001:db8::9".parse::<Ipv6Addr>().unwrap(),
                "fd00::1".parse().unwrap(),
                40000,
                11434,
            ),
            1,
        ),
    ];

    let mut rows = String::new();
    let mut worst_protected = 0.0f64;
    let mut worst_unprotected = 0.0f64;
    for (i, &n) in SIZES.iter().enumerate() {
        if i > 0 {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, policy(n)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            let generation = i as u64 + 1;
            d.wait_event_for("policy_applied", Duration::from_secs(120), |e| {
                e["type"] == "policy_applied" && e["generation"] == generation
            });
        }
        for (name, frame, want) in &kinds {
            let (mut base, mut with) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                // Alternate, so drift affects both alike.
                base.push(f64::from(bpf::test_run(&empty, frame, REPEAT).unwrap().1));
                let (verdict, ns) = bpf::test_run(&warden, frame, REPEAT).unwrap();
                assert_eq!(verdict, *want, "{name}: XDP verdict with {n} prefixes");
                with.push(f64::from(ns));
            }
            let (b, w): (Stats, Stats) = (stats(base), stats(with));
            let ratio = w.median / b.median;
            let protected = *name != "unprotected port";
            if protected {
                worst_protected = worst_protected.max(ratio);
            } else {
                worst_unprotected = worst_unprotected.max(ratio);
            }
            rows += &format!(
                "| {n} | {name} | {} | {b} | {w} | {ratio:.2} | {} |\n",
                if *want == 2 { "pass" } else { "drop" },
                if protected { "≤ 1.5" } else { "≤ 1.1" },
            );
        }
    }
    let met = |r: f64, goal: f64| if r <= goal { "met" } else { "missed" };
    format!(
        "## XDP decision cost\n\n\
         Warden's attached XDP program (from its pinned link) and an empty XDP program \
         (`r0 = XDP_PASS; exit`) run alternately by `BPF_PROG_TEST_RUN` on the same \
         Ethernet frame (a TCP SYN), {REPEAT} repeats per run, {RUNS} runs each; the kernel's \
         mean ns per run. The allowlist holds 1, 1,000 or 100,000 IPv4 /32 prefixes; the \
         allowed source is the first one written. The daemon runs as in production, \
         draining the ring buffer while denials are recorded.\n\n\
         | prefixes | frame | verdict | empty program ns | warden ns | ratio | goal |\n\
         |---|---|---|---|---|---|---|\n{rows}\n\
         Worst protected-port ratio {worst_protected:.2} (goal ≤ 1.5, {}); unprotected port \
         {worst_unprotected:.2} (goal ≤ 1.1, {}).\n\n\
         Reproduce: `cargo xtask bench xdp`\n",
        met(worst_protected, 1.5),
        met(worst_unprotected, 1.1),
    )
}
