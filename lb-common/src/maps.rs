//! Keys and values of the kernel maps, and their names. Layouts are fixed by size assertions:
//! a change that moves a field breaks the build, not the dataplane.

use core::mem::size_of;

use crate::Addr;

/// Map names: each is the name of the `static` in lb-ebpf's `maps` module.
pub mod names {
    pub const FRONTENDS: &str = "FRONTENDS";
    pub const SERVICE_TABLES: &str = "SERVICE_TABLES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_ENDPOINTS: &str = "BACKEND_ENDPOINTS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const PENDING: &str = "PENDING";
    pub const RR_CURSORS: &str = "RR_CURSORS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const FLOW_SCRATCH: &str = "FLOW_SCRATCH";
    pub const KEY_SCRATCH: &str = "KEY_SCRATCH";
    pub const REPLY_FILTER: &str = "REPLY_FILTER";
    pub const ROUTE_MEMO: &str = "ROUTE_MEMO";
    pub const FORWARD_FILTER: &str = "FORWARD_FILTER";
    pub const FRONTEND_GEN: &str = "FRONTEND_GEN";
    pub const SOCK_REVERSE: &str = "SOCK_REVERSE";
    pub const SOCK_PEER: &str = "SOCK_PEER";
    pub const SOCK_SEEN: &str = "SOCK_SEEN";
    pub const SOCK_STATS: &str = "SOCK_STATS";
    pub const SOCK_NETNS: &str = "SOCK_NETNS";
    pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
    pub const TUNNEL_PEER_INDEX: &str = "TUNNEL_PEER_INDEX";
    pub const REPLY_FRONTENDS: &str = "REPLY_FRONTENDS";
    pub const INTERFACE_MACS: &str = "INTERFACE_MACS";
    pub const INTERFACE_MACS_BEYOND: &str = "INTERFACE_MACS_BEYOND";
    pub const CHECKSUM_STATE: &str = "CHECKSUM_STATE";
    pub const CONNTRACK_FILTER: &str = "CONNTRACK_FILTER";
    pub const UNREACHABLE_BUDGET: &str = "UNREACHABLE_BUDGET";
    /// Every map, for pinning and for checking that the object has them all.
    pub const ALL: [&str; 30] = [
        FRONTENDS,
        SERVICE_TABLES,
        BACKENDS,
        BACKEND_ENDPOINTS,
        CONNTRACK,
        PENDING,
        RR_CURSORS,
        TX_PORTS,
        GLOBAL_STATS,
        SERVICE_STATS,
        BACKEND_STATS,
        FLOW_SCRATCH,
        KEY_SCRATCH,
        REPLY_FILTER,
        ROUTE_MEMO,
        FORWARD_FILTER,
        FRONTEND_GEN,
        SOCK_REVERSE,
        SOCK_PEER,
        SOCK_SEEN,
        SOCK_STATS,
        SOCK_NETNS,
        TUNNEL_PEERS,
        TUNNEL_PEER_INDEX,
        REPLY_FRONTENDS,
        INTERFACE_MACS,
        INTERFACE_MACS_BEYOND,
        CHECKSUM_STATE,
        CONNTRACK_FILTER,
        UNREACHABLE_BUDGET,
    ];
}

/// An attached interface's own MAC address, in `INTERFACE_MACS` at its ifindex (in
/// `INTERFACE_MACS_BEYOND` for an ifindex beyond that array): bytes 0-5
/// the address, byte 6 is 1 when set (0: not known, frames are not filtered by it), byte 7
/// the interface's `interface_flags`.
pub type InterfaceMac = [u8; 8];

/// Byte 7 of an `INTERFACE_MACS` value.
pub mod interface_flags {
    /// XDP runs there in generic (skb) mode: a packet from a socket on this host (a local
    /// container's, through `docker_gwbridge`) may carry a partial TCP/UDP checksum, which
    /// translation must update as such (see lb-ebpf's `nat`).
    pub const SKB_MODE: u8 = 1;
}

/// Program names: each is the name of the entry function in lb-ebpf.
pub mod programs {
    pub const XDP: &str = "meshlb_xdp";
    pub const TC_INGRESS: &str = "meshlb_tc_ingress";
    /// The cgroup `sock_addr` programs of socket-level balancing (lb-ebpf's `sock` module).
    pub const SOCK_CONNECT4: &str = "meshlb_connect4";
    pub const SOCK_CONNECT6: &str = "meshlb_connect6";
    pub const SOCK_SENDMSG4: &str = "meshlb_sendmsg4";
    pub const SOCK_SENDMSG6: &str = "meshlb_sendmsg6";
    pub const SOCK_RECVMSG4: &str = "meshlb_recvmsg4";
    pub const SOCK_RECVMSG6: &str = "meshlb_recvmsg6";
    pub const SOCK_GETPEERNAME4: &str = "meshlb_getpeername4";
    pub const SOCK_GETPEERNAME6: &str = "meshlb_getpeername6";
    /// Every socket-level program.
    pub const SOCK_ALL: [&str; 8] = [
        SOCK_CONNECT4,
        SOCK_CONNECT6,
        SOCK_SENDMSG4,
        SOCK_SENDMSG6,
        SOCK_RECVMSG4,
        SOCK_RECVMSG6,
        SOCK_GETPEERNAME4,
        SOCK_GETPEERNAME6,
    ];
}

