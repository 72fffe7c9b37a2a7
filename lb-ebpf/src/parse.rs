//! Header parsing: every read is bounds-checked against the packet end first.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, maps::FlowKey, maps::proto, stats::StatSlot};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IPV4_HLEN: usize = 20;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offsets inside the headers this program reads or rewrites.
pub mod off {
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    pub const ETH_PROTO: usize = 12;
    pub const IP_TOS: usize = 1;
    pub const IP_TOT_LEN: usize = 2;
    pub const IP_FRAG: usize = 6;
    pub const IP_PROTO: usize = 9;
    pub const IP_CSUM: usize = 10;
    pub const IP_SRC: usize = 12;
    pub const IP_DST: usize = 16;
    pub const L4_SPORT: usize = 0;
    pub const L4_DPORT: usize = 2;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CSUM: usize = 16;
    pub const UDP_CSUM: usize = 6;
}

/// What the rest of the program needs to know about a packet.
pub struct Packet {
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    pub tcp_flags: u8,
    pub tos: u8,
    pub ip_tot_len_be: u16,
    /// Frame length, for byte counters.
    pub len: u32,
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
    // SAFETY: ptr_at checked the bounds; packet data has no alignment guarantee.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Parses Ethernet, IPv4 and TCP/UDP. `Err` names the counter of a packet passed untouched.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, StatSlot> {
    let ether_type = u16::from_be(load::<u16>(ctx, off::ETH_PROTO).ok_or(StatSlot::PassMalformed)?);
    if ether_type != ETH_P_IP {
        return Err(StatSlot::PassNotFrontend);
    }
    let l3 = ETH_HLEN;
    // Version/IHL byte, then the whole fixed header.
    let ver_ihl = load::<u8>(ctx, l3).ok_or(StatSlot::PassMalformed)?;
    if ptr_at::<[u8; IPV4_HLEN]>(ctx, l3).is_none() || ver_ihl >> 4 != 4 {
        return Err(StatSlot::PassMalformed);
    }
    let ihl = ver_ihl & 0x0f;
    if ihl < 5 {
        return Err(StatSlot::PassMalformed);
    }
    if ihl != 5 {
        // Policy: options are rare and never on our frontends' traffic; the kernel handles them.
        return Err(StatSlot::PassIpOptions);
    }
    let frag = u16::from_be(load::<u16>(ctx, l3 + off::IP_FRAG).ok_or(StatSlot::PassMalformed)?);
    if frag & 0x3fff != 0 {
        // MF set or a non-zero offset: no ports to balance on. The kernel reassembles.
        return Err(StatSlot::PassFragment);
    }
    let protocol = load::<u8>(ctx, l3 + off::IP_PROTO).ok_or(StatSlot::PassMalformed)?;
    let l4 = l3 + IPV4_HLEN;
    let tcp_flags = match protocol {
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
        _ => return Err(StatSlot::PassNotFrontend),
    };
    let src = load::<u32>(ctx, l3 + off::IP_SRC).ok_or(StatSlot::PassMalformed)?;
    let dst = load::<u32>(ctx, l3 + off::IP_DST).ok_or(StatSlot::PassMalformed)?;
    let sport_be = load::<u16>(ctx, l4 + off::L4_SPORT).ok_or(StatSlot::PassMalformed)?;
    let dport_be = load::<u16>(ctx, l4 + off::L4_DPORT).ok_or(StatSlot::PassMalformed)?;
    let tos = load::<u8>(ctx, l3 + off::IP_TOS).ok_or(StatSlot::PassMalformed)?;
    let ip_tot_len_be = load::<u16>(ctx, l3 + off::IP_TOT_LEN).ok_or(StatSlot::PassMalformed)?;
    Ok(Packet {
        key: FlowKey {
            src: Addr::from_v4_raw(src),
            dst: Addr::from_v4_raw(dst),
            sport_be,
            dport_be,
            proto: protocol,
            _pad: [0; 3],
        },
        l3,
        l4,
        tcp_flags,
        tos,
        ip_tot_len_be,
        len: (ctx.data_end() - ctx.data()) as u32,
    })
}
