//! `cargo xtask demo`: build, then `lb-bench demo --lbd target/release/lbd [ARGS...]`.

use std::process::Command;

use anyhow::Result;

use crate::run::{release_bin, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Extra arguments for `lb-bench demo`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn demo(args: Args) -> Result<()> {
    crate::build::build()?;
    run(
        Command::new(release_bin("lb-bench"))
            .current_dir(workspace_root())
            .arg("demo")
            .arg("--lbd")
            .arg(release_bin("lbd"))
            .args(&args.args),
        "demo: lb-bench demo",
        "see its output above",
    )
}
