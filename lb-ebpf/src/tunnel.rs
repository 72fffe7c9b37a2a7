//! The mesh tunnel between swarm nodes: a flow that entered this node for a task on another
//! node goes there wrapped in IPv4/UDP (to `tunnel::PORT`, between the two nodes' underlay
//! addresses), and that node sends the task's replies back the same way, so the client's
//! address survives both ways and replies leave from the address the client connected to.
//!
//! Why our own IPv4-in-UDP: the kernels meshlb runs on may lack IPIP, FOU and GENEVE (only
//! VXLAN is sure), and the programs must do the hop themselves. UDP rather than bare IPIP so
//! receiving NICs spread the flows over queues (the source port carries the flow's ports)
//! and middleboxes pass it. Its 28 bytes are paid by clamping the TCP MSS of SYNs sent
//! through it to what the path to the peer carries. An aggregate that still does not fit (in
//! generic mode any TCP packet, which may be one) is left to TC, which wraps a GSO/GRO
//! aggregate (`aggregate`); a TCP segment or UDP datagram that does not fit is answered ICMP
//! "fragmentation needed" with the tunnel's MTU (`unreachable::too_big`); anything else is dropped and
//! counted (`drop_tunnel_failed`), never sent fragmented.
//!
//! ECN crosses the tunnel as RFC 6040's normal mode has it: the outer header carries the
//! inner packet's ECN field (`tunnel::outer_tos` in lb-common), so routers on the underlay
//! mark an ECN-capable flow instead of dropping it, and a CE mark on the outer header reaches
//! the inner packet when it is unwrapped (`receive`; a Not-ECT inner packet is dropped
//! instead, counted `drop_tunnel_ce_not_ect`: its endpoints would not see the congestion), as
//! does an outer ECT(1) over an inner ECT(0).
//!
//! Only peers listed in `TUNNEL_PEER_INDEX` (the swarm's nodes) are unwrapped; other senders'
//! tunnel packets are dropped and counted, and a task's delivery frontend (`TUNNEL_ONLY`)
//! takes nothing that did not come through the tunnel: nobody reaches tasks or spoofs
//! sources this way.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup, xdp_action,
    },
    helpers::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use lb_common::{
    Addr,
    maps::{
        proto, service_flags,
        tunnel::{self, ECN_CE, ECN_ECT0, ECN_ECT1, ECN_MASK, ECN_NOT_ECT, outer_tos},
    },
    stats::StatSlot,
};

use crate::{
    aggregate,
    forward::{self, MemoRoute, fib_lookup_into, fib_macs, set_macs, via_tc},
    l2,
    maps::{TUNNEL_PEER_INDEX, TUNNEL_PEERS, TX_PORTS},
    nat::{csum_replace2, fold, partial_mask},
    parse::{MAX_TAGS_LEN, Packet, TCP_SYN, load, pkt_read, pkt_write, ptr_at},
    stats::count,
    verdict::Verdict,
    zero,
};

/// `receive`'s answer for a packet to drop (already counted).
pub const DROP: u32 = u32::MAX;

const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IPV4_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_HLEN: usize = 20;

/// Whether the frame may be a tunnel packet (IPv4, UDP, to the tunnel port), judged from
/// three fields in place: the entry function asks this before calling `receive`, so other
/// packets pay neither the call (a mispredicted return on CPUs with the SRSO mitigation)
/// nor `receive`'s copy of their headers.
#[inline(always)]
pub fn may_be_tunneled(ctx: &XdpContext) -> bool {
    let Some(h) = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN + UDP_HLEN]>(ctx, 0) else {
        return false;
    };
    let h = h.cast::<u8>();
    // SAFETY: all three inside the bounds-checked headers.
    let (ethertype, protocol, dport) = unsafe {
        (
            pkt_read(h.add(12).cast::<u16>()),
            pkt_read(h.add(ETH_HLEN + 9)),
            pkt_read(h.add(ETH_HLEN + IPV4_HLEN + 2).cast::<u16>()),
        )
    };
    ethertype == ETH_P_IP_BE && protocol == proto::UDP && dport == tunnel::PORT.to_be()
}

/// Whether a packet may go to a frontend (or a flow through it) whose service has `flags`: a
/// task's delivery frontend (`TUNNEL_ONLY`) takes only what came through the mesh tunnel,
/// and what came through it goes to delivery frontends only (or is a reply).
#[inline(always)]
pub fn admits(flags: u32, pkt: &Packet) -> bool {
    (flags & service_flags::TUNNEL_ONLY != 0) == (pkt.tunnel_peer != 0)
}

