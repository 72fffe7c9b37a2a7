//! ICMP: echo requests to a VIP are answered; errors about a tracked flow (destination
//! unreachable, fragmentation needed / packet too big, time exceeded, parameter problem) are
//! translated like the flow's own packets and sent to the right endpoint.
//!
//! An error quotes the packet that caused it (IP header + first 8 bytes of L4). The quote of
//! a client-to-backend packet is translated with the reply entry (it travels to the client);
//! the quote of a reply we sent is translated with the forward entry (it travels to the
//! backend). The inner TCP/UDP checksum is updated when the quote holds it.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr,
    maps::{EndpointKey, FlowKey, flow_kind, proto},
    stats::StatSlot,
};

use crate::{
    conntrack, forward,
    maps::{FRONTENDS, reply_frontend_of},
    nat::{csum_replace2, csum_replace4},
    parse::{ICMP_HLEN, IPV4_HLEN, IPV6_HLEN, Packet, off, ptr_at},
    sender::{self, ANSWER_TTL},
    stateless,
    stats::count,
    verdict::Verdict,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
const ICMPV6_ECHO: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// An ICMP or ICMPv6 packet. Inlined: `echo` and `error` are its calls, and each needs the
/// stack room of one frame below the entry function.
#[inline(always)]
pub fn handle(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    let ty = pkt.icmp_type;
    let is_error = if pkt.v6 {
        (ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM).contains(&ty)
    } else {
        matches!(
            ty,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    };
    // A `Verdict` (one register) crosses each call: an Option would come back through a
    // pointer into the caller's stack, which the verifier refuses.
    let action = if ty == if pkt.v6 { ICMPV6_ECHO } else { ICMP_ECHO } {
        echo(ctx, pkt)
    } else if is_error {
        error(ctx, pkt)
    } else {
        Verdict::NOT_OURS
    };
    if action != Verdict::NOT_OURS {
        return action;
    }
    Verdict::untaken(pkt, StatSlot::PassNotFrontend)
}

/// Answers an echo request to a VIP in place: addresses swapped, type changed.
#[inline(never)]
fn echo(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    answer_echo(ctx, pkt).unwrap_or(Verdict::NOT_OURS)
}

#[inline(always)]
fn answer_echo(ctx: &XdpContext, pkt: &Packet) -> Option<Verdict> {
    let vip = EndpointKey::new(pkt.key.dst, 0, pkt.key.proto);
    FRONTENDS.get_ptr(&vip)?;
    // Not ours to answer (RFC 1122 §3.2.2): the kernel's, which drops most such senders as
    // martians.
    if !sender::may_answer(pkt) {
        return None;
    }
    let type_code = ptr_at::<[u8; 2]>(ctx, pkt.l4())?;
    let csum = ptr_at::<u16>(ctx, pkt.l4() + off::ICMP_CSUM)?;
    let reply = if pkt.v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    reset_ttl(ctx, pkt)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe { replace_first_byte(type_code, csum, reply) };
    // Swapping source and destination changes neither the IPv4 header checksum nor the
    // ICMPv6 pseudo-header sum.
    set_addr(ctx, pkt, pkt.l3(), pkt.v6, true, &pkt.key.dst)?;
    set_addr(ctx, pkt, pkt.l3(), pkt.v6, false, &pkt.key.src)?;
    count(StatSlot::IcmpEchoReply);
    Some(forward::send(
        ctx,
        pkt,
        &pkt.key.dst,
        &pkt.key.src,
        core::ptr::null_mut(),
    ))
}

/// Gives the reply a fresh TTL (hop limit), as a host's own reply has: the request's
/// remaining one would expire on the way back from a sender more than half its TTL away.
#[inline(always)]
fn reset_ttl(ctx: &XdpContext, pkt: &Packet) -> Option<()> {
    if pkt.v6 {
        let hop_limit = ptr_at::<u8>(ctx, pkt.l3() + off::IP6_HOP_LIMIT)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { hop_limit.write(ANSWER_TTL) };
        return Some(());
    }
    let ttl_proto = ptr_at::<[u8; 2]>(ctx, pkt.l3() + off::IP_TTL)?;
    let csum = ptr_at::<u16>(ctx, pkt.l3() + off::IP_CSUM)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe { replace_first_byte(ttl_proto, csum, ANSWER_TTL) };
    Some(())
}

/// Writes `byte` over the first of the two bytes at `word` (a type, a TTL) and updates the
/// checksum at `csum` that covers them.
///
/// # Safety
/// Both pointers must be within the packet's bounds.
#[inline(always)]
unsafe fn replace_first_byte(word: *mut [u8; 2], csum: *mut u16, byte: u8) {
    // SAFETY: the caller's.
    unsafe {
        let old = word.read_unaligned();
        let new = [byte, old[1]];
        word.write_unaligned(new);
        csum.write_unaligned(csum_replace2(
            csum.read_unaligned(),
            u16::from_ne_bytes(old),
            u16::from_ne_bytes(new),
        ));
    }
}

/// Writes an address into the IP header at `l3` (source if `source`), without checksums.
#[inline(always)]
fn set_addr(
    ctx: &XdpContext,
    _pkt: &Packet,
    l3: usize,
    v6: bool,
    source: bool,
    addr: &Addr,
) -> Option<()> {
    if v6 {
        let at = l3 + if source { off::IP6_SRC } else { off::IP6_DST };
        let p = ptr_at::<[u32; 4]>(ctx, at)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { p.write_unaligned(addr.words) };
    } else {
        let at = l3 + if source { off::IP_SRC } else { off::IP_DST };
        let p = ptr_at::<u32>(ctx, at)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { p.write_unaligned(addr.v4_raw()) };
    }
    Some(())
}

/// The quoted packet inside an ICMP error.
struct Quote {
    key: FlowKey,
    l3: u16,
    l4: u16,
}

/// Bounds the quote's offsets for the verifier (see `Packet::l3`): the quoted L4 header
/// starts at most at 22 + 40 + 8 + 40 = 110.
const QUOTE_OFFSET_MASK: usize = 0x7f;

impl Quote {
    fn l3(&self) -> usize {
        usize::from(self.l3) & QUOTE_OFFSET_MASK
    }

    fn l4(&self) -> usize {
        usize::from(self.l4) & QUOTE_OFFSET_MASK
    }
}

/// Reads the quote. Fills `q` in place: a struct returned by value or zeroed with
/// `Default` becomes a memcpy/memset call that the verifier refuses on stack memory.
#[inline(always)]
fn quote(ctx: &XdpContext, pkt: &Packet, q: &mut Quote) -> Option<()> {
    // Headers are read whole through the pointer that was bounds-checked: with variable
    // offsets, a second pointer computed for each field would not carry the check for the
    // verifier.
    let l3 = pkt.l4() + ICMP_HLEN;
    q.l3 = l3 as u16;
    // SAFETY (all reads below): within the header ptr_at bounds-checked.
    if pkt.v6 {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3)?.cast::<u8>();
        unsafe {
            q.key.set_proto(ip.add(off::IP6_NEXT).read());
            q.key.src.words = ip.add(off::IP6_SRC).cast::<[u32; 4]>().read_unaligned();
            q.key.dst.words = ip.add(off::IP6_DST).cast::<[u32; 4]>().read_unaligned();
        }
        q.l4 = (l3 + IPV6_HLEN) as u16;
    } else {
        let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3)?.cast::<u8>();
        unsafe {
            if ip.read() != 0x45 {
                return None;
            }
            q.key.set_proto(ip.add(off::IP_PROTO).read());
            q.key.src = Addr::from_v4_raw(ip.add(off::IP_SRC).cast::<u32>().read_unaligned());
            q.key.dst = Addr::from_v4_raw(ip.add(off::IP_DST).cast::<u32>().read_unaligned());
        }
        q.l4 = (l3 + IPV4_HLEN) as u16;
    }
    if q.key.proto != proto::TCP && q.key.proto != proto::UDP {
        return None;
    }
    // RFC 792 quotes at least the first 8 bytes of L4: both ports and the UDP checksum. They
    // must lie inside the ICMP message, not in padding after it.
    if q.l4() + 8 > pkt.ip_end() {
        return None;
    }
    let l4 = ptr_at::<[u16; 4]>(ctx, q.l4())?;
    // SAFETY: bounds-checked by ptr_at.
    let [sport_be, dport_be, _, _] = unsafe { l4.read_unaligned() };
    q.key.set_ports(sport_be, dport_be);
    Some(())
}

