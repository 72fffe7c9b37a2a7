//! A translated TCP/UDP packet too big for its egress MTU is answered to its sender with ICMP
//! "fragmentation needed" (IPv4) or ICMPv6 "packet too big", quoting the packet as the sender
//! sent it (the translation undone), so path MTU discovery works through the balancer. Others
//! too big (ICMP, shorter than the quote) are dropped and counted as `drop_too_big`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{maps::proto, stats::StatSlot};

use crate::{
    forward,
    nat::{self, Side, add_word, fold},
    parse::{IPV4_HLEN, IPV6_HLEN, Packet, pkt_read, pkt_write, ptr_at},
    stats::count,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_HLEN: usize = 8;
/// The quote: as much of the packet as fits in 576 bytes (RFC 1812 §4.3.2.3). Every packet
/// too big for an egress MTU of 576 or more is at least this long.
const QUOTE: usize = 576 - IPV4_HLEN - ICMP_HLEN;
/// The ICMP message, summed in two pieces (bpf_csum_diff takes at most 512 bytes).
const SUM_FIRST: usize = 512;
const SUM_REST: usize = ICMP_HLEN + QUOTE - SUM_FIRST;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// IPv6's quote: as much as fits in the minimum IPv6 MTU, 1280 bytes (RFC 4443 §2.4).
const QUOTE6: usize = 1280 - IPV6_HLEN - ICMP_HLEN;
/// The ICMPv6 message in three pieces (bpf_csum_diff takes at most 512 bytes).
const SUM6_LAST: usize = ICMP_HLEN + QUOTE6 - 2 * SUM_FIRST;
/// Ethernet and up to two VLAN tags, moved to the new front.
const MAX_L2: usize = 22;
const TTL: u8 = 64;

/// Answers the packet `pkt` (already translated) that `forward::send` found too big for an
/// egress MTU of `mtu`. Not inlined: a rare path, below the entry function only.
#[inline(never)]
pub fn answer(ctx: &XdpContext, pkt: &mut Packet, mtu: u16) -> u32 {
    if build(ctx, pkt, mtu).is_none() {
        count(StatSlot::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    count(StatSlot::IcmpTooBig);
    let (ip_hlen, ip_len, icmp_proto, icmp_type) = if pkt.v6 {
        let len = IPV6_HLEN + ICMP_HLEN + QUOTE6;
        (IPV6_HLEN, len, proto::ICMPV6, ICMPV6_PACKET_TOO_BIG)
    } else {
        let len = IPV4_HLEN + ICMP_HLEN + QUOTE;
        (IPV4_HLEN, len, proto::ICMP, ICMP_DEST_UNREACH)
    };
    // The packet as `forward::send` needs to see the answer, written over the parsed one
    // (no longer needed): a copy would not fit the BPF stack below the entry function's.
    let sender = pkt.key.src;
    pkt.key.src = pkt.key.dst;
    pkt.key.dst = sender;
    pkt.key.set_ports_word(0);
    pkt.key.set_proto(icmp_proto);
    pkt.l4 = pkt.l3 + ip_hlen as u16;
    pkt.tcp_flags = 0;
    pkt.icmp_type = icmp_type;
    pkt.tos = 0;
    pkt.ip_tot_len_be = (ip_len as u16).to_be();
    pkt.len = (pkt.l3() + ip_len) as u32;
    pkt.opened_flow = false;
    // Answered from here, not through the tunnel.
    pkt.tunnel_peer = 0;
    let out: &Packet = pkt;
    let action = forward::send(ctx, out, &out.key.src, &out.key.dst, core::ptr::null_mut());
    if action.too_big_mtu().is_some() {
        count(StatSlot::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    action.raw()
}

/// Turns the packet into the ICMP error. `None` leaves it to be dropped.
#[inline(always)]
fn build(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    if pkt.key.proto != proto::TCP && pkt.key.proto != proto::UDP {
        return None;
    }
    if pkt.v6 {
        make_room(ctx, pkt, IPV6_HLEN + ICMP_HLEN, QUOTE6)?;
        build_v6(ctx, pkt, mtu)
    } else {
        make_room(ctx, pkt, IPV4_HLEN + ICMP_HLEN, QUOTE)?;
        build_v4(ctx, pkt, mtu)
    }
}

/// Undoes the translation (the quote is the packet as its sender sent it), makes `grow` bytes
/// of room for the new IP and ICMP headers in front of the quote, and cuts the packet after
/// `quote` bytes of it.
#[inline(always)]
fn make_room(ctx: &XdpContext, pkt: &Packet, grow: usize, quote: usize) -> Option<()> {
    let l3 = pkt.l3();
    if pkt.ip_end() < l3 + quote {
        return None;
    }
    if !nat::rewrite(ctx, pkt, Side::Destination, &pkt.key.dst, pkt.key.dport_be)
        || !nat::rewrite(ctx, pkt, Side::Source, &pkt.key.src, pkt.key.sport_be)
    {
        return None;
    }
    // SAFETY: grows the headroom; checked.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return None;
    }
    // The link-layer header moves to the new front (copying MAX_L2 bytes whatever `l3` is:
    // the rest is overwritten by the caller).
    let front = ptr_at::<[u16; (MAX_L2 + IPV6_HLEN + ICMP_HLEN) / 2]>(ctx, 0)?.cast::<u16>();
    for i in 0..MAX_L2 / 2 {
        // SAFETY: within the bounds checked above (grow <= IPV6_HLEN + ICMP_HLEN); source and
        // destination do not overlap.
        unsafe { pkt_write(front.add(i), pkt_read(front.add(grow / 2 + i))) };
    }
    let want = l3 + grow + quote;
    let have = ctx.data_end() - ctx.data();
    // SAFETY: shrinks the packet to the headers and the quote (have >= want: checked above).
    if have > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - have as i32) } != 0 {
        return None;
    }
    Some(())
}

/// The IPv4 header and the ICMP "fragmentation needed" in front of the quote. Not inlined
/// (nor is `build_v6`): the two would share `answer`'s stack frame, which is limited.
#[inline(never)]
fn build_v4(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    let l3 = pkt.l3();
    let ip = ptr_at::<[u32; 5]>(ctx, l3)?;
    let tot_len = ((IPV4_HLEN + ICMP_HLEN + QUOTE) as u16).to_be_bytes();
    let mut header = [
        u32::from_ne_bytes([0x45, 0, tot_len[0], tot_len[1]]),
        0,
        u32::from_ne_bytes([TTL, proto::ICMP, 0, 0]),
        // From the address the sender sent to, as a router on its path would answer.
        pkt.key.dst.v4_raw(),
        pkt.key.src.v4_raw(),
    ];
    let mut sum = 0;
    for w in &header {
        sum = add_word(sum, *w);
    }
    let csum = (!fold(sum)).to_ne_bytes();
    header[2] = u32::from_ne_bytes([TTL, proto::ICMP, csum[0], csum[1]]);
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(ip, header) };

    let icmp = ptr_at::<[u32; 2]>(ctx, l3 + IPV4_HLEN)?;
    let mtu = mtu.to_be_bytes();
    let mut icmp_header = [
        u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0]),
        u32::from_ne_bytes([0, 0, mtu[0], mtu[1]]),
    ];
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(icmp, icmp_header) };
    let at = l3 + IPV4_HLEN;
    let sum = add_bytes::<SUM_FIRST>(ctx, at, 0)?;
    let sum = add_bytes::<SUM_REST>(ctx, at + SUM_FIRST, sum)?;
    let csum = (!fold(sum)).to_ne_bytes();
    icmp_header[0] = u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, csum[0], csum[1]]);
    // SAFETY: bounds-checked by ptr_at above (the packet has not changed since).
    unsafe { pkt_write(icmp, icmp_header) };
    Some(())
}

