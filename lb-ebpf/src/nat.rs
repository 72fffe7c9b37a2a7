//! Address and port rewriting with incremental checksum updates (RFC 1624).
//!
//! Checksums and header words are handled as they sit in memory: one's complement sums do not
//! care about byte order as long as every operand is read the same way.

use aya_ebpf::programs::XdpContext;
use lb_common::maps::proto;

use crate::parse::{Packet, off, ptr_at};

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!csum) + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// New checksum after a 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum Side {
    /// DNAT: client to backend.
    Destination,
    /// Reverse translation: backend to client, the source becomes the frontend.
    Source,
}

/// Rewrites the IPv4 address and the L4 port of one side, fixing both checksums.
/// Returns `None` if the packet is shorter than the parser saw (cannot happen; kept for the
/// verifier).
#[inline(always)]
pub fn rewrite_v4(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    addr_raw: u32,
    port_be: u16,
) -> Option<()> {
    let (addr_off, port_off) = match side {
        Side::Destination => (off::IP_DST, off::L4_DPORT),
        Side::Source => (off::IP_SRC, off::L4_SPORT),
    };
    let ip_addr = ptr_at::<u32>(ctx, pkt.l3 + addr_off)?;
    let ip_csum = ptr_at::<u16>(ctx, pkt.l3 + off::IP_CSUM)?;
    let l4_port = ptr_at::<u16>(ctx, pkt.l4 + port_off)?;
    let csum_off = if pkt.key.proto == proto::TCP {
        off::TCP_CSUM
    } else {
        off::UDP_CSUM
    };
    let l4_csum = ptr_at::<u16>(ctx, pkt.l4 + csum_off)?;
    // SAFETY: every pointer was bounds-checked by ptr_at; unaligned access is used throughout.
    unsafe {
        let old_addr = ip_addr.read_unaligned();
        let old_port = l4_port.read_unaligned();
        ip_addr.write_unaligned(addr_raw);
        l4_port.write_unaligned(port_be);
        ip_csum.write_unaligned(csum_replace4(ip_csum.read_unaligned(), old_addr, addr_raw));
        let csum = l4_csum.read_unaligned();
        // UDP over IPv4 may carry no checksum (0); it must stay 0 then.
        if pkt.key.proto == proto::TCP || csum != 0 {
            let mut updated =
                csum_replace2(csum_replace4(csum, old_addr, addr_raw), old_port, port_be);
            if pkt.key.proto == proto::UDP && updated == 0 {
                updated = 0xffff;
            }
            l4_csum.write_unaligned(updated);
        }
    }
    Some(())
}
