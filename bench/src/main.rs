//! lb-bench: meshlb's demo, traffic generator and benchmarks.

mod demo;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
    }
}
