//! Address and port rewriting with incremental checksum updates (RFC 1624).
//!
//! Checksums and header words are handled as they sit in memory: one's complement sums do not
//! care about byte order as long as every operand is read the same way.
//!
//! Partial checksums: in generic XDP the program sees socket buffers, and a packet a socket
//! on this host sent (a local container's reply, through `docker_gwbridge`) leaves its
//! TCP/UDP checksum to the device: `CHECKSUM_PARTIAL`, its field holding only the sum of the
//! pseudo-header (addresses, protocol, length), to which the device (or the kernel, for a
//! device that cannot) adds the sum of the segment's own bytes. Updated as a full checksum,
//! such a field is wrong by the address change twice over and by the port change once, and
//! the client drops the packet — on any NIC, though a veth, which passes the packet on still
//! partial, hides it. XDP cannot read the skb's checksum state, so on an interface in
//! generic mode a field equal to the packet's pseudo-header sum is taken as partial and
//! updated as one (addresses only); a complete checksum has that value by chance once in
//! 65,536 packets, and only packets of generic-mode interfaces are ever asked.

use aya_ebpf::programs::XdpContext;
// The arithmetic itself, shared with the bench programs; here for the packet paths' use.
pub use crate::csum::{add_word, csum_replace2, csum_replace4, fold};
use lb_common::{Addr, maps::proto};

use crate::{
    maps::CHECKSUM_STATE,
    parse::{IPV4_HLEN, Packet, off, pkt_read, pkt_write, ptr_at},
};

/// The one's complement sum of the packet's TCP/UDP pseudo-header (addresses, protocol, L4
/// length), unfolded: what a partial checksum's field holds once folded. None if the
/// addresses are not in the packet.
#[inline(always)]
pub fn pseudo_header_sum(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let (l3, l4) = (pkt.l3(), pkt.l4());
    let l4_len = pkt.ip_end().saturating_sub(l4) as u32;
    let mut sum = add_word(0, u32::from(pkt.key.proto).to_be());
    sum = add_word(sum, l4_len.to_be());
    if pkt.v6 {
        let addrs = ptr_at::<[u32; 8]>(ctx, l3 + off::IP6_SRC)?.cast::<u32>();
        for i in 0..8 {
            // SAFETY: within the 32 bytes bounds-checked above.
            sum = add_word(sum, unsafe { pkt_read(addrs.add(i)) });
        }
    } else {
        let addrs = ptr_at::<[u32; 2]>(ctx, l3 + off::IP_SRC)?.cast::<u32>();
        // SAFETY: within the 8 bytes bounds-checked above.
        unsafe {
            sum = add_word(sum, pkt_read(addrs));
            sum = add_word(sum, pkt_read(addrs.add(1)));
        }
    }
    Some(sum)
}

/// Whether the TCP/UDP packet's checksum field is taken as partial (see the module's
/// comment); asked only of packets of generic-mode interfaces, once, after parsing.
/// Not inlined (inlined, the deepest call chain's stack grew past the verifier's limit), so
/// it reads the packet's bounds through volatile loads of the context: the compiler would
/// otherwise pass them in as arguments, and the verifier refuses arithmetic on those.
#[inline(never)]
pub fn checksum_partial(ctx: &XdpContext, pkt: &Packet) -> bool {
    // SAFETY: the context's own fields, which the verifier lets XDP programs read.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    let (l3, l4) = (pkt.l3(), pkt.l4());
    let csum_off = if pkt.key.proto == proto::TCP {
        off::TCP_CSUM
    } else {
        off::UDP_CSUM
    };
    if data + l4 + csum_off + 2 > end {
        return false;
    }
    // SAFETY: bounds-checked above.
    let csum = unsafe { pkt_read((data + l4 + csum_off) as *const u16) };
    // A UDP datagram without a checksum has none to keep.
    if pkt.key.proto != proto::TCP && csum == 0 {
        return false;
    }
    let l4_len = pkt.ip_end().saturating_sub(l4) as u32;
    let mut sum = add_word(0, u32::from(pkt.key.proto).to_be());
    sum = add_word(sum, l4_len.to_be());
    let addrs = data + l3 + if pkt.v6 { off::IP6_SRC } else { off::IP_SRC };
    if pkt.v6 {
        if addrs + 32 > end {
            return false;
        }
        for i in 0..8 {
            // SAFETY: within the 32 bytes bounds-checked above.
            sum = add_word(sum, unsafe { pkt_read((addrs as *const u32).add(i)) });
        }
    } else {
        if addrs + 8 > end {
            return false;
        }
        // SAFETY: within the 8 bytes bounds-checked above.
        unsafe {
            sum = add_word(sum, pkt_read(addrs as *const u32));
            sum = add_word(sum, pkt_read((addrs as *const u32).add(1)));
        }
    }
    fold(sum) == csum
}

/// Sets the packet's checksum state: at the entry, 1 when it came in on an interface in
/// generic mode (its checksum may be partial), 0 otherwise; after parsing, whether it is.
#[inline(always)]
pub fn set_checksum_state(state: u32) {
    if let Some(slot) = CHECKSUM_STATE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, touched by no other program run meanwhile.
        unsafe { *slot = state };
    }
}

/// The packet's checksum state (see `set_checksum_state`).
#[inline(always)]
pub fn checksum_state() -> u32 {
    // SAFETY: this CPU's slot.
    CHECKSUM_STATE.get_ptr(0).map_or(0, |slot| unsafe { *slot })
}

/// All ones when the packet's checksum is partial, else 0.
#[inline(always)]
pub fn partial_mask() -> u16 {
    ((checksum_state() & 1) as u16).wrapping_neg()
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
    // SAFETY: bounds-checked by ptr_at.
    let original = unsafe { pkt_read(l4_csum) };
    // UDP over IPv4 may carry no checksum (0); it must stay 0 then.
    let update_l4 = pkt.key.proto == proto::TCP || original != 0;
    // SAFETY: every pointer is bounds-checked by ptr_at.
    unsafe {
        // A partial field is a plain sum, the complement of what RFC 1624 updates:
        // complemented before the address updates and after (an XOR with `partial_mask`).
        // Masks, not branches: the verifier would walk every translation path twice.
        let mut csum = original ^ partial_mask();
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
        csum ^= partial_mask();
        let old_port = pkt_read(l4_port);
        pkt_write(l4_port, port_be);
        if update_l4 {
            // The ports are a partial checksum's segment bytes, which the device sums itself:
            // then the update is from the new port to itself, which changes nothing.
            let partial = partial_mask();
            let from = (old_port & !partial) | (port_be & partial);
            let mut updated = csum_replace2(csum, from, port_be);
            if pkt.key.proto == proto::UDP && updated == 0 {
                updated = 0xffff;
            }
            pkt_write(l4_csum, updated);
        }
    }
    Some(())
}
