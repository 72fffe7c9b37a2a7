//! Header parsing: every read is bounds-checked against the packet end first.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, maps::FlowKey, maps::proto, stats::StatSlot};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
/// QinQ at most: an outer service tag and an inner customer tag.
const MAX_VLAN_TAGS: usize = 2;
/// The most bytes of VLAN tags between the Ethernet and the IP header.
pub const MAX_TAGS_LEN: usize = MAX_VLAN_TAGS * VLAN_HLEN;
pub const IPV4_HLEN: usize = 20;
/// Covers the largest L3 offset, Ethernet with two VLAN tags (22).
const MAX_L3_OFFSET_MASK: usize = 0x1f;
/// Covers the largest L4 offset, 22 + an IPv6 header (62).
const MAX_L4_OFFSET_MASK: usize = 0x3f;
pub const IPV6_HLEN: usize = 40;
pub const ICMP_HLEN: usize = 8;
/// ICMPv6 router/neighbour solicitation/advertisement and redirect.
const ICMPV6_NDP_FIRST: u8 = 133;
const ICMPV6_NDP_LAST: u8 = 137;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

pub use lb_common::maps::tcp_flag::{
    ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN,
};

/// A connection's first packet: SYN without ACK.
#[inline(always)]
pub const fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a segment of a flow that is gone is answered with a RST (`on_backend_removal:
/// reset`): not a SYN (a new connection) and not a RST (never answered, RFC 9293).
#[inline(always)]
pub const fn answer_with_reset(tcp_flags: u8) -> bool {
    !is_syn(tcp_flags) && tcp_flags & TCP_RST == 0
}

/// Offsets inside the headers this program reads or rewrites.
pub mod off {
    pub const ETH_DST: usize = 0;
    pub const ETH_PROTO: usize = 12;
    pub const IP_TOS: usize = 1;
    pub const IP_TOT_LEN: usize = 2;
    pub const IP_FRAG: usize = 6;
    pub const IP_TTL: usize = 8;
    pub const IP_PROTO: usize = 9;
    pub const IP_CSUM: usize = 10;
    pub const IP_SRC: usize = 12;
    pub const IP_DST: usize = 16;
    pub const IP6_PAYLOAD_LEN: usize = 4;
    pub const IP6_NEXT: usize = 6;
    pub const IP6_HOP_LIMIT: usize = 7;
    pub const IP6_SRC: usize = 8;
    pub const IP6_DST: usize = 24;
    pub const L4_SPORT: usize = 0;
    pub const L4_DPORT: usize = 2;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CSUM: usize = 16;
    pub const UDP_CSUM: usize = 6;
    pub const ICMP_CSUM: usize = 2;
}

/// What the rest of the program needs to know about a packet.
#[derive(Default)]
pub struct Packet {
    pub key: FlowKey,
    pub v6: bool,
    /// Offset of the IP header (past VLAN tags).
    pub l3: u16,
    /// Offset of the TCP or UDP header.
    pub l4: u16,
    pub tcp_flags: u8,
    /// ICMP or ICMPv6 type (ports are 0 for ICMP).
    pub icmp_type: u8,
    /// IPv4 TOS (0 for IPv6), for the FIB lookup.
    pub tos: u8,
    /// Length of the whole IP packet (checked to fit the frame), for the FIB's MTU check and
    /// to know where the IP packet ends.
    pub ip_tot_len_be: u16,
    /// Frame length, for byte counters.
    pub len: u32,
    /// This packet opened its flow (set once the flow is recorded): its route is asked of
    /// the FIB, never taken from the route memo.
    pub opened_flow: bool,
    /// It came through the mesh tunnel from this peer (`TUNNEL_PEERS` index; 0: it did not).
    pub tunnel_peer: u8,
}

impl Packet {
    /// Offset of the IP header. Offsets are stored small (the packet lives on the entry
    /// function's stack for the whole run, and the BPF stack is 512 bytes for all frames),
    /// and masked to their real bound: a function that reads them from its caller's stack
    /// must show the verifier they are small.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        usize::from(self.l3) & MAX_L3_OFFSET_MASK
    }

    /// Offset of the L4 header (see `l3`).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        usize::from(self.l4) & MAX_L4_OFFSET_MASK
    }

    /// Offset just past the IP packet (frame bytes after it are padding).
    #[inline(always)]
    pub fn ip_end(&self) -> usize {
        self.l3() + usize::from(u16::from_be(self.ip_tot_len_be))
    }
}

/// A pointer to a `T` at `offset`, if the packet is long enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { pkt_read(p) })
}

