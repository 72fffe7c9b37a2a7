//! What the packet paths answer, in one register: an XDP action, or work the entry function
//! finishes in its own frame (an ICMP "too big" or "port unreachable" answer, a send through
//! the mesh tunnel), or,
//! between a path and its caller only, what the caller must do next. A newtype over the u32
//! rather than an enum with data: a result wider than a register would be returned through
//! the caller's stack, which the verifier refuses, and the encodings below cost nothing over
//! the plain number.

use aya_ebpf::bindings::xdp_action;
use lb_common::stats::StatSlot;

use crate::{parse::Packet, stats::count};

/// See the module. Values: XDP actions (0-4); `0x7fff_0000 | mtu` (too big); `0x7ffe_0000 |
/// peer` (tunnel); the named answers at the top of the range.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verdict(u32);

const TOO_BIG: u32 = 0x7fff_0000;
const TOO_BIG_MASK: u32 = 0xffff_0000;
const TUNNEL: u32 = 0x7ffe_0000;
const TUNNEL_MASK: u32 = 0xffff_ff00;

impl Verdict {
    /// `to_backend`: the packet's flow ended (and left the table); the caller follows its
    /// unconfirmed successor or opens one.
    pub const NEEDS_FLOW: Self = Self(u32::MAX);
    /// `to_backend` (and `to_backend_stamped`): the connection table has no entry for the
    /// packet; the caller follows its unconfirmed flow or opens one.
    pub const UNTRACKED: Self = Self(u32::MAX - 6);
    /// `to_backend`: the flow's backend is gone and the client is to get a RST.
    pub const NEEDS_RESET: Self = Self(u32::MAX - 1);
    /// `to_backend_stamped`: the packet is not for a flow it may follow on its own (left
    /// untouched); the `FRONTENDS` path decides.
    pub const NOT_STAMPED: Self = Self(u32::MAX - 2);
    /// `forward::send_memoized`: the route memo has no fresh route for the packet.
    pub const NOT_MEMOIZED: Self = Self(u32::MAX - 4);
    /// `icmp`'s echo and error paths: the message concerns no frontend or tracked flow.
    pub const NOT_OURS: Self = Self(u32::MAX - 5);
    /// `to_client`: the connection table has no reply entry for the packet (left
    /// untouched); the caller tries `stateless::reply`.
    pub const NO_REPLY_ENTRY: Self = Self(u32::MAX - 7);
    /// `tunnel::peer_route`: the FIB gave a route to the peer; the caller sends on it.
    pub const PEER_ROUTED: Self = Self(u32::MAX - 8);

    /// An XDP action, final.
    #[inline(always)]
    pub const fn xdp(action: u32) -> Self {
        Self(action)
    }

    /// The packet (translated) is larger than its egress MTU `mtu`: the entry function
    /// answers its sender (`unreachable::too_big`).
    #[inline(always)]
    pub const fn too_big(mtu: u16) -> Self {
        Self(TOO_BIG | mtu as u32)
    }

    /// A client's UDP datagram to a service with no usable backend: the entry function
    /// answers it ICMP "port unreachable" (`unreachable::port_unreachable`).
    pub const PORT_UNREACHABLE: Self = Self(u32::MAX - 9);

    /// The packet goes through the mesh tunnel to the peer with this `TUNNEL_PEERS` index
    /// (1..): the entry function wraps and sends it (`tunnel::send`).
    #[inline(always)]
    pub const fn tunnel(peer: u8) -> Self {
        Self(TUNNEL | peer as u32)
    }

    /// The egress MTU of a `too_big` verdict.
    #[inline(always)]
    pub const fn too_big_mtu(self) -> Option<u16> {
        if self.0 & TOO_BIG_MASK == TOO_BIG {
            Some(self.0 as u16)
        } else {
            None
        }
    }

    /// The peer index of a `tunnel` verdict.
    #[inline(always)]
    pub const fn tunnel_peer(self) -> Option<u32> {
        if self.0 & TUNNEL_MASK == TUNNEL {
            Some(self.0 & 0xff)
        } else {
            None
        }
    }

    /// A packet nothing here takes: passed to this node's own stack, counted `slot`. But a
    /// peer's packet unwrapped from the mesh tunnel, which leads to delivery frontends and
    /// replies only, is dropped (`drop_tunnel_only`): the stack would take it as if it had
    /// come from the underlay, with any source the sender chose.
    #[inline(always)]
    pub fn untaken(pkt: &Packet, slot: StatSlot) -> Self {
        if pkt.tunnel_peer != 0 {
            count(StatSlot::DropTunnelOnly);
            return Self(xdp_action::XDP_DROP);
        }
        count(slot);
        Self(xdp_action::XDP_PASS)
    }

    /// The number the kernel gets: an XDP action once `too_big`, `PORT_UNREACHABLE` and
    /// `tunnel` are handled.
    #[inline(always)]
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// How opening a flow went: opened, or refused with the drop counter to move. A newtype for
/// the same reason as `Verdict`.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowStart(u32);

impl FlowStart {
    /// A backend was chosen (and, once recorded, the flow is in the table).
    pub const OPENED: Self = Self(u32::MAX);

    /// Refused: the packet is dropped and counted in `slot`.
    #[inline(always)]
    pub const fn refused(slot: lb_common::stats::StatSlot) -> Self {
        Self(slot as u32)
    }

    /// The counter slot of a refusal.
    #[inline(always)]
    pub const fn refusal(self) -> Option<u32> {
        if self.0 == Self::OPENED.0 {
            None
        } else {
            Some(self.0)
        }
    }
}
