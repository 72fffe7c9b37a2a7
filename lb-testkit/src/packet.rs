//! Packets for tests and the traffic generator: a builder that computes every checksum from
//! scratch, and a checker that verifies them independently of the kernel program's
//! incremental updates.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// L4 part of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp,
    /// UDP sent without a checksum (allowed over IPv4).
    UdpNoChecksum,
}

impl L4 {
    /// A TCP header with `flags`, sequence 1, and acknowledging 1 when ACK is set.
    pub fn tcp(flags: u8) -> Self {
        L4::Tcp {
            flags,
            seq: 1,
            ack: u32::from(flags & TCP_ACK != 0),
        }
    }
}

/// An Ethernet + IPv4 + TCP/UDP frame description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub l4: L4,
    pub ttl: u8,
    /// The IPv4 TOS byte: DSCP and, in its low 2 bits, ECN (RFC 3168).
    pub tos: u8,
    pub ip_id: u16,
    pub payload: Vec<u8>,
}

/// The builder methods both frame kinds share.
macro_rules! frame_setters {
    ($frame:ty, $socket:ty) => {
        impl $frame {
            pub fn with_src(mut self, src: $socket) -> Self {
                self.src = src;
                self
            }

            pub fn with_dst(mut self, dst: $socket) -> Self {
                self.dst = dst;
                self
            }

            pub fn with_macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
                self.eth_src = src;
                self.eth_dst = dst;
                self
            }
        }
    };
}

frame_setters!(Ipv4Frame, SocketAddrV4);
frame_setters!(Ipv6Frame, SocketAddrV6);

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

impl Ipv4Frame {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            eth_dst: NODE_MAC,
            eth_src: CLIENT_MAC,
            src,
            dst,
            l4: L4::tcp(flags),
            ttl: 64,
            tos: 0,
            ip_id: 1,
            payload: b"meshlb".to_vec(),
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            l4: L4::Udp,
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn with_tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// The frame's bytes, with correct IPv4 and L4 checksums.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4_header_len) = l4_proto_len(self.l4);
        let l4_len = l4_header_len + self.payload.len();
        let total_len = 20 + l4_len;
        let mut f = Vec::with_capacity(14 + total_len);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        // IPv4, DF set.
        f.extend_from_slice(&[0x45, self.tos]);
        f.extend_from_slice(&(total_len as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&0x4000u16.to_be_bytes());
        f.extend_from_slice(&[self.ttl, proto, 0, 0]);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        let ip_csum = checksum(&f[14..34], 0);
        f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
        let pseudo = pseudo_header_sum(&f[14..34], l4_len);
        f.extend_from_slice(&l4_bytes(
            self.src.port(),
            self.dst.port(),
            self.l4,
            &self.payload,
            pseudo,
        ));
        f
    }
}

fn l4_proto_len(l4: L4) -> (u8, usize) {
    match l4 {
        L4::Tcp { .. } => (6, 20),
        L4::Udp | L4::UdpNoChecksum => (17, 8),
    }
}

