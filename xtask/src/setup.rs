//! `cargo xtask setup`: installs, idempotently, what building and testing meshlb needs on
//! Debian 12. Every other command runs it first.

use std::{fs, process::Command};

use anyhow::{Result, bail};

use crate::run::{cargo, run};

/// Debian packages: LLVM 22 for bpf-linker, iproute2/ethtool/nftables for the tests and demo,
/// docker.io and busybox-static for the two-node swarm of the swarm tests (`lb_testkit::swarm`),
/// bird2 for the BGP/ECMP test (a router and two balancer nodes each run BIRD 2).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "haproxy",
    "docker.io",
    "busybox-static",
    "bird2",
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPFFS: &str = "/sys/fs/bpf";
const RERUN: &str = "then rerun cargo xtask setup";

pub fn setup() -> Result<()> {
    check_root()?;
    debian_packages()?;
    nightly_toolchain()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "setup: must run as root (it installs packages and loads eBPF programs); \
             run: sudo cargo xtask setup"
        );
    }
    println!("setup: running as root: yes");
    Ok(())
}

fn debian_packages() -> Result<()> {
    const STEP: &str = "setup: debian packages";
    // One query for all packages. dpkg-query exits 1 when some package is unknown to dpkg, but
    // still prints the others; missing lines count as not installed.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(PACKAGES)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) => bail!(
            "{STEP}: could not run dpkg-query ({err}); this setup needs Debian 12 with apt, or \
             install {} by hand",
            PACKAGES.join(" ")
        ),
    };
    let missing = missing_packages(PACKAGES, &String::from_utf8_lossy(&output.stdout));
    if missing.is_empty() {
        println!("{STEP}: already present ({})", PACKAGES.join(" "));
        return Ok(());
    }
    let missing = missing.join(" ");
    println!("{STEP}: installing {missing} ...");
    let hint = format!("check the apt sources and network, {RERUN}");
    run(
        Command::new("apt-get").arg("update"),
        "setup: apt-get update",
        &hint,
    )?;
    run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(missing.split(' ')),
        &format!("setup: apt-get install {missing}"),
        &hint,
    )
}

fn nightly_toolchain() -> Result<()> {
    const STEP: &str = "setup: rust nightly toolchain with rust-src";
    let hint = format!("check the network and `rustup show`, {RERUN}");
    let toolchains = match Command::new("rustup").args(["toolchain", "list"]).output() {
        Ok(output) if output.status.success() => output.stdout,
        Ok(output) => bail!(
            "{STEP}: `rustup toolchain list` failed ({}); {hint}",
            crate::run::describe(output.status)
        ),
        Err(err) => bail!(
            "{STEP}: could not run rustup ({err}); install rustup from https://rustup.rs, {RERUN}"
        ),
    };
    if !has_nightly(&String::from_utf8_lossy(&toolchains)) {
        println!("{STEP}: installing the nightly toolchain with rust-src ...");
        return run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "setup: rustup toolchain install nightly",
            &hint,
        );
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    if has_component(&components, "rust-src") {
        println!("{STEP}: already present");
        return Ok(());
    }
    println!("{STEP}: installing rust-src for nightly ...");
    run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "setup: rustup component add rust-src --toolchain nightly",
        &hint,
    )
}

/// The bpf-linker release the programs are built and tested with (against LLVM 22): a newer
/// one may need another LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Whether `bpf-linker --version` output names the release this repository uses.
pub fn is_pinned_bpf_linker(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v == BPF_LINKER_VERSION)
}

fn bpf_linker() -> Result<()> {
    const STEP: &str = "setup: bpf-linker";
    // main() has put the cargo bin directory on PATH, so this finds a `cargo install`ed one.
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    match &present {
        Some(version) if is_pinned_bpf_linker(version) => {
            println!("{STEP}: already present ({version})");
            return Ok(());
        }
        Some(version) => println!(
            "{STEP}: {version} is present; installing {BPF_LINKER_VERSION}, the release this \
             repository is built with"
        ),
        None => {}
    }
    println!(
        "{STEP}: installing {BPF_LINKER_VERSION} with cargo install against LLVM 22 (takes about \
         4 minutes) ..."
    );
    let path = match std::env::var_os("PATH") {
        Some(path) if !path.is_empty() => {
            let mut joined = std::ffi::OsString::from(format!("{LLVM_BIN}:"));
            joined.push(path);
            joined
        }
        _ => LLVM_BIN.into(),
    };
    run(
        cargo().env("PATH", path).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]),
        "setup: cargo install bpf-linker",
        &format!("check that llvm-22-dev is installed in {LLVM_BIN} and the network, {RERUN}"),
    )
}

