//! The connection table: the backend a flow was given, its TCP state and idle time.

pub mod filter;
mod insert;
mod reply_owner;
mod unconfirmed;

use self::reply_owner::{Held, owns_reply, reply_owner_alive, write_forward_key};

use core::mem::MaybeUninit;

pub use insert::{Chosen, InsertError, insert, just_inserted};
pub use unconfirmed::{Pending, lookup as lookup_pending, pending};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use lb_common::{
    Addr, endpoint_filter,
    hash::endpoint_filter_slot,
    limits::{FULLNAT_PORT_ATTEMPTS, LAST_SEEN_GRANULARITY_NS, UNCONFIRMED_TCP_PORT_HOLD_S},
    maps::{
        Backend, EndpointKey, Flow, FlowKey, Service, backend_flags, flow_kind, proto,
        service_flags, tcp_state,
    },
    stats::StatSlot,
};

use crate::{
    maps::{
        BACKENDS, CONNTRACK, EndpointFilter, FLOW_SCRATCH, FORWARD_FILTER, FRONTEND_GEN, FRONTENDS,
        KEY_SCRATCH, PENDING, REPLY_FILTER,
    },
    parse::{answer_with_reset, is_syn},
    stats::count,
    zero,
};

/// The clock of idle timeouts. The coarse clock (a tick's resolution) is plenty for timeouts
/// of seconds and cheaper than the precise one on every packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The kernel tick, truncated to 32 bits: the verifier turns `bpf_jiffies64` into one load,
/// where `now_ns` is a helper call (about 20 ns per packet on our VMs). Ticks are only
/// compared for equality ("seen in this tick"); a flow idle for exactly a multiple of 2^32
/// ticks (49 days at HZ=1000) would skip one idle check.
#[inline(always)]
pub fn tick() -> u32 {
    // SAFETY: plain helper call.
    unsafe { bpf_jiffies64() as u32 }
}

#[inline(always)]
fn idle_limit_ns(flow: &Flow) -> u64 {
    u64::from(flow.idle_limit_s()) * 1_000_000_000
}

#[inline(always)]
fn port_hold_ns(flow: &Flow) -> u64 {
    u64::from(flow.port_hold_s()) * 1_000_000_000
}

/// Why a client packet has no live flow to follow.
pub enum NoFlow {
    /// The connection table has no entry for the packet: it may be an unconfirmed flow
    /// (`pending`), or it opens one.
    Untracked,
    /// The packet's flow ended (and is gone from the table): as `Untracked`, but not lost.
    Open,
    /// Its backend left a service whose policy is `reset`: answer the TCP packet with a RST.
    Reset,
}

/// What a connection-table entry is to a client packet keyed by it (see `liveness`).
enum Liveness {
    /// A forward entry the packet belongs to.
    Alive,
    /// Not a forward entry (a reply entry under the same key): no flow of this packet.
    NotForward,
    /// The flow ended: idle past its limit, or a SYN reopens a closing TCP flow.
    Ended,
    /// Its backend left a service that moves such flows (`MOVE_ON_REMOVAL`).
    BackendGone,
}

/// The rules that decide whether the entry `f` still carries the client packet (TCP if
/// `is_tcp`, with `tcp_flags`) in tick `tick`; `moves_on_removal` is the service's
/// `MOVE_ON_REMOVAL`. The one place both paths to a flow (`lookup_forward`, `follow_stamped`)
/// ask. A flow seen earlier in this tick is not idle; otherwise its idle clock is checked and,
/// if it is alive, refreshed (see `refresh`), and, for a packet that came through the tunnel
/// from the peer `arrived_from` (0: not, or not to be followed here), its replies are pointed
/// there (`follow_entry_node`, keyed `key`): once a tick, so the packets of the same tick pay
/// nothing for it. Changes nothing else.
#[inline(always)]
fn liveness(
    f: &mut Flow,
    key: &FlowKey,
    is_tcp: bool,
    tcp_flags: u8,
    tick: u32,
    moves_on_removal: bool,
    arrived_from: u8,
) -> Liveness {
    if f.kind != flow_kind::FORWARD {
        return Liveness::NotForward;
    }
    if is_tcp && is_syn(tcp_flags) && tcp_state::closed_by_either(f.tcp_state) {
        return Liveness::Ended;
    }
    if f.seen_tick != tick {
        let now = now_ns();
        // Signed: another CPU may have stamped the flow after `now` was read (a reply's
        // `touch_reply`), which is no idle time at all, not a wrapped eternity.
        if now.wrapping_sub(f.last_seen_ns) as i64 > idle_limit_ns(f) as i64 {
            return Liveness::Ended;
        }
        refresh(f, now, tick);
        if arrived_from != 0 {
            follow_entry_node(key, f, arrived_from, false);
        }
        if f.tunnel_peer != 0 {
            follow_task_node(f);
        }
    }
    if moves_on_removal && !backend_still_serves(f) {
        return Liveness::BackendGone;
    }
    Liveness::Alive
}

