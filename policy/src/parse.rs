//! One policy file: TOML text to a [`Fragment`], reporting every problem found.
//!
//! Checks here need only the file itself (syntax, keys, types, values). Checks that need
//! every file at once (conflicts, `ingress.port` naming a protected port, "no protected
//! ports") are in [`crate::merge`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use toml_edit::{Array, ImDocument, TomlError, Value};

use crate::cgroup::CgroupPath;
use crate::diagnostic::{Diagnostic, Origin};
use crate::host::HostPattern;
use crate::merge::{EgressDecl, Fragment, ListDecl, PerPortDecl};
use crate::model::{EgressPolicy, EgressRule, HostRule, Located, Mode};
use crate::net::{is_loopback, parse_net};
use crate::ports::{PortRange, Proto, parse_port_range, port_from_int};
use crate::walk::{Entry, FileCtx, TableRef, array_of_tables, type_name};

/// The only policy format this crate reads.
pub const POLICY_VERSION: i64 = 1;

const TOP_KEYS: &[&str] = &[
    "version", "service", "ingress", "local", "egress", "remote", "mode",
];
const REMOTE_KEYS: &[&str] = &["cgroups", "to"];
const SERVICE_KEYS: &[&str] = &["ports", "server_cgroups"];
const INGRESS_KEYS: &[&str] = &["interfaces", "allow", "port", "mode"];
const INGRESS_PORT_KEYS: &[&str] = &["port", "allow"];
const LOCAL_KEYS: &[&str] = &["allow_cgroups", "mode"];
const EGRESS_KEYS: &[&str] = &["cgroup", "allow", "mode"];
const EGRESS_RULE_KEYS: &[&str] = &["net", "host", "ports", "proto"];

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME_BYTES: usize = 15;

/// Parses and checks one file. Always returns a fragment (possibly partial) so that
/// merging can still report cross-file problems next to this file's own.
pub(crate) fn parse_file(file: Arc<Path>, text: &str) -> (Fragment, Vec<Diagnostic>) {
    let mut ctx = FileCtx::new(file.clone(), text);
    let mut frag = Fragment::empty(file);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            ctx.error(e.span(), syntax_message(&e));
            frag.complete = false;
            return (frag, ctx.diagnostics);
        }
    };
    let root = TableRef::Table(doc.as_table());
    if !check_version(&mut ctx, root) {
        frag.complete = false;
        return (frag, ctx.diagnostics);
    }
    root.check_keys(&mut ctx, TOP_KEYS, "at top level");
    if let Some(entry) = root.get("mode") {
        frag.mode = Some(mode(&mut ctx, entry, "mode"));
    }
    if let Some(entry) = root.get("service") {
        service(&mut ctx, &mut frag, entry);
    }
    if let Some(entry) = root.get("ingress") {
        ingress(&mut ctx, &mut frag, entry);
    }
    if let Some(entry) = root.get("local") {
        local(&mut ctx, &mut frag, entry);
    }
    if let Some(entry) = root.get("remote") {
        remote(&mut ctx, &mut frag, entry);
    }
    if let Some(entry) = root.get("egress") {
        egress(&mut ctx, &mut frag, entry);
    }
    (frag, ctx.diagnostics)
}

fn syntax_message(e: &TomlError) -> String {
    let lines: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("TOML syntax error: {}", lines.join("; "))
}

/// False if the file declares a version this crate cannot read: the rest would be
/// checked against the wrong schema, so it is not checked at all.
fn check_version(ctx: &mut FileCtx<'_>, root: TableRef<'_>) -> bool {
    let Some(entry) = root.get("version") else {
        ctx.error(
            None,
            "missing `version = 1`: every policy file must say which policy format it uses",
        );
        return true;
    };
    match entry.value() {
        Some(Value::Integer(v)) if *v.value() == POLICY_VERSION => true,
        Some(Value::Integer(v)) => {
            ctx.error(
                entry.span(),
                format!(
                    "unsupported policy version {}; this warden reads version {POLICY_VERSION} \
                     (the rest of this file was not checked)",
                    v.value()
                ),
            );
            false
        }
        _ => {
            let found = type_name(entry.item);
            ctx.error(
                entry.span(),
                format!("`version` must be the integer 1, found {found}"),
            );
            true
        }
    }
}

