//! Benchmark harness for `lb-bench bench micro`: XDP programs that are only ever run with
//! BPF_PROG_TEST_RUN, never attached.
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs a program N times on the *same* buffer, so a
//! program that rewrites the packet (meshlb's DNAT and MAC rewrite, or the hand-off to TC written
//! over the addresses) sees its own output from the second iteration on. The harness makes every
//! iteration start from the original packet, as the restore harness of
//! `bench/results/katran-reference.md` describes for Katran:
//!
//! 1. undo a length change at the head (`bpf_xdp_adjust_head`);
//! 2. copy the pristine frame from `PRISTINE` over the packet (60 bytes for IPv4: `harness`,
//!    `harness_vary`; 80 bytes for IPv6: `harness_v6`, `harness_v6_vary`);
//! 3. the `_vary` programs only: make the packet a new flow (a per-CPU sequence number goes
//!    into the low 15 bits of the source address and into the TCP/UDP source port, checksums
//!    fixed incrementally), so 2^30 iterations are 2^30 distinct flows (or, with `VARY_CYCLE`
//!    set to a span of N, the same N flows over and over, in the order its stride gives);
//! 4. tail-call slot 0 of `TARGET`, which userspace fills with the program under test.
//!
//! The floor programs calibrate the method: `floor_pass` (returns XDP_PASS), `floor_tx_only`
//! (returns XDP_TX), `floor_tx` (parses Ethernet/IPv4/TCP, swaps the MACs, XDP_TX),
//! `floor_fib` (parses, `bpf_fib_lookup`, sets the MACs, XDP_TX) and `floor_handoff` (writes
//! the 12 address bytes, XDP_PASS, as meshlb's hand-off to TC does), run directly or through
//! the harness.
#![no_std]
#![no_main]

