//! Traffic programs of `lb-bench gen` and `lb-bench bench pps` (object `bench-traffic`): never
//! part of meshlb itself.
//!
//! - `generator`: run by `BPF_PROG_TEST_RUN` with live frames on the generator's veth. Every run
//!   writes the whole header (Ethernet, IP, TCP/UDP) from the template in `GEN_CONFIG` over
//!   the frame with aligned word stores, then makes it flow `k` (a per-CPU counter that wraps
//!   at the flow count, advanced every `per_flow` frames): low 16 bits of the source address
//!   = `k / PORTS_PER_ADDR`, source port = `PORT_BASE + k % PORTS_PER_ADDR`, with the
//!   checksums fixed incrementally from the template's own (those are for low bits 0, port
//!   0). Live frames recycle their pages: a frame that went through the kernel comes back with
//!   what the node wrote into it (MACs, TTL, NAT), so nothing of the header is left to
//!   chance. Returns XDP_TX: the frame leaves through the veth to the node.
//! - `sink`: on the backends' side. Counts every frame per destination address (per-CPU, in a
//!   slot chosen by the address's low bits, a hash map for addresses whose slot is taken) and
//!   drops it; with slot 0 of `SINK_CONFIG` set to 1 it also remembers, per generator flow,
//!   the destination it arrived at (the correctness oracle reads that).
//! - `ceiling`: on the node's ingress, the redirect-only bound: IPv4/IPv6 frames get the MACs
//!   of `CEILING_CONFIG` and are redirected to `CEILING_PORT[0]`, no balancing work at all.
//! - `tracked_floor`: the ceiling plus the least a balancer that tracks flows does per packet:
//!   one lookup of the IPv4 flow's 5-tuple in an LRU hash table sized like meshlb's connection
//!   table (a new flow takes a backend of `FLOOR_BACKENDS` and is inserted), the destination
//!   address and port rewritten with incremental checksum updates. Its key (16 bytes) and value
//!   (8) are the most compact a tracker could have: what it loses to more flows is what
//!   memory costs any such balancer on this machine, not meshlb's layout.
#![no_std]
#![no_main]

// Shared with meshlb's program; each program here uses a part of it.
#[allow(dead_code)]
#[path = "csum.rs"]
mod csum;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use csum::{csum_replace2, csum_replace4};
use lb_common::traffic::{
    FLOOR_MAX_BACKENDS, FloorConfig, GenConfig, PORT_BASE, PORTS_PER_ADDR, SINK_SLOT_COUNT,
    SinkSlot, TEMPLATE_WORDS, sink_slot,
};

#[btf_map]
static GEN_CONFIG: Array<GenConfig, 1> = Array::new();

/// Per CPU: [packets generated, the next packet's flow, frames of that flow sent so far];
/// userspace zeroes them to replay a flow set from flow 0. The flow is counted on rather
/// than taken as `packets / per_flow % flows`: a 64-bit division per frame is a noticeable
/// part of a generator this cheap.
#[btf_map]
static GEN_SEQ: PerCpuArray<[u64; 3], 1> = PerCpuArray::new();

/// A destination address (IPv4 as ::ffff:a.b.c.d).
type AddrKey = [u8; 16];

/// Frames per destination address, by the address's low 12 bits: no hashing per frame.
#[btf_map]
static SINK_SLOTS: PerCpuArray<SinkSlot, SINK_SLOT_COUNT> = PerCpuArray::new();

/// Frames per destination address whose slot in `SINK_SLOTS` another address holds.
#[btf_map]
static SINK_COUNTS: PerCpuHashMap<AddrKey, u64, 8192> = PerCpuHashMap::new();

/// Slot 0: frames that were not IPv4/IPv6 (still dropped).
#[btf_map]
static SINK_OTHER: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Slot 0: 1 to record flows in `SINK_FLOWS`.
#[btf_map]
static SINK_CONFIG: Array<u32, 1> = Array::new();

/// Generator flow (source low 16 bits << 16 | source port) to the destination it reached.
#[btf_map]
static SINK_FLOWS: HashMap<u32, AddrKey, 262144> = HashMap::new();

/// MACs written by `ceiling`: destination then source, as three words in memory order.
#[btf_map]
static CEILING_CONFIG: Array<[u32; 3], 1> = Array::new();

#[btf_map]
static CEILING_PORT: DevMap<1> = DevMap::new();

/// `tracked_floor`'s flow key: addresses, ports and protocol as they sit in the headers.
#[derive(Clone, Copy)]
#[repr(C)]
struct FloorKey {
    saddr: u32,
    daddr: u32,
    ports: u32,
    proto: u32,
}

