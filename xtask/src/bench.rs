//! `cargo xtask bench [SUBCOMMAND [ARGS...]]`: build, then `lb-bench bench <SUBCOMMAND> [ARGS...]`;
//! without a subcommand, every benchmark there is (`micro`, `control`, `pps`, `oracle`,
//! `tcp`), then `report`, which gathers their results into `bench/results/<date>.{json,md,svg}`.

use std::process::Command;

use anyhow::Result;

use crate::run::{release_bin, run, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `lb-bench bench` subcommand (e.g. `micro`) and its arguments; none runs them all
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// What `cargo xtask bench` runs without a subcommand.
const ALL: &[&str] = &["micro", "control", "pps", "oracle", "tcp", "report"];

pub fn bench(args: Args) -> Result<()> {
    crate::build::build()?;
    if args.args.is_empty() {
        for benchmark in ALL {
            run_one(&[(*benchmark).to_owned()])?;
        }
        return Ok(());
    }
    run_one(&args.args)
}

/// Benchmarks that run the daemon get the freshly built one (their own default is the
/// relative `target/release/lbd`, another build's under `CARGO_TARGET_DIR`).
const NEED_LBD: &[&str] = &["control", "pps", "oracle", "tcp"];

fn run_one(args: &[String]) -> Result<()> {
    let mut cmd = Command::new(release_bin("lb-bench"));
    cmd.current_dir(workspace_root()).arg("bench").args(args);
    if args
        .first()
        .is_some_and(|name| NEED_LBD.contains(&name.as_str()))
        && !args.iter().any(|a| a == "--lbd")
    {
        cmd.arg("--lbd").arg(release_bin("lbd"));
    }
    run(&mut cmd, "bench: lb-bench bench", "see its output above")
}
