//! Address and port rewriting with incremental checksum updates (RFC 1624).
//!
//! Checksums and header words are handled as they sit in memory: one's complement sums do not
//! care about byte order as long as every operand is read the same way.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, maps::proto};

use crate::parse::{IPV4_HLEN, Packet, off, pkt_read, pkt_write, ptr_at};

/// Folds a one's complement sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds a 32-bit word, as two 16-bit halves, to a one's complement sum (words as they sit
/// in memory), for checksums computed from scratch.
#[inline(always)]
pub fn add_word(sum: u32, word: u32) -> u32 {
    let sum = sum + (word & 0xffff) + (word >> 16);
    (sum & 0xffff) + (sum >> 16)
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

/// Rewrites the address and L4 port of one side of the packet, fixing the checksums (the IPv4
/// header's and the TCP/UDP one, whose pseudo-header covers the addresses). False only if the
/// packet is shorter than the parser saw, which cannot happen; kept for the verifier.
/// Inlined: it is on every translated packet's path (see `to_backend`).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, side: Side, addr: &Addr, port_be: u16) -> bool {
    rewrite_in_place(ctx, pkt, side, addr, port_be).is_some()
}

#[inline(always)]
fn rewrite_in_place(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    addr: &Addr,
    port_be: u16,
) -> Option<()> {
    let port_off = match side {
        Side::Destination => off::L4_DPORT,
        Side::Source => off::L4_SPORT,
    };
    let l4_port = ptr_at::<u16>(ctx, pkt.l4() + port_off)?;
    let csum_off = if pkt.key.proto == proto::TCP {
        off::TCP_CSUM
    } else {
        off::UDP_CSUM
    };
    let l4_csum = ptr_at::<u16>(ctx, pkt.l4() + csum_off)?;
    // SAFETY: every pointer is bounds-checked by ptr_at.
    unsafe {
        let mut csum = pkt_read(l4_csum);
        // UDP over IPv4 may carry no checksum (0); it must stay 0 then.
        let update_l4 = pkt.key.proto == proto::TCP || csum != 0;
        if pkt.v6 {
            let addr_off = match side {
                Side::Destination => off::IP6_DST,
                Side::Source => off::IP6_SRC,
            };
            let ip_addr = ptr_at::<[u32; 4]>(ctx, pkt.l3() + addr_off)?;
            let old = pkt_read(ip_addr);
            pkt_write(ip_addr, addr.words);
            for i in 0..4 {
                csum = csum_replace4(csum, old[i], addr.words[i]);
            }
        } else {
            let addr_off = match side {
                Side::Destination => off::IP_DST,
                Side::Source => off::IP_SRC,
            };
            // Both through the one bounds-checked header pointer: checked apart, the compiler
            // may drop the second check as implied by the first, and the verifier then sees
            // a pointer it never checked.
            let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, pkt.l3())?.cast::<u8>();
            let ip_addr = ip.add(addr_off).cast::<u32>();
            let ip_csum = ip.add(off::IP_CSUM).cast::<u16>();
            let old = pkt_read(ip_addr);
            let new = addr.v4_raw();
            pkt_write(ip_addr, new);
            pkt_write(ip_csum, csum_replace4(pkt_read(ip_csum), old, new));
            csum = csum_replace4(csum, old, new);
        }
        let old_port = pkt_read(l4_port);
        pkt_write(l4_port, port_be);
        if update_l4 {
            let mut updated = csum_replace2(csum, old_port, port_be);
            if pkt.key.proto == proto::UDP && updated == 0 {
                updated = 0xffff;
            }
            pkt_write(l4_csum, updated);
        }
    }
    Some(())
}
