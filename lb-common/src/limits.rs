//! Capacities of the kernel maps. Userspace validates configurations against these, so a
//! service file that does not fit is refused with a message instead of failing half-way.

/// Kernel services: one per (service, published port) pair. Index into the per-service maps.
pub const MAX_SERVICES: u32 = 131_072;
/// Frontend keys: every VIP port plus every published port on every node address.
pub const MAX_FRONTENDS: u32 = 262_144;
/// Backend slots across all services. Id 0 is reserved and means "no backend".
pub const MAX_BACKENDS: u32 = 262_144;
/// Backend addresses that may send replies (the filter in front of the connection table).
pub const MAX_BACKEND_ENDPOINTS: u32 = 262_144;
/// Backend endpoints whose replies are translated without a connection-table entry (each
/// is a backend endpoint, so as many).
pub const MAX_REPLY_FRONTENDS: u32 = MAX_BACKEND_ENDPOINTS;
/// Entries in a service's selection table (a Maglev table or a round-robin sequence), plus
/// slot 0 which holds the table's length.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// The largest selection table a service may have: a Maglev table size (which must be prime)
/// or a round-robin sequence length. One slot less than the kernel table, whose slot 0 holds
/// the length. The one statement of this limit.
pub const MAX_SELECTION_SLOTS: u32 = MAX_TABLE_SIZE - 1;
/// Default connection-table capacity (entries; a flow takes two: forward and reply).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 2_097_152;
/// Entries of the table of unconfirmed flows (`PENDING`) beside a connection table of
/// `conntrack_entries`: a quarter of it, at least `MIN_PENDING_ENTRIES`. New flows wait there
/// until the client's second packet confirms them, so a flood of new flows (spoofed SYNs,
/// one-packet UDP) churns this table and never evicts an established flow. A legitimate new
/// flow survives the flood if the client answers before `entries / 2` newer flows arrive.
pub const fn pending_entries(conntrack_entries: u32) -> u32 {
    let quarter = conntrack_entries / 4;
    if quarter < MIN_PENDING_ENTRIES {
        MIN_PENDING_ENTRIES
    } else {
        quarter
    }
}
pub const MIN_PENDING_ENTRIES: u32 = 1024;
pub const DEFAULT_PENDING_ENTRIES: u32 = pending_entries(DEFAULT_CONNTRACK_ENTRIES);
/// The `max_entries` meshlb asks the kernel for when a hash table (`CONNTRACK`, `PENDING`)
/// is to hold `entries`. The kernel gives a hash map a power of two of buckets, at least one
/// per entry: a power-of-two capacity (the defaults) gets exactly one, and a lookup in a full
/// table then walks past another flow's entry in its chain about every other time, a cold
/// cache line each. One entry more doubles the buckets (16 bytes each: 32 MiB more beside
/// the default connection table's 2,097,152 entries) and halves the chains
/// (`bench/results/micro-2026-12-05-buckets.md`: about 100 ns off a new flow, 20-95 ns off an
/// established flow's packet in a full table).
pub const fn hash_table_entries(entries: u32) -> u32 {
    if entries.is_power_of_two() && entries < 1 << 31 {
        entries + 1
    } else {
        entries
    }
}
/// Slots of the per-CPU route memo (direct-mapped by source and destination address): a
/// flow whose own cached route has expired takes a route the memo got from the FIB for the
/// same addresses at most `ROUTE_MEMO_MAX_AGE_NS` ago. A power of two.
pub const ROUTE_MEMO_SLOTS: u32 = 4096;
/// Oldest route the memo gives out. The flow then caches it for up to about
/// `LAST_SEEN_GRANULARITY_NS` more, so a route a flow uses is at most about 1.1 s old (1 s
/// without the memo); between the same addresses the FIB is still asked about ten times a
/// second, not once per packet of every sparse flow.
pub const ROUTE_MEMO_MAX_AGE_NS: u64 = LAST_SEEN_GRANULARITY_NS / 10;
/// Sockets' (socket, backend) pairs remembered by the socket-level programs, so
/// `getpeername` and UDP `recvmsg` give the frontend back. An LRU map: when full, the least
/// recently used pairs go, and such a socket's `getpeername` shows its backend.
pub const SOCK_REVERSE_ENTRIES: u32 = 262_144;
/// Network namespaces whose sockets the socket-level programs translate for.
pub const MAX_SOCK_NETNS: u32 = 4096;
/// Interfaces the program may redirect frames to with XDP_REDIRECT.
pub const MAX_TX_PORTS: u32 = 1024;
/// Interfaces whose own MAC the program knows (`INTERFACE_MACS`, indexed by ifindex): frames
/// arriving on an interface of a higher ifindex are not filtered by destination MAC.
pub const MAX_INTERFACE_MACS: u32 = 4096;
/// Interfaces of a higher ifindex whose own MAC the program knows (`INTERFACE_MACS_BEYOND`,
/// a hash by ifindex, asked only for them): a host that has made many interfaces (a
/// container's each) gives a new one an ifindex beyond the array's.
pub const MAX_INTERFACE_MACS_BEYOND: u32 = 256;

