//! Drop throughput under a SYN flood: an XDP packet generator (live frames
//! redirected out of a veth) floods TCP SYNs to the protected port; in one
//! namespace pair warden's XDP program drops them, in another an equivalent
//! nftables rule (prerouting, priority raw), in a third a program that only
//! counts and drops (the most any program could do here). Runs alternate.
//! Throughput is what was judged and dropped per second (each side's
//! counter), CPU is busy time over all CPUs (`/proc/stat`) per dropped packet.

use crate::{PRODUCTION, Stats, bpf, packet, stats};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};
use warden_tests::{Lab, sh};

const RUNS: usize = 5;
/// Frames per run: enough for a few seconds at the expected rates.
const FRAMES: u32 = 20_000_000;
/// warden's rule id for "no rule matched" (`warden_common::RULE_DEFAULT_DENY`).
const RULE_DEFAULT_DENY: u32 = 0;

/// Runs `f` in network namespace `ns` (this thread only), then comes back.
fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let there = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on descriptors we hold; only this thread moves.
    unsafe {
        assert_eq!(
            libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET),
            0,
            "setns {ns}"
        );
        let out = f();
        assert_eq!(
            libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET),
            0,
            "setns back"
        );
        out
    }
}

fn ifindex(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(i > 0, "no interface {name:?}");
    i
}

