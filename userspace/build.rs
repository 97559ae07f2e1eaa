//! Builds the eBPF object (crate `warden-ebpf`) with aya-build, so `cargo build`
//! of the userspace crate produces a binary that embeds its kernel programs.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "warden-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
            no_default_features: false,
            features: &[],
        }],
        aya_build::Toolchain::default(),
    )
}