fn table<'a>(ctx: &mut FileCtx<'_>, entry: Entry<'a>, header: &str) -> Option<TableRef<'a>> {
    let t = TableRef::from_item(entry.item);
    if t.is_none() {
        let (name, found) = (entry.key.get(), type_name(entry.item));
        ctx.error(
            entry.span(),
            format!("`{name}` must be a table ({header}), found {found}"),
        );
    }
    t
}

fn array<'a>(ctx: &mut FileCtx<'_>, entry: Entry<'a>, what: &str, of: &str) -> Option<&'a Array> {
    let a = entry.value().and_then(Value::as_array);
    if a.is_none() {
        let found = type_name(entry.item);
        ctx.error(
            entry.span(),
            format!("`{what}` must be an array of {of}, found {found}"),
        );
    }
    a
}

fn string<'a>(ctx: &mut FileCtx<'_>, entry: Entry<'a>, what: &str) -> Option<&'a str> {
    let s = entry.value().and_then(Value::as_str);
    if s.is_none() {
        let found = type_name(entry.item);
        ctx.error(
            entry.span(),
            format!("`{what}` must be a string, found {found}"),
        );
    }
    s
}

/// A `mode` key: `"enforce"` or `"audit"`, as a one-value [`ListDecl`] so that
/// files can be checked to agree.
fn mode(ctx: &mut FileCtx<'_>, entry: Entry<'_>, what: &str) -> ListDecl<Mode> {
    let origin = ctx.origin(entry.span());
    let value = match string(ctx, entry, what) {
        Some("enforce") => Some(Mode::Enforce),
        Some("audit") => Some(Mode::Audit),
        Some(other) => {
            ctx.error(
                entry.span(),
                format!("`{what}` must be \"enforce\" or \"audit\", found {other:?}"),
            );
            None
        }
        None => None,
    };
    ListDecl {
        valid: value.is_some(),
        values: value.into_iter().collect(),
        origin,
    }
}

fn service(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(t) = table(ctx, entry, "[service]") else {
        return;
    };
    t.check_keys(ctx, SERVICE_KEYS, "in [service]");
    if let Some(entry) = t.get("ports") {
        frag.ports = Some(service_ports(ctx, entry));
    }
    if let Some(entry) = t.get("server_cgroups") {
        frag.server_cgroups = Some(cgroup_list(ctx, entry, "service.server_cgroups"));
    }
}

fn service_ports(ctx: &mut FileCtx<'_>, entry: Entry<'_>) -> ListDecl<u16> {
    let origin = ctx.origin(entry.span());
    let mut decl = ListDecl {
        values: Vec::new(),
        valid: true,
        origin,
    };
    let Some(arr) = array(ctx, entry, "service.ports", "port numbers") else {
        decl.valid = false;
        return decl;
    };
    if arr.is_empty() {
        ctx.error(
            entry.span(),
            "service.ports is empty; list at least one protected port",
        );
        decl.valid = false;
    }
    // Sets, not scans: a hostile file with a huge list must not make a reload quadratic.
    let mut seen: HashMap<u16, Origin> = HashMap::new();
    for v in arr.iter() {
        let port = match v {
            Value::Integer(i) => port_from_int(*i.value()).map_err(|e| (e.to_string(), true)),
            other => Err((
                format!(
                    "`service.ports` entries must be port numbers, found {}",
                    other.type_name()
                ),
                false,
            )),
        };
        match port {
            Ok(p) => match seen.get(&p) {
                Some(first) => {
                    let msg =
                        format!("duplicate port {p} in service.ports (first listed at {first})");
                    ctx.error(v.span(), msg);
                }
                None => {
                    seen.insert(p, ctx.origin(v.span()));
                }
            },
            // An out-of-range number is certainly not a protected port, so the others
            // still describe the set; a value of the wrong type might have meant any port.
            Err((msg, known)) => {
                ctx.error(v.span(), msg);
                decl.valid &= known;
            }
        }
    }
    decl.values = seen.into_keys().collect();
    decl.values.sort_unstable();
    decl
}

