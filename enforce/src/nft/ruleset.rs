//! Warden's nft table as the `nftables` crate's typed schema: one batch that
//! creates the table if missing, deletes it and defines it again, so applying
//! it is one atomic transaction whatever was there before.
//!
//! Parity with the eBPF backend: ingress is checked in a `prerouting` chain
//! after conntrack's defragmentation (so fragments need no special case) and
//! before DNAT (so a container's published port 11434 is covered, as XDP
//! covers it), local access and egress in an `output` chain on new flows with
//! `socket cgroupv2` (descendants match through the ancestor level), and a
//! drop in `output` makes connect()/sendmsg() fail with EPERM as the cgroup
//! hooks do.
//!
//! A `socket cgroupv2` match is written here as the cgroup's path within the
//! cgroup2 hierarchy; [`super::text`] renders it with its level.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::expr::{self, Expression, MetaKey, NamedExpression, SocketAttr};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{self, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{LOG_GROUP, nflog};
use crate::compile::{Compiled, CompiledEgress};
use warden_common::PortRule;

/// The comment of the ingress chain's first rule: the generation and digest
/// of the policy the table holds (read back by [`super::NftBackend::generation`]).
pub const GENERATION_MARK: &str = "ollama-warden generation=";

/// Builds warden's whole table. `cgroup_exists[i]` and `egress_exists[i]` say
/// which policy cgroups exist now (nft resolves a cgroup path when the rule is
/// loaded, so a missing one is left out and restricted once it appears).
pub fn build(
    table: &str,
    c: &Compiled,
    cgroup_exists: &[bool],
    egress_exists: &[bool],
    generation: u32,
) -> Nftables<'static> {
    let mut b = Batch::new(table);
    b.reset_table();
    b.add(NfListObject::Set(Box::new(b.set(
        "ports",
        SetType::InetService,
        &[],
        c.ports.iter().map(|p| number(*p)).collect(),
    ))));
    // Every chain exists before a rule jumps to it.
    b.chain("ingress", Some((NfHook::Prerouting, -150)));
    b.chain("output", Some((NfHook::Output, 0)));
    b.chain("local_access", None);
    for i in 0..c.egress.len() {
        b.chain(&format!("egress_{i}"), None);
    }
    let ingress_rules = b.ingress_sets(c);
    b.ingress_chain(
        c,
        ingress_rules,
        &format!("{GENERATION_MARK}{generation} {}", c.digest),
    );
    b.output_chain(c, egress_exists);
    b.local_access_chain(c, cgroup_exists);
    for (i, e) in c.egress.iter().enumerate() {
        b.egress_chain(i, e);
    }
    Nftables {
        objects: b.objects.into(),
    }
}

/// The table that holds bans (`<table>_bans`), created once and never
/// replaced by a policy swap: sets whose elements time out by themselves, and
/// a chain ahead of warden's ingress chain that drops banned sources on the
/// protected ports and the proxy's.
pub fn bans_table(table: &str) -> Nftables<'static> {
    let mut b = Batch::new(table);
    b.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: table.to_owned().into(),
        handle: None,
    }));
    for (name, ty) in [
        ("banned4", SetType::Ipv4Addr),
        ("banned6", SetType::Ipv6Addr),
    ] {
        let set = b.set(name, ty, &[SetFlag::Timeout], Vec::new());
        b.add(NfListObject::Set(Box::new(set)));
    }
    let ports = b.set("ports", SetType::InetService, &[], Vec::new());
    b.add(NfListObject::Set(Box::new(ports)));
    b.chain("ingress", Some((NfHook::Prerouting, -160)));
    for (fam, set) in [("ip", "@banned4"), ("ip6", "@banned6")] {
        let drop = vec![
            is(payload(fam, "saddr"), string(set)),
            is(payload("th", "dport"), string("@ports")),
            counter(),
            log(nflog::BANNED, 0),
            Statement::Drop(None),
        ];
        b.rule("ingress", drop, None);
    }
    Nftables {
        objects: b.objects.into(),
    }
}

/// Adds (`add`) or deletes elements of a set of `table`; `timeout` in seconds.
pub fn elements(
    table: &str,
    set: &str,
    add: bool,
    elem: Vec<(Expression<'static>, Option<u32>)>,
) -> Nftables<'static> {
    let elem: Vec<_> = elem
        .into_iter()
        .map(|(val, timeout)| match timeout {
            None => val,
            Some(t) => Expression::Named(NamedExpression::Elem(expr::Elem {
                val: Box::new(val),
                timeout: Some(t),
                expires: None,
                comment: None,
                counter: None,
            })),
        })
        .collect();
    let element = NfListObject::Element(nftables::schema::Element {
        family: NfFamily::INet,
        table: table.to_owned().into(),
        name: set.to_owned().into(),
        elem: elem.into(),
    });
    let cmd = if add {
        NfCmd::Add(element)
    } else {
        NfCmd::Delete(element)
    };
    Nftables {
        objects: vec![NfObject::CmdObject(cmd)].into(),
    }
}

