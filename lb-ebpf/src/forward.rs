//! Sending a rewritten packet on: XDP_REDIRECT to devices that take XDP frames, otherwise
//! hand it to the TC program (`Handoff`, over the Ethernet addresses), which uses
//! bpf_redirect_neigh. Passing a rewritten packet to the IP stack instead would get replies
//! with a node address as source dropped as martians.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup,
        xdp_action,
    },
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    Addr,
    limits::{ROUTE_MEMO_MAX_AGE_NS, ROUTE_MEMO_SLOTS},
    maps::{Flow, Handoff},
    stats::StatSlot,
};

use crate::{
    conntrack::now_ns,
    maps::{ROUTE_MEMO, RouteMemo, TX_PORTS},
    parse::{Packet, off, pkt_write, ptr_at},
    stats::count,
    verdict::Verdict,
    zero,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards a packet whose addresses are now `src` -> `dst`. `route` is the tracked flow
/// entry of this direction (or null): its cached route is used when it has one and the packet
/// fits its MTU, and a fresh FIB result is stored in it (the FIB lookup is the costliest step
/// of an established flow; the route memo may stand in for it, see `send_uncached`).
/// Inlined (the cached route is the hot path, see `to_backend`); the lookup is a call.
/// A packet larger than the egress MTU is answered `Verdict::too_big` (the entry function
/// answers its sender, or the caller drops and counts it).
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, src: &Addr, dst: &Addr, route: *mut Flow) -> Verdict {
    // This direction of the flow goes through the mesh tunnel: the entry function sends it
    // (`tunnel::send`), in a frame of its own.
    // SAFETY: as below.
    if let Some(flow) = unsafe { route.as_ref() }
        && flow.tunnel_peer != 0
    {
        return Verdict::tunnel(flow.tunnel_peer);
    }
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
                return Verdict::xdp(action);
            }
        }
        return Verdict::xdp(via_tc(ctx, ifindex));
    }
    // The memo stands in for a route the flow does not have; a packet too big for the
    // flow's cached route asks the FIB (which answers it), and the memo is left alone.
    // SAFETY: as above.
    let memoize =
        !pkt.opened_flow && unsafe { route.as_ref() }.is_some_and(|f| f.egress_ifindex == 0);
    if memoize {
        let action = send_memoized(ctx, pkt, src, dst, route);
        if action != Verdict::NOT_MEMOIZED {
            return action;
        }
    }
    let action = send_uncached(ctx, pkt, src, dst, route);
    // A new flow's route is cached only in the copy its first packet was forwarded from
    // (`conntrack::just_inserted`): the memo keeps it for the flow's next packets.
    if memoize || pkt.opened_flow {
        remember_route(ctx, pkt, src, dst, route);
    }
    action
}

/// Copies the route `send_uncached` just cached in the flow entry `route` (which had none
/// before: if it has one now, the FIB just gave it), or in the copy a new flow's first
/// packet was forwarded from, into the memo slot of its addresses. Not inlined, a sibling of `send_uncached`.
#[inline(never)]
fn remember_route(ctx: &XdpContext, pkt: &Packet, src: &Addr, dst: &Addr, route: *mut Flow) {
    // SAFETY: a connection-table value, valid for this program run (non-null: see `send`).
    let Some(f) = (unsafe { route.as_ref() }) else {
        return;
    };
    if f.egress_ifindex == 0 {
        return;
    }
    let route = MemoRoute {
        ifindex: f.egress_ifindex,
        // SAFETY: the field is 4-byte aligned (offset 64 of an 8-aligned value).
        macs: unsafe { f.egress_macs.as_ptr().cast::<[u32; 3]>().read() },
        mtu: f.egress_mtu,
        redirect: f.egress_redirect,
    };
    memoize(ctx, src, dst, memo_tos(pkt), pkt.key.proto, &route);
}

/// What the memo keeps of a route the FIB gave.
#[repr(C)]
pub struct MemoRoute {
    pub ifindex: u32,
    /// Destination then source MAC, as in the Ethernet header.
    pub macs: [u32; 3],
    pub mtu: u16,
    /// 1 if the egress takes XDP frames.
    pub redirect: u8,
}

