//! meshlb's kernel side: an XDP program that balances frontends over backends, and a TC
//! ingress program that forwards what XDP could not send itself.
#![no_std]
#![no_main]

mod conntrack;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_redirect_neigh,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Addr,
    maps::{EndpointKey, Flow, FlowKey, Service, XDP_META_MAGIC, XdpMeta, proto, service_flags},
    stats::StatSlot,
};

use crate::{
    conntrack::{Chosen, InsertError},
    maps::{BACKEND_ENDPOINTS, FRONTENDS},
    nat::Side,
    parse::{Packet, TCP_ACK, TCP_SYN},
    stats::{count, count_raw, count_traffic},
};

#[xdp]
pub fn meshlb_xdp(ctx: XdpContext) -> u32 {
    count(StatSlot::Rx);
    let mut pkt = Packet::default();
    if let Err(reason) = parse::parse(&ctx, &mut pkt) {
        count(reason);
        return xdp_action::XDP_PASS;
    }
    if pkt.key.proto == proto::ICMP || pkt.key.proto == proto::ICMPV6 {
        return icmp::handle(&ctx, &pkt);
    }
    // One key, reused for both lookups: the BPF stack is small.
    let mut endpoint = EndpointKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        _pad: 0,
    };
    if let Some(svc) = FRONTENDS.get_ptr(&endpoint) {
        // SAFETY: a map value stays valid for the whole program run (RCU), even if userspace
        // replaces it meanwhile.
        return to_backend(&ctx, &pkt, unsafe { &*svc });
    }
    endpoint.addr = pkt.key.src;
    endpoint.port_be = pkt.key.sport_be;
    if BACKEND_ENDPOINTS.get_ptr(&endpoint).is_some() {
        return to_client(&ctx, &pkt);
    }
    count(StatSlot::PassNotFrontend);
    xdp_action::XDP_PASS
}