/// A TCP or UDP header and payload with its checksum (from the pseudo-header sum `pseudo`).
fn l4_bytes(sport: u16, dport: u16, l4: L4, payload: &[u8], pseudo: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(20 + payload.len());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    let csum_at = match l4 {
        L4::Tcp { flags, seq, ack } => {
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend_from_slice(&ack.to_be_bytes());
            f.extend_from_slice(&[0x50, flags]);
            f.extend_from_slice(&0xffffu16.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            16
        }
        L4::Udp | L4::UdpNoChecksum => {
            f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            6
        }
    };
    f.extend_from_slice(payload);
    if l4 != L4::UdpNoChecksum {
        let mut csum = checksum(&f, pseudo);
        if matches!(l4, L4::Udp) && csum == 0 {
            csum = 0xffff;
        }
        f[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    }
    f
}

fn pseudo_header_sum(ip_header: &[u8], l4_len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in ip_header[12..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + u32::from(ip_header[9]) + l4_len as u32
}

/// A TCP SYN frame (from `Ipv4Frame::build`) with an MSS option of `mss` in first place, as
/// Linux sends it; lengths and checksums recomputed.
pub fn with_mss(frame: &[u8], mss: u16) -> Vec<u8> {
    let mut f = frame[..14 + 20 + 20].to_vec();
    f.extend_from_slice(&[2, 4]);
    f.extend_from_slice(&mss.to_be_bytes());
    f.extend_from_slice(&frame[14 + 20 + 20..]);
    let total = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let ip_csum = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    f[34 + 12] = 0x60; // data offset: 6 words
    f[34 + 16..34 + 18].copy_from_slice(&[0, 0]);
    let l4_len = f.len() - 34;
    let pseudo = pseudo_header_sum(&f[14..34], l4_len);
    let csum = checksum(&f[34..], pseudo);
    f[34 + 16..34 + 18].copy_from_slice(&csum.to_be_bytes());
    f
}

/// `frame`'s IP packet wrapped for meshlb's mesh tunnel: a new Ethernet header (`macs`:
/// source, destination), IPv4 `own` -> `peer` (DF, TTL 64, UDP, the inner packet's ECN field
/// and DSCP 0 as RFC 6040's normal mode has it) and UDP from `sport` to the tunnel port with
/// no checksum, as the specification in lb-ebpf's `tunnel` module says.
pub fn tunnel_wrap(
    frame: &[u8],
    macs: ([u8; 6], [u8; 6]),
    own: Ipv4Addr,
    peer: Ipv4Addr,
    sport: u16,
) -> Vec<u8> {
    let inner = &frame[14..];
    let mut f = Vec::with_capacity(42 + inner.len());
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, inner[1] & 0x03]);
    f.extend_from_slice(&((20 + 8 + inner.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&own.octets());
    f.extend_from_slice(&peer.octets());
    let ip_csum = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&lb_common::maps::tunnel::PORT.to_be_bytes());
    f.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(inner);
    f
}

/// The inner frame of a mesh tunnel packet `frame` (see `tunnel_wrap`): its Ethernet header
/// before the packet inside, without the tunnel's outer IPv4 and UDP headers.
pub fn tunnel_inner(frame: &[u8]) -> Vec<u8> {
    let outer = 14 + usize::from(lb_common::maps::tunnel::OVERHEAD);
    [&frame[..14], &frame[outer..]].concat()
}

/// The Internet checksum of `data` (RFC 1071), starting from `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What `parse_ipv4` found in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub tcp_flags: Option<u8>,
}

/// Parses an Ethernet/IPv4/TCP-or-UDP frame and verifies its IPv4 and L4 checksums from
/// scratch. `Err` says what is wrong.
pub fn parse_ipv4(frame: &[u8]) -> Result<ParsedFrame, String> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return Err(format!("not an IPv4 frame ({} bytes)", frame.len()));
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < total || total < ihl {
        return Err(format!(
            "IPv4 total length {total} but {} bytes follow",
            ip.len()
        ));
    }
    if checksum(&ip[..ihl], 0) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let proto = ip[9];
    let l4 = &ip[ihl..total];
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if l4.len() < 8 {
        return Err("L4 header truncated".into());
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let pseudo = pseudo_header_sum(&ip[..20], l4.len());
    let tcp_flags = match proto {
        6 => {
            if checksum(l4, pseudo) != 0 {
                return Err("bad TCP checksum".into());
            }
            Some(l4[13])
        }
        17 => {
            let stored = u16::from_be_bytes([l4[6], l4[7]]);
            if stored != 0 && checksum(l4, pseudo) != 0 {
                return Err("bad UDP checksum".into());
            }
            None
        }
        other => return Err(format!("unexpected IP protocol {other}")),
    };
    Ok(ParsedFrame {
        src: SocketAddrV4::new(src_ip, sport),
        dst: SocketAddrV4::new(dst_ip, dport),
        proto,
        tcp_flags,
    })
}

/// An Ethernet + IPv6 + TCP/UDP frame description (no extension headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub l4: L4,
    pub hop_limit: u8,
    pub payload: Vec<u8>,
}

impl Ipv6Frame {
    pub fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Self {
        Self {
            eth_dst: NODE_MAC,
            eth_src: CLIENT_MAC,
            src,
            dst,
            l4: L4::tcp(flags),
            hop_limit: 64,
            payload: b"meshlb".to_vec(),
        }
    }

    pub fn udp(src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        Self {
            l4: L4::Udp,
            ..Self::tcp(src, dst, 0)
        }
    }

    /// The frame's bytes, with a correct TCP/UDP checksum.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4_header_len) = l4_proto_len(self.l4);
        let l4_len = l4_header_len + self.payload.len();
        let mut f = Vec::with_capacity(14 + 40 + l4_len);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, self.hop_limit]);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        let pseudo = pseudo_header_sum_v6(&f[14..54], proto, l4_len);
        f.extend_from_slice(&l4_bytes(
            self.src.port(),
            self.dst.port(),
            self.l4,
            &self.payload,
            pseudo,
        ));
        f
    }
}

