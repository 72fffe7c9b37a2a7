//! meshlb's kernel side: an XDP program that balances frontends over backends, and a TC
//! ingress program that forwards what XDP could not send itself, and the cgroup socket
//! programs that balance local clients' sockets (`sock`).
#![no_std]
#![no_main]
// `atomic_or`: the BPF target has no atomic read-modify-write methods (conntrack::filter).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod aggregate;
mod conntrack;
mod csum;
mod forward;
mod icmp;
mod l2;
mod maps;
mod nat;
mod parse;
mod reset;
mod select;
mod sender;
mod sock;
mod stateless;
mod stats;
mod tunnel;
mod unreachable;
mod verdict;
mod zero;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_redirect_neigh,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use lb_common::{
    Addr,
    maps::{EndpointKey, Flow, FlowKey, Handoff, Service, handoff, proto, service_flags},
    stats::StatSlot,
};

use crate::{
    conntrack::{Chosen, InsertError, NoFlow, Pending},
    maps::{BACKEND_ENDPOINTS, CONNTRACK, FRONTENDS, PENDING},
    nat::Side,
    parse::{Packet, TCP_FIN, TCP_RST, TCP_SYN, is_syn},
    stats::{count, count_raw, count_traffic},
    verdict::{FlowStart, Verdict},
};

#[xdp]
pub fn meshlb_xdp(ctx: XdpContext) -> u32 {
    let ingress = l2::ingress(&ctx);
    match ingress.addressed {
        l2::Addressed::Here => {}
        l2::Addressed::Elsewhere => {
            count(StatSlot::Rx);
            count(StatSlot::PassOtherHost);
            return xdp_action::XDP_PASS;
        }
        l2::Addressed::Forged => {
            count(StatSlot::Rx);
            count(StatSlot::DropForgedHandoff);
            return xdp_action::XDP_DROP;
        }
    }
    nat::set_checksum_state(ingress.skb_mode as u32);
    // SAFETY: plain old data (see `zero`: a `Default` would be a byte loop per packet).
    let mut slot = MaybeUninit::uninit();
    let pkt: &mut Packet = unsafe { zero::zeroed_in(&mut slot) };
    if tunnel::may_be_tunneled(&ctx) && tunnel::receive(&ctx, pkt) == tunnel::DROP {
        return xdp_action::XDP_DROP;
    }
    let mut verdict = dispatch(&ctx, pkt);
    let mut tunneled = false;
    if let Some(peer) = verdict.tunnel_peer() {
        // Sent, or too big for the tunnel (answered below, like too big for a link; a TCP
        // aggregate it sends to TC itself).
        verdict = tunnel::send(&ctx, pkt, peer);
        tunneled = true;
    }
    if verdict == Verdict::PORT_UNREACHABLE {
        return unreachable::port_unreachable(&ctx, pkt);
    }
    if let Some(mtu) = verdict.too_big_mtu() {
        if !tunneled && aggregate::is_aggregate(&ctx, pkt) {
            return aggregate::send(&ctx, pkt);
        }
        return unreachable::too_big(&ctx, pkt, mtu);
    }
    verdict.raw()
}

