use which::which;

/// Rebuild the kernel program when bpf-linker changes (it does the final link).
fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker is not on PATH: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("bpf-linker path is UTF-8")
    );
}
