include!("../lb-ebpf/build-object.rs");

/// Builds lb-ebpf's kernel object (`lb`) into OUT_DIR, where lbd embeds it.
fn main() -> anyhow::Result<()> {
    build_ebpf_object(&[])
}