fn cgroup_list(ctx: &mut FileCtx<'_>, entry: Entry<'_>, what: &str) -> Vec<Located<CgroupPath>> {
    let Some(arr) = array(ctx, entry, what, "cgroup paths") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in arr.iter() {
        let Some(raw) = v.as_str() else {
            let msg = format!("`{what}` entries must be strings, found {}", v.type_name());
            ctx.error(v.span(), msg);
            continue;
        };
        match CgroupPath::new(raw) {
            Ok(c) => out.push(Located::new(c, ctx.origin(v.span()))),
            Err(e) => ctx.error(v.span(), e.to_string()),
        }
    }
    out
}

fn ingress(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(t) = table(ctx, entry, "[ingress]") else {
        return;
    };
    t.check_keys(ctx, INGRESS_KEYS, "in [ingress]");
    if let Some(entry) = t.get("mode") {
        frag.ingress_mode = Some(mode(ctx, entry, "ingress.mode"));
    }
    if let Some(entry) = t.get("interfaces") {
        frag.interfaces = Some(interfaces(ctx, entry));
    }
    if let Some(entry) = t.get("allow") {
        frag.ingress_allow = net_list(ctx, entry, "ingress.allow");
    }
    if let Some(entry) = t.get("port") {
        ingress_ports(ctx, frag, entry);
    }
}

fn interfaces(ctx: &mut FileCtx<'_>, entry: Entry<'_>) -> ListDecl<String> {
    let origin = ctx.origin(entry.span());
    let mut decl = ListDecl {
        values: Vec::new(),
        valid: true,
        origin,
    };
    let Some(arr) = array(ctx, entry, "ingress.interfaces", "interface names") else {
        decl.valid = false;
        return decl;
    };
    if arr.is_empty() {
        ctx.error(
            entry.span(),
            "ingress.interfaces is empty: ingress would be enforced nowhere; \
             write [\"*\"] for every non-loopback interface",
        );
        decl.valid = false;
    }
    let mut star = None;
    let mut seen = HashSet::new();
    for v in arr.iter() {
        let Some(name) = v.as_str() else {
            let msg = format!(
                "`ingress.interfaces` entries must be strings, found {}",
                v.type_name()
            );
            ctx.error(v.span(), msg);
            decl.valid = false;
            continue;
        };
        if name == "*" {
            star = star.or(v.span());
        } else if let Err(why) = check_interface_name(name) {
            ctx.error(v.span(), format!("invalid interface name {name:?}: {why}"));
            decl.valid = false;
            continue;
        }
        if !seen.insert(name) {
            ctx.error(
                v.span(),
                format!("duplicate interface `{name}` in ingress.interfaces"),
            );
            continue;
        }
        decl.values.push(name.to_owned());
    }
    if star.is_some() && decl.values.len() > 1 {
        ctx.error(
            star,
            "`*` already means every non-loopback interface; do not list interface names with it",
        );
        decl.valid = false;
    }
    decl.values.sort();
    decl
}

/// Linux's rules for interface names (`dev_valid_name`), plus no loopback.
fn check_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_IFNAME_BYTES {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("not a name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("must not contain `/`, `:`, whitespace or control characters");
    }
    if name == "lo" {
        return Err(
            "loopback is not filtered by ingress; local clients are allowed by cgroup in [local] allow_cgroups",
        );
    }
    Ok(())
}

fn net_list(ctx: &mut FileCtx<'_>, entry: Entry<'_>, what: &str) -> Vec<Located<IpNet>> {
    let Some(arr) = array(ctx, entry, what, "CIDRs or addresses") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in arr.iter() {
        let Some(raw) = v.as_str() else {
            let msg = format!("`{what}` entries must be strings, found {}", v.type_name());
            ctx.error(v.span(), msg);
            continue;
        };
        match parse_net(raw) {
            Ok(net) if is_loopback(&net) => ctx.error(
                v.span(),
                format!(
                    "`{raw}` is a loopback source: ingress filters packets arriving from the \
                     network, where a loopback source is spoofed; allow local clients by cgroup \
                     in [local] allow_cgroups"
                ),
            ),
            Ok(net) => out.push(Located::new(net, ctx.origin(v.span()))),
            Err(e) => ctx.error(v.span(), e.to_string()),
        }
    }
    out
}

