//! `on_backend_removal: reset`: a TCP packet of a flow whose backend left its service is
//! answered with a RST from the frontend, so the client learns at once rather than after
//! retransmitting into a backend that is gone. The RST is built in place from the client's
//! packet (truncated to the bare headers) and sent like a reply.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{
    maps::{FlowKey, proto},
    stats::StatSlot,
};

use crate::{
    forward,
    nat::{add_word, fold},
    parse::{
        IPV4_HLEN, IPV6_HLEN, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, is_syn, load, pkt_read,
        pkt_write, ptr_at,
    },
    sender::{self, ANSWER_TTL},
    stats::count,
};

const TCP_HLEN: usize = 20;
/// TCP header offsets.
const TCP_SEQ: usize = 4;
const TCP_ACK_SEQ: usize = 8;
const TCP_DOFF: usize = 12;

/// Answers the client's TCP packet `pkt` with a RST from the frontend. Not inlined: a rare
/// path, a sibling of the calls below the entry function.
#[inline(never)]
pub fn answer(ctx: &XdpContext, pkt: &Packet) -> u32 {
    if !sender::may_answer_error(ctx, pkt, false) || !answerable_segment(ctx, pkt) {
        count(StatSlot::DropNoBackend);
        return xdp_action::XDP_DROP;
    }
    // A SYN's RST refuses a new flow for want of a backend; any other segment's ends a flow
    // whose backend left.
    if is_syn(pkt.tcp_flags) {
        count(StatSlot::RefusedNoBackend);
    }
    // The RST as `forward::send` needs to see it: frontend to client, its own length.
    let ip_len = if pkt.v6 { IPV6_HLEN } else { IPV4_HLEN } + TCP_HLEN;
    let out = Packet {
        key: FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            sport_be: pkt.key.dport_be,
            dport_be: pkt.key.sport_be,
            proto: proto::TCP,
            _pad: [0; 3],
        },
        v6: pkt.v6,
        l3: pkt.l3,
        l4: pkt.l4,
        tcp_flags: 0,
        icmp_type: 0,
        tos: 0,
        ip_tot_len_be: (ip_len as u16).to_be(),
        len: (pkt.l3() + ip_len) as u32,
        opened_flow: false,
        // Answered from here, not through the tunnel.
        tunnel_peer: 0,
    };
    match build(ctx, pkt) {
        Built::Yes => {
            count(StatSlot::FlowReset);
            let action =
                forward::send(ctx, &out, &out.key.src, &out.key.dst, core::ptr::null_mut());
            if action.too_big_mtu().is_some() {
                count(StatSlot::DropTooBig);
                return xdp_action::XDP_DROP;
            }
            action.raw()
        }
        Built::Untouched => {
            count(StatSlot::PassMalformed);
            xdp_action::XDP_PASS
        }
        // Only if the kernel shortened the packet to other than asked: cannot happen.
        Built::Broken => xdp_action::XDP_ABORTED,
    }
}

/// Whether the segment has a data offset of at least its header's own length: one under it
/// is a segment the client's stack itself would drop as malformed, and its payload length
/// (which the RST's ack counts) is unknown. (Read as a word with the flags: the compiler's
/// bounds check of a single byte is one the verifier refuses.)
#[inline(always)]
fn answerable_segment(ctx: &XdpContext, pkt: &Packet) -> bool {
    matches!(
        load::<[u8; 2]>(ctx, pkt.l4() + TCP_DOFF),
        Some([doff, _]) if usize::from(doff >> 4) * 4 >= TCP_HLEN
    )
}

enum Built {
    Yes,
    /// The packet could not be answered and is as it came.
    Untouched,
    /// Truncated, but its headers could not be written.
    Broken,
}