fn pseudo_header_sum_v6(ip_header: &[u8], next_header: u8, l4_len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in ip_header[8..40].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum + u32::from(next_header) + l4_len as u32
}

/// What `parse_ipv6` found in a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFrame6 {
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
    pub proto: u8,
}

/// Parses an Ethernet/IPv6/TCP-or-UDP frame and verifies its L4 checksum from scratch.
pub fn parse_ipv6(frame: &[u8]) -> Result<ParsedFrame6, String> {
    if frame.len() < 54 || frame[12..14] != [0x86, 0xdd] {
        return Err(format!("not an IPv6 frame ({} bytes)", frame.len()));
    }
    let ip = &frame[14..];
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip.len() < 40 + payload || payload < 8 {
        return Err(format!(
            "IPv6 payload length {payload} but {} bytes follow",
            ip.len() - 40
        ));
    }
    let proto = ip[6];
    let l4 = &ip[40..40 + payload];
    let octets = |at: usize| -> [u8; 16] { ip[at..at + 16].try_into().expect("16 bytes") };
    if !matches!(proto, 6 | 17) {
        return Err(format!("unexpected next header {proto}"));
    }
    if checksum(l4, pseudo_header_sum_v6(&ip[..40], proto, payload)) != 0 {
        return Err(format!(
            "bad {} checksum",
            if proto == 6 { "TCP" } else { "UDP" }
        ));
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Ok(ParsedFrame6 {
        src: SocketAddrV6::new(Ipv6Addr::from(octets(8)), port(0), 0, 0),
        dst: SocketAddrV6::new(Ipv6Addr::from(octets(24)), port(2), 0, 0),
        proto,
    })
}

/// The frame with 802.1Q tags (`0x8100`, outermost first) inserted after the MAC addresses.
pub fn with_vlan_tags(frame: &[u8], vids: &[u16]) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    for vid in vids {
        tagged.extend_from_slice(&0x8100u16.to_be_bytes());
        tagged.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An Ethernet + IPv4 + ICMP frame: `icmp` is the ICMP message without its checksum, which
/// is computed here (bytes 2..4 are overwritten).
pub fn icmpv4_frame(eth: ([u8; 6], [u8; 6]), src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    let mut message = icmp.to_vec();
    message[2..4].copy_from_slice(&[0, 0]);
    let csum = checksum(&message, 0);
    message[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::with_capacity(34 + message.len());
    f.extend_from_slice(&eth.1);
    f.extend_from_slice(&eth.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + message.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let ip_csum = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    f.extend_from_slice(&message);
    f
}

/// An ICMP error message (type, code) quoting the first `quote_l4` L4 bytes of the IPv4
/// frame `quoted` (as RFC 792 asks: the IP header and at least 8 bytes).
pub fn icmpv4_error(icmp_type: u8, code: u8, quoted: &[u8], quote_l4: usize) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&quoted[14..34 + quote_l4]);
    message
}

/// Checks an ICMPv4 frame: IPv4 header checksum and ICMP checksum. Returns the ICMP message.
pub fn parse_icmpv4(frame: &[u8]) -> Result<&[u8], String> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 1 {
        return Err("not an IPv4 ICMP frame".into());
    }
    let ip = &frame[14..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if checksum(&ip[..20], 0) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let message = &ip[20..total];
    if checksum(message, 0) != 0 {
        return Err("bad ICMP checksum".into());
    }
    Ok(message)
}

/// The ICMPv6 checksum's pseudo-header sum (RFC 8200 §8.1): addresses, length, next header.
fn icmpv6_pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    u32::from(!checksum(&pseudo, 0))
}

/// An Ethernet + IPv6 + ICMPv6 frame (hop limit 64): `icmp` is the ICMPv6 message without its
/// checksum, which is computed here (bytes 2..4 are overwritten).
pub fn icmpv6_frame(eth: ([u8; 6], [u8; 6]), src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut message = icmp.to_vec();
    message[2..4].copy_from_slice(&[0, 0]);
    let csum = checksum(&message, icmpv6_pseudo_sum(src, dst, message.len()));
    message[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::with_capacity(54 + message.len());
    f.extend_from_slice(&eth.1);
    f.extend_from_slice(&eth.0);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(message.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&message);
    f
}

/// Checks an ICMPv6 frame's checksum (pseudo-header included). Returns the ICMPv6 message.
pub fn parse_icmpv6(frame: &[u8]) -> Result<&[u8], String> {
    if frame.len() < 62 || frame[12..14] != [0x86, 0xdd] || frame[20] != 58 {
        return Err("not an IPv6 ICMPv6 frame".into());
    }
    let ip = &frame[14..];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let message = ip
        .get(40..40 + len)
        .ok_or("IPv6 payload length beyond the frame")?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    if checksum(message, icmpv6_pseudo_sum(src, dst, len)) != 0 {
        return Err("bad ICMPv6 checksum".into());
    }
    Ok(message)
}

/// Where the IPv4 header starts in an Ethernet frame, past up to two VLAN tags (802.1Q,
/// 802.1ad); `None` when the frame does not carry IPv4.
pub fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        match t {
            0x0800 => return Some(at + 2),
            0x8100 | 0x88a8 => at += 4,
            _ => return None,
        }
    }
    None
}

