//! An adopting start: the plan made over the pinned dataplane a previous lbd programmed.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::maps::{Backend, EndpointKey, Service, proto, service_flags};

use super::*;

/// Plans `serving` over the pinned dataplane `dp` a previous lbd programmed (`desired`: the
/// same configuration's plan with any ids) and writes it: the plan to run, and the UDP
/// backend endpoints the previous lbd served that it no longer has (see
/// `udp_endpoints_gone`).
pub(super) fn adopt(
    dp: &mut Dataplane,
    desired: &DesiredState,
    serving: &ServiceFile,
    node_addresses: &[IpAddr],
) -> Result<(DesiredState, Vec<SocketAddr>), DaemonError> {
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
    let desired = plan::plan_from(serving, node_addresses, Some(&adopted))?;
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
    let gone = udp_endpoints_gone(&frontends, &kernel_backends, &desired);
    Ok((desired, gone))
}

/// The UDP backend endpoints of the kernel's entries (`frontends`, `backends`: what the
/// previous lbd served) that `desired` has no backend at, of services that moved or reset
/// flows on removed backends: a backend removed while no lbd ran, whose connected sockets
/// the socket-level path would otherwise leave on it.
fn udp_endpoints_gone(
    frontends: &BTreeMap<EndpointKey, Service>,
    backends: &[(u32, Backend)],
    desired: &DesiredState,
) -> Vec<SocketAddr> {
    let moving: HashMap<u32, ()> = frontends
        .iter()
        .filter(|(key, service)| {
            key.proto == proto::UDP && service.flags & service_flags::MOVE_ON_REMOVAL != 0
        })
        .map(|(_, service)| (service.id, ()))
        .collect();
    let mut gone: Vec<SocketAddr> = backends
        .iter()
        .filter(|(_, b)| moving.contains_key(&b.service_id))
        .filter(|(_, b)| {
            let key = EndpointKey {
                addr: b.addr,
                port_be: b.port_be,
                proto: proto::UDP,
                _pad: 0,
            };
            desired.endpoints.get(&key).is_none_or(|n| *n == 0)
        })
        .map(|(_, b)| SocketAddr::new(b.addr.into(), u16::from_be(b.port_be)))
        .collect();
    gone.sort();
    gone.dedup();
    gone
}
