//! Whom the program may answer itself, as the node's own stack would (RFC 1122 §3.2.2 and
//! §4.2.3.10, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)): never a sender that is no single host
//! (a spoofed broadcast or multicast source would turn one packet into many), nor itself.
//! An error (a RST, an ICMP error) also never answers a frame sent to a link-layer group
//! address, which every host on the link got.

use aya_ebpf::programs::XdpContext;

use crate::parse::{Packet, load};

/// The TTL (hop limit) of every packet the program sends of its own: Linux's default.
pub const ANSWER_TTL: u8 = 64;

/// Whether `pkt`'s sender may be answered at all (an echo reply too). Not inlined: its
/// frame is beside the answer's, so the rare answers' frames stay as they were.
#[inline(never)]
pub fn may_answer(pkt: &Packet) -> bool {
    let (src, dst) = (&pkt.key.src.words, &pkt.key.dst.words);
    // Word by word: a comparison of the arrays would go through the stack.
    let to_itself = src[0] == dst[0] && src[1] == dst[1] && src[2] == dst[2] && src[3] == dst[3];
    pkt.key.src.is_single_host() && !to_itself
}

/// Whether `pkt` may be answered with an error (a RST, an ICMP error) from here.
#[inline(always)]
pub fn may_answer_error(ctx: &XdpContext, pkt: &Packet) -> bool {
    // The destination MAC's group bit: broadcast and multicast frames. (A word, as `l2`
    // reads it: for a single byte the compiler's bounds check is one the verifier refuses.)
    let group_bit = u64::from_ne_bytes([1, 0, 0, 0, 0, 0, 0, 0]);
    let unicast_frame = matches!(load::<u64>(ctx, 0), Some(dst) if dst & group_bit == 0);
    unicast_frame && may_answer(pkt)
}

/// Whether `pkt` may be refused with an answer from here (a RST, "port unreachable"): an
/// error may answer it, and it came straight from its client. One a peer delivered through
/// the mesh tunnel came to the peer's frontend, which answers it once it learns (an answer
/// from here would come from the task's address).
#[inline(always)]
pub fn may_refuse(ctx: &XdpContext, pkt: &Packet) -> bool {
    pkt.tunnel_peer == 0 && may_answer_error(ctx, pkt)
}