/// IP protocol numbers used in keys.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// An (address, port, protocol) triple: the key of `FRONTENDS` (a VIP or node address and a
/// published port) and of `BACKEND_ENDPOINTS` (a backend that may send replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: Addr,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl EndpointKey {
    /// The key, its port and protocol written as one word (see `set_port_proto`).
    #[inline(always)]
    pub fn new(addr: Addr, port_be: u16, proto: u8) -> Self {
        let mut key = Self {
            addr,
            ..Self::default()
        };
        key.set_port_proto(port_be, proto);
        key
    }

    /// Sets the port and protocol (and clears the padding) with one 32-bit store. The map's
    /// hash reads a key by 32-bit words, and a word the CPU still holds as separate narrower
    /// stores cannot be forwarded to that read: it waits for them to reach the cache, some
    /// 10 ns per lookup on our VMs.
    #[inline(always)]
    pub fn set_port_proto(&mut self, port_be: u16, proto: u8) {
        let [p0, p1] = port_be.to_ne_bytes();
        // SAFETY: `port_be`, `proto` and `_pad` are one aligned word (asserted below).
        unsafe {
            write_key_word(
                core::ptr::addr_of_mut!(self.port_be),
                u32::from_ne_bytes([p0, p1, proto, 0]),
            )
        }
    }
}

/// Writes `word` over the four key bytes that start at `field`, in one store (see
/// `EndpointKey::set_port_proto` for why).
///
/// # Safety
/// `field` must start four bytes of its key, 4-byte aligned.
#[inline(always)]
unsafe fn write_key_word<T>(field: *mut T, word: u32) {
    // SAFETY: as the caller promises.
    unsafe { field.cast::<u32>().write(word) }
}

// The words the key setters write: `port_be`, `proto` and `_pad` of `EndpointKey`; the two
// ports, and `proto` with `_pad`, of `FlowKey`.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(EndpointKey, port_be) % 4 == 0);
    assert!(offset_of!(EndpointKey, proto) == offset_of!(EndpointKey, port_be) + 2);
    assert!(offset_of!(EndpointKey, _pad) == offset_of!(EndpointKey, port_be) + 3);
    assert!(size_of::<EndpointKey>() == offset_of!(EndpointKey, port_be) + 4);
    assert!(offset_of!(FlowKey, sport_be) % 4 == 0);
    assert!(offset_of!(FlowKey, dport_be) == offset_of!(FlowKey, sport_be) + 2);
    assert!(offset_of!(FlowKey, proto) == offset_of!(FlowKey, sport_be) + 4);
    assert!(offset_of!(FlowKey, _pad) == offset_of!(FlowKey, proto) + 1);
    assert!(size_of::<FlowKey>() == offset_of!(FlowKey, proto) + 4);
};

/// Value of `REPLY_FRONTENDS` (keyed by a backend endpoint): the one frontend that leads to
/// the backend, so a reply from it that no connection-table entry covers (its flow entered by
/// another balancer node, or this node forgot it) still leaves with the frontend as source.
/// Written only where that frontend is the only one (see lb-userspace's `plan::replies`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyFrontend {
    pub addr: Addr,
    pub port_be: u16,
    pub _pad: u16,
    /// For the traffic counters, as a tracked reply counts.
    pub service_id: u32,
    pub backend_id: u32,
}

/// Value of `FRONTENDS`: the kernel service a frontend belongs to and how it forwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into `SERVICE_TABLES`, `RR_CURSORS` and `SERVICE_STATS`.
    pub id: u32,
    /// `service_flags::*`.
    pub flags: u32,
    /// Idle timeout of an established flow, seconds.
    pub tcp_timeout_s: u32,
    pub udp_timeout_s: u32,
}

