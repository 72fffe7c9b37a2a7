// Shared by the build scripts of lb-userspace (the product's object, `lb`) and bench (with
// feature `bench`: its harness and traffic objects too), through `include!`: builds lb-ebpf for
// the BPF target and leaves each of its programs' objects in OUT_DIR, named after its bin.

/// Builds lb-ebpf with `features` for the BPF target into OUT_DIR.
fn build_ebpf_object(features: &[&str]) -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], aya_build::Toolchain::default())
}