/// Makes an IPv4 frame's header checksum, and its TCP/UDP/ICMP one (over what the total
/// length covers or what the frame holds, whichever is shorter), right again after the frame
/// was changed by hand (a test's mutation). A zero UDP checksum (none) stays zero.
pub fn refresh_checksums(f: &mut [u8]) {
    let Some(l3) = ipv4_offset(f) else {
        return;
    };
    if f.len() < l3 + 20 {
        return;
    }
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    if ihl < 20 || f.len() < l3 + ihl {
        return;
    }
    f[l3 + 10..l3 + 12].fill(0);
    let c = checksum(&f[l3..l3 + ihl], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
    let end = (l3 + total).min(f.len());
    let l4 = l3 + ihl;
    let protocol = f[l3 + 9];
    let at = match protocol {
        6 => l4 + 16,
        17 => l4 + 6,
        1 => l4 + 2,
        _ => return,
    };
    if at + 2 > end || (protocol == 17 && f[at..at + 2] == [0, 0]) {
        return;
    }
    f[at..at + 2].fill(0);
    let pseudo = if protocol == 1 {
        0
    } else {
        let words: u32 = f[l3 + 12..l3 + 20]
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
            .sum();
        words + u32::from(protocol) + (end - l4) as u32
    };
    let mut c = checksum(&f[l4..end], pseudo);
    if protocol == 17 && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify() {
        let c: SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        let v: SocketAddrV4 = "198.18.100.1:80".parse().unwrap();
        for frame in [
            Ipv4Frame::tcp(c, v, TCP_SYN),
            Ipv4Frame::udp(c, v),
            Ipv4Frame {
                l4: L4::UdpNoChecksum,
                ..Ipv4Frame::udp(c, v)
            },
        ] {
            let bytes = frame.build();
            let parsed = parse_ipv4(&bytes).unwrap();
            assert_eq!((parsed.src, parsed.dst), (c, v));
        }
    }

    #[test]
    fn ipv6_and_icmp_frames_verify() {
        let c: SocketAddrV6 = "[fd00:1::2]:40000".parse().unwrap();
        let v: SocketAddrV6 = "[fd00:100::1]:80".parse().unwrap();
        for frame in [Ipv6Frame::tcp(c, v, TCP_SYN), Ipv6Frame::udp(c, v)] {
            let mut bytes = frame.build();
            assert_eq!(parse_ipv6(&bytes).unwrap().dst, v);
            bytes[60] ^= 1;
            assert!(parse_ipv6(&bytes).is_err());
        }
        let quoted = Ipv4Frame::udp(
            "198.18.1.2:5000".parse().unwrap(),
            "198.18.2.10:53".parse().unwrap(),
        )
        .build();
        let error = icmpv4_frame(
            (NODE_MAC, CLIENT_MAC),
            "198.18.2.10".parse().unwrap(),
            "198.18.1.2".parse().unwrap(),
            &icmpv4_error(3, 3, &quoted, 8),
        );
        let message = parse_icmpv4(&error).unwrap();
        assert_eq!(message.len(), 8 + 20 + 8);
        let tagged = with_vlan_tags(&error, &[100, 200]);
        assert_eq!(tagged.len(), error.len() + 8);
        assert_eq!(tagged[12..14], [0x81, 0x00]);
        assert_eq!(tagged[20..22], [0x08, 0x00]);
    }

    #[test]
    fn corrupted_frames_fail() {
        let c: SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        let v: SocketAddrV4 = "198.18.100.1:80".parse().unwrap();
        let mut tcp = Ipv4Frame::tcp(c, v, TCP_SYN).build();
        tcp[37] ^= 1; // destination port
        assert_eq!(parse_ipv4(&tcp).unwrap_err(), "bad TCP checksum");
        let mut ip = Ipv4Frame::udp(c, v).build();
        ip[22] ^= 1; // TTL
        assert_eq!(parse_ipv4(&ip).unwrap_err(), "bad IPv4 header checksum");
    }
}