/// If the packet is a tunnel packet for this node: checks its sender, unwraps it in place,
/// notes the sender's peer index (1..) in `pkt` and answers it. 0 for any other packet
/// (untouched; a peer's stop notice among them), `DROP` for a tunnel packet from a sender
/// that is not a peer, or a peer's that carries neither one IPv4 packet nor a notice. Called
/// only for frames `may_be_tunneled` accepts (IPv4, UDP, the tunnel port: not checked again
/// here).
/// Not inlined: a sibling of the packet paths, so its frame never adds to theirs.
#[inline(never)]
pub fn receive(ctx: &XdpContext, pkt: &mut Packet) -> u32 {
    // Ethernet, IPv4 and UDP headers, copied to the stack (constant offsets from here on).
    let Some(h) = load::<[u8; ETH_HLEN + IPV4_HLEN + UDP_HLEN]>(ctx, 0) else {
        return 0;
    };
    // Only whole, option-less IPv4 (UDP to the tunnel port: `may_be_tunneled`): what `send`
    // writes.
    if h[14] != 0x45 || h[20] & 0x3f != 0 || h[21] != 0 {
        return 0;
    }
    let src = u32::from_ne_bytes([h[26], h[27], h[28], h[29]]);
    let dst = u32::from_ne_bytes([h[30], h[31], h[32], h[33]]);
    match TUNNEL_PEERS.get(tunnel::SELF) {
        Some(own) if *own == dst && *own != 0 => {}
        // Not addressed to this node (or the mesh is off here): not ours to unwrap.
        _ => return 0,
    }
    let Some(peer) = TUNNEL_PEER_INDEX.get_ptr(&src) else {
        count(StatSlot::Rx);
        count(StatSlot::DropTunnelNotPeer);
        return DROP;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let peer = unsafe { *peer };
    let inner = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
    // The inner header's first word: version and total length.
    let Some(inner_start) = load::<[u8; 4]>(ctx, inner) else {
        return 0;
    };
    // IPv4 only, what `send` wraps: anything else a sender puts in is refused here.
    let inner_type = match inner_start[0] >> 4 {
        // Exactly one packet, as `send` and TC's wrap write it (TC's length of a whole
        // aggregate stops at 0xffff): tunnel packets merged by a receiver's UDP GRO carry
        // others' headers in what would be forwarded.
        4 if {
            let outer_len = u16::from_be_bytes([h[16], h[17]]);
            let inner_len = u16::from_be_bytes([inner_start[2], inner_start[3]]);
            outer_len == inner_len.wrapping_add(tunnel::OVERHEAD) || outer_len == u16::MAX
        } =>
        {
            ETH_P_IP_BE
        }
        // A peer's stop notice (userspace's `source::swarm::notices`, whose first byte is 0):
        // for lbd's socket on this port.
        0 => return 0,
        _ => {
            count(StatSlot::Rx);
            count(StatSlot::DropTunnelFailed);
            return DROP;
        }
    };
    // RFC 6040 §4.2, as Linux decapsulates too: congestion the underlay marked (outer CE)
    // goes on to an ECN-capable inner packet, and one that cannot carry the mark is dropped,
    // as the router would have had it not been wrapped; an outer ECT(1) makes an inner ECT(0)
    // ECT(1); anything else leaves the inner field as it is.
    let (outer_ecn, inner_ecn) = (h[15] & ECN_MASK, inner_start[1] & ECN_MASK);
    let set = if outer_ecn == ECN_CE && inner_ecn != ECN_CE {
        Some(ECN_CE)
    } else if outer_ecn == ECN_ECT1 && inner_ecn == ECN_ECT0 {
        Some(ECN_ECT1)
    } else {
        None
    };
    if let Some(ecn) = set {
        let dropped = if inner_ecn == ECN_NOT_ECT {
            Some(StatSlot::DropTunnelCeNotEct)
        } else if !set_ecn(ctx, inner, ecn) {
            Some(StatSlot::DropTunnelFailed)
        } else {
            None
        };
        if let Some(slot) = dropped {
            count(StatSlot::Rx);
            count(slot);
            return DROP;
        }
    }
    let Some(macs) = load::<[u32; 3]>(ctx, 0) else {
        return 0;
    };
    // SAFETY: shrinks the packet's head by the outer headers, which are there (checked).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (IPV4_HLEN + UDP_HLEN) as i32) } != 0 {
        count(StatSlot::Rx);
        count(StatSlot::DropTunnelFailed);
        return DROP;
    }
    let (Some(eth_macs), Some(eth_type)) = (ptr_at::<[u32; 3]>(ctx, 0), ptr_at::<u16>(ctx, 12))
    else {
        count(StatSlot::Rx);
        count(StatSlot::DropTunnelFailed);
        return DROP;
    };
    // SAFETY: both bounds-checked above.
    unsafe {
        pkt_write(eth_macs, macs);
        pkt_write(eth_type, inner_type);
    }
    count(StatSlot::TunnelReceived);
    pkt.tunnel_peer = peer as u8;
    peer
}

