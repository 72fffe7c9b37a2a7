//! The connection table: the backend a flow was given, its TCP state and idle time.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    Addr,
    hash::flow_hash,
    limits::{
        FULLNAT_PORT_ATTEMPTS, FULLNAT_PORT_MAX, FULLNAT_PORT_MIN, LAST_SEEN_GRANULARITY_NS,
        TCP_CLOSING_TIMEOUT_S, TCP_SYN_TIMEOUT_S,
    },
    maps::{Flow, FlowKey, Service, backend_flags, flow_kind, proto, service_flags, tcp_state},
    stats::StatSlot,
};

use crate::{
    maps::{BACKENDS, CONNTRACK, FLOW_SCRATCH},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::count,
};

/// The clock of idle timeouts. The coarse clock (a tick's resolution) is plenty for timeouts
/// of seconds and cheaper than the precise one on every packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn idle_limit_ns(flow: &Flow) -> u64 {
    let seconds = match flow.tcp_state {
        tcp_state::SYN_SENT => TCP_SYN_TIMEOUT_S,
        tcp_state::CLOSING => TCP_CLOSING_TIMEOUT_S,
        _ => flow.timeout_s,
    };
    u64::from(seconds) * 1_000_000_000
}

/// The tracked forward flow of a client packet, if it is still alive and this packet belongs
/// to it. A SYN on a closing flow, or any packet of an expired one, starts a new flow; so does
/// any packet of a flow whose backend left the service when the service moves such flows.
/// The old flow's reply entry is removed first, so client port reuse never stalls (under full
/// NAT the new flow takes the same node port again) and the old backend's late packets are
/// not translated.
#[inline(always)]
pub fn lookup_forward(key: &FlowKey, svc: &Service, tcp_flags: u8, now: u64) -> Option<*mut Flow> {
    let flow = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; concurrent writers only touch
    // last_seen/tcp_state words, and a torn read of them is harmless.
    let f = unsafe { &mut *flow };
    if f.kind != flow_kind::FORWARD {
        return None;
    }
    let reopened = key.proto == proto::TCP
        && tcp_flags & TCP_SYN != 0
        && tcp_flags & TCP_ACK == 0
        && f.tcp_state == tcp_state::CLOSING;
    if reopened || now.wrapping_sub(f.last_seen_ns) > idle_limit_ns(f) {
        forget_reply(key, f);
        return None;
    }
    if svc.flags & service_flags::MOVE_ON_REMOVAL != 0 && !backend_still_serves(f) {
        forget_reply(key, f);
        count(StatSlot::FlowMoved);
        return None;
    }
    Some(flow)
}

/// Whether the flow's backend is still the one in its slot (a removed backend's slot is
/// cleared, or holds another backend once reused).
#[inline(always)]
fn backend_still_serves(f: &Flow) -> bool {
    match BACKENDS.get(f.backend_id) {
        Some(b) => {
            b.flags & backend_flags::IN_USE != 0
                && b.addr == f.nat_addr
                && b.port_be == f.nat_port_be
        }
        None => false,
    }
}

/// Removes the reply entry of the forward flow `f` (keyed `key`). Already gone is fine.
#[inline(always)]
fn forget_reply(key: &FlowKey, f: &Flow) {
    let fullnat = f.snat_addr != Addr::UNSPECIFIED;
    let reply_key = FlowKey {
        src: f.nat_addr,
        dst: if fullnat { f.snat_addr } else { key.src },
        sport_be: f.nat_port_be,
        dport_be: if fullnat {
            f.snat_port_be
        } else {
            key.sport_be
        },
        proto: key.proto,
        _pad: [0; 3],
    };
    let _ = CONNTRACK.remove(&reply_key);
}

/// Refreshes a reply entry's idle clock (at most once a second): a full-NAT port is only
/// reclaimed from an entry that has really gone quiet. Drops the cached route like
/// `touch_forward`.
#[inline(always)]
pub fn touch_reply(flow: *mut Flow, now: u64) {
    // SAFETY: valid for this program run.
    unsafe {
        if now.wrapping_sub((*flow).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*flow).last_seen_ns = now;
            (*flow).egress_ifindex = 0;
        }
    }
}

/// Moves a forward flow's TCP state on and refreshes its idle clock (at most once a second, so
/// a busy flow does not write its cache line on every packet). A refresh also drops the
/// cached route, so routes are looked up again about once a second.
#[inline(always)]
pub fn touch_forward(flow: *mut Flow, is_tcp: bool, tcp_flags: u8, now: u64) {
    // SAFETY: see lookup_forward.
    let f = unsafe { &mut *flow };
    if is_tcp {
        let next = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            tcp_state::CLOSING
        } else if f.tcp_state == tcp_state::SYN_SENT && tcp_flags & TCP_SYN == 0 {
            tcp_state::ESTABLISHED
        } else {
            f.tcp_state
        };
        if next != f.tcp_state {
            f.tcp_state = next;
        }
    }
    if now.wrapping_sub(f.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        f.last_seen_ns = now;
        f.egress_ifindex = 0;
    }
}

