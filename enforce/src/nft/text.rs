//! The typed ruleset rendered as nft's text language, for the one expression
//! nft's JSON cannot carry: `socket cgroupv2 level N "path"`. No nft release
//! parses it from JSON (1.0.6 rejects the `cgroupv2` key; later parsers accept
//! only `transparent`, `mark` and `wildcard`), and JSON listings drop the
//! level. Every other object the ruleset holds renders one to one, and
//! anything the ruleset does not use is refused rather than guessed.
//!
//! The level is the cgroup's depth in the cgroup2 hierarchy; the path nft
//! resolves is relative to /sys/fs/cgroup, so on a hybrid host (cgroup2 at
//! /sys/fs/cgroup/unified) it starts with `cgroup_prefix`.

use std::fmt::Write as _;
use std::path::Path;

use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem, SocketAttr};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Set};
use nftables::stmt::{Counter, Operator, RejectType, Statement};

/// An nft script applying `n` in one transaction (`nft -f -`).
pub fn render(n: &Nftables, cgroup_prefix: &Path) -> Result<String, String> {
    let mut out = String::new();
    for o in n.objects.iter() {
        let line = match o {
            NfObject::CmdObject(NfCmd::Add(o)) => add(o, cgroup_prefix)?,
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(t))) => {
                format!("delete table {} {}", word(&t.family)?, t.name)
            }
            other => return Err(format!("not rendered as text: {other:?}")),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

fn add(o: &NfListObject, cgroup_prefix: &Path) -> Result<String, String> {
    match o {
        NfListObject::Table(t) => Ok(format!("add table {} {}", word(&t.family)?, t.name)),
        NfListObject::Chain(c) => chain(c),
        NfListObject::Set(s) => set(s),
        NfListObject::Rule(r) => rule(r, cgroup_prefix),
        other => Err(format!("not rendered as text: {other:?}")),
    }
}

fn chain(c: &Chain) -> Result<String, String> {
    let mut s = format!("add chain {} {} {}", word(&c.family)?, c.table, c.name);
    if let (Some(ty), Some(hook), Some(prio)) = (&c._type, &c.hook, c.prio) {
        let _ = write!(
            s,
            " {{ type {} hook {} priority {prio};",
            word(ty)?,
            word(hook)?
        );
        if let Some(p) = &c.policy {
            let _ = write!(s, " policy {};", word(p)?);
        }
        s.push_str(" }");
    }
    Ok(s)
}

/// Interval sets merge overlapping and adjacent networks as they load
/// (`auto-merge`), as the eBPF trie's longest-prefix match makes overlaps
/// harmless there.
fn set(s: &Set) -> Result<String, String> {
    let nftables::schema::SetTypeValue::Single(ty) = &s.set_type else {
        return Err(format!("set {}: only single types are rendered", s.name));
    };
    let mut out = format!(
        "add set {} {} {} {{ type {};",
        word(&s.family)?,
        s.table,
        s.name,
        word(ty)?
    );
    let flags: Vec<String> = s
        .flags
        .iter()
        .flatten()
        .map(word)
        .collect::<Result<_, _>>()?;
    if !flags.is_empty() {
        let _ = write!(out, " flags {};", flags.join(", "));
        if flags.iter().any(|f| f == "interval") {
            out.push_str(" auto-merge;");
        }
    }
    if let Some(t) = s.timeout {
        let _ = write!(out, " timeout {t}s;");
    }
    if let Some(elem) = s.elem.as_deref().filter(|e| !e.is_empty()) {
        let items: Vec<String> = elem.iter().map(|e| value(e)).collect::<Result<_, _>>()?;
        let _ = write!(out, " elements = {{ {} }};", items.join(", "));
    }
    out.push_str(" }");
    Ok(out)
}

fn rule(r: &Rule, cgroup_prefix: &Path) -> Result<String, String> {
    let mut out = format!("add rule {} {} {}", word(&r.family)?, r.table, r.chain);
    for s in r.expr.iter() {
        out.push(' ');
        out.push_str(&statement(s, cgroup_prefix)?);
    }
    if let Some(c) = &r.comment {
        let _ = write!(out, " comment {}", quoted(c)?);
    }
    Ok(out)
}

fn statement(s: &Statement, cgroup_prefix: &Path) -> Result<String, String> {
    Ok(match s {
        Statement::Match(m) => {
            if let Expression::Named(NamedExpression::Socket(sock)) = &m.left
                && *sock.key == SocketAttr::Cgroupv2
            {
                return cgroup_match(&m.right, &m.op, cgroup_prefix);
            }
            let left = selector(&m.left)?;
            let right = match &m.left {
                Expression::Named(NamedExpression::Meta(meta))
                    if matches!(meta.key, MetaKey::Iif | MetaKey::Iifname) =>
                {
                    names(&m.right)?
                }
                _ => value(&m.right)?,
            };
            match m.op {
                Operator::EQ | Operator::IN => format!("{left} {right}"),
                Operator::NEQ => format!("{left} != {right}"),
                ref op => return Err(format!("operator {op:?} is not rendered")),
            }
        }
        Statement::Counter(Counter::Anonymous(_)) => "counter".into(),
        Statement::Log(Some(l)) => {
            let mut out = "log".to_owned();
            if let Some(p) = &l.prefix {
                let _ = write!(out, " prefix {}", quoted(p)?);
            }
            if let Some(g) = l.group {
                let _ = write!(out, " group {g}");
            }
            out
        }
        Statement::Accept(_) => "accept".into(),
        Statement::Drop(_) => "drop".into(),
        Statement::Return(_) => "return".into(),
        Statement::Jump(t) => format!("jump {}", t.target),
        Statement::Reject(Some(r)) if r._type == Some(RejectType::TCPReset) && r.expr.is_none() => {
            "reject with tcp reset".into()
        }
        other => return Err(format!("statement not rendered: {other:?}")),
    })
}

/// `socket cgroupv2 level N "path"`: descendants of the cgroup match too.
fn cgroup_match(right: &Expression, op: &Operator, cgroup_prefix: &Path) -> Result<String, String> {
    let Expression::String(cgroup) = right else {
        return Err(format!(
            "socket cgroupv2 needs a cgroup path, not {right:?}"
        ));
    };
    if *op != Operator::EQ {
        return Err("socket cgroupv2: only equality is rendered".into());
    }
    let level = cgroup.split('/').filter(|c| !c.is_empty()).count();
    let path = cgroup_prefix.join(cgroup.as_ref());
    Ok(format!(
        "socket cgroupv2 level {level} {}",
        quoted(&path.to_string_lossy())?
    ))
}

/// The left-hand side of a match.
fn selector(e: &Expression) -> Result<String, String> {
    match e {
        Expression::Named(NamedExpression::Payload(nftables::expr::Payload::PayloadField(p))) => {
            Ok(format!("{} {}", p.protocol, p.field))
        }
        Expression::Named(NamedExpression::Meta(m)) => Ok(format!("meta {}", word(&m.key)?)),
        Expression::Named(NamedExpression::CT(ct)) if ct.family.is_none() && ct.dir.is_none() => {
            Ok(format!("ct {}", ct.key))
        }
        other => Err(format!("selector not rendered: {other:?}")),
    }
}

/// A right-hand side or set element: addresses, ports, keywords and set
/// references are written as they are.
fn value(e: &Expression) -> Result<String, String> {
    Ok(match e {
        Expression::String(s)
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:@_".contains(c)) =>
        {
            s.to_string()
        }
        Expression::Number(n) => n.to_string(),
        Expression::Range(r) => format!("{}-{}", value(&r.range[0])?, value(&r.range[1])?),
        Expression::Named(NamedExpression::Prefix(p)) => {
            format!("{}/{}", value(&p.addr)?, p.len)
        }
        Expression::Named(NamedExpression::Set(items)) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| match i {
                    SetItem::Element(e) => value(e),
                    other => Err(format!("set item not rendered: {other:?}")),
                })
                .collect::<Result<_, _>>()?;
            format!("{{ {} }}", items.join(", "))
        }
        other => return Err(format!("value not rendered: {other:?}")),
    })
}

/// Interface names, always quoted.
fn names(e: &Expression) -> Result<String, String> {
    match e {
        Expression::String(s) => quoted(s),
        Expression::Named(NamedExpression::Set(items)) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| match i {
                    SetItem::Element(Expression::String(s)) => quoted(s),
                    other => Err(format!("interface name not rendered: {other:?}")),
                })
                .collect::<Result<_, _>>()?;
            Ok(format!("{{ {} }}", items.join(", ")))
        }
        other => Err(format!("interface name not rendered: {other:?}")),
    }
}

fn quoted(s: &str) -> Result<String, String> {
    if s.contains(['"', '\n', '\\']) {
        return Err(format!("cannot quote {s:?} for nft"));
    }
    Ok(format!("\"{s}\""))
}

/// An enum's nft keyword: its JSON name.
fn word(v: &impl serde::Serialize) -> Result<String, String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        other => Err(format!("no keyword for {other:?}")),
    }
}
