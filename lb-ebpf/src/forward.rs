//! Sending a rewritten packet on: XDP_REDIRECT to devices that take XDP frames, otherwise
//! hand it to the TC program (through XDP metadata), which uses bpf_redirect_neigh. Passing a
//! rewritten packet to the IP stack instead would get replies with a node address as source
//! dropped as martians.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup,
        xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::{
    Addr,
    maps::{Flow, XDP_META_MAGIC, XdpMeta},
    stats::StatSlot,
};

use crate::{
    maps::TX_PORTS,
    parse::{Packet, off, pkt_write, ptr_at},
    stats::count,
};

/// `send`'s answer for a packet larger than the egress MTU (in the low 16 bits): not an XDP
/// action; the entry function answers the sender (`too_big`) or drops and counts it.
pub const TOO_BIG: u32 = 0x7fff_0000;
pub const TOO_BIG_MASK: u32 = 0xffff_0000;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards a packet whose addresses are now `src` -> `dst`. `route` is the tracked flow
/// entry of this direction (or null): its cached route is used when it has one and the packet
/// fits its MTU, and a fresh FIB result is stored in it (the FIB lookup is the costliest step
/// of an established flow).
/// Inlined (the cached route is the hot path, see `to_backend`); the lookup is a call.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, src: &Addr, dst: &Addr, route: *mut Flow) -> u32 {
    // SAFETY: `route` is null or a connection-table value, valid for this program run;
    // concurrent writers store the same route.
    if let Some(cached) = unsafe { route.as_ref() }
        && cached.egress_ifindex != 0
        && u16::from_be(pkt.ip_tot_len_be) <= cached.egress_mtu
    {
        let ifindex = cached.egress_ifindex;
        if cached.egress_redirect != 0
            // SAFETY: the field is 4-byte aligned (offset 64 of an 8-aligned value).
            && set_macs(ctx, unsafe { &*cached.egress_macs.as_ptr().cast::<[u32; 3]>() })
                .is_some()
        {
            if let Ok(action) = TX_PORTS.redirect(ifindex, 0) {
                count(StatSlot::TxXdpRedirect);
                return action;
            }
        }
        return via_tc(ctx, ifindex);
    }
    send_uncached(ctx, pkt, src, dst, route)
}

/// `send` with a route lookup, stored in `route` unless it is null. Not inlined: its FIB
/// lookup structure then takes stack only while it runs.
#[inline(never)]
fn send_uncached(ctx: &XdpContext, pkt: &Packet, src: &Addr, dst: &Addr, route: *mut Flow) -> u32 {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = pkt.key.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(pkt.ip_tot_len_be);
    if !pkt.v6 {
        params.__bindgen_anon_2.tos = pkt.tos;
    }
    let rc = fib_lookup_into(ctx, &mut params, pkt.v6, src, dst, 0);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let redirect = TX_PORTS.get_ifindex(params.ifindex).is_some();
            // In header order, word-aligned (see `set_macs`).
            let mut macs = [0u32; 3];
            let bytes = macs.as_mut_ptr().cast::<u8>();
            for i in 0..6 {
                // SAFETY: within the 12 bytes of `macs`. Volatile, so the copy is not turned
                // into a memcpy call, which this target lacks.
                unsafe {
                    bytes.add(i).write_volatile(params.dmac[i]);
                    bytes.add(6 + i).write_volatile(params.smac[i]);
                }
            }
            // SAFETY: `route` is null or a connection-table value (see `send`).
            if let Some(cache) = unsafe { route.as_mut() } {
                // SAFETY: the field is 4-byte aligned (offset 64 of an 8-aligned value).
                unsafe {
                    cache
                        .egress_macs
                        .as_mut_ptr()
                        .cast::<[u32; 3]>()
                        .write(macs)
                };
                cache.egress_redirect = u8::from(redirect);
                // SAFETY: on success the kernel leaves the egress MTU in the union.
                cache.egress_mtu = unsafe { params.__bindgen_anon_1.mtu_result };
                cache.egress_ifindex = params.ifindex;
            }
            if redirect {
                if set_macs(ctx, &macs).is_none() {
                    count(StatSlot::DropFibFailed);
                    return xdp_action::XDP_DROP;
                }
                if let Ok(action) = TX_PORTS.redirect(params.ifindex, 0) {
                    count(StatSlot::TxXdpRedirect);
                    return action;
                }
            }
            via_tc(ctx, params.ifindex)
        }
        // The neighbour is not resolved yet: bpf_redirect_neigh in TC resolves it.
        BPF_FIB_LKUP_RET_NO_NEIGH => via_tc(ctx, params.ifindex),
        // SAFETY: the kernel leaves the egress MTU in the union.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            TOO_BIG | u32::from(unsafe { params.__bindgen_anon_1.mtu_result })
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => {
            count(StatSlot::TxLocal);
            xdp_action::XDP_PASS
        }
        _ => {
            count(StatSlot::DropFibFailed);
            xdp_action::XDP_DROP
        }
    }
}

