//! Every map of the program. Names, keys, values and sizes come from lb-common; userspace
//! resizes `CONNTRACK`, `PENDING` and `CONNTRACK_FILTER` at load time.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMapHash, HashMap, LruHashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use lb_common::{
    Addr, conntrack_filter, endpoint_filter,
    limits::{
        DEFAULT_CONNTRACK_ENTRIES, DEFAULT_PENDING_ENTRIES, MAX_BACKEND_ENDPOINTS, MAX_BACKENDS,
        MAX_FRONTENDS, MAX_INTERFACE_MACS, MAX_INTERFACE_MACS_BEYOND, MAX_REPLY_FRONTENDS,
        MAX_SERVICES, MAX_SOCK_NETNS, MAX_TX_PORTS, ROUTE_MEMO_SLOTS, SOCK_REVERSE_ENTRIES,
    },
    maps::{
        Backend, EndpointKey, Flow, FlowKey, InterfaceMac, ReplyFrontend, SELECTION_TABLE_FLAGS,
        Service, SockCounters, SockPeer, SockReverse, SockReverseKey, TableElement,
        TrafficCounters, tunnel,
    },
    stats::StatSlot,
};

/// Frontend (VIP or node address, port, protocol) to its service.
#[btf_map]
pub static FRONTENDS: HashMap<EndpointKey, Service, { MAX_FRONTENDS as usize }> = HashMap::new();

/// A service's selection table. The inner arrays differ in size (BPF_F_INNER_MAP), so each
/// service gets a table sized for it; userspace swaps a whole table in one update, or
/// rewrites one of the same size slot by slot where it is (every slot a live backend).
pub type SelectionTable = Array<TableElement, 1, { SELECTION_TABLE_FLAGS as usize }>;
#[btf_map]
pub static SERVICE_TABLES: ArrayOfMaps<SelectionTable, { MAX_SERVICES as usize }> =
    ArrayOfMaps::new();

/// Backend id to address and port.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Backend (address, port, protocol) triples: the cheap filter that decides whether a packet
/// that is not for a frontend may be a reply worth a connection-table lookup.
#[btf_map]
pub static BACKEND_ENDPOINTS: HashMap<EndpointKey, u32, { MAX_BACKEND_ENDPOINTS as usize }> =
    HashMap::new();

/// Backend endpoints that lead to one frontend only, with that frontend: a reply from one
/// that misses the connection table is translated from here (`stateless`). Userspace writes
/// it from the plan, only where the frontend is unambiguous; a subset of `BACKEND_ENDPOINTS`.
#[btf_map]
pub static REPLY_FRONTENDS: HashMap<EndpointKey, ReplyFrontend, { MAX_REPLY_FRONTENDS as usize }> =
    HashMap::new();

/// The one frontend of the backend endpoint that sends `reply` (a key in the reply
/// direction: the endpoint is its source), if it has one. Valid for the program run (RCU).
#[inline(always)]
pub fn reply_frontend_of(reply: &FlowKey) -> Option<*const ReplyFrontend> {
    let endpoint = EndpointKey::new(reply.src, reply.sport_be, reply.proto);
    REPLY_FRONTENDS.get_ptr(&endpoint)
}

/// Whether the backend endpoint that sends `reply` leads to the frontend `addr`:`port_be`
/// alone, so that its replies are translated right without an entry.
#[inline(always)]
pub fn reply_leads_only_to(reply: &FlowKey, addr: &Addr, port_be: u16) -> bool {
    let Some(entry) = reply_frontend_of(reply) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run (RCU).
    unsafe { (*entry).port_be == port_be && (*entry).addr == *addr }
}

/// The endpoint filters' type (layout: lb-common's `endpoint_filter`).
pub type EndpointFilter =
    Array<u64, { endpoint_filter::WORDS as usize }, { endpoint_filter::FLAGS as usize }>;

/// A bit per backend endpoint (`endpoint_filter_slot`): set by userspace for every endpoint
/// before it writes it to `BACKEND_ENDPOINTS`, which a reply must be in to be translated;
/// never cleared (userspace makes the filter anew when it starts). A packet whose source's
/// bit is clear cannot be a reply and skips the `BACKEND_ENDPOINTS` lookup: with
/// `FORWARD_FILTER`, a packet for no frontend then costs no hash lookup. A stale or shared
/// slot only costs that lookup.
#[btf_map]
pub static REPLY_FILTER: EndpointFilter = Array::new();

/// A bit per frontend endpoint (`endpoint_filter_slot`), like `REPLY_FILTER`: set by
/// userspace for every frontend before it writes it to `FRONTENDS`. A flow is only opened
/// through a frontend, so a packet whose destination's bit is clear is for no frontend and
/// no tracked flow, and skips both the flow-first and the `FRONTENDS` lookup.
#[btf_map]
pub static FORWARD_FILTER: EndpointFilter = Array::new();

/// The frontends' generation: userspace moves it on after every change to `FRONTENDS` (and
/// once when it loads or adopts the maps). A forward flow stamped with the current one
/// follows its own copy of its service's id and flags without the `FRONTENDS` lookup.
#[btf_map]
pub static FRONTEND_GEN: Array<u32, 1> = Array::new();

/// Tracked flows, both directions: confirmed ones (see `PENDING`).
#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, Flow, { DEFAULT_CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

/// A bit per forward key `CONNTRACK` may hold, so a SYN of a new flow skips the lookup (see
/// lb-common's `conntrack_filter` for the layout and how `lbd` clears stale bits).
#[btf_map]
pub static CONNTRACK_FILTER: Array<
    u64,
    { conntrack_filter::elements(DEFAULT_CONNTRACK_ENTRIES) as usize },
    { conntrack_filter::FLAGS as usize },
