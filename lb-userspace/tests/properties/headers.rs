//! Reading a frame's headers for the checks: offsets past VLAN tags, endpoints, checksums.

use super::*;

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// The frame without VLAN tags, for `parse_ipv4`.
pub(crate) fn untagged(frame: &[u8], l3: usize) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&frame[l3..]);
    f
}

/// Where the IPv6 header starts, past up to two VLAN tags. `None` for anything but IPv6.
pub(crate) fn ipv6_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().unwrap());
        match t {
            0x86dd => return Some(at + 2),
            0x8100 | 0x88a8 => at += 4,
            _ => return None,
        }
    }
    None
}

/// The IPv6 frame without VLAN tags, for `parse_ipv6`.
pub(crate) fn untagged6(frame: &[u8], l3: usize) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&frame[l3..]);
    f
}

/// Source and destination of the IPv6 header at `ip` and the ports after its 40 bytes.
pub(crate) fn endpoints6(ip: &[u8]) -> (SocketAddrV6, SocketAddrV6) {
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
    let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    (
        SocketAddrV6::new(addr(8), port(40), 0, 0),
        SocketAddrV6::new(addr(24), port(42), 0, 0),
    )
}

/// Full NAT's IPv6 source: the node's address toward the backends, a port of its range.
pub(crate) fn is_snat_source6(addr: SocketAddrV6) -> bool {
    *addr.ip() == NODE6_BACKEND_SIDE && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&addr.port())
}

/// The flow an IPv6 packet to a frontend of `service` opened, as its translation shows it.
pub(crate) fn opened6(frame: &[u8], out: &ProgOutcome, service: u32) -> Option<Flow6> {
    let l3 = ipv6_offset(frame)?;
    let parsed = parse_ipv6(&untagged6(&out.packet, l3)).ok()?;
    let (client, frontend) = endpoints6(&frame[l3..]);
    Some(Flow6 {
        client,
        seen_as: parsed.src,
        frontend,
        backend: parsed.dst,
        proto: parsed.proto,
        service,
    })
}

/// The one's complement sum of the TCP/UDP segment of the IPv6 packet `ip` (`payload`
/// bytes after the header) with its pseudo-header; protocol from `layout` (the input).
/// `None` for UDP without a checksum; both zeros are made 0xffff, what a valid segment sums
/// to (as `sums`).
pub(crate) fn sum6(ip: &[u8], payload: usize, layout: &[u8]) -> Option<u16> {
    let l4 = &ip[40..40 + payload];
    if layout[6] == proto::UDP && l4[6..8] == [0, 0] {
        return None;
    }
    let pseudo: u32 = ip[8..40]
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum::<u32>()
        + u32::from(layout[6])
        + payload as u32;
    let s = !checksum(l4, pseudo);
    Some(if s == 0 { 0xffff } else { s })
}

/// Source and destination of the IPv4 header at `ip` and the ports after its 20 bytes.
pub(crate) fn endpoints(ip: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    (
        SocketAddrV4::new(addr(12), port(20)),
        SocketAddrV4::new(addr(16), port(22)),
    )
}

/// A full-NAT source: the node's address toward the backends and a port of full NAT's range.
/// NAT keeps the client's address, but gives a flow whose client port clashes with a live
/// flow's toward the same backend a port of the full-NAT range.
pub(crate) fn is_port_remap(src: SocketAddrV4, client: SocketAddrV4) -> bool {
    src.ip() == client.ip() && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&src.port())
}

pub(crate) fn is_snat_source(addr: SocketAddrV4) -> bool {
    *addr.ip() == NODE_BACKEND_SIDE && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&addr.port())
}

pub(crate) fn is_icmp_error(ty: u8) -> bool {
    matches!(
        ty,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// The one's complement sums of every checksummed region of the IPv4 packet `ip` (`total`
/// bytes long, as the input said; the layout is read from `layout`, the input): the header;
/// the TCP/UDP segment with its pseudo-header or the ICMP message; and in an ICMP error, the
/// quoted header and, if the quote holds all of it, the quoted TCP/UDP segment. Both zeros
/// are made 0xffff, which is what a valid region sums to; `None` is a UDP segment without a
/// checksum. An incremental update keeps each sum as it was.
pub(crate) fn sums(ip: &[u8], total: usize, layout: &[u8]) -> Vec<Option<u16>> {
    let sum = |data: &[u8], initial: u32| {
        let s = !checksum(data, initial);
        Some(if s == 0 { 0xffff } else { s })
    };
    let segment = |ip: &[u8], l4: &[u8], protocol: u8| match protocol {
        proto::UDP if l4[6..8] == [0, 0] => None,
        _ => sum(l4, pseudo_sum(ip, l4.len())),
    };
    let mut sums = vec![sum(&ip[..20], 0)];
    let l4 = &ip[20..total];
    match layout[9] {
        proto::TCP | proto::UDP => sums.push(segment(ip, l4, layout[9])),
        proto::ICMP => {
            sums.push(sum(l4, 0));
            let q = &l4[8..];
            let lq = &layout[28..total];
            if is_icmp_error(layout[20]) && lq.len() >= 28 && lq[0] == 0x45 {
                sums.push(sum(&q[..20], 0));
                let q_total = usize::from(u16::from_be_bytes([lq[2], lq[3]]));
                let min = if lq[9] == proto::TCP { 40 } else { 28 };
                if matches!(lq[9], proto::TCP | proto::UDP) && (min..=lq.len()).contains(&q_total) {
                    sums.push(segment(q, &q[20..q_total], lq[9]));
                }
            }
        }
        _ => {}
    }
    sums
}

pub(crate) fn valid(sums: &[Option<u16>]) -> bool {
    sums.iter().all(|s| s.is_none_or(|s| s == 0xffff))
}

/// The action an outcome counter stands for, and whether the packet is handed to TC.
pub(crate) fn action_of(slot: StatSlot) -> Option<(u32, bool)> {
    match slot {
        StatSlot::TxViaTc => Some((XDP_PASS, true)),
        StatSlot::TxXdpRedirect => Some((XDP_REDIRECT, false)),
        StatSlot::TxLocal => Some((XDP_PASS, false)),
        s if s.label().starts_with("pass_") => Some((XDP_PASS, false)),
        s if s.label().starts_with("drop_") => Some((XDP_DROP, false)),
        _ => None,
    }
}

/// The one's complement sum of the IPv4 pseudo-header for an L4 segment of `l4_len` bytes.
pub(crate) fn pseudo_sum(ip: &[u8], l4_len: usize) -> u32 {
    let words: u32 = ip[12..20]
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
        .sum();
    words + u32::from(ip[9]) + l4_len as u32
}
