//! A new flow's entries: written into the table of unconfirmed flows (`PENDING`), a source
//! port picked where the flow's replies need one of their own.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{cty::c_long, helpers::bpf_loop};
use lb_common::{
    Addr,
    hash::flow_hash,
    limits::{FULLNAT_PORT_ATTEMPTS, FULLNAT_PORT_MAX, FULLNAT_PORT_MIN},
    maps::{Flow, FlowKey, Service, flow_kind, proto, tcp_state},
};

use super::{
    may_be_frontend,
    reply_owner::{Held, Owner, claim_reply, forget_ended_reply, take_over_moved},
    tick,
};
use crate::{
    maps::{FLOW_SCRATCH, PENDING, reply_leads_only_to},
    parse::is_syn,
    zero,
};

/// What a flow was given: its backend and, under full NAT, the node address and port that
/// replace the client's (`snat_addr` unspecified otherwise).
pub struct Chosen {
    pub backend_id: u32,
    pub addr: Addr,
    pub port_be: u16,
    pub snat_addr: Addr,
    pub snat_port_be: u16,
    /// The backend is a task on the node with this `TUNNEL_PEERS` index (0: reached here).
    pub tunnel_peer: u8,
    /// The flow came through the tunnel from this peer: its replies go back to it.
    pub arrived_from: u8,
    /// The prefix length of the subnet the node reaches the backend on (see
    /// `backend_flags::ON_LINK_SHIFT`); 0: not known.
    pub on_link_prefix: u8,
}

/// Why a new flow could not be recorded.
pub enum InsertError {
    /// The table refused the insert.
    Full,
    /// Full NAT: every source port tried is taken by a live flow.
    NoPort,
}

/// Records a new flow in the table of unconfirmed flows (`PENDING`; `pending` confirms it):
/// the reply entry first, so the backend's first answer finds it (none where the backend's
/// replies need none: `replies_without_entry`). Under full NAT (and NAT on a reply-entry
/// clash), picks the source port here: the first of a few ports (from the flow's hash) whose
/// reply entry is free or idle, so concurrent flows of one client never collide. A TCP
/// connection come in another way keeps its port and takes its key (`take_over_moved`).
#[inline(always)]
pub fn insert(
    key: &FlowKey,
    svc: &Service,
    chosen: &mut Chosen,
    tcp_flags: u8,
    now: u64,
    generation: u32,
) -> Result<(), InsertError> {
    let is_tcp = key.proto == proto::TCP;
    // The state `touch_forward` would leave after this packet: the packet that opens a flow
    // is forwarded from the value written here (`just_inserted`), not touched again.
    let state = if !is_tcp {
        tcp_state::NONE
    } else if is_syn(tcp_flags) {
        tcp_state::SYN_SENT
    } else {
        // Mid-flow packet placed again after its entry was lost (see `select`).
        tcp_state::next(tcp_state::ESTABLISHED, tcp_flags, true)
    };
    let timeout_s = if is_tcp {
        svc.tcp_timeout_s
    } else {
        svc.udp_timeout_s
    };
    // The flow speaks from a node address (full NAT, or a hairpin: see `open_flow`), chosen
    // before, never the unspecified address.
    let from_node = chosen.snat_addr != Addr::UNSPECIFIED;
    // SAFETY: plain old data; zeroed word by word, padding included (see `zero`).
    let mut slot = MaybeUninit::uninit();
    let reply_key: &mut FlowKey = unsafe { zero::zeroed_in(&mut slot) };
    reply_key.src = chosen.addr;
    reply_key.dst = key.src;
    reply_key.set_ports(chosen.port_be, key.sport_be);
    reply_key.set_proto(key.proto);
    // One value, written twice, in per-CPU scratch memory: the BPF stack is small.
    let Some(flow) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return Err(InsertError::Full);
    };
    // SAFETY: per-CPU scratch, used by this program run only; plain old data.
    let flow = unsafe {
        zero::zero_words(flow);
        &mut *flow
    };
    // Field by field on the zeroed scratch: a `Flow` literal would be built on the stack
    // first (88 bytes this deep in the new-flow path) and copied, and its zero fields
    // written by `memset` calls (see `zero`).
    flow.nat_addr = key.dst;
    flow.nat_port_be = key.dport_be;
    flow.kind = flow_kind::REPLY;
    flow.service_flags = svc.flags as u8;
    flow.backend_id = chosen.backend_id;
    flow.service_id = svc.id;
    flow.timeout_s = timeout_s;
    flow.last_seen_ns = now;
    flow.seen_tick = tick();
    flow.tunnel_peer = chosen.arrived_from;
    flow.frontend_gen = generation;
    // NAT whose reply entry a live flow already holds (the client reused its port toward
    // another frontend of the same backend): keep the client's address but give the flow
    // another source port, as netfilter's NAT does on a tuple clash. Full NAT always picks
    // the node's address and a port. A backend endpoint whose one frontend is this flow's
    // needs no unconfirmed reply entry (see `replies_without_entry`).
    let remap = from_node
        || !(replies_without_entry(&reply_key, key) || {
            // A TCP packet past its SYN (placed mid-flow) may be a connection come in another
            // way than the flow holding its key (see `take_over_moved`). Asked before the
            // claim, not after one failed: a second claim would double what the verifier
            // walks through the rest of the new-flow path.
            take_over_moved(&reply_key, state);
            let mut confirmed = Owner::NONE;
            let claimed = claim_reply(
                &reply_key,
                flow,
                now,
                Held::UNTIL_BACKEND_FORGETS,
                &mut confirmed,
            );
            if claimed {
                forget_ended_reply(confirmed, &reply_key);
            }
            claimed
        });
    if remap {
        if !from_node {
            chosen.snat_addr = key.src;
        }
        flow.snat_addr = key.src;
        flow.snat_port_be = key.sport_be;
        reply_key.dst = chosen.snat_addr;
        let mut search = PortSearch {
            reply_key: &mut *reply_key,
            start: flow_hash(key),
            found: 0,
            confirmed: Owner::NONE,
            now,
        };
        // The attempts run under `bpf_loop`, whose body the verifier checks as a loop rather
        // than once per attempt (unrolled, the eight attempts were a third of the program's
        // verification budget). Two passes over the same ports (see `try_source_port`).
        // SAFETY: the callback is a static function of the signature `bpf_loop` calls, and
        // `search` outlives the call.
        unsafe {
            bpf_loop(
                2 * FULLNAT_PORT_ATTEMPTS,
                try_source_port as *mut c_void,
                (&raw mut search).cast(),
                0,
            );
        }
        if search.found == 0 {
            return Err(InsertError::NoPort);
        }
        forget_ended_reply(search.confirmed, reply_key);
        chosen.snat_port_be = reply_key.dport_be;
    }
    flow.nat_addr = chosen.addr;
    flow.nat_port_be = chosen.port_be;
    flow.snat_addr = chosen.snat_addr;
    flow.snat_port_be = chosen.snat_port_be;
    flow.kind = flow_kind::FORWARD;
    flow.tcp_state = state;
    flow.tunnel_peer = chosen.tunnel_peer;
    PENDING
        .insert(key, &*flow, 0)
        .map_err(|_| InsertError::Full)?;
    Ok(())
}

