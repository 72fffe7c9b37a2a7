//! Socket-level balancing: cgroup `sock_addr` programs for clients that never cross an
//! interface XDP runs on (processes on the node, containers on it). `connect` and UDP
//! `sendmsg` aimed at a frontend are sent to a backend chosen from the service's own table;
//! `getpeername` and UDP `recvmsg` give the frontend back. The rewrite happens once per
//! `connect` (or datagram sent without one), so the packets themselves carry the backend's
//! address: nothing per packet, no NAT state, and the backend sees the client's address.
//!
//! Only an exact frontend match (address, port, protocol in `FRONTENDS`) from a socket of a
//! namespace listed in `SOCK_NETNS` is touched: every other socket call is allowed unchanged.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{
    Addr,
    maps::{
        ANY_PORT, EndpointKey, FlowKey, Service, SockPeer, SockReverse, SockReverseKey,
        backend_flags, proto, service_flags, sock_netns,
    },
};

use crate::{
    conntrack::{Chosen, now_ns},
    maps::{
        BACKENDS, FRONTENDS, SOCK_NETNS, SOCK_PEER, SOCK_REVERSE, SOCK_SEEN, SOCK_STATS,
        TUNNEL_PEERS,
    },
    select,
};

/// The kernel goes on with the call (with the address as the program left it).
const ALLOW: i32 = 1;
/// The kernel fails the call (with EPERM, unless `refuse` set another error).
const REFUSE: i32 = 0;
/// `ECONNREFUSED` (Linux).
const ECONNREFUSED: i32 = 111;

/// Fails the call with ECONNREFUSED, what a client expects of a service with nothing to
/// answer: the kernel's own error for a refusing program, EPERM, reads as a firewall's or a
/// sandbox's denial, and clients' retry logic treats it so.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: a helper the kernel offers cgroup sock_addr programs that may refuse (5.18+).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

/// What the socket is doing, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `connect` (TCP, or UDP made connected).
    Connect,
    /// `sendmsg`/`sendto` with an address on an unconnected UDP socket.
    Datagram,
}

#[cgroup_sock_addr(connect4)]
pub fn meshlb_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, false, Call::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn meshlb_connect6(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, true, Call::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn meshlb_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, false, Call::Datagram)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn meshlb_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, true, Call::Datagram)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn meshlb_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, false, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn meshlb_recvmsg6(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, true, true)
}

#[cgroup_sock_addr(getpeername4)]
pub fn meshlb_getpeername4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, false, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn meshlb_getpeername6(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx, true, false)
}

