//! Who holds a reply key: the flow whose reply entry it is, while it is alive (or its backend
//! may still hold the port), how a new flow claims a key from an ended one, and how a TCP
//! connection that came in another way takes its key from its own old flow. Full NAT's port
//! search and the confirmation of a flow ask it.

use super::*;

/// How long a flow holds its reply key against a new flow's claim: between its idle limit
/// and its port hold (`Flow::port_hold_s`), as a mask of the difference to take off the
/// hold. A number in one register, not an enum: the verifier follows the port search's one
/// path for both of its passes, and a non-inlined callee gets it whole.
#[derive(Clone, Copy)]
pub struct Held(u64);

impl Held {
    /// While the flow is alive (its idle limit; shorter for some unconfirmed flows, see
    /// `limit_ns`): confirmation, and the port search's second pass.
    pub const WHILE_ALIVE: Held = Held(u64::MAX);
    /// A closed TCP flow's until its backend's TIME_WAIT may be over (`Flow::port_hold_s`):
    /// the reply key holds the source port the backend sees (the client's own under NAT, a
    /// node port under full NAT).
    pub const UNTIL_BACKEND_FORGETS: Held = Held(0);

    /// Full NAT's port search, attempt `attempt` of two passes over the same ports:
    /// `UNTIL_BACKEND_FORGETS` in the first, `WHILE_ALIVE` in the second (computed without a
    /// branch).
    #[inline(always)]
    pub(super) fn search_pass(attempt: u64) -> Held {
        let first_pass_left = (u64::from(FULLNAT_PORT_ATTEMPTS) - 1).wrapping_sub(attempt);
        Held((first_pass_left as i64 >> 63) as u64)
    }

    /// The hold of forward entry `f` (of `PENDING` if `unconfirmed`), in nanoseconds. While
    /// alive, an unconfirmed TCP flow on a source port given here (`remaps_source`: full
    /// NAT's, or NAT's on a clash) holds it only `UNCONFIRMED_TCP_PORT_HOLD_S` after its
    /// client's last packet: a flood of SYNs (or of ACKs, placed mid-flow) would hold every
    /// port of full NAT's range for the SYN timeout (or until the backend's RST). A flow
    /// whose port is taken so is over: `pending` finds its reply key another's. A client's
    /// own port is never taken.
    #[inline(always)]
    fn limit_ns(self, f: &Flow, unconfirmed: bool) -> u64 {
        if unconfirmed
            && self.0 == Self::WHILE_ALIVE.0
            && f.tcp_state != tcp_state::NONE
            && f.remaps_source()
        {
            return u64::from(UNCONFIRMED_TCP_PORT_HOLD_S) * 1_000_000_000;
        }
        // The port hold is never shorter than the idle limit.
        let hold = port_hold_ns(f);
        hold - ((hold - idle_limit_ns(f)) & self.0)
    }
}

/// Writes the unconfirmed reply entry `reply_key`, unless a flow holds it (`held`),
/// confirmed or not; an entry whose flow has ended (forward entry gone, idle, or mapped
/// elsewhere) is taken over. `confirmed` is set to who held the key in `CONNTRACK` (an
/// `Owner`): an ended flow's entry there stays until the caller removes it
/// (`forget_ended_reply`), at a shallower depth than the port search's. (Written to memory
/// at once: in the port search, this frame is the deepest of the program's stack, with no
/// room for another register spilled.)
#[inline(always)]
pub(super) fn claim_reply(
    reply_key: &FlowKey,
    flow: &Flow,
    now: u64,
    held: Held,
    confirmed: &mut u16,
) -> bool {
    let noexist = u64::from(BPF_NOEXIST);
    let owner = confirmed_reply_owner(reply_key, now, held);
    *confirmed = owner;
    owner != Owner::ALIVE
        && (PENDING.insert(reply_key, flow, noexist).is_ok()
            || (!reply_owner_alive(reply_key, now, true, held) && {
                let _ = PENDING.remove(reply_key);
                // NOEXIST again: of two CPUs taking over the same entry, one wins.
                PENDING.insert(reply_key, flow, noexist).is_ok()
            }))
}

/// After `claim_reply` claimed `reply_key` over an entry of `CONNTRACK` whose flow had ended
/// (`confirmed`): that entry goes. The replies on the key look in `CONNTRACK` first
/// (`lookup_reply`), and would go to the ended flow's client until the flow that took the
/// key over is confirmed.
#[inline(always)]
pub(super) fn forget_ended_reply(confirmed: u16, reply_key: &FlowKey) {
    if confirmed == Owner::ENDED {
        let _ = CONNTRACK.remove(reply_key);
    }
}

