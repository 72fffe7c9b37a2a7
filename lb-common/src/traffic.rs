//! The traffic generator's configuration (`GEN_CONFIG` of the `bench-traffic` object, written
//! by `lb-bench`): not part of meshlb itself, but a map layout like the others, so written once.

use core::mem::size_of;

/// Template bytes kept (the longest header, Ethernet + IPv6 + TCP, is 74).
pub const TEMPLATE_WORDS: usize = 10;
/// Source ports per source address; a flow index above it moves to the next address.
pub const PORTS_PER_ADDR: u32 = 16384;
/// First source port.
pub const PORT_BASE: u32 = 16384;

/// Value of `GEN_CONFIG`: the frame template and where each flow's fields go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct GenConfig {
    /// The frame's first bytes: headers with source low bits 0 and source port 0.
    pub template: [u64; TEMPLATE_WORDS],
    /// 8-byte words of `template` to write (covers the headers).
    pub words: u32,
    /// Distinct flows (at least 1).
    pub flows: u32,
    /// Offset of the low 16 bits of the source address.
    pub src_lo: u32,
    /// Offset of the source port.
    pub sport: u32,
    /// Offset of the IPv4 header checksum, 0 for IPv6.
    pub ip_csum: u32,
    /// Offset of the L4 checksum.
    pub l4_csum: u32,
    /// 1 for UDP (a computed 0 is sent as 0xffff).
    pub udp: u32,
    /// Frames of a flow in a row before the next flow (0 counts as 1). Two open and confirm
    /// each flow at once: a flow's second packet confirms it before the table of unconfirmed
    /// flows, smaller than the flow set, has let it go.
    pub per_flow: u32,
}

const _: () = assert!(size_of::<GenConfig>() == TEMPLATE_WORDS * 8 + 8 * 4);

/// Slots of the sink's direct-mapped count table (`SINK_SLOTS`, per CPU).
pub const SINK_SLOT_COUNT: usize = 4096;

/// The slot of a destination address (16 bytes, IPv4 as `::ffff:a.b.c.d`): its low 12 bits,
/// distinct for the bench's 4,094 backends (198.18.16.0/20, fd00:2::/64 from 1 up).
pub const fn sink_slot(addr: &[u8; 16]) -> u32 {
    (((addr[14] & 0x0f) as u32) << 8) | addr[15] as u32
}

/// Value of `SINK_SLOTS`: the frames that arrived for one destination, counted without
/// hashing the address (the hash map `SINK_COUNTS` takes the frames of a destination whose
/// slot another one holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SinkSlot {
    /// The destination address, its 16 bytes in memory order (0 while the slot is free).
    pub addr: [u64; 2],
    pub frames: u64,
}

const _: () = assert!(size_of::<SinkSlot>() == 24);

/// Backends the `tracked_floor` program balances over at most (`FLOOR_BACKENDS`).
pub const FLOOR_MAX_BACKENDS: usize = 4096;

/// Value of `FLOOR_CONFIG`: where the `tracked_floor` program sends a new flow (the least a
/// balancer that tracks its flows does per packet, measured beside meshlb by `bench pps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FloorConfig {
    /// Backends in `FLOOR_BACKENDS` (1 to `FLOOR_MAX_BACKENDS`).
    pub backends: u32,
    /// The backends' port, in network order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<FloorConfig>() == 8);
