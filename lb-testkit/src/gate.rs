//! Whether the privileged tests run here.

/// True when `MESHLB_E2E` is set (as `cargo xtask test` does); false, after saying so,
/// otherwise. Panics when it is set but the process is not root: a run that asked for the
/// kernel tests must not pass by skipping them.
pub fn e2e_enabled() -> bool {
    if std::env::var_os("MESHLB_E2E").is_none() {
        println!(
            "skipped: set MESHLB_E2E=1 (as root) to run the kernel tests, or use `cargo xtask test`"
        );
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "MESHLB_E2E is set but these tests need root"
    );
    true
}