/// Frees `reply_key` for a new flow (as `insert` built it in `FLOW_SCRATCH`, its TCP state
/// after its first packet `state`; `insert` then claims the key) whose TCP packet past its
/// SYN (`ESTABLISHED` or `CLOSING`) came in another way than every flow holding the key:
/// the same client port and task, so the same connection as the task sees it, once through
/// the mesh tunnel to the task's delivery frontend and once straight to a frontend of this
/// node. A client whose entry node failed or drained comes so to the task's own node, and
/// back; another source port would only earn a RST. The old flow's reply and forward
/// entries go, in both tables, so its own way in takes the connection back the same way.
/// Nothing changes if a holder in either table came the same way (or under another source
/// port): not the same connection. (Not inlined, and asking the scratch for the flow's
/// service, not `insert`: its frame sits where the port search's callback does, below
/// `insert`'s, with the stack at its limit, where `insert` has no room for one more value.)
#[inline(never)]
pub(super) fn take_over_moved(reply_key: &FlowKey, state: u8) {
    if state < tcp_state::ESTABLISHED {
        return;
    }
    let Some(flow) = FLOW_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, written by `insert` in this program run.
    let tunnel_only = u32::from(unsafe { (*flow).service_flags }) & service_flags::TUNNEL_ONLY != 0;
    let confirmed = holder(&CONNTRACK, reply_key, tunnel_only);
    if confirmed == Holder::SAME_WAY {
        return;
    }
    let pending = holder(&PENDING, reply_key, tunnel_only);
    if pending == Holder::SAME_WAY {
        return;
    }
    if confirmed == Holder::OTHER_WAY {
        forget_moved(&CONNTRACK, reply_key);
    }
    if pending == Holder::OTHER_WAY {
        forget_moved(&PENDING, reply_key);
    }
}

/// Which way the holder of a reply key came in, relative to a new flow (see `holder`): a
/// number, as `Owner` is.
struct Holder;

impl Holder {
    const NONE: u8 = 0;
    /// The same way as the new flow, or under a remapped source: not the same connection.
    const SAME_WAY: u8 = 1;
    /// Through the tunnel where the new flow came straight, or the other way round.
    const OTHER_WAY: u8 = 2;
}

/// Who holds `reply_key` in `table` (a `Holder`) for a new flow that came through the
/// tunnel (`tunnel_only`) or not: its service's `TUNNEL_ONLY` against `tunnel_only`.
#[inline(always)]
fn holder<const N: usize>(
    table: &aya_ebpf::btf_maps::LruHashMap<FlowKey, Flow, N>,
    reply_key: &FlowKey,
    tunnel_only: bool,
) -> u8 {
    let Some(reply) = table.get_ptr(reply_key) else {
        return Holder::NONE;
    };
    // SAFETY: a map value, valid for this program run.
    let r = unsafe { &*reply };
    let through_tunnel = u32::from(r.service_flags) & service_flags::TUNNEL_ONLY != 0;
    // A restored client port is never 0 (`restores_client`, in one compare, not four).
    let remapped = r.snat_port_be != 0;
    if r.kind != flow_kind::REPLY || remapped || through_tunnel == tunnel_only {
        return Holder::SAME_WAY;
    }
    Holder::OTHER_WAY
}

/// Removes the reply entry at `reply_key` of `table` and its flow's forward entry (if that
/// is still the flow it belongs to, see `owns_reply`).
#[inline(always)]
fn forget_moved<const N: usize>(
    table: &aya_ebpf::btf_maps::LruHashMap<FlowKey, Flow, N>,
    reply_key: &FlowKey,
) {
    if let Some(reply) = table.get_ptr(reply_key)
        && let Some(forward_key) = KEY_SCRATCH.get_ptr_mut(0)
    {
        // SAFETY: map values valid for this program run; the scratch key is this CPU's (see
        // `owner`).
        unsafe {
            let r = &*reply;
            write_forward_key(&mut *forward_key, reply_key, r);
            let k = &*forward_key;
            if let Some(forward) = table.get_ptr(k)
                && owns_reply(&*forward, reply_key, r)
            {
                let _ = table.remove(k);
            }
        }
    }
    let _ = table.remove(reply_key);
}

/// Who holds a reply key in a table (see `owner`): a number, not an enum, to come back
/// from a function that is not inlined.
pub(super) struct Owner;

impl Owner {
    /// No entry.
    pub(super) const NONE: u16 = 0;
    /// An entry whose flow has ended (or no longer maps to it).
    pub(super) const ENDED: u16 = 1;
    /// An entry of a flow that still holds it.
    pub(super) const ALIVE: u16 = 2;
}

/// Whether the flow that wrote the reply entry at `reply_key` of `PENDING` (if `pending`) or
/// `CONNTRACK` still holds it: its forward entry (in the same table) exists, is not idle
/// past its limit (as `held` measures it), and still maps to this reply key.
#[inline(always)]
pub(super) fn reply_owner_alive(reply_key: &FlowKey, now: u64, pending: bool, held: Held) -> bool {
    if pending {
        pending_reply_owner_alive(reply_key, now, held)
    } else {
        confirmed_reply_owner(reply_key, now, held) == Owner::ALIVE
    }
}

