//! GSO and GRO aggregates. In generic XDP (veths, bridges such as `docker_gwbridge`, any
//! device in `xdp_mode: generic`) the program runs on socket buffers, and a TCP sender's
//! segmentation offload (or a UDP sender's, `UDP_SEGMENT`: QUIC servers use it) or the
//! receiver's GRO hands it many segments as one packet of up to 64 KiB, which the kernel cuts
//! back into segments on output. Such a packet is larger than
//! any MTU without being too big: answering it "fragmentation needed" (the MTU it already
//! keeps to) black-holes the connection. It is recognised by being longer than its ingress
//! device's MTU, which no packet off a wire is, and sent whole through the TC program
//! (`bpf_redirect_neigh`), so the egress device segments it. The mesh tunnel hands TC every
//! TCP packet too big for it that came in by a generic-mode interface (an aggregate of two
//! segments can be shorter than the ingress MTU, and only TC sees the kernel's segment
//! size): TC wraps an aggregate with `bpf_skb_adjust_room`, which tells the segmentation
//! about the outer headers and lowers the segment size by their 28 bytes, and drops anything
//! else. A UDP aggregate (longer than its ingress MTU) goes the same way, but its segment
//! size stays: it is where the sender's datagrams end. TC then checks that its segments fit
//! the path with the tunnel's 28 bytes, and drops it if they do not ("fragmentation needed"
//! would have to come from XDP, which cannot see the segment size; QUIC senders find the
//! path's MTU by what gets lost). The link to the peer must cut it into tunnel packets (a
//! NIC with UDP tunnel segmentation offload does; a veth passes it whole unless that offload
//! is off): a UDP aggregate that arrives through the tunnel whole is dropped and counted
//! (`send`).

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, xdp_action,
    },
    helpers::bpf_check_mtu,
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Addr,
    maps::{Handoff, proto, tunnel},
    stats::StatSlot,
};

use crate::{
    forward::{fib_lookup_from, fib_lookup_into, hand_off},
    maps::TUNNEL_PEERS,
    nat::{add_word, fold, pseudo_header_sum},
    parse::{Packet, load, pkt_write, ptr_at},
    stats::count,
    zero,
};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// Whether the TCP or UDP packet is an aggregate: longer than the MTU of the device it came
/// in by. Only asked of packets too big for their egress.
#[inline(always)]
pub fn is_aggregate(ctx: &XdpContext, pkt: &Packet) -> bool {
    if pkt.key.proto != proto::TCP && pkt.key.proto != proto::UDP {
        return false;
    }
    let mut ingress_mtu: u32 = 0;
    // SAFETY: ifindex 0 is the context's own device; `ingress_mtu` is a valid out pointer
    // (0 on input: the packet's own length is checked, and its device's MTU comes back).
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), 0, &mut ingress_mtu, 0, 0) };
    rc >= 0 && ingress_mtu != 0 && u32::from(u16::from_be(pkt.ip_tot_len_be)) > ingress_mtu
}

/// Sends the aggregate (already translated) through TC toward its destination: the route
/// from the FIB without its MTU check. Not inlined: a rare path with its own lookup frame.
#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // A UDP aggregate that came through the tunnel crossed whole (a virtual link such as a
    // veth passes UDP tunnel segmentation on): XDP took the outer headers off, but the
    // tunnel's segmentation state stays on it (on Linux 6.18; `bpf_skb_adjust_room`'s later
    // DECAP_L4_UDP clears it), and the kernel's segmentation would look for the outer headers
    // and drop it unseen. Dropped and counted here instead. A TCP one is cut by its own TCP
    // header, which that state does not change.
    if pkt.tunnel_peer != 0 && pkt.key.proto == proto::UDP {
        count(StatSlot::DropTunnelFailed);
        return xdp_action::XDP_DROP;
    }
    let l3 = pkt.l3();
    let mut src = Addr::UNSPECIFIED;
    let mut dst = Addr::UNSPECIFIED;
    // The addresses as they are now (after translation), word by word.
    let found = if pkt.v6 {
        let mut found = true;
        for i in 0..4 {
            match (
                load::<u32>(ctx, l3 + 8 + 4 * i),
                load::<u32>(ctx, l3 + 24 + 4 * i),
            ) {
                (Some(s), Some(d)) => {
                    src.words[i] = s;
                    dst.words[i] = d;
                }
                _ => found = false,
            }
        }
        found
    } else {
        match (load::<u32>(ctx, l3 + 12), load::<u32>(ctx, l3 + 16)) {
            (Some(s), Some(d)) => {
                src = Addr::from_v4_raw(s);
                dst = Addr::from_v4_raw(d);
                true
            }
            _ => false,
        }
    };
    if !found {
        count(StatSlot::DropFibFailed);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    params.l4_protocol = pkt.key.proto;
    // tot_len 0: no MTU check (the egress device segments the aggregate).
    let rc = fib_lookup_into(ctx, params, pkt.v6, &src, &dst, 0);
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        count(StatSlot::DropFibFailed);
        return xdp_action::XDP_DROP;
    }
    if !set_partial_checksum(ctx, pkt) {
        count(StatSlot::DropFibFailed);
        return xdp_action::XDP_DROP;
    }
    count(StatSlot::Aggregate);
    hand_off(ctx, Handoff::forward(params.ifindex))
}

