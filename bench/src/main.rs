//! lb-bench: meshlb's demo, traffic generator and benchmarks.

mod control;
mod demo;
mod micro;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lb-bench",
    about = "meshlb demo, traffic generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Client, node running lbd, three backends: real connections and where they went.
    Demo(demo::DemoArgs),
    /// Benchmarks (`cargo xtask bench <NAME>` builds first, then runs `lb-bench bench <NAME>`).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// ns per packet of the XDP program with BPF_PROG_TEST_RUN, measured the way
    /// katran-perf.md measured Katran; writes bench/results/micro-<date>.{md,json}.
    Micro(micro::MicroArgs),
    /// Control plane: time to apply N services x B backends from a file, and `lbctl
    /// add-backend` latency to the first packet; writes bench/results/control-<date>.{md,json}.
    Control(control::ControlArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(Bench::Micro(args)) => micro::run(&args),
        Command::Bench(Bench::Control(args)) => control::run(&args),
    }
}