pub mod service_flags {
    /// Stateful weighted round-robin instead of the Maglev flow hash.
    pub const ROUND_ROBIN: u32 = 1 << 0;
    /// Hash the client address only (Maglev).
    pub const AFFINITY_CLIENT_IP: u32 = 1 << 1;
    /// Full NAT: the source becomes a node address and port too, so replies come back through
    /// the node whatever the backend's routes.
    pub const FULLNAT: u32 = 1 << 2;
    /// `on_backend_removal: move`: a tracked flow whose backend left the service is given a
    /// new backend on its next packet (without it, `keep`: it stays on the old address).
    pub const MOVE_ON_REMOVAL: u32 = 1 << 3;
    /// `on_backend_removal: reset`: as `MOVE_ON_REMOVAL`, but a TCP flow's next packet
    /// (other than a SYN) is answered with a RST from the frontend, so the client learns at
    /// once. Set together with `MOVE_ON_REMOVAL`.
    pub const RESET_ON_REMOVAL: u32 = 1 << 4;
    /// A local task's delivery frontend (its ingress address and target port): only packets
    /// that came through the mesh tunnel from a peer node may use it; the flow's replies go
    /// back through the tunnel to that node.
    pub const TUNNEL_ONLY: u32 = 1 << 5;
    /// Hash the 5-tuple without the frontend address (`affinity: any-node`): a connection
    /// gets the same backend whichever node address it enters by (Maglev).
    pub const AFFINITY_ANY_NODE: u32 = 1 << 6;
    pub const ALL: u32 = ROUND_ROBIN
        | AFFINITY_CLIENT_IP
        | FULLNAT
        | MOVE_ON_REMOVAL
        | RESET_ON_REMOVAL
        | TUNNEL_ONLY
        | AFFINITY_ANY_NODE;
    /// Bits 16-23: the socket scope of a frontend only sockets serve (a swarm service's VIP
    /// on an overlay network): 1-31, the bit a network namespace's `SOCK_NETNS` value must
    /// have for its sockets to be translated. 0: a frontend of the node (XDP and the node's
    /// own sockets, `sock_netns::NODE`). Outside `ALL`: flows never carry it.
    pub const SOCKET_SCOPE_SHIFT: u32 = 16;
    pub const SOCKET_SCOPE_MASK: u32 = 0xff << SOCKET_SCOPE_SHIFT;
}

/// `SERVICE_TABLES` is an array of maps: one inner array per service, swapped in whole (or,
/// at the same size and with no backend leaving, rewritten slot by slot where it is).
/// Slot 0 of a table holds the number of entries that follow; slots 1..=len hold backend ids
/// (a Maglev table, or a weighted round-robin sequence).
pub const TABLE_LEN_SLOT: u32 = 0;

/// An element of an inner array: two slots. The kernel lays array elements out 8 bytes apart
/// whatever their size, so a slot per element would leave half of every table unused; with two,
/// slot `s` is half `s % 2` of element `s / 2`, and a table is its slots back to back.
pub type TableElement = [u32; SLOTS_PER_ELEMENT as usize];
pub const SLOTS_PER_ELEMENT: u32 = 2;

/// Elements of an inner array that holds a table of `len` entries (and its length slot).
pub const fn table_elements(len: u32) -> u32 {
    (len + 1).div_ceil(SLOTS_PER_ELEMENT)
}

/// Map flag: userspace may map the array into its memory (`mmap`).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Map flag: an inner map whose size may differ from its template's.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Flags of every inner array of `SERVICE_TABLES` (the kernel requires the template and the
/// tables to match): BPF_F_INNER_MAP, so tables differ in size, and BPF_F_MMAPABLE, so
/// userspace fills a new table with one memory copy instead of a syscall per slot.
pub const SELECTION_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// Value of `BACKENDS`, indexed by backend id (0 is reserved).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    pub port_be: u16,
    /// `backend_flags::*`.
    pub flags: u16,
    pub service_id: u32,
}

pub mod backend_flags {
    /// The slot holds a backend (an all-zero slot is unused).
    pub const IN_USE: u16 = 1 << 0;
    /// Bits 1-7: the prefix length (IPv4 1-32, IPv6 1-127) of the subnet this node reaches
    /// the backend on (a local task's `docker_gwbridge`, the node's link route holding a file
    /// backend), 0 when not known (or an IPv6 /128, which 7 bits cannot hold). A client inside that subnet (a container on the same bridge) would get
    /// the backend's answers straight from it, past the node and its translation back, so its
    /// flows speak from the node's address, as under full NAT (hairpin).
    pub const ON_LINK_SHIFT: u16 = 1;
    pub const ON_LINK_MASK: u16 = 0x7f << ON_LINK_SHIFT;
    /// The longest prefix `ON_LINK_MASK` holds.
    pub const ON_LINK_MAX_PREFIX: u8 = 0x7f;

    /// The on-link prefix length bits 1-7 of `flags` hold.
    #[inline(always)]
    pub const fn on_link_prefix(flags: u16) -> u8 {
        ((flags & ON_LINK_MASK) >> ON_LINK_SHIFT) as u8
    }
    /// Bits 8-15: the `TUNNEL_PEERS` index of the node the backend (a task) runs on; 0 for a
    /// backend this node reaches itself.
    pub const PEER_SHIFT: u16 = 8;
}

pub mod tunnel;

