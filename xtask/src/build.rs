//! `cargo xtask build`: setup, then the release binaries (lbd, lbctl, lb-bench). lb-userspace's
//! build script builds the eBPF object along the way.

use anyhow::Result;

use crate::run::{cargo, run};

pub fn build() -> Result<()> {
    crate::setup::setup()?;
    run(
        cargo().args([
            "build",
            "--release",
            "--package",
            "lb-userspace",
            "--package",
            "bench",
        ]),
        "build: cargo build",
        "see the compiler output above",
    )
}
