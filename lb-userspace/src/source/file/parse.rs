//! Leaf parsers: numbers, durations, addresses.

use std::{net::IpAddr, ops::RangeInclusive};

use lb_common::limits;

use super::MAX_TIMEOUT_S;

// ---------------------------------------------------------------------------------------------
// Leaf parsers

pub(super) enum NumberError {
    NotANumber,
    OutOfRange,
}

/// ASCII digits only: `u64::from_str` would also take `+80`.
pub(super) fn parse_number(text: &str, range: RangeInclusive<u64>) -> Result<u64, NumberError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotANumber);
    }
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(NumberError::OutOfRange),
    }
}

/// `30s`, `15m`, `24h`, `1d`, or plain seconds, within 1s..=30d.
pub(super) fn parse_duration(text: &str) -> Result<u32, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_s: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let out_of_range = || format!("{text:?} is out of range; timeouts are 1s to 30d");
    match parse_number(digits, 0..=u64::MAX) {
        Ok(n) if unit_s != 0 => {
            let seconds = n.checked_mul(unit_s).ok_or_else(out_of_range)?;
            match u32::try_from(seconds) {
                Ok(s) if (1..=MAX_TIMEOUT_S).contains(&s) => Ok(s),
                _ => Err(out_of_range()),
            }
        }
        Err(NumberError::OutOfRange) => Err(out_of_range()),
        _ => Err(format!(
            "{text:?} is not a duration; write e.g. 30s, 15m, 24h, 1d or a number of seconds"
        )),
    }
}

/// A bare address (no port, no brackets) usable as a `role`. IPv4-mapped IPv6 addresses become
/// IPv4 ones, as the kernel stores both alike and duplicates must be caught.
pub(super) fn parse_address(text: &str, role: &str) -> Result<IpAddr, String> {
    let address = text.parse::<IpAddr>().map_err(|_| {
        format!(
            "{text:?} is not an IPv4 or IPv6 address; write e.g. \"198.18.0.10\" or \"fd00::10\" \
             (without port or brackets)"
        )
    })?;
    let address = address.to_canonical();
    check_usable(address, text, role)?;
    Ok(address)
}

/// Why `address` cannot be a vip or a backend, as an error message.
pub(super) fn check_usable(address: IpAddr, text: &str, role: &str) -> Result<(), String> {
    let reason = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if matches!(address, IpAddr::V4(v4) if v4.is_broadcast()) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{text:?} is {reason}; a {role} must be a unicast address reachable over the network"
    ))
}

pub(super) fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// A table size to suggest: the smallest prime `>= n`, or the largest one allowed.
pub(super) fn prime_at_least(n: u32) -> u32 {
    let max = limits::MAX_SELECTION_SLOTS;
    (n.max(2)..=max)
        .find(|&p| is_prime(p))
        .or_else(|| (2..=max).rev().find(|&p| is_prime(p)))
        .unwrap_or(2)
}