fn ingress_ports(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(blocks) = array_of_tables(entry.item) else {
        let found = type_name(entry.item);
        let msg =
            format!("`ingress.port` must be an array of tables ([[ingress.port]]), found {found}");
        ctx.error(entry.span(), msg);
        return;
    };
    for block in blocks {
        let t = match block {
            Ok(t) => t,
            Err(v) => {
                let msg = format!(
                    "`ingress.port` entries must be tables, found {}",
                    v.type_name()
                );
                ctx.error(v.span(), msg);
                continue;
            }
        };
        t.check_keys(ctx, INGRESS_PORT_KEYS, "in [[ingress.port]]");
        let block = ctx.origin(t.span());
        let port = match t.get("port") {
            None => {
                ctx.error_at(block.clone(), "[[ingress.port]] is missing `port`");
                None
            }
            Some(e) => match e.value() {
                Some(Value::Integer(i)) => match port_from_int(*i.value()) {
                    Ok(p) => Some(Located::new(p, ctx.origin(e.span()))),
                    Err(err) => {
                        ctx.error(e.span(), err.to_string());
                        None
                    }
                },
                _ => {
                    let found = type_name(e.item);
                    ctx.error(
                        e.span(),
                        format!("`ingress.port.port` must be a port number, found {found}"),
                    );
                    None
                }
            },
        };
        let allow = match t.get("allow") {
            None => {
                ctx.error_at(block.clone(), "[[ingress.port]] is missing `allow`");
                Vec::new()
            }
            Some(e) => net_list(ctx, e, "ingress.port.allow"),
        };
        if let Some(port) = port {
            frag.per_port.push(PerPortDecl { port, block, allow });
        }
    }
}

fn local(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(t) = table(ctx, entry, "[local]") else {
        return;
    };
    t.check_keys(ctx, LOCAL_KEYS, "in [local]");
    if let Some(entry) = t.get("mode") {
        frag.local_mode = Some(mode(ctx, entry, "local.mode"));
    }
    if let Some(entry) = t.get("allow_cgroups") {
        frag.local_allow = cgroup_list(ctx, entry, "local.allow_cgroups");
    }
}

/// `[[remote]]`: cgroups that may reach the protected ports on other hosts.
/// A network that covers this host's loopback or the unspecified address
/// (`0.0.0.0/0`, `::/0`) is an error: remote networks are named, never "any".
fn remote(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(blocks) = array_of_tables(entry.item) else {
        let found = type_name(entry.item);
        ctx.error(
            entry.span(),
            format!("`remote` must be an array of tables ([[remote]]), found {found}"),
        );
        return;
    };
    for block in blocks {
        let t = match block {
            Ok(t) => t,
            Err(v) => {
                let msg = format!("`remote` entries must be tables, found {}", v.type_name());
                ctx.error(v.span(), msg);
                continue;
            }
        };
        t.check_keys(ctx, REMOTE_KEYS, "in [[remote]]");
        let origin = ctx.origin(t.span());
        let errors_before = ctx.diagnostics.len();
        let cgroups = match t.get("cgroups") {
            Some(e) => cgroup_list(ctx, e, "remote.cgroups"),
            None => {
                ctx.error_at(origin.clone(), "[[remote]] is missing `cgroups`");
                Vec::new()
            }
        };
        let to = match t.get("to") {
            Some(e) => remote_nets(ctx, e),
            None => {
                ctx.error_at(origin.clone(), "[[remote]] is missing `to`");
                Vec::new()
            }
        };
        if ctx.diagnostics.len() == errors_before {
            frag.remote.push(crate::model::RemoteAccess {
                cgroups,
                to,
                origin,
            });
        }
    }
}

