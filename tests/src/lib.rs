//! The privileged test lab: network namespaces, veth links, cgroups, a bpffs pin
//! directory and a running `warden daemon`, all owned by one [`Lab`] and removed
//! when it drops — also when the test panics.
//!
//! Names carry the process id and a counter, so tests run in parallel. The cgroup
//! programs attach at the lab's own cgroup, so a test only ever affects processes
//! it started inside that cgroup; XDP attaches inside the lab's namespaces.
//! Addresses are used only inside the lab's namespaces.

mod daemon;
mod probe;
pub mod proxy;

pub use daemon::Daemon;
pub use probe::{Prober, enter};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `d` scaled by `WARDEN_TEST_PATIENCE` (a factor, default 1): emulated guests
/// (`cargo xtask vm`) verify and run everything several times slower. Only
/// waits for something that must happen scale; a verdict never depends on it.
pub fn patience(d: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var("WARDEN_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(1.0)
        .max(1.0);
    d.mul_f64(factor)
}

fn warden_path() -> PathBuf {
    std::env::var_os("WARDEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/warden"))
}

/// The `warden` binary under test (`WARDEN_BIN`, else the workspace's debug build).
pub fn warden_bin() -> PathBuf {
    let p = warden_path();
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p warden` (cargo xtask test does)",
        p.display()
    );
    p
}

/// The cgroup2 mount, from mountinfo (hybrid hosts mount it below /sys/fs/cgroup).
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("cgroup2 is mounted")
}

/// A `/proc/PID/status` field in kB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The cgroup id of a cgroup2 directory (its inode number), as events carry it.
pub fn cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).expect("cgroup exists").ino()
}

/// A minisign key pair without a password, `DIR/NAME.pub` and `DIR/NAME.key`:
/// (public, secret) paths.
pub fn keypair(dir: &Path, name: &str) -> (String, String) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    sh(&format!(
        "minisign -G -W -f -p {} -s {} >/dev/null",
        public.display(),
        secret.display()
    ));
    (public.display().to_string(), secret.display().to_string())
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Lab {
    /// Short unique id, e.g. `w1234x3`.
    pub id: String,
    /// The lab's cgroup (absolute path); cgroup programs attach here.
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The nftables table the lab's daemon owns (never the host's default name).
    pub nft_table: String,
    netns: Vec<String>,
}

impl Lab {
    pub fn new() -> Self {
        let id = format!(
            "w{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let cgroup = cgroup2_root().join(format!("warden-test-{id}"));
        std::fs::create_dir_all(&cgroup).expect("create lab cgroup");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/warden-test-{id}"));
        let run_dir = std::env::temp_dir().join(format!("warden-test-{id}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        Self {
            nft_table: format!("warden_test_{id}"),
            id,
            cgroup,
            pin_dir,
            run_dir,
            netns: Vec::new(),
        }
    }

    /// Creates (if needed) a cgroup below the lab's; returns its path relative to
    /// the cgroup2 root, as a policy names it.
    pub fn cgroup(&self, name: &str) -> String {
        std::fs::create_dir_all(self.cgroup.join(name)).expect("create cgroup");
        self.cgroup_rel(name)
    }

    pub fn cgroup_rel(&self, name: &str) -> String {
        self.cgroup
            .join(name)
            .strip_prefix(cgroup2_root())
            .unwrap()
            .display()
            .to_string()
    }

    /// A new network namespace with loopback up; returns its name.
    pub fn netns(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.id);
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        self.netns.push(name.clone());
        name
    }

    /// A veth pair between two namespaces with the given `addr/len` lists
    /// (IPv4 and IPv6, used only inside these namespaces).
    pub fn veth(&self, a: &str, a_addrs: &[&str], b: &str, b_addrs: &[&str]) -> (String, String) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let (ia, ib) = (format!("va{n}"), format!("vb{n}"));
        sh(&format!(
            "ip link add {ia} netns {a} type veth peer name {ib} netns {b}"
        ));
        for (ns, ifc, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
            for addr in addrs {
                sh(&format!("ip -n {ns} addr add {addr} dev {ifc} nodad"));
            }
            sh(&format!("ip -n {ns} link set {ifc} up"));
        }
        (ia, ib)
    }

    /// Starts a prober in `netns` (None = the test's own) and lab cgroup `cgroup`
    /// (None = stay in the test's cgroup, outside the lab's cgroup programs).
    pub fn prober(&self, netns: Option<&str>, cgroup: Option<&str>) -> Prober {
        let cg = cgroup.map(|c| {
            std::fs::create_dir_all(self.cgroup.join(c)).unwrap();
            self.cgroup.join(c)
        });
        Prober::spawn(netns, cg.as_deref())
    }

    /// Like [`Lab::attacker`], with the C library's resolver asking `nameserver`.
    pub fn attacker_with_resolver(
        &self,
        netns: Option<&str>,
        cgroup: &str,
        nameserver: &str,
    ) -> Prober {
        std::fs::create_dir_all(self.cgroup.join(cgroup)).unwrap();
        let resolv = self.run_dir.join(format!("resolv-{nameserver}.conf"));
        std::fs::write(
            &resolv,
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        Prober::spawn_unprivileged_with_resolver(netns, Some(&self.cgroup.join(cgroup)), &resolv)
    }

    /// The lab's DNS server on `addr` port 53 in `netns` (tests/helpers/dnsd.py).
    pub fn dns_server(&self, netns: &str, addr: &str) -> Prober {
        Prober::dns_server(Some(netns), addr)
    }

    /// Like [`Lab::prober`], as `nobody` with no capabilities: the attacker the
    /// kernel programs must hold without help from permissions.
    pub fn attacker(&self, netns: Option<&str>, cgroup: &str) -> Prober {
        std::fs::create_dir_all(self.cgroup.join(cgroup)).unwrap();
        Prober::spawn_unprivileged(netns, Some(&self.cgroup.join(cgroup)))
    }

    /// Writes a policy file into the run directory.
    pub fn policy(&self, name: &str, text: &str) -> PathBuf {
        let p = self.run_dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts `warden daemon` in `netns` with the lab's pin dir and cgroup.
    pub fn daemon(&self, netns: Option<&str>, policy: &Path) -> Daemon {
        Daemon::start(self, netns, policy, &[])
    }

    /// Like [`Lab::daemon`], with extra `warden daemon` arguments (e.g. the backend).
    pub fn daemon_with(&self, netns: Option<&str>, policy: &Path, extra: &[&str]) -> Daemon {
        Daemon::start(self, netns, policy, extra)
    }

    /// `warden status --json` for this lab.
    pub fn status(&self) -> serde_json::Value {
        let out = self.warden(&["status", "--json"]);
        serde_json::from_str(&out).expect("status JSON")
    }

    /// Runs warden with the lab's directories; returns stdout.
    /// `warden`'s global options naming the lab's pin dir, run dir and nft table.
    pub fn dir_args(&self) -> Vec<&std::ffi::OsStr> {
        vec![
            "--pin-dir".as_ref(),
            self.pin_dir.as_os_str(),
            "--run-dir".as_ref(),
            self.run_dir.as_os_str(),
            "--nft-table".as_ref(),
            self.nft_table.as_ref(),
        ]
    }

    pub fn warden(&self, args: &[&str]) -> String {
        self.warden_in(None, args)
    }

    /// Like [`Lab::warden`], in network namespace `netns` (nftables state is
    /// per namespace).
    pub fn warden_in(&self, netns: Option<&str>, args: &[&str]) -> String {
        let mut cmd = Command::new(warden_bin());
        cmd.args(self.dir_args()).args(args);
        enter(&mut cmd, netns, None);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "warden {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Programs attached at the lab cgroup, as `bpftool cgroup show` lists them.
    pub fn cgroup_programs(&self) -> Vec<String> {
        let out = sh(&format!("bpftool -j cgroup show {}", self.cgroup.display()));
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["attach_type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Unpin (detaches the programs), then kill what is left in the cgroups.
        // Never panic here: a panic while unwinding aborts and skips the cleanup.
        let _ = Command::new(warden_path())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--nft-table")
            .arg(&self.nft_table)
            .arg("down")
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        remove_cgroup_tree(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Kills every process in a cgroup tree and removes it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..250 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: plain kill(2) of a process the lab started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A killed process leaves the cgroup a moment after it is reaped.
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The generation the lab's daemon last wrote to its state file (0 if none).
pub fn state_generation(lab: &Lab) -> u32 {
    std::fs::read(lab.run_dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0) as u32
}

/// A server namespace with two client namespaces: one whose addresses policies
/// allow, one they do not.
pub struct Topology {
    pub lab: Lab,
    pub srv: String,
    pub good: String,
    pub bad: String,
}

/// srv ←veth→ good (10.88.1.2, fd00:88:1::2), srv ←veth→ bad (10.88.2.2, fd00:88:2::2).
pub fn topology() -> Topology {
    let mut lab = Lab::new();
    let srv = lab.netns("srv");
    let good = lab.netns("good");
    let bad = lab.netns("bad");
    lab.veth(
        &srv,
        &["10.88.1.1/24", "fd00:88:1::1/64"],
        &good,
        &["10.88.1.2/24", "fd00:88:1::2/64"],
    );
    lab.veth(
        &srv,
        &["10.88.2.1/24", "fd00:88:2::1/64"],
        &bad,
        &["10.88.2.2/24", "fd00:88:2::2/64"],
    );
    Topology {
        lab,
        srv,
        good,
        bad,
    }
}

/// OCSF records (one verdict line per record: `ok CLASS` or `invalid: ...`).
pub fn validate_ocsf(events: &[serde_json::Value]) -> Vec<String> {
    validate(
        &[workspace().join("tests/helpers/validate_ocsf.py")],
        events,
    )
}

/// Against the published ECS 8.11 field definitions (fetched by `cargo xtask setup`).
pub fn validate_ecs(events: &[serde_json::Value]) -> Vec<String> {
    let fields = workspace().join("target/ecs/ecs_flat.json");
    assert!(
        fields.exists(),
        "{} missing: run `cargo xtask setup`",
        fields.display()
    );
    validate(
        &[
            workspace().join("tests/helpers/validate_ecs.py"),
            fields,
            "ollama_warden".into(),
        ],
        events,
    )
}

fn validate(args: &[std::path::PathBuf], events: &[serde_json::Value]) -> Vec<String> {
    let python = workspace().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup`",
        python.display()
    );
    let mut child = Command::new(python)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for e in events {
        writeln!(stdin, "{e}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // A validator that died, or judged fewer lines than it was given, proves
    // nothing about the rest: every caller gets one verdict per event or fails.
    assert!(out.status.success(), "{args:?} failed ({})", out.status);
    assert!(!events.is_empty(), "nothing to validate");
    assert_eq!(
        verdicts.len(),
        events.len(),
        "{args:?} judged {} of {} events: {verdicts:?}",
        verdicts.len(),
        events.len()
    );
    verdicts
}
