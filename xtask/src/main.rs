//! `cargo xtask setup | build | test | demo | bench`: meshlb's developer commands.
//!
//! Every command first runs `setup`, which installs (idempotently, as root) what the others
//! need. A failure ends with one line saying what failed and what to do, and exit code 1.

mod bench;
mod build;
mod demo;
#[cfg(test)]
mod layout;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "meshlb's developer commands (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the Debian packages, nightly Rust with rust-src and bpf-linker, and mount bpffs
    /// (idempotent; every other command runs it first)
    Setup,
    /// Build lbd, lbctl and lb-bench in release mode (and the eBPF object with them)
    Build,
    /// Run the whole test suite, end-to-end tests included: `cargo xtask test [FILTER] [-- --nocapture]`
    Test(test::Args),
    /// Build, then run the demo: `lb-bench demo --lbd target/release/lbd [ARGS...]`
    Demo(demo::Args),
    /// Build, then run a benchmark: `lb-bench bench <SUBCOMMAND> [ARGS...]`, e.g. `cargo xtask bench micro`
    Bench(bench::Args),
}

fn main() -> ExitCode {
    // Before any thread exists: make sure `cargo install`ed tools (bpf-linker) and the rustup
    // proxies are found, by us and by every cargo we start, even under sudo's PATH.
    if let Some(dir) = run::cargo_bin_dir()
        && let Some(path) = run::prepend_path(&dir, std::env::var_os("PATH").as_deref())
    {
        // SAFETY: single-threaded here; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PATH", path) };
    }

    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        Task::Build => build::build(),
        Task::Test(args) => test::test(args),
        Task::Demo(args) => demo::demo(args),
        Task::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap_or_else(|err| panic!("{args:?}: {err}"))
            .task
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn test_args() {
        let Task::Test(args) = parse(&["test"]) else {
            panic!()
        };
        assert!(args.cargo_args.is_empty() && args.test_args.is_empty());

        let Task::Test(args) = parse(&["test", "--", "--nocapture"]) else {
            panic!()
        };
        assert!(args.cargo_args.is_empty());
        assert_eq!(args.test_args, ["--nocapture"]);

        let Task::Test(args) = parse(&["test", "e2e", "--", "--nocapture", "--test-threads=1"])
        else {
            panic!()
        };
        assert_eq!(args.cargo_args, ["e2e"]);
        assert_eq!(args.test_args, ["--nocapture", "--test-threads=1"]);

        let Task::Test(args) = parse(&["test", "--package", "lb-userspace", "xdp"]) else {
            panic!()
        };
        assert_eq!(args.cargo_args, ["--package", "lb-userspace", "xdp"]);
        assert!(args.test_args.is_empty());

        let Task::Test(args) = parse(&["test", "-p", "bench", "--", "filter", "--exact"]) else {
            panic!()
        };
        assert_eq!(args.cargo_args, ["-p", "bench"]);
        assert_eq!(args.test_args, ["filter", "--exact"]);

        let Task::Test(args) = parse(&["test", "--", "a", "--", "b"]) else {
            panic!()
        };
        assert!(args.cargo_args.is_empty());
        assert_eq!(args.test_args, ["a", "--", "b"]);
    }

    #[test]
    fn passthrough_args() {
        let Task::Demo(args) = parse(&["demo"]) else {
            panic!()
        };
        assert!(args.args.is_empty());

        let Task::Demo(args) = parse(&["demo", "--duration", "5"]) else {
            panic!()
        };
        assert_eq!(args.args, ["--duration", "5"]);

        let Task::Demo(args) = parse(&["demo", "--swarm"]) else {
            panic!()
        };
        assert_eq!(args.args, ["--swarm"]);

        let Task::Bench(args) = parse(&["bench", "micro", "--iterations", "10"]) else {
            panic!()
        };
        assert_eq!(args.args, ["micro", "--iterations", "10"]);

        let Task::Bench(args) = parse(&["bench", "--", "--help"]) else {
            panic!()
        };
        assert_eq!(args.args, ["--help"]);
    }
}
