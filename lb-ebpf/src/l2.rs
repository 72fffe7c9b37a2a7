//! Whether a frame is this node's at all. An interface may see unicast frames for other
//! hosts' MACs (a bridge flooding a frame whose destination it has not learnt, generic XDP on
//! a promiscuous interface); the kernel drops those as "other host", and so must meshlb, or
//! two nodes on one segment would both serve the same packet.

use aya_ebpf::programs::XdpContext;

use crate::{maps::INTERFACE_MACS, parse::load};

/// False for a unicast frame whose destination is not the ingress interface's own MAC; true
/// for anything else (broadcast and multicast, an interface whose MAC userspace did not
/// write, a frame too short to tell: the parser decides about that one).
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> bool {
    let Some(own) = INTERFACE_MACS.get(ctx.ingress_ifindex() as u32) else {
        return true;
    };
    if own[6] == 0 {
        return true;
    }
    let Some(dst) = load::<[u8; 6]>(ctx, 0) else {
        return true;
    };
    // The group bit: broadcast and multicast are everyone's.
    dst[0] & 1 != 0 || dst == [own[0], own[1], own[2], own[3], own[4], own[5]]
}
