//! lb-bench: meshlb's demo, traffic generator and benchmarks.

mod control;
mod demo;
mod demo_swarm;
mod micro;
mod objects;
mod oracle;
mod pps;
mod report;
mod results;
mod tcp;
mod tcp_host;
mod tcp_pairs;
mod tcp_swarm;
mod traffic;

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
    /// Traffic generator: BPF_PROG_TEST_RUN live frames from a generator namespace through
    /// a node (meshlb, nftables DNAT, kernel forwarding or the redirect-only ceiling) to an
    /// XDP sink that counts per backend; a progress line and a summary.
    Gen(traffic::GenArgs),
    /// Benchmarks (`cargo xtask bench <NAME>` builds first, then runs `lb-bench bench <NAME>`).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// ns per packet of the XDP program with BPF_PROG_TEST_RUN, measured the way
    /// bench/results/katran-reference.md describes for Katran; writes bench/results/micro-<date>.{md,json}.
    Micro(micro::MicroArgs),
    /// Control plane: time to apply N services x B backends from a file, and `lbctl
    /// add-backend` latency to the first packet; writes bench/results/control-<date>.{md,json}.
    Control(control::ControlArgs),
    /// Packets per second through the node, same run: meshlb XDP vs nftables DNAT vs kernel
    /// forwarding vs the redirect-only ceiling, then meshlb's scaling; writes
    /// bench/results/pps-<date>.{md,json}.
    Pps(pps::PpsArgs),
    /// Correctness oracle: replay flows through meshlb, change the backends (SIGHUP reload),
    /// replay; flows moved vs expected (Maglev, round-robin), balance, loss.
    Oracle(oracle::OracleArgs),
    /// Real TCP connections/s and keep-alive requests/s through meshlb vs nftables DNAT vs
    /// HAProxy (mode tcp) vs direct, in consecutive rounds.
    Tcp(tcp::TcpArgs),
    /// Gathers the day's results into bench/results/<date>.{json,md,svg}.
    Report(report::ReportArgs),
}

fn main() -> anyhow::Result<()> {
    // A Ctrl-C in a long bench must not leave lbd, HAProxy, namespaces or pinned maps behind.
    lb_testkit::interrupt::clean_up_on_interrupt()?;
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Gen(args) => traffic::run(&args),
        Command::Bench(Bench::Micro(args)) => micro::run(&args),
        Command::Bench(Bench::Control(args)) => control::run(&args),
        Command::Bench(Bench::Pps(args)) => pps::run(&args),
        Command::Bench(Bench::Oracle(args)) => oracle::run(&args),
        Command::Bench(Bench::Tcp(args)) if args.swarm => tcp_swarm::run(&args),
        Command::Bench(Bench::Tcp(args)) if args.host_local => tcp_host::run(&args),
        Command::Bench(Bench::Tcp(args)) => tcp::run(&args),
        Command::Bench(Bench::Report(args)) => report::run(&args),
    }
}
