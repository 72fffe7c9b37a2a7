//! Unconfirmed flows: a new flow waits in `PENDING` until the client's second packet
//! confirms it and moves it into `CONNTRACK` (the flood guard: a flood of first packets only
//! churns `PENDING`).

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    maps::{Flow, FlowKey, Service, flow_kind, proto, service_flags},
    stats::StatSlot,
};

use super::{
    Held, Liveness, follow_entry_node, forget, liveness, now_ns, reply_is_for, reply_key_of,
    reply_owner_alive,
};
use crate::{
    maps::{CONNTRACK, FLOW_SCRATCH, PENDING, reply_leads_only_to},
    parse::{Packet, TCP_ACK, TCP_RST, TCP_SYN, answer_with_reset},
    stats::count,
    zero,
};

/// What `pending` found for a client packet the connection table has no entry for.
pub enum Pending {
    /// No live unconfirmed flow of this packet (or of this service): it opens one.
    Absent,
    /// Its backend left (policy `move`): it opens a flow again, counted as moved (not as
    /// lost: it had an entry).
    Moved,
    /// An unconfirmed flow this packet does not confirm (a SYN again): follow its `PENDING`
    /// entry.
    Follow,
    /// This packet confirmed the flow: it is in `CONNTRACK` now.
    Confirmed,
    /// Its backend left a service whose policy is `reset`: answer the TCP packet with a RST.
    Reset,
}

/// The unconfirmed flow of a client packet for the service `svc` that the connection table
/// has no entry for: alive by the same rules as a confirmed one (`liveness`), confirmed by
/// the client's second packet (`confirms`). `flow` is `PENDING`'s answer for
/// the packet's key (null: none), asked by the caller (see `lookup`). Not inlined: a sibling
/// of the packet paths, run only by a flow's first packets.
#[inline(never)]
pub fn pending(pkt: &Packet, svc: &Service, tick: u32, flow: *mut Flow) -> Pending {
    let key = &pkt.key;
    if flow.is_null() {
        return Pending::Absent;
    }
    // SAFETY: valid for this program run (see lookup_forward).
    let f = unsafe { &mut *flow };
    // A frontend moved to another service since: a new flow (it overwrites this one).
    if f.service_id != svc.id {
        return Pending::Absent;
    }
    let is_tcp = key.proto == proto::TCP;
    let moves = svc.flags & service_flags::MOVE_ON_REMOVAL != 0;
    // The tunnel's peer is followed below, for every packet of an unconfirmed flow.
    match liveness(f, key, is_tcp, pkt.tcp_flags, tick, moves, 0) {
        Liveness::Alive => {}
        Liveness::BackendGone => {
            // As `lookup_forward` does for a confirmed flow.
            let _ = PENDING.remove(key);
            if svc.flags & service_flags::RESET_ON_REMOVAL != 0
                && is_tcp
                && answer_with_reset(pkt.tcp_flags)
            {
                return Pending::Reset;
            }
            count(StatSlot::FlowMoved);
            return Pending::Moved;
        }
        // Its entries go as a confirmed flow's do: left, its reply entry would still be
        // held by its closed forward entry, and the same client's SYN again would be given
        // another source port.
        Liveness::Ended => {
            forget(&PENDING, key, f);
            return Pending::Absent;
        }
        Liveness::NotForward => return Pending::Absent,
    }
    // Its source port was taken by a newer flow while its client was silent (full NAT under
    // a flood, see `Held::limit_ns`): it is over, and this packet opens a flow anew, on
    // another port (a mid-flow packet is counted lost). Followed or confirmed, it would
    // share its reply key with the flow that took it.
    if f.remaps_source() && reply_key_taken(key, f) {
        let _ = PENDING.remove(key);
        return Pending::Absent;
    }
    if is_tcp && pkt.tcp_flags & TCP_SYN != 0 {
        // A SYN again: the client has not had an answer it takes. If the flow's replies are
        // no longer translated (opened without a reply entry, and a change since gave its
        // backend endpoint another frontend; or a flood evicted its reply entry), the flow
        // is opened anew, with the reply entry the endpoint now needs.
        if !replies_translated(key, f) {
            return Pending::Absent;
        }
    } else if confirms(is_tcp, pkt.tcp_flags) && confirm(key, f, pkt.tunnel_peer, tick) {
        return Pending::Confirmed;
    }
    // Followed: a SYN sent again through another entry node takes the answers there.
    if pkt.tunnel_peer != 0 {
        follow_entry_node(key, f, pkt.tunnel_peer, true);
    }
    Pending::Follow
}