/// Everything but the ICMP answers (to a packet too big for its egress, to a datagram
/// refused), which need the packet as parsed and come last (their frames below the entry
/// function's, never below another).
#[inline(always)]
fn dispatch(ctx: &XdpContext, pkt: &mut Packet) -> Verdict {
    count(StatSlot::Rx);
    if let Err(reason) = parse::parse(ctx, pkt) {
        return Verdict::untaken(pkt, reason);
    }
    if pkt.key.proto == proto::ICMP || pkt.key.proto == proto::ICMPV6 {
        return icmp::handle(ctx, pkt);
    }
    if nat::checksum_state() != 0 {
        nat::set_checksum_state(nat::checksum_partial(ctx, pkt) as u32);
    }
    // Read before FRONTENDS is: a flow opened or checked below is stamped with it.
    let generation = conntrack::frontend_gen();
    // Flow first: a packet of a tracked flow whose stamp is current skips FRONTENDS.
    let mut untracked = false;
    // `PENDING`'s answer for a SYN's key, asked below (null: none), kept for `pending`.
    let mut syn_pending: *mut Flow = core::ptr::null_mut();
    let mut pending_asked = false;
    // `lbd` marks every frontend in this filter before it writes it, and a flow is only
    // opened through a frontend: a clear bit is no frontend and no flow, and skips both
    // lookups (a packet for no frontend then costs none, unless its source may be a reply).
    let may_be_frontend = conntrack::may_be_frontend(&pkt.key.dst, pkt.key.dport_be, pkt.key.proto);
    if may_be_frontend {
        // A SYN whose key the filter never saw opens a flow: no lookup of the full table.
        // `PENDING` is asked while the filter's word (a cold line) arrives: a new flow's SYN
        // asks it anyway, and the two cache misses overlap instead of adding up.
        let mut may_track = true;
        if pkt.key.proto == proto::TCP && is_syn(pkt.tcp_flags) {
            let probe = conntrack::filter::probe(&pkt.key);
            let found = conntrack::lookup_pending(&pkt.key);
            may_track = probe.may_track();
            // Kept only on the way that skips the table (a maybe asks `PENDING` again).
            if !may_track {
                syn_pending = found;
                pending_asked = true;
            }
        }
        let verdict = if may_track {
            to_backend_stamped(ctx, pkt, generation)
        } else {
            Verdict::UNTRACKED
        };
        if verdict == Verdict::UNTRACKED {
            untracked = true;
        } else if verdict != Verdict::NOT_STAMPED {
            return verdict;
        }
    }
    // One key, reused for both lookups: the BPF stack is small.
    let mut endpoint = EndpointKey::new(pkt.key.dst, pkt.key.dport_be, pkt.key.proto);
    let frontend = if may_be_frontend {
        FRONTENDS.get_ptr(&endpoint)
    } else {
        None
    };
    if let Some(svc) = frontend {
        // SAFETY: a map value stays valid for the whole program run (RCU), even if userspace
        // replaces it meanwhile.
        let svc = unsafe { &*svc };
        if !tunnel::admits(svc.flags, pkt) {
            count(StatSlot::DropTunnelOnly);
            return Verdict::xdp(xdp_action::XDP_DROP);
        }
        // A new flow's first packets: the table was just asked, so not again. A local, dead
        // past here, so the verifier does not explore the rest twice (as it would for a flag
        // carried on).
        let skips_table = untracked && svc.flags & service_flags::TUNNEL_ONLY == 0;
        let verdict = if skips_table {
            Verdict::UNTRACKED
        } else {
            to_backend(ctx, pkt, svc, false, generation)
        };
        let mut reset = verdict == Verdict::NEEDS_RESET;
        if !reset && verdict != Verdict::NEEDS_FLOW && verdict != Verdict::UNTRACKED {
            return verdict;
        }
        // Not in the connection table: an unconfirmed flow's packet, or a new flow. One call
        // of `to_backend` (and of `reset::answer`) below for all cases: the verifier checks a
        // function again at every call site.
        let mut pending = true;
        if !reset {
            // The SYN's answer holds while nothing since could have written `PENDING`.
            let flow = if pending_asked && skips_table {
                syn_pending
            } else {
                conntrack::lookup_pending(&pkt.key)
            };
            match conntrack::pending(pkt, svc, conntrack::tick(), flow) {
                Pending::Follow => {}
                Pending::Confirmed => {
                    count(StatSlot::FlowConfirmed);
                    pending = false;
                }
                Pending::Reset => reset = true,
                found @ (Pending::Absent | Pending::Moved) => {
                    if matches!(found, Pending::Absent)
                        && verdict == Verdict::UNTRACKED
                        && pkt.key.proto == proto::TCP
                        && pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0
                    {
                        // Mid-flow, yet no entry: evicted, or another node's flow (see
                        // `FlowLost`).
                        count(StatSlot::FlowLost);
                    }
                    let started = start_flow(ctx, pkt, svc, generation);
                    log_new_flow(ctx, svc, started);
                    match started.refusal() {
                        // No usable backend: refused at once rather than retried into nothing.
                        // `reset::answer` decides whether it may answer, and counts.
                        Some(slot) if refused_with_reset(slot, pkt, svc) => reset = true,
                        // ICMP "port unreachable", decided and counted there.
                        Some(slot) if refused_as_unreachable(slot, pkt, svc) => {
                            return Verdict::PORT_UNREACHABLE;
                        }
                        Some(slot) => {
                            count_raw(slot);
                            return Verdict::xdp(xdp_action::XDP_DROP);
                        }
                        None => {
                            count(StatSlot::NewFlow);
                            pkt.opened_flow = true;
                        }
                    }
                }
            }
        }
        if reset {
            return Verdict::xdp(reset::answer(ctx, pkt));
        }
        return settled(to_backend(ctx, pkt, svc, pending, generation));
    }
    endpoint.addr = pkt.key.src;
    endpoint.set_port_proto(pkt.key.sport_be, pkt.key.proto);
    if conntrack::may_be_reply(&endpoint.addr, endpoint.port_be, endpoint.proto)
        && BACKEND_ENDPOINTS.get_ptr(&endpoint).is_some()
    {
        let verdict = to_client(ctx, pkt, generation);
        if verdict != Verdict::NO_REPLY_ENTRY {
            return verdict;
        }
        return stateless::reply(ctx, pkt);
    }
    Verdict::untaken(pkt, StatSlot::PassNotFrontend)
}