fn remote_nets(ctx: &mut FileCtx<'_>, entry: Entry<'_>) -> Vec<Located<IpNet>> {
    let Some(arr) = array(ctx, entry, "remote.to", "CIDRs or addresses") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in arr.iter() {
        let Some(raw) = v.as_str() else {
            let msg = format!(
                "`remote.to` entries must be strings, found {}",
                v.type_name()
            );
            ctx.error(v.span(), msg);
            continue;
        };
        match parse_net(raw) {
            Ok(net) if covers_this_host(&net) => ctx.error(
                v.span(),
                format!(
                    "`{raw}` covers this host (loopback or the unspecified address): name the \
                     remote hosts' networks; this host's own port is [local]'s business"
                ),
            ),
            Ok(net) => out.push(Located::new(net, ctx.origin(v.span()))),
            Err(e) => ctx.error(v.span(), e.to_string()),
        }
    }
    out
}

/// Whether `net` holds an address that is always this host.
fn covers_this_host(net: &IpNet) -> bool {
    use std::net::{Ipv4Addr, Ipv6Addr};
    [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ]
    .iter()
    .any(|a| net.contains(a))
        || is_loopback(net)
        || matches!(net, IpNet::V4(n) if n.contains(&Ipv4Addr::new(127, 255, 255, 255)))
}

fn egress(ctx: &mut FileCtx<'_>, frag: &mut Fragment, entry: Entry<'_>) {
    let Some(blocks) = array_of_tables(entry.item) else {
        let found = type_name(entry.item);
        ctx.error(
            entry.span(),
            format!("`egress` must be an array of tables ([[egress]]), found {found}"),
        );
        return;
    };
    for block in blocks {
        let t = match block {
            Ok(t) => t,
            Err(v) => {
                ctx.error(
                    v.span(),
                    format!("`egress` entries must be tables, found {}", v.type_name()),
                );
                continue;
            }
        };
        t.check_keys(ctx, EGRESS_KEYS, "in [[egress]]");
        let origin = ctx.origin(t.span());
        let cgroup = match t.get("cgroup") {
            None => {
                ctx.error_at(origin.clone(), "[[egress]] is missing `cgroup`");
                None
            }
            Some(e) => string(ctx, e, "egress.cgroup").and_then(|raw| match CgroupPath::new(raw) {
                Ok(c) => Some(Located::new(c, ctx.origin(e.span()))),
                Err(err) => {
                    ctx.error(e.span(), err.to_string());
                    None
                }
            }),
        };
        let block_mode = t
            .get("mode")
            .map(|e| mode(ctx, e, "egress.mode"))
            .filter(|d| d.valid)
            .and_then(|d| d.values.first().copied());
        let mut rules = Vec::new();
        let mut hosts = Vec::new();
        match t.get("allow") {
            None => ctx.error_at(
                origin.clone(),
                "[[egress]] has no `allow`: write `allow = []` to deny all outbound traffic \
                 from this cgroup, or add [[egress.allow]] rules",
            ),
            Some(e) => match array_of_tables(e.item) {
                None => {
                    let found = type_name(e.item);
                    ctx.error(
                        e.span(),
                        format!("`egress.allow` must be an array of tables ([[egress.allow]]), found {found}"),
                    );
                }
                Some(items) => {
                    for item in items {
                        match item {
                            Ok(rule) => match egress_rule(ctx, rule) {
                                Some(Allow::Net(r)) => rules.push(r),
                                Some(Allow::Host(h)) => hosts.push(h),
                                None => {}
                            },
                            Err(v) => {
                                let msg = format!(
                                    "`egress.allow` entries must be tables, found {}",
                                    v.type_name()
                                );
                                ctx.error(v.span(), msg);
                            }
                        }
                    }
                }
            },
        }
        if let Some(cgroup) = cgroup {
            let policy = EgressPolicy {
                cgroup: cgroup.value.clone(),
                allow: rules,
                hosts,
                // Resolved against the top-level `mode` when merged.
                mode: Mode::Enforce,
                origin,
            };
            frag.egress.push(EgressDecl {
                cgroup_origin: cgroup.origin,
                mode: block_mode,
                policy,
            });
        }
    }
}

