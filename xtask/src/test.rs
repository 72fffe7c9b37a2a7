//! `cargo xtask test`: setup, then the whole test suite, end-to-end and BPF_PROG_TEST_RUN
//! tests included (MESHLB_E2E=1 makes them fail rather than skip when they cannot run).

use std::process::Command;

use anyhow::Result;

use crate::run::{cargo, run};

/// Network namespaces the tests create are named with this prefix.
const NETNS_PREFIX: &str = "mlb-";

#[derive(Debug, clap::Args)]
#[command(override_usage = "cargo xtask test [CARGO_TEST_ARGS]... [-- TEST_BINARY_ARGS...]")]
pub struct Args {
    /// Extra arguments for `cargo test`, e.g. a test name filter or `--package lb-userspace`
    #[arg(
        allow_hyphen_values = true,
        value_terminator = "--",
        value_name = "CARGO_TEST_ARGS"
    )]
    pub cargo_args: Vec<String>,
    /// Arguments for the test binaries, after `--`, e.g. `-- --nocapture`
    #[arg(allow_hyphen_values = true, value_name = "TEST_BINARY_ARGS")]
    pub test_args: Vec<String>,
}

pub fn test(args: Args) -> Result<()> {
    crate::setup::setup()?;
    clean_netns();
    clean_pins();
    let mut cmd = cargo();
    cmd.env("MESHLB_E2E", "1")
        .env("RUST_BACKTRACE", "1")
        .args(cargo_test_args(&args.cargo_args, &args.test_args));
    run(&mut cmd, "test: cargo test", "see the test output above")
}

/// `cargo test` and its arguments: the whole workspace, all targets, unless the caller picked
/// packages (cargo ignores `--package` next to `--workspace`).
///
/// lb-ebpf is left out: it is only ever built for the BPF target (by lb-userspace's build
/// script), and its `#![no_main]` program binary cannot link as a host test executable.
pub fn cargo_test_args(cargo_args: &[String], test_args: &[String]) -> Vec<String> {
    let picks_packages = cargo_args
        .iter()
        .any(|arg| arg == "--package" || arg.starts_with("--package=") || arg.starts_with("-p"));
    let mut args: Vec<String> = vec!["test".into()];
    if !picks_packages {
        args.extend(["--workspace", "--exclude", "lb-ebpf"].map(String::from));
    }
    // Every test binary runs even when one fails: a failure early in the order must not
    // hide the state of the suites after it (the exit status still says it failed).
    args.extend(["--all-targets", "--no-fail-fast"].map(String::from));
    args.extend_from_slice(cargo_args);
    if !test_args.is_empty() {
        args.push("--".into());
        args.extend_from_slice(test_args);
    }
    args
}

/// Deletes network namespaces left over by earlier (killed) test runs. Only warns on trouble:
/// the tests themselves report what they cannot set up.
fn clean_netns() {
    let output = match Command::new("ip").args(["netns", "list"]).output() {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            eprintln!(
                "test: warning: `ip netns list` failed ({}); not cleaning up {NETNS_PREFIX}* \
                 network namespaces",
                crate::run::describe(output.status)
            );
            return;
        }
        Err(err) => {
            eprintln!(
                "test: warning: could not run `ip netns list` ({err}); not cleaning up \
                 {NETNS_PREFIX}* network namespaces"
            );
            return;
        }
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    let leftovers = leftover_netns(&listing);
    if leftovers.is_empty() {
        println!("test: no leftover {NETNS_PREFIX}* network namespaces");
        return;
    }
    println!(
        "test: deleting {} leftover network namespace(s): {}",
        leftovers.len(),
        leftovers.join(" ")
    );
    for name in leftovers {
        if let Err(err) = run(
            Command::new("ip").args(["netns", "del", name]),
            &format!("test: ip netns del {name}"),
            "continuing",
        ) {
            eprintln!("test: warning: {err}");
        }
    }
}

/// Removes pin directories (`/sys/fs/bpf/mlb-pins-<pid>-<n>`) that killed test runs left:
/// each holds an attached program's links and a connection table.
fn clean_pins() {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in leftover_pins(&names) {
        let path = std::path::Path::new(PIN_ROOT).join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => println!("test: removed leftover pins {}", path.display()),
            Err(err) => eprintln!("test: warning: removing {}: {err}", path.display()),
        }
    }
}

/// Where the test kit pins (lb_testkit::lbd::PIN_ROOT).
const PIN_ROOT: &str = "/sys/fs/bpf";

/// The namespaces in `ip netns list` output ("name" or "name (id: N)" per line) that the tests
/// created.
pub fn leftover_netns(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
        // The test kit names them mlb-<what>-<pid>-<n>: a namespace whose process still runs
        // (a demo, a benchmark, another test run) is not a leftover.
        .filter(|name| owner_pid(name).is_none_or(|pid| !process_alive(pid)))
        .collect()
}

/// The test kit's pin directories (`mlb-<what>-<pid>-<n>`) whose process is gone. Unlike
/// namespaces, a name without such a pid is kept: pins are removed only when a dead test
/// process is known to own them, never a live test's (or anything else's) by guess.
pub fn leftover_pins(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with(NETNS_PREFIX))
        .filter(|name| owner_pid(name).is_some_and(|pid| !process_alive(pid)))
        .collect()
}

/// The pid in a name of the form `mlb-<what>-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn cargo_test_command() {
        assert_eq!(
            cargo_test_args(&[], &[]),
            [
                "test",
                "--workspace",
                "--exclude",
                "lb-ebpf",
                "--all-targets",
                "--no-fail-fast"
            ]
        );
        assert_eq!(
            cargo_test_args(&strings(&["e2e"]), &strings(&["--nocapture"])),
            [
                "test",
                "--workspace",
                "--exclude",
                "lb-ebpf",
                "--all-targets",
                "--no-fail-fast",
                "e2e",
                "--",
                "--nocapture"
            ]
        );
        for pick in [
            &["-p", "bench"][..],
            &["--package", "bench"],
            &["--package=bench"],
            &["-pbench"],
        ] {
            assert_eq!(
                cargo_test_args(&strings(pick), &[]),
                [&["test", "--all-targets", "--no-fail-fast"][..], pick].concat()
            );
        }
    }

    #[test]
    fn netns_listing() {
        let listing = "mlb-e2e-1 (id: 3)\nother\nmlb-bench\ncni-mlb-x (id: 1)\nmlbx\n";
        assert_eq!(leftover_netns(listing), ["mlb-e2e-1", "mlb-bench"]);
        // Our own pid is alive: its namespaces are not leftovers; a dead pid's are.
        let mine = format!("mlb-node-{}-0", std::process::id());
        let dead = "mlb-node-4294967290-3";
        assert_eq!(leftover_netns(&format!("{mine}\n{dead}\n")), [dead]);
        assert!(leftover_netns("").is_empty());
    }

    #[test]
    fn pin_listing() {
        let dead = "mlb-pins-4294967290-3";
        let mine = format!("mlb-pins-{}-0", std::process::id());
        let names = strings(&[
            dead,
            &mine,
            // Names with no pid and counter: never taken for leftovers, whoever made them.
            &format!("mlb-pins-{}-layout", std::process::id()),
            &format!("mlb-second-{}", std::process::id()),
            "mlb-bench",
            "meshlb",
            "other-pins-4294967290-3",
        ]);
        assert_eq!(leftover_pins(&names), [dead]);
    }
}
