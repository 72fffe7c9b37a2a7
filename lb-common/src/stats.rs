//! Global per-CPU counters: one slot per path a packet can take. This enum is the only
//! source of the slot indices and of their metric label names.

/// What a counter counts, so totals can be checked: every packet the XDP program sees ends in
/// exactly one `Outcome` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// Every packet seen (`rx`).
    Seen,
    /// How a packet's run ended: passed, sent or dropped.
    Outcome,
    /// Something that happened on the way (a rewrite, a new flow).
    Event,
    /// Counted by the TC program.
    Tc,
}

macro_rules! stat_slots {
    ($($(#[$doc:meta])* $variant:ident = $label:literal, $kind:ident;)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum StatSlot { $($(#[$doc])* $variant,)* }

        impl StatSlot {
            pub const ALL: &'static [StatSlot] = &[$(StatSlot::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// The fewest slots of a version whose slots are a prefix of these (2026-12-04,
            /// `pass_other_host` inserted at 3; only appends since, and one slot renamed in
            /// place): a pinned `GLOBAL_STATS` that small or larger is carried over by index
            /// at an upgrade; a smaller one was ordered otherwise.
            pub const ORDER_KEPT_SINCE: u32 = 35;

            /// The label value used in metrics and `lbctl stats`.
            pub const fn label(self) -> &'static str {
                match self { $(StatSlot::$variant => $label,)* }
            }

            pub const fn kind(self) -> SlotKind {
                match self { $(StatSlot::$variant => SlotKind::$kind,)* }
            }
        }
    };
}

// Append only: a slot keeps its index in every version since `ORDER_KEPT_SINCE`, so an
// upgrade carries the counts of a pinned `GLOBAL_STATS` of fewer slots over by index
// (`SLOTS_SO_FAR` below holds the order).
stat_slots! {
    /// Every packet the XDP program saw.
    Rx = "rx", Seen;
    /// Not IP, not TCP/UDP/ICMP, or not for a frontend, from a backend or about a tracked
    /// flow: passed untouched.
    PassNotFrontend = "pass_not_frontend", Outcome;
    /// Headers shorter than they claim or otherwise unparseable: passed untouched.
    PassMalformed = "pass_malformed", Outcome;
    /// A unicast frame for another host's MAC (a bridge flooding it, a promiscuous
    /// interface): passed untouched, for the kernel to drop; only the host it is for serves it.
    PassOtherHost = "pass_other_host", Outcome;
    /// IP fragments: passed untouched (no port to balance on).
    PassFragment = "pass_fragment", Outcome;
    /// IPv4 packets with options: passed untouched.
    PassIpOptions = "pass_ip_options", Outcome;
    /// Rewritten toward a backend (client to backend).
    NatForward = "nat_forward", Event;
    /// Rewritten back to the frontend (backend to client) from the flow's connection-table
    /// entry.
    NatReply = "nat_reply", Event;
    /// An echo request to a VIP was answered.
    IcmpEchoReply = "icmp_echo_reply", Event;
    /// An ICMP error about a reply we sent was translated and sent to the backend.
    IcmpErrorToBackend = "icmp_error_to_backend", Event;
    /// An ICMP error about a packet we sent to a backend was translated for the client.
    IcmpErrorToClient = "icmp_error_to_client", Event;
    /// A tracked flow whose backend left its service was given a new one.
    FlowMoved = "flow_moved", Event;
    /// A TCP packet was answered with a RST from the frontend, sent like a reply: its flow's
    /// backend left its service (`on_backend_removal: reset`), or it is a SYN whose service
    /// has no usable backend (from its client itself, not through the mesh tunnel, to a
    /// frontend packets are served on: not a VIP only an overlay's sockets are served).
    FlowReset = "flow_reset", Event;
    /// A packet too big for the egress MTU was answered with ICMP "fragmentation needed" or
    /// ICMPv6 "packet too big" to its sender (quoting it as sent); sent like a reply.
    IcmpTooBig = "icmp_too_big", Event;
    /// New flows started (a backend was chosen).
    NewFlow = "new_flow", Event;
    /// Sent with XDP_REDIRECT to a device that takes XDP frames.
    TxXdpRedirect = "tx_xdp_redirect", Outcome;
    /// Passed to the kernel handed to TC (`maps::Handoff`); the TC program forwards it with
    /// bpf_redirect_neigh.
    TxViaTc = "tx_via_tc", Outcome;
    /// The FIB says the destination is local: passed to the kernel's own stack.
    TxLocal = "tx_local", Outcome;
    /// TC program: forwarded a packet the XDP program handed over.
    TcRedirectNeigh = "tc_redirect_neigh", Tc;
    /// TC program: bpf_redirect_neigh refused the packet.
    TcRedirectFailed = "tc_redirect_failed", Tc;
    /// Dropped: the service has no usable backend (a client's TCP SYN or UDP datagram is
    /// answered instead, counted `refused_no_backend`), and the packet is not answered: a TCP
    /// segment past the SYN, a packet through the mesh tunnel or to a VIP only sockets are
    /// served on, or a datagram past this CPU's budget of answers.
    DropNoBackend = "drop_no_backend", Outcome;
    /// Dropped: no route to the backend or client.
    DropFibFailed = "drop_fib_failed", Outcome;
    /// Dropped: larger than the egress MTU, and not answered with `icmp_too_big` (ICMP, a
    /// packet shorter than the quote, or the answer could not be sent).
    DropTooBig = "drop_too_big", Outcome;
    /// Dropped: the connection table refused an insert.
    DropConntrackFull = "drop_conntrack_full", Outcome;
    /// Dropped: no free source port toward the backend (full NAT, or NAT on a clash).
    DropNoSnatPort = "drop_no_snat_port", Outcome;
    /// Dropped: full NAT found no node address to use toward the backend.
    DropNoSnatAddr = "drop_no_snat_addr", Outcome;
    /// Dropped: a frame arrived addressed to the hand-off address (`maps::Handoff`), which
    /// only the XDP program writes; the TC program would have sent it where its bytes say.
    DropForgedHandoff = "drop_forged_handoff", Outcome;
    /// Sent to another node through the mesh tunnel (to its task, or a task's reply back to
    /// the node the client entered by).
    TunnelSent = "tunnel_sent", Event;
    /// Received from a peer node through the mesh tunnel and unwrapped.
    TunnelReceived = "tunnel_received", Event;
    /// Dropped: a mesh tunnel packet from an address that is not a node of the swarm.
    DropTunnelNotPeer = "drop_tunnel_not_peer", Outcome;
    /// Dropped: a packet for a task's delivery frontend that did not come through the tunnel,
    /// or one a peer sent through it for anything but a delivery frontend or a reply (the
    /// node's own stack would take it with any source the sender chose).
    DropTunnelOnly = "drop_tunnel_only", Outcome;
    /// Dropped: the mesh tunnel could not wrap the packet (no room, no own address, no route
    /// to the peer, or too big for the path to it); or a peer's tunnel packet carried
    /// something else than one IPv4 packet (IPv6, or tunnel packets merged by GRO), or a UDP
    /// aggregate came through it whole (see `aggregate` in lb-ebpf).
    DropTunnelFailed = "drop_tunnel_failed", Outcome;
    /// A client's mid-flow TCP packet (no SYN, no RST) found no entry in the connection
    /// table: its established flow was lost, evicted by newer flows while the table was full
    /// (the table is an LRU; see the README on sizing it), or it entered by another balancer
    /// node (the router moved it when that node died). Also counts a flow older than the
    /// table, or a round-robin flow removed when its backend left. Either scheduler places
    /// it again by the flow hash (Maglev: on the same backend while the backend set is
    /// unchanged; round-robin: the hash's slot of its sequence, see the README). Counted per
    /// packet.
    FlowLost = "flow_lost", Event;
    /// A new flow was confirmed: the client's second packet (TCP without SYN, any UDP)
    /// moved it from the table of unconfirmed flows (`PENDING`) into the connection table.
    /// `new_flow` minus this is the flows never confirmed: a flood of new flows shows there.
    FlowConfirmed = "flow_confirmed", Event;
    /// A reply no connection-table entry covers (its flow entered by another balancer node,
    /// or this node lost it) was rewritten back to the frontend from `REPLY_FRONTENDS`: its
    /// backend has one frontend only (a VIP under `nat`). Sent like a tracked reply.
    NatReplyStateless = "nat_reply_stateless", Event;
    /// A GSO/GRO aggregate (many TCP segments or UDP datagrams the kernel hands generic XDP as
    /// one packet, longer than its ingress MTU) too big for its egress MTU as a whole: sent
    /// through TC (`tx_via_tc`), where the egress device cuts it into segments, instead of
    /// being answered `icmp_too_big`. Also a TCP packet or a UDP aggregate too big for the
    /// mesh tunnel, handed to TC to be wrapped (counted `tunnel_sent` there, or
    /// `tc_tunnel_failed`).
    Aggregate = "aggregate", Event;
    /// TC program: a TCP packet too big for the mesh tunnel was no aggregate (one segment,
    /// from a generic-mode interface: its SYN's MSS was not clamped), a UDP aggregate's
    /// datagrams do not fit the tunnel, or it could not be wrapped; dropped.
    TcTunnelFailed = "tc_tunnel_failed", Tc;
    /// A client's packet to a service with no usable backend (none listed, all down or
    /// drained) was answered from the frontend, the answer's send its outcome: a TCP SYN with
    /// a RST (also counted `flow_reset`), a UDP datagram with ICMP "port unreachable" (at most
    /// `UNREACHABLE_PER_CPU_PER_WINDOW` a window per CPU). With `drop_no_backend`, every
    /// packet that found no backend.
    RefusedNoBackend = "refused_no_backend", Event;
    /// Dropped: a peer's tunnel packet whose outer header a router on the way marked
    /// congested (ECN CE) carried a packet that is not ECN-capable, which cannot carry the
    /// mark on (RFC 6040 §4.2: the router would have dropped it unwrapped).
    DropTunnelCeNotEct = "drop_tunnel_ce_not_ect", Outcome;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_labels_unique() {
        for (i, slot) in StatSlot::ALL.iter().enumerate() {
            assert_eq!(*slot as usize, i);
        }
        let mut labels: [&str; StatSlot::COUNT as usize] = [""; StatSlot::COUNT as usize];
        for (i, slot) in StatSlot::ALL.iter().enumerate() {
            labels[i] = slot.label();
        }
        labels.sort_unstable();
        assert!(labels.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(StatSlot::Rx.kind(), SlotKind::Seen);
    }

    /// Every slot, in the order every version since `ORDER_KEPT_SINCE` slots kept: an upgrade
    /// carries a pinned `GLOBAL_STATS`' counts over by index, so a slot is never moved,
    /// removed or inserted before another; new ones go at the end (and here).
    const SLOTS_SO_FAR: &[&str] = &[
        "rx",
        "pass_not_frontend",
        "pass_malformed",
        "pass_other_host",
        "pass_fragment",
        "pass_ip_options",
        "nat_forward",
        "nat_reply",
        "icmp_echo_reply",
        "icmp_error_to_backend",
        "icmp_error_to_client",
        "flow_moved",
        "flow_reset",
        "icmp_too_big",
        "new_flow",
        "tx_xdp_redirect",
        "tx_via_tc",
        "tx_local",
        "tc_redirect_neigh",
        "tc_redirect_failed",
        "drop_no_backend",
        "drop_fib_failed",
        "drop_too_big",
        "drop_conntrack_full",
        "drop_no_snat_port",
        "drop_no_snat_addr",
        "drop_forged_handoff",
        "tunnel_sent",
        "tunnel_received",
        "drop_tunnel_not_peer",
        "drop_tunnel_only",
        "drop_tunnel_failed",
        "flow_lost",
        "flow_confirmed",
        "nat_reply_stateless",
        "aggregate",
        "tc_tunnel_failed",
        "refused_no_backend",
        "drop_tunnel_ce_not_ect",
    ];

    #[test]
    fn slots_keep_their_indices_across_versions() {
        assert_eq!(
            StatSlot::ALL.len(),
            SLOTS_SO_FAR.len(),
            "a new slot is added here too"
        );
        const { assert!(StatSlot::ORDER_KEPT_SINCE <= StatSlot::COUNT) };
        for (slot, label) in StatSlot::ALL.iter().zip(SLOTS_SO_FAR) {
            assert_eq!(
                slot.label(),
                *label,
                "slot {}: moved or renamed",
                *slot as u32
            );
        }
    }
}