/// Reads a `T` from packet memory, which has no alignment guarantee. BPF allows unaligned
/// packet access on CPUs that handle it (x86-64, arm64; elsewhere the verifier refuses the
/// program rather than misbehave), so this is a plain typed load: one instruction, where
/// `read_unaligned` becomes one load per byte on this target.
///
/// # Safety
/// `p` must point into the packet, bounds-checked for a whole `T`.
#[inline(always)]
pub unsafe fn pkt_read<T: Copy>(p: *const T) -> T {
    // SAFETY: see above; the BPF backend emits a plain load whatever the alignment.
    unsafe { p.read() }
}

/// Writes a `T` to packet memory (see `pkt_read`).
///
/// # Safety
/// As `pkt_read`.
#[inline(always)]
pub unsafe fn pkt_write<T: Copy>(p: *mut T, value: T) {
    // SAFETY: see pkt_read.
    unsafe { p.write(value) }
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 or IPv6, and TCP/UDP. `Err` names the
/// counter of a packet passed untouched.
#[inline(always)]
/// Fills `pkt` in place (the BPF stack has room for one `Packet`, not for copies of it).
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), StatSlot> {
    let (ether_type, l3) = ether_type(ctx)?;
    pkt.l3 = l3 as u16;
    pkt.len = (ctx.data_end() - ctx.data()) as u32;
    match ether_type {
        ETH_P_IP => parse_v4(ctx, pkt),
        ETH_P_IPV6 => parse_v6(ctx, pkt),
        _ => Err(StatSlot::PassNotFrontend),
    }
}

/// The L3 protocol and where its header starts, past any 802.1Q/802.1ad tags.
#[inline(always)]
fn ether_type(ctx: &XdpContext) -> Result<(u16, usize), StatSlot> {
    let mut ether_type =
        u16::from_be(load::<u16>(ctx, off::ETH_PROTO).ok_or(StatSlot::PassMalformed)?);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag: TCI (2 bytes), then the inner type.
        ether_type = u16::from_be(load::<u16>(ctx, l3 + 2).ok_or(StatSlot::PassMalformed)?);
        l3 += VLAN_HLEN;
    }
    Ok((ether_type, l3))
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), StatSlot> {
    let l3 = pkt.l3();
    // Version/IHL byte, then the whole fixed header.
    if ptr_at::<[u8; IPV4_HLEN]>(ctx, l3).is_none() {
        return Err(StatSlot::PassMalformed);
    }
    let ver_ihl = load::<u8>(ctx, l3).ok_or(StatSlot::PassMalformed)?;
    if ver_ihl >> 4 != 4 || ver_ihl & 0x0f < 5 {
        return Err(StatSlot::PassMalformed);
    }
    if ver_ihl & 0x0f != 5 {
        // Policy: options are rare and never on our frontends' traffic; the kernel handles them.
        return Err(StatSlot::PassIpOptions);
    }
    let frag = u16::from_be(load::<u16>(ctx, l3 + off::IP_FRAG).ok_or(StatSlot::PassMalformed)?);
    if frag & 0x3fff != 0 {
        // MF set or a non-zero offset: no ports to balance on. The kernel reassembles.
        return Err(StatSlot::PassFragment);
    }
    pkt.key
        .set_proto(load::<u8>(ctx, l3 + off::IP_PROTO).ok_or(StatSlot::PassMalformed)?);
    pkt.key.src =
        Addr::from_v4_raw(load::<u32>(ctx, l3 + off::IP_SRC).ok_or(StatSlot::PassMalformed)?);
    pkt.key.dst =
        Addr::from_v4_raw(load::<u32>(ctx, l3 + off::IP_DST).ok_or(StatSlot::PassMalformed)?);
    pkt.tos = load::<u8>(ctx, l3 + off::IP_TOS).ok_or(StatSlot::PassMalformed)?;
    pkt.ip_tot_len_be = load::<u16>(ctx, l3 + off::IP_TOT_LEN).ok_or(StatSlot::PassMalformed)?;
    pkt.v6 = false;
    pkt.l4 = (l3 + IPV4_HLEN) as u16;
    check_ip_length(ctx, pkt, IPV4_HLEN)?;
    parse_l4(ctx, pkt)
}