/// Where the flow that answers `key` is translated to, if its tracked entry is of `kind`:
/// `nat` and, under full NAT, `snat` (left unspecified otherwise); and the tunnel peer that
/// direction of the flow goes through.
#[inline(always)]
fn entry_answering(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    kind: u8,
    nat: &mut Endpoint,
    snat: &mut Endpoint,
) -> Option<Peer> {
    let answering = FlowKey {
        src: key.dst,
        dst: key.src,
        sport_be: key.dport_be,
        dport_be: key.sport_be,
        proto: key.proto,
        _pad: [0; 3],
    };
    // Confirmed or not (a one-datagram UDP flow stays unconfirmed). A reply entry whose
    // frontend was removed is none, as for the flow's own replies (`to_client`).
    let entry = conntrack::lookup_entry(&answering).filter(|&(flow, pending)| {
        kind != flow_kind::REPLY
            // SAFETY: valid for this program run.
            || unsafe { (*flow).kind } != flow_kind::REPLY
            || conntrack::reply_entry_stands(&answering, flow, pending, conntrack::frontend_gen())
    });
    let Some((flow, _)) = entry else {
        return (kind == flow_kind::REPLY && stateless_frontend(ctx, pkt, &answering, nat))
            .then_some(Peer(0));
    };
    // SAFETY: valid for this program run; read field by field.
    unsafe {
        if (*flow).kind != kind {
            return None;
        }
        nat.addr = (*flow).nat_addr;
        nat.port_be = (*flow).nat_port_be;
        snat.addr = (*flow).snat_addr;
        snat.port_be = (*flow).snat_port_be;
        Some(Peer((*flow).tunnel_peer))
    }
}

