//! Traffic programs of `lb-bench gen` and `lb-bench bench pps` (object `bench-traffic`): never
//! part of meshlb itself.
//!
//! - `generator`: run by `BPF_PROG_TEST_RUN` with live frames on the generator's veth. Every run
//!   writes the whole header (Ethernet, IP, TCP/UDP) from the template in `GEN_CONFIG` over
//!   the frame, then makes it flow `k = seq % flows` (`seq` a per-CPU counter): low 16 bits of
//!   the source address = `k / PORTS_PER_ADDR`, source port = `PORT_BASE + k % PORTS_PER_ADDR`,
//!   with the checksums fixed incrementally (the template's own are for low bits 0, port 0).
//!   Live frames recycle their pages: a frame that went through the kernel comes back with
//!   what the node wrote into it (MACs, TTL, NAT), so nothing of the header is left to chance.
//!   Returns XDP_TX: the frame leaves through the veth to the node.
//! - `sink`: on the backends' side. Counts every frame per destination address (per-CPU) and
//!   drops it; with slot 0 of `SINK_CONFIG` set to 1 it also remembers, per generator flow, the
//!   destination it arrived at (the correctness oracle reads that).
//! - `ceiling`: on the node's ingress, the redirect-only bound: IPv4/IPv6 frames get the MACs
//!   of `CEILING_CONFIG` and are redirected to `CEILING_PORT[0]`, no balancing work at all.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, DevMap, HashMap, PerCpuArray, PerCpuHashMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::traffic::{GenConfig, PORT_BASE, PORTS_PER_ADDR, TEMPLATE_WORDS};

#[btf_map]
static GEN_CONFIG: Array<GenConfig, 1> = Array::new();

/// Packets generated on each CPU; userspace zeroes it to replay a flow set from flow 0.
#[btf_map]
static GEN_SEQ: PerCpuArray<u64, 1> = PerCpuArray::new();

/// A destination address (IPv4 as ::ffff:a.b.c.d).
type AddrKey = [u8; 16];

/// Frames per destination address.
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

/// MACs written by `ceiling`: destination then source.
#[btf_map]
static CEILING_CONFIG: Array<[u8; 12], 1> = Array::new();

#[btf_map]
static CEILING_PORT: DevMap<1> = DevMap::new();

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
    let seq = GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, only this CPU's runs touch it.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flows = u64::from(config.flows.max(1));
    let k = (n % flows) as u32;
    let start = ctx.data();
    let end = ctx.data_end();
    for i in 0..TEMPLATE_WORDS {
        if i as u32 >= config.words {
            break;
        }
        if start + (i + 1) * 8 > end {
            return None;
        }
        // SAFETY: 8 bytes in bounds (checked above); packet data may be unaligned.
        unsafe { ((start + i * 8) as *mut u64).write_unaligned(config.template[i]) };
    }
    let lo = (k / PORTS_PER_ADDR) as u16;
    let port = (PORT_BASE + k % PORTS_PER_ADDR) as u16;
    // Both as they sit in memory (network order), like the checksums.
    let lo_ne = u16::from_ne_bytes(lo.to_be_bytes());
    let port_ne = u16::from_ne_bytes(port.to_be_bytes());
    put16(ctx, config.src_lo as usize, lo_ne)?;
    put16(ctx, config.sport as usize, port_ne)?;
    if config.ip_csum != 0 {
        let off = config.ip_csum as usize;
        put16(ctx, off, csum_add(get16(ctx, off)?, lo_ne, 0))?;
    }
    let off = config.l4_csum as usize;
    let mut csum = csum_add(get16(ctx, off)?, lo_ne, port_ne);
    if config.udp != 0 && csum == 0 {
        csum = 0xffff;
    }
    put16(ctx, off, csum)
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

#[inline(always)]
fn put16(ctx: &XdpContext, off: usize, value: u16) -> Option<()> {
    let p = ctx.data() + off;
    if off > 128 || p + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: 2 bytes in bounds (checked above).
    unsafe { (p as *mut u16).write_unaligned(value) };
    Some(())
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
    let mut key = [0u8; 16];
    // (offset of the source low 16 bits, offset of the L4 header)
    let (src_lo, l4) = match ethertype {
        [0x08, 0x00] => {
            // SAFETY: as above.
            let (ihl, dst) = unsafe {
                (
                    usize::from(((start + ETH_HLEN) as *const u8).read() & 0x0f) * 4,
                    ((start + ETH_HLEN + 16) as *const [u8; 4]).read_unaligned(),
                )
            };
            key[10] = 0xff;
            key[11] = 0xff;
            key[12..].copy_from_slice(&dst);
            (ETH_HLEN + 14, ETH_HLEN + ihl)
        }
        [0x86, 0xdd] => {
            // SAFETY: as above.
            key = unsafe { ((start + ETH_HLEN + 24) as *const [u8; 16]).read_unaligned() };
            (ETH_HLEN + 22, ETH_HLEN + 40)
        }
        _ => return None,
    };
    bump(&key);
    if let Some(record) = SINK_CONFIG.get(0)
        && *record != 0
    {
        let lo = get16(ctx, src_lo)?;
        if l4 > 80 {
            return Some(());
        }
        let port = get16(ctx, l4)?;
        let flow = (u32::from(u16::from_be(lo)) << 16) | u32::from(u16::from_be(port));
        let _ = SINK_FLOWS.insert(&flow, &key, 0);
    }
    Some(())
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
    let mut key = [0u8; 16];
    key[10] = 0xff;
    key[11] = 0xff;
    key[12..].copy_from_slice(&dst);
    bump(&key);
    Some(())
}

#[inline(always)]
fn bump(key: &AddrKey) {
    match SINK_COUNTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = SINK_COUNTS.insert(key, &1, 0);
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
    // SAFETY: as above.
    unsafe { (start as *mut [u8; 12]).write_unaligned(*macs) };
    CEILING_PORT
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