/// `tracked_floor`'s flow: its backend's address and port, as they go into the headers.
#[derive(Clone, Copy)]
#[repr(C)]
struct FloorFlow {
    addr: u32,
    port: u16,
    _pad: u16,
}

/// `tracked_floor`'s connection table; lb-bench sizes it at load like meshlb's.
#[btf_map]
static FLOOR_FLOWS: LruHashMap<FloorKey, FloorFlow, 1024> = LruHashMap::new();

#[btf_map]
static FLOOR_CONFIG: Array<FloorConfig, 1> = Array::new();

/// Backend IPv4 addresses as they go into the header.
#[btf_map]
static FLOOR_BACKENDS: Array<u32, FLOOR_MAX_BACKENDS> = Array::new();

const ETH_HLEN: usize = 14;

#[xdp]
pub fn generator(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<()> {
    let config = GEN_CONFIG.get(0)?;
    let state = GEN_SEQ.get_ptr_mut(0)?;
    let flows = u64::from(config.flows.max(1));
    let per_flow = u64::from(config.per_flow.max(1));
    // SAFETY: per-CPU value, only this CPU's runs touch it.
    let k = unsafe {
        let [sent, flow, repeated] = *state;
        // A flow count lowered under a running counter starts over at flow 0.
        let k = if flow < flows { flow } else { 0 };
        *state = if repeated + 1 < per_flow {
            [sent.wrapping_add(1), k, repeated + 1]
        } else {
            [
                sent.wrapping_add(1),
                if k + 1 < flows { k + 1 } else { 0 },
                0,
            ]
        };
        k as u32
    };
    let start = ctx.data();
    let end = ctx.data_end();
    for i in 0..TEMPLATE_WORDS {
        if i as u32 >= config.words {
            break;
        }
        if start + (i + 1) * 8 > end {
            return None;
        }
        // SAFETY: 8 bytes in bounds (checked above), and aligned: live frames put the data at
        // XDP_PACKET_HEADROOM after the page's xdp_page_head, an 8-byte multiple from the page
        // start, and reset it there before every run (a plain test run's buffer is likewise
        // kmalloc'd + 256). Word stores, not `write_unaligned`: the BPF target turns an
        // unaligned u64 store into eight byte stores, which made this loop most of the
        // generator's cost.
        unsafe { ((start + i * 8) as *mut u64).write(config.template[i]) };
    }
    let lo = (k / PORTS_PER_ADDR) as u16;
    let port = (PORT_BASE + k % PORTS_PER_ADDR) as u16;
    // Both as they sit in memory (network order), like the checksums.
    let lo_ne = u16::from_ne_bytes(lo.to_be_bytes());
    let port_ne = u16::from_ne_bytes(port.to_be_bytes());
    put16_aligned(ctx, config.src_lo as usize, lo_ne)?;
    put16_aligned(ctx, config.sport as usize, port_ne)?;
    if config.ip_csum != 0 {
        let off = config.ip_csum as usize;
        put16_aligned(ctx, off, csum_add(template16(config, off)?, lo_ne, 0))?;
    }
    let off = config.l4_csum as usize;
    let mut csum = csum_add(template16(config, off)?, lo_ne, port_ne);
    if config.udp != 0 && csum == 0 {
        csum = 0xffff;
    }
    put16_aligned(ctx, off, csum)
}

/// The template's 16-bit word at byte `off` (a checksum the template holds for low bits and
/// port 0): read from the map rather than from the frame just written, which would wait on
/// the word stores still in flight.
#[inline(always)]
fn template16(config: &GenConfig, off: usize) -> Option<u16> {
    if off % 2 != 0 || off + 2 > TEMPLATE_WORDS * 8 {
        return None;
    }
    // SAFETY: inside the template (checked above) and 2-byte aligned (an even offset into an
    // array of u64).
    Some(unsafe {
        config
            .template
            .as_ptr()
            .cast::<u8>()
            .add(off)
            .cast::<u16>()
            .read()
    })
}

/// Writes the generator's 16-bit field at `off`: every such offset of `GenConfig` is even
/// (lb-bench's template.rs) and the data is 8-byte aligned (see `generate`).
#[inline(always)]
fn put16_aligned(ctx: &XdpContext, off: usize, value: u16) -> Option<()> {
    let p = ctx.data() + off;
    if off > 128 || off % 2 != 0 || p + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: 2 bytes in bounds and 2-byte aligned (checked above, see the doc comment).
    unsafe { (p as *mut u16).write(value) };
    Some(())
}

#[inline(always)]
fn get16(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p = ctx.data() + off;
    if off > 128 || p + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: 2 bytes in bounds (checked above).
    Some(unsafe { (p as *const u16).read_unaligned() })
}

/// The checksum after two 16-bit words that were 0 became `a` and `b` (RFC 1624).
#[inline(always)]
fn csum_add(csum: u16, a: u16, b: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(a) + u32::from(b);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    if count_frame(&ctx).is_none()
        && let Some(other) = SINK_OTHER.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value.
        unsafe { *other += 1 };
    }
    xdp_action::XDP_DROP
}

