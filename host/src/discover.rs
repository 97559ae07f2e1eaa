//! `warden discover`: what listens on the protected port and who talks to it,
//! printed as a starting policy with comments. It starts in audit mode: deploy
//! it, watch the `would_deny` events, then switch to enforce.

use crate::procfs::{self, Process, TcpSocket, is_loopback};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

/// The cgroups warden's own packaged units run in (the proxy and the daemon).
const WARDEN_CGROUPS: &[&str] = &[
    "system.slice/ollama-warden-proxy.service",
    "system.slice/ollama-warden.service",
];

/// What was found on the host about `port`.
#[derive(Debug, Default)]
pub struct Findings {
    pub port: u16,
    /// Listening sockets and their owners.
    pub listeners: Vec<(TcpSocket, Option<Process>)>,
    /// Established connections to the port from another host.
    pub remote_clients: BTreeMap<IpAddr, usize>,
    /// Local processes connected to the port: cgroup → comms.
    pub local_clients: BTreeMap<String, BTreeSet<String>>,
    /// Where the server's own processes are connected to (outbound).
    pub server_peers: BTreeSet<(IpAddr, u16)>,
    /// Host names known for peer addresses (what warden's resolver learned).
    pub peer_names: BTreeMap<IpAddr, String>,
}

pub fn inspect(port: u16) -> Findings {
    let sockets = procfs::tcp_sockets();
    let owners = procfs::socket_owners();
    let owner = |s: &TcpSocket| owners.get(&s.inode).and_then(|&pid| Process::read(pid));
    let mut f = Findings {
        port,
        ..Default::default()
    };
    for s in sockets
        .iter()
        .filter(|s| s.listening && s.local.port() == port)
    {
        f.listeners.push((s.clone(), owner(s)));
    }
    let server_pids: BTreeSet<u32> = f
        .listeners
        .iter()
        .filter_map(|(_, p)| p.as_ref().map(|p| p.pid))
        .collect();
    for s in sockets.iter().filter(|s| s.established) {
        if s.local.port() == port && !is_loopback(s.remote.ip()) {
            // Server side of a connection from elsewhere (a local client's own
            // connection to a local address shows up as its client side below).
            let is_local_peer = sockets
                .iter()
                .any(|o| o.established && o.local == s.remote && o.remote == s.local);
            if !is_local_peer {
                *f.remote_clients.entry(s.remote.ip()).or_default() += 1;
            }
        }
        if s.remote.port() == port {
            // Client side of a connection to the port: a local process.
            if let Some(p) = owner(s)
                && !server_pids.contains(&p.pid)
            {
                f.local_clients
                    .entry(p.cgroup.clone().unwrap_or_default())
                    .or_default()
                    .insert(p.comm.clone());
            }
        }
        if s.local.port() != port
            && owners
                .get(&s.inode)
                .is_some_and(|pid| server_pids.contains(pid))
            && !is_loopback(s.remote.ip())
        {
            f.server_peers.insert((s.remote.ip(), s.remote.port()));
        }
    }
    f
}

/// The starting policy, as TOML with comments.
pub fn render(f: &Findings) -> String {
    let mut s = String::new();
    let port = f.port;
    let _ = writeln!(
        s,
        "# Starting policy written by `warden discover` from what this host runs now.\n\
         # Review every line. It starts in audit mode: nothing is blocked, and what the\n\
         # policy would block is reported as `would_deny` events. When those are only\n\
         # what you expect, delete the `mode` line (or set \"enforce\") and reload.\n\
         version = 1\nmode = \"audit\"\n"
    );
    let mut servers: BTreeSet<String> = BTreeSet::new();
    let _ = writeln!(s, "[service]\nports = [{port}]");
    if f.listeners.is_empty() {
        let _ = writeln!(
            s,
            "# Nothing listens on {port} now; this names the unit Ollama's installer creates."
        );
        servers.insert("system.slice/ollama.service".into());
    }
    for (sock, p) in &f.listeners {
        match p {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "# {} listens on {} (pid {}, {}{})",
                    p.comm,
                    sock.local,
                    p.pid,
                    p.exe.as_deref().unwrap_or("?"),
                    p.unit().map(|u| format!(", unit {u}")).unwrap_or_default()
                );
                let env = p.environ();
                for key in ["OLLAMA_HOST", "OLLAMA_ORIGINS", "OLLAMA_MODELS"] {
                    if let Some(v) = env.get(key) {
                        let _ = writeln!(s, "#   {key}={v}");
                    }
                }
                if !is_loopback(sock.local.ip()) {
                    let _ = writeln!(
                        s,
                        "#   WARNING: not bound to loopback: reachable from the network unless\n\
                         #   [ingress] says otherwise; OLLAMA_HOST=127.0.0.1:{port} keeps it local."
                    );
                }
                if let Some(cg) = &p.cgroup {
                    servers.insert(cg.clone());
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "# something listens on {} (owner not visible)",
                    sock.local
                );
            }
        }
    }
    let _ = writeln!(s, "server_cgroups = {}\n", toml_list(&servers));

    let _ = writeln!(s, "[ingress]\ninterfaces = [\"*\"]");
    if f.remote_clients.is_empty() {
        let _ = writeln!(
            s,
            "# No remote clients are connected now: only this host may reach {port}."
        );
    } else {
        let _ = writeln!(s, "# Remote clients connected now (connections):");
        for (ip, n) in &f.remote_clients {
            let _ = writeln!(s, "#   {ip} ({n})");
        }
    }
    let remote: BTreeSet<String> = f.remote_clients.keys().map(IpAddr::to_string).collect();
    let _ = writeln!(s, "allow = {}\n", toml_list(&remote));

    let _ = writeln!(s, "[local]");
    let mut local: BTreeSet<String> = WARDEN_CGROUPS.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(
        s,
        "# ollama-warden's proxy and daemon, and the local clients connected now:"
    );
    for (cg, comms) in &f.local_clients {
        if cg.is_empty()
            || servers
                .iter()
                .any(|srv| cg == srv || cg.starts_with(&format!("{srv}/")))
        {
            continue;
        }
        let names: Vec<&str> = comms.iter().map(String::as_str).collect();
        let _ = writeln!(s, "#   {cg}: {}", names.join(", "));
        local.insert(cg.clone());
    }
    let _ = writeln!(s, "allow_cgroups = {}", toml_list(&local));

    if let Some(server) = servers.iter().next() {
        let _ = writeln!(
            s,
            "\n# Egress: uncomment to allow the server only these destinations (it pulls\n\
             # models from registry.ollama.ai over HTTPS, blobs from Cloudflare R2).\n\
             # [[egress]]\n# cgroup = \"{server}\"\n# allow = [\n\
             #   {{ net = \"127.0.0.0/8\", proto = \"tcp\" }},   # its runners, on loopback\n\
             #   {{ host = \"registry.ollama.ai\", ports = [443], proto = \"tcp\" }},\n\
             #   {{ host = \"*.r2.cloudflarestorage.com\", ports = [443], proto = \"tcp\" }},"
        );
        if !f.server_peers.is_empty() {
            let _ = writeln!(s, "#   # where it is connected now:");
        }
        let mut named = BTreeSet::from([("registry.ollama.ai".to_owned(), 443)]);
        for (ip, p) in &f.server_peers {
            let line = match f.peer_names.get(ip) {
                Some(name) if named.insert((name.clone(), *p)) => {
                    format!("{{ host = \"{name}\", ports = [{p}], proto = \"tcp\" }},   # {ip}")
                }
                Some(_) => continue,
                None => format!("{{ net = \"{ip}\", ports = [{p}], proto = \"tcp\" }},"),
            };
            let _ = writeln!(s, "#   {line}");
        }
        let _ = writeln!(s, "# ]");
    }
    s
}