/// A socket call aimed at a frontend goes to a backend of its service; anything else is left
/// alone. Refused (ECONNREFUSED) when the service has no usable backend, as the XDP path
/// refuses a SYN (with a RST) or a datagram (with ICMP port unreachable).
#[inline(always)]
fn to_backend(ctx: &SockAddrContext, v6: bool, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context fields the verifier allows these programs to read.
    let (protocol, user_port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    if protocol != u32::from(proto::TCP) && protocol != u32::from(proto::UDP) {
        return ALLOW;
    }
    // SAFETY: a helper the kernel offers sock_addr programs (5.7+).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(scopes) = SOCK_NETNS.get_ptr(&netns) else {
        return ALLOW;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let scopes = unsafe { *scopes };
    // user_port holds the port in network order in its low 16 bits.
    let mut frontend = EndpointKey::new(user_addr(sa, v6), user_port as u16, protocol as u8);
    let svc = match FRONTENDS.get_ptr(&frontend) {
        Some(svc) => svc,
        None => {
            // A VIP that takes every port.
            frontend.set_port_proto(ANY_PORT, frontend.proto);
            match FRONTENDS.get_ptr(&frontend) {
                Some(svc) => svc,
                None => return ALLOW,
            }
        }
    };
    // The port asked for, whichever entry matched.
    frontend.port_be = user_port as u16;
    // SAFETY: a map value stays valid for the whole program run.
    let svc = unsafe { *svc };
    // A frontend belongs to one scope (the node's, or one overlay network's): sockets of
    // namespaces outside it are left alone, as if it were any other address.
    let scope = (svc.flags & service_flags::SOCKET_SCOPE_MASK) >> service_flags::SOCKET_SCOPE_SHIFT;
    if scope > sock_netns::MAX_SCOPE || scopes & (1 << scope) == 0 {
        return ALLOW;
    }
    // A task's delivery frontend takes only the mesh tunnel's packets: its address (an
    // ingress-network address, perhaps also a LAN host's) is nothing to this node's sockets.
    if svc.flags & service_flags::TUNNEL_ONLY != 0 {
        return ALLOW;
    }
    let counters = SOCK_STATS.get_ptr_mut(svc.id);
    // An unconnected socket's datagrams to a frontend stay on the backend its last one went
    // to while that is still the service's backend (drained or being stopped included) and
    // the socket exchanged a datagram with it within the service's UDP idle timeout, as a
    // flow's packets do: a table change moves none of them, and a socket idle longer picks
    // again, as a flow whose entry expired does (so a drain ends for it too).
    let now_s = if call == Call::Datagram { clock_s() } else { 0 };
    if call == Call::Datagram
        && let Some(kept) = kept_backend(ctx, &svc, &frontend, now_s)
    {
        set_user_addr(sa, v6, &kept.backend);
        // SAFETY: a context field these programs may write.
        unsafe { (*sa).user_port = u32::from(kept.backend_port_be) };
        if let Some(c) = counters {
            // SAFETY: per-CPU value, only this CPU's program runs touch it.
            unsafe { (*c).datagrams += 1 };
        }
        return ALLOW;
    }
    // SAFETY: a helper the kernel offers sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The flow's source address and port are not known before `connect` returns: the hash
    // stands on the socket (its datagrams stay on one backend, like a flow) and its network
    // namespace, which is what client-IP affinity keys on here (one namespace, one client).
    let socket_words = if svc.flags & service_flags::AFFINITY_CLIENT_IP != 0 {
        [0, 0]
    } else {
        [cookie as u32, (cookie >> 32) as u32]
    };
    let key = FlowKey {
        src: Addr {
            words: [
                socket_words[0],
                socket_words[1],
                netns as u32,
                (netns >> 32) as u32,
            ],
        },
        dst: frontend.addr,
        sport_be: 0,
        dport_be: frontend.port_be,
        proto: frontend.proto,
        _pad: [0; 3],
    };
    let mut chosen = Chosen {
        backend_id: 0,
        addr: Addr::UNSPECIFIED,
        port_be: 0,
        snat_addr: Addr::UNSPECIFIED,
        snat_port_be: 0,
        tunnel_peer: 0,
        arrived_from: 0,
        on_link_prefix: 0,
    };
    // Round-robin turns its cursor for a connection only: each datagram of an unconnected
    // socket comes through here, and they stay on the backend the socket's hash picks.
    if !select::choose(&key, &svc, call == Call::Connect, &mut chosen) {
        if let Some(c) = counters {
            // SAFETY: per-CPU value, only this CPU's program runs touch it.
            unsafe { (*c).no_backend += 1 };
        }
        return refuse();
    }
    // The plan gives a frontend backends of its own family; an IPv4 socket cannot take an
    // IPv6 address in any case.
    if !v6 && !chosen.addr.is_v4() {
        return ALLOW;
    }
    let Some((addr, port_be)) = sent_to(
        &chosen.addr,
        chosen.port_be,
        chosen.tunnel_peer,
        frontend.port_be,
    ) else {
        return refuse();
    };
    (chosen.addr, chosen.port_be) = (addr, port_be);
    set_user_addr(sa, v6, &chosen.addr);
    // SAFETY: a context field these programs may write.
    unsafe { (*sa).user_port = u32::from(chosen.port_be) };
    remember(ctx, cookie, &chosen, &frontend, call);
    if call == Call::Datagram {
        seen_at(ctx, now_s);
    }
    if let Some(c) = counters {
        // SAFETY: per-CPU value, see above.
        unsafe {
            match call {
                Call::Connect => (*c).connections += 1,
                Call::Datagram => (*c).datagrams += 1,
            }
        }
    }
    ALLOW
}

/// Records which frontend the socket asked for, so `to_frontend` can give it back: on the
/// socket itself (one peer per socket: its connection's, or its last datagram's, which the
/// next one to that frontend keeps, see `kept_backend`), and for a datagram also in
/// `SOCK_REVERSE` by socket and backend (an unconnected socket may send to several). A
/// datagram to the same backend as the last one skips that write.
#[inline(always)]
fn remember(
    ctx: &SockAddrContext,
    cookie: u64,
    chosen: &Chosen,
    frontend: &EndpointKey,
    call: Call,
) {
    let mut peer = SockPeer {
        backend: chosen.addr,
        frontend: frontend.addr,
        backend_port_be: chosen.port_be,
        frontend_port_be: frontend.port_be,
        backend_id: chosen.backend_id,
    };
    // SAFETY: the context's socket, which the helper takes; a socket reconnected to another
    // frontend, or sending to another, has its value overwritten.
    let stored = unsafe { SOCK_PEER.get_or_insert_ptr_mut(ctx, Some(&mut peer)) };
    if !stored.is_null() {
        // SAFETY: a storage value stays valid for the whole program run.
        unsafe { *stored = peer };
        if call == Call::Connect {
            return;
        }
    }
    // No storage (out of memory): the shared table keeps getpeername right. An unconnected
    // socket's replies may come from backends of earlier datagrams too: the table has them.
    let key = SockReverseKey {
        cookie,
        backend: chosen.addr,
        port_be: chosen.port_be,
        _pad: [0; 6],
    };
    let value = SockReverse {
        frontend: frontend.addr,
        port_be: frontend.port_be,
        _pad: 0,
    };
    if call == Call::Datagram
        && let Some(known) = SOCK_REVERSE.get_ptr(&key)
        // SAFETY: a map value stays valid for the whole program run.
        && unsafe { *known } == value
    {
        return;
    }
    // A failed write (cannot happen with an LRU map) only costs getpeername its frontend.
    let _ = SOCK_REVERSE.insert(&key, &value, 0);
}

/// The backend the socket's last datagram to `frontend` went to (as the socket sends to it),
/// if it is still that backend of service `svc`: its id in use by the service, for the same
/// address and port (an id freed and given to another backend is not), or the same node's
/// published port for a task on another node; and if that datagram is no older than the
/// service's UDP idle timeout (`SOCK_SEEN`; none: a connected socket's peer, kept). A kept
/// backend's time is set to `now_s`.
#[inline(always)]
fn kept_backend(
    ctx: &SockAddrContext,
    svc: &Service,
    frontend: &EndpointKey,
    now_s: u32,
) -> Option<SockPeer> {
    // SAFETY: the context's socket; no value is created.
    let stored = unsafe { SOCK_PEER.get_ptr_mut(ctx) };
    if stored.is_null() {
        return None;
    }
    // SAFETY: a storage value stays valid for the whole program run.
    let peer = unsafe { *stored };
    if peer.backend_id == 0
        || peer.frontend != frontend.addr
        || peer.frontend_port_be != frontend.port_be
    {
        return None;
    }
    // SAFETY: the context's socket; no value is created.
    let seen = unsafe { SOCK_SEEN.get_ptr_mut(ctx) };
    // None yet: a connected socket's peer (its `connect` wrote no time), kept.
    // Signed: another CPU's `recvmsg` may have written a time after `now_s` was read, which
    // is no idle time, not a wrapped eternity (see the connection table's `liveness`).
    // SAFETY: a storage value stays valid for the whole program run.
    if !seen.is_null()
        && i64::from(now_s.wrapping_sub(unsafe { *seen }) as i32) > i64::from(svc.udp_timeout_s)
    {
        return None;
    }
    let backend = BACKENDS.get(peer.backend_id)?;
    if backend.flags & backend_flags::IN_USE == 0 || backend.service_id != svc.id {
        return None;
    }
    let tunnel_peer = (backend.flags >> backend_flags::PEER_SHIFT) as u8;
    let (addr, port_be) = sent_to(
        &backend.addr,
        backend.port_be,
        tunnel_peer,
        frontend.port_be,
    )?;
    if addr != peer.backend || port_be != peer.backend_port_be {
        return None;
    }
    // Kept: its clock restarts, through the value already looked up when there is one.
    if seen.is_null() {
        seen_at(ctx, now_s);
    } else {
        // SAFETY: as above; only this socket's own calls write its value.
        unsafe { *seen = now_s };
    }
    Some(peer)
}

/// The kernel's monotonic clock in whole seconds (the coarse clock: a tick's resolution).
#[inline(always)]
fn clock_s() -> u32 {
    (now_ns() / 1_000_000_000) as u32
}

/// Notes on the socket that it exchanged a datagram with its `SOCK_PEER` backend at `now_s`.
#[inline(always)]
fn seen_at(ctx: &SockAddrContext, now_s: u32) {
    let mut value = now_s;
    // SAFETY: the context's socket, which the helper takes.
    let seen = unsafe { SOCK_SEEN.get_or_insert_ptr_mut(ctx, Some(&mut value)) };
    if !seen.is_null() {
        // SAFETY: a storage value stays valid for the whole program run.
        unsafe { *seen = now_s };
    }
}

/// Where a socket is sent for a backend at `addr` and `port_be` (`ANY_PORT`: the frontend's
/// port, `frontend_port_be`) on the node of `tunnel_peer` (0: this one); `None` for a peer no
/// longer known. A task on another node: this node's own sockets cannot reach its ingress
/// address, so they go to that node's published port instead, which serves it (its program
/// picks among the service's tasks as every node does).
#[inline(always)]
fn sent_to(
    addr: &Addr,
    port_be: u16,
    tunnel_peer: u8,
    frontend_port_be: u16,
) -> Option<(Addr, u16)> {
    if tunnel_peer != 0 {
        let peer = *TUNNEL_PEERS.get(u32::from(tunnel_peer))?;
        return (peer != 0).then(|| (Addr::from_v4_raw(peer), frontend_port_be));
    }
    let port_be = if port_be == ANY_PORT {
        frontend_port_be
    } else {
        port_be
    };
    Some((*addr, port_be))
}

/// `getpeername` and UDP `recvmsg`: a backend this socket was sent to in place of a frontend
/// shows as that frontend. These hooks must allow. `received`: a datagram is received
/// (`recvmsg`), which keeps an unconnected socket's backend as a reply keeps a flow
/// (`getpeername` does not).
#[inline(always)]
fn to_frontend(ctx: &SockAddrContext, v6: bool, received: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: a context field these programs may read.
    let user_port = unsafe { (*sa).user_port } as u16;
    let backend = user_addr(sa, v6);
    // SAFETY: the context's socket; no value is created.
    let peer = unsafe { SOCK_PEER.get_ptr_mut(ctx) };
    if !peer.is_null() {
        // SAFETY: a storage value stays valid for the whole program run.
        let peer = unsafe { *peer };
        if peer.backend == backend && peer.backend_port_be == user_port {
            show(sa, v6, &peer.frontend, peer.frontend_port_be);
            if received {
                // Only a socket that has a time (an unconnected one): its value, looked up
                // once. SAFETY: the context's socket; no value is created.
                let seen = unsafe { SOCK_SEEN.get_ptr_mut(ctx) };
                if !seen.is_null() {
                    // SAFETY: a storage value stays valid for the whole program run.
                    unsafe { *seen = clock_s() };
                }
            }
            return ALLOW;
        }
    }
    // SAFETY: a helper the kernel offers sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockReverseKey {
        cookie,
        backend,
        port_be: user_port,
        _pad: [0; 6],
    };
    if let Some(known) = SOCK_REVERSE.get_ptr(&key) {
        // SAFETY: a map value stays valid for the whole program run.
        let known = unsafe { *known };
        show(sa, v6, &known.frontend, known.port_be);
    }
    ALLOW
}