struct Batch {
    table: String,
    objects: Vec<NfObject<'static>>,
}

impl Batch {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            objects: Vec::new(),
        }
    }

    fn add(&mut self, o: NfListObject<'static>) {
        self.objects.push(NfObject::CmdObject(NfCmd::Add(o)));
    }

    /// Create if missing, delete, create: the same transaction whatever was there.
    fn reset_table(&mut self) {
        let name = self.table.clone();
        let t = || Table {
            family: NfFamily::INet,
            name: name.clone().into(),
            handle: None,
        };
        self.add(NfListObject::Table(t()));
        self.objects
            .push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(t()))));
        self.add(NfListObject::Table(t()));
    }

    fn set(
        &self,
        name: &str,
        ty: SetType,
        flags: &[SetFlag],
        elem: Vec<Expression<'static>>,
    ) -> Set<'static> {
        Set {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: name.to_owned().into(),
            handle: None,
            set_type: SetTypeValue::Single(ty),
            policy: None,
            flags: (!flags.is_empty()).then(|| flags.iter().copied().collect()),
            elem: (!elem.is_empty()).then(|| elem.into()),
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        }
    }

    fn chain(&mut self, name: &str, hook: Option<(NfHook, i32)>) {
        self.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: name.to_owned().into(),
            newname: None,
            handle: None,
            _type: hook.map(|_| NfChainType::Filter),
            hook: hook.map(|h| h.0),
            prio: hook.map(|h| h.1),
            dev: None,
            policy: hook.map(|_| NfChainPolicy::Accept),
        }));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>, comment: Option<String>) {
        self.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            chain: chain.to_owned().into(),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: comment.map(Cow::Owned),
        }));
    }

    /// Ingress: consecutive entries of one (port, rule) share a named interval
    /// set per family, matched by one rule that keeps the rule's counter. Order
    /// is kept (the first matching rule names the connection), and a
    /// 100k-network list is two sets and a few rules, not 200k rules to load
    /// and walk. Returns the rules, for the ingress chain.
    fn ingress_sets(&mut self, c: &Compiled) -> Vec<(Vec<Statement<'static>>, Option<String>)> {
        let mut rules = Vec::new();
        let mut runs = 0usize;
        let mut i = 0;
        while i < c.ingress.len() {
            let (port, rule) = (c.ingress[i].port, c.ingress[i].rule_id);
            let end = c.ingress[i..]
                .iter()
                .position(|e| e.port != port || e.rule_id != rule)
                .map_or(c.ingress.len(), |n| i + n);
            for (fam, ty, v4) in [
                ("ip", SetType::Ipv4Addr, true),
                ("ip6", SetType::Ipv6Addr, false),
            ] {
                let mut nets: Vec<IpNet> = c.ingress[i..end]
                    .iter()
                    .filter(|e| matches!(e.net, IpNet::V4(_)) == v4)
                    .map(|e| e.net)
                    .collect();
                // Sorted, nft builds the interval set in half the time (100k
                // networks: 0.56 s instead of 1.1 s); the order means nothing in a set.
                nets.sort_unstable();
                let nets: Vec<_> = nets.into_iter().map(prefix).collect();
                if nets.is_empty() {
                    continue;
                }
                let name = format!("ingress_{runs}_{fam}");
                let set = self.set(&name, ty, &[SetFlag::Interval], nets);
                self.add(NfListObject::Set(Box::new(set)));
                let from_set = || {
                    vec![
                        is(payload("th", "dport"), number(port)),
                        is(payload(fam, "saddr"), string(format!("@{name}"))),
                    ]
                };
                // New connections are logged (one event each), later packets just pass.
                let mut first = from_set();
                first.extend([
                    is(ct_state(), string("new")),
                    counter(),
                    log(nflog::INGRESS_ALLOW, rule),
                    Statement::Accept(None),
                ]);
                rules.push((first, Some(format!("rule {rule}"))));
                let mut later = from_set();
                later.push(Statement::Accept(None));
                rules.push((later, None));
            }
            runs += 1;
            i = end;
        }
        rules
    }

    fn ingress_chain(
        &mut self,
        c: &Compiled,
        rules: Vec<(Vec<Statement<'static>>, Option<String>)>,
        mark: &str,
    ) {
        const CHAIN: &str = "ingress";
        self.rule(
            CHAIN,
            vec![
                is(meta(MetaKey::Iif), string("lo")),
                Statement::Accept(None),
            ],
            Some(mark.to_owned()),
        );
        if !c.all_interfaces() {
            let names = c.interfaces.iter().map(|i| string(i.clone())).collect();
            self.rule(
                CHAIN,
                vec![
                    differs(meta(MetaKey::Iifname), set_of(names)),
                    Statement::Accept(None),
                ],
                None,
            );
        }
        self.rule(
            CHAIN,
            vec![
                differs(meta(MetaKey::L4proto), tcp_udp()),
                Statement::Accept(None),
            ],
            None,
        );
        self.rule(
            CHAIN,
            vec![
                differs(payload("th", "dport"), string("@ports")),
                Statement::Accept(None),
            ],
            None,
        );
        for (expr, comment) in rules {
            self.rule(CHAIN, expr, comment);
        }
        let zero = Some("rule 0".to_owned());
        if c.ingress_audit {
            // Audit: log each new flow that would be dropped, count every packet.
            let would_deny = vec![
                is(ct_state(), string("new")),
                counter(),
                log(nflog::INGRESS_WOULD_DENY, 0),
                Statement::Accept(None),
            ];
            self.rule(CHAIN, would_deny, zero.clone());
            self.rule(CHAIN, vec![counter(), Statement::Accept(None)], zero);
        } else {
            self.rule(
                CHAIN,
                vec![
                    counter(),
                    log(nflog::INGRESS_DENY, 0),
                    Statement::Drop(None),
                ],
                zero,
            );
        }
    }

    /// Output: new flows only, as the cgroup hooks see connect()/sendmsg().
    fn output_chain(&mut self, c: &Compiled, egress_exists: &[bool]) {
        const CHAIN: &str = "output";
        let established = set_of(vec![string("established"), string("related")]);
        self.rule(
            CHAIN,
            vec![is(ct_state(), established), Statement::Accept(None)],
            None,
        );
        let to_ports = vec![
            is(meta(MetaKey::L4proto), tcp_udp()),
            is(payload("th", "dport"), string("@ports")),
            jump("local_access"),
        ];
        self.rule(CHAIN, to_ports, None);
        for (i, (e, exists)) in c.egress.iter().zip(egress_exists).enumerate() {
            if *exists {
                self.rule(
                    CHAIN,
                    vec![in_cgroup(e.cgroup.as_str()), jump(&format!("egress_{i}"))],
                    None,
                );
            }
        }
    }

    fn local_access_chain(&mut self, c: &Compiled, cgroup_exists: &[bool]) {
        const CHAIN: &str = "local_access";
        for (g, exists) in c.cgroups.iter().zip(cgroup_exists) {
            if *exists && g.flags & warden_common::CG_MAY_CONNECT != 0 {
                // Each new flow is logged once; the rest of an allowed
                // socket's packets (conntrack calls some invalid) just pass.
                let allow = vec![
                    in_cgroup(g.cgroup.as_str()),
                    is(ct_state(), string("new")),
                    counter(),
                    log(nflog::LOCAL_ALLOW, g.rule_id),
                    Statement::Return(None),
                ];
                self.rule(CHAIN, allow, Some(format!("rule {}", g.rule_id)));
                let rest = vec![in_cgroup(g.cgroup.as_str()), Statement::Return(None)];
                self.rule(CHAIN, rest, None);
            }
        }
        self.local_deny(
            CHAIN,
            nflog::LOCAL_DENY,
            nflog::LOCAL_WOULD_DENY,
            c.local_audit,
        );
    }

    fn egress_chain(&mut self, i: usize, e: &CompiledEgress) {
        let chain = format!("egress_{i}");
        for p in &e.prefixes {
            // A prefix carries the rules of the prefixes that cover it too
            // (folded for the eBPF trie); rendering those again here is
            // redundant but harmless. IPv6 sockets reaching IPv4-mapped
            // addresses send IPv4 packets, so the IPv4 rule covers them as the
            // mapped trie entry does in the eBPF backend.
            let fam = if p.net.addr().is_ipv4() { "ip" } else { "ip6" };
            for r in &p.rules {
                let mut expr = vec![is(payload(fam, "daddr"), prefix(p.net))];
                expr.extend(protos_and_ports(r));
                expr.extend([counter(), Statement::Return(None)]);
                self.rule(&chain, expr, Some(format!("rule {}", r.rule_id)));
            }
        }
        self.local_deny(
            &chain,
            nflog::EGRESS_DENY,
            nflog::EGRESS_WOULD_DENY,
            e.audit,
        );
    }

    /// The end of a chain that judges local sockets. A dropped TCP SYN is
    /// retried until the caller times out, so TCP is answered with a reset
    /// (connect() fails at once with ECONNREFUSED); other protocols are
    /// dropped, which makes sendmsg() fail with EPERM as the cgroup hooks do.
    ///
    /// In audit mode the flow is logged under `audit_prefix` and returns to the
    /// `output` chain, which goes on to the next check, as the cgroup hooks do.
    ///
    /// Only new flows are judged aloud (one event each, as a connect() is);
    /// packets of no flow conntrack knows (it calls them invalid, e.g. a late
    /// segment after the entry is gone) are dropped, or let through in audit
    /// mode, without an event.
    fn local_deny(&mut self, chain: &str, prefix: &str, audit_prefix: &str, audit: bool) {
        let zero = || Some("rule 0".to_owned());
        let new = || is(ct_state(), string("new"));
        if audit {
            let logged = vec![
                new(),
                counter(),
                log(audit_prefix, 0),
                Statement::Return(None),
            ];
            self.rule(chain, logged, zero());
            self.rule(chain, vec![Statement::Return(None)], None);
            return;
        }
        let reset = stmt::Reject::new(Some(stmt::RejectType::TCPReset), None);
        let tcp = vec![
            is(meta(MetaKey::L4proto), string("tcp")),
            new(),
            counter(),
            log(prefix, 0),
            Statement::Reject(Some(reset)),
        ];
        self.rule(chain, tcp, zero());
        let other = vec![new(), counter(), log(prefix, 0), Statement::Drop(None)];
        self.rule(chain, other, zero());
        self.rule(chain, vec![Statement::Drop(None)], None);
    }
}