/// The tracked forward flow of a client packet, if it is still alive and this packet belongs
/// to it (see `liveness`). A flow that ended is removed (both entries) and the packet starts a
/// new flow, or follows the unconfirmed one that replaced it; so does a flow whose backend
/// left the service when the service moves such flows (under `reset`, a TCP packet other
/// than a SYN is answered with a RST instead).
/// The old flow's reply entry is removed first, so client port reuse never stalls (under full
/// NAT the new flow takes the same node port again) and the old backend's late packets are
/// not translated.
#[inline(always)]
pub fn lookup_forward(
    key: &FlowKey,
    svc: &Service,
    tcp_flags: u8,
    tick: u32,
    generation: u32,
    arrived_from: u8,
) -> Result<*mut Flow, NoFlow> {
    let flow = CONNTRACK.get_ptr_mut(key).ok_or(NoFlow::Untracked)?;
    // SAFETY: the pointer is valid for this program run; concurrent writers only touch
    // last_seen/tcp_state words, and a torn read of them is harmless.
    let f = unsafe { &mut *flow };
    let is_tcp = key.proto == proto::TCP;
    let moves = svc.flags & service_flags::MOVE_ON_REMOVAL != 0;
    match liveness(f, key, is_tcp, tcp_flags, tick, moves, arrived_from) {
        Liveness::Alive => {}
        Liveness::NotForward => return Err(NoFlow::Open),
        Liveness::Ended => {
            // Gone, so the flow's later packets find the unconfirmed flow that replaces it.
            forget(&CONNTRACK, key, f);
            return Err(NoFlow::Open);
        }
        Liveness::BackendGone => {
            // Gone entirely, so a flow that cannot be placed again (round-robin, mid-flow) is
            // not counted as moved on each of its packets, nor reset twice.
            forget(&CONNTRACK, key, f);
            if svc.flags & service_flags::RESET_ON_REMOVAL != 0
                && is_tcp
                && answer_with_reset(tcp_flags)
            {
                return Err(NoFlow::Reset);
            }
            count(StatSlot::FlowMoved);
            return Err(NoFlow::Open);
        }
    }
    // The frontend still leads to the flow's service: its next packets may skip
    // `FRONTENDS` (see `follow_stamped`). A frontend moved to another service keeps the
    // flow on this path.
    if f.frontend_gen != generation && f.service_id == svc.id {
        f.service_flags = svc.flags as u8;
        f.frontend_gen = generation;
    }
    Ok(flow)
}

/// The flow-first path: whether `flow`, the packet's own connection-table entry, can be
/// followed on the service id and flags stamped in it, without the `FRONTENDS` lookup: it
/// must be stamped with the current `generation` and alive (`liveness`, with the stamped
/// flags). Anything else answers false having changed nothing but the idle clock, and the
/// packet takes the `FRONTENDS` path (`lookup_forward`), which decides. A packet that came
/// through the tunnel from the peer `arrived_from` (0: not) points its flow's replies there
/// (`follow_entry_node`), on both paths.
#[inline(always)]
pub fn follow_stamped(
    flow: *mut Flow,
    key: &FlowKey,
    tcp_flags: u8,
    tick: u32,
    generation: u32,
    arrived_from: u8,
) -> bool {
    // SAFETY: see lookup_forward.
    let f = unsafe { &mut *flow };
    if f.frontend_gen != generation {
        return false;
    }
    let moves = u32::from(f.service_flags) & service_flags::MOVE_ON_REMOVAL != 0;
    let is_tcp = key.proto == proto::TCP;
    matches!(
        liveness(f, key, is_tcp, tcp_flags, tick, moves, arrived_from),
        Liveness::Alive
    )
}

