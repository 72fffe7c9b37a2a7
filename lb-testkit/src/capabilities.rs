//! Running `lbd` with only the capabilities the shipped systemd unit gives it, so the tests
//! find a capability the unit lacks before an operator does.

use std::{io, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result};

/// Linux capabilities by number, as capabilities(7) and systemd spell them.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The systemd unit `lbd` ships with, from the workspace root.
pub const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/meshlb.service"
);

/// A capability bounding set: the capabilities a process keeps, as numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundingSet(Vec<u32>);

impl BoundingSet {
    /// The `CapabilityBoundingSet=` of the systemd unit at `unit`.
    pub fn of_unit(unit: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
            .with_context(|| format!("{} has no CapabilityBoundingSet=", unit.display()))?;
        Self::parse(line).with_context(|| format!("{}: CapabilityBoundingSet=", unit.display()))
    }

    /// Capability names separated by spaces (`CAP_BPF CAP_NET_ADMIN`).
    pub fn parse(names: &str) -> Result<Self> {
        let mut caps = Vec::new();
        for name in names.split_whitespace() {
            caps.push(number(name)?);
        }
        Ok(Self(caps))
    }

    /// The set as a mask, bit N for capability N (as `/proc/PID/status` shows `CapBnd`).
    pub fn mask(&self) -> u64 {
        self.0.iter().fold(0, |mask, cap| mask | 1 << cap)
    }

    /// Makes `cmd` start with this bounding set (every other capability dropped, so root's
    /// program keeps only these) and `no_new_privs`, as systemd does for the unit.
    pub fn apply(&self, cmd: &mut Command) -> Result<()> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .context("reading /proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .context("/proc/sys/kernel/cap_last_cap")?;
        let keep = self.mask();
        let drop: Vec<u32> = (0..=last).filter(|cap| keep & 1 << cap == 0).collect();
        // SAFETY: the closure calls only prctl, which is async-signal-safe, and allocates
        // nothing (the list is built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                for &cap in &drop {
                    if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// The capabilities process `pid` may use (`CapPrm` in its status), as a mask.
pub fn permitted(pid: u32) -> Result<u64> {
    status_mask(&pid.to_string(), "CapPrm")
}

/// Whether this process may hand capability `cap` (its number) on, to a container say: one
/// outside its bounding set it cannot (runc: "unable to apply caps"), and test machines that
/// are containers themselves may lack some.
pub fn may_grant(cap: u32) -> Result<bool> {
    Ok(status_mask("self", "CapBnd")? & 1 << cap != 0)
}

/// The capability mask `field` of `/proc/PROCESS/status`.
fn status_mask(process: &str, field: &str) -> Result<u64> {
    let path = format!("/proc/{process}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("{path}: no {field} line"))?;
    u64::from_str_radix(hex.trim(), 16).with_context(|| format!("{path}: {field}"))
}

/// Capability `name`'s number (`CAP_SYS_RESOURCE`: 24).
pub fn number(name: &str) -> Result<u32> {
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|cap| cap as u32)
        .with_context(|| format!("unknown capability {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_set_is_read_by_name() {
        let set = BoundingSet::of_unit(Path::new(UNIT)).unwrap();
        assert!(set.mask() & 1 << 39 != 0, "CAP_BPF in {set:?}");
        assert_eq!(
            BoundingSet::parse("CAP_BPF cap_net_admin").unwrap().mask(),
            1 << 39 | 1 << 12
        );
        assert!(BoundingSet::parse("CAP_FLY").is_err());
        assert_eq!(NAMES[19], "CAP_SYS_PTRACE");
        assert_eq!(NAMES[40], "CAP_CHECKPOINT_RESTORE");
    }

    /// systemd ignores, with a warning, a setting above the first `[Section]`: an example
    /// left uncommented in a unit's header.
    #[test]
    fn the_shipped_units_have_every_setting_in_a_section() {
        let dir = Path::new(UNIT).parent().unwrap();
        let mut units = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "service") {
                continue;
            }
            units += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let mut in_section = false;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with(['#', ';']) {
                    continue;
                }
                if line.starts_with('[') {
                    in_section = true;
                    continue;
                }
                assert!(
                    in_section && line.contains('='),
                    "{}:{}: a setting outside a section: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        assert!(units >= 2, "the units in {}", dir.display());
    }
}