// Shared with meshlb's program; each program here uses a part of it.
#[allow(dead_code)]
#[path = "csum.rs"]
mod csum;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup, xdp_action},
    btf_maps::{Array, PerCpuArray, ProgramArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use csum::csum_replace2;
use lb_common::maps::Handoff;

/// The two frame layouts of the benchmark: Ethernet + IPv4 or IPv6 + TCP + a 6-byte payload.
struct Layout {
    /// Frame length.
    len: usize,
    /// Low 16 bits of the source address.
    src_lo: usize,
    /// IPv4 header checksum (IPv6 has none).
    ip_csum: Option<usize>,
    /// Protocol / next header byte.
    proto: usize,
    /// L4 header.
    l4: usize,
}

const ETH_HLEN: usize = 14;
const V4: Layout = Layout {
    len: 60,
    src_lo: ETH_HLEN + 14,
    ip_csum: Some(ETH_HLEN + 10),
    proto: ETH_HLEN + 9,
    l4: ETH_HLEN + 20,
};
const V6: Layout = Layout {
    len: 80,
    src_lo: ETH_HLEN + 8 + 14,
    ip_csum: None,
    proto: ETH_HLEN + 6,
    l4: ETH_HLEN + 40,
};
const L4: usize = V4.l4;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The frame every iteration starts from (the first 60 or 80 bytes), written by userspace.
#[btf_map]
static PRISTINE: Array<[u64; 16], 1> = Array::new();

/// Per-CPU sequence numbers of the vary programs: slot 0 for runs without a span, which
/// only grows, so no run meets a flow an earlier one opened; slot 1 for runs with one. One
/// number for both let a spread run leave it small, and the next new-flow run then sent the
/// SYNs of flows the check pass had opened.
#[btf_map]
static VARY_SEQ: PerCpuArray<u32, 2> = PerCpuArray::new();

/// How the vary programs' sequence moves: `[span, stride]`. A span of 0: it only grows (a
/// new flow every iteration). A span of N: it steps by the stride modulo N, through every
/// flow of 0..N when the two are coprime (the spread classes, whose flows are prefilled in
/// the order 0..N: a stride of 1 visits them in that order, which is also the order the
/// table laid them out in memory; another visits them scattered, as traffic does). One map
/// lookup, as before the stride; a step costs an add and a compare, no division.
#[btf_map]
static VARY_CYCLE: Array<[u32; 2], 1> = Array::new();

/// Slot 0: the program under test.
#[btf_map]
static TARGET: ProgramArray<1> = ProgramArray::new();

/// 60-byte IPv4 frames.
#[xdp]
pub fn harness(ctx: XdpContext) -> u32 {
    restore_and_call(&ctx, &V4, false)
}

/// 60-byte IPv4 frames, a new flow every iteration.
#[xdp]
pub fn harness_vary(ctx: XdpContext) -> u32 {
    restore_and_call(&ctx, &V4, true)
}

/// 80-byte IPv6 frames.
#[xdp]
pub fn harness_v6(ctx: XdpContext) -> u32 {
    restore_and_call(&ctx, &V6, false)
}

/// 80-byte IPv6 frames, a new flow every iteration.
#[xdp]
pub fn harness_v6_vary(ctx: XdpContext) -> u32 {
    restore_and_call(&ctx, &V6, true)
}

#[inline(always)]
fn restore_and_call(ctx: &XdpContext, layout: &Layout, vary: bool) -> u32 {
    if restore(ctx, layout, vary).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: does not return on success; on failure (empty slot) we fall through.
    unsafe { TARGET.tail_call(ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Steps 1 to 3 of the module documentation. `None` if the packet cannot be restored.
#[inline(always)]
fn restore(ctx: &XdpContext, layout: &Layout, vary: bool) -> Option<()> {
    let len = ctx.data_end() - ctx.data();
    if len != layout.len {
        // Positive: the previous iteration grew the head (encapsulation), move data back.
        // SAFETY: plain helper call; checked.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, len as i32 - layout.len as i32) } != 0 {
            return None;
        }
    }
    let pristine = PRISTINE.get(0)?;
    let start = ctx.data();
    if start + layout.len > ctx.data_end() {
        return None;
    }
    // SAFETY: layout.len bytes are in bounds (checked above). BPF_PROG_TEST_RUN puts the
    // frame at XDP_PACKET_HEADROOM (256) from a page-aligned start and step 2 undid any head
    // move, so `start` is 8-byte aligned and word stores are aligned.
    unsafe {
        let words = start as *mut u64;
        for (i, word) in pristine.iter().take(layout.len / 8).enumerate() {
            words.add(i).write(*word);
        }
        if layout.len % 8 == 4 {
            // The low half of the last word (little-endian BPF target).
            (start as *mut u32)
                .add(layout.len / 4 - 1)
                .write(pristine[layout.len / 8] as u32);
        }
    }
    if vary {
        let [span, stride] = *VARY_CYCLE.get(0)?;
        let seq = VARY_SEQ.get_ptr_mut(u32::from(span != 0))?;
        // SAFETY: per-CPU value, only this CPU's runs touch it.
        let n = unsafe {
            if span == 0 {
                let n = *seq;
                *seq = n.wrapping_add(1);
                n
            } else {
                let n = if *seq >= span { 0 } else { *seq };
                // stride < span (userspace's rule): one subtraction wraps it.
                let next = n.wrapping_add(stride);
                *seq = if next >= span { next - span } else { next };
                n
            }
        };
        // Low 16 bits of the source: 1 in the top bit, then the low 15 bits of n (so a client
        // in 198.18.x.y becomes 198.18.128.0/17, fd00:1::2 becomes fd00:1::8000/113). Source
        // port 1024 + the next 15 bits of n.
        let new_lo = u16::from_ne_bytes([0x80 | ((n >> 8) & 0x7f) as u8, n as u8]);
        let new_port = u16::from_ne_bytes((1024 + ((n >> 15) & 0x7fff) as u16).to_be_bytes());
        // SAFETY: all offsets are below layout.len (checked above) and 2-byte aligned.
        unsafe {
            let at = |off: usize| (start + off) as *mut u16;
            let old_lo = at(layout.src_lo).read();
            let old_port = at(layout.l4).read();
            at(layout.src_lo).write(new_lo);
            at(layout.l4).write(new_port);
            if let Some(ip_csum) = layout.ip_csum {
                at(ip_csum).write(csum_replace2(at(ip_csum).read(), old_lo, new_lo));
            }
            let proto = ((start + layout.proto) as *const u8).read();
            let l4_csum = if proto == PROTO_TCP {
                Some(layout.l4 + TCP_CSUM)
            } else if proto == PROTO_UDP && at(layout.l4 + UDP_CSUM).read() != 0 {
                Some(layout.l4 + UDP_CSUM)
            } else {
                None
            };
            if let Some(off) = l4_csum {
                let csum = csum_replace2(
                    csum_replace2(at(off).read(), old_lo, new_lo),
                    old_port,
                    new_port,
                );
                at(off).write(if proto == PROTO_UDP && csum == 0 {
                    0xffff
                } else {
                    csum
                });
            }
        }
    }
    Some(())
}

/// Floor: the cheapest XDP program.
#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Floor: returns XDP_TX without touching the packet (the reference's harness-floor target).
#[xdp]
pub fn floor_tx_only(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Floor: parse Ethernet/IPv4/TCP, swap the MACs, XDP_TX (the reference's second floor).
#[xdp]
pub fn floor_tx(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + L4 + 20 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 54 bytes are in bounds (checked above); u16 accesses at even offsets.
    unsafe {
        let w = start as *mut u16;
        // EtherType 0x0800 as it sits in memory.
        if w.add(6).read() != u16::from_ne_bytes([0x08, 0x00]) {
            return xdp_action::XDP_PASS;
        }
        let ip = (start + ETH_HLEN) as *const u8;
        if ip.read() != 0x45 || ip.add(9).read() != PROTO_TCP {
            return xdp_action::XDP_PASS;
        }
        for i in 0..3 {
            let dst = w.add(i).read();
            w.add(i).write(w.add(3 + i).read());
            w.add(3 + i).write(dst);
        }
    }
    xdp_action::XDP_TX
}

/// Floor: what forwarding costs without balancing: parse Ethernet/IPv4, `bpf_fib_lookup` the
/// packet's own destination (userspace sends one addressed to a backend), write the MACs the
/// FIB gives, XDP_TX. Rewrites the same MACs every iteration, so a direct run is valid.
#[xdp]
pub fn floor_fib(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + L4 + 20 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 54 bytes are in bounds (checked above).
    let (tot_len_be, tos, proto, src, dst) = unsafe {
        let ip = (start + ETH_HLEN) as *const u8;
        (
            (ip.add(2) as *const u16).read_unaligned(),
            ip.add(1).read(),
            ip.add(9).read(),
            (ip.add(12) as *const u32).read_unaligned(),
            (ip.add(16) as *const u32).read_unaligned(),
        )
    };
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = 2; // AF_INET
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(tot_len_be);
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != 0 {
        return xdp_action::XDP_PASS;
    }
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 14 bytes in bounds (checked above).
    unsafe {
        (start as *mut [u8; 6]).write_unaligned(params.dmac);
        ((start + 6) as *mut [u8; 6]).write_unaligned(params.smac);
    }
    xdp_action::XDP_TX
}

/// Floor: what meshlb's hand-off to TC adds to a pass: the 12 address bytes, written.
#[xdp]
pub fn floor_handoff(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 12 bytes in bounds (checked above); word stores, as `forward::hand_off`'s.
    unsafe { (start as *mut [u32; 3]).write(Handoff::forward(1).to_words()) };
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