/// What `try_source_port` works on: the reply key whose destination port it tries (left at
/// the port claimed), from where in the full-NAT range, whether a port was claimed, and who
/// held it in `CONNTRACK` (see `claim_reply`).
#[repr(C)]
struct PortSearch {
    reply_key: *mut FlowKey,
    now: u64,
    start: u32,
    found: u16,
    confirmed: u16,
}

/// One attempt of `insert`'s search for a source port (`bpf_loop`'s callback: 1 stops the
/// loop): a port of the range from the flow's hash, claimed if its reply entry is free or
/// its flow is over. The first pass over the `FULLNAT_PORT_ATTEMPTS` ports skips a port the
/// backend may still hold in TIME_WAIT (`Flow::port_hold_s`); if every one is, the second
/// pass takes such a port once its flow is past its idle limit: a SYN the backend takes for
/// the old connection is sent again a second later, where no port at all drops the flow. A
/// port that may be a frontend's on that address is never taken.
/// The reply entry written is the per-CPU scratch `insert` built.
#[inline(never)]
extern "C" fn try_source_port(attempt: u64, search: *mut c_void) -> c_long {
    // SAFETY: `insert` passes its `PortSearch`, live across the `bpf_loop` call.
    let search = unsafe { &mut *search.cast::<PortSearch>() };
    let Some(flow) = FLOW_SCRATCH.get_ptr(0) else {
        return 1;
    };
    let range = u32::from(FULLNAT_PORT_MAX - FULLNAT_PORT_MIN) + 1;
    let index = (attempt % u64::from(FULLNAT_PORT_ATTEMPTS)) as u32;
    let held = Held::search_pass(attempt);
    let port = FULLNAT_PORT_MIN + (search.start.wrapping_add(index) % range) as u16;
    // SAFETY: points at `insert`'s reply key, on its stack for the whole loop.
    let reply_key = unsafe { &mut *search.reply_key };
    if port_may_be_frontend(reply_key, port) {
        return 0;
    }
    reply_key.set_ports(reply_key.sport_be, port.to_be());
    // SAFETY: per-CPU scratch, used by this program run only.
    if claim_reply(
        reply_key,
        unsafe { &*flow },
        search.now,
        held,
        &mut search.confirmed,
    ) {
        search.found = 1;
        return 1;
    }
    0
}

/// Whether `port` on the reply key's destination (the address a flow speaks from) may be a
/// frontend's: a swarm service may publish a port in the search's range on the node's
/// addresses, a hairpin's among them, and replies to it would open flows there. Not inlined:
/// its stack stays off `try_source_port`'s frame, at the bottom of the deepest call chain.
#[inline(never)]
fn port_may_be_frontend(reply_key: &FlowKey, port: u16) -> bool {
    may_be_frontend(&reply_key.dst, port.to_be(), reply_key.proto)
}

/// The forward entry `insert` just wrote into `PENDING`, as it wrote it (per-CPU scratch):
/// the packet that opened the flow is forwarded from this copy rather than looked up again.
/// A lookup would set the entry's reference bit, and the LRU then moves the entry to its
/// active list instead of evicting it, so a flood of new flows (each looked up once) makes
/// every eviction scan further; an entry nothing looked up since its insert is evicted first,
/// and its route is cached by the flow's next packet.
#[inline(always)]
pub fn just_inserted() -> Option<*mut Flow> {
    FLOW_SCRATCH.get_ptr_mut(0)
}

/// Whether the replies of an unconfirmed flow (its backend endpoint the source of
/// `reply_key`, its frontend the destination of `key`) are translated right without a reply
/// entry: the endpoint leads to this one frontend (`REPLY_FRONTENDS`, a VIP under NAT), so
/// `stateless::reply` gives them the frontend as source, and no other flow can hold the
/// reply key (the same client port toward the same frontend is this flow). The flow's
/// first packet then costs one insert into a full `PENDING` instead of two, which is what a
/// SYN flood costs; `confirm` writes the confirmed reply entry as for any flow.
#[inline(always)]
fn replies_without_entry(reply_key: &FlowKey, key: &FlowKey) -> bool {
    reply_leads_only_to(reply_key, &key.dst, key.dport_be)
}