fn mac(ns: &str, ifc: &str) -> [u8; 6] {
    let out = sh(&format!("ip -n {ns} -j link show {ifc}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = v[0]["address"].as_str().unwrap();
    let mut m = [0u8; 6];
    for (i, p) in text.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// Busy jiffies over all CPUs.
fn cpu_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // Everything but idle and iowait.
    f.iter().sum::<u64>() - f[3] - f[4]
}

/// The name of the veth end in namespace `ns`.
fn veth_of(ns: &str) -> String {
    let out = sh(&format!("ip -n {ns} -j link show type veth"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifname"].as_str().unwrap().to_owned()
}

struct Pair {
    attacker: String,
    ifc: String,
    frame: Vec<u8>,
}

/// One flood through `pair`; returns (dropped per second, CPU ns per drop).
fn run_once(pair: &Pair, dropped: &dyn Fn() -> u64) -> (f64, f64) {
    let before = dropped();
    let busy0 = cpu_busy();
    let t = Instant::now();
    in_netns(&pair.attacker, || {
        let out = ifindex(&pair.ifc);
        let prog: OwnedFd = bpf::redirect_xdp(out).expect("load the generator");
        bpf::transmit_live(&prog, &pair.frame, FRAMES, out).expect("transmit");
    });
    // Let the receive side finish what is queued.
    std::thread::sleep(Duration::from_millis(100));
    let secs = t.elapsed().as_secs_f64() - 0.1;
    let busy1 = cpu_busy();
    let n = dropped() - before;
    let hz = 100.0; // USER_HZ: /proc/stat counts in 1/100 s
    let cpu_ns = (busy1 - busy0) as f64 / hz * 1e9;
    (n as f64 / secs, cpu_ns / n.max(1) as f64)
}

pub fn run() -> String {
    let mut lab = Lab::new();
    let pair = |lab: &mut Lab, short: &str, net: u8| {
        let srv = lab.netns(&format!("{short}s"));
        let att = lab.netns(&format!("{short}a"));
        let (sv, av) = lab.veth(
            &srv,
            &[&format!("10.{net}.0.1/24")],
            &att,
            &[&format!("10.{net}.0.2/24")],
        );
        let frame = packet::syn4_to(
            mac(&att, &av),
            mac(&srv, &sv),
            Ipv4Addr::new(10, net, 0, 2),
            Ipv4Addr::new(10, net, 0, 1),
            40000,
            11434,
        );
        (
            srv,
            Pair {
                attacker: att,
                ifc: av,
                frame,
            },
        )
    };
    let (xdp_srv, xdp_pair) = pair(&mut lab, "fx", 202);
    let (nft_srv, nft_pair) = pair(&mut lab, "fn", 203);
    let (floor_srv, floor_pair) = pair(&mut lab, "fd", 204);
    // veth receives redirected frames only with NAPI on, which an attached XDP
    // program turns on: the nft side gets the empty one (XDP_PASS, then the stack).
    let pass = bpf::empty_xdp().unwrap();
    let nft_ifc = veth_of(&nft_srv);
    let _pass_link = in_netns(&nft_srv, || {
        bpf::attach_xdp(&pass, ifindex(&nft_ifc)).expect("attach XDP_PASS")
    });
    // The ceiling of this generator and veth: a program that only counts
    // and drops.
    let counter = bpf::counter_map().unwrap();
    let drop_all = bpf::counting_drop_xdp(&counter).unwrap();
    let floor_ifc = veth_of(&floor_srv);
    let _drop_link = in_netns(&floor_srv, || {
        bpf::attach_xdp(&drop_all, ifindex(&floor_ifc)).expect("attach the counting drop")
    });
    let floor_dropped = || bpf::percpu_sum_of(&counter, 0).unwrap();

    // warden: the allowlist names another network, so the flood is denied.
    let policy = format!(
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n\
         [ingress]\ninterfaces = [\"*\"]\nallow = [\"192.0.2.0/24\"]\n",
        lab.cgroup("server")
    );
    let _d = lab.daemon_with(Some(&xdp_srv), &lab.policy("p.toml", &policy), PRODUCTION);
    let mode = sh(&format!("ip -n {xdp_srv} -j link show"));
    let native = mode.contains("\"xdp\"") && !mode.contains("xdpgeneric");
    let hits = lab.pin_dir.join("RULE_HITS");
    let xdp_dropped = || bpf::percpu_sum(&hits, RULE_DEFAULT_DENY).unwrap();

    // nftables: the same decision, in a table of the bench's own namespace.
    sh(&format!(
        "ip netns exec {nft_srv} nft -f - <<'EOF'\n\
         table inet bench {{\n  chain pre {{\n    type filter hook prerouting priority raw; policy accept;\n\
         \x20   tcp dport 11434 ip saddr != 192.0.2.0/24 counter drop\n  }}\n}}\nEOF"
    ));
    let nft_dropped = || {
        let out = sh(&format!(
            "ip netns exec {nft_srv} nft -j list table inet bench"
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0)
    };

    let (mut xp, mut xc, mut np, mut nc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fp, mut fc) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (p, c) = run_once(&floor_pair, &floor_dropped);
        fp.push(p / 1e6);
        fc.push(c);
        let (p, c) = run_once(&xdp_pair, &xdp_dropped);
        xp.push(p / 1e6);
        xc.push(c);
        let (p, c) = run_once(&nft_pair, &nft_dropped);
        np.push(p / 1e6);
        nc.push(c);
    }
    let (xp, xc, np, nc): (Stats, Stats, Stats, Stats) =
        (stats(xp), stats(xc), stats(np), stats(nc));
    let (fp, fc): (Stats, Stats) = (stats(fp), stats(fc));
    let ratio = xp.median / np.median;
    let floor_ratio = fp.median / np.median;
    let of_floor = 100.0 * xp.median / fp.median;
    format!(
        "## Drop throughput under a SYN flood\n\n\
         A packet generator in the attacker's namespace (an XDP program redirecting \
         {FRAMES} live frames per run out of its veth, as xdp-trafficgen does) floods TCP \
         SYNs to port 11434; the frames arrive as XDP frames, as from a NIC. {RUNS} runs \
         alternating between three namespace pairs: in one warden's XDP program (attached {}) \
         drops them (its allowlist names another network), in the other an nftables rule \
         does (`tcp dport 11434 ip saddr != 192.0.2.0/24 counter drop`, prerouting at \
         priority raw; an empty XDP program is attached there too, since veth only takes \
         redirected frames with one). Throughput counts packets judged and dropped \
         (warden's default-deny rule counter, the nft rule's counter) per second of the \
         run; CPU is busy time over all CPUs per dropped packet, generator included.\n\n\
         | dropped by | Mpps: median (min–max, runs) | CPU ns per packet | ratio | goal |\n\
         |---|---|---|---|---|\n\
         | nftables rule (baseline) | {np} | {nc} | 1.00 | |\n\
         | warden XDP | {xp} | {xc} | {ratio:.2} | ≥ 3 ({}) |\n\
         | the harness's ceiling: an XDP program that only counts and drops | {fp} | {fc} | {floor_ratio:.2} | |\n\n\
         warden drops at {of_floor:.0}% of the rate at which this generator and veth can \
         deliver frames to any program at all (a third namespace pair, in the same \
         alternation).\n\n\
         Reproduce: `cargo xtask bench flood`\n",
        if native {
            "in native mode"
        } else {
            "in generic mode"
        },
        if ratio >= 3.0 { "met" } else { "missed" },
    )
}
