include!("../lb-ebpf/build-object.rs");

/// Builds lb-ebpf with its bench programs (`bench-harness`, `bench-traffic`) into OUT_DIR,
/// where lb-bench embeds them.
fn main() -> anyhow::Result<()> {
    build_ebpf_object(&["bench"])
}
