//! Builds the eBPF object (`agent-ebpf`) with the pinned nightly, the aya-template way, so a plain
//! `cargo build` produces a complete agent. The nightly is pinned because bpf-linker is built
//! against that nightly's own libLLVM; a different nightly breaks the link.
//!
//! Only with the `node` feature (the default): the client (`--no-default-features`) has no eBPF
//! object and builds with stable Rust alone.

#[cfg(not(feature = "node"))]
fn main() {}

#[cfg(feature = "node")]
fn main() -> anyhow::Result<()> {
    node::build_ebpf()
}

#[cfg(feature = "node")]
mod node {
    use anyhow::{Context as _, anyhow};

    /// Keep in step with xtask's `EBPF_TOOLCHAIN`.
    const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

    pub fn build_ebpf() -> anyhow::Result<()> {
        let metadata = cargo_metadata::MetadataCommand::new()
            .no_deps()
            .exec()
            .context("cargo metadata")?;
        let ebpf = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == "agent-ebpf")
            .ok_or_else(|| anyhow!("agent-ebpf package not found in the workspace"))?;
        let root_dir = ebpf
            .manifest_path
            .parent()
            .ok_or_else(|| anyhow!("agent-ebpf manifest has no parent"))?
            .as_str();
        aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .map_err(|e| {
        anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             fix: run `cargo xtask setup` (pinned {EBPF_TOOLCHAIN} with rust-src, bpf-linker 0.13 on PATH)"
        )
    })
    }
}