/// Keeps `route`, which the FIB gave just now for `src` -> `dst` with this TOS and protocol
/// through this packet's ingress, in this CPU's memo slot of the two addresses.
#[inline(always)]
pub fn memoize(ctx: &XdpContext, src: &Addr, dst: &Addr, tos: u8, proto: u8, route: &MemoRoute) {
    let Some(m) = ROUTE_MEMO.get_ptr_mut(memo_slot(src, dst)) else {
        return;
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let m = unsafe { &mut *m };
    m.src = *src;
    m.dst = *dst;
    m.looked_up_ns = now_ns();
    m.ingress_ifindex = ctx.ingress_ifindex() as u32;
    m.egress_ifindex = route.ifindex;
    m.macs = route.macs;
    m.mtu = route.mtu;
    m.tos = tos;
    m.proto = proto;
    m.redirect = route.redirect;
}

/// This CPU's memo slot of `src` -> `dst` if it holds a route for the two addresses through
/// this packet's ingress, with this TOS and protocol, at most `ROUTE_MEMO_MAX_AGE_NS` old,
/// whose MTU a packet of `len` bytes fits.
#[inline(always)]
pub fn memoized(
    ctx: &XdpContext,
    src: &Addr,
    dst: &Addr,
    tos: u8,
    proto: u8,
    len: u16,
) -> Option<*const RouteMemo> {
    let m = ROUTE_MEMO.get_ptr(memo_slot(src, dst))?;
    // SAFETY: this CPU's slot, used by this program run only.
    let r = unsafe { &*m };
    // The clock (a helper call) last: a slot another pair of addresses holds costs no call.
    let fits = r.egress_ifindex != 0
        && r.src == *src
        && r.dst == *dst
        && r.ingress_ifindex == ctx.ingress_ifindex() as u32
        && r.tos == tos
        && r.proto == proto
        && len <= r.mtu
        && now_ns().wrapping_sub(r.looked_up_ns) <= ROUTE_MEMO_MAX_AGE_NS;
    fits.then_some(m)
}

#[inline(always)]
fn memo_tos(pkt: &Packet) -> u8 {
    if pkt.v6 { 0 } else { pkt.tos }
}

/// `send` for a tracked flow (that this packet did not open: a new flow always asks the FIB)
/// whose own cached route expired: the route the memo got from the FIB for the same
/// addresses, ingress, TOS and protocol on this CPU, if it is at most
/// `ROUTE_MEMO_MAX_AGE_NS` (0.1 s) old and the packet fits its MTU. The flow caches it like a
/// route of its own, so its routes are at most about 1.1 s old instead of 1 s, and a flow
/// seen less often than once a second costs no FIB lookup per packet while others between
/// the same addresses keep the memo fresh. `Verdict::NOT_MEMOIZED` if the memo has none.
/// Not inlined, and a sibling of `send_uncached`: their frames never add up.
#[inline(never)]
fn send_memoized(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &Addr,
    dst: &Addr,
    route: *mut Flow,
) -> Verdict {
    let len = u16::from_be(pkt.ip_tot_len_be);
    let Some(m) = memoized(ctx, src, dst, memo_tos(pkt), pkt.key.proto, len) else {
        return Verdict::NOT_MEMOIZED;
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let m = unsafe { &*m };
    Verdict::xdp(send_routed(
        ctx,
        route,
        m.egress_ifindex,
        m.redirect != 0,
        &m.macs,
        m.mtu,
    ))
}

/// The route memo slot of a source and destination address.
#[inline(always)]
fn memo_slot(src: &Addr, dst: &Addr) -> u32 {
    let s = src.words[0] ^ src.words[1] ^ src.words[2] ^ src.words[3];
    let d = dst.words[0] ^ dst.words[1] ^ dst.words[2] ^ dst.words[3];
    let mut h = s.wrapping_mul(0x9e37_79b1) ^ d;
    h = h.wrapping_mul(0x85eb_ca6b);
    (h ^ (h >> 16)) & (ROUTE_MEMO_SLOTS - 1)
}

/// `send` with a route lookup, stored in `route` unless it is null. Not inlined: its FIB
/// lookup structure then takes stack only while it runs.
#[inline(never)]
fn send_uncached(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &Addr,
    dst: &Addr,
    route: *mut Flow,
) -> Verdict {
    let tot_len = u16::from_be(pkt.ip_tot_len_be);
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    params.l4_protocol = pkt.key.proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    if !pkt.v6 {
        params.__bindgen_anon_2.tos = pkt.tos;
    }
    let rc = fib_lookup_into(ctx, params, pkt.v6, src, dst, 0);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => send_found(ctx, params, route),
        // The neighbour is not resolved yet: bpf_redirect_neigh in TC resolves it.
        BPF_FIB_LKUP_RET_NO_NEIGH => Verdict::xdp(via_tc(ctx, params.ifindex)),
        // SAFETY: the kernel leaves the egress MTU in the union.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            Verdict::too_big(unsafe { params.__bindgen_anon_1.mtu_result })
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => {
            count(StatSlot::TxLocal);
            Verdict::xdp(xdp_action::XDP_PASS)
        }
        _ => {
            count(StatSlot::DropFibFailed);
            Verdict::xdp(xdp_action::XDP_DROP)
        }
    }
}

/// The destination and source MACs a successful FIB lookup left in `params`, in header order
/// and word-aligned (see `set_macs`).
#[inline(always)]
pub fn fib_macs(params: &bpf_fib_lookup) -> [u32; 3] {
    let mut macs = [0u32; 3];
    let bytes = macs.as_mut_ptr().cast::<u8>();
    for i in 0..6 {
        // SAFETY: within the 12 bytes of `macs`. Volatile, so the copy is not turned into a
        // memcpy call, which this target lacks.
        unsafe {
            bytes.add(i).write_volatile(params.dmac[i]);
            bytes.add(6 + i).write_volatile(params.smac[i]);
        }
    }
    macs
}

/// Sends on the route a successful FIB lookup left in `params`, and caches it in `route`
/// unless that is null.
#[inline(always)]
pub fn send_found(ctx: &XdpContext, params: &bpf_fib_lookup, route: *mut Flow) -> Verdict {
    let redirect = TX_PORTS.get_ifindex(params.ifindex).is_some();
    let macs = fib_macs(params);
    // SAFETY: on success the kernel leaves the egress MTU in the union.
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    Verdict::xdp(send_routed(
        ctx,
        route,
        params.ifindex,
        redirect,
        &macs,
        mtu,
    ))
}

/// Sends on a route the FIB gave (now or, through the memo, at most 0.1 s ago) and
/// caches it in `route` unless that is null.
#[inline(always)]
fn send_routed(
    ctx: &XdpContext,
    route: *mut Flow,
    ifindex: u32,
    redirect: bool,
    macs: &[u32; 3],
    mtu: u16,
) -> u32 {
    // SAFETY: `route` is null or a connection-table value (see `send`).
    if let Some(cache) = unsafe { route.as_mut() } {
        // SAFETY: the field is 4-byte aligned (offset 64 of an 8-aligned value).
        unsafe {
            cache
                .egress_macs
                .as_mut_ptr()
                .cast::<[u32; 3]>()
                .write(*macs)
        };
        cache.egress_redirect = u8::from(redirect);
        cache.egress_mtu = mtu;
        cache.egress_ifindex = ifindex;
    }
    if redirect {
        if set_macs(ctx, macs).is_none() {
            count(StatSlot::DropFibFailed);
            return xdp_action::XDP_DROP;
        }
        if let Ok(action) = TX_PORTS.redirect(ifindex, 0) {
            count(StatSlot::TxXdpRedirect);
            return action;
        }
    }
    via_tc(ctx, ifindex)
}

/// The node address the kernel would use as source toward `dst` (full NAT's new source).
/// Written to `out`; false when there is no route. Not inlined: it needs its own FIB lookup
/// structure and is only called for new full-NAT flows.
#[inline(never)]
pub fn source_toward(ctx: &XdpContext, v6: bool, dst: &Addr, out: &mut Addr) -> bool {
    // SAFETY: see `send`.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    let rc = fib_lookup_into(
        ctx,
        params,
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
pub fn fib_lookup_into(
    ctx: &XdpContext,
    params: &mut bpf_fib_lookup,
    v6: bool,
    src: &Addr,
    dst: &Addr,
    flags: u32,
) -> u32 {
    fib_lookup_from(
        ctx.as_ptr(),
        || ctx.ingress_ifindex() as u32,
        params,
        v6,
        src,
        dst,
        flags,
    )
}

/// `fib_lookup_into` for any program's context (`ctx`, whose ingress interface `ingress`
/// reads): TC's too.
#[inline(always)]
pub fn fib_lookup_from(
    ctx: *mut c_void,
    ingress: impl FnOnce() -> u32,
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
    params.ifindex = ingress();
    // SAFETY: params is a valid, correctly sized bpf_fib_lookup.
    unsafe { fib_lookup(ctx, params, size_of::<bpf_fib_lookup>() as i32, flags) as u32 }
}

/// Writes the Ethernet addresses (destination, then source, as in the header) as three
/// words; the verifier wants stack and map words aligned, so `macs` is a word array.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, macs: &[u32; 3]) -> Option<()> {
    let eth = ptr_at::<[u32; 3]>(ctx, off::ETH_DST)?;
    // SAFETY: the 12 address bytes are bounds-checked above.
    unsafe { pkt_write(eth, *macs) };
    Some(())
}

/// Hands the packet to the TC ingress program on this interface, which picks it up before
/// the IP stack sees it and forwards it to `ifindex` (`Handoff`).
#[inline(always)]
pub fn via_tc(ctx: &XdpContext, ifindex: u32) -> u32 {
    hand_off(ctx, Handoff::forward(ifindex))
}

/// Writes `handoff` over the frame's Ethernet addresses and passes the packet to the kernel
/// for the TC program (which reads what to do from it).
#[inline(always)]
pub fn hand_off(ctx: &XdpContext, handoff: Handoff) -> u32 {
    if set_macs(ctx, &handoff.to_words()).is_none() {
        // A parsed frame always has its addresses; kept for the verifier.
        return xdp_action::XDP_DROP;
    }
    count(StatSlot::TxViaTc);
    xdp_action::XDP_PASS
}