/// The mesh-tunnel peer a flow's direction goes through (0: none, sent by the FIB).
struct Peer(u8);

impl Peer {
    /// Sends the translated error the way its flow goes: through the tunnel when the flow's
    /// other end is on another node (its entry node, or its task's), else by the FIB.
    #[inline(always)]
    fn send(self, ctx: &XdpContext, pkt: &Packet, src: &Addr, dst: &Addr) -> Verdict {
        if self.0 != 0 {
            return Verdict::tunnel(self.0);
        }
        forward::send(ctx, pkt, src, dst, core::ptr::null_mut())
    }
}

/// The one frontend of the backend endpoint that sends `answering` (`REPLY_FRONTENDS`), as
/// a reply no entry covers is translated (`stateless::reply`): an unconfirmed flow to such an
/// endpoint has no reply entry (see `conntrack::insert`), and an error about it is the
/// client's all the same, if it goes to a client (see `stateless::forwards_error`).
#[inline(always)]
fn stateless_frontend(
    ctx: &XdpContext,
    pkt: &Packet,
    answering: &FlowKey,
    nat: &mut Endpoint,
) -> bool {
    let Some(entry) = reply_frontend_of(answering) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run (RCU).
    unsafe {
        nat.addr = (*entry).addr;
        nat.port_be = (*entry).port_be;
    }
    stateless::forwards_error(ctx, pkt, &nat.addr)
}

#[inline(never)]
fn error(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    translate_error(ctx, pkt).unwrap_or(Verdict::NOT_OURS)
}

