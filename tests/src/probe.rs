//! A prober process inside a (network namespace, cgroup), driven line by line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Prober {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Runs `cmd` with its network namespace and cgroup switched before exec.
pub fn enter(cmd: &mut Command, netns: Option<&str>, cgroup: Option<&Path>) {
    let ns_fd = netns.map(|n| {
        std::fs::File::open(format!("/var/run/netns/{n}"))
            .unwrap_or_else(|e| panic!("netns {n}: {e}"))
    });
    let procs = cgroup.map(|c| {
        std::ffi::CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
            .unwrap()
    });
    // SAFETY: the closure only makes raw syscalls (setns, open, write, close).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &ns_fd {
                use std::os::fd::AsRawFd;
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl Prober {
    pub fn spawn(netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        Self::spawn_cmd(Command::new("python3"), netns, cgroup)
    }

    /// Like [`Prober::spawn`], running as `nobody` without capabilities
    /// (`setpriv`; the namespace and cgroup are joined before privileges go).
    pub fn spawn_unprivileged(netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            // The system's interpreter: a per-user one (pyenv) is root's only.
            "/usr/bin/python3",
        ]);
        Self::spawn_cmd(cmd, netns, cgroup)
    }

    fn spawn_cmd(mut cmd: Command, netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        cmd.arg("-u")
            .arg(crate::workspace().join("tests/helpers/probe.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        enter(&mut cmd, netns, cgroup);
        let mut child = cmd.spawn().expect("start prober");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command, returns the one-word answer.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("prober stdin");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("prober stdout");
        answer.trim().to_owned()
    }

    pub fn connect(&mut self, host: &str, port: u16) -> String {
        self.ask(&format!("connect {host} {port} 0.5"))
    }

    pub fn pid(&mut self) -> u32 {
        self.ask("pid").parse().unwrap()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