/// Hands a TCP packet or a UDP aggregate too big for the tunnel (translated, not wrapped) to
/// TC, which wraps it for the tunnel peer `peer` if it is an aggregate and sends it on the
/// route to the peer. Not inlined, like `send`.
#[inline(never)]
pub fn send_tunneled(ctx: &XdpContext, pkt: &Packet, peer: u32) -> u32 {
    let (Some(&own), Some(&peer_addr)) = (TUNNEL_PEERS.get(tunnel::SELF), TUNNEL_PEERS.get(peer))
    else {
        count(StatSlot::DropTunnelFailed);
        return xdp_action::XDP_DROP;
    };
    if own == 0 || peer_addr == 0 || peer == 0 || peer > 0xff {
        count(StatSlot::DropTunnelFailed);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: as in `send`.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    params.l4_protocol = proto::UDP;
    let rc = fib_lookup_into(
        ctx,
        params,
        false,
        &Addr::from_v4_raw(own),
        &Addr::from_v4_raw(peer_addr),
        0,
    );
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        count(StatSlot::DropTunnelFailed);
        return xdp_action::XDP_DROP;
    }
    if !set_partial_checksum(ctx, pkt) {
        count(StatSlot::DropTunnelFailed);
        return xdp_action::XDP_DROP;
    }
    count(StatSlot::Aggregate);
    hand_off(ctx, Handoff::tunnel(peer as u8, params.ifindex))
}

/// Writes the TCP checksum field as an aggregate needs it: the kernel keeps one
/// `CHECKSUM_PARTIAL`, its field holding only the sum of the pseudo-header (addresses,
/// protocol, TCP length of the whole aggregate), from which segmentation computes each
/// segment's checksum over its own bytes. The translation updated the field as a full
/// checksum, also for the ports, which are not in the pseudo-header: segments would carry
/// checksums wrong by the port change. False if the headers are not in the packet.
#[inline(always)]
fn set_partial_checksum(ctx: &XdpContext, pkt: &Packet) -> bool {
    let Some(sum) = pseudo_header_sum(ctx, pkt) else {
        return false;
    };
    // Where TCP and UDP keep their checksum.
    let at = if pkt.key.proto == proto::UDP { 6 } else { 16 };
    let Some(check) = ptr_at::<u16>(ctx, pkt.l4() + at) else {
        return false;
    };
    // SAFETY: bounds-checked above.
    unsafe { pkt_write(check, fold(sum)) };
    true
}