/// A new flow's outcome in the kernel log. Debug level: the verifier removes it unless lbd
/// runs with --kernel-log debug. Called once `start_flow`'s many paths have returned, not
/// inside it, where the verifier checked the statements on each of them (nearly all of its
/// budget under --kernel-log debug).
#[inline(always)]
fn log_new_flow(ctx: &XdpContext, svc: &Service, started: FlowStart) {
    match started.refusal() {
        Some(slot) => debug!(
            ctx,
            "service {}: new flow refused (counter slot {})", svc.id, slot
        ),
        None => debug!(ctx, "service {}: new flow", svc.id),
    }
}

/// Whether a new flow refused for want of a usable backend is answered with a RST from the
/// frontend: a TCP SYN (a new connection; a later segment of one whose backends are all gone
/// for a moment is dropped, as before, so its retransmission finds a backend that came back)
/// that `answers_refusal`.
#[inline(always)]
fn refused_with_reset(slot: u32, pkt: &Packet, svc: &Service) -> bool {
    answers_refusal(slot, svc)
        && pkt.key.proto == proto::TCP
        && is_syn(pkt.tcp_flags)
        && pkt.tcp_flags & TCP_RST == 0
}

/// Whether a packet refused for want of a usable backend is answered with ICMP "port
/// unreachable" (`unreachable`): a UDP datagram that `answers_refusal`. Also one of a flow
/// whose backends all left, as a host answers every datagram to a closed port (and telling
/// the two apart here would have the verifier check `start_flow` once for each).
#[inline(always)]
fn refused_as_unreachable(slot: u32, pkt: &Packet, svc: &Service) -> bool {
    answers_refusal(slot, svc) && pkt.key.proto == proto::UDP
}

/// Whether a refusal may be answered at all: for want of a usable backend, to a frontend
/// packets are served on (not a VIP only an overlay's sockets are served). Whether its
/// sender may get the answer (`sender::may_answer_error`: not through the tunnel, not from a
/// sender that is no single host, ...) the answer decides, as for every answer of its own.
#[inline(always)]
fn answers_refusal(slot: u32, svc: &Service) -> bool {
    slot == StatSlot::DropNoBackend as u32 && svc.flags & service_flags::SOCKET_SCOPE_MASK == 0
}