pub fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

pub fn number(n: impl Into<u32>) -> Expression<'static> {
    Expression::Number(n.into())
}

fn set_of(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(expr::SetItem::Element).collect(),
    ))
}

fn tcp_udp() -> Expression<'static> {
    set_of(vec![string("tcp"), string("udp")])
}

fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(expr::Prefix {
        addr: Box::new(string(net.addr().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(expr::Payload::PayloadField(
        expr::PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(expr::Meta { key }))
}

fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(expr::CT {
        key: "state".into(),
        family: None,
        dir: None,
    }))
}

/// The socket belongs to `cgroup` (a path within the cgroup2 hierarchy) or
/// to one of its descendants.
fn in_cgroup(cgroup: &str) -> Statement<'static> {
    let socket = Expression::Named(NamedExpression::Socket(expr::Socket {
        key: Cow::Owned(SocketAttr::Cgroupv2),
    }));
    is(socket, string(cgroup))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(stmt::Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn differs(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(stmt::Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(stmt::Counter::Anonymous(None))
}

fn log(prefix: &str, rule: u32) -> Statement<'static> {
    Statement::Log(Some(stmt::Log {
        prefix: Some(format!("{prefix} {rule}").into()),
        group: Some(u32::from(LOG_GROUP)),
        snaplen: None,
        queue_threshold: None,
        level: None,
        flags: None,
    }))
}

fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(stmt::JumpTarget {
        target: chain.to_owned().into(),
    })
}

/// The protocols and ports of an egress rule, as nft lists them back: one
/// protocol with ports is `udp dport 1000-2000`, otherwise `meta l4proto`
/// and `th dport`.
fn protos_and_ports(r: &PortRule) -> Vec<Statement<'static>> {
    let names: Vec<&str> = [
        (warden_common::PROTO_TCP, "tcp"),
        (warden_common::PROTO_UDP, "udp"),
    ]
    .into_iter()
    .filter(|(bit, _)| r.protos & bit != 0)
    .map(|(_, n)| n)
    .collect();
    let ports = if r.port_lo == 0 && r.port_hi == u16::MAX {
        None
    } else if r.port_lo == r.port_hi {
        Some(number(r.port_lo))
    } else {
        Some(Expression::Range(Box::new(expr::Range {
            range: [number(r.port_lo), number(r.port_hi)],
        })))
    };
    match (names.as_slice(), ports) {
        ([one], Some(ports)) => vec![is(payload(one, "dport"), ports)],
        (_, ports) => {
            let l4 = is(
                meta(MetaKey::L4proto),
                set_of(names.iter().map(|n| string(*n)).collect()),
            );
            std::iter::once(l4)
                .chain(ports.map(|p| is(payload("th", "dport"), p)))
                .collect()
        }
    }
}
