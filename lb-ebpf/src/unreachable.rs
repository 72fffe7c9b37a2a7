//! ICMP "destination unreachable" answers, from the address the sender sent to, quoting its
//! packet as it sent it:
//! - A translated TCP/UDP packet too big for its egress MTU: ICMP "fragmentation needed"
//!   (IPv4) or ICMPv6 "packet too big", quoting all that fits in 576 (1280) bytes, so path MTU
//!   discovery works through the balancer. Others too big (ICMP, shorter than the quote) are
//!   dropped and counted as `drop_too_big`.
//! - A client's UDP datagram to a service with no usable backend: ICMP (ICMPv6) "port
//!   unreachable", as the node's own stack answers a datagram to a closed port, so a connected
//!   socket learns at once (`ECONNREFUSED`); at most `UNREACHABLE_PER_CPU_PER_WINDOW` a
//!   window per CPU. It quotes the IP and UDP headers only, what a sender matches its socket
//!   by (RFC 792's minimum; short of RFC 4443's "as much as fits" for ICMPv6, on purpose), so
//!   the answer is hardly longer than the datagram.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    limits::{UNREACHABLE_PER_CPU_PER_WINDOW, UNREACHABLE_WINDOW_SHIFT},
    maps::proto,
    stats::StatSlot,
};