/// `to_backend`'s verdict for a flow followed in, or just moved to, a table, where it is
/// unless the table lost it at once (a table far too small for the load): then dropped.
#[inline(always)]
fn settled(verdict: Verdict) -> Verdict {
    if verdict == Verdict::UNTRACKED
        || verdict == Verdict::NEEDS_FLOW
        || verdict == Verdict::NEEDS_RESET
    {
        count(StatSlot::DropConntrackFull);
        return Verdict::xdp(xdp_action::XDP_DROP);
    }
    verdict
}

/// A packet of a tracked forward flow whose stamp is current (`conntrack::follow_stamped`):
/// forwarded as `to_backend` would, on the service id and flags in the flow, without the
/// `FRONTENDS` lookup; `Verdict::UNTRACKED` if the table has no entry for it,
/// `Verdict::NOT_STAMPED` for any other packet, untouched. The hot path's only call.
#[inline(never)]
fn to_backend_stamped(ctx: &XdpContext, pkt: &Packet, generation: u32) -> Verdict {
    let key: &FlowKey = &pkt.key;
    let Some(flow) = CONNTRACK.get_ptr_mut(key) else {
        return Verdict::UNTRACKED;
    };
    if !conntrack::follow_stamped(
        flow,
        key,
        pkt.tcp_flags,
        conntrack::tick(),
        generation,
        pkt.tunnel_peer,
    ) {
        return Verdict::NOT_STAMPED;
    }
    // Not for this packet's way in (`tunnel::admits`): the FRONTENDS way drops it.
    // SAFETY: a connection-table value stays valid for the whole program run.
    if !tunnel::admits(u32::from(unsafe { (*flow).service_flags }), pkt) {
        return Verdict::NOT_STAMPED;
    }
    conntrack::touch_forward(flow, key.proto == proto::TCP, pkt.tcp_flags);
    // SAFETY: a connection-table value stays valid for the whole program run.
    let service_id = unsafe { (*flow).service_id };
    forward_flow(ctx, pkt, flow, service_id, false)
}

/// A client packet for a frontend: DNAT (and SNAT under full NAT) from its connection-table
/// entry, which also caches its route, and forward; `Verdict::UNTRACKED` if the table has
/// none, `Verdict::NEEDS_FLOW` if its flow ended. With `pending`, from its flow's entry in
/// the table of unconfirmed flows instead (followed: see `conntrack::pending`), or, for the
/// packet that just opened it, from the copy `conntrack::insert` wrote there. Everything an established flow runs through is
/// inlined here: on this machine kind every return costs a mispredicted "safe RET" (SRSO
/// mitigation), so this is the hot path's only call. Opening a flow is a sibling call from
/// the entry function, so the two frames never add up.
#[inline(never)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    pending: bool,
    generation: u32,
) -> Verdict {
    let key: &FlowKey = &pkt.key;
    let flow = if pkt.opened_flow {
        // Its state already as this packet leaves it (see `conntrack::just_inserted`).
        match conntrack::just_inserted() {
            Some(flow) => flow,
            None => return Verdict::xdp(xdp_action::XDP_DROP),
        }
    } else if pending {
        match PENDING.get_ptr_mut(key) {
            Some(flow) => {
                conntrack::touch_forward(flow, key.proto == proto::TCP, pkt.tcp_flags);
                flow
            }
            // Evicted the moment it was written: a table far too small for the load.
            None => {
                count(StatSlot::DropConntrackFull);
                return Verdict::xdp(xdp_action::XDP_DROP);
            }
        }
    } else {
        match conntrack::lookup_forward(
            key,
            svc,
            pkt.tcp_flags,
            conntrack::tick(),
            generation,
            pkt.tunnel_peer,
        ) {
            Ok(flow) => {
                conntrack::touch_forward(flow, key.proto == proto::TCP, pkt.tcp_flags);
                flow
            }
            Err(NoFlow::Untracked) => return Verdict::UNTRACKED,
            Err(NoFlow::Open) => return Verdict::NEEDS_FLOW,
            Err(NoFlow::Reset) => return Verdict::NEEDS_RESET,
        }
    };
    forward_flow(ctx, pkt, flow, svc.id, pkt.opened_flow)
}

