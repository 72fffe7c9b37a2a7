//! `cargo xtask bench <SUBCOMMAND> [ARGS...]`: build, then `lb-bench bench <SUBCOMMAND> [ARGS...]`.

use std::process::Command;

use anyhow::Result;

use crate::run::{release_bin, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `lb-bench bench` subcommand (e.g. `micro`) and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn bench(args: Args) -> Result<()> {
    crate::build::build()?;
    run(
        Command::new(release_bin("lb-bench"))
            .current_dir(workspace_root())
            .arg("bench")
            .args(&args.args),
        "bench: lb-bench bench",
        "see its output above",
    )
}