/// One `[[egress.allow]]` rule: a network or a host name.
enum Allow {
    Net(EgressRule),
    Host(HostRule),
}

enum Destination {
    Net(IpNet),
    Host(HostPattern),
}

fn egress_rule(ctx: &mut FileCtx<'_>, t: TableRef<'_>) -> Option<Allow> {
    t.check_keys(ctx, EGRESS_RULE_KEYS, "in [[egress.allow]]");
    let origin = ctx.origin(t.span());
    let errors_before = ctx.diagnostics.len();
    let to = match (t.get("net"), t.get("host")) {
        (None, None) => {
            ctx.error_at(origin.clone(), "[[egress.allow]] needs `net` or `host`");
            None
        }
        (Some(_), Some(h)) => {
            ctx.error(
                h.span(),
                "`net` and `host` in one [[egress.allow]] rule: write one rule for each",
            );
            None
        }
        (Some(e), None) => {
            string(ctx, e, "egress.allow.net").and_then(|raw| match parse_net(raw) {
                Ok(net) => Some(Destination::Net(net)),
                Err(err) => {
                    ctx.error(e.span(), err.to_string());
                    None
                }
            })
        }
        (None, Some(e)) => {
            string(ctx, e, "egress.allow.host").and_then(|raw| match HostPattern::parse(raw) {
                Ok(host) => Some(Destination::Host(host)),
                Err(err) => {
                    ctx.error(e.span(), err.to_string());
                    None
                }
            })
        }
    };
    let ports = match t.get("ports") {
        None => Vec::new(),
        Some(e) => egress_ports(ctx, e),
    };
    let proto = match t.get("proto") {
        None => Proto::default(),
        Some(e) => {
            match string(ctx, e, "egress.allow.proto").map(|raw| (raw, raw.parse::<Proto>())) {
                Some((_, Ok(p))) => p,
                Some((raw, Err(err))) => {
                    let mut msg = err.to_string();
                    // Only a case slip gets a suggestion: `icmp` or `sctp` is not a typo of `tcp`.
                    if let Ok(p) = raw.to_lowercase().parse::<Proto>() {
                        msg.push_str(&format!(" (did you mean `{p}`?)"));
                    }
                    ctx.error(e.span(), msg);
                    Proto::default()
                }
                None => Proto::default(),
            }
        }
    };
    let clean = ctx.diagnostics.len() == errors_before;
    match to {
        Some(Destination::Net(net)) if clean => Some(Allow::Net(EgressRule {
            net,
            ports,
            proto,
            origin,
        })),
        Some(Destination::Host(host)) if clean => Some(Allow::Host(HostRule {
            host,
            ports,
            proto,
            origin,
        })),
        _ => None,
    }
}

fn egress_ports(ctx: &mut FileCtx<'_>, entry: Entry<'_>) -> Vec<PortRange> {
    let Some(arr) = array(
        ctx,
        entry,
        "egress.allow.ports",
        "ports or \"lo-hi\" ranges",
    ) else {
        return Vec::new();
    };
    let mut out: Vec<PortRange> = Vec::new();
    let mut seen = HashSet::new();
    for v in arr.iter() {
        let range = match v {
            Value::Integer(i) => port_from_int(*i.value())
                .map(PortRange::single)
                .map_err(|e| e.to_string()),
            Value::String(s) => parse_port_range(s.value()).map_err(|e| e.to_string()),
            other => Err(format!(
                "`egress.allow.ports` entries must be ports or \"lo-hi\" strings, found {}",
                other.type_name()
            )),
        };
        match range {
            Ok(r) if !seen.insert(r) => {
                ctx.error(
                    v.span(),
                    format!("duplicate port {r} in egress.allow.ports"),
                );
            }
            Ok(r) => out.push(r),
            Err(msg) => ctx.error(v.span(), msg),
        }
    }
    out
}
