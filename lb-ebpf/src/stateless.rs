//! Replies that no connection-table entry covers, translated without one. Behind an ECMP
//! router the backends' route to a client may cross another balancer node than the one the
//! client's packets enter by, and after a node dies its flows' replies reach nodes that never
//! saw them. A backend endpoint that leads to one frontend only (`REPLY_FRONTENDS`, written
//! by userspace where that holds) needs no flow to know its replies' source: the frontend.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, xdp_action,
    },
    programs::XdpContext,
};
use lb_common::{Addr, stats::StatSlot};

use crate::{
    forward,
    maps::reply_frontend_of,
    nat::{self, Side},
    parse::Packet,
    stats::{count, count_traffic},
    verdict::Verdict,
    zero,
};

/// A packet from a backend endpoint that missed the connection table: if the endpoint has
/// one frontend, its source becomes that frontend and it is forwarded as a tracked reply is
/// (destination unchanged: under `nat` it is the client). Untouched (`pass_not_frontend`) if
/// the endpoint has no such entry, or if the destination is not forwarded: a packet for this
/// node (the answer to a health check, or to a connection the node's own sockets made to the
/// backend) is no client's reply, and one without a route goes to the kernel as before.
/// Not inlined: a sibling of `to_client`, its route lookup structure on its own frame.
#[inline(never)]
pub fn reply(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    let Some(entry) = reply_frontend_of(&pkt.key) else {
        return Verdict::untaken(pkt, StatSlot::PassNotFrontend);
    };
    // SAFETY: a map value stays valid for the whole program run (RCU); the address is
    // referenced where it is (the BPF stack is small), the rest read field by field.
    let (frontend, frontend_port_be, service_id, backend_id) = unsafe {
        (
            &(*entry).addr,
            (*entry).port_be,
            (*entry).service_id,
            (*entry).backend_id,
        )
    };
    // The route first, from the address the packet will have: a destination of this node
    // must see the packet as the backend sent it.
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    let rc = route(ctx, pkt, params, frontend);
    if !forwards(rc) {
        return Verdict::untaken(pkt, StatSlot::PassNotFrontend);
    }
    if !nat::rewrite(ctx, pkt, Side::Source, frontend, frontend_port_be) {
        count(StatSlot::PassMalformed);
        return Verdict::xdp(xdp_action::XDP_PASS);
    }
    count(StatSlot::NatReplyStateless);
    count_traffic(service_id, backend_id, pkt.len, false);
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => forward::send_found(ctx, params, core::ptr::null_mut()),
        // The neighbour is not resolved yet: bpf_redirect_neigh in TC resolves it.
        BPF_FIB_LKUP_RET_NO_NEIGH => Verdict::xdp(forward::via_tc(ctx, params.ifindex)),
        // SAFETY: the kernel leaves the egress MTU in the union.
        _ => Verdict::too_big(unsafe { params.__bindgen_anon_1.mtu_result }),
    }
}

/// Whether this node forwards a reply from `frontend` to the packet's destination: a route
/// out (its neighbour resolved or not, or too small for the packet), not one to this node
/// (whose own sockets see what the backend sent) and not none.
#[inline(always)]
fn forwards(rc: u32) -> bool {
    rc == BPF_FIB_LKUP_RET_SUCCESS
        || rc == BPF_FIB_LKUP_RET_NO_NEIGH
        || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED
}

/// The route of a reply from `frontend` to the packet's destination, into the zeroed `params`.
#[inline(always)]
fn route(ctx: &XdpContext, pkt: &Packet, params: &mut bpf_fib_lookup, frontend: &Addr) -> u32 {
    params.l4_protocol = pkt.key.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(pkt.ip_tot_len_be);
    if !pkt.v6 {
        params.__bindgen_anon_2.tos = pkt.tos;
    }
    forward::fib_lookup_into(ctx, params, pkt.v6, frontend, &pkt.key.dst, 0)
}

/// Whether an ICMP error that a backend endpoint's one frontend would translate (no entry
/// covers the flow it quotes) is forwarded as `reply` forwards replies. An error for this
/// node is about a packet its own socket sent straight to the backend (a health check, a
/// process the socket-level path connected there), which the kernel matches by the quote
/// as sent: it stays untouched.
#[inline(never)]
pub fn forwards_error(ctx: &XdpContext, pkt: &Packet, frontend: &Addr) -> bool {
    // SAFETY: as in `reply`.
    let mut slot = MaybeUninit::uninit();
    let params: &mut bpf_fib_lookup = unsafe { zero::zeroed_in(&mut slot) };
    forwards(route(ctx, pkt, params, frontend))
}
