//! An adopting start: the plan made over the pinned dataplane a previous lbd programmed.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::maps::{Backend, EndpointKey, Service, service_flags};

use crate::dataplane::SocketPeer;

use super::*;

/// Plans `serving` over the pinned dataplane `dp` a previous lbd programmed (`desired`: the
/// same configuration's plan with any ids) and writes it: the plan to run, and the backend
/// endpoints the previous lbd served that it no longer has (see `endpoints_gone`).
pub(super) fn adopt(
    dp: &mut Dataplane,
    desired: &DesiredState,
    serving: &ServiceFile,
    node: &NodeFacts,
) -> Result<(DesiredState, Vec<SocketPeer>), DaemonError> {
    // The pinned maps are the record of what the previous lbd programmed: the kernel ids of
    // its services and backends come from its frontends and backends, so tracked flows keep
    // meaning the same backends. Every entry is then written (the tables may have been
    // computed by another version) and everything else removed.
    let (frontends, kernel_backends) = dp.kernel_entries()?;
    let ids = Ids::recover(desired, &frontends, &kernel_backends);
    let mut adopted = DesiredState::with_ids(ids);
    // Its backend endpoints that tracked flows still reply from stay, as across a live
    // change: replies of flows kept on a backend that left (`keep`), and late ones of flows
    // moved, are still translated. The plan drops them when it needs the room; the others go
    // now.
    adopted.endpoints = dp.endpoints_with_replies()?;
    // Its mesh peers keep their indexes, which its tracked flows name.
    adopted.tunnel = dp.tunnel_plan()?;
    let desired = plan::plan_from(serving, node, Some(&adopted))?;
    // Ids the kernel's entries did not hold may have counters of a service or backend
    // removed while no lbd ran.
    let (services, backends) = desired.ids.fresh_since(&adopted.ids);
    dp.zero_counters(&services, &backends)?;
    info!(
        "adopting the pinned dataplane: connection table and counters kept, ids recovered from its maps; rewriting every entry"
    );
    dp.apply(None, &desired)?;
    let pruned = dp.prune(&desired)?;
    if pruned > 0 {
        info!(
            pruned,
            "removed stale entries: frontends, endpoints and backends the configuration no longer has"
        );
    }
    // No frontend leads to the tables of services removed while no lbd ran any more.
    let stale_tables: std::collections::BTreeSet<u32> = frontends
        .values()
        .map(|s| s.id)
        .filter(|id| !desired.tables.contains_key(id))
        .collect();
    dp.empty_tables(&stale_tables.into_iter().collect::<Vec<_>>())?;
    let gone = endpoints_gone(&frontends, &kernel_backends, &desired);
    Ok((desired, gone))
}

/// The backend endpoints of the kernel's entries (`frontends`, `backends`: what the previous
/// lbd served) that `desired` has no backend of their protocol at, of services that moved or
/// reset flows on removed backends: a backend removed while no lbd ran, whose connected
/// sockets the socket-level path would otherwise leave on it.
fn endpoints_gone(
    frontends: &BTreeMap<EndpointKey, Service>,
    backends: &[(u32, Backend)],
    desired: &DesiredState,
) -> Vec<SocketPeer> {
    let moving: HashMap<u32, u8> = frontends
        .iter()
        .filter(|(_, service)| service.flags & service_flags::MOVE_ON_REMOVAL != 0)
        .map(|(key, service)| (service.id, key.proto))
        .collect();
    let mut gone: Vec<SocketPeer> = backends
        .iter()
        .filter_map(|(_, b)| moving.get(&b.service_id).map(|proto| (b, *proto)))
        .filter(|(b, proto)| {
            let key = EndpointKey {
                addr: b.addr,
                port_be: b.port_be,
                proto: *proto,
                _pad: 0,
            };
            desired.endpoints.get(&key).is_none_or(|n| *n == 0)
        })
        .map(|(b, proto)| {
            (
                proto,
                SocketAddr::new(b.addr.into(), u16::from_be(b.port_be)),
            )
        })
        .collect();
    gone.sort();
    gone.dedup();
    gone
}

#[cfg(test)]
mod tests {
    use lb_common::Addr;

    use super::*;

    fn endpoint(addr: &str, port: u16, proto: u8) -> EndpointKey {
        EndpointKey {
            addr: Addr::from(addr.parse::<IpAddr>().unwrap()),
            port_be: port.to_be(),
            proto,
            _pad: 0,
        }
    }

    fn backend(service_id: u32, addr: &str, port: u16) -> Backend {
        Backend {
            addr: Addr::from(addr.parse::<IpAddr>().unwrap()),
            port_be: port.to_be(),
            flags: lb_common::maps::backend_flags::IN_USE,
            service_id,
        }
    }

    fn service(id: u32, flags: u32) -> Service {
        Service {
            id,
            flags,
            tcp_timeout_s: 300,
            udp_timeout_s: 60,
        }
    }

    /// What the previous lbd served against what the new plan has, case by case.
    #[test]
    fn endpoints_gone_are_those_no_backend_of_their_protocol_serves_any_more() {
        use lb_common::maps::proto;
        let moves = service_flags::MOVE_ON_REMOVAL;
        let resets = moves | service_flags::RESET_ON_REMOVAL;
        // Frontends: service 1 UDP (move), 2 UDP (reset), 3 UDP (keep), 4 TCP (move).
        let frontends: BTreeMap<EndpointKey, Service> = [
            (endpoint("198.18.100.1", 53, proto::UDP), service(1, moves)),
            (endpoint("198.18.100.2", 53, proto::UDP), service(2, resets)),
            (endpoint("198.18.100.3", 53, proto::UDP), service(3, 0)),
            (endpoint("198.18.100.4", 80, proto::TCP), service(4, moves)),
        ]
        .into();
        let backends = vec![
            // Gone from the plan: aborted.
            (1, backend(1, "198.18.2.10", 5353)),
            // Still a UDP backend (of another service): kept.
            (2, backend(1, "198.18.2.11", 5353)),
            // Reset policy, gone: aborted.
            (3, backend(2, "198.18.2.12", 5353)),
            // Keep policy, gone: its flows stay, and so do its sockets.
            (4, backend(3, "198.18.2.13", 5353)),
            // A TCP service's backend, gone: its TCP sockets are aborted.
            (5, backend(4, "198.18.2.14", 8080)),
            // Kept in the plan for replies only (count 0): gone.
            (6, backend(1, "198.18.2.15", 5353)),
        ];
        let mut desired = DesiredState::default();
        desired
            .endpoints
            .insert(endpoint("198.18.2.11", 5353, proto::UDP), 1);
        desired
            .endpoints
            .insert(endpoint("198.18.2.15", 5353, proto::UDP), 0);
        // The same address and port for TCP only does not keep the UDP sockets.
        desired
            .endpoints
            .insert(endpoint("198.18.2.10", 5353, proto::TCP), 1);
        let gone = endpoints_gone(&frontends, &backends, &desired);
        let want: Vec<SocketPeer> = [
            (proto::TCP, "198.18.2.14:8080"),
            (proto::UDP, "198.18.2.10:5353"),
            (proto::UDP, "198.18.2.12:5353"),
            (proto::UDP, "198.18.2.15:5353"),
        ]
        .iter()
        .map(|(p, a)| (*p, a.parse().unwrap()))
        .collect();
        assert_eq!(gone, want);
    }
}