/// Sets the ECN field of the IPv4 header at `l3` to `ecn`, updating its checksum. False if
/// the header is not all in the packet.
#[inline(always)]
fn set_ecn(ctx: &XdpContext, l3: usize, ecn: u8) -> bool {
    let Some(ip) = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3) else {
        return false;
    };
    let ip = ip.cast::<u8>();
    // SAFETY: both within the header bounds-checked above.
    unsafe {
        let (word, csum) = (ip.cast::<[u8; 2]>(), ip.add(10).cast::<u16>());
        let old = pkt_read(word);
        let new = [old[0], (old[1] & !ECN_MASK) | ecn];
        pkt_write(word, new);
        let sum = csum_replace2(
            pkt_read(csum),
            u16::from_ne_bytes(old),
            u16::from_ne_bytes(new),
        );
        pkt_write(csum, sum);
    }
    true
}

/// Wraps the (already translated) IPv4 packet for the peer `index` and sends it there: the
/// route to the peer from this CPU's route memo or the FIB, TCP SYNs' MSS clamped to that
/// route's MTU less the tunnel's and the headers' bytes. Called by the entry function on a
/// `Verdict::tunnel` answer. A TCP segment or UDP datagram too big for the tunnel is answered
/// `Verdict::too_big` with the MTU the tunnel leaves it (the path's less 28 bytes), which the
/// entry function answers "fragmentation needed" to its sender.
#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, index: u32) -> Verdict {
    let (Some(&own), Some(&peer)) = (TUNNEL_PEERS.get(tunnel::SELF), TUNNEL_PEERS.get(index))
    else {
        count(StatSlot::DropTunnelFailed);
        return Verdict::xdp(xdp_action::XDP_DROP);
    };
    if own == 0 || peer == 0 || pkt.v6 {
        count(StatSlot::DropTunnelFailed);
        return Verdict::xdp(xdp_action::XDP_DROP);
    }
    let (own_addr, peer_addr) = (Addr::from_v4_raw(own), Addr::from_v4_raw(peer));
    let inner_len = u16::from_be(pkt.ip_tot_len_be);
    let outer_len = inner_len.saturating_add(tunnel::OVERHEAD);
    // Every flow to a peer shares the outer addresses, so one FIB answer serves them all
    // for the memo's 0.1 s (the lookup is most of what wrapping costs). Not a SYN's: the MSS
    // it is clamped to lasts as long as its connection, so it comes from the route as it is
    // now (an MTU lowered since the memo's lookup would otherwise black-hole every full
    // segment of the connection).
    let mut slot = MaybeUninit::uninit();
    // SAFETY: plain old data; zeroed word by word (see `zero`).
    let route: &mut PeerRoute = unsafe { zero::zeroed_in(&mut slot) };
    let syn = pkt.key.proto == proto::TCP && pkt.tcp_flags & TCP_SYN != 0;
    let memoized = if syn {
        None
    } else {
        forward::memoized(ctx, &own_addr, &peer_addr, 0, proto::UDP, outer_len)
    };
    match memoized {
        Some(m) => {
            // SAFETY: this CPU's memo slot, used by this program run only.
            let m = unsafe { &*m };
            let r = &mut route.route;
            r.ifindex = m.egress_ifindex;
            r.macs = m.macs;
            r.mtu = m.mtu;
            r.redirect = m.redirect;
            route.neighbour = 1;
        }
        None => {
            let verdict = peer_route(ctx, pkt, index, (&own_addr, &peer_addr), outer_len, route);
            if verdict != Verdict::PEER_ROUTED {
                return verdict;
            }
        }
    }
    let PeerRoute { route, neighbour } = route;
    if syn {
        clamp_mss(ctx, pkt, route.mtu.saturating_sub(tunnel::OVERHEAD));
    }
    if outer_len > route.mtu {
        count(StatSlot::DropTunnelFailed);
        return Verdict::xdp(xdp_action::XDP_DROP);
    }
    // The ports as sent (translated), as TC's wrap of the flow's aggregates reads them.
    let (sport_be, dport_be) = match pkt.key.proto {
        proto::TCP | proto::UDP => match load::<[u16; 2]>(ctx, pkt.l4()) {
            Some([sport_be, dport_be]) => (sport_be, dport_be),
            None => (pkt.key.sport_be, pkt.key.dport_be),
        },
        _ => (pkt.key.sport_be, pkt.key.dport_be),
    };
    let entropy = tunnel::entropy(sport_be, dport_be);
    if !wrap(
        ctx,
        pkt.l3(),
        own,
        peer,
        outer_len,
        outer_tos(pkt.tos),
        entropy,
    ) {
        count(StatSlot::DropTunnelFailed);
        return Verdict::xdp(xdp_action::XDP_DROP);
    }
    count(StatSlot::TunnelSent);
    if *neighbour != 0
        && route.redirect != 0
        && set_macs(ctx, &route.macs).is_some()
        && let Ok(action) = TX_PORTS.redirect(route.ifindex, 0)
    {
        count(StatSlot::TxXdpRedirect);
        return Verdict::xdp(action);
    }
    // The TC program resolves the neighbour and sends; the MACs are its to write (the kernel
    // writes them anew over the hand-off).
    Verdict::xdp(via_tc(ctx, route.ifindex))
}