/// Counts an IPv4/IPv6 frame under its destination; `None` for anything else.
#[inline(always)]
fn count_frame(ctx: &XdpContext) -> Option<()> {
    let start = ctx.data();
    if start + ETH_HLEN + 40 > ctx.data_end() {
        // Shorter than an IPv6 header: only IPv4 fits.
        return count_v4_short(ctx);
    }
    // SAFETY: 54 bytes in bounds (checked above).
    let ethertype = unsafe { ((start + 12) as *const [u8; 2]).read_unaligned() };
    // (offset of the source low 16 bits, offset of the L4 header)
    let (key, src_lo, l4) = match ethertype {
        [0x08, 0x00] => {
            // SAFETY: as above.
            let (ihl, dst) = unsafe {
                (
                    usize::from(((start + ETH_HLEN) as *const u8).read() & 0x0f) * 4,
                    ((start + ETH_HLEN + 16) as *const [u8; 4]).read_unaligned(),
                )
            };
            (v4_key(dst), ETH_HLEN + 14, ETH_HLEN + ihl)
        }
        [0x86, 0xdd] => {
            // SAFETY: as above; the frame may sit anywhere (the node can move its head).
            let key = unsafe {
                [
                    ((start + ETH_HLEN + 24) as *const u64).read_unaligned(),
                    ((start + ETH_HLEN + 32) as *const u64).read_unaligned(),
                ]
            };
            (key, ETH_HLEN + 22, ETH_HLEN + 40)
        }
        _ => return None,
    };
    bump(key);
    if let Some(record) = SINK_CONFIG.get(0)
        && *record != 0
    {
        let lo = get16(ctx, src_lo)?;
        if l4 > 80 {
            return Some(());
        }
        let port = get16(ctx, l4)?;
        let flow = (u32::from(u16::from_be(lo)) << 16) | u32::from(u16::from_be(port));
        let _ = SINK_FLOWS.insert(&flow, &key_bytes(key), 0);
    }
    Some(())
}

/// An IPv4 destination as the 16 bytes of `::ffff:a.b.c.d`, in two words.
#[inline(always)]
fn v4_key(dst: [u8; 4]) -> [u64; 2] {
    [
        0,
        u64::from_ne_bytes([0, 0, 0xff, 0xff, dst[0], dst[1], dst[2], dst[3]]),
    ]
}

#[inline(always)]
fn key_bytes(key: [u64; 2]) -> AddrKey {
    let [a, b] = [key[0].to_ne_bytes(), key[1].to_ne_bytes()];
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
}

/// A frame of 34 to 53 bytes: IPv4 or nothing.
#[inline(always)]
fn count_v4_short(ctx: &XdpContext) -> Option<()> {
    let start = ctx.data();
    if start + ETH_HLEN + 20 > ctx.data_end() {
        return None;
    }
    // SAFETY: 34 bytes in bounds (checked above).
    let (ethertype, dst) = unsafe {
        (
            ((start + 12) as *const [u8; 2]).read_unaligned(),
            ((start + ETH_HLEN + 16) as *const [u8; 4]).read_unaligned(),
        )
    };
    if ethertype != [0x08, 0x00] {
        return None;
    }
    bump(v4_key(dst));
    Some(())
}

/// One more frame for `key`: in its slot if the slot is free or its own, else in the hash map.
#[inline(always)]
fn bump(key: [u64; 2]) {
    let bytes = key_bytes(key);
    if let Some(slot) = SINK_SLOTS.get_ptr_mut(sink_slot(&bytes)) {
        // SAFETY: per-CPU value, only this CPU's runs touch it.
        unsafe {
            if (*slot).frames == 0 {
                (*slot).addr = key;
            }
            if (*slot).addr == key {
                (*slot).frames += 1;
                return;
            }
        }
    }
    match SINK_COUNTS.get_ptr_mut(&bytes) {
        // SAFETY: per-CPU value.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = SINK_COUNTS.insert(&bytes, &1, 0);
        }
    }
}