#[inline(always)]
fn translate_error(ctx: &XdpContext, pkt: &Packet) -> Option<Verdict> {
    let mut q = Quote {
        l3: 0,
        l4: 0,
        key: FlowKey {
            src: Addr::UNSPECIFIED,
            dst: Addr::UNSPECIFIED,
            sport_be: 0,
            dport_be: 0,
            proto: 0,
            _pad: [0; 3],
        },
    };
    quote(ctx, pkt, &mut q)?;
    let mut nat = Endpoint::UNSPECIFIED;
    let mut snat = Endpoint::UNSPECIFIED;
    if let Some(peer) = entry_answering(ctx, pkt, &q.key, flow_kind::FORWARD, &mut nat, &mut snat) {
        // The quote is a reply we sent as the frontend: it becomes the backend's packet
        // again (to the node's address and port under full NAT), and the error goes to the
        // backend.
        bool_some(rewrite_quote(ctx, pkt, &q, true, &nat))?;
        if snat.addr != Addr::UNSPECIFIED {
            bool_some(rewrite_quote(ctx, pkt, &q, false, &snat))?;
        }
        bool_some(rewrite_outer(ctx, pkt, false, &pkt.key.dst, &nat.addr))?;
        count(StatSlot::IcmpErrorToBackend);
        return Some(peer.send(ctx, pkt, &pkt.key.src, &nat.addr));
    }
    let peer = entry_answering(ctx, pkt, &q.key, flow_kind::REPLY, &mut nat, &mut snat)?;
    // The quote is a client packet we sent to a backend: the client must see the frontend
    // (and, under full NAT, its own address and port).
    // (References, not copies: this frame and its callees share 512 bytes of stack.)
    bool_some(rewrite_quote(ctx, pkt, &q, false, &nat))?;
    let mut dst = &pkt.key.dst;
    if snat.addr != Addr::UNSPECIFIED {
        bool_some(rewrite_quote(ctx, pkt, &q, true, &snat))?;
        bool_some(rewrite_outer(ctx, pkt, false, dst, &snat.addr))?;
        dst = &snat.addr;
    }
    let mut src = &pkt.key.src;
    if *src == q.key.dst {
        // Sent by the backend itself: it speaks as the frontend.
        bool_some(rewrite_outer(ctx, pkt, true, src, &nat.addr))?;
        src = &nat.addr;
    }
    count(StatSlot::IcmpErrorToClient);
    Some(peer.send(ctx, pkt, src, dst))
}

#[inline(always)]
fn bool_some(ok: bool) -> Option<()> {
    ok.then_some(())
}

/// An address and port a quote is translated to.
struct Endpoint {
    addr: Addr,
    port_be: u16,
}

impl Endpoint {
    const UNSPECIFIED: Self = Self {
        addr: Addr::UNSPECIFIED,
        port_be: 0,
    };
}

/// Changes the outer source (or destination) address from `old` to `new`, with the IPv4
/// header checksum, or the ICMPv6 checksum whose pseudo-header covers it.
#[inline(never)]
fn rewrite_outer(ctx: &XdpContext, pkt: &Packet, source: bool, old: &Addr, new: &Addr) -> bool {
    outer_in_place(ctx, pkt, source, old, new).is_some()
}

#[inline(always)]
fn outer_in_place(
    ctx: &XdpContext,
    pkt: &Packet,
    source: bool,
    old: &Addr,
    new: &Addr,
) -> Option<()> {
    set_addr(ctx, pkt, pkt.l3(), pkt.v6, source, new)?;
    let (csum_at, words) = if pkt.v6 {
        (pkt.l4() + off::ICMP_CSUM, 4)
    } else {
        (pkt.l3() + off::IP_CSUM, 1)
    };
    let csum = ptr_at::<u16>(ctx, csum_at)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        let mut c = csum.read_unaligned();
        for i in 4 - words..4 {
            c = csum_replace4(c, old.words[i], new.words[i]);
        }
        csum.write_unaligned(c);
    }
    Some(())
}

