//! What the kernel programs need from the running kernel, probed before they
//! are loaded: a missing piece is named with the Linux version that has it,
//! instead of surfacing as a verifier log (docs/OPERATIONS.md, "Kernels").

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// One requirement: what needs it, the first Linux version that has it.
struct Need {
    what: &'static str,
    since: &'static str,
    present: fn() -> bool,
}

fn helper(p: ProgramType, h: BpfHelper) -> bool {
    is_helper_supported(p, h).unwrap_or(false)
}

/// bpf_link for cgroup programs (5.7) and XDP (5.9) cannot be probed without
/// attaching something: judged by the version (backports would only make a
/// kernel pass that we call too old).
fn at_least(major: u8, minor: u8) -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(major, minor, 0))
}

const NEEDS: &[Need] = &[
    Need {
        what: "cgroup sock_addr programs (connect, sendmsg, bind hooks)",
        since: "4.17",
        present: || is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false),
    },
    Need {
        what: "cgroup_skb programs (the packets a cgroup sends and receives)",
        since: "4.10",
        present: || is_program_supported(ProgramType::CgroupSkb).unwrap_or(false),
    },
    Need {
        what: "XDP programs",
        since: "4.8",
        present: || is_program_supported(ProgramType::Xdp).unwrap_or(false),
    },
    Need {
        what: "BPF ring buffer (events)",
        since: "5.8",
        present: || is_map_supported(MapType::RingBuf).unwrap_or(false),
    },
    Need {
        what: "LPM trie maps (prefix allowlists)",
        since: "4.11",
        present: || is_map_supported(MapType::LpmTrie).unwrap_or(false),
    },
    Need {
        what: "bpf_get_current_ancestor_cgroup_id (policies on parent cgroups)",
        since: "5.7",
        present: || {
            helper(
                ProgramType::CgroupSockAddr,
                BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
            )
        },
    },
    Need {
        what: "bpf_skb_ancestor_cgroup_id (a packet's socket owner)",
        since: "4.19",
        present: || {
            helper(
                ProgramType::CgroupSkb,
                BpfHelper::BPF_FUNC_skb_ancestor_cgroup_id,
            )
        },
    },
    Need {
        what: "bpf_ktime_get_coarse_ns (the event budget's clock)",
        since: "5.11",
        present: || helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ktime_get_coarse_ns),
    },
    Need {
        what: "bpf_ktime_get_boot_ns (event timestamps)",
        since: "5.8",
        present: || helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_ktime_get_boot_ns),
    },
    Need {
        what: "bpf_link for cgroup programs (enforcement pinned past the daemon)",
        since: "5.7",
        present: || at_least(5, 7),
    },
    Need {
        what: "bpf_link for XDP",
        since: "5.9",
        present: || at_least(5, 9),
    },
];

/// What the running kernel lacks, one line each ("X (Linux >= V)"); empty when
/// the eBPF backend can load.
pub fn missing() -> Vec<String> {
    NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| format!("{} (Linux >= {})", n.what, n.since))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernel_that_builds_warden_has_everything() {
        // The development and CI kernels are newer than every requirement;
        // a probe that wrongly fails would turn the eBPF backend off. Probing
        // loads programs: without privileges it proves nothing.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: probing the kernel needs root");
            return;
        }
        assert_eq!(super::missing(), Vec::<String>::new());
    }
}