/// Turns the packet into the RST (RFC 9293 §3.10.7.1: a segment with ACK is answered with
/// seq = its ack and no ACK; one without, with seq 0 and ack = its seq + its length).
#[inline(always)]
fn build(ctx: &XdpContext, pkt: &Packet) -> Built {
    let l4 = pkt.l4();
    let Some(tcp) = ptr_at::<[u8; TCP_HLEN]>(ctx, l4) else {
        return Built::Untouched;
    };
    let tcp = tcp.cast::<u8>();
    // SAFETY: within the TCP header bounds-checked above.
    let (seq, ack_seq, doff) = unsafe {
        (
            u32::from_be(pkt_read(tcp.add(TCP_SEQ).cast::<u32>())),
            u32::from_be(pkt_read(tcp.add(TCP_ACK_SEQ).cast::<u32>())),
            usize::from(tcp.add(TCP_DOFF).read() >> 4) * 4,
        )
    };
    let flags = pkt.tcp_flags;
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack_seq, 0, TCP_RST)
    } else {
        let payload = pkt.ip_end().saturating_sub(l4 + doff) as u32;
        let len = payload + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };

    let frame_len = ctx.data_end() - ctx.data();
    let delta = (l4 + TCP_HLEN) as i32 - frame_len as i32;
    // SAFETY: shrinks the packet to its headers (delta <= 0: parse checked the TCP header).
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Built::Untouched;
    }
    let frontend = &pkt.key.dst;
    let client = &pkt.key.src;
    let mut pseudo = 0u32;
    if pkt.v6 {
        let Some(ip) = ptr_at::<[u32; 10]>(ctx, pkt.l3()) else {
            return Built::Broken;
        };
        let f = frontend.words;
        let c = client.words;
        let header = [
            u32::from_ne_bytes([0x60, 0, 0, 0]),
            u32::from_ne_bytes([0, TCP_HLEN as u8, proto::TCP, ANSWER_TTL]),
            f[0],
            f[1],
            f[2],
            f[3],
            c[0],
            c[1],
            c[2],
            c[3],
        ];
        for w in &header[2..] {
            pseudo = add_word(pseudo, *w);
        }
        // SAFETY: bounds-checked above.
        unsafe { pkt_write(ip, header) };
    } else {
        let Some(ip) = ptr_at::<[u32; 5]>(ctx, pkt.l3()) else {
            return Built::Broken;
        };
        let tot_len = ((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes();
        let mut header = [
            u32::from_ne_bytes([0x45, 0, tot_len[0], tot_len[1]]),
            // Identification 0, don't fragment.
            u32::from_ne_bytes([0, 0, 0x40, 0]),
            u32::from_ne_bytes([ANSWER_TTL, proto::TCP, 0, 0]),
            frontend.v4_raw(),
            client.v4_raw(),
        ];
        let mut sum = 0;
        for w in &header {
            sum = add_word(sum, *w);
        }
        let csum = (!fold(sum)).to_ne_bytes();
        header[2] = u32::from_ne_bytes([ANSWER_TTL, proto::TCP, csum[0], csum[1]]);
        pseudo = add_word(add_word(pseudo, header[3]), header[4]);
        // SAFETY: bounds-checked above.
        unsafe { pkt_write(ip, header) };
    }
    let Some(tcp) = ptr_at::<[u32; 5]>(ctx, l4) else {
        return Built::Broken;
    };
    let ports = (pkt.key.dport_be, pkt.key.sport_be);
    let (s, d) = (ports.0.to_ne_bytes(), ports.1.to_ne_bytes());
    // Data offset 5 words, window 0, urgent pointer 0.
    let mut header = [
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
        rst_seq.to_be(),
        rst_ack.to_be(),
        u32::from_ne_bytes([0x50, rst_flags, 0, 0]),
        0,
    ];
    let mut sum = add_word(
        pseudo,
        u32::from_ne_bytes([0, proto::TCP, 0, TCP_HLEN as u8]),
    );
    for w in &header {
        sum = add_word(sum, *w);
    }
    let csum = (!fold(sum)).to_ne_bytes();
    header[4] = u32::from_ne_bytes([csum[0], csum[1], 0, 0]);
    // SAFETY: bounds-checked above.
    unsafe { pkt_write(tcp, header) };
    Built::Yes
}