/// The node address the kernel would use as source toward `dst` (full NAT's new source).
/// Written to `out`; false when there is no route. Not inlined: it needs its own FIB lookup
/// structure and is only called for new full-NAT flows.
#[inline(never)]
pub fn source_toward(ctx: &XdpContext, v6: bool, dst: &Addr, out: &mut Addr) -> bool {
    // SAFETY: see `send`.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    let rc = fib_lookup_into(
        ctx,
        &mut params,
        v6,
        &Addr::UNSPECIFIED,
        dst,
        BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH,
    );
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return false;
    }
    // SAFETY: the kernel filled the source of the family asked for.
    unsafe {
        if v6 {
            out.words = params.__bindgen_anon_3.ipv6_src;
        } else {
            *out = Addr::from_v4_raw(params.__bindgen_anon_3.ipv4_src);
        }
    }
    true
}

/// Fills in the family, addresses and ingress interface, and asks the kernel's FIB.
#[inline(always)]
fn fib_lookup_into(
    ctx: &XdpContext,
    params: &mut bpf_fib_lookup,
    v6: bool,
    src: &Addr,
    dst: &Addr,
    flags: u32,
) -> u32 {
    if v6 {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src.words;
        params.__bindgen_anon_4.ipv6_dst = dst.words;
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src.v4_raw();
        params.__bindgen_anon_4.ipv4_dst = dst.v4_raw();
    }
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup.
    unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        ) as u32
    }
}

/// Writes the Ethernet addresses (destination, then source, as in the header) as three
/// words; the verifier wants stack and map words aligned, so `macs` is a word array.
#[inline(always)]
fn set_macs(ctx: &XdpContext, macs: &[u32; 3]) -> Option<()> {
    let eth = ptr_at::<[u32; 3]>(ctx, off::ETH_DST)?;
    // SAFETY: the 12 address bytes are bounds-checked above.
    unsafe { pkt_write(eth, *macs) };
    Some(())
}

/// Leaves the egress interface in front of the packet and passes it to the kernel; the TC
/// ingress program on this interface picks it up before the IP stack sees it.
#[inline(always)]
fn via_tc(ctx: &XdpContext, ifindex: u32) -> u32 {
    // SAFETY: grows the metadata area in front of the packet; checked below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<XdpMeta>() as i32)) } != 0 {
        count(StatSlot::DropMetaFailed);
        return xdp_action::XDP_DROP;
    }
    let meta = ctx.metadata();
    if meta + size_of::<XdpMeta>() > ctx.data() {
        count(StatSlot::DropMetaFailed);
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the metadata area is exactly XdpMeta long (checked above) and 4-byte aligned.
    unsafe {
        (meta as *mut XdpMeta).write(XdpMeta {
            magic: XDP_META_MAGIC,
            ifindex,
        });
    }
    count(StatSlot::TxViaTc);
    xdp_action::XDP_PASS
}