/// Points the reply entry of a flow that came through the mesh tunnel (`f`, keyed `key`, to
/// a task's delivery frontend; in `PENDING` if `pending`) at `arrived_from`, the peer its
/// client's packet just came through, when it names another. ECMP after a node failed, or an
/// address that failed over, moves a client to another entry node; the task's replies then
/// follow it there rather than go back to the first node, which may be gone. A confirmed
/// flow's reply entry costs a lookup, so `liveness` asks once per tick of its packets
/// (`seen_tick`): its replies follow from its first packet of a later tick. An unconfirmed
/// flow's packets always ask (a SYN sent again through another node). A flow of any other
/// frontend is left alone (`tunnel::admits` refuses such a packet). Not inlined: rare, and
/// its frame below its callers' (`to_backend`, `to_backend_stamped`, `pending`) is small.
#[inline(never)]
fn follow_entry_node(key: &FlowKey, f: &Flow, arrived_from: u8, pending: bool) {
    if u32::from(f.service_flags) & service_flags::TUNNEL_ONLY == 0 {
        return;
    }
    let reply_key = reply_key_of(key, f);
    let reply = if pending {
        PENDING.get_ptr_mut(&reply_key)
    } else {
        CONNTRACK.get_ptr_mut(&reply_key)
    };
    let Some(reply) = reply else {
        return;
    };
    // SAFETY: a map value, valid for this program run; a racing writer stores a peer too.
    unsafe {
        if reply_is_for(reply, key) && (*reply).tunnel_peer != arrived_from {
            (*reply).tunnel_peer = arrived_from;
        }
    }
}

/// A flow sent through the tunnel follows its task to the node index its backend names now:
/// the task (its ingress address, its connection) is the same, but its node's data-path
/// address changed, and with it the index (the old one is cleared after a grace, and the
/// flow would be dropped from then on under any policy). Once a tick, as the idle clock.
#[inline(always)]
fn follow_task_node(f: &mut Flow) {
    let Some(b) = serving_backend(f) else {
        return;
    };
    let peer = (b.flags >> backend_flags::PEER_SHIFT) as u8;
    if peer != 0 && peer != f.tunnel_peer {
        f.tunnel_peer = peer;
        // Its cached route was the old node's.
        f.egress_ifindex = 0;
    }
}

/// Whether the flow's backend is still the one in its slot (see `serving_backend`).
#[inline(always)]
fn backend_still_serves(f: &Flow) -> bool {
    serving_backend(f).is_some()
}

/// The flow's backend slot, if it still holds the flow's backend (a removed backend's slot
/// is cleared, or holds another backend once reused).
#[inline(always)]
fn serving_backend(f: &Flow) -> Option<&Backend> {
    BACKENDS.get(f.backend_id).filter(|b| {
        b.flags & backend_flags::IN_USE != 0
            && b.addr == *f.backend_addr()
            && b.port_be == f.backend_port_be()
    })
}

/// The key of the reply entry of the forward flow `f` (keyed `key`): the backend's packets
/// toward the client, or toward the node's address and port under a source remap.
#[inline(always)]
fn reply_key_of(key: &FlowKey, f: &Flow) -> FlowKey {
    let remapped = f.remaps_source();
    // SAFETY: plain old data; zeroed word by word, padding included (see `zero`).
    let mut slot = MaybeUninit::uninit();
    let reply_key: &mut FlowKey = unsafe { zero::zeroed_in(&mut slot) };
    reply_key.src = *f.backend_addr();
    reply_key.dst = if remapped {
        *f.remapped_source_addr()
    } else {
        key.src
    };
    let dport_be = if remapped {
        f.remapped_source_port_be()
    } else {
        key.sport_be
    };
    reply_key.set_ports(f.backend_port_be(), dport_be);
    reply_key.set_proto(key.proto);
    *reply_key
}

/// Removes the flow `key` (its forward entry `f`) from `table` (`CONNTRACK`, or `PENDING`
/// for an unconfirmed one): its reply entry first, if it is still this flow's, so client
/// port reuse never stalls (under full NAT the flow that replaces it takes the same node
/// port again), then the forward entry. Already gone is fine.
#[inline(always)]
fn forget<const N: usize>(
    table: &aya_ebpf::btf_maps::LruHashMap<FlowKey, Flow, N>,
    key: &FlowKey,
    f: &Flow,
) {
    let reply_key = reply_key_of(key, f);
    // Only this flow's own entry: another flow may hold the key now (see `claim_reply`).
    if let Some(reply) = table.get_ptr(&reply_key)
        && reply_is_for(reply, key)
    {
        let _ = table.remove(&reply_key);
    }
    let _ = table.remove(key);
}

/// Whether the entry `reply` (a map value, valid for this program run) is a reply entry of
/// a flow keyed `key`: the frontend it restores is `key`'s destination and, when it restores
/// the client too (a remapped source, full NAT), the client is `key`'s source. Under full NAT
/// another client's flow takes an ended flow's node port, and so its reply key.
#[inline(always)]
fn reply_is_for(reply: *const Flow, key: &FlowKey) -> bool {
    // SAFETY: the caller's map value, read field by field.
    unsafe {
        let r = &*reply;
        r.kind == flow_kind::REPLY
            && *r.frontend_addr() == key.dst
            && r.frontend_port_be() == key.dport_be
            && (!r.restores_client()
                || (*r.client_addr() == key.src && r.client_port_be() == key.sport_be))
    }
}

