//! Facts about the machine a result was measured on, and the date.

use std::{fs, process::Command};

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `vendor_id` from /proc/cpuinfo (which Katran reference applies).
    pub vendor_id: String,
    /// Online logical CPUs (`processor` lines of /proc/cpuinfo).
    pub cpus: usize,
    /// Whether /proc/cpuinfo has the `hypervisor` flag (a virtual machine).
    pub hypervisor: bool,
    /// `uname -srm`.
    pub kernel: String,
    pub bpf_jit_enable: String,
    pub bpf_jit_harden: String,
    pub bpf_stats_enabled: String,
    pub mem_total: String,
    /// `git describe --always --dirty` of the working tree, if it is one.
    pub git: Option<String>,
}

pub fn facts() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let cpu_model = field("model name").unwrap_or_else(|| "unknown".into());
    let vendor_id = field("vendor_id").unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count();
    let hypervisor =
        field("flags").is_some_and(|f| f.split_whitespace().any(|w| w == "hypervisor"));
    let mem_total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        cpu_model,
        vendor_id,
        cpus,
        hypervisor,
        kernel: uname(),
        bpf_jit_enable: sysctl("net/core/bpf_jit_enable"),
        bpf_jit_harden: sysctl("net/core/bpf_jit_harden"),
        bpf_stats_enabled: sysctl("kernel/bpf_stats_enabled"),
        mem_total,
        git: command(&["git", "describe", "--always", "--dirty", "--exclude", "*"]),
    }
}

fn sysctl(path: &str) -> String {
    fs::read_to_string(format!("/proc/sys/{path}"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn uname() -> String {
    // SAFETY: utsname is plain old data; uname fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let s = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    format!("{} {} {}", s(&u.sysname), s(&u.release), s(&u.machine))
}

fn command(argv: &[&str]) -> Option<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }
}
