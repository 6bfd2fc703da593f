//! Builds `profiler-ebpf` for the BPF target with aya-build; the object is
//! embedded into the `heapscope` binary with `include_bytes_aligned!`.
use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("profiler-user has no parent directory")?
        .join("profiler-ebpf");
    let root = root.to_str().context("profiler-ebpf path is not UTF-8")?;
    println!("cargo:rerun-if-changed=../profiler-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building profiler-ebpf (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}