#[xdp]
pub fn ceiling(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: 14 bytes in bounds (checked above).
    let ethertype = unsafe { ((start + 12) as *const [u8; 2]).read_unaligned() };
    if ethertype != [0x08, 0x00] && ethertype != [0x86, 0xdd] {
        return xdp_action::XDP_PASS;
    }
    let Some(macs) = CEILING_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above. Three word stores rather than one of [u8; 12], which the BPF target
    // makes a call to memmove.
    unsafe {
        let at = start as *mut u32;
        at.write_unaligned(macs[0]);
        at.add(1).write_unaligned(macs[1]);
        at.add(2).write_unaligned(macs[2]);
    }
    CEILING_PORT
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

/// Ethernet, option-less IPv4 and the first word of UDP or TCP: what `tracked_floor` reads.
const FLOOR_HEADERS: usize = ETH_HLEN + 20 + 4;

#[xdp]
pub fn tracked_floor(ctx: XdpContext) -> u32 {
    match track(&ctx) {
        Some(()) => CEILING_PORT
            .redirect(0, 0)
            .unwrap_or(xdp_action::XDP_ABORTED),
        None => xdp_action::XDP_PASS,
    }
}

/// Finds or places the frame's flow and rewrites the frame toward its backend; `None` for a
/// frame that is not a whole, option-less IPv4 UDP/TCP packet (a fragment has no ports to
/// track; passed on untouched, as is a frame too short for its L4 checksum).
#[inline(always)]
fn track(ctx: &XdpContext) -> Option<()> {
    let start = ctx.data();
    if start + FLOOR_HEADERS > ctx.data_end() {
        return None;
    }
    let ip = start + ETH_HLEN;
    // SAFETY: every read and write below is within the FLOOR_HEADERS bytes checked above.
    unsafe {
        let ethertype = ((start + 12) as *const [u8; 2]).read_unaligned();
        let [version_ihl, _] = (ip as *const [u8; 2]).read_unaligned();
        let proto = ((ip + 9) as *const u8).read();
        // More fragments, or a fragment offset: anything but the don't-fragment bit.
        let fragment = ((ip + 6) as *const [u8; 2]).read_unaligned() != [0, 0]
            && ((ip + 6) as *const [u8; 2]).read_unaligned() != [0x40, 0];
        if ethertype != [0x08, 0x00]
            || version_ihl != 0x45
            || (proto != 6 && proto != 17)
            || fragment
        {
            return None;
        }
        // The L4 checksum: TCP's always, UDP's unless the sender sent none (0). Checked
        // before the flow is placed, so a frame passed on leaves no entry behind.
        let l4_csum_at = if proto == 6 {
            ip + 20 + 16
        } else {
            ip + 20 + 6
        };
        if l4_csum_at + 2 > ctx.data_end() {
            return None;
        }
        let key = FloorKey {
            saddr: ((ip + 12) as *const u32).read_unaligned(),
            daddr: ((ip + 16) as *const u32).read_unaligned(),
            ports: ((ip + 20) as *const u32).read_unaligned(),
            proto: u32::from(proto),
        };
        let flow = match FLOOR_FLOWS.get_ptr(&key) {
            Some(flow) => *flow,
            None => place(&key)?,
        };
        let old_port = ((ip + 22) as *const u16).read_unaligned();
        let csum = ((ip + 10) as *const u16).read_unaligned();
        ((ip + 10) as *mut u16).write_unaligned(csum_replace4(csum, key.daddr, flow.addr));
        let l4 = (l4_csum_at as *const u16).read_unaligned();
        if proto == 6 || l4 != 0 {
            let new = csum_replace2(csum_replace4(l4, key.daddr, flow.addr), old_port, flow.port);
            let new = if proto == 17 && new == 0 { 0xffff } else { new };
            (l4_csum_at as *mut u16).write_unaligned(new);
        }
        ((ip + 16) as *mut u32).write_unaligned(flow.addr);
        ((ip + 22) as *mut u16).write_unaligned(flow.port);
        let macs = CEILING_CONFIG.get(0)?;
        let at = start as *mut u32;
        at.write_unaligned(macs[0]);
        at.add(1).write_unaligned(macs[1]);
        at.add(2).write_unaligned(macs[2]);
    }
    Some(())
}

/// A new flow's backend (by a hash of its source), inserted into `FLOOR_FLOWS`.
#[inline(always)]
fn place(key: &FloorKey) -> Option<FloorFlow> {
    let config = FLOOR_CONFIG.get(0)?;
    let backends = config.backends;
    // Also what keeps a panic path for a zero divisor out of the program.
    if backends == 0 || backends > FLOOR_MAX_BACKENDS as u32 {
        return None;
    }
    let hash = (key.saddr ^ key.ports).wrapping_mul(0x9e37_79b9);
    let addr = *FLOOR_BACKENDS.get((hash >> 8) % backends)?;
    let flow = FloorFlow {
        addr,
        port: config.port,
        _pad: 0,
    };
    FLOOR_FLOWS.insert(key, &flow, 0).ok()?;
    Some(flow)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
