//! The connection table: the backend a flow was given, its TCP state and idle time.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    Addr,
    limits::{LAST_SEEN_GRANULARITY_NS, TCP_CLOSING_TIMEOUT_S, TCP_SYN_TIMEOUT_S},
    maps::{Flow, FlowKey, Service, flow_kind, proto, tcp_state},
};

use crate::{
    maps::CONNTRACK,
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
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
/// to it. A SYN on a closing flow starts a new one (client port reuse must never stall).
#[inline(always)]
pub fn lookup_forward(key: &FlowKey, tcp_flags: u8, now: u64) -> Option<*mut Flow> {
    let flow = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run; concurrent writers only touch
    // last_seen/tcp_state words, and a torn read of them is harmless.
    let f = unsafe { &mut *flow };
    if f.kind != flow_kind::FORWARD {
        return None;
    }
    if now.wrapping_sub(f.last_seen_ns) > idle_limit_ns(f) {
        return None;
    }
    if key.proto == proto::TCP
        && tcp_flags & TCP_SYN != 0
        && tcp_flags & TCP_ACK == 0
        && f.tcp_state == tcp_state::CLOSING
    {
        return None;
    }
    Some(flow)
}

/// Moves a forward flow's TCP state on and refreshes its idle clock (at most once a second, so
/// a busy flow does not write its cache line on every packet).
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
    }
}

/// What a new flow was given.
pub struct Chosen {
    pub backend_id: u32,
    pub addr: Addr,
    pub port_be: u16,
}

/// Records a new flow: the reply entry first, so the backend's first answer finds it.
/// `Err` if the table refused the insert.
#[inline(always)]
pub fn insert(
    key: &FlowKey,
    svc: &Service,
    chosen: &Chosen,
    tcp_flags: u8,
    now: u64,
) -> Result<(), i32> {
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
    let reply_key = FlowKey {
        src: chosen.addr,
        dst: key.src,
        sport_be: chosen.port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        _pad: [0; 3],
    };
    // One value, written twice: the BPF stack is small.
    let mut flow = Flow {
        nat_addr: key.dst,
        nat_port_be: key.dport_be,
        kind: flow_kind::REPLY,
        tcp_state: tcp_state::NONE,
        backend_id: chosen.backend_id,
        service_id: svc.id,
        timeout_s,
        last_seen_ns: now,
    };
    CONNTRACK.insert(&reply_key, &flow, 0)?;
    flow.nat_addr = chosen.addr;
    flow.nat_port_be = chosen.port_be;
    flow.kind = flow_kind::FORWARD;
    flow.tcp_state = state;
    CONNTRACK.insert(key, &flow, 0)
}

/// The reply entry of a packet from a backend.
#[inline(always)]
pub fn lookup_reply(key: &FlowKey) -> Option<*const Flow> {
    let flow = CONNTRACK.get_ptr(key)?;
    // SAFETY: valid for this program run.
    if unsafe { (*flow).kind } != flow_kind::REPLY {
        return None;
    }
    Some(flow)
}
