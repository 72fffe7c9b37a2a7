//! Waiting for the kernel programs' runs in flight to end, before something they may have read
//! is taken away (a `BACKENDS` slot cleared after the tables stopped naming it).

use std::time::Duration;

const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// How long to wait where no grace period can be waited for: far longer than a program runs
/// (microseconds).
const FALLBACK_WAIT: Duration = Duration::from_millis(50);

/// Returns once every program run that started before has ended. XDP, TC and cgroup socket
/// programs run inside RCU read-side sections, and `membarrier(MEMBARRIER_CMD_GLOBAL)` is the
/// kernel's `synchronize_rcu()`: when it returns, no program still uses a value read before.
/// A table swap waits the same way (the kernel does it for an array of maps).
pub(crate) fn wait_for_programs_in_flight() {
    if let Err(e) = grace_period() {
        tracing::debug!("no RCU grace period to wait for ({e}); sleeping {FALLBACK_WAIT:?}");
        std::thread::sleep(FALLBACK_WAIT);
    }
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`, where it is a grace period. The kernel refuses the
/// command on nohz_full systems (EINVAL), has none without CONFIG_MEMBARRIER (ENOSYS), and
/// with one CPU online returns at once: there a cgroup socket program preempted mid-run
/// (preemptible RCU) would not be waited for.
fn grace_period() -> std::io::Result<()> {
    // SAFETY: sysconf reads a value; no memory is involved.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        return Err(std::io::Error::other("one CPU online"));
    }
    // SAFETY: membarrier takes no pointers.
    if unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    #[test]
    fn the_wait_ends_promptly_and_is_a_grace_period_where_the_kernel_has_one() {
        let nohz_full = std::fs::read_to_string("/sys/devices/system/cpu/nohz_full")
            .is_ok_and(|cpus| !cpus.trim().is_empty() && cpus.trim() != "(null)");
        let several_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if several_cpus && !nohz_full {
            super::grace_period().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
        }
        let started = Instant::now();
        super::wait_for_programs_in_flight();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
