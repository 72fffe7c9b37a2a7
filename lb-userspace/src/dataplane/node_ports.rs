//! The node ports the XDP program gives flows (full NAT's source ports, NAT's on a port
//! clash, a swarm hairpin's) against the kernel's own ephemeral ports. The program cannot see
//! the node's sockets: a connection of the node's own (a health check, a process talking to a
//! backend) on a port of that range toward a backend shares its 4-tuple with a flow's, and the
//! backend's answers to it are translated to the flow's client. Linux's default ephemeral
//! range (32768-60999) ends below `FULLNAT_PORT_MIN`; a range widened over it, unless the
//! overlap is reserved (`ip_local_reserved_ports`), is a problem `lbctl status` names.

use std::ops::RangeInclusive;

use lb_common::limits::{FULLNAT_PORT_MAX, FULLNAT_PORT_MIN};

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// What is wrong with this network namespace's ephemeral ports for meshlb, with the fix;
/// `None` when nothing is (or the settings cannot be read: no sysctl, no problem to name).
pub fn shared_with_kernel() -> Option<String> {
    let range = parse_range(&std::fs::read_to_string(PORT_RANGE).ok()?)?;
    let reserved = std::fs::read_to_string(RESERVED).unwrap_or_default();
    problem(range, &reserved)
}

/// `shared_with_kernel` for the settings' texts.
fn problem(range: RangeInclusive<u16>, reserved: &str) -> Option<String> {
    let reserved = parse_reserved(reserved);
    let shared: Vec<u16> = (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX)
        .filter(|port| range.contains(port) && !reserved.iter().any(|r| r.contains(port)))
        .collect();
    let (first, last) = (shared.first()?, shared.last()?);
    Some(format!(
        "the kernel may give the node's own connections ports {first}-{last} ({} of them; \
         net.ipv4.ip_local_port_range is {} {}), which meshlb gives flows as node ports \
         ({FULLNAT_PORT_MIN}-{FULLNAT_PORT_MAX}): a connection of the node's toward a backend \
         can share a flow's ports and lose its answers to the flow's client; end the range \
         below {FULLNAT_PORT_MIN} (`sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"`) \
         or reserve meshlb's ports (`sysctl -w \
         net.ipv4.ip_local_reserved_ports={FULLNAT_PORT_MIN}-{FULLNAT_PORT_MAX}`)",
        shared.len(),
        range.start(),
        range.end(),
    ))
}

/// `ip_local_port_range`: two numbers, separated by white space.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (words.next()?.ok()?, words.next()?.ok()?);
    Some(low..=high)
}

/// `ip_local_reserved_ports`: ports and ranges separated by commas ("8080,61000-65535"), or
/// empty.
fn parse_reserved(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((low, high)) => Some(low.trim().parse().ok()?..=high.trim().parse().ok()?),
                None => {
                    let port = item.parse().ok()?;
                    Some(port..=port)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_range_and_a_reserved_overlap_are_no_problem() {
        assert_eq!(problem(parse_range("32768\t60999\n").unwrap(), "\n"), None);
        assert_eq!(problem(1024..=65535, "61000-65535\n"), None);
        assert_eq!(problem(1024..=65535, "8080,60000-62000,62001-65535"), None);
    }

    #[test]
    fn a_range_over_the_node_ports_is_named_with_what_is_shared_and_the_fix() {
        let text = problem(1024..=65535, "").expect("a problem");
        assert!(text.contains("ports 61000-65535 (4536 of them"), "{text}");
        assert!(text.contains("ip_local_port_range is 1024 65535"), "{text}");
        assert!(
            text.contains("ip_local_reserved_ports=61000-65535"),
            "{text}"
        );
        // Partly reserved: what is left.
        let text = problem(1024..=65535, "61000-64999").expect("a problem");
        assert!(text.contains("ports 65000-65535 (536 of them"), "{text}");
        // A range ending inside the node ports.
        let text = problem(32768..=61999, "").expect("a problem");
        assert!(text.contains("ports 61000-61999 (1000 of them"), "{text}");
    }

    #[test]
    fn unreadable_settings_are_read_as_none() {
        assert_eq!(parse_range("32768"), None);
        assert_eq!(parse_range("a b"), None);
        assert_eq!(parse_reserved(""), Vec::<RangeInclusive<u16>>::new());
        assert_eq!(parse_reserved("x,80"), vec![80..=80]);
    }
}
