//! What the daemon's event loop waits on: the kernel's records (ring buffer
//! or NFLOG) and debug log, the policy files, the policy's cgroups, new
//! interfaces, and its timers.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use warden_enforce::Backend;
use warden_enforce::compile::Compiled;
use warden_enforce::kernel_log::KernelLogger;
use warden_enforce::nflog::NflogSocket;
use warden_runtime::watch::{CgroupWatch, LinkWatch, PolicyWatch};

use crate::enforcer::Enforcer;
use crate::run::DaemonError;

pub struct Inputs {
    pub ring: Option<AsyncFd<RingBuf<MapData>>>,
    pub kernel_log: Option<AsyncFd<KernelLogger>>,
    /// The nft backend's records come back through NFLOG.
    pub nflog: Option<AsyncFd<NflogSocket>>,
    pub policy_watch: Option<AsyncFd<PolicyWatch>>,
    /// The parents of the policy's cgroups, for the policy `watching`.
    pub cgroup_watch: AsyncFd<CgroupWatch>,
    watching: Arc<Compiled>,
    /// New interfaces get XDP at once (eBPF: nft's table hooks every interface).
    pub link_watch: Option<AsyncFd<LinkWatch>>,
    pub rescan: tokio::time::Interval,
    pub loss_report: tokio::time::Interval,
    cgroup2: std::path::PathBuf,
}

impl Inputs {
    pub fn open(d: &mut Enforcer) -> Result<Self, DaemonError> {
        let ebpf = matches!(d.backend, Backend::Ebpf(_));
        let nflog = match &d.backend {
            Backend::Nft(_) => match NflogSocket::bind(warden_enforce::nft::LOG_GROUP) {
                Ok(sock) => Some(readable(sock)?),
                Err(e) => {
                    tracing::warn!(
                        "cannot read NFLOG events ({e}); verdicts are enforced and counted, not reported"
                    );
                    None
                }
            },
            Backend::Ebpf(_) => None,
        };
        let policy_watch = match d.opts.policy.is_empty() {
            true => None,
            false => Some(readable(PolicyWatch::new(&d.opts.policy)?)?),
        };
        let cgroup2 = warden_runtime::cgroupfs::cgroup2_mount()
            .map_err(warden_enforce::EnforceError::from)?;
        Ok(Self {
            ring: d.backend.take_events().map(readable).transpose()?,
            kernel_log: d.backend.take_kernel_logger().map(readable).transpose()?,
            nflog,
            policy_watch,
            cgroup_watch: watch_cgroups(&cgroup2, &d.current)?,
            watching: d.current.clone(),
            link_watch: ebpf
                .then(LinkWatch::new)
                .transpose()?
                .map(readable)
                .transpose()?,
            rescan: tokio::time::interval(d.opts.rescan),
            loss_report: tokio::time::interval(d.opts.loss_report),
            cgroup2,
        })
    }

    /// A reload may name other cgroups: watch those of the policy in force.
    pub fn follow_policy_cgroups(&mut self, current: &Arc<Compiled>) -> Result<(), DaemonError> {
        if !Arc::ptr_eq(&self.watching, current) {
            self.cgroup_watch = watch_cgroups(&self.cgroup2, current)?;
            self.watching = current.clone();
        }
        Ok(())
    }
}

/// Whether a watch saw a change; its readiness is consumed.
pub fn changed<T: Changed>(mut guard: AsyncFdReadyMutGuard<'_, T>) -> bool {
    let changed = guard.get_inner_mut().changed();
    guard.clear_ready();
    changed
}

/// A watch that reads its pending notifications without blocking.
pub trait Changed: std::os::fd::AsRawFd {
    fn changed(&mut self) -> bool;
}

impl Changed for PolicyWatch {
    fn changed(&mut self) -> bool {
        PolicyWatch::changed(self)
    }
}

impl Changed for CgroupWatch {
    fn changed(&mut self) -> bool {
        CgroupWatch::changed(self)
    }
}

impl Changed for LinkWatch {
    fn changed(&mut self) -> bool {
        LinkWatch::changed(self)
    }
}

fn readable<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: each input owns its descriptor and keeps it open until dropped,
    // which is after the AsyncFd that registered it.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| DaemonError::Io(e.into()))
}

/// Watches the parents of the policy's cgroups.
fn watch_cgroups(
    cgroup2: &std::path::Path,
    compiled: &Compiled,
) -> Result<AsyncFd<CgroupWatch>, DaemonError> {
    let paths = compiled
        .cgroups
        .iter()
        .map(|g| g.cgroup.as_str().to_owned())
        .chain(compiled.egress.iter().map(|e| e.cgroup.as_str().to_owned()))
        .collect();
    readable(CgroupWatch::new(cgroup2, paths)?)
}
