//! The clock flows are stamped with, and protocols by name, for the API's answers.

#[allow(unused_imports)]
use super::*;

/// CLOCK_MONOTONIC in nanoseconds: the clock the kernel programs stamp flows with.
pub(super) fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub(super) fn protocol_name(number: u8) -> &'static str {
    match number {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP | proto::ICMPV6 => "icmp",
        _ => "other",
    }
}
