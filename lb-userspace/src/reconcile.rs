//! From a service file to the exact kernel map contents (`DesiredState`). Pure: no kernel
//! access, so every rule here is unit-tested. `dataplane` writes the difference between two
//! desired states into the maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    Addr,
    limits::{MAX_BACKEND_ENDPOINTS, MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES, MAX_TABLE_SIZE},
    maps::{Backend, EndpointKey, Service, backend_flags, service_flags},
};

use crate::{
    config::{Affinity, Forwarding, PortMapping, Scheduler, ServiceFile, ServiceSpec},
    select::{TableBackend, TableError, maglev_table, round_robin_sequence},
};

/// Everything the kernel maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<EndpointKey, Service>,
    /// Kernel service id to its selection table (backend ids).
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<u32, Backend>,
    /// Backend endpoints that may send replies, with how many backends share the triple.
    pub endpoints: BTreeMap<EndpointKey, u32>,
    /// What was planned, for logs and the CLI.
    pub services: Vec<PlannedService>,
}

/// One kernel service: a (service, published port) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    pub name: String,
    pub id: u32,
    pub mapping: PortMapping,
    pub frontends: Vec<SocketAddr>,
    pub backends: Vec<PlannedBackend>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBackend {
    pub id: u32,
    pub target: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("service \"{service}\", field {field}: {message}")]
    Unsupported {
        service: String,
        field: &'static str,
        message: String,
    },
    #[error(
        "too many {what}: {count} (this build holds at most {max}); split the configuration over more nodes or raise lb_common::limits"
    )]
    Capacity {
        what: &'static str,
        count: usize,
        max: u32,
    },
    #[error(
        "service \"{service}\" publishes ports on every node address, but this node has no address of its backends' family"
    )]
    NoNodeAddress { service: String },
    #[error("service \"{service}\": building its selection table failed: {source:?}")]
    Table { service: String, source: TableError },
}

/// Plans the kernel state for `file` on a node with `node_addrs`.
///
/// A kernel service is one (service, port mapping, address family): meshlb translates
/// addresses but not families, so IPv4 frontends use the IPv4 backends and IPv6 frontends
/// the IPv6 ones. A VIP-less service is published on the node addresses of each family it
/// has backends for (both families when it has no backends at all).
pub fn plan(file: &ServiceFile, node_addrs: &[IpAddr]) -> Result<DesiredState, PlanError> {
    let mut state = DesiredState::default();
    let mut next_backend_id = 1u32; // 0 means "no backend" in the kernel.
    for spec in file.services.values() {
        check_supported(spec)?;
        let mut families = 0;
        for v6 in [false, true] {
            let frontend_addrs: Vec<IpAddr> = match spec.vip {
                Some(vip) if vip.is_ipv6() == v6 => vec![vip],
                Some(_) => continue,
                None => {
                    let has_backends = spec.backends.iter().any(|b| b.address.is_ipv6() == v6);
                    if !has_backends && !spec.backends.is_empty() {
                        continue;
                    }
                    node_addrs
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv6() == v6)
                        .collect()
                }
            };
            if frontend_addrs.is_empty() {
                continue;
            }
            families += 1;
            for mapping in &spec.ports {
                plan_service(
                    &mut state,
                    spec,
                    mapping,
                    &frontend_addrs,
                    v6,
                    &mut next_backend_id,
                )?;
            }
        }
        if families == 0 {
            return Err(PlanError::NoNodeAddress {
                service: spec.name.clone(),
            });
        }
    }
    check_capacity("services", state.services.len(), MAX_SERVICES)?;
    check_capacity("frontends", state.frontends.len(), MAX_FRONTENDS)?;
    // Backend ids run from 1, so one slot is reserved.
    check_capacity("backends", state.backends.len(), MAX_BACKENDS - 1)?;
    check_capacity(
        "backend endpoints",
        state.endpoints.len(),
        MAX_BACKEND_ENDPOINTS,
    )?;
    Ok(state)
}