/// Puts the frontend in place of the backend in what the call returns.
#[inline(always)]
fn show(sa: *mut bpf_sock_addr, v6: bool, frontend: &Addr, port_be: u16) {
    set_user_addr(sa, v6, frontend);
    // SAFETY: a context field these programs may write.
    unsafe { (*sa).user_port = u32::from(port_be) };
}

/// The address the socket call names, in key form (IPv4 as IPv4-mapped; an IPv6 socket's
/// IPv4-mapped destination is then the IPv4 frontend itself).
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, v6: bool) -> Addr {
    // SAFETY: 4-byte reads of context fields these programs may read.
    unsafe {
        if v6 {
            Addr {
                words: [
                    core::ptr::read_volatile(&(*sa).user_ip6[0]),
                    core::ptr::read_volatile(&(*sa).user_ip6[1]),
                    core::ptr::read_volatile(&(*sa).user_ip6[2]),
                    core::ptr::read_volatile(&(*sa).user_ip6[3]),
                ],
            }
        } else {
            Addr::from_v4_raw((*sa).user_ip4)
        }
    }
}

#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, v6: bool, addr: &Addr) {
    // SAFETY: 4-byte writes of context fields these programs may write.
    unsafe {
        if v6 {
            let w = addr.words;
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
        } else {
            (*sa).user_ip4 = addr.v4_raw();
        }
    }
}