/// Key of `CONNTRACK`: a flow as seen on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// Sets both ports from the four bytes that open a TCP or UDP header (source port, then
    /// destination port, as on the wire), read as one native word: one 32-bit store, so the
    /// map's hash can read the word back at once (see `EndpointKey::set_port_proto`).
    #[inline(always)]
    pub fn set_ports_word(&mut self, wire: u32) {
        // SAFETY: `sport_be` and `dport_be` are one aligned word (asserted above).
        unsafe { write_key_word(core::ptr::addr_of_mut!(self.sport_be), wire) }
    }

    /// Sets both ports with one 32-bit store (see `set_ports_word`).
    #[inline(always)]
    pub fn set_ports(&mut self, sport_be: u16, dport_be: u16) {
        let ([s0, s1], [d0, d1]) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
        self.set_ports_word(u32::from_ne_bytes([s0, s1, d0, d1]));
    }

    /// Sets the protocol and clears the padding with one 32-bit store (see `set_ports_word`).
    #[inline(always)]
    pub fn set_proto(&mut self, proto: u8) {
        // SAFETY: `proto` and `_pad` are one aligned word (asserted above).
        unsafe {
            write_key_word(
                core::ptr::addr_of_mut!(self.proto),
                u32::from_ne_bytes([proto, 0, 0, 0]),
            )
        }
    }
}

/// Value of `CONNTRACK`.
///
/// The fields named `nat_*`/`snat_*` mean different things in the two kinds of entry: read
/// them through the accessors that name them (`backend_addr`, `frontend_addr`, ...). A flow
/// has two entries. The *forward* entry is keyed by (client, frontend) and names the
/// backend; the *reply* entry is keyed by (backend, client) and names the frontend, so replies
/// can be translated back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Forward: the backend address and port to rewrite to. Reply: the frontend's.
    pub nat_addr: Addr,
    /// Full NAT only (unspecified otherwise). Forward: the node address and port that replace
    /// the client's; reply: the client's, restored as the destination.
    pub snat_addr: Addr,
    pub nat_port_be: u16,
    pub snat_port_be: u16,
    /// `flow_kind::*`.
    pub kind: u8,
    /// `tcp_state::*` (0 for UDP).
    pub tcp_state: u8,
    /// Cached route: 1 if `egress_ifindex` takes XDP frames (XDP_REDIRECT), 0 for the TC
    /// hand-off.
    pub egress_redirect: u8,
    /// Forward: the service's `service_flags` as of `frontend_gen` (they fit a byte).
    pub service_flags: u8,
    pub backend_id: u32,
    pub service_id: u32,
    /// Idle timeout in seconds, copied from the service when the flow starts.
    pub timeout_s: u32,
    /// Cached route of this direction: the egress interface (0: none cached). Refreshed with
    /// `last_seen_ns`, so a flow looks its route up at most about once a second.
    pub egress_ifindex: u32,
    /// `bpf_ktime_get_ns` when last seen, updated at most every `LAST_SEEN_GRANULARITY_NS`.
    pub last_seen_ns: u64,
    /// Cached route: destination then source MAC for XDP_REDIRECT, as in the Ethernet
    /// header (4-byte aligned, so the program copies them as three words).
    pub egress_macs: [u8; 12],
    /// The kernel tick (`bpf_jiffies64`, low 32 bits) in which the idle clock was last
    /// checked: later packets of the same tick skip the check and the nanosecond clock (a
    /// helper call; the tick is one inlined load).
    pub seen_tick: u32,
    /// Cached route: the egress MTU. A larger packet takes the route lookup instead, which
    /// drops and counts it (`drop_too_big`) as it would without the cache.
    pub egress_mtu: u16,
    /// The `TUNNEL_PEERS` index this direction is sent to through the mesh tunnel (0: sent
    /// as usual): a forward entry whose backend is a task on another node, or a reply entry
    /// of a flow that came from another node.
    pub tunnel_peer: u8,
    /// Forward: 1 when the backend's FIN closed its side before the client did (and the
    /// flow was not reset): the backend then keeps the connection in TIME_WAIT (see
    /// `port_hold_s`).
    pub backend_closed_first: u8,
    /// Forward: the `FRONTEND_GEN` at which the flow's frontend was last seen to belong to
    /// `service_id` with `service_flags`. While it is current, the flow's packets skip the
    /// `FRONTENDS` lookup.
    pub frontend_gen: u32,
}

/// The fields whose meaning depends on the entry's kind, named for what they hold in that
/// kind. Each accessor is for one kind only (its doc says which): a forward entry holds the
/// backend and the remapped source, a reply entry the frontend and the client.
impl Flow {
    /// How long the flow may stay idle before its entry is free for another, in seconds: a
    /// TCP flow opening or closing lives briefly, a half-closed one at most
    /// `TCP_HALF_CLOSED_TIMEOUT_S`, any other its service's timeout. The kernel expires
    /// entries by it; `lbctl flows` shows it.
    #[inline(always)]
    pub const fn idle_limit_s(&self) -> u32 {
        match self.tcp_state {
            tcp_state::SYN_SENT => crate::limits::TCP_SYN_TIMEOUT_S,
            tcp_state::CLOSING => crate::limits::TCP_CLOSING_TIMEOUT_S,
            tcp_state::CLIENT_CLOSED | tcp_state::BACKEND_CLOSED
                if self.timeout_s > crate::limits::TCP_HALF_CLOSED_TIMEOUT_S =>
            {
                crate::limits::TCP_HALF_CLOSED_TIMEOUT_S
            }
            _ => self.timeout_s,
        }
    }

