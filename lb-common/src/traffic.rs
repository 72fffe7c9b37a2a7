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
    pub _pad: u32,
}

const _: () = assert!(size_of::<GenConfig>() == TEMPLATE_WORDS * 8 + 8 * 4);
