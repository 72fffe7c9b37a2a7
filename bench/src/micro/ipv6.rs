//! IPv6 test frames (the test kit builds IPv4 only): Ethernet + IPv6 + TCP, and a checker that
//! verifies the TCP checksum from scratch.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_testkit::packet::{CLIENT_MAC, NODE_MAC, checksum};

/// An Ethernet/IPv6/TCP frame with the 6-byte payload "meshlb" (80 bytes), seq 1, ack 1 if
/// ACK is set, window 0xffff, hop limit 64.
pub fn tcp_frame(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Vec<u8> {
    let payload = b"meshlb";
    let l4_len = 20 + payload.len();
    let mut f = Vec::with_capacity(14 + 40 + l4_len);
    f.extend_from_slice(&NODE_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&0x6000_0000u32.to_be_bytes());
    f.extend_from_slice(&(l4_len as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let l4 = f.len();
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&u32::from(flags & 0x10 != 0).to_be_bytes());
    f.extend_from_slice(&[0x50, flags]);
    f.extend_from_slice(&0xffffu16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    let csum = checksum(&f[l4..], pseudo_sum(&f[14..54], l4_len));
    f[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
    f
}

fn pseudo_sum(ip: &[u8], l4_len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in ip[8..40].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + 6 + l4_len as u32
}

/// Source and destination of an Ethernet/IPv6/TCP frame whose TCP checksum verifies.
pub fn parse_tcp(frame: &[u8]) -> Result<(SocketAddrV6, SocketAddrV6), String> {
    if frame.len() < 74 || frame[12..14] != [0x86, 0xdd] || frame[20] != 6 {
        return Err(format!("not an IPv6/TCP frame ({} bytes)", frame.len()));
    }
    let l4_len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    if frame.len() < 54 + l4_len {
        return Err("IPv6 payload truncated".into());
    }
    let l4 = &frame[54..54 + l4_len];
    if checksum(l4, pseudo_sum(&frame[14..54], l4_len)) != 0 {
        return Err("bad TCP checksum".into());
    }
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).unwrap());
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Ok((
        SocketAddrV6::new(addr(22), port(0), 0, 0),
        SocketAddrV6::new(addr(38), port(2), 0, 0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify() {
        let c: SocketAddrV6 = "[fd00:1::2]:31337".parse().unwrap();
        let v: SocketAddrV6 = "[fd00:100::1]:80".parse().unwrap();
        let mut f = tcp_frame(c, v, 0x10);
        assert_eq!(f.len(), 80);
        assert_eq!(parse_tcp(&f).unwrap(), (c, v));
        f[57] ^= 1;
        assert_eq!(parse_tcp(&f).unwrap_err(), "bad TCP checksum");
    }
}