/// DNAT (and SNAT under full NAT) from the flow's entry, count and send: the tail of
/// `to_backend` and `to_backend_stamped`, inlined into both.
#[inline(always)]
fn forward_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: *mut Flow,
    service_id: u32,
    new_flow: bool,
) -> Verdict {
    // SAFETY: a connection-table value stays valid for the whole program run.
    let f = unsafe { &*flow };
    let backend = f.backend_addr();
    if !nat::rewrite(ctx, pkt, Side::Destination, backend, f.backend_port_be()) {
        count(StatSlot::PassMalformed);
        return Verdict::xdp(xdp_action::XDP_PASS);
    }
    let mut src = &pkt.key.src;
    if f.remaps_source() {
        let (addr, port_be) = (f.remapped_source_addr(), f.remapped_source_port_be());
        if !nat::rewrite(ctx, pkt, Side::Source, addr, port_be) {
            count(StatSlot::PassMalformed);
            return Verdict::xdp(xdp_action::XDP_PASS);
        }
        src = addr;
    }
    count(StatSlot::NatForward);
    count_traffic(service_id, f.backend_id, pkt.len, new_flow);
    forward::send(ctx, pkt, src, backend, flow)
}

/// Chooses a backend for a new flow and records the flow. Not inlined: its frame and its
/// callees' are only needed while a flow is opened.
#[inline(never)]
fn start_flow(ctx: &XdpContext, pkt: &Packet, svc: &Service, generation: u32) -> FlowStart {
    // SAFETY: plain old data; zeroed word by word (see `zero`).
    let mut slot = MaybeUninit::uninit();
    let chosen: &mut Chosen = unsafe { zero::zeroed_in(&mut slot) };
    chosen.arrived_from = pkt.tunnel_peer;
    let mut outcome = open_flow(ctx, pkt, svc, chosen);
    if outcome == FlowStart::OPENED {
        outcome = record_flow(pkt, svc, chosen, conntrack::now_ns(), generation);
    }
    outcome
}

/// Chooses a backend for a new flow, and under full NAT the node address to speak from.
/// Inlined; its calls and `record_flow` are siblings, so their stack frames never add up.
#[inline(always)]
fn open_flow(ctx: &XdpContext, pkt: &Packet, svc: &Service, chosen: &mut Chosen) -> FlowStart {
    let key = &pkt.key;
    // A frontend only sockets of one overlay network serve (a swarm VIP, any port): packets
    // get no backend from it.
    if svc.flags & service_flags::SOCKET_SCOPE_MASK != 0 {
        return FlowStart::refused(StatSlot::DropNoBackend);
    }
    // A mid-flow TCP packet without an entry (its flow entered by a node that died, or was
    // evicted) is placed by the flow hash under either scheduler (see `select`); UDP has no
    // mid-flow marker.
    let opening = key.proto != proto::TCP || is_syn(pkt.tcp_flags);
    if !select::choose(key, svc, opening, chosen) {
        return FlowStart::refused(StatSlot::DropNoBackend);
    }
    if (svc.flags & service_flags::FULLNAT != 0 || hairpin(pkt, chosen))
        && !forward::source_toward(ctx, pkt.v6, &chosen.addr, &mut chosen.snat_addr)
    {
        return FlowStart::refused(StatSlot::DropNoSnatAddr);
    }
    FlowStart::OPENED
}

/// Whether the client is inside the subnet the node reaches the chosen backend on (a
/// container calling a published port or VIP whose task shares its bridge, or that task
/// itself): the backend would answer it straight over that subnet, past the node, and the
/// client would drop an answer from an address it did not call. Such a flow speaks from the
/// node's address, as under full NAT; Docker's own mesh does the same.
#[inline(always)]
fn hairpin(pkt: &Packet, chosen: &Chosen) -> bool {
    let (client, prefix) = (&pkt.key.src, chosen.on_link_prefix);
    if pkt.v6 {
        client.same_v6_subnet(&chosen.addr, prefix)
    } else {
        client.same_v4_subnet(&chosen.addr, prefix)
    }
}

