//! Whether a frame is this node's at all. An interface may see unicast frames for other
//! hosts' MACs (a bridge flooding a frame whose destination it has not learnt, generic XDP on
//! a promiscuous interface); the kernel drops those as "other host", and so must meshlb, or
//! two nodes on one segment would both serve the same packet.

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{Handoff, InterfaceMac, interface_flags};

use crate::{
    maps::{INTERFACE_MACS, INTERFACE_MACS_BEYOND},
    parse::load,
};

/// Whose a frame is, by its destination address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Addressed {
    /// The interface's own MAC; or broadcast and multicast, an interface whose MAC userspace
    /// did not write, a frame too short to tell (the parser decides about that one).
    Here,
    /// Unicast to another MAC: the kernel's (bridged, or dropped as another host's).
    Elsewhere,
    /// The hand-off address (`Handoff`), which only this program writes: from the wire, it
    /// would make the TC program send the frame where its bytes say.
    Forged,
}

/// What the program knows of the frame's ingress interface.
pub struct Ingress {
    pub addressed: Addressed,
    /// XDP runs on the interface in generic mode (`interface_flags::SKB_MODE`).
    pub skb_mode: bool,
}

/// Whether XDP runs in generic mode on the frame's ingress interface, as `ingress` tells:
/// asked again off the hot path, where only a generic interface can hand over aggregates.
#[inline(always)]
pub fn in_skb_mode(ctx: &XdpContext) -> bool {
    own_mac(ctx).is_some_and(|own| own[7] & interface_flags::SKB_MODE != 0)
}

/// What userspace wrote for the frame's ingress interface: from the array, or for an ifindex
/// beyond it (the array has no slot there) from the hash.
#[inline(always)]
fn own_mac(ctx: &XdpContext) -> Option<&'static InterfaceMac> {
    let ifindex = ctx.ingress_ifindex() as u32;
    match INTERFACE_MACS.get(ifindex) {
        Some(own) => Some(own),
        None => own_mac_beyond(ifindex),
    }
}

/// `INTERFACE_MACS_BEYOND`'s entry for `ifindex`. Not inlined: its key and call stay off the
/// path of every other interface's packets.
#[inline(never)]
fn own_mac_beyond(ifindex: u32) -> Option<&'static InterfaceMac> {
    // SAFETY: a map value stays valid for the whole program run.
    INTERFACE_MACS_BEYOND
        .get_ptr(&ifindex)
        .map(|own| unsafe { &*own })
}

#[inline(always)]
pub fn ingress(ctx: &XdpContext) -> Ingress {
    let own = own_mac(ctx);
    let skb_mode = own.is_some_and(|own| own[7] & interface_flags::SKB_MODE != 0);
    let addressed = match own {
        Some(own) if own[6] != 0 => filtered(ctx, own),
        _ => unfiltered(ctx),
    };
    Ingress {
        addressed,
        skb_mode,
    }
}

/// An interface whose MAC the program knows (`own`): whose the frame is by it.
#[inline(always)]
fn filtered(ctx: &XdpContext, own: &InterfaceMac) -> Addressed {
    // Compared as words, the address's six bytes under a mask: a byte at a time, the
    // comparison was some 40 instructions of every packet.
    let mac_mask = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    let group_bit = u64::from_ne_bytes([1, 0, 0, 0, 0, 0, 0, 0]);
    // SAFETY: a map value of 8 bytes, 8-byte aligned like every array value.
    let own_word = unsafe { (own as *const [u8; 8]).cast::<u64>().read() };
    match load::<u64>(ctx, 0) {
        // Shorter than 8 bytes: not Ethernet, the parser turns it away.
        None => Addressed::Here,
        // The group bit: broadcast and multicast are everyone's.
        Some(dst) if dst & group_bit != 0 || (dst ^ own_word) & mac_mask == 0 => Addressed::Here,
        // Off the path of the node's own frames: the hand-off address is no interface's.
        Some(dst) if Handoff::is_handoff_address(dst) => Addressed::Forged,
        Some(_) => Addressed::Elsewhere,
    }
}

/// An interface whose MAC the program does not know: every frame is its, but a forged
/// hand-off. (Inlined: a call of its own would take the packet's bounds as arguments, and the
/// verifier refuses arithmetic on them there.)
#[inline(always)]
fn unfiltered(ctx: &XdpContext) -> Addressed {
    match load::<u64>(ctx, 0) {
        Some(dst) if Handoff::is_handoff_address(dst) => Addressed::Forged,
        _ => Addressed::Here,
    }
}