/// The route to a peer, as `send` uses it: what the memo keeps, and whether the next hop's
/// MAC is known (always, from the memo: it keeps only resolved routes; else TC resolves it).
#[repr(C)]
struct PeerRoute {
    route: MemoRoute,
    neighbour: u8,
}

/// Asks the FIB for the route from `own` to the peer into `route` and keeps a resolved one in
/// the memo: `Verdict::PEER_ROUTED` when there is one to send on, else `send`'s answer (a TCP
/// aggregate left to TC, a datagram too big for the tunnel, or a drop, counted). Inlined:
/// its FIB structure shares `send`'s frame.
#[inline(always)]
fn peer_route(
    ctx: &XdpContext,
    pkt: &Packet,
    index: u32,
    (own, peer): (&Addr, &Addr),
    outer_len: u16,
    out: &mut PeerRoute,
) -> Verdict {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    params.l4_protocol = proto::UDP;
    params.__bindgen_anon_1.tot_len = outer_len;
    let rc = fib_lookup_into(ctx, params, false, own, peer, 0);
    // Too big for the tunnel. An aggregate is left to TC, which wraps it: one longer than its
    // ingress link's MTU (no packet off a wire is), and in generic mode any TCP packet (an
    // aggregate of two segments, the second short, fits its link; only TC can tell). Any
    // other TCP or UDP packet is one segment or datagram, answered below with the MTU the
    // tunnel leaves: a TCP segment whose SYN was not clamped (its MSS option not first, or
    // the path's MTU fell since) then lowers its sender's path MTU instead of being lost.
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED
        && (aggregate::is_aggregate(ctx, pkt)
            || (pkt.key.proto == proto::TCP && l2::in_skb_mode(ctx)))
    {
        return Verdict::xdp(aggregate::send_tunneled(ctx, pkt, index));
    }
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED
        && (pkt.key.proto == proto::TCP || pkt.key.proto == proto::UDP)
    {
        // SAFETY: the kernel leaves the path's MTU in the union on FRAG_NEEDED.
        let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
        return Verdict::too_big(mtu.saturating_sub(tunnel::OVERHEAD));
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        count(StatSlot::DropTunnelFailed);
        return Verdict::xdp(xdp_action::XDP_DROP);
    }
    // On NO_NEIGH the kernel returns before it writes the egress MTU (the union still holds
    // `tot_len`: a SYN's MSS would be clamped to a few bytes); asked again without the
    // neighbour, it writes it.
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        params.__bindgen_anon_1.tot_len = outer_len;
        let again = fib_lookup_into(ctx, params, false, own, peer, BPF_FIB_LOOKUP_SKIP_NEIGH);
        if again != BPF_FIB_LKUP_RET_SUCCESS {
            count(StatSlot::DropTunnelFailed);
            return Verdict::xdp(xdp_action::XDP_DROP);
        }
    }
    let route = &mut out.route;
    route.ifindex = params.ifindex;
    // SAFETY: on success (with or without the neighbour) the kernel leaves the egress MTU in
    // the union.
    route.mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        route.macs = fib_macs(params);
        route.redirect = u8::from(TX_PORTS.get_ifindex(params.ifindex).is_some());
        out.neighbour = 1;
        forward::memoize(ctx, own, peer, 0, proto::UDP, &out.route);
    }
    Verdict::PEER_ROUTED
}

