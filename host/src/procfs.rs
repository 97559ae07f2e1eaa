//! What this host runs, read from /proc: TCP sockets of this network namespace,
//! the processes that own them, their cgroup, unit and environment; and the
//! systemd unit files that start them. For `warden discover` and `warden doctor`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// One TCP socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    pub established: bool,
    pub uid: u32,
    pub inode: u64,
}

/// Every TCP socket of this network namespace (/proc/net/tcp and tcp6).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_tcp_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    Some(TcpSocket {
        local: parse_addr(f.get(1)?)?,
        remote: parse_addr(f.get(2)?)?,
        listening: state == 0x0a,
        established: state == 0x01,
        uid: f.get(7)?.parse().ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// `0100007F:2CAA` (IPv4) or 32 hex digits (IPv6): 32-bit words in host order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut o = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(o);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A process, as far as /proc tells.
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Relative to the cgroup2 root, without the leading `/`.
    pub cgroup: Option<String>,
    pub uid: Option<u32>,
}

impl Process {
    pub fn read(pid: u32) -> Option<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let cgroup = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(|p| p.trim_start_matches('/').to_owned())
            });
        let uid = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
            });
        Some(Self {
            pid,
            comm: comm.trim().to_owned(),
            exe: std::fs::read_link(dir.join("exe"))
                .ok()
                .map(|p| p.display().to_string()),
            cgroup,
            uid,
        })
    }

    /// The systemd unit the process runs in, from its cgroup (`ollama.service`).
    pub fn unit(&self) -> Option<String> {
        let cg = self.cgroup.as_deref()?;
        cg.split('/')
            .rev()
            .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
            .map(str::to_owned)
    }

    /// The process's environment (empty if it cannot be read).
    pub fn environ(&self) -> HashMap<String, String> {
        std::fs::read(format!("/proc/{}/environ", self.pid))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    }
}

/// Socket inode → owning pid, for every process (one pass over /proc/*/fd).
pub fn socket_owners() -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                {
                    owners.entry(inode).or_insert(pid);
                }
            }
        }
    }
    owners
}

/// Where systemd looks for system units, most important first.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// A unit's `[Service]` settings after its drop-ins: key → values in order
/// (an empty assignment resets a list, as systemd does).
#[derive(Debug, Default)]
pub struct UnitFile {
    pub files: Vec<PathBuf>,
    pub service: HashMap<String, Vec<String>>,
}

impl UnitFile {
    /// Reads `name` and its `name.d/*.conf` drop-ins from `dirs`; None if no
    /// unit file is found.
    pub fn load(name: &str, dirs: &[PathBuf]) -> Option<Self> {
        let main = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())?;
        let mut files = vec![main];
        let mut dropins: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d.join(format!("{name}.d"))).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        // Drop-ins apply in file-name order across directories.
        dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.extend(dropins);
        let mut unit = Self {
            files: Vec::new(),
            service: HashMap::new(),
        };
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                unit.apply(&text);
                unit.files.push(f);
            }
        }
        Some(unit)
    }

    fn apply(&mut self, text: &str) {
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            if !in_service || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let values = self.service.entry(k.trim().to_owned()).or_default();
                let v = v.trim();
                if v.is_empty() {
                    values.clear();
                } else {
                    values.push(v.to_owned());
                }
            }
        }
    }

    /// The last value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.service.get(key)?.last().map(String::as_str)
    }

    /// `Environment=` assignments, later ones winning.
    pub fn environment(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        for line in self.service.get("Environment").into_iter().flatten() {
            for item in line.split_whitespace() {
                let item = item.trim_matches('"');
                if let Some((k, v)) = item.split_once('=') {
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        env
    }
}

/// Whether `ip` is a loopback address (IPv4-mapped included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// `path`'s mode bits and owner (uid, gid).
pub fn mode_of(path: &Path) -> Option<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.mode() & 0o7777, m.uid(), m.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 12345 1 0000000000000000 100 0 0 10 0";
        let s = parse_tcp_line(v4).unwrap();
        assert_eq!(s.local, "127.0.0.1:11434".parse().unwrap());
        assert!(s.listening && !s.established);
        assert_eq!((s.uid, s.inode), (999, 12345));
        let v6 = "   1: 00000000000000000000000001000000:2CAA 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1";
        let s = parse_tcp_line(v6).unwrap();
        assert_eq!(s.local, "[::1]:11434".parse().unwrap());
        assert_eq!(s.remote.port(), 0xd431);
        assert!(s.established);
        // An IPv4-mapped peer is reported as IPv4.
        let mapped = "   2: 0000000000000000FFFF00000100000A:2CAA 0000000000000000FFFF00000200000A:9C40 01 0:0 0:0 0 0 0 5 1";
        let s = parse_tcp_line(mapped).unwrap();
        assert_eq!(s.remote, "10.0.0.2:40000".parse().unwrap());
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn unit_files_merge_drop_ins_and_reset_lists() {
        let mut u = UnitFile::default();
        u.apply("[Unit]\nDescription=x\n[Service]\nEnvironment=\"A=1\" B=2\nProtectSystem=full\n");
        u.apply("[Service]\nProtectSystem=strict\nEnvironment=A=3\n");
        assert_eq!(u.get("ProtectSystem"), Some("strict"));
        assert_eq!(u.environment()["A"], "3");
        assert_eq!(u.environment()["B"], "2");
        u.apply("[Service]\nEnvironment=\n");
        assert!(u.environment().is_empty());
        assert_eq!(u.get("Description"), None, "only [Service] keys");
    }
}