/// One kernel service: its backends of one family, its table and its frontends.
fn plan_service(
    state: &mut DesiredState,
    spec: &ServiceSpec,
    mapping: &PortMapping,
    frontend_addrs: &[IpAddr],
    v6: bool,
    next_backend_id: &mut u32,
) -> Result<(), PlanError> {
    let id = state.services.len() as u32;
    let mut planned = PlannedService {
        name: spec.name.clone(),
        id,
        mapping: *mapping,
        frontends: Vec::new(),
        backends: Vec::new(),
    };
    for backend in spec.backends.iter().filter(|b| b.address.is_ipv6() == v6) {
        let target = SocketAddr::new(backend.address, backend.target_port(mapping));
        let backend_id = *next_backend_id;
        *next_backend_id += 1;
        state.backends.insert(
            backend_id,
            Backend {
                addr: addr(target.ip()),
                port_be: target.port().to_be(),
                flags: backend_flags::IN_USE,
                service_id: id,
            },
        );
        *state
            .endpoints
            .entry(endpoint(target, mapping))
            .or_default() += 1;
        planned.backends.push(PlannedBackend {
            id: backend_id,
            target,
            weight: backend.weight,
        });
    }
    state.tables.insert(id, table(spec, &planned)?);
    let service = service_value(spec, id);
    for frontend_addr in frontend_addrs {
        let frontend = SocketAddr::new(*frontend_addr, mapping.frontend);
        state.frontends.insert(endpoint(frontend, mapping), service);
        planned.frontends.push(frontend);
    }
    state.services.push(planned);
    Ok(())
}

fn check_capacity(what: &'static str, count: usize, max: u32) -> Result<(), PlanError> {
    if count > max as usize {
        return Err(PlanError::Capacity { what, count, max });
    }
    Ok(())
}

/// What the kernel program of this build does not do yet, refused up front rather than
/// accepted and ignored.
fn check_supported(spec: &ServiceSpec) -> Result<(), PlanError> {
    let unsupported = |field: &'static str, message: &str| PlanError::Unsupported {
        service: spec.name.clone(),
        field,
        message: message.to_owned(),
    };
    if let Some(vip) = spec.vip
        && let Some(i) = spec
            .backends
            .iter()
            .position(|b| b.address.is_ipv6() != vip.is_ipv6())
    {
        return Err(PlanError::Unsupported {
            service: spec.name.clone(),
            field: "backends",
            message: format!(
                "backends[{i}] ({}) is not of the vip's address family ({vip}); meshlb translates addresses, not families: give the service a vip of each family, or drop the vip to publish on every node address",
                spec.backends[i].address
            ),
        });
    }
    if spec.forwarding == Forwarding::FullNat {
        return Err(unsupported(
            "forwarding",
            "fullnat is not supported by this dataplane yet; use nat (client addresses are preserved)",
        ));
    }
    Ok(())
}

fn service_value(spec: &ServiceSpec, id: u32) -> Service {
    let mut flags = 0;
    if spec.scheduler == Scheduler::RoundRobin {
        flags |= service_flags::ROUND_ROBIN;
    }
    if spec.affinity == Affinity::ClientIp {
        flags |= service_flags::AFFINITY_CLIENT_IP;
    }
    Service {
        id,
        flags,
        tcp_timeout_s: spec.timeouts.tcp_s,
        udp_timeout_s: spec.timeouts.udp_s,
    }
}

/// The selection table of one kernel service, as backend ids. Empty when no backend takes
/// new flows (none configured, or all drained): the kernel then drops and counts.
fn table(spec: &ServiceSpec, planned: &PlannedService) -> Result<Vec<u32>, PlanError> {
    let identities: Vec<String> = planned
        .backends
        .iter()
        .map(|b| b.target.to_string())
        .collect();
    let inputs: Vec<TableBackend<'_>> = planned
        .backends
        .iter()
        .zip(&identities)
        .map(|(b, identity)| TableBackend {
            identity,
            weight: b.weight,
        })
        .collect();
    let built = match spec.scheduler {
        Scheduler::Maglev => maglev_table(&inputs, spec.maglev_table_size),
        Scheduler::RoundRobin => round_robin_sequence(&inputs, MAX_TABLE_SIZE - 1),
    };
    match built {
        Ok(indices) => Ok(indices
            .into_iter()
            .map(|i| planned.backends[i as usize].id)
            .collect()),
        Err(TableError::NoWeight) => Ok(Vec::new()),
        Err(source) => Err(PlanError::Table {
            service: spec.name.clone(),
            source,
        }),
    }
}

pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::from_octets(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Addr::from_octets(v6.octets()),
    }
}

pub fn ip(addr: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr.octets());
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn endpoint(socket: SocketAddr, mapping: &PortMapping) -> EndpointKey {
    EndpointKey {
        addr: addr(socket.ip()),
        port_be: socket.port().to_be(),
        proto: mapping.protocol.number(),
        _pad: 0,
    }
}
