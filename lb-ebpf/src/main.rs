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
    maps::{EndpointKey, FlowKey, Service, XDP_META_MAGIC, XdpMeta, proto},
    stats::StatSlot,
};

use crate::{
    conntrack::Chosen,
    maps::{BACKEND_ENDPOINTS, FRONTENDS},
    nat::Side,
    parse::{Packet, TCP_ACK, TCP_SYN},
    stats::{count, count_traffic},
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
    let frontend = EndpointKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out before anything else can change it.
    if let Some(svc) = unsafe { FRONTENDS.get(&frontend) } {
        let svc = *svc;
        return to_backend(&ctx, &pkt, &svc);
    }
    let from_backend = EndpointKey {
        addr: pkt.key.src,
        port_be: pkt.key.sport_be,
        proto: pkt.key.proto,
        _pad: 0,
    };
    if BACKEND_ENDPOINTS.get_ptr(&from_backend).is_some() {
        return to_client(&ctx, &pkt);
    }
    count(StatSlot::PassNotFrontend);
    xdp_action::XDP_PASS
}

/// A client packet for a frontend: find or choose its backend, DNAT, forward.
/// Not inlined: its stack frame and `to_client`'s are never live together.
#[inline(never)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, svc: &Service) -> u32 {
    let now = conntrack::now_ns();
    let key: &FlowKey = &pkt.key;
    let is_tcp = key.proto == proto::TCP;
    let (chosen, new_flow) = match conntrack::lookup_forward(key, pkt.tcp_flags, now) {
        Some(flow) => {
            conntrack::touch_forward(flow, is_tcp, pkt.tcp_flags, now);
            // SAFETY: valid for this program run.
            let f = unsafe { &*flow };
            (
                Chosen {
                    backend_id: f.backend_id,
                    addr: f.nat_addr,
                    port_be: f.nat_port_be,
                },
                false,
            )
        }
        None => {
            let opening = !is_tcp || (pkt.tcp_flags & TCP_SYN != 0 && pkt.tcp_flags & TCP_ACK == 0);
            if !opening && svc.flags & lb_common::maps::service_flags::ROUND_ROBIN != 0 {
                // Round-robin keeps no hash to fall back on: a mid-flow packet of a flow we
                // do not know cannot be placed on the backend that holds its connection.
                count(StatSlot::DropNoFlow);
                return xdp_action::XDP_DROP;
            }
            let Some(chosen) = select::choose(key, svc) else {
                count(StatSlot::DropNoBackend);
                return xdp_action::XDP_DROP;
            };
            if conntrack::insert(key, svc, &chosen, pkt.tcp_flags, now).is_err() {
                count(StatSlot::DropConntrackFull);
                return xdp_action::XDP_DROP;
            }
            count(StatSlot::NewFlow);
            (chosen, true)
        }
    };
    if nat::rewrite(ctx, pkt, Side::Destination, &chosen.addr, chosen.port_be).is_none() {
        count(StatSlot::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    count(StatSlot::NatForward);
    count_traffic(svc.id, chosen.backend_id, pkt.len, new_flow);
    forward::send(ctx, pkt, &pkt.key.src, &chosen.addr)
}

/// A packet from a backend: if it belongs to a tracked flow, the source becomes the frontend.
#[inline(never)]
fn to_client(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Some(flow) = conntrack::lookup_reply(&pkt.key) else {
        count(StatSlot::PassNotFrontend);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: valid for this program run; copied out.
    let f = unsafe { *flow };
    if nat::rewrite(ctx, pkt, Side::Source, &f.nat_addr, f.nat_port_be).is_none() {
        count(StatSlot::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    count(StatSlot::NatReply);
    count_traffic(f.service_id, f.backend_id, pkt.len, false);
    forward::send(ctx, pkt, &f.nat_addr, &pkt.key.dst)
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
