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
    enter_with(cmd, netns, cgroup, None)
}

/// Like [`enter`], and with `resolv` seen as /etc/resolv.conf: bind-mounted
/// in a mount namespace of the process's own, so the host's file is untouched.
pub fn enter_with(
    cmd: &mut Command,
    netns: Option<&str>,
    cgroup: Option<&Path>,
    resolv: Option<&Path>,
) {
    let resolv = resolv.map(|r| std::ffi::CString::new(r.as_os_str().as_encoded_bytes()).unwrap());
    // SAFETY: the closure only makes raw syscalls (unshare, mount).
    unsafe {
        cmd.pre_exec(move || {
            let Some(src) = &resolv else { return Ok(()) };
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            let target = c"/etc/resolv.conf";
            if libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
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

/// `setpriv` arguments: `nobody`, no capabilities, the system's interpreter
/// (a per-user one, pyenv's, is root's only).
const UNPRIVILEGED: [&str; 6] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "/usr/bin/python3",
];

impl Prober {
    pub fn spawn(netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        Self::spawn_cmd(Command::new("python3"), netns, cgroup)
    }

    /// Like [`Prober::spawn`], running as `nobody` without capabilities
    /// (`setpriv`; the namespace and cgroup are joined before privileges go).
    pub fn spawn_unprivileged(netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        let mut cmd = Command::new("setpriv");
        cmd.args(UNPRIVILEGED);
        Self::spawn_cmd(cmd, netns, cgroup)
    }

    /// Like [`Prober::spawn_unprivileged`], with `resolv` as its
    /// /etc/resolv.conf (in a mount namespace of its own, set up before
    /// privileges go).
    pub fn spawn_unprivileged_with_resolver(
        netns: Option<&str>,
        cgroup: Option<&Path>,
        resolv: &Path,
    ) -> Self {
        let mut cmd = Command::new("setpriv");
        cmd.args(UNPRIVILEGED);
        Self::spawn_script(cmd, "probe.py", &[], netns, cgroup, Some(resolv))
    }

    /// The lab's DNS server (tests/helpers/dnsd.py) on `addr`, port 53.
    pub fn dns_server(netns: Option<&str>, addr: &str) -> Self {
        let mut p = Self::spawn_script(
            Command::new("python3"),
            "dnsd.py",
            &[addr],
            netns,
            None,
            None,
        );
        let mut ready = String::new();
        p.stdout.read_line(&mut ready).expect("dnsd stdout");
        assert_eq!(ready.trim(), "ready", "dnsd on {addr}");
        p
    }

    fn spawn_cmd(cmd: Command, netns: Option<&str>, cgroup: Option<&Path>) -> Self {
        Self::spawn_script(cmd, "probe.py", &[], netns, cgroup, None)
    }

    fn spawn_script(
        mut cmd: Command,
        script: &str,
        args: &[&str],
        netns: Option<&str>,
        cgroup: Option<&Path>,
        resolv: Option<&Path>,
    ) -> Self {
        cmd.arg("-u")
            .arg(crate::workspace().join("tests/helpers").join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        enter_with(&mut cmd, netns, cgroup, resolv);
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