/// Changes the quoted packet's source (or destination) address and port. Every byte changed
/// inside the quote is also accounted in the ICMP checksum, which covers the quote.
/// Not inlined (like `rewrite_outer`): `error` calls them up to three times, and their
/// frames must not add to its own.
#[inline(never)]
fn rewrite_quote(ctx: &XdpContext, pkt: &Packet, q: &Quote, source: bool, to: &Endpoint) -> bool {
    quote_in_place(ctx, pkt, q, source, &to.addr, to.port_be).is_some()
}

#[inline(always)]
fn quote_in_place(
    ctx: &XdpContext,
    pkt: &Packet,
    q: &Quote,
    source: bool,
    addr: &Addr,
    port_be: u16,
) -> Option<()> {
    let icmp_csum = ptr_at::<u16>(ctx, pkt.l4() + off::ICMP_CSUM)?;
    let old_addr = if source { q.key.src } else { q.key.dst };
    let old_port = if source {
        q.key.sport_be
    } else {
        q.key.dport_be
    };
    let words = if pkt.v6 { 4 } else { 1 };
    set_addr(ctx, pkt, q.l3(), pkt.v6, source, addr)?;
    let port = ptr_at::<u16>(
        ctx,
        q.l4() + if source { off::L4_SPORT } else { off::L4_DPORT },
    )?;
    // SAFETY: every pointer is bounds-checked by ptr_at.
    unsafe {
        let mut icmp = icmp_csum.read_unaligned();
        let mut l4_delta_csum = 0xffffu16; // running "what changed" for the quoted L4 checksum
        for i in 4 - words..4 {
            icmp = csum_replace4(icmp, old_addr.words[i], addr.words[i]);
            l4_delta_csum = csum_replace4(l4_delta_csum, old_addr.words[i], addr.words[i]);
        }
        if !pkt.v6 {
            let ip_csum = ptr_at::<u16>(ctx, q.l3() + off::IP_CSUM)?;
            let old = ip_csum.read_unaligned();
            let new = csum_replace4(old, old_addr.v4_raw(), addr.v4_raw());
            ip_csum.write_unaligned(new);
            icmp = csum_replace2(icmp, old, new);
        }
        port.write_unaligned(port_be);
        icmp = csum_replace2(icmp, old_port, port_be);
        l4_delta_csum = csum_replace2(l4_delta_csum, old_port, port_be);
        let l4_csum_at = q.l4()
            + if q.key.proto == proto::TCP {
                off::TCP_CSUM
            } else {
                off::UDP_CSUM
            };
        // The quote may end before the quoted checksum (RFC 792 guarantees 8 bytes of L4); the
        // frame may go on with padding, which is not part of the ICMP message.
        let in_quote = l4_csum_at + 2 <= pkt.ip_end();
        if let Some(l4_csum) = ptr_at::<u16>(ctx, l4_csum_at).filter(|_| in_quote) {
            let old = l4_csum.read_unaligned();
            if old != 0 || q.key.proto == proto::TCP {
                // Apply the same change the addresses and port made: fold the delta in.
                let mut new = csum_add_delta(old, l4_delta_csum);
                if new == 0 && q.key.proto == proto::UDP {
                    // A computed zero is sent as 0xffff: zero means "no checksum" in UDP.
                    new = 0xffff;
                }
                l4_csum.write_unaligned(new);
                icmp = csum_replace2(icmp, old, new);
            }
        }
        icmp_csum.write_unaligned(icmp);
    }
    Some(())
}

/// Applies to `csum` the change recorded in `delta` (a checksum that started as 0xffff, i.e.
/// an empty sum, and was updated with the same replacements).
#[inline(always)]
fn csum_add_delta(csum: u16, delta: u16) -> u16 {
    // delta = ~(~0xffff + changes) = ~changes, so the changes are !delta.
    let mut sum = u32::from(!csum) + u32::from(!delta);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