/// TC side of `send_tunneled`: puts the outer IPv4 and UDP headers (as `tunnel::send`
/// writes them, ECN included) in front of the aggregate, telling the kernel it is now a UDP
/// tunnel packet, so segmentation repeats them on every segment; a UDP aggregate's must then
/// fit the route to the peer. False if it cannot, if they do not fit, or if the packet is no aggregate (a
/// single TCP segment too big for the tunnel: its flow's SYN was not clamped), which is
/// dropped as `tunnel::send` drops one.
#[inline(always)]
pub fn wrap_for_peer(ctx: &TcContext, peer: u32) -> bool {
    // SAFETY: reading a context field the verifier allows for TC programs.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return false;
    }
    let (Some(&own), Some(&peer_addr)) = (TUNNEL_PEERS.get(tunnel::SELF), TUNNEL_PEERS.get(peer))
    else {
        return false;
    };
    // The translated packet's ports make the outer source port, as in `tunnel::send`.
    let Ok(ports) = ctx.load::<[u16; 2]>(ETH_HLEN + IPV4_HLEN) else {
        return false;
    };
    let (Ok([version, inner_tos]), Ok(inner_proto)) =
        (ctx.load::<[u8; 2]>(ETH_HLEN), ctx.load::<u8>(ETH_HLEN + 9))
    else {
        return false;
    };
    // Only option-less IPv4 is forwarded by XDP (the inner header's length is assumed).
    if version != 0x45 || own == 0 || peer_addr == 0 {
        return false;
    }
    let mut flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
    // A UDP aggregate's segment size is where its datagrams end: it stays (the kernel refuses
    // to change it), so each datagram must fit the route with the tunnel's bytes. Computed
    // here: `bpf_check_mtu`'s segment check miscounts the headers of a packet TC sees before
    // the IP layer, and knows only the device's MTU.
    if inner_proto == proto::UDP {
        let segment = gso_size + 2 * (IPV4_HLEN + UDP_HLEN) as u32;
        if !fits_route(ctx, own, peer_addr, segment) {
            return false;
        }
        flags |= BPF_F_ADJ_ROOM_FIXED_GSO;
    }
    let flags = u64::from(flags);
    if ctx
        .adjust_room((IPV4_HLEN + UDP_HLEN) as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return false;
    }
    // Segmentation rewrites both lengths per segment; until then they say the whole, which
    // may exceed 16 bits by the 28 added bytes.
    let outer_len = (ctx.len() as usize - ETH_HLEN).min(0xffff) as u16;
    let outer_len_be = outer_len.to_be_bytes();
    let udp_len_be = outer_len.saturating_sub(IPV4_HLEN as u16).to_be_bytes();
    let mut ip = [
        u32::from_ne_bytes([
            0x45,
            tunnel::outer_tos(inner_tos),
            outer_len_be[0],
            outer_len_be[1],
        ]),
        // Don't fragment, as `tunnel::send` sends.
        u32::from_ne_bytes([0, 0, 0x40, 0]),
        u32::from_ne_bytes([64, proto::UDP, 0, 0]),
        own,
        peer_addr,
    ];
    let mut sum = 0;
    for w in &ip {
        sum = add_word(sum, *w);
    }
    let csum = (!fold(sum)).to_ne_bytes();
    ip[2] = u32::from_ne_bytes([64, proto::UDP, csum[0], csum[1]]);
    let entropy = tunnel::entropy(ports[0], ports[1]);
    let port = tunnel::PORT.to_be();
    let udp_len = u16::from_ne_bytes(udp_len_be);
    // The UDP checksum is 0 (allowed for IPv4): the inner packet has its own.
    let udp: [u16; 4] = [entropy, port, udp_len, 0];
    ctx.store(ETH_HLEN, &ip, 0).is_ok() && ctx.store(ETH_HLEN + IPV4_HLEN, &udp, 0).is_ok()
}

/// Whether an IPv4 packet of `len` bytes from `own` fits the route to `peer`: the MTU the
/// FIB gives (a route's locked MTU and a learned path MTU included), as `tunnel::send` checks
/// a packet it wraps itself.
#[inline(always)]
fn fits_route(ctx: &TcContext, own: u32, peer: u32, len: u32) -> bool {
    let Ok(len) = u16::try_from(len) else {
        return false;
    };
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    params.l4_protocol = proto::UDP;
    // A length given: the FIB checks it against the route's MTU, not the skb's length.
    params.__bindgen_anon_1.tot_len = len;
    // SAFETY: reading a context field the verifier allows for TC programs.
    let ingress = || unsafe { (*ctx.skb.skb).ingress_ifindex };
    let (own, peer) = (Addr::from_v4_raw(own), Addr::from_v4_raw(peer));
    let rc = fib_lookup_from(
        ctx.as_ptr(),
        ingress,
        params,
        false,
        &own,
        &peer,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    );
    rc == BPF_FIB_LKUP_RET_SUCCESS
}