> = Array::new();

/// New flows, both directions, until the client's second packet confirms them and moves
/// them into `CONNTRACK` (`conntrack::confirm`): a flood of new flows evicts only here.
/// Userspace sizes it from `CONNTRACK`'s size (`limits::pending_entries`).
#[btf_map]
pub static PENDING: LruHashMap<FlowKey, Flow, { DEFAULT_PENDING_ENTRIES as usize }> =
    LruHashMap::new();

/// Per-CPU room to build a connection-table value in: a `Flow` on the 512-byte BPF stack
/// would not fit beside the frames that call `conntrack::insert`.
#[btf_map]
pub static FLOW_SCRATCH: PerCpuArray<Flow, 1> = PerCpuArray::new();

/// Per-CPU: whether the packet being handled has a partial TCP/UDP checksum (`nat`). In a
/// map rather than on the stack, where the verifier would follow every translation path once
/// for each value.
#[btf_map]
pub static CHECKSUM_STATE: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Per-CPU: the window (`now_ns` >> `UNREACHABLE_WINDOW_SHIFT`) the "port unreachable"
/// answers were last counted in
/// (high 32 bits) and how many were sent in it (low 32 bits); see `unreachable`.
#[btf_map]
pub static UNREACHABLE_BUDGET: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Per-CPU room for a connection-table key built deep in the new-flow path.
#[btf_map]
pub static KEY_SCRATCH: PerCpuArray<FlowKey, 1> = PerCpuArray::new();

/// Per-CPU round-robin position of each service: no lock and no shared cache line.
#[btf_map]
pub static RR_CURSORS: PerCpuArray<u32, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// A route the FIB gave for one source, destination, ingress interface, TOS and protocol,
/// and when (see `forward::send_uncached`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RouteMemo {
    pub src: Addr,
    pub dst: Addr,
    /// `now_ns` of the lookup.
    pub looked_up_ns: u64,
    pub ingress_ifindex: u32,
    /// 0: empty slot.
    pub egress_ifindex: u32,
    /// Destination then source MAC, as in the Ethernet header.
    pub macs: [u32; 3],
    pub mtu: u16,
    pub tos: u8,
    pub proto: u8,
    /// 1 if the egress takes XDP frames.
    pub redirect: u8,
    pub _pad: [u8; 7],
}

/// Per-CPU route memo, direct-mapped by addresses (`forward::memo_slot`): established flows
/// whose own cached route expired (a flow seen less often than once a second) share the
/// lookups of others between the same addresses instead of each asking the FIB.
#[btf_map]
pub static ROUTE_MEMO: PerCpuArray<RouteMemo, { ROUTE_MEMO_SLOTS as usize }> = PerCpuArray::new();

/// Devices known to accept XDP frames; anything else is forwarded by the TC program.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_TX_PORTS as usize }> = DevMapHash::new();

#[btf_map]
pub static GLOBAL_STATS: PerCpuArray<u64, { StatSlot::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters, { MAX_SERVICES as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// Socket-level path: which frontend a socket asked for, by socket and backend, for
/// `getpeername` and UDP `recvmsg`.
#[btf_map]
pub static SOCK_REVERSE: LruHashMap<
    SockReverseKey,
    SockReverse,
    { SOCK_REVERSE_ENTRIES as usize },
> = LruHashMap::new();

/// Socket-level path: what a connected socket asked for and was sent to, stored on the socket.
#[btf_map]
pub static SOCK_PEER: SkStorage<SockPeer> = SkStorage::new();

/// Socket-level path: when an unconnected socket last exchanged a datagram with the backend
/// `SOCK_PEER` names (sent to it, or received from it), in whole seconds of the kernel's
/// monotonic clock; a map of its own so that `SOCK_PEER`'s pinned layout stays.
#[btf_map]
pub static SOCK_SEEN: SkStorage<u32> = SkStorage::new();

/// Socket-level path: per-service counters.
#[btf_map]
pub static SOCK_STATS: PerCpuArray<SockCounters, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Socket-level path: the network namespaces (by cookie) whose sockets are translated, and
/// for which frontends (`sock_netns::*`). A socket of any other namespace is left alone: a
/// frontend address means something only in the namespace lbd serves (and, for containers,
/// on the networks they are attached to).
#[btf_map]
pub static SOCK_NETNS: HashMap<u64, u32, { MAX_SOCK_NETNS as usize }> = HashMap::new();

/// Mesh tunnel: this node's underlay address (slot `tunnel::SELF`) and the peers' (1..), as
/// IPv4 in network order; 0 where unset. See `tunnel`.
#[btf_map]
pub static TUNNEL_PEERS: Array<u32, { tunnel::MAX_PEERS as usize }> = Array::new();

/// Mesh tunnel: a peer's underlay address (network order) to its `TUNNEL_PEERS` index. Only
/// these senders' tunnel packets are unwrapped.
#[btf_map]
pub static TUNNEL_PEER_INDEX: HashMap<u32, u32, { tunnel::MAX_PEERS as usize }> = HashMap::new();

/// Each attached interface's own MAC, by ifindex (written by userspace when it attaches):
/// a unicast frame for another MAC is not this node's to serve (`l2::addressed_here`).
#[btf_map]
pub static INTERFACE_MACS: Array<InterfaceMac, { MAX_INTERFACE_MACS as usize }> = Array::new();

/// `INTERFACE_MACS` for interfaces whose ifindex is beyond it, by ifindex: asked only for
/// those, so other interfaces' packets pay nothing for it.
#[btf_map]
pub static INTERFACE_MACS_BEYOND: HashMap<
    u32,
    InterfaceMac,
    { MAX_INTERFACE_MACS_BEYOND as usize },
> = HashMap::new();