    /// How long after its last packet the flow still holds the source port the backend sees
    /// (the client's under NAT, the node's under full NAT), in seconds: its idle limit, and a
    /// closed TCP flow the backend may still keep in TIME_WAIT at least that
    /// (`BACKEND_TIME_WAIT_S`). Under full NAT the backend's replies all come back to this
    /// node, so its FIN is seen, and only a flow it closed first (TIME_WAIT is the first
    /// closer's) holds the port: the node's ports are few. Under NAT the replies may leave
    /// through another node, so every closed flow holds it. Asked when a new flow's source
    /// port toward the same backend is chosen.
    #[inline(always)]
    pub const fn port_hold_s(&self) -> u32 {
        let idle = self.idle_limit_s();
        let fullnat = self.service_flags & service_flags::FULLNAT as u8 != 0;
        if tcp_state::closed_by_either(self.tcp_state)
            && (!fullnat || self.backend_closed_first != 0)
            && idle < crate::limits::BACKEND_TIME_WAIT_S
        {
            crate::limits::BACKEND_TIME_WAIT_S
        } else {
            idle
        }
    }

    /// Forward entry: the backend address the destination is rewritten to.
    #[inline(always)]
    pub const fn backend_addr(&self) -> &Addr {
        &self.nat_addr
    }

    /// Forward entry: the backend port (network order).
    #[inline(always)]
    pub const fn backend_port_be(&self) -> u16 {
        self.nat_port_be
    }

    /// Forward entry: whether the client's source is rewritten too (full NAT: to a node
    /// address and port; NAT on a reply-entry clash: to another port of the client).
    #[inline(always)]
    pub fn remaps_source(&self) -> bool {
        self.snat_addr != Addr::UNSPECIFIED
    }

    /// Forward entry: the source address packets get when `remaps_source`.
    #[inline(always)]
    pub const fn remapped_source_addr(&self) -> &Addr {
        &self.snat_addr
    }

    /// Forward entry: the source port (network order) packets get when `remaps_source`.
    #[inline(always)]
    pub const fn remapped_source_port_be(&self) -> u16 {
        self.snat_port_be
    }

    /// Reply entry: the frontend address the backend's source is rewritten to.
    #[inline(always)]
    pub const fn frontend_addr(&self) -> &Addr {
        &self.nat_addr
    }

    /// Reply entry: the frontend port (network order).
    #[inline(always)]
    pub const fn frontend_port_be(&self) -> u16 {
        self.nat_port_be
    }

    /// Reply entry: whether the destination is restored to the client's own address and port
    /// (the flow's source was remapped).
    #[inline(always)]
    pub fn restores_client(&self) -> bool {
        self.snat_addr != Addr::UNSPECIFIED
    }

    /// Reply entry: the client's own address, restored as the destination when
    /// `restores_client` (unspecified otherwise).
    #[inline(always)]
    pub const fn client_addr(&self) -> &Addr {
        &self.snat_addr
    }

    /// Reply entry: the client's own port (network order), restored with `client_addr`.
    #[inline(always)]
    pub const fn client_port_be(&self) -> u16 {
        self.snat_port_be
    }
}

pub mod flow_kind {
    pub const FORWARD: u8 = 1;
    pub const REPLY: u8 = 2;
}

/// TCP header flags (the 13th byte).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A TCP flow's state as the program follows it (`next`).
pub mod tcp_state {
    use super::tcp_flag;

    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    /// Both sides closed (a FIN each way), or either reset: the short timeout.
    pub const CLOSING: u8 = 3;
    /// The client sent its FIN; its backend may still send (a client that half-closes after
    /// its request and waits for the answer): alive, idle up to
    /// `TCP_HALF_CLOSED_TIMEOUT_S`.
    pub const CLIENT_CLOSED: u8 = 4;
    /// The backend sent its FIN; its client may still send.
    pub const BACKEND_CLOSED: u8 = 5;

    /// Whether a side has closed: a SYN on the flow's tuple is a new connection.
    #[inline(always)]
    pub const fn closed_by_either(state: u8) -> bool {
        state == CLOSING || state == CLIENT_CLOSED || state == BACKEND_CLOSED
    }

