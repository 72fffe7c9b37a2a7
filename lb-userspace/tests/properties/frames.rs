//! Frame builders for the generators (the test kit's, with this test's defaults).

use super::*;

pub(crate) fn set_u8(f: &mut [u8], at: usize, change: impl FnOnce(u8) -> u8) {
    if let Some(b) = f.get_mut(at) {
        *b = change(*b);
    }
}

pub(crate) fn set_u16(f: &mut [u8], at: usize, value: u16) {
    if let Some(bytes) = f.get_mut(at..at + 2) {
        bytes.copy_from_slice(&value.to_be_bytes());
    }
}

/// An Ethernet + IPv4 + ICMP frame with both checksums right (the test kit's builder).
/// `rest` is the second word of the ICMP header (echo id and sequence; unused, a pointer or
/// the next-hop MTU in errors).
pub(crate) fn icmp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let message = [&[ty, code, 0, 0][..], &rest, body].concat();
    icmpv4_frame(macs, src, dst, &message)
}

/// An Ethernet + IPv6 + TCP/UDP frame with a correct L4 checksum (the test kit's builder; a
/// TCP segment with sequence number 1 and no ACK number).
pub(crate) fn ipv6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    protocol: u8,
    tcp_flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    Ipv6Frame {
        eth_dst: macs.1,
        eth_src: macs.0,
        src: SocketAddrV6::new(src.0, src.1, 0, 0),
        dst: SocketAddrV6::new(dst.0, dst.1, 0, 0),
        l4: if protocol == proto::TCP {
            L4::Tcp {
                flags: tcp_flags,
                seq: 1,
                ack: 0,
            }
        } else {
            L4::Udp
        },
        hop_limit: 64,
        payload: payload.to_vec(),
    }
    .build()
}