/// The IP length field must fit in the frame (Ethernet padding may follow it) and hold the
/// L4 header: a packet that lies about its length is not translated.
#[inline(always)]
fn check_ip_length(ctx: &XdpContext, pkt: &Packet, ip_hlen: usize) -> Result<(), StatSlot> {
    let ip_len = usize::from(u16::from_be(pkt.ip_tot_len_be));
    let l4_min = match pkt.key.proto {
        proto::TCP => 20,
        _ => 8,
    };
    if ip_len < ip_hlen + l4_min || pkt.l3() + ip_len > ctx.data_end() - ctx.data() {
        return Err(StatSlot::PassMalformed);
    }
    Ok(())
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), StatSlot> {
    let l3 = pkt.l3();
    if ptr_at::<[u8; IPV6_HLEN]>(ctx, l3).is_none() {
        return Err(StatSlot::PassMalformed);
    }
    let version = load::<u8>(ctx, l3).ok_or(StatSlot::PassMalformed)?;
    if version >> 4 != 6 {
        return Err(StatSlot::PassMalformed);
    }
    let next_header = load::<u8>(ctx, l3 + off::IP6_NEXT).ok_or(StatSlot::PassMalformed)?;
    match next_header {
        proto::TCP | proto::UDP | proto::ICMPV6 => {}
        IPPROTO_FRAGMENT => return Err(StatSlot::PassFragment),
        // Hop-by-hop, routing, destination options: the IPv6 counterpart of IPv4 options.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
            return Err(StatSlot::PassIpOptions);
        }
        _ => return Err(StatSlot::PassNotFrontend),
    }
    pkt.key.set_proto(next_header);
    pkt.key.src.words = load::<[u32; 4]>(ctx, l3 + off::IP6_SRC).ok_or(StatSlot::PassMalformed)?;
    pkt.key.dst.words = load::<[u32; 4]>(ctx, l3 + off::IP6_DST).ok_or(StatSlot::PassMalformed)?;
    let payload_len_be =
        load::<u16>(ctx, l3 + off::IP6_PAYLOAD_LEN).ok_or(StatSlot::PassMalformed)?;
    // IPv4-mapped addresses never appear on the wire (RFC 4291); here they would alias the
    // IPv4 flows, whose addresses the maps hold in that form.
    if pkt.key.src.is_v4() || pkt.key.dst.is_v4() {
        return Err(StatSlot::PassMalformed);
    }
    // The FIB's MTU check wants the whole IP packet's length.
    pkt.ip_tot_len_be = (u16::from_be(payload_len_be).wrapping_add(IPV6_HLEN as u16)).to_be();
    pkt.tos = 0;
    pkt.v6 = true;
    pkt.l4 = (l3 + IPV6_HLEN) as u16;
    check_ip_length(ctx, pkt, IPV6_HLEN)?;
    parse_l4(ctx, pkt)
}

/// TCP flags (0 for UDP) and ports of the L4 header at `pkt.l4`; the type of an ICMP one.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, pkt: &mut Packet) -> Result<(), StatSlot> {
    let l4 = pkt.l4();
    pkt.tcp_flags = match pkt.key.proto {
        proto::TCP => {
            if ptr_at::<[u8; 20]>(ctx, l4).is_none() {
                return Err(StatSlot::PassMalformed);
            }
            load::<u8>(ctx, l4 + off::TCP_FLAGS).ok_or(StatSlot::PassMalformed)?
        }
        proto::UDP => {
            if ptr_at::<[u8; 8]>(ctx, l4).is_none() {
                return Err(StatSlot::PassMalformed);
            }
            0
        }
        proto::ICMP | proto::ICMPV6 if (pkt.key.proto == proto::ICMPV6) == pkt.v6 => {
            if ptr_at::<[u8; ICMP_HLEN]>(ctx, l4).is_none() {
                return Err(StatSlot::PassMalformed);
            }
            let icmp_type = load::<u8>(ctx, l4).ok_or(StatSlot::PassMalformed)?;
            if pkt.v6 && (ICMPV6_NDP_FIRST..=ICMPV6_NDP_LAST).contains(&icmp_type) {
                // Neighbour discovery: the kernel's, and frequent; leave at once.
                return Err(StatSlot::PassNotFrontend);
            }
            pkt.icmp_type = icmp_type;
            pkt.key.set_ports_word(0);
            return Ok(());
        }
        _ => return Err(StatSlot::PassNotFrontend),
    };
    // Source and destination port, adjacent on the wire as in the key: one load and one store.
    const _: () = assert!(off::L4_DPORT == off::L4_SPORT + 2);
    pkt.key
        .set_ports_word(load::<u32>(ctx, l4 + off::L4_SPORT).ok_or(StatSlot::PassMalformed)?);
    Ok(())
}
