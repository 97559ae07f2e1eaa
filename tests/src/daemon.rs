//! A `warden daemon` run by the lab, with its event file.

use crate::{Lab, probe::enter, warden_bin};
use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Daemon options the lab sets unless a test passes its own value.
const LAB_DEFAULTS: &[(&str, &str)] = &[
    // Changes noticed fast (benchmarks pass production values).
    ("--rescan-secs", "0.2"),
    ("--loss-report-secs", "0.2"),
    // Denies counted one by one unless a test checks aggregation.
    ("--aggregate-secs", "0"),
    // Local connections reported at once unless a test joins them.
    ("--correlate-secs", "0"),
    // Records counted one by one unless a test checks the event budget.
    ("--kernel-event-rate", "0"),
    // The kernel record as it is; `events.rs` checks the encodings.
    ("--event-format", "raw"),
    // No resolver on this machine's loopback: the DNS tests start their
    // daemons in a namespace of their own, with a port.
    ("--dns-port", "0"),
];

pub struct Daemon {
    child: Option<Child>,
    pub events: PathBuf,
    pub stderr: PathBuf,
    run_dir: PathBuf,
}

impl Daemon {
    pub fn start(lab: &Lab, netns: Option<&str>, policy: &Path, extra: &[&str]) -> Self {
        Self::start_under(&[], lab, netns, policy, extra)
    }

    /// Like [`Daemon::start`], run through `prefix` (e.g. `setpriv` with a
    /// capability bounding set).
    pub fn start_under(
        prefix: &[&str],
        lab: &Lab,
        netns: Option<&str>,
        policy: &Path,
        extra: &[&str],
    ) -> Self {
        let n = std::fs::read_dir(&lab.run_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        // The event file: the lab's, unless `extra` names a `file://` sink
        // (which then replaces it); other sinks come in addition.
        let own_file = extra
            .windows(2)
            .find_map(|w| (w[0] == "--events").then(|| w[1].strip_prefix("file://"))?)
            .map(|spec| PathBuf::from(spec.split('?').next().unwrap()));
        let events = own_file
            .clone()
            .unwrap_or_else(|| lab.run_dir.join(format!("events-{n}.jsonl")));
        let stderr = lab.run_dir.join(format!("daemon-{n}.err"));
        let _ = std::fs::remove_file(lab.run_dir.join("state.json"));
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(warden_bin());
                c
            }
            None => Command::new(warden_bin()),
        };
        cmd.args(lab.dir_args())
            .arg("daemon")
            .arg("--policy")
            .arg(policy)
            .arg("--attach-cgroup")
            .arg(&lab.cgroup)
            // The lab's file is the first sink, before those `extra` adds.
            .args(
                own_file
                    .is_none()
                    .then(|| [OsString::from("--events"), events.clone().into()])
                    .into_iter()
                    .flatten(),
            )
            .args(
                LAB_DEFAULTS
                    .iter()
                    .filter(|(flag, _)| !extra.contains(flag))
                    .flat_map(|&(flag, value)| [flag, value]),
            )
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        enter(&mut cmd, netns, None);
        let child = cmd.spawn().expect("start warden daemon");
        let mut d = Self {
            child: Some(child),
            events,
            stderr,
            run_dir: lab.run_dir.clone(),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + crate::patience(Duration::from_secs(20));
        while Instant::now() < deadline {
            if self.run_dir.join("state.json").exists() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "warden daemon exited ({status}): {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "warden daemon not ready: {}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until an event matches `pred`; panics with the events seen otherwise.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_for(what, crate::patience(Duration::from_secs(5)), pred)
    }

    /// [`Daemon::wait_event`] with another time limit.
    pub fn wait_event_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event {what}; saw:\n{}",
                    std::fs::read_to_string(&self.events).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after that);
    /// true when it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(crate::patience(Duration::from_secs(3)));
    }
}
