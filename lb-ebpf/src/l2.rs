//! Whether a frame is this node's at all. An interface may see unicast frames for other
//! hosts' MACs (a bridge flooding a frame whose destination it has not learnt, generic XDP on
//! a promiscuous interface); the kernel drops those as "other host", and so must meshlb, or
//! two nodes on one segment would both serve the same packet.

use aya_ebpf::programs::XdpContext;
use lb_common::maps::interface_flags;

use crate::{maps::INTERFACE_MACS, parse::load};

/// What the program knows of the frame's ingress interface.
pub struct Ingress {
    /// False for a unicast frame whose destination is not the interface's own MAC; true for
    /// anything else (broadcast and multicast, an interface whose MAC userspace did not
    /// write, a frame too short to tell: the parser decides about that one).
    pub addressed_here: bool,
    /// XDP runs on the interface in generic mode (`interface_flags::SKB_MODE`).
    pub skb_mode: bool,
}

#[inline(always)]
pub fn ingress(ctx: &XdpContext) -> Ingress {
    let Some(own) = INTERFACE_MACS.get(ctx.ingress_ifindex() as u32) else {
        return Ingress {
            addressed_here: true,
            skb_mode: false,
        };
    };
    let skb_mode = own[7] & interface_flags::SKB_MODE != 0;
    let addressed_here = own[6] == 0
        || match load::<[u8; 6]>(ctx, 0) {
            None => true,
            // The group bit: broadcast and multicast are everyone's.
            Some(dst) => dst[0] & 1 != 0 || dst == [own[0], own[1], own[2], own[3], own[4], own[5]],
        };
    Ingress {
        addressed_here,
        skb_mode,
    }
}
