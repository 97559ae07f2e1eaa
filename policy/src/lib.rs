//! Reads ollama-warden policy files: TOML that a security team pushes, checked and
//! merged into one typed [`Policy`] that the enforcement backends compile.
//!
//! Every problem in every file is reported in one run as a [`Diagnostic`]
//! (`file:line:col: message`, with a fix when there is an obvious one); a policy with any
//! problem is rejected whole, so a typo can never quietly weaken enforcement. No input
//! makes this crate panic.
//!
//! Modules, in the order data flows through them:
//!
//! - `load`: paths to texts (directories contribute their `*.toml` files, sorted).
//! - `parse`: one file's text to a fragment, using the span-preserving toml_edit
//!   document; reading tables and keys is in `walk`. Values are checked by
//!   `cgroup` ([`CgroupPath`]), `net` (CIDRs) and `ports` ([`PortRange`], [`Proto`]).
//! - `merge`: fragments to a [`Policy`]: unions, conflicts, cross-file checks.
//! - `model`: the [`Policy`] types; `digest`: its semantic fingerprint.
//! - `diagnostic`: [`Origin`], [`Diagnostic`], offsets to line and column.
//!
//! The file format is documented on [`POLICY_REFERENCE`] and in `policies/examples/`.

mod cgroup;
mod diagnostic;
mod digest;
mod host;
mod load;
mod merge;
mod model;
mod net;
mod parse;
mod ports;
pub mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cgroup::{CgroupPath, CgroupPathError, MAX_DEPTH as MAX_CGROUP_DEPTH, OWN_POD};
pub use diagnostic::{Diagnostic, Origin};
pub use host::{HostError, HostPattern};
pub use load::Verifier;
pub use model::{
    EgressPolicy, EgressRule, HostRule, Ingress, Located, Mode, Policy, PortIngress, RemoteAccess,
};
pub use net::{NetError, parse_net};
pub use parse::POLICY_VERSION;
pub use ports::{PortError, PortRange, Proto, ProtoError};

/// The policy enforced when the daemon is given none: Ollama's port reachable only from
/// this host, and only by the server's and warden's own cgroups.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policies/default.toml");

/// The name [`embedded_default`] gives its source in origins and [`Policy::sources`].
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded default>";

/// Policy file reference (v1), for `warden policy --help` and the docs.
pub const POLICY_REFERENCE: &str = include_str!("reference.md");

/// Parses one policy file's text; `file` is only used to name positions.
pub fn parse_str(file: &Path, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    parse_sources(&[(file, text)])
}

/// Parses and merges several files given as `(path, text)`, in this order, as if they
/// were read by [`load_paths`]. For callers that read the files themselves (and tests).
pub fn parse_sources<P: AsRef<Path>, S: AsRef<str>>(
    sources: &[(P, S)],
) -> Result<Policy, Vec<Diagnostic>> {
    let sources = sources
        .iter()
        .map(|(path, text)| load::Source::Text {
            path: Arc::from(path.as_ref()),
            text: text.as_ref().to_owned(),
        })
        .collect();
    load::parse_and_merge(sources)
}

/// Reads files and directories (each directory contributes its `*.toml` files, not
/// recursively, sorted by name; other files are ignored; a directory without any is an
/// error) and merges them in order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Policy, Vec<Diagnostic>> {
    load::parse_and_merge(load::read_sources(paths, None))
}

/// Like [`load_paths`], but every file's bytes must pass `verify` (for instance a
/// signature check) before they are parsed; a refused file is reported at its
/// first line with the verifier's reason.
pub fn load_paths_verified(
    paths: &[PathBuf],
    verify: Verifier<'_>,
) -> Result<Policy, Vec<Diagnostic>> {
    load::parse_and_merge(load::read_sources(paths, Some(verify)))
}

/// The built-in default policy ([`DEFAULT_POLICY_TOML`]).
pub fn embedded_default() -> Policy {
    match parse_str(Path::new(EMBEDDED_DEFAULT_NAME), DEFAULT_POLICY_TOML) {
        Ok(policy) => policy,
        // Compile-time constant, checked by the `embedded_default_is_valid` test.
        Err(diagnostics) => panic!("embedded default policy is invalid: {diagnostics:?}"),
    }
}

#[cfg(test)]
mod tests;