/// Whether a client packet of an unconfirmed flow, not a SYN, confirms it: any UDP datagram;
/// a TCP segment that acknowledges and does not reset. A RST without ACK is what a host
/// answers a SYN-ACK it never asked for: a flood of SYNs from spoofed sources that are real
/// hosts would otherwise confirm itself into `CONNTRACK` with their answers. It follows the
/// unconfirmed flow to the backend instead, which lets its half-open connection go.
#[inline(always)]
fn confirms(is_tcp: bool, tcp_flags: u8) -> bool {
    !is_tcp || tcp_flags & (TCP_ACK | TCP_RST) == TCP_ACK
}

/// Whether another flow holds the reply key of the unconfirmed flow `key` (its forward entry
/// `f`): a reply entry there, confirmed or not, that is not this flow's (`reply_is_for`).
/// None at all is this flow's still: a flood may have evicted its entry from `PENDING`, and
/// `confirm` writes it again (unless a new flow claimed the key it left free meanwhile:
/// that one has it now, and this flow is over).
#[inline(always)]
fn reply_key_taken(key: &FlowKey, f: &Flow) -> bool {
    let reply_key = reply_key_of(key, f);
    let another = |reply: *const Flow| {
        // SAFETY: map values, valid for this program run.
        let kind = unsafe { (*reply).kind };
        kind == flow_kind::REPLY && !reply_is_for(reply, key)
    };
    CONNTRACK.get_ptr(&reply_key).is_some_and(another)
        || PENDING.get_ptr(&reply_key).is_some_and(another)
}

/// `PENDING`'s entry for `key`, or null: what `pending` takes.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> *mut Flow {
    PENDING.get_ptr_mut(key).unwrap_or(core::ptr::null_mut())
}

/// Whether the replies of the unconfirmed flow `key` (its forward entry `f`) reach its
/// client translated: its backend endpoint still leads to its frontend alone
/// (`replies_without_entry`; the small map first), or its reply entry is in `PENDING`.
#[inline(always)]
fn replies_translated(key: &FlowKey, f: &Flow) -> bool {
    let reply_key = reply_key_of(key, f);
    if !f.remaps_source() && reply_leads_only_to(&reply_key, &key.dst, key.dport_be) {
        return true;
    }
    // SAFETY: valid for this program run.
    PENDING
        .get_ptr(&reply_key)
        .is_some_and(|reply| unsafe { (*reply).kind } == flow_kind::REPLY)
}

/// Moves the unconfirmed flow `key` (its forward entry `f`, in `PENDING`) into `CONNTRACK`:
/// the reply entry first (rebuilt from the forward one, so a reply entry the flood evicted
/// from `PENDING` is no loss; `arrived_from` is where the client's packets come from), then
/// the forward entry; then both leave `PENDING`. False, and nothing changed in `CONNTRACK`,
/// if a live confirmed flow holds the reply key (the flow stays unconfirmed).
#[inline(always)]
fn confirm(key: &FlowKey, f: &Flow, arrived_from: u8, tick: u32) -> bool {
    let remapped = f.remaps_source();
    let reply_key = reply_key_of(key, f);
    let Some(reply) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let now = now_ns();
    // SAFETY: per-CPU scratch, used by this program run only; plain old data.
    let reply = unsafe {
        zero::zero_words(reply);
        &mut *reply
    };
    // Field by field on the zeroed scratch (see `insert`).
    reply.nat_addr = key.dst;
    if remapped {
        reply.snat_addr = key.src;
        reply.snat_port_be = key.sport_be;
    }
    reply.nat_port_be = key.dport_be;
    reply.kind = flow_kind::REPLY;
    reply.service_flags = f.service_flags;
    reply.backend_id = f.backend_id;
    reply.service_id = f.service_id;
    reply.timeout_s = f.timeout_s;
    reply.last_seen_ns = now;
    reply.seen_tick = tick;
    reply.tunnel_peer = arrived_from;
    reply.frontend_gen = f.frontend_gen;
    let noexist = u64::from(BPF_NOEXIST);
    let claimed = CONNTRACK.insert(&reply_key, &*reply, noexist).is_ok()
        || (!reply_owner_alive(&reply_key, now, false, Held::WHILE_ALIVE) && {
            let _ = CONNTRACK.remove(&reply_key);
            CONNTRACK.insert(&reply_key, &*reply, noexist).is_ok()
        });
    if !claimed {
        return false;
    }
    if CONNTRACK.insert(key, f, 0).is_err() {
        let _ = CONNTRACK.remove(&reply_key);
        return false;
    }
    super::filter::note_tracked(key);
    // The unconfirmed reply entry, if still this flow's (see `forget`).
    if let Some(old) = PENDING.get_ptr(&reply_key)
        && reply_is_for(old, key)
    {
        let _ = PENDING.remove(&reply_key);
    }
    let _ = PENDING.remove(key);
    true
}
