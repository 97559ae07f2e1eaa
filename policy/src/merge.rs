//! Several files to one [`Policy`].
//!
//! Rules, in short: `version` in every file; `service.ports` and `ingress.interfaces`
//! may be set in several files only if they are the same set; allowlists
//! (`service.server_cgroups`, `ingress.allow`, `[[ingress.port]]` for one port,
//! `local.allow_cgroups`) are unioned; one `[[egress]]` block per cgroup across all
//! files. Conflicts name both places, because either file may be the one to fix.
//!
//! Cross-file checks are skipped when a file could not be read completely (syntax
//! error, unsupported version) or a value they depend on was itself invalid: that
//! problem is already reported, and guessing past it would add noise, not information.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use crate::cgroup::CgroupPath;
use crate::diagnostic::{Diagnostic, Origin};
use crate::model::{EgressPolicy, Ingress, Located, Mode, Policy, PortIngress};

/// What one file says, checked on its own; the input of [`merge`].
#[derive(Debug)]
pub(crate) struct Fragment {
    pub(crate) file: Arc<Path>,
    /// False if parts of the file could not be read (syntax error, unreadable,
    /// unsupported version): absent keys then prove nothing.
    pub(crate) complete: bool,
    pub(crate) ports: Option<ListDecl<u16>>,
    /// The top-level `mode`: the default of every section.
    pub(crate) mode: Option<ListDecl<Mode>>,
    pub(crate) ingress_mode: Option<ListDecl<Mode>>,
    pub(crate) local_mode: Option<ListDecl<Mode>>,
    /// `None` if the file does not mention `server_cgroups`.
    pub(crate) server_cgroups: Option<Vec<Located<CgroupPath>>>,
    pub(crate) interfaces: Option<ListDecl<String>>,
    pub(crate) ingress_allow: Vec<Located<IpNet>>,
    pub(crate) per_port: Vec<PerPortDecl>,
    pub(crate) local_allow: Vec<Located<CgroupPath>>,
    pub(crate) egress: Vec<EgressDecl>,
    pub(crate) remote: Vec<crate::model::RemoteAccess>,
}

impl Fragment {
    pub(crate) fn empty(file: Arc<Path>) -> Self {
        Self {
            file,
            complete: true,
            ports: None,
            mode: None,
            ingress_mode: None,
            local_mode: None,
            server_cgroups: None,
            interfaces: None,
            ingress_allow: Vec::new(),
            per_port: Vec::new(),
            local_allow: Vec::new(),
            egress: Vec::new(),
            remote: Vec::new(),
        }
    }
}

/// A set-valued key that must agree across files (`service.ports`, `ingress.interfaces`).
#[derive(Debug)]
pub(crate) struct ListDecl<T> {
    /// Sorted, deduplicated.
    pub(crate) values: Vec<T>,
    /// False if what the author meant is unknown (wrong type, empty): cross-file checks
    /// against `values` are then skipped.
    pub(crate) valid: bool,
    pub(crate) origin: Origin,
}

#[derive(Debug)]
pub(crate) struct PerPortDecl {
    pub(crate) port: Located<u16>,
    /// The `[[ingress.port]]` block.
    pub(crate) block: Origin,
    pub(crate) allow: Vec<Located<IpNet>>,
}

#[derive(Debug)]
pub(crate) struct EgressDecl {
    pub(crate) cgroup_origin: Origin,
    /// The block's own `mode`, if it sets one.
    pub(crate) mode: Option<Mode>,
    pub(crate) policy: EgressPolicy,
}