/// Puts the outer IPv4 and UDP headers in front of the IP packet at `l3` (the Ethernet
/// header moves to the new front; VLAN tags between them are dropped: the outer frame goes
/// the underlay's way, not the client's), their TOS `tos`. The UDP checksum is 0 (allowed for
/// IPv4): the inner packet has its own.
#[inline(always)]
fn wrap(
    ctx: &XdpContext,
    l3: usize,
    own: u32,
    peer: u32,
    outer_len: u16,
    tos: u8,
    entropy: u16,
) -> bool {
    let Some(macs) = load::<[u32; 3]>(ctx, 0) else {
        return false;
    };
    // At most two tags (parse's bound), so the head always grows.
    let tags = l3.wrapping_sub(ETH_HLEN);
    if tags > MAX_TAGS_LEN {
        return false;
    }
    let grow = (IPV4_HLEN + UDP_HLEN - tags) as i32;
    // SAFETY: grows the packet's head; checked below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return false;
    }
    let Some(front) = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN + UDP_HLEN]>(ctx, 0) else {
        return false;
    };
    let p = front.cast::<u8>();
    // SAFETY: every write is within the 42 bytes bounds-checked above; unaligned stores are
    // one instruction each (see `pkt_read`).
    unsafe {
        p.cast::<[u32; 3]>().write_unaligned(macs);
        p.add(12).cast::<u16>().write_unaligned(ETH_P_IP_BE);
        let ip = p.add(ETH_HLEN);
        ip.write(0x45);
        ip.add(1).write(tos);
        ip.add(2).cast::<u16>().write_unaligned(outer_len.to_be());
        ip.add(4).cast::<u16>().write_unaligned(0);
        // Don't fragment: the path MTU is the route's, checked by the caller.
        ip.add(6).cast::<u16>().write_unaligned(0x4000u16.to_be());
        ip.add(8).write(64);
        ip.add(9).write(proto::UDP);
        ip.add(10).cast::<u16>().write_unaligned(0);
        ip.add(12).cast::<u32>().write_unaligned(own);
        ip.add(16).cast::<u32>().write_unaligned(peer);
        let mut sum = 0u32;
        for i in 0..IPV4_HLEN / 2 {
            sum += u32::from(ip.add(i * 2).cast::<u16>().read_unaligned());
        }
        ip.add(10).cast::<u16>().write_unaligned(!fold(sum));
        let udp = ip.add(IPV4_HLEN);
        udp.cast::<u16>().write_unaligned(entropy);
        udp.add(2)
            .cast::<u16>()
            .write_unaligned(tunnel::PORT.to_be());
        udp.add(4)
            .cast::<u16>()
            .write_unaligned((outer_len - IPV4_HLEN as u16).to_be());
        udp.add(6).cast::<u16>().write_unaligned(0);
    }
    true
}

/// Lowers the MSS option of the TCP SYN at `l4` to `path_mtu` less the IPv4 and TCP headers,
/// fixing the TCP checksum. Only an MSS option in first place is seen: where Linux, Windows
/// and the BSDs put it (a walk over variable option offsets is more than the verifier
/// follows here).
#[inline(always)]
fn clamp_mss(ctx: &XdpContext, pkt: &Packet, path_mtu: u16) {
    let l4 = pkt.l4();
    let limit = path_mtu.saturating_sub((IPV4_HLEN + TCP_HLEN) as u16);
    let (Some(doff), Some(option)) = (
        load::<u8>(ctx, l4 + 12),
        load::<[u8; 2]>(ctx, l4 + TCP_HLEN),
    ) else {
        return;
    };
    if doff >> 4 < 6 || option != [2, 4] {
        return;
    }
    let (Some(mss_at), Some(csum_at)) = (
        ptr_at::<u16>(ctx, l4 + TCP_HLEN + 2),
        ptr_at::<u16>(ctx, l4 + 16),
    ) else {
        return;
    };
    // SAFETY: both bounds-checked above.
    unsafe {
        let old = mss_at.read_unaligned();
        if u16::from_be(old) > limit {
            let new = limit.to_be();
            mss_at.write_unaligned(new);
            // A partial checksum does not cover the options yet (the device sums them): then
            // the update is from the new value to itself. A mask, not a branch (see `nat`).
            let partial = partial_mask();
            let from = (old & !partial) | (new & partial);
            csum_at.write_unaligned(csum_replace2(csum_at.read_unaligned(), from, new));
        }
    }
}