/// The IPv6 header and the ICMPv6 "packet too big" in front of the quote.
#[inline(never)]
fn build_v6(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    let l3 = pkt.l3();
    let ip = ptr_at::<[u32; 10]>(ctx, l3)?;
    let payload_len = ((ICMP_HLEN + QUOTE6) as u16).to_be_bytes();
    // From the address the sender sent to, as a router on its path would answer.
    let (src, dst) = (pkt.key.dst.words, pkt.key.src.words);
    let header = [
        u32::from_ne_bytes([0x60, 0, 0, 0]),
        u32::from_ne_bytes([payload_len[0], payload_len[1], proto::ICMPV6, TTL]),
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(ip, header) };

    let icmp = ptr_at::<[u32; 2]>(ctx, l3 + IPV6_HLEN)?;
    let mut icmp_header = [
        u32::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0, 0, 0]),
        u32::from(mtu).to_be(),
    ];
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(icmp, icmp_header) };
    // The pseudo-header: addresses, upper-layer length, next header.
    let mut sum = 0;
    for i in 0..4 {
        sum = add_word(sum, src[i]);
        sum = add_word(sum, dst[i]);
    }
    sum = add_word(sum, ((ICMP_HLEN + QUOTE6) as u32).to_be());
    sum = add_word(sum, u32::from(proto::ICMPV6).to_be());
    let at = l3 + IPV6_HLEN;
    let sum = add_bytes::<SUM_FIRST>(ctx, at, sum)?;
    let sum = add_bytes::<SUM_FIRST>(ctx, at + SUM_FIRST, sum)?;
    let sum = add_bytes::<SUM6_LAST>(ctx, at + 2 * SUM_FIRST, sum)?;
    let csum = (!fold(sum)).to_ne_bytes();
    icmp_header[0] = u32::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0, csum[0], csum[1]]);
    // SAFETY: bounds-checked by ptr_at above (the packet has not changed since).
    unsafe { pkt_write(icmp, icmp_header) };
    Some(())
}

/// `sum` plus the `N` packet bytes at `at`, as an unfolded one's complement sum
/// (`bpf_csum_diff` takes at most 512 bytes a call). `None` if they are not in the packet.
#[inline(always)]
fn add_bytes<const N: usize>(ctx: &XdpContext, at: usize, sum: u32) -> Option<u32> {
    let bytes = ptr_at::<[u8; N]>(ctx, at)?;
    // SAFETY: bounds-checked packet memory of N bytes.
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.cast(), N as u32, sum) };
    u32::try_from(s).ok()
}
