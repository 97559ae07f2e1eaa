//! Whole-crate tests: parsing, merge semantics, digest, the shipped policies.
//! Value-level rules (cgroups, networks, ports) are tested in their own modules; the
//! exact diagnostics of broken files are pinned by `tests/corpus.rs`.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::*;

const MINIMAL: &str = r#"
version = 1
[service]
ports = [11434]
server_cgroups = ["system.slice/ollama.service"]
"#;

fn parse(text: &str) -> Policy {
    parse_str(Path::new("t.toml"), text).unwrap_or_else(|d| panic!("{}", render(&d)))
}

fn errors(text: &str) -> Vec<String> {
    match parse_str(Path::new("t.toml"), text) {
        Ok(p) => panic!("accepted: {p:#?}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

fn merged(files: &[(&str, &str)]) -> Result<Policy, Vec<String>> {
    parse_sources(files).map_err(|d| d.iter().map(ToString::to_string).collect())
}

fn render(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn embedded_default_is_valid() {
    let p = embedded_default();
    assert_eq!(p.ports, [11434]);
    assert_eq!(
        p.server_cgroups[0].value.as_str(),
        "system.slice/ollama.service"
    );
    assert_eq!(p.ingress.interfaces, ["*"]);
    assert!(p.ingress.allow.is_empty());
    assert!(p.ingress_allow_for(11434).is_empty());
    let local: Vec<&str> = p.local_allow.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(
        local,
        [
            "system.slice/ollama-warden-proxy.service",
            "system.slice/ollama-warden.service"
        ]
    );
    assert!(p.egress.is_empty());
    assert_eq!(p.sources, [PathBuf::from("<embedded default>")]);
    assert_eq!(
        p.server_cgroups[0].origin.to_string(),
        "<embedded default>:22:19"
    );
}

#[test]
fn every_example_is_valid() {
    let dir = repo_root().join("policies/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if let Err(d) = load_paths(std::slice::from_ref(&path)) {
            panic!("{}:\n{}", path.display(), render(&d));
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected at least 3 examples, found {checked}"
    );
}

#[test]
fn examples_mean_what_their_comments_say() {
    let ex = repo_root().join("policies/examples");
    let lab = load_paths(&[ex.join("gpu-lab.toml")]).unwrap();
    assert_eq!(lab.ports, [11434, 11435]);
    assert_eq!(
        lab.ingress_allow_for(11434),
        nets(&["10.20.30.0/24", "192.0.2.7/32", "fd00:20:30::/64"])
    );
    assert_eq!(lab.ingress_allow_for(11435).len(), 5);

    let egress = load_paths(&[ex.join("egress-restricted.toml")]).unwrap();
    let ollama = egress
        .egress_for(&CgroupPath::new("system.slice/ollama.service").unwrap())
        .unwrap();
    let rules: Vec<String> = ollama
        .allow
        .iter()
        .map(|r| format!("{} {} {:?}", r.net, r.proto, r.ports))
        .collect();
    assert_eq!(
        rules,
        [
            "127.0.0.0/8 tcp []",
            "::1/128 tcp []",
            "10.1.2.3/32 tcp [PortRange { lo: 443, hi: 443 }]",
            "10.1.0.53/32 udp [PortRange { lo: 53, hi: 53 }]",
            "10.1.0.53/32 tcp [PortRange { lo: 53, hi: 53 }]",
        ]
    );

    let split = load_paths(&[ex.join("policy.d")]).unwrap();
    assert_eq!(split.sources.len(), 2);
    assert!(split.sources[0].ends_with("10-service.toml"));
    assert_eq!(split.ingress.interfaces, ["ens1f0", "ens1f1"]);
    assert_eq!(split.local_allow.len(), 2);
    assert_eq!(
        split.egress[0].allow[0].ports,
        [PortRange::single(443), PortRange { lo: 9000, hi: 9010 }]
    );
}

#[test]
fn minimal_policy_gets_the_defaults() {
    let p = parse(MINIMAL);
    assert_eq!(p.ingress.interfaces, ["*"]);
    assert!(p.ingress.allow.is_empty() && p.ingress.per_port.is_empty());
    assert!(p.local_allow.is_empty() && p.egress.is_empty());
    assert_eq!(p.sources, [PathBuf::from("t.toml")]);
}

#[test]
fn ports_are_sorted_and_origins_point_at_values() {
    let p = parse(
        "version = 1\n[service]\nports = [11435, 11434]\nserver_cgroups = [\"/a.service\"]\n",
    );
    assert_eq!(p.ports, [11434, 11435]);
    assert_eq!(p.server_cgroups[0].value.as_str(), "a.service");
    assert_eq!(p.server_cgroups[0].origin.to_string(), "t.toml:4:19");
}

#[test]
fn ipv4_and_ipv6_sources_and_per_port_extras() {
    let p = parse(
        r#"version = 1
[service]
ports = [11434, 11435]
server_cgroups = ["s"]
[ingress]
allow = ["10.20.30.0/24", "fd00:20::/64", "192.0.2.7", "2001:db8::7"]
[[ingress.port]]
port = 11435
allow = ["10.9.0.0/16", "192.0.2.7"]
[[ingress.port]]
port = 11435
allow = ["fd00:99::/48"]
"#,
    );
    assert_eq!(
        p.ingress_allow_for(11434),
        nets(&[
            "10.20.30.0/24",
            "192.0.2.7/32",
            "2001:db8::7/128",
            "fd00:20::/64"
        ])
    );
    // Global ∪ per-port, deduplicated (192.0.2.7 is in both), both blocks unioned.
    assert_eq!(
        p.ingress_allow_for(11435),
        nets(&[
            "10.9.0.0/16",
            "10.20.30.0/24",
            "192.0.2.7/32",
            "2001:db8::7/128",
            "fd00:20::/64",
            "fd00:99::/48",
        ])
    );
    assert_eq!(p.ingress.per_port.len(), 1);
    assert_eq!(p.ingress.per_port[0].origin.to_string(), "t.toml:7:1");
}

#[test]
fn inline_tables_are_the_same_policy() {
    let blocks = parse(
        r#"version = 1
[service]
ports = [11434]
server_cgroups = ["s"]
[[egress]]
cgroup = "s"
[[egress.allow]]
net = "10.0.0.0/8"
ports = [443, "8000-8100"]
proto = "tcp"
"#,
    );
    let inline = parse(
        r#"version = 1
service = { ports = [11434], server_cgroups = ["s"] }
egress = [{ cgroup = "s", allow = [{ net = "10.0.0.0/8", ports = [443, "8000-8100"], proto = "tcp" }] }]
"#,
    );
    assert_eq!(blocks.digest(), inline.digest());
    assert_eq!(
        inline.egress[0].allow[0].ports[1],
        PortRange { lo: 8000, hi: 8100 }
    );
}

#[test]
fn egress_without_allow_must_say_allow_empty() {
    let text = format!("{MINIMAL}[[egress]]\ncgroup = \"system.slice/ollama.service\"\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("t.toml:6:1: [[egress]] has no `allow`: write `allow = []`"),
        "{e:?}"
    );
    let p = parse(&format!("{text}allow = []\n"));
    assert!(p.egress[0].allow.is_empty());
    assert_eq!(p.egress[0].origin.to_string(), "t.toml:6:1");
}

#[test]
fn egress_rule_defaults() {
    let p = parse(&format!(
        "{MINIMAL}[[egress]]\ncgroup = \"x\"\n[[egress.allow]]\nnet = \"fd00::/8\"\n"
    ));
    let rule = &p.egress[0].allow[0];
    assert_eq!(rule.proto, Proto::Any);
    assert!(rule.ports.is_empty());
    assert_eq!(rule.net, "fd00::/8".parse::<IpNet>().unwrap());
}

#[test]
fn merge_unions_allowlists_across_files() {
    let a = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"a\"]\n\
             [ingress]\nallow = [\"10.0.0.0/8\"]\n[local]\nallow_cgroups = [\"p\"]\n\
             [[ingress.port]]\nport = 11434\nallow = [\"192.0.2.1\"]\n";
    let b = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"b\", \"a\"]\n\
             [ingress]\nallow = [\"10.0.0.0/8\", \"fd00::/8\"]\n[local]\nallow_cgroups = [\"q\"]\n\
             [[ingress.port]]\nport = 11434\nallow = [\"192.0.2.2\"]\n";
    let p = merged(&[("a.toml", a), ("b.toml", b)]).unwrap();
    let names =
        |l: &[Located<CgroupPath>]| l.iter().map(|c| c.value.to_string()).collect::<Vec<_>>();
    assert_eq!(names(&p.server_cgroups), ["a", "b"]);
    assert_eq!(names(&p.local_allow), ["p", "q"]);
    // The first file's origin wins for a value both files list.
    assert_eq!(p.ingress.allow[0].origin.to_string(), "a.toml:6:10");
    assert_eq!(p.ingress.allow.len(), 2);
    assert_eq!(p.ingress.per_port.len(), 1);
    assert_eq!(p.ingress.per_port[0].allow.len(), 2);
    assert_eq!(
        p.sources,
        [PathBuf::from("a.toml"), PathBuf::from("b.toml")]
    );
}

#[test]
fn service_may_be_split_or_repeated_identically() {
    let ports = "version = 1\n[service]\nports = [11435, 11434]\n";
    let server = "version = 1\n[service]\nserver_cgroups = [\"s\"]\n";
    let same = "version = 1\n[service]\nports = [11434, 11435]\n[ingress]\ninterfaces = [\"*\"]\n";
    let p = merged(&[("a.toml", ports), ("b.toml", server), ("c.toml", same)]).unwrap();
    assert_eq!(p.ports, [11434, 11435]);
}

#[test]
fn conflicts_name_both_places() {
    let a = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n\
             [ingress]\ninterfaces = [\"eth0\"]\n";
    let b = "version = 1\n[service]\nports = [11434, 11435]\n[ingress]\ninterfaces = [\"*\"]\n";
    let e = merged(&[("a.toml", a), ("b.toml", b)]).unwrap_err();
    assert_eq!(
        e,
        [
            "b.toml:3:9: service.ports conflicts with a.toml:3:9 ([11434] there, [11434, 11435] \
             here); every file that sets service.ports must set the same values",
            "b.toml:5:14: ingress.interfaces conflicts with a.toml:6:14 ([\"eth0\"] there, \
             [\"*\"] here); every file that sets ingress.interfaces must set the same values",
        ]
    );
}

#[test]
fn one_egress_block_per_cgroup_even_within_a_file() {
    let text = format!(
        "{MINIMAL}[[egress]]\ncgroup = \"x\"\nallow = []\n[[egress]]\ncgroup = \"/x\"\nallow = []\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:10:10: [[egress]] for cgroup `x` conflicts with t.toml:7:10: one block per \
          cgroup; merge their rules into one"
        ]
    );
}

#[test]
fn no_service_anywhere_is_an_error_but_not_after_a_broken_file() {
    let e = merged(&[("a.toml", "version = 1\n[ingress]\nallow = []\n")]).unwrap_err();
    assert_eq!(
        e,
        ["a.toml:1:1: no protected ports: no policy file sets `ports` in [service]"]
    );
    // b.toml might have held [service]: only its own syntax error is reported.
    let e = merged(&[
        ("a.toml", "version = 1\n"),
        ("b.toml", "version = 1\n[service\n"),
    ])
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("b.toml:2:9: TOML syntax error"), "{e:?}");
}

#[test]
fn server_cgroups_must_be_named_or_explicitly_empty() {
    let e = errors("version = 1\n[service]\nports = [11434]\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("t.toml:3:9: no file sets service.server_cgroups"),
        "{e:?}"
    );
    let p = parse("version = 1\n[service]\nports = [11434]\nserver_cgroups = []\n");
    assert!(p.server_cgroups.is_empty());
}

#[test]
fn unsupported_version_stops_checking_that_file() {
    let e = errors("version = 2\nwhatever = true\n[service]\nports = [0]\n");
    assert_eq!(
        e,
        [
            "t.toml:1:11: unsupported policy version 2; this warden reads version 1 (the rest of \
          this file was not checked)"
        ]
    );
}

#[test]
fn typos_in_every_table_are_reported_with_suggestions() {
    let e = errors(
        r#"version = 1
[service]
ports = [11434]
server_cgroup = ["s"]
[ingress]
alow = ["10.0.0.0/8"]
[[ingress.port]]
port = 11434
alow = []
[local]
allowcgroups = ["x"]
[[egress]]
cgroup = "s"
allow = [{ net = "10.0.0.0/8", port = [443], protocol = "tcp" }]
"#,
    );
    let want = [
        "t.toml:4:1: unknown key `server_cgroup` in [service]; expected one of: ports, server_cgroups (did you mean `server_cgroups`?)",
        "t.toml:6:1: unknown key `alow` in [ingress]; expected one of: interfaces, allow, port, mode (did you mean `allow`?)",
        "t.toml:7:1: [[ingress.port]] is missing `allow`",
        "t.toml:9:1: unknown key `alow` in [[ingress.port]]; expected one of: port, allow (did you mean `allow`?)",
        "t.toml:11:1: unknown key `allowcgroups` in [local]; expected one of: allow_cgroups, mode (did you mean `allow_cgroups`?)",
        "t.toml:14:32: unknown key `port` in [[egress.allow]]; expected one of: net, host, ports, proto (did you mean `ports`?)",
        "t.toml:14:46: unknown key `protocol` in [[egress.allow]]; expected one of: net, host, ports, proto (did you mean `proto`?)",
    ];
    // server_cgroups is misspelt, so no file sets it: that is reported too.
    assert!(
        e[0].starts_with("t.toml:3:9: no file sets service.server_cgroups"),
        "{e:?}"
    );
    assert_eq!(e[1..], want);
}

#[test]
fn digest_ignores_origins_order_and_spelling() {
    let a = parse(
        r#"version = 1
[service]
ports = [11434, 11435]
server_cgroups = ["system.slice/ollama.service"]
[ingress]
allow = ["10.0.0.0/25", "10.0.0.128/25", "fd00::/8"]
[local]
allow_cgroups = ["p.service", "user.slice", "user.slice/user-1000.slice"]
[[egress]]
cgroup = "b"
allow = [{ net = "10.1.0.0/16", ports = [80, "81-90", 443] }, { net = "1.1.1.1", proto = "udp" }]
[[egress]]
cgroup = "a"
allow = []
"#,
    );
    // Same verdicts written differently, split over two files in the other order.
    let b1 = r#"
# comments and layout do not matter
version = 1
[[egress]]
cgroup = "/a"
allow = []
[[egress]]
cgroup = "b"
[[egress.allow]]
net = "1.1.1.1/32"
proto = "udp"
ports = []
[[egress.allow]]
net = "10.1.0.0/16"
ports = [443, "80-90"]
proto = "any"
"#;
    let b2 = r#"
version = 1
service.ports = [11435, 11434]
service.server_cgroups = ["/system.slice/ollama.service"]
ingress.interfaces = ["*"]
ingress.allow = ["fd00::/8"]
[[ingress.port]]
port = 11434
allow = ["10.0.0.0/24"]
[[ingress.port]]
port = 11435
allow = ["10.0.0.0/24"]
[local]
allow_cgroups = ["user.slice", "p.service"]
"#;
    let b = merged(&[("x/1.toml", b1), ("y/2.toml", b2)]).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert!(a.digest().starts_with("sha256:") && a.digest().len() == 7 + 64);
    // Stable across runs and releases unless the canonical format is bumped.
    assert_eq!(parse(MINIMAL).digest(), parse(MINIMAL).digest());

    // Any change in what is enforced changes it.
    let changed = [
        MINIMAL.replace("11434", "11435"),
        MINIMAL.replace("ollama.service", "ollama2.service"),
        format!("{MINIMAL}[ingress]\nallow = [\"10.0.0.0/8\"]\n"),
        format!("{MINIMAL}[ingress]\ninterfaces = [\"eth0\"]\n"),
        format!("{MINIMAL}[local]\nallow_cgroups = [\"x\"]\n"),
        format!("{MINIMAL}[[egress]]\ncgroup = \"x\"\nallow = []\n"),
    ];
    let base = parse(MINIMAL).digest();
    for text in &changed {
        assert_ne!(parse(text).digest(), base, "{text}");
    }
}

#[test]
fn policy_serialises_for_policy_show() {
    let p = parse(&format!(
        "{MINIMAL}[ingress]\nallow = [\"fd00:20::/64\"]\n[[egress]]\ncgroup = \"x\"\n\
         [[egress.allow]]\nnet = \"10.1.2.3\"\nports = [\"8000-8100\"]\nproto = \"tcp\"\n"
    ));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["ports"], serde_json::json!([11434]));
    assert_eq!(
        json["server_cgroups"][0]["value"],
        "system.slice/ollama.service"
    );
    assert_eq!(json["server_cgroups"][0]["origin"], "t.toml:5:19");
    assert_eq!(json["ingress"]["allow"][0]["value"], "fd00:20::/64");
    assert_eq!(json["egress"][0]["allow"][0]["net"], "10.1.2.3/32");
    assert_eq!(json["egress"][0]["allow"][0]["proto"], "tcp");
    assert_eq!(
        json["egress"][0]["allow"][0]["ports"][0],
        serde_json::json!({"lo": 8000, "hi": 8100})
    );
    assert_eq!(json["sources"], serde_json::json!(["t.toml"]));
}

#[test]
fn directories_and_unreadable_paths() {
    let dir = std::env::temp_dir().join(format!("warden-policy-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::create_dir_all(dir.join("d/sub.toml")).unwrap();
    std::fs::write(
        dir.join("d/20-b.toml"),
        "version = 1\n[local]\nallow_cgroups = [\"b\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("d/10-a.toml"), MINIMAL).unwrap();
    std::fs::write(dir.join("d/.#10-a.toml"), "garbage").unwrap();
    std::fs::write(dir.join("d/README.md"), "garbage").unwrap();
    std::fs::write(dir.join("bad-utf8.toml"), b"version = 1\n# caf\xe9\n").unwrap();

    let p = load_paths(&[dir.join("d")]).unwrap();
    assert_eq!(
        p.sources,
        [dir.join("d/10-a.toml"), dir.join("d/20-b.toml")]
    );
    // The same file named twice is read once.
    let again = load_paths(&[dir.join("d"), dir.join("d/10-a.toml")]).unwrap();
    assert_eq!(again.sources.len(), 2);

    let e = load_paths(&[
        dir.join("empty"),
        dir.join("missing.toml"),
        dir.join("bad-utf8.toml"),
    ])
    .unwrap_err();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    let d = dir.display();
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(
        e[0],
        format!("{d}/empty:1:1: directory contains no *.toml policy files")
    );
    assert!(e[1].starts_with(&format!("{d}/missing.toml:1:1: cannot read policy path: ")));
    assert_eq!(
        e[2],
        format!("{d}/bad-utf8.toml:2:6: policy files must be UTF-8; invalid byte here")
    );
    assert_eq!(
        load_paths(&[]).unwrap_err()[0].to_string(),
        "<arguments>:1:1: no policy file given"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_inputs_are_rejected_with_their_place_and_do_not_panic() {
    let inputs = [
        "",
        "\u{feff}",
        "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n\u{0}",
        "version = 9223372036854775807",
        "version = -1\nservice = 1\ningress = []\nlocal = \"x\"\negress = {}",
        "version = 1\n[[service]]\n[[ingress]]\n[[local]]\n[egress]\n",
        "version = 1\ningress.port = [1, {}, { port = 99999999999 }]\negress = [1, {allow = 7}]",
        "version = 1\n[[egress]]\nallow = [[1]]\n[[egress]]\ncgroup = 5\nallow = [{ net = 5, ports = 5, proto = 5 }]",
        "version = 1\n[service]\nports = [1.5, true, 1979-05-27, [1], {a = 1}]\nserver_cgroups = [[\"x\"]]",
        "version = 1\n[ingress]\ninterfaces = [\"*\", \"*\", \"\", \"a/b\", \"0123456789abcdef\", \"lo\", 1]",
        "é = 1\n\"\u{10ffff}\" = 2\n[\"ü\"]\n",
    ];
    for text in inputs {
        let e = parse_str(Path::new("x.toml"), text).expect_err(text);
        assert!(!e.is_empty(), "{text:?}: rejected without a diagnostic");
        for d in &e {
            assert!(d.to_string().starts_with("x.toml:"), "{text:?}: {d}");
        }
    }
}

#[test]
fn modes_default_to_enforce_and_sections_override_the_top_level() {
    let p = parse(MINIMAL);
    assert_eq!(
        (p.ingress.mode, p.local_mode, p.audits()),
        (Mode::Enforce, Mode::Enforce, false)
    );
    let p = parse(&format!(
        "{MINIMAL}mode = \"audit\"\n[ingress]\nmode = \"enforce\"\n[[egress]]\ncgroup = \"a\"\nallow = []\n[[egress]]\ncgroup = \"b\"\nmode = \"enforce\"\nallow = []\n"
    )
    .replacen("mode = \"audit\"\n", "", 1)
    .replacen("version = 1\n", "version = 1\nmode = \"audit\"\n", 1));
    assert_eq!(p.ingress.mode, Mode::Enforce);
    assert_eq!(p.local_mode, Mode::Audit);
    let modes: Vec<(&str, Mode)> = p
        .egress
        .iter()
        .map(|e| (e.cgroup.as_str(), e.mode))
        .collect();
    assert_eq!(modes, [("a", Mode::Audit), ("b", Mode::Enforce)]);
    assert!(p.audits());
}

#[test]
fn audit_changes_the_digest_and_enforce_keeps_it() {
    let plain = parse(MINIMAL).digest();
    let explicit =
        parse(&MINIMAL.replacen("version = 1\n", "version = 1\nmode = \"enforce\"\n", 1));
    assert_eq!(explicit.digest(), plain);
    let audit = parse(&format!("{MINIMAL}[local]\nmode = \"audit\"\n"));
    assert_ne!(audit.digest(), plain);
}

#[test]
fn modes_are_checked_and_must_agree_across_files() {
    let e = errors(&format!("{MINIMAL}[ingress]\nmode = \"permissive\"\n"));
    assert_eq!(
        e,
        ["t.toml:7:8: `ingress.mode` must be \"enforce\" or \"audit\", found \"permissive\""]
    );
    let e = merged(&[
        ("a.toml", &format!("{MINIMAL}[local]\nmode = \"audit\"\n")),
        ("b.toml", "version = 1\n[local]\nmode = \"enforce\"\n"),
    ])
    .unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("b.toml:3:8: local.mode conflicts with a.toml:7:8"),
        "{e:?}"
    );
}

#[test]
fn cgroups_deeper_than_the_kernel_walk_are_rejected_where_they_are_named() {
    let at = |depth: usize| {
        (1..=depth)
            .map(|i| format!("l{i}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let text = |depth: usize| {
        format!(
            "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"{}\"]\n",
            at(depth)
        )
    };
    // The deepest a rule can match (level 15) is accepted, one more is not.
    assert_eq!(parse(&text(MAX_CGROUP_DEPTH)).server_cgroups.len(), 1);
    let e = errors(&text(MAX_CGROUP_DEPTH + 1));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:4:19: cgroup path `l1/")
            && e[0].contains("nested 16 levels deep; warden matches cgroups at most 15"),
        "{e:?}"
    );
}

#[test]
fn host_rules_are_checked_where_they_are_written() {
    let head = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n[[egress]]\ncgroup = \"s\"\n";
    let p = parse(&format!(
        "{head}[[egress.allow]]\nhost = \"Registry.Ollama.AI\"\nports = [443]\nproto = \"tcp\"\n\
         [[egress.allow]]\nhost = \"*.r2.cloudflarestorage.com\"\nports = [443]\n\
         [[egress.allow]]\nnet = \"10.0.0.53\"\nports = [53]\n"
    ));
    let e = &p.egress[0];
    assert_eq!(e.allow.len(), 1);
    let hosts: Vec<String> = e
        .hosts
        .iter()
        .map(|h| format!("{} {} {:?} {}", h.host, h.proto, h.ports, h.origin))
        .collect();
    assert_eq!(
        hosts,
        [
            "registry.ollama.ai tcp [PortRange { lo: 443, hi: 443 }] t.toml:7:1",
            "*.r2.cloudflarestorage.com any [PortRange { lo: 443, hi: 443 }] t.toml:11:1",
        ]
    );
    assert!(p.has_host_rules());

    let e = errors(&format!(
        "{head}allow = [\n  {{ host = \"10.0.0.1\" }},\n  {{ host = \"a.*.example.com\" }},\n  \
         {{ host = \"*.com\" }},\n  {{ host = \"bad name.example\" }},\n  \
         {{ host = \"x.example\", net = \"10.0.0.0/8\" }},\n  {{ ports = [443] }},\n  {{ host = 7 }},\n]\n"
    ));
    assert_eq!(
        e,
        [
            "t.toml:8:12: `10.0.0.1` is an address: write it as `net = \"10.0.0.1\"`",
            "t.toml:9:12: `*` may only be the whole first label (`*.example.com`)",
            "t.toml:10:12: `com` would allow every name under a top-level domain: name the domain (`*.example.com`)",
            "t.toml:11:12: `bad name.example` has a character a host name cannot have (letters, digits, `-` and `_` only)",
            "t.toml:12:12: `net` and `host` in one [[egress.allow]] rule: write one rule for each",
            "t.toml:13:3: [[egress.allow]] needs `net` or `host`",
            "t.toml:14:12: `egress.allow.host` must be a string, found integer",
        ]
    );
}

#[test]
fn host_rules_count_in_the_digest_and_leave_other_digests_alone() {
    let base = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n[[egress]]\ncgroup = \"s\"\n[[egress.allow]]\nnet = \"10.0.0.53\"\n";
    let with = |extra: &str| parse(&format!("{base}{extra}")).digest();
    let none = with("");
    let one = with("[[egress.allow]]\nhost = \"registry.ollama.ai\"\n");
    let same = with("[[egress.allow]]\nhost = \"REGISTRY.ollama.ai.\"\n");
    let other = with("[[egress.allow]]\nhost = \"ollama.ai\"\n");
    assert_ne!(none, one);
    assert_eq!(one, same, "case and the root's dot do not change the rule");
    assert_ne!(one, other);
}

#[test]
fn remote_access_names_networks_that_are_never_this_host() {
    let head = "version = 1\n[service]\nports = [11434]\nserver_cgroups = [\"s\"]\n";
    let p = parse(&format!(
        "{head}[[remote]]\ncgroups = [\"gw\"]\nto = [\"10.20.0.0/24\", \"fd00:20::/64\"]\n"
    ));
    assert_eq!(p.remote.len(), 1);
    assert_eq!(p.remote[0].to.len(), 2);
    assert_eq!(p.remote[0].origin.to_string(), "t.toml:5:1");
    let e = errors(&format!(
        "{head}[[remote]]\ncgroups = [\"gw\"]\nto = [\"0.0.0.0/0\", \"127.0.0.2\", \"::/0\", \"::1\", \"10.0.0.0/8\"]\n\
         [[remote]]\nto = [\"10.0.0.0/8\"]\n"
    ));
    assert_eq!(e.len(), 5, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:7:7: `0.0.0.0/0` covers this host"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("t.toml:7:20: `127.0.0.2` covers this host"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("t.toml:7:33: `::/0` covers this host"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("t.toml:7:41: `::1` covers this host"),
        "{e:?}"
    );
    assert_eq!(e[4], "t.toml:8:1: [[remote]] is missing `cgroups`");
}