/// Merges fragments (in the order given) into a policy, or reports every conflict.
/// `diagnostics` holds the per-file problems already found; the result fails if it is
/// not empty.
pub(crate) fn merge(
    fragments: Vec<Fragment>,
    mut diagnostics: Vec<Diagnostic>,
) -> Result<Policy, Vec<Diagnostic>> {
    let all_complete = fragments.iter().all(|f| f.complete);
    let sources: Vec<PathBuf> = fragments.iter().map(|f| f.file.to_path_buf()).collect();
    let first_file = fragments.first().map(|f| f.file.clone());

    let ports = agree(
        fragments.iter().filter_map(|f| f.ports.as_ref()),
        "service.ports",
        &mut diagnostics,
    );
    let ports_known = all_complete && ports.as_ref().is_some_and(|p| p.complete);
    let interfaces = agree(
        fragments.iter().filter_map(|f| f.interfaces.as_ref()),
        "ingress.interfaces",
        &mut diagnostics,
    );

    // A section's `mode` overrides the top-level one; each may be set in several
    // files only if they agree, like `service.ports`.
    let mut mode_of = |name: &str, pick: fn(&Fragment) -> Option<&ListDecl<Mode>>| {
        agree(fragments.iter().filter_map(pick), name, &mut diagnostics)
            .and_then(|a| a.values.first().copied())
    };
    let default_mode = mode_of("mode", |f| f.mode.as_ref()).unwrap_or_default();
    let ingress_mode = mode_of("ingress.mode", |f| f.ingress_mode.as_ref()).unwrap_or(default_mode);
    let local_mode = mode_of("local.mode", |f| f.local_mode.as_ref()).unwrap_or(default_mode);

    if ports.is_none() && all_complete {
        let origin = first_file
            .clone()
            .map_or_else(|| Origin::start_of(Path::new("<policy>")), Origin::start_of);
        diagnostics.push(Diagnostic::new(
            origin,
            "no protected ports: no policy file sets `ports` in [service]",
        ));
    }
    let server_declared = fragments.iter().any(|f| f.server_cgroups.is_some());
    if let Some(p) = &ports
        && !server_declared
        && all_complete
    {
        diagnostics.push(Diagnostic::new(
            p.origin.clone(),
            "no file sets service.server_cgroups: nothing could bind the protected ports; \
             name the server's cgroup, or write `server_cgroups = []` to forbid binding them",
        ));
    }

    let mut server_cgroups = Vec::new();
    let mut local_allow = Vec::new();
    let mut ingress_allow = Vec::new();
    let mut per_port: BTreeMap<u16, PortIngress> = BTreeMap::new();
    let mut egress: Vec<EgressDecl> = Vec::new();
    let mut egress_seen: HashMap<CgroupPath, Origin> = HashMap::new();
    let mut remote = Vec::new();
    for frag in fragments {
        remote.extend(frag.remote);
        union(&mut server_cgroups, frag.server_cgroups.unwrap_or_default());
        union(&mut local_allow, frag.local_allow);
        union(&mut ingress_allow, frag.ingress_allow);
        for decl in frag.per_port {
            let port = decl.port.value;
            if let Some(p) = &ports
                && ports_known
                && !p.values.contains(&port)
            {
                let listed = list(&p.values);
                diagnostics.push(Diagnostic::new(
                    decl.port.origin.clone(),
                    format!(
                        "ingress.port {port} is not a protected port (service.ports is [{listed}] \
                         at {}); add it there or remove this block",
                        p.origin
                    ),
                ));
            }
            let entry = per_port.entry(port).or_insert_with(|| PortIngress {
                port,
                allow: Vec::new(),
                origin: decl.block.clone(),
            });
            union(&mut entry.allow, decl.allow);
        }
        for decl in frag.egress {
            if let Some(first) = egress_seen.get(&decl.policy.cgroup) {
                diagnostics.push(Diagnostic::new(
                    decl.cgroup_origin.clone(),
                    format!(
                        "[[egress]] for cgroup `{}` conflicts with {first}: one block per cgroup; \
                         merge their rules into one",
                        decl.policy.cgroup
                    ),
                ));
                continue;
            }
            egress_seen.insert(decl.policy.cgroup.clone(), decl.cgroup_origin.clone());
            let mut decl = decl;
            decl.policy.mode = decl.mode.unwrap_or(default_mode);
            egress.push(decl);
        }
    }

    if !diagnostics.is_empty() {
        sort_diagnostics(&mut diagnostics, &sources);
        return Err(diagnostics);
    }
    let Some(ports) = ports else {
        // Unreachable: no ports and no diagnostics means the check above was skipped,
        // which needs an incomplete file, which always comes with a diagnostic.
        let origin = Origin::start_of(Path::new("<policy>"));
        return Err(vec![Diagnostic::new(origin, "no protected ports")]);
    };
    Ok(Policy {
        ports: ports.values,
        server_cgroups,
        ingress: Ingress {
            interfaces: interfaces.map_or_else(|| vec!["*".to_owned()], |i| i.values),
            allow: ingress_allow,
            per_port: per_port.into_values().collect(),
            mode: ingress_mode,
        },
        local_allow,
        local_mode,
        egress: egress.into_iter().map(|e| e.policy).collect(),
        remote,
        sources,
    })
}

/// The agreed value of a key that every file setting it must set identically.
struct Agreed<T> {
    values: Vec<T>,
    origin: Origin,
    /// False if any declaration was invalid.
    complete: bool,
}

fn agree<'a, T: PartialEq + Clone + ListItem + 'a>(
    decls: impl Iterator<Item = &'a ListDecl<T>>,
    name: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Agreed<T>> {
    let mut agreed: Option<Agreed<T>> = None;
    for decl in decls {
        match &mut agreed {
            None => {
                agreed = Some(Agreed {
                    values: decl.values.clone(),
                    origin: decl.origin.clone(),
                    complete: decl.valid,
                });
            }
            Some(first) => {
                if !decl.valid || !first.complete {
                    first.complete &= decl.valid;
                    continue;
                }
                if decl.values != first.values {
                    diagnostics.push(Diagnostic::new(
                        decl.origin.clone(),
                        format!(
                            "{name} conflicts with {} ([{}] there, [{}] here); every file that \
                             sets {name} must set the same values",
                            first.origin,
                            list(&first.values),
                            list(&decl.values),
                        ),
                    ));
                }
            }
        }
    }
    agreed
}

/// How a list element is written back in a message.
pub(crate) trait ListItem {
    fn render(&self) -> String;
}

impl ListItem for u16 {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl ListItem for Mode {
    fn render(&self) -> String {
        format!("{:?}", self.as_str())
    }
}

impl ListItem for String {
    fn render(&self) -> String {
        format!("{self:?}")
    }
}

fn list<T: ListItem>(values: &[T]) -> String {
    values
        .iter()
        .map(ListItem::render)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends the values of `more` not already in `into` (by value; the first origin wins).
fn union<T: Eq + Hash + Clone>(into: &mut Vec<Located<T>>, more: Vec<Located<T>>) {
    let mut have: HashSet<T> = into.iter().map(|l| l.value.clone()).collect();
    into.extend(
        more.into_iter()
            .filter(|item| have.insert(item.value.clone())),
    );
}

/// File order (as merged), then line and column; discovery order among equals.
fn sort_diagnostics(diagnostics: &mut [Diagnostic], sources: &[PathBuf]) {
    let rank = |d: &Diagnostic| {
        sources
            .iter()
            .position(|s| **s == *d.origin.file)
            .unwrap_or(usize::MAX)
    };
    diagnostics.sort_by(|a, b| {
        (rank(a), a.origin.line, a.origin.col).cmp(&(rank(b), b.origin.line, b.origin.col))
    });
}