/// Records a new flow in the connection table (choosing the full-NAT source port). Not
/// inlined: the two entries it builds need stack only while it runs.
#[inline(never)]
fn record_flow(
    pkt: &Packet,
    svc: &Service,
    chosen: &mut Chosen,
    now: u64,
    generation: u32,
) -> FlowStart {
    match conntrack::insert(&pkt.key, svc, chosen, pkt.tcp_flags, now, generation) {
        Ok(()) => FlowStart::OPENED,
        Err(InsertError::Full) => FlowStart::refused(StatSlot::DropConntrackFull),
        Err(InsertError::NoPort) => FlowStart::refused(StatSlot::DropNoSnatPort),
    }
}

/// A packet from a backend: if it belongs to a tracked flow, the source becomes the frontend
/// (and, under full NAT, the destination the client again); `Verdict::NO_REPLY_ENTRY` if
/// the table has no reply entry for it, or none for a frontend that is still there
/// (`conntrack::reply_entry_stands`, asked once the frontends changed, `generation`).
/// Like `to_backend`, the only call on a tracked reply's path.
#[inline(never)]
fn to_client(ctx: &XdpContext, pkt: &Packet, generation: u32) -> Verdict {
    let Some((flow, pending)) = conntrack::lookup_reply(&pkt.key) else {
        return Verdict::NO_REPLY_ENTRY;
    };
    if !conntrack::reply_entry_stands(&pkt.key, flow, pending, generation) {
        return Verdict::NO_REPLY_ENTRY;
    }
    conntrack::touch_reply(&pkt.key, flow, pending, conntrack::tick());
    if pkt.key.proto == proto::TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // SAFETY: valid for this program run.
        conntrack::backend_closing(&pkt.key, unsafe { &*flow }, pending, pkt.tcp_flags);
    }
    // SAFETY: valid for this program run (an insert replaces a value, never writes into
    // it, so the addresses are referenced where they are rather than copied: the BPF stack is
    // small); the rest read field by field.
    let (frontend, frontend_port_be, client, client_port_be, service_id, backend_id) = unsafe {
        (
            (*flow).frontend_addr(),
            (*flow).frontend_port_be(),
            (*flow).client_addr(),
            (*flow).client_port_be(),
            (*flow).service_id,
            (*flow).backend_id,
        )
    };
    if !nat::rewrite(ctx, pkt, Side::Source, frontend, frontend_port_be) {
        count(StatSlot::PassMalformed);
        return Verdict::xdp(xdp_action::XDP_PASS);
    }
    let mut dst = &pkt.key.dst;
    if *client != Addr::UNSPECIFIED {
        if !nat::rewrite(ctx, pkt, Side::Destination, client, client_port_be) {
            count(StatSlot::PassMalformed);
            return Verdict::xdp(xdp_action::XDP_PASS);
        }
        dst = client;
    }
    count(StatSlot::NatReply);
    count_traffic(service_id, backend_id, pkt.len, false);
    forward::send(ctx, pkt, frontend, dst, flow)
}

/// Forwards packets the XDP program rewrote but could not redirect itself.
#[classifier]
pub fn meshlb_tc_ingress(ctx: TcContext) -> i32 {
    // What the XDP program wrote over the Ethernet addresses, if it handed the packet over.
    // Read in place (every skb the program sees, the node's own traffic too: no helper call).
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + 12 > data_end {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: 12 bytes in bounds (checked above); the addresses are in the linear part.
    let words = unsafe { (data as *const [u32; 3]).read() };
    let Some(Handoff {
        kind,
        peer,
        ifindex,
    }) = Handoff::from_words(words)
    else {
        return TC_ACT_UNSPEC;
    };
    if kind == handoff::TUNNEL {
        if !aggregate::wrap_for_peer(&ctx, u32::from(peer)) {
            count(StatSlot::TcTunnelFailed);
            return TC_ACT_SHOT as i32;
        }
        count(StatSlot::TunnelSent);
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