    /// The state after a segment with `flags` from the client (`from_client`) or the
    /// backend: a RST ends the flow, a FIN closes its sender's side (both sides: CLOSING),
    /// and the client's first segment without SYN establishes it.
    #[inline(always)]
    pub const fn next(state: u8, flags: u8, from_client: bool) -> u8 {
        if flags & tcp_flag::RST != 0 {
            return CLOSING;
        }
        if flags & tcp_flag::FIN != 0 {
            let (own, other) = if from_client {
                (CLIENT_CLOSED, BACKEND_CLOSED)
            } else {
                (BACKEND_CLOSED, CLIENT_CLOSED)
            };
            return if state == other || state == CLOSING {
                CLOSING
            } else {
                own
            };
        }
        if from_client && state == SYN_SENT && flags & tcp_flag::SYN == 0 {
            return ESTABLISHED;
        }
        state
    }
}

/// Per-service and per-backend traffic counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Key of `SOCK_REVERSE`: a socket (its cookie) and the backend the socket-level programs
/// sent it to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockReverseKey {
    pub cookie: u64,
    pub backend: Addr,
    pub port_be: u16,
    pub _pad: [u8; 6],
}

/// Value of `SOCK_REVERSE`: the frontend the socket asked for, which `getpeername` and
/// `recvmsg` give back in place of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockReverse {
    pub frontend: Addr,
    pub port_be: u16,
    pub _pad: u16,
}

/// Value of `SOCK_PEER`, stored on a socket the socket-level programs sent to a backend: that
/// backend (as the socket sends to it) and the frontend asked for, at its `connect()`, or for
/// an unconnected socket its last datagram's. It lives and dies with the socket, so unlike
/// `SOCK_REVERSE` no churn of other sockets can evict it, and a new connection costs no
/// insert into a shared table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockPeer {
    pub backend: Addr,
    pub frontend: Addr,
    pub backend_port_be: u16,
    pub frontend_port_be: u16,
    /// The `BACKENDS` id chosen: an unconnected socket's next datagram to the same frontend
    /// stays on it while it is still that backend of the service. 0 (no backend) in values
    /// written before it was kept.
    pub backend_id: u32,
}

/// Values of `SOCK_NETNS` (keyed by network namespace cookie): which frontends the
/// socket-level programs translate for sockets of that namespace.
/// Values of `SOCK_NETNS`: which frontends a network namespace's sockets are translated for,
/// one bit per scope (see `service_flags::SOCKET_SCOPE_SHIFT`).
pub mod sock_netns {
    /// The node's own namespace (lbd's): the node's frontends (scope 0).
    pub const NODE: u32 = 1;
    /// Highest socket scope (bit 31 of the value).
    pub const MAX_SCOPE: u32 = 31;
}

/// A frontend port that stands for every port: a swarm VIP takes connections on any port and
/// keeps it (the backend port is the one asked for). Only the socket-level path serves it.
pub const ANY_PORT: u16 = 0;

/// Per-service counters of the socket-level path (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounters {
    /// `connect` calls to a frontend sent to a backend (TCP, and connected UDP).
    pub connections: u64,
    /// Unconnected UDP datagrams to a frontend sent to a backend.
    pub datagrams: u64,
    /// `connect` or `sendmsg` to a frontend refused (ECONNREFUSED): no usable backend.
    pub no_backend: u64,
}

/// How the XDP program hands a packet it rewrote to the TC program on the same interface, which
/// forwards it (`bpf_redirect_neigh`, or the mesh tunnel's wrap of an aggregate first): it writes
/// this over the frame's Ethernet addresses and passes it to the kernel. The kernel writes the
/// addresses anew when it sends the packet on. (Not XDP metadata: some kernels refuse
/// `bpf_xdp_adjust_meta` to XDP programs; the addresses are in every frame.)
///
/// The destination address becomes `9e:4b:d1:37:KIND:PEER` (locally administered, unicast;
/// random, so no one picks it for an interface: "mlb" in ASCII is what a person would pick,
/// and the test kit's bridge did), the source address's first four bytes the egress
/// interface. A frame that arrives addressed to `9e:4b:d1:37:KIND:…`, with a kind of hand-off,
/// is dropped by the XDP program before the TC program could see it (`drop_forged_handoff`):
/// only the XDP program hands over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// `handoff::FORWARD`, or `handoff::TUNNEL`.
    pub kind: u8,
    /// `TUNNEL`: the peer's `TUNNEL_PEERS` index, 1..=255; `FORWARD`: 0.
    pub peer: u8,
    /// The egress interface the FIB lookup chose.
    pub ifindex: u32,
}

pub mod handoff {
    /// The destination address's first four bytes.
    pub const PREFIX: [u8; 4] = [0x9e, 0x4b, 0xd1, 0x37];
    /// Forward to `ifindex` (`bpf_redirect_neigh`).
    pub const FORWARD: u8 = b'f';
    /// A GSO/GRO aggregate to wrap for the mesh tunnel to `peer` (XDP cannot wrap one so
    /// that the kernel segments it right), then forward to `ifindex`.
    pub const TUNNEL: u8 = b't';
}

impl Handoff {
    pub const fn forward(ifindex: u32) -> Self {
        Handoff {
            kind: handoff::FORWARD,
            peer: 0,
            ifindex,
        }
    }