/// Refreshes an entry's idle clock, at most once a second so a busy flow does not write its
/// cache line on every packet; a refresh also drops the cached route, so routes are looked up
/// again about once a second. Called once per tick at most (see `seen_tick`). Whether the
/// clock moved.
#[inline(always)]
fn refresh(f: &mut Flow, now: u64, tick: u32) -> bool {
    f.seen_tick = tick;
    let moves = now.wrapping_sub(f.last_seen_ns) > LAST_SEEN_GRANULARITY_NS;
    if moves {
        f.last_seen_ns = now;
        f.egress_ifindex = 0;
    }
    moves
}

/// Refreshes the idle clock of a reply entry (`reply_key`, in `PENDING` if `pending`; see
/// `refresh`) and, when it moves, of its flow's forward entry: the forward entry's clock is
/// the flow's (its idle limit, its port's hold), and a backend talking to a quiet client (a
/// stream pushed to it) keeps the flow alive as the client's packets do (but for an
/// unconfirmed TCP flow). The forward entry is looked up only then, about once a second.
#[inline(always)]
pub fn touch_reply(reply_key: &FlowKey, flow: *mut Flow, pending: bool, tick: u32) {
    // SAFETY: valid for this program run.
    let f = unsafe { &mut *flow };
    if f.seen_tick == tick {
        return;
    }
    let now = now_ns();
    // An unconfirmed TCP flow lives by its client's packets: a backend sending its SYN-ACK
    // again to a client that never answers (a spoofed SYN's) keeps neither the flow nor its
    // port (see `Held::limit_ns`).
    if refresh(f, now, tick)
        && !(pending && reply_key.proto == proto::TCP)
        && let Some(forward) = forward_of(reply_key, f, pending)
    {
        // SAFETY: valid for this program run. The clock, and the route cache with it as
        // `refresh` drops it: with its clock moved here, the forward direction's own packets
        // do not move it, and a client that sends less than once a second would keep its
        // first route for good. The tick is its own packets' business.
        let forward = unsafe { &mut *forward };
        if now.wrapping_sub(forward.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            forward.last_seen_ns = now;
            forward.egress_ifindex = 0;
        }
    }
}

/// Whether the reply entry `flow` (at `reply_key`, of `PENDING` if `pending`), stamped
/// before the frontends last changed, still answers for a frontend. A frontend removed ends
/// its flows (their clients' packets reach no frontend) but leaves their reply entries until
/// they age out; its backend endpoint may since lead to one other frontend, whose new flows
/// write no reply entry (`replies_without_entry`), so a client reusing its port toward that
/// one would get its replies from the removed frontend. Still there: the entry is stamped
/// current, and asks again after the next change. Gone: the entry goes, and the reply is
/// translated as one without an entry. Not inlined: once per flow and change of frontends.
#[inline(never)]
pub fn reply_frontend_stands(
    reply_key: &FlowKey,
    flow: *mut Flow,
    pending: bool,
    generation: u32,
) -> bool {
    // SAFETY: valid for this program run.
    let f = unsafe { &mut *flow };
    let frontend = EndpointKey::new(*f.frontend_addr(), f.frontend_port_be(), reply_key.proto);
    if FRONTENDS.get_ptr(&frontend).is_some() {
        f.frontend_gen = generation;
        return true;
    }
    let _ = if pending {
        PENDING.remove(reply_key)
    } else {
        CONNTRACK.remove(reply_key)
    };
    false
}

/// Whether the reply entry `flow` (at `reply_key`, of `PENDING` if `pending`) answers for a
/// frontend still there: stamped since the frontends last changed (`generation`), or its
/// frontend asked (`reply_frontend_stands`, which removes it if gone). Asked for a reply
/// and for an ICMP error about its flow alike.
#[inline(always)]
pub fn reply_entry_stands(
    reply_key: &FlowKey,
    flow: *mut Flow,
    pending: bool,
    generation: u32,
) -> bool {
    // SAFETY: valid for this program run.
    let stamped = unsafe { (*flow).frontend_gen };
    stamped == generation || reply_frontend_stands(reply_key, flow, pending, generation)
}