use crate::{
    conntrack::now_ns,
    forward,
    maps::UNREACHABLE_BUDGET,
    nat::{self, Side, add_word, fold},
    parse::{IPV4_HLEN, IPV6_HLEN, Packet, pkt_read, pkt_write, ptr_at},
    sender::{self, ANSWER_TTL},
    stats::count,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_HLEN: usize = 8;
const UDP_HLEN: usize = 8;
/// A refused datagram's quote: its IP header and UDP header.
const REFUSED_QUOTE: usize = IPV4_HLEN + UDP_HLEN;
const REFUSED_QUOTE6: usize = IPV6_HLEN + UDP_HLEN;
/// The quote: as much of the packet as fits in 576 bytes (RFC 1812 §4.3.2.3). Every packet
/// too big for an egress MTU of 576 or more is at least this long.
const QUOTE: usize = 576 - IPV4_HLEN - ICMP_HLEN;
/// The ICMP message, summed in two pieces (bpf_csum_diff takes at most 512 bytes).
const SUM_FIRST: usize = 512;
const SUM_REST: usize = ICMP_HLEN + QUOTE - SUM_FIRST;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// IPv6's quote: as much as fits in the minimum IPv6 MTU, 1280 bytes (RFC 4443 §2.4).
const QUOTE6: usize = 1280 - IPV6_HLEN - ICMP_HLEN;
/// The ICMPv6 message in three pieces (bpf_csum_diff takes at most 512 bytes).
const SUM6_LAST: usize = ICMP_HLEN + QUOTE6 - 2 * SUM_FIRST;
/// Ethernet and up to two VLAN tags, moved to the new front.
const MAX_L2: usize = 22;

/// Answers the packet `pkt` (translated) that `forward::send` found too big for an egress MTU
/// of `mtu`. Not inlined: a rare path, below the entry function only.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, pkt: &mut Packet, mtu: u16) -> u32 {
    // IPv6's "packet too big" may answer a link-layer group frame: path MTU discovery needs
    // it whoever the frame went to.
    if !sender::may_answer_error(ctx, pkt, pkt.v6) {
        count(StatSlot::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    answer::<false>(ctx, pkt, mtu)
}

/// Answers a client's datagram `pkt` (untranslated) refused for want of a backend, if
/// `sender::may_answer_error` and within the budget (else dropped, `drop_no_backend`). A
/// function of its own rather than `too_big` with a flag: the verifier checks each for its
/// own case only.
#[inline(never)]
pub fn port_unreachable(ctx: &XdpContext, pkt: &mut Packet) -> u32 {
    if !sender::may_answer_error(ctx, pkt, false) || !within_budget() {
        count(StatSlot::DropNoBackend);
        return xdp_action::XDP_DROP;
    }
    answer::<true>(ctx, pkt, 0)
}

/// Takes one of this CPU's "port unreachable" answers of the current window
/// (`UNREACHABLE_PER_CPU_PER_WINDOW`); false when they are spent.
#[inline(always)]
fn within_budget() -> bool {
    let Some(budget) = UNREACHABLE_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let window = (now_ns() >> UNREACHABLE_WINDOW_SHIFT) as u32;
    // SAFETY: per-CPU value, nobody else writes it while this program runs on this CPU.
    let (last, sent) = unsafe { ((*budget >> 32) as u32, *budget as u32) };
    let sent = if last == window { sent } else { 0 };
    if sent >= UNREACHABLE_PER_CPU_PER_WINDOW {
        return false;
    }
    // SAFETY: as above.
    unsafe { *budget = u64::from(window) << 32 | u64::from(sent + 1) };
    true
}

/// `too_big`, or with `REFUSED` `port_unreachable` (its "unused" word the `mtu` of 0).
#[inline(always)]
fn answer<const REFUSED: bool>(ctx: &XdpContext, pkt: &mut Packet, mtu: u16) -> u32 {
    let (answered, dropped) = if REFUSED {
        (StatSlot::RefusedNoBackend, StatSlot::DropNoBackend)
    } else {
        (StatSlot::IcmpTooBig, StatSlot::DropTooBig)
    };
    if build::<REFUSED>(ctx, pkt, mtu).is_none() {
        count(dropped);
        return xdp_action::XDP_DROP;
    }
    count(answered);
    let (ip_hlen, icmp_proto, icmp_type) = match (pkt.v6, REFUSED) {
        (true, true) => (IPV6_HLEN, proto::ICMPV6, ICMPV6_DEST_UNREACH),
        (true, false) => (IPV6_HLEN, proto::ICMPV6, ICMPV6_PACKET_TOO_BIG),
        (false, _) => (IPV4_HLEN, proto::ICMP, ICMP_DEST_UNREACH),
    };
    let ip_len = ip_hlen + ICMP_HLEN + quote(pkt.v6, REFUSED);
    // The packet as `forward::send` needs to see the answer, written over the parsed one
    // (no longer needed): a copy would not fit the BPF stack below the entry function's.
    let origin = pkt.key.src;
    pkt.key.src = pkt.key.dst;
    pkt.key.dst = origin;
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

/// How much of the packet the answer quotes.
#[inline(always)]
fn quote(v6: bool, refused: bool) -> usize {
    match (v6, refused) {
        (true, true) => REFUSED_QUOTE6,
        (true, false) => QUOTE6,
        (false, true) => REFUSED_QUOTE,
        (false, false) => QUOTE,
    }
}

/// Turns the packet into the ICMP error. `None` leaves it to be dropped.
#[inline(always)]
fn build<const REFUSED: bool>(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    if pkt.key.proto != proto::TCP && pkt.key.proto != proto::UDP {
        return None;
    }
    let quote = quote(pkt.v6, REFUSED);
    if pkt.v6 {
        make_room::<REFUSED>(ctx, pkt, IPV6_HLEN + ICMP_HLEN, quote)?;
        build_v6::<REFUSED>(ctx, pkt, mtu)
    } else {
        make_room::<REFUSED>(ctx, pkt, IPV4_HLEN + ICMP_HLEN, quote)?;
        build_v4::<REFUSED>(ctx, pkt, mtu)
    }
}

/// Undoes the translation of a packet too big (the quote is the packet as its sender sent
/// it; a refused one was not translated), makes `grow` bytes of room for the new IP and ICMP
/// headers in front of the quote, and cuts the packet after `quote` bytes of it.
#[inline(always)]
fn make_room<const REFUSED: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    grow: usize,
    quote: usize,
) -> Option<()> {
    let l3 = pkt.l3();
    if pkt.ip_end() < l3 + quote {
        return None;
    }
    if !REFUSED
        && (!nat::rewrite(ctx, pkt, Side::Destination, &pkt.key.dst, pkt.key.dport_be)
            || !nat::rewrite(ctx, pkt, Side::Source, &pkt.key.src, pkt.key.sport_be))
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

/// The IPv4 header and the ICMP "fragmentation needed" (or "port unreachable") in front of
/// the quote. Not inlined (nor is `build_v6`): the two would share `answer`'s stack frame,
/// which is limited.
#[inline(never)]
fn build_v4<const REFUSED: bool>(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    let code = if REFUSED {
        ICMP_PORT_UNREACH
    } else {
        ICMP_FRAG_NEEDED
    };
    let l3 = pkt.l3();
    let ip = ptr_at::<[u32; 5]>(ctx, l3)?;
    let tot_len = ((IPV4_HLEN + ICMP_HLEN + quote(false, REFUSED)) as u16).to_be_bytes();
    let mut header = [
        u32::from_ne_bytes([0x45, 0, tot_len[0], tot_len[1]]),
        0,
        u32::from_ne_bytes([ANSWER_TTL, proto::ICMP, 0, 0]),
        // From the address the sender sent to, as a router on its path would answer.
        pkt.key.dst.v4_raw(),
        pkt.key.src.v4_raw(),
    ];
    let mut sum = 0;
    for w in &header {
        sum = add_word(sum, *w);
    }
    let csum = (!fold(sum)).to_ne_bytes();
    header[2] = u32::from_ne_bytes([ANSWER_TTL, proto::ICMP, csum[0], csum[1]]);
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(ip, header) };

    let icmp = ptr_at::<[u32; 2]>(ctx, l3 + IPV4_HLEN)?;
    let mtu = mtu.to_be_bytes();
    // A refused datagram's "unused" word is the MTU of 0.
    let mut icmp_header = [
        u32::from_ne_bytes([ICMP_DEST_UNREACH, code, 0, 0]),
        u32::from_ne_bytes([0, 0, mtu[0], mtu[1]]),
    ];
    // SAFETY: bounds-checked by ptr_at.
    unsafe { pkt_write(icmp, icmp_header) };
    let at = l3 + IPV4_HLEN;
    let sum = if REFUSED {
        add_bytes::<{ ICMP_HLEN + REFUSED_QUOTE }>(ctx, at, 0)?
    } else {
        let sum = add_bytes::<SUM_FIRST>(ctx, at, 0)?;
        add_bytes::<SUM_REST>(ctx, at + SUM_FIRST, sum)?
    };
    let csum = (!fold(sum)).to_ne_bytes();
    icmp_header[0] = u32::from_ne_bytes([ICMP_DEST_UNREACH, code, csum[0], csum[1]]);
    // SAFETY: bounds-checked by ptr_at above (the packet has not changed since).
    unsafe { pkt_write(icmp, icmp_header) };
    Some(())
}

/// The IPv6 header and the ICMPv6 "packet too big" (or "port unreachable") in front of the
/// quote.
#[inline(never)]
fn build_v6<const REFUSED: bool>(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Option<()> {
    let (icmp_type, code) = if REFUSED {
        (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH)
    } else {
        (ICMPV6_PACKET_TOO_BIG, 0)
    };
    let message_len = ICMP_HLEN + quote(true, REFUSED);
    let l3 = pkt.l3();
    let ip = ptr_at::<[u32; 10]>(ctx, l3)?;
    let payload_len = (message_len as u16).to_be_bytes();
    // From the address the sender sent to, as a router on its path would answer.
    let (src, dst) = (pkt.key.dst.words, pkt.key.src.words);
    let header = [
        u32::from_ne_bytes([0x60, 0, 0, 0]),
        u32::from_ne_bytes([payload_len[0], payload_len[1], proto::ICMPV6, ANSWER_TTL]),
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
    // A refused datagram's "unused" word is the MTU of 0.
    let mut icmp_header = [
        u32::from_ne_bytes([icmp_type, code, 0, 0]),
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
    sum = add_word(sum, (message_len as u32).to_be());
    sum = add_word(sum, u32::from(proto::ICMPV6).to_be());
    let at = l3 + IPV6_HLEN;
    let sum = if REFUSED {
        add_bytes::<{ ICMP_HLEN + REFUSED_QUOTE6 }>(ctx, at, sum)?
    } else {
        let sum = add_bytes::<SUM_FIRST>(ctx, at, sum)?;
        let sum = add_bytes::<SUM_FIRST>(ctx, at + SUM_FIRST, sum)?;
        add_bytes::<SUM6_LAST>(ctx, at + 2 * SUM_FIRST, sum)?
    };
    let csum = (!fold(sum)).to_ne_bytes();
    icmp_header[0] = u32::from_ne_bytes([icmp_type, code, csum[0], csum[1]]);
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