/// Default Maglev table size: a prime at least 100 times a typical backend count, so removing
/// one backend moves few other flows.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Default idle timeouts, in seconds.
pub const DEFAULT_TCP_TIMEOUT_S: u32 = 24 * 3600;
pub const DEFAULT_UDP_TIMEOUT_S: u32 = 60;
/// Idle timeout of a TCP flow after a FIN each way or a RST (`tcp_state::CLOSING`).
pub const TCP_CLOSING_TIMEOUT_S: u32 = 10;
/// Longest idle time of a TCP flow one side closed (the other may still send: a client that
/// half-closes after its request and waits for the answer), unless the service's timeout is
/// shorter. Bounded, as Linux's conntrack bounds its FIN_WAIT and CLOSE_WAIT (120 s, 60 s),
/// so a client that never closes its side of a connection the server closed does not hold
/// the flow (and a full-NAT port) for the service's timeout; longer than they are, since a
/// backend may think for minutes before it answers a half-closed request.
pub const TCP_HALF_CLOSED_TIMEOUT_S: u32 = 300;
/// Idle timeout of a TCP flow that never got past SYN.
pub const TCP_SYN_TIMEOUT_S: u32 = 30;
/// How long a backend keeps a closed connection's addresses and ports (Linux's TIME_WAIT,
/// `TCP_TIMEWAIT_LEN`). Under NAT the backend sees the client's own port: a flow that reuses
/// it toward another frontend of the same backend within this is given another port, or
/// its SYN would meet the old connection there (answered with an ACK, or dropped).
pub const BACKEND_TIME_WAIT_S: u32 = 60;
/// A flow's last-seen time is written at most this often, to keep hot entries clean in cache.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// Source ports full NAT gives flows, per (node address, backend, protocol), and NAT gives a
/// flow whose client port clashes with a live flow's toward the same backend. Above the
/// kernel's default ephemeral range (32768-60999), so the node's own connections keep theirs.
pub const FULLNAT_PORT_MIN: u16 = 61_000;
pub const FULLNAT_PORT_MAX: u16 = 65_535;
/// Ports tried for a new full-NAT flow before giving up (counted as a drop).
pub const FULLNAT_PORT_ATTEMPTS: u32 = 8;
/// How long after its client's last packet an unconfirmed TCP flow (a SYN, or a packet placed
/// mid-flow, with no second packet yet) holds a source port given here (full NAT's, NAT's on
/// a clash; never a client's own) against a new flow that found every port of its search
/// held (the search's second pass). A handshake takes a round trip; holding ports for the
/// whole `TCP_SYN_TIMEOUT_S` let a flood of SYNs from spoofed sources (about 150 a second per
/// backend) hold every port of the range, and no new flow got one. Its backend's packets do
/// not extend it (a SYN-ACK sent again to a spoofed source).
pub const UNCONFIRMED_TCP_PORT_HOLD_S: u32 = 2;
/// ICMP "port unreachable" answers to datagrams refused for want of a backend, at most, per
/// CPU in each window (`UNREACHABLE_WINDOW_SHIFT`); past them a refused datagram is only
/// dropped. A flood to an empty service is then not answered at its own rate (Linux limits
/// its own ICMP errors host-wide, `net.ipv4.icmp_msgs_per_sec` 1000, and per destination).
pub const UNREACHABLE_PER_CPU_PER_WINDOW: u32 = 1000;
/// The answers' window: the kernel's coarse monotonic clock in ns, shifted right this much
/// (2^30 ns, 1.07 s).
pub const UNREACHABLE_WINDOW_SHIFT: u32 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_of_two_capacity_gets_one_entry_more_and_so_twice_the_buckets() {
        let buckets = |max_entries: u32| max_entries.next_power_of_two();
        let n = DEFAULT_CONNTRACK_ENTRIES;
        assert_eq!(hash_table_entries(n), n + 1);
        assert_eq!(buckets(hash_table_entries(n)), 2 * n);
        assert_eq!(
            buckets(hash_table_entries(DEFAULT_PENDING_ENTRIES)),
            2 * DEFAULT_PENDING_ENTRIES
        );
        // Other capacities have at least one bucket per entry already; they are left alone.
        assert_eq!(hash_table_entries(3_000_000), 3_000_000);
        assert_eq!(hash_table_entries(n + 1), n + 1);
        assert_eq!(hash_table_entries(1 << 31), 1 << 31);
    }
}