fn bpffs() -> Result<()> {
    const STEP: &str = "setup: bpffs at /sys/fs/bpf";
    let mounts = match fs::read_to_string("/proc/mounts") {
        Ok(mounts) => mounts,
        Err(err) => bail!("{STEP}: could not read /proc/mounts ({err}); is /proc mounted?"),
    };
    if is_bpffs_mounted(&mounts, BPFFS) {
        println!("{STEP}: already present");
        return Ok(());
    }
    println!("{STEP}: mounting ...");
    run(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        &format!("setup: mount -t bpf bpf {BPFFS}"),
        &format!(
            "the kernel needs CONFIG_BPF_SYSCALL, and a container needs CAP_SYS_ADMIN; {RERUN}"
        ),
    )
}

/// The packages of `wanted` that `dpkg-query -W -f='${Package}\t${Status}\n'` output does not
/// show as installed.
pub fn missing_packages<'a>(wanted: &[&'a str], dpkg_output: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|package| {
            !dpkg_output.lines().any(|line| {
                line.split_once('\t').is_some_and(|(name, status)| {
                    // `${Package}` has no architecture suffix, but be lenient.
                    let name = name.split(':').next().unwrap_or(name);
                    name == *package && is_installed(status)
                })
            })
        })
        .collect()
}

/// Whether a dpkg `${Status}` ("want flag status", e.g. "install ok installed") means the
/// package is installed. "hold ok installed" counts; "deinstall ok config-files" does not.
pub fn is_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    matches!(words.as_slice(), [_, "ok", "installed"])
}

/// Whether `rustup toolchain list` output has the `nightly` channel (a dated nightly such as
/// `nightly-2024-05-01-...` is not what `rustup run nightly` uses).
pub fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| match name.strip_prefix("nightly") {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit())),
            None => false,
        })
}

/// Whether `rustup component list --installed` output lists `component`.
pub fn has_component(component_list: &str, component: &str) -> bool {
    component_list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == component)
}

/// Whether /proc/mounts content has a bpf filesystem mounted at `target`.
pub fn is_bpffs_mounted(proc_mounts: &str, target: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, mount_point, "bpf", ..] if unescape_mount(mount_point) == target)
    })
}

/// Undoes the octal escapes (`\040` for a space, ...) of /proc/mounts fields.
pub fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_bpf_linker_is_recognised_by_its_version_line() {
        assert!(is_pinned_bpf_linker("bpf-linker 0.13.0"));
        assert!(!is_pinned_bpf_linker("bpf-linker 0.14.1"));
        assert!(!is_pinned_bpf_linker("bpf-linker 0.13.0-rc1"));
        assert!(!is_pinned_bpf_linker(""));
    }

    #[test]
    fn dpkg_status() {
        assert!(is_installed("install ok installed"));
        assert!(is_installed("hold ok installed"));
        assert!(!is_installed("deinstall ok config-files"));
        assert!(!is_installed("install ok half-configured"));
        assert!(!is_installed("unknown ok not-installed"));
        assert!(!is_installed(""));
    }

    #[test]
    fn dpkg_missing_packages() {
        let wanted = ["llvm-22-dev", "ethtool", "nftables", "iproute2"];
        let output = "llvm-22-dev\tinstall ok installed\n\
                      ethtool\tdeinstall ok config-files\n\
                      iproute2\tinstall ok installed\n";
        assert_eq!(missing_packages(&wanted, output), ["ethtool", "nftables"]);
        assert_eq!(missing_packages(&wanted, ""), wanted);
        let all = "llvm-22-dev\tinstall ok installed\nethtool\tinstall ok installed\n\
                   nftables\thold ok installed\niproute2:amd64\tinstall ok installed\n";
        assert!(missing_packages(&wanted, all).is_empty());
    }

    #[test]
    fn rustup_nightly() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly\n"));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2024-05-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }

    #[test]
    fn rustup_components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64\n",
            "rust-src"
        ));
    }

    #[test]
    fn bpffs_mount() {
        let without = "proc /proc proc rw,relatime 0 0\n\
                       sysfs /sys sysfs rw,relatime 0 0\n\
                       none /sys/fs/bpf/x tmpfs rw 0 0\n\
                       bpf /mnt/bpf bpf rw 0 0\n";
        assert!(!is_bpffs_mounted(without, "/sys/fs/bpf"));
        let with =
            format!("{without}bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n");
        assert!(is_bpffs_mounted(&with, "/sys/fs/bpf"));
        // Something else (not bpf) mounted over /sys/fs/bpf does not count.
        assert!(!is_bpffs_mounted(
            "tmpfs /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf"
        ));
        assert!(is_bpffs_mounted("bpf /my\\040bpf bpf rw 0 0\n", "/my bpf"));
    }

    #[test]
    fn mount_unescaping() {
        assert_eq!(unescape_mount("/sys/fs/bpf"), "/sys/fs/bpf");
        assert_eq!(unescape_mount(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape_mount(r"/not\999"), r"/not\999");
    }
}
