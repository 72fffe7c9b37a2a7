//! The mesh tunnel between swarm nodes: IPv4 in UDP to this port, outer addresses the two
//! nodes' underlay addresses (the swarm's node addresses). `TUNNEL_PEERS[0]` is this node's
//! own address, `[1..=255]` the peers; `TUNNEL_PEER_INDEX` maps a peer's address back.

/// Not a port the kernel or Docker uses (VXLAN is 4789, Docker's gossip 7946).
pub const PORT: u16 = 4790;
/// Outer IPv4 and UDP headers.
pub const OVERHEAD: u16 = 28;
pub const MAX_PEERS: u32 = 256;
/// `TUNNEL_PEERS` slot of this node's own address.
pub const SELF: u32 = 0;
/// `TUNNEL_PEERS` slot where `lbd` keeps the index its search for a new peer's index
/// starts at (peers take 1 to 254; the kernel never reads this slot), so a restarted
/// `lbd` does not give a departed peer's index, which tracked flows may still name, to
/// the next node that joins.
pub const NEXT_INDEX_SLOT: u32 = 255;
/// The ECN field of an IPv4 TOS byte, and two of its codepoints (RFC 3168).
pub const ECN_MASK: u8 = 0x03;
pub const ECN_NOT_ECT: u8 = 0;
pub const ECN_ECT1: u8 = 0x01;
pub const ECN_ECT0: u8 = 0x02;
pub const ECN_CE: u8 = 0x03;

/// The outer header's TOS for an inner packet whose TOS is `inner_tos`: its ECN field
/// (RFC 6040 normal mode, a CE mark included), DSCP 0. Both of the kernel's wraps write
/// it (XDP's, and TC's for an aggregate).
pub const fn outer_tos(inner_tos: u8) -> u8 {
    inner_tos & ECN_MASK
}

/// The outer UDP source port (network order) of a packet whose inner TCP or UDP header,
/// as sent, carries these ports (network order): receivers spread flows over queues and
/// paths by it. Both wraps take the ports from the translated packet (TC sees nothing
/// else), so a flow's single segments and its aggregates take the same queue and path,
/// and arrive in order.
pub const fn entropy(sport_be: u16, dport_be: u16) -> u16 {
    (sport_be ^ dport_be) | 0xc000u16.to_be()
}
