//! Builds the eBPF object (crate `warden-ebpf`) with aya-build, so `cargo build`
//! of the userspace crate produces a binary that embeds its kernel programs.
//!
//! With `AYA_BUILD_SKIP=1` (used by `cargo xtask test` for clippy, which never runs
//! the binary) an empty placeholder object is written instead.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../common/src");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("warden-ebpf");
        std::fs::write(out, [])?;
    }
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