/// A client packet for a frontend: find or choose its backend, DNAT (and SNAT under full
/// NAT), forward. Not inlined: its stack frame and `to_client`'s are never live together.
#[inline(never)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, svc: &Service) -> u32 {
    let now = conntrack::now_ns();
    let key: &FlowKey = &pkt.key;
    let mut chosen = Chosen {
        backend_id: 0,
        addr: Addr::UNSPECIFIED,
        port_be: 0,
        snat_addr: Addr::UNSPECIFIED,
        snat_port_be: 0,
    };
    // The tracked entry, whose cached route `send` uses (null for a new flow).
    let mut route: *mut Flow = core::ptr::null_mut();
    let new_flow = match conntrack::lookup_forward(key, svc, pkt.tcp_flags, now) {
        Some(flow) => {
            route = flow;
            conntrack::touch_forward(flow, key.proto == proto::TCP, pkt.tcp_flags, now);
            // SAFETY: valid for this program run; read field by field.
            unsafe {
                chosen.backend_id = (*flow).backend_id;
                chosen.addr = (*flow).nat_addr;
                chosen.port_be = (*flow).nat_port_be;
                chosen.snat_addr = (*flow).snat_addr;
                chosen.snat_port_be = (*flow).snat_port_be;
            }
            false
        }
        None => {
            let outcome = open_flow(ctx, pkt, svc, &mut chosen);
            if outcome != FLOW_OPENED {
                count_raw(outcome);
                return xdp_action::XDP_DROP;
            }
            let outcome = record_flow(pkt, svc, &mut chosen, now);
            if outcome != FLOW_OPENED {
                count_raw(outcome);
                return xdp_action::XDP_DROP;
            }
            count(StatSlot::NewFlow);
            true
        }
    };
    if !nat::rewrite(ctx, pkt, Side::Destination, &chosen.addr, chosen.port_be) {
        count(StatSlot::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    let mut src = &pkt.key.src;
    if chosen.snat_addr != Addr::UNSPECIFIED {
        if !nat::rewrite(
            ctx,
            pkt,
            Side::Source,
            &chosen.snat_addr,
            chosen.snat_port_be,
        ) {
            count(StatSlot::PassMalformed);
            return xdp_action::XDP_PASS;
        }
        src = &chosen.snat_addr;
    }
    count(StatSlot::NatForward);
    count_traffic(svc.id, chosen.backend_id, pkt.len, new_flow);
    forward::send(ctx, pkt, src, &chosen.addr, route)
}

/// `open_flow`'s and `record_flow`'s answer when all went well; otherwise they answer the
/// drop counter.
const FLOW_OPENED: u32 = u32::MAX;

/// Chooses a backend for a new flow, and under full NAT the node address to speak from.
/// The answer is FLOW_OPENED or the drop counter (a plain u32: the verifier refuses results
/// returned through the caller's stack). Inlined; its calls and `record_flow` are siblings,
/// so their stack frames never add up.
#[inline(always)]
fn open_flow(ctx: &XdpContext, pkt: &Packet, svc: &Service, chosen: &mut Chosen) -> u32 {
    let key = &pkt.key;
    let opening =
        key.proto != proto::TCP || (pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0);
    if !opening && svc.flags & service_flags::ROUND_ROBIN != 0 {
        // Round-robin keeps no hash to fall back on: a mid-flow packet of a flow we do not
        // know cannot be placed on the backend that holds its connection.
        return StatSlot::DropNoFlow as u32;
    }
    if !select::choose(key, svc, chosen) {
        return StatSlot::DropNoBackend as u32;
    }
    if svc.flags & service_flags::FULLNAT != 0
        && !forward::source_toward(ctx, pkt.v6, &chosen.addr, &mut chosen.snat_addr)
    {
        return StatSlot::DropNoSnatAddr as u32;
    }
    FLOW_OPENED
}

/// Records a new flow in the connection table (choosing the full-NAT source port). Not
/// inlined: the two entries it builds need stack only while it runs.
#[inline(never)]
fn record_flow(pkt: &Packet, svc: &Service, chosen: &mut Chosen, now: u64) -> u32 {
    match conntrack::insert(&pkt.key, svc, chosen, pkt.tcp_flags, now) {
        Ok(()) => FLOW_OPENED,
        Err(InsertError::Full) => StatSlot::DropConntrackFull as u32,
        Err(InsertError::NoPort) => StatSlot::DropNoSnatPort as u32,
    }
}

/// A packet from a backend: if it belongs to a tracked flow, the source becomes the frontend
/// (and, under full NAT, the destination the client again).
#[inline(never)]
fn to_client(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(flow) = conntrack::lookup_reply(&pkt.key) else {
        count(StatSlot::PassNotFrontend);
        return xdp_action::XDP_PASS;
    };
    conntrack::touch_reply(flow, conntrack::now_ns());
    // SAFETY: valid for this program run; read field by field.
    let (frontend, frontend_port_be, client, client_port_be, service_id, backend_id) = unsafe {
        (
            (*flow).nat_addr,
            (*flow).nat_port_be,
            (*flow).snat_addr,
            (*flow).snat_port_be,
            (*flow).service_id,
            (*flow).backend_id,
        )
    };
    if !nat::rewrite(ctx, pkt, Side::Source, &frontend, frontend_port_be) {
        count(StatSlot::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    let mut dst = &pkt.key.dst;
    if client != Addr::UNSPECIFIED {
        if !nat::rewrite(ctx, pkt, Side::Destination, &client, client_port_be) {
            count(StatSlot::PassMalformed);
            return xdp_action::XDP_PASS;
        }
        dst = &client;
    }
    count(StatSlot::NatReply);
    count_traffic(service_id, backend_id, pkt.len, false);
    forward::send(ctx, pkt, &frontend, dst, flow)
}

/// Forwards packets the XDP program rewrote but could not redirect itself.
#[classifier]
pub fn meshlb_tc_ingress(ctx: TcContext) -> i32 {
    // SAFETY: reading the skb context fields the verifier allows for TC programs.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + core::mem::size_of::<XdpMeta>() > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: bounds-checked against data above.
    let XdpMeta { magic, ifindex } = unsafe { (meta as *const XdpMeta).read() };
    if magic != XDP_META_MAGIC {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: helper call with no neighbour parameters: the kernel looks the route up itself.
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if rc == i64::from(aya_ebpf::bindings::TC_ACT_REDIRECT) {
        count(StatSlot::TcRedirectNeigh);
    } else {
        count(StatSlot::TcRedirectFailed);
    }
    rc as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