/// Who holds `reply_key` in `CONNTRACK` (an `Owner`). Not inlined (nor is its `PENDING`
/// twin, each with one table, so their frames stay small): they run deep in the new-flow
/// path.
#[inline(never)]
pub(super) fn confirmed_reply_owner(reply_key: &FlowKey, now: u64, held: Held) -> u16 {
    owner(&CONNTRACK, reply_key, now, held, false)
}

#[inline(never)]
pub(super) fn pending_reply_owner_alive(reply_key: &FlowKey, now: u64, held: Held) -> bool {
    owner(&PENDING, reply_key, now, held, true) == Owner::ALIVE
}

/// How old an unconfirmed reply entry without its forward entry must be to count as its
/// flow's end: a new flow's two entries are written within microseconds, and the clock
/// (`now_ns`) moves a tick at a time (10 ms at HZ=100).
const ORPHAN_REPLY_AFTER_NS: u64 = 20_000_000;

/// Who holds `reply_key` in `table` (an `Owner`), its forward key built in per-CPU scratch
/// memory: the flow whose reply entry it is, if its forward entry (in the same table)
/// exists (or, unconfirmed, the reply entry is younger than `ORPHAN_REPLY_AFTER_NS`), is not
/// idle past its limit (as `held` measures it; `unconfirmed`: the table is
/// `PENDING`), and still maps to this key.
#[inline(always)]
pub(super) fn owner<const N: usize>(
    table: &aya_ebpf::btf_maps::LruHashMap<FlowKey, Flow, N>,
    reply_key: &FlowKey,
    now: u64,
    held: Held,
    unconfirmed: bool,
) -> u16 {
    let Some(reply) = table.get_ptr(reply_key) else {
        return Owner::NONE;
    };
    let Some(forward_key) = KEY_SCRATCH.get_ptr_mut(0) else {
        return Owner::ALIVE;
    };
    // SAFETY: map values valid for this program run; the scratch key is this CPU's. Its
    // padding is never written, so it stays zero as the map was created.
    unsafe {
        let r = &*reply;
        if r.kind != flow_kind::REPLY {
            return Owner::ALIVE;
        }
        let k = &mut *forward_key;
        write_forward_key(k, reply_key, r);
        let Some(forward) = table.get_ptr(k) else {
            // A new flow may be writing its forward entry on another CPU right now (its
            // reply entry goes in first, see `insert`): taken over, both flows would send
            // from one node port. Only a reply entry a while old has lost its flow.
            let age_ns = now.wrapping_sub(r.last_seen_ns) as i64;
            return if unconfirmed && age_ns < ORPHAN_REPLY_AFTER_NS as i64 {
                Owner::ALIVE
            } else {
                Owner::ENDED
            };
        };
        let f = &*forward;
        let limit_ns = held.limit_ns(f, unconfirmed);
        // The flow's clock: either direction moves it (`touch_reply`), but only its client
        // an unconfirmed TCP flow's.
        // Signed: a stamp another CPU wrote after `now` was read is no idle time (see
        // `liveness`).
        if now.wrapping_sub(f.last_seen_ns) as i64 <= limit_ns as i64 && owns_reply(f, reply_key, r)
        {
            Owner::ALIVE
        } else {
            Owner::ENDED
        }
    }
}

/// Writes into `k` the key of the forward entry that reply entry `reply` (keyed `reply_key`)
/// belongs to: client to frontend, the client restored under a source remap.
#[inline(always)]
pub(super) fn write_forward_key(k: &mut FlowKey, reply_key: &FlowKey, reply: &Flow) {
    let remapped = reply.restores_client();
    k.src = if remapped {
        *reply.client_addr()
    } else {
        reply_key.dst
    };
    let sport_be = if remapped {
        reply.client_port_be()
    } else {
        reply_key.dport_be
    };
    k.dst = *reply.frontend_addr();
    k.set_ports(sport_be, reply.frontend_port_be());
    k.set_proto(reply_key.proto);
}

/// Whether forward entry `f` is the flow reply entry `reply` (keyed `reply_key`) belongs to:
/// another flow may have taken the key since (see `claim_reply`).
#[inline(always)]
pub(super) fn owns_reply(f: &Flow, reply_key: &FlowKey, reply: &Flow) -> bool {
    f.kind == flow_kind::FORWARD
        && *f.backend_addr() == reply_key.src
        && f.backend_port_be() == reply_key.sport_be
        && (!reply.restores_client() || f.remapped_source_port_be() == reply_key.dport_be)
}
