//! The proxy under attack: a legitimate client's latency (`wrk`) with no
//! attack and while three attacks run at once from another source (100 TLS
//! connections that never send a request, 20 threads of wrong passwords,
//! 16 MiB JSON bodies of nested arrays naming a refused model), and the
//! proxy's peak resident memory meanwhile. Bans are off, so the attacks keep
//! costing what they cost (with bans, the flooding source is dropped at accept
//! after 20 failures).

use crate::{Stats, stats};
use std::time::Duration;
use warden_tests::proxy::ProxyLab;

const RUNS: usize = 3;
const SECS: u32 = 5;

/// A legitimate client's p99 (ms) over one wrk run. wrk binds no source
/// address, so it shares 127.0.0.1 with the attackers: the harder case.
fn legit(lab: &ProxyLab, token: &str) -> f64 {
    let url = format!("{}/api/version", lab.url);
    crate::proxy::wrk_with(None, &url, Some(token), 1, 8, SECS).2
}

pub fn run() -> String {
    let lab = ProxyLab::start(
        "[brute_force]\nban = \"0s\"\n\n\
         [[identity]]\nname = \"bench\"\ntokens = [\"@token:bench@\"]\nmodels = [\"llama3\"]\nmax_body = \"32MiB\"\n\n\
         [[identity]]\nname = \"alice\"\nbasic = \"@basic:alice-pw@\"\nmodels = [\"*\"]\n",
        &[],
    );
    let token = lab.token("bench").to_owned();
    let pid = lab.proxy_pid();
    let (mut quiet, mut loud) = (Vec::new(), Vec::new());
    let mut peak_growth = 0u64;
    for _ in 0..RUNS {
        quiet.push(legit(&lab, &token));
        let before = warden_tests::status_kb(pid, "VmRSS:");
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        std::thread::scope(|s| {
            let lab = &lab;
            let bodies_token = token.clone();
            let attacks = [
                s.spawn(|| lab.hostile(&["silent", "100", "7"])),
                s.spawn(|| lab.hostile(&["flood", "alice", "7", "20"])),
                s.spawn(move || {
                    for _ in 0..3 {
                        lab.hostile(&["bigjson", &bodies_token, "4", "16", "mistral"]);
                    }
                    serde_json::Value::Null
                }),
            ];
            std::thread::sleep(Duration::from_millis(500));
            loud.push(legit(lab, &token));
            for a in attacks {
                a.join().unwrap();
            }
        });
        peak_growth =
            peak_growth.max(warden_tests::status_kb(pid, "VmHWM:").saturating_sub(before));
    }
    let (q, l): (Stats, Stats) = (stats(quiet), stats(loud));
    format!(
        "## Proxy under attack\n\n\
         A legitimate client (`wrk -t1 -c8 -d{SECS}s` on `GET /api/version`, bearer token) \
         through `warden proxy` to the Python stand-in, {RUNS} runs with no attack and {RUNS} \
         while three attacks run at once: 100 TLS connections that never send a request \
         (closed at the header timeout), 20 threads of wrong basic-auth passwords (one \
         argon2 check per source at a time, the rest 429), and 4 × 16 MiB JSON bodies of \
         nested arrays naming a refused model, three times. Bans off.\n\n\
         | | legitimate p99 ms: median (min–max, runs) | ratio |\n|---|---|---|\n\
         | no attack | {q} | 1.00 |\n\
         | under attack | {l} | {:.2} |\n\n\
         Peak proxy RSS growth under attack: {:.1} MiB for 64 MiB of bodies in flight \
         ({:.2}× the bytes; goal ≤ 2×, {}).\n\n\
         Reproduce: `cargo xtask bench hostile`\n",
        l.median / q.median,
        peak_growth as f64 / 1024.0,
        peak_growth as f64 / (64.0 * 1024.0),
        if peak_growth <= 2 * 64 * 1024 {
            "met"
        } else {
            "missed"
        },
    )
}
