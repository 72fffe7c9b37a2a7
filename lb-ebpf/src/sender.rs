//! Whom the program may answer itself, as the node's own stack would (RFC 1122 §3.2.2 and
//! §4.2.3.10, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e)): never a sender that is no single host
//! (a spoofed broadcast or multicast source would turn one packet into many), nor itself.
//! An error (a RST, an ICMP error) also never answers a frame sent to a link-layer group
//! address, which every host on the link got, nor a packet a peer delivered through the mesh
//! tunnel.

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

/// Whether `pkt` may be answered with an error (a RST, an ICMP error) from here: it came
/// straight from its sender, and (unless `group_frames`, IPv6's "packet too big", which RFC
/// 4443 §2.4(e.3) lets answer them for path MTU discovery) not in a frame to a link-layer
/// group address. A packet a peer delivered through the mesh tunnel was sent to addresses
/// this node only stands in for (the peer's frontend, the task's): an error from here would
/// come from the task's address by this node's routes, which its sender can match to
/// nothing; a refusal the peer's frontend answers once it learns.
#[inline(always)]
pub fn may_answer_error(ctx: &XdpContext, pkt: &Packet, group_frames: bool) -> bool {
    // The destination MAC's group bit: broadcast and multicast frames. (A word, as `l2`
    // reads it: for a single byte the compiler's bounds check is one the verifier refuses.)
    let group_bit = u64::from_ne_bytes([1, 0, 0, 0, 0, 0, 0, 0]);
    let frame_ok =
        || group_frames || matches!(load::<u64>(ctx, 0), Some(dst) if dst & group_bit == 0);
    // The tunnel's check last: first, it cost `too_big` 8 more bytes of stack.
    frame_ok() && may_answer(pkt) && pkt.tunnel_peer == 0
}