/// What a flow was given: its backend and, under full NAT, the node address and port that
/// replace the client's (`snat_addr` unspecified otherwise).
pub struct Chosen {
    pub backend_id: u32,
    pub addr: Addr,
    pub port_be: u16,
    pub snat_addr: Addr,
    pub snat_port_be: u16,
}

/// Why a new flow could not be recorded.
pub enum InsertError {
    /// The table refused the insert.
    Full,
    /// Full NAT: every source port tried is taken by a live flow.
    NoPort,
}

/// Records a new flow: the reply entry first, so the backend's first answer finds it. Under
/// full NAT, picks the source port here: the first of a few ports (from the flow's hash) whose
/// reply entry is free or idle, so concurrent flows of one client never collide.
#[inline(always)]
pub fn insert(
    key: &FlowKey,
    svc: &Service,
    chosen: &mut Chosen,
    tcp_flags: u8,
    now: u64,
) -> Result<(), InsertError> {
    let is_tcp = key.proto == proto::TCP;
    let state = if !is_tcp {
        tcp_state::NONE
    } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
        tcp_state::SYN_SENT
    } else {
        // Mid-flow packet re-balanced after its entry was lost (Maglev only).
        tcp_state::ESTABLISHED
    };
    let timeout_s = if is_tcp {
        svc.tcp_timeout_s
    } else {
        svc.udp_timeout_s
    };
    let fullnat = svc.flags & service_flags::FULLNAT != 0;
    let mut reply_key = FlowKey {
        src: chosen.addr,
        dst: key.src,
        sport_be: chosen.port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        _pad: [0; 3],
    };
    // One value, written twice, in per-CPU scratch memory: the BPF stack is small.
    let Some(flow) = FLOW_SCRATCH.get_ptr_mut(0) else {
        return Err(InsertError::Full);
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let flow = unsafe { &mut *flow };
    *flow = Flow {
        nat_addr: key.dst,
        snat_addr: Addr::UNSPECIFIED,
        nat_port_be: key.dport_be,
        snat_port_be: 0,
        kind: flow_kind::REPLY,
        tcp_state: tcp_state::NONE,
        egress_redirect: 0,
        _pad: 0,
        backend_id: chosen.backend_id,
        service_id: svc.id,
        timeout_s,
        egress_ifindex: 0,
        last_seen_ns: now,
        egress_smac: [0; 6],
        egress_dmac: [0; 6],
        _pad2: [0; 4],
    };
    if fullnat {
        flow.snat_addr = key.src;
        flow.snat_port_be = key.sport_be;
        reply_key.dst = chosen.snat_addr;
        let range = u32::from(FULLNAT_PORT_MAX - FULLNAT_PORT_MIN) + 1;
        let start = flow_hash(key);
        let mut found = false;
        for attempt in 0..FULLNAT_PORT_ATTEMPTS {
            let port = FULLNAT_PORT_MIN + (start.wrapping_add(attempt) % range) as u16;
            reply_key.dport_be = port.to_be();
            if CONNTRACK
                .insert(&reply_key, &*flow, u64::from(BPF_NOEXIST))
                .is_ok()
                || reclaim(&reply_key, flow, now)
            {
                chosen.snat_port_be = reply_key.dport_be;
                found = true;
                break;
            }
        }
        if !found {
            return Err(InsertError::NoPort);
        }
    } else {
        CONNTRACK
            .insert(&reply_key, &*flow, 0)
            .map_err(|_| InsertError::Full)?;
    }
    flow.nat_addr = chosen.addr;
    flow.nat_port_be = chosen.port_be;
    flow.snat_addr = chosen.snat_addr;
    flow.snat_port_be = chosen.snat_port_be;
    flow.kind = flow_kind::FORWARD;
    flow.tcp_state = state;
    CONNTRACK
        .insert(key, &*flow, 0)
        .map_err(|_| InsertError::Full)
}

/// Takes over a full-NAT reply entry whose flow has been idle past its timeout.
#[inline(always)]
fn reclaim(key: &FlowKey, flow: &Flow, now: u64) -> bool {
    let Some(existing) = CONNTRACK.get_ptr(key) else {
        return false;
    };
    // SAFETY: valid for this program run.
    let (last_seen, timeout_s) = unsafe { ((*existing).last_seen_ns, (*existing).timeout_s) };
    if now.wrapping_sub(last_seen) <= u64::from(timeout_s) * 1_000_000_000 {
        return false;
    }
    CONNTRACK.insert(key, flow, 0).is_ok()
}

/// The reply entry of a packet from a backend.
#[inline(always)]
pub fn lookup_reply(key: &FlowKey) -> Option<*mut Flow> {
    let flow = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: valid for this program run.
    if unsafe { (*flow).kind } != flow_kind::REPLY {
        return None;
    }
    Some(flow)
}