    pub const fn tunnel(peer: u8, ifindex: u32) -> Self {
        Handoff {
            kind: handoff::TUNNEL,
            peer,
            ifindex,
        }
    }

    /// The twelve address bytes, as three words in the frame's byte order (the programs copy
    /// words: the verifier wants them aligned on the stack).
    pub const fn to_words(self) -> [u32; 3] {
        let i = self.ifindex.to_le_bytes();
        [
            u32::from_le_bytes(handoff::PREFIX),
            u32::from_le_bytes([self.kind, self.peer, i[0], i[1]]),
            u32::from_le_bytes([i[2], i[3], 0, 0]),
        ]
    }

    /// The hand-off these address bytes carry, if they carry one.
    pub const fn from_words(words: [u32; 3]) -> Option<Self> {
        if words[0] != u32::from_le_bytes(handoff::PREFIX) {
            return None;
        }
        let [kind, peer, i0, i1] = words[1].to_le_bytes();
        let [i2, i3, _, _] = words[2].to_le_bytes();
        let valid = match kind {
            handoff::FORWARD => peer == 0,
            handoff::TUNNEL => peer != 0,
            _ => false,
        };
        if !valid {
            return None;
        }
        Some(Handoff {
            kind,
            peer,
            ifindex: u32::from_le_bytes([i0, i1, i2, i3]),
        })
    }

    /// Whether a frame whose first eight bytes are `start` (in the frame's byte order)
    /// is addressed like a hand-off: the prefix and a kind (whatever the peer and interface).
    pub const fn is_handoff_address(start: u64) -> bool {
        let kind = (start >> 32) as u8;
        start as u32 == u32::from_le_bytes(handoff::PREFIX)
            && (kind == handoff::FORWARD || kind == handoff::TUNNEL)
    }
}

const _: () = assert!(size_of::<Addr>() == 16);
const _: () = assert!(size_of::<EndpointKey>() == 20);
const _: () = assert!(size_of::<Service>() == 16);
const _: () = assert!(size_of::<ReplyFrontend>() == 28);
const _: () = assert!(size_of::<Backend>() == 24);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<Flow>() == 88);
/// `Flow::service_flags` holds every service flag.
const _: () = assert!(service_flags::ALL <= u8::MAX as u32);
// The program copies the cached MACs as words.
const _: () = assert!(core::mem::offset_of!(Flow, egress_macs) % 4 == 0);
const _: () = assert!(size_of::<TrafficCounters>() == 24);
const _: () = assert!(size_of::<SockReverseKey>() == 32);
const _: () = assert!(size_of::<SockReverse>() == 20);
const _: () = assert!(size_of::<SockPeer>() == 40);
const _: () = assert!(size_of::<SockCounters>() == 24);

#[cfg(test)]
mod key_tests {
    use super::{EndpointKey, FlowKey};
    use crate::Addr;

    #[test]
    fn the_word_setters_write_the_fields_they_name_and_clear_the_padding() {
        let addr = Addr::from_v4_raw(u32::from_ne_bytes([198, 18, 2, 10]));
        let mut endpoint = EndpointKey {
            addr,
            _pad: 0xff,
            ..EndpointKey::default()
        };
        endpoint.set_port_proto(8080u16.to_be(), 17);
        let fields = EndpointKey {
            addr,
            port_be: 8080u16.to_be(),
            proto: 17,
            _pad: 0,
        };
        assert_eq!(endpoint, fields);
        assert_eq!(EndpointKey::new(addr, 8080u16.to_be(), 17), fields);

        let mut key = FlowKey {
            _pad: [0xff; 3],
            ..FlowKey::default()
        };
        // The first four bytes of a TCP header from port 31337 to port 80, as they are in
        // the packet, read as one native word.
        let [s0, s1] = 31337u16.to_be_bytes();
        let [d0, d1] = 80u16.to_be_bytes();
        key.set_ports_word(u32::from_ne_bytes([s0, s1, d0, d1]));
        key.set_proto(6);
        let fields = FlowKey {
            sport_be: 31337u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            ..FlowKey::default()
        };
        assert_eq!(key, fields);
        key.set_ports(0, 443u16.to_be());
        assert_eq!((key.sport_be, key.dport_be), (0, 443u16.to_be()));
    }
}

#[cfg(test)]
mod flow_tests {
    use super::{Flow, tcp_state};
    use crate::limits::{TCP_CLOSING_TIMEOUT_S, TCP_HALF_CLOSED_TIMEOUT_S, TCP_SYN_TIMEOUT_S};