/// Moves a forward flow's TCP state on (its idle clock was refreshed by `lookup_forward`).
#[inline(always)]
pub fn touch_forward(flow: *mut Flow, is_tcp: bool, tcp_flags: u8) {
    // SAFETY: see lookup_forward.
    let f = unsafe { &mut *flow };
    if is_tcp {
        let next = tcp_state::next(f.tcp_state, tcp_flags, true);
        if next != f.tcp_state {
            f.tcp_state = next;
        }
    }
}

/// Whether a packet from this endpoint may be a reply: false only if it is no backend
/// endpoint `lbd` wrote since it made the filter (see `REPLY_FILTER`).
#[inline(always)]
pub fn may_be_reply(addr: &Addr, port_be: u16, proto: u8) -> bool {
    filter_slot_set(&REPLY_FILTER, addr, port_be, proto)
}

/// Whether this endpoint may be a frontend or a tracked flow's destination: false only if
/// it is no frontend `lbd` wrote since it made the filter (see `FORWARD_FILTER`).
#[inline(always)]
pub fn may_be_frontend(addr: &Addr, port_be: u16, proto: u8) -> bool {
    filter_slot_set(&FORWARD_FILTER, addr, port_be, proto)
}

#[inline(always)]
fn filter_slot_set(filter: &EndpointFilter, addr: &Addr, port_be: u16, proto: u8) -> bool {
    let (word, bit) = endpoint_filter::position(endpoint_filter_slot(addr, port_be, proto));
    match filter.get(word) {
        Some(w) => w & bit != 0,
        None => true,
    }
}

/// The frontends' generation now (see `FRONTEND_GEN`). Read before `FRONTENDS` is, so a
/// flow is never stamped with a generation newer than what its frontend was checked against.
#[inline(always)]
pub fn frontend_gen() -> u32 {
    FRONTEND_GEN.get(0).copied().unwrap_or(0)
}

/// A backend's FIN or RST moves its flow's state as the client's does (`tcp_state::next`,
/// on the forward entry, whose state and idle limit decide the flow's life): its FIN closes
/// its side, after the client's the flow (the short timeout; a SYN on its tuple starts a new
/// flow), and its RST ends it. `reply_key` is the backend's packet's tuple, `reply` its
/// entry (in `PENDING` if `pending`; see `forward_of`).
#[inline(always)]
pub fn backend_closing(reply_key: &FlowKey, reply: &Flow, pending: bool, tcp_flags: u8) {
    let Some(forward) = forward_of(reply_key, reply, pending) else {
        return;
    };
    // SAFETY: valid for this program run.
    let f = unsafe { &mut *forward };
    let next = tcp_state::next(f.tcp_state, tcp_flags, false);
    if next != f.tcp_state {
        // The first to close with a FIN keeps TIME_WAIT (see `Flow::port_hold_s`).
        if next == tcp_state::BACKEND_CLOSED {
            f.backend_closed_first = 1;
        }
        f.tcp_state = next;
        // The idle clock counts from the close: the client may have been quiet for longer
        // (a server closing an idle keep-alive connection), and its FIN must still find the
        // flow.
        f.last_seen_ns = now_ns();
    }
}

/// The forward entry of the flow reply entry `reply` (keyed `reply_key`, in `PENDING` if
/// `pending`, where the forward entry is too) belongs to, if it is still that flow's (see
/// `owns_reply`). Its key is built in per-CPU scratch memory.
#[inline(always)]
fn forward_of(reply_key: &FlowKey, reply: &Flow, pending: bool) -> Option<*mut Flow> {
    let forward_key = KEY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: map values valid for this program run; the scratch key is this CPU's, its
    // padding never written (zero as created).
    unsafe {
        let k = &mut *forward_key;
        write_forward_key(k, reply_key, reply);
        let forward = if pending {
            PENDING.get_ptr_mut(k)
        } else {
            CONNTRACK.get_ptr_mut(k)
        }?;
        owns_reply(&*forward, reply_key, reply).then_some(forward)
    }
}

/// The entry at `key`, confirmed or (then `true`) not.
#[inline(always)]
pub fn lookup_entry(key: &FlowKey) -> Option<(*mut Flow, bool)> {
    match CONNTRACK.get_ptr_mut(key) {
        Some(flow) => Some((flow, false)),
        None => Some((PENDING.get_ptr_mut(key)?, true)),
    }
}

/// The reply entry of a packet from a backend, confirmed or (then `true`) not.
#[inline(always)]
pub fn lookup_reply(key: &FlowKey) -> Option<(*mut Flow, bool)> {
    let (flow, pending) = lookup_entry(key)?;
    // SAFETY: valid for this program run.
    if unsafe { (*flow).kind } != flow_kind::REPLY {
        return None;
    }
    Some((flow, pending))
}