fn toml_list(items: &BTreeSet<String>) -> String {
    if items.is_empty() {
        return "[]".into();
    }
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    if quoted.iter().map(String::len).sum::<usize>() < 60 {
        return format!("[{}]", quoted.join(", "));
    }
    format!("[\n    {},\n]", quoted.join(",\n    "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn rendered_policy_is_valid_and_audits() {
        let mut f = Findings {
            port: 11434,
            ..Default::default()
        };
        f.remote_clients.insert("10.0.0.7".parse().unwrap(), 2);
        f.local_clients
            .entry("user.slice/user-1000.slice/session-3.scope".into())
            .or_default()
            .insert("curl".into());
        f.server_peers.insert(("104.21.0.1".parse().unwrap(), 443));
        let text = render(&f);
        let p = warden_policy::parse_str(Path::new("discover.toml"), &text)
            .unwrap_or_else(|d| panic!("{d:?}\n{text}"));
        assert_eq!(p.ingress.mode, warden_policy::Mode::Audit);
        assert_eq!(p.ingress_allow_for(11434), ["10.0.0.7/32".parse().unwrap()]);
        assert_eq!(
            p.server_cgroups[0].value.as_str(),
            "system.slice/ollama.service"
        );
        assert!(
            p.local_allow
                .iter()
                .any(|c| c.value.as_str() == "user.slice/user-1000.slice/session-3.scope")
        );
        assert!(text.contains("#   { net = \"104.21.0.1\", ports = [443], proto = \"tcp\" },"));
    }

    #[test]
    fn peers_with_a_learned_name_become_host_rules_and_the_egress_block_is_valid() {
        let mut f = Findings {
            port: 11434,
            ..Default::default()
        };
        for ip in ["104.21.0.1", "104.21.0.2", "104.21.0.3", "10.9.9.9"] {
            f.server_peers.insert((ip.parse().unwrap(), 443));
        }
        for ip in ["104.21.0.1", "104.21.0.2"] {
            f.peer_names
                .insert(ip.parse().unwrap(), "mirror.example.com".into());
        }
        f.peer_names
            .insert("104.21.0.3".parse().unwrap(), "registry.ollama.ai".into());
        let text = render(&f);
        let once =
            "#   { host = \"mirror.example.com\", ports = [443], proto = \"tcp\" },   # 104.21.0.1";
        assert!(text.contains(once), "{text}");
        assert!(
            !text.contains("# 104.21.0.2"),
            "one rule per name and port: {text}"
        );
        assert!(!text.contains("# 104.21.0.3"), "suggested already: {text}");
        assert!(text.contains("#   { net = \"10.9.9.9\", ports = [443], proto = \"tcp\" },"));
        // The operator's next step: uncomment the egress block.
        let start = text.find("# [[egress]]").unwrap();
        let (head, tail) = text.split_at(start);
        let uncommented: String = tail
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let whole = format!("{head}{uncommented}\n");
        let p = warden_policy::parse_str(Path::new("discover.toml"), &whole)
            .unwrap_or_else(|d| panic!("{d:?}\n{whole}"));
        let hosts: Vec<String> = p.egress[0]
            .hosts
            .iter()
            .map(|h| h.host.to_string())
            .collect();
        assert_eq!(
            hosts,
            [
                "registry.ollama.ai",
                "*.r2.cloudflarestorage.com",
                "mirror.example.com"
            ]
        );
    }
}