    /// A FIN closes its sender's side only: a client that half-closes after its request
    /// keeps its flow (and, under full NAT, its port) while the backend answers; the second
    /// FIN, or a RST from either side, closes it.
    #[test]
    fn tcp_states_follow_each_sides_close() {
        use super::tcp_flag::{ACK, FIN, RST, SYN};
        use tcp_state::{
            BACKEND_CLOSED, CLIENT_CLOSED, CLOSING, ESTABLISHED, SYN_SENT, closed_by_either, next,
        };
        let client = true;
        let backend = false;
        // (state, flags, from the client, next state)
        let steps = [
            (SYN_SENT, SYN, client, SYN_SENT),
            (SYN_SENT, SYN | ACK, backend, SYN_SENT),
            (SYN_SENT, ACK, client, ESTABLISHED),
            (ESTABLISHED, ACK, backend, ESTABLISHED),
            (ESTABLISHED, FIN | ACK, client, CLIENT_CLOSED),
            (CLIENT_CLOSED, ACK, backend, CLIENT_CLOSED),
            (CLIENT_CLOSED, FIN | ACK, client, CLIENT_CLOSED),
            (CLIENT_CLOSED, FIN | ACK, backend, CLOSING),
            (ESTABLISHED, FIN | ACK, backend, BACKEND_CLOSED),
            (BACKEND_CLOSED, ACK, client, BACKEND_CLOSED),
            (BACKEND_CLOSED, FIN | ACK, client, CLOSING),
            (CLOSING, ACK, client, CLOSING),
            (CLOSING, FIN | ACK, backend, CLOSING),
            (ESTABLISHED, RST, client, CLOSING),
            (CLIENT_CLOSED, RST | ACK, backend, CLOSING),
            (SYN_SENT, RST, backend, CLOSING),
            (SYN_SENT, FIN, client, CLIENT_CLOSED),
        ];
        for (state, flags, from_client, expected) in steps {
            assert_eq!(
                next(state, flags, from_client),
                expected,
                "state {state}, flags {flags:#x}, from the client: {from_client}"
            );
        }
        assert!([CLOSING, CLIENT_CLOSED, BACKEND_CLOSED].map(closed_by_either) == [true; 3]);
        assert!(
            ![SYN_SENT, ESTABLISHED]
                .map(closed_by_either)
                .contains(&true)
        );
    }

    #[test]
    fn the_idle_limit_is_the_one_that_applies_to_the_state() {
        let flow = |tcp_state| Flow {
            tcp_state,
            timeout_s: 86_400,
            ..Flow::default()
        };
        assert_eq!(flow(tcp_state::SYN_SENT).idle_limit_s(), TCP_SYN_TIMEOUT_S);
        assert_eq!(
            flow(tcp_state::CLOSING).idle_limit_s(),
            TCP_CLOSING_TIMEOUT_S
        );
        assert_eq!(flow(tcp_state::ESTABLISHED).idle_limit_s(), 86_400);
        for half in [tcp_state::CLIENT_CLOSED, tcp_state::BACKEND_CLOSED] {
            assert_eq!(flow(half).idle_limit_s(), TCP_HALF_CLOSED_TIMEOUT_S);
            let short = Flow {
                timeout_s: 60,
                ..flow(half)
            };
            assert_eq!(short.idle_limit_s(), 60, "the service's, if shorter");
        }
        assert_eq!(flow(tcp_state::NONE).idle_limit_s(), 86_400, "UDP");
    }
}

#[cfg(test)]
mod handoff_tests {
    use super::{Handoff, handoff};

    #[test]
    fn a_handoff_reads_back_from_its_address_bytes_and_nothing_else_does() {
        for h in [
            Handoff::forward(7),
            Handoff::forward(u32::MAX),
            Handoff::tunnel(1, 70_000),
            Handoff::tunnel(255, 3),
        ] {
            let words = h.to_words();
            assert_eq!(Handoff::from_words(words), Some(h));
            // A locally administered unicast destination.
            assert_eq!(words[0].to_le_bytes()[0] & 0b11, 0b10);
            let start = u64::from(words[0]) | u64::from(words[1]) << 32;
            assert!(Handoff::is_handoff_address(start));
        }
        let words = Handoff::forward(7).to_words();
        // A forward names no peer, a tunnel needs one, and other kinds are none.
        for bad in [
            [words[0], u32::from_le_bytes([handoff::FORWARD, 1, 7, 0]), 0],
            [words[0], u32::from_le_bytes([handoff::TUNNEL, 0, 7, 0]), 0],
            [words[0], u32::from_le_bytes([b'x', 0, 7, 0]), 0],
            [words[0] ^ 0x100, words[1], words[2]],
        ] {
            assert_eq!(Handoff::from_words(bad), None, "{bad:08x?}");
        }
        // The address alone, whatever follows: its prefix and a kind.
        let start = |w0: u32, kind: u8| u64::from(w0) | u64::from(kind) << 32;
        assert!(Handoff::is_handoff_address(start(
            words[0],
            handoff::TUNNEL
        )));
        assert!(!Handoff::is_handoff_address(start(words[0], 0)));
        assert!(!Handoff::is_handoff_address(start(
            words[0] ^ 1 << 24,
            handoff::FORWARD
        )));
    }
}
