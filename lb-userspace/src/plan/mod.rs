//! From a service file to the exact kernel map contents (`DesiredState`). Pure: no kernel
//! access, so every rule here is unit-tested. `dataplane` writes the difference between two
//! desired states into the maps.

mod difference;
mod explain;
mod ids;
mod incremental;
mod node;
mod replies;
pub mod select;
mod vips;

pub use difference::each_difference;
pub use explain::Explanation;
pub use ids::Ids;
use ids::{BackendIdentity, IdAllocator, ServiceIdentity};
pub use incremental::{PlanDelta, Replan, replan, replan_among};
pub use node::{ConnectedSubnet, NodeFacts};
pub use replies::ReplyTranslation;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    Addr,
    limits::{
        FULLNAT_PORT_MAX, FULLNAT_PORT_MIN, MAX_BACKEND_ENDPOINTS, MAX_BACKENDS, MAX_FRONTENDS,
        MAX_SELECTION_SLOTS, MAX_SERVICES,
    },
    maps::{Backend, EndpointKey, ReplyFrontend, Service, backend_flags, proto, service_flags},
};

use crate::source::file::{
    Affinity, BackendSpec, Forwarding, PortMapping, RemovalPolicy, Scheduler, ServiceFile,
    ServiceSpec,
};
use select::{
    TableBackend, TableError, maglev_check, maglev_table, round_robin_check, round_robin_sequence,
};

/// A service's selection table, as what it is built from (see `TableSpec`). Shared, so a
/// replan that keeps a table copies a pointer, and comparing two plans skips tables they share.
pub type Table = std::sync::Arc<TableSpec>;

/// What a selection table is built from. The table (backend ids) is a function of it alone, so
/// plans hold specs, not tables (10,000 Maglev tables of 16,381 slots would be 655 MB): the
/// dataplane builds a table when it writes it, and `explain` builds the one it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub scheduler: Scheduler,
    pub maglev_table_size: u32,
    pub backends: Vec<PlannedBackend>,
}

impl TableSpec {
    /// The table: backend ids, empty when no backend takes new flows (none configured, or all
    /// drained; the kernel then drops and counts).
    pub fn build(&self) -> Result<Vec<u32>, TableError> {
        let identities = self.identities();
        let inputs = self.inputs(&identities);
        let built = match self.scheduler {
            Scheduler::Maglev => maglev_table(&inputs, self.maglev_table_size),
            Scheduler::RoundRobin => round_robin_sequence(&inputs, MAX_SELECTION_SLOTS),
        };
        match built {
            Ok(mut indices) => {
                // Indices into `backends` become kernel backend ids, in place.
                for entry in &mut indices {
                    *entry = self.backends[*entry as usize].id;
                }
                Ok(indices)
            }
            Err(TableError::NoWeight) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// What `build` would refuse, without building.
    pub fn check(&self) -> Result<(), TableError> {
        // Only weights and counts matter here: no identities to format.
        let inputs: Vec<TableBackend<'_>> = self
            .backends
            .iter()
            .map(|b| TableBackend {
                identity: "",
                weight: b.weight,
            })
            .collect();
        let checked = match self.scheduler {
            Scheduler::Maglev => maglev_check(&inputs, self.maglev_table_size),
            Scheduler::RoundRobin => round_robin_check(&inputs, MAX_SELECTION_SLOTS),
        };
        match checked {
            Err(TableError::NoWeight) => Ok(()),
            other => other,
        }
    }

    /// A backend's identity for Maglev is its target: it keeps its preferences when others
    /// come and go, and every node computes the same.
    fn identities(&self) -> Vec<String> {
        self.backends
            .iter()
            .map(|b| b.identity.to_string())
            .collect()
    }

    fn inputs<'a>(&self, identities: &'a [String]) -> Vec<TableBackend<'a>> {
        self.backends
            .iter()
            .zip(identities)
            .map(|(b, identity)| TableBackend {
                identity,
                weight: b.weight,
            })
            .collect()
    }
}

/// Everything the kernel maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<EndpointKey, Service>,
    /// Kernel service id to its selection table (backend ids). Shared, so a replan that keeps
    /// a table copies a pointer, and comparing two plans skips tables they share.
    pub tables: BTreeMap<u32, Table>,
    pub backends: BTreeMap<u32, Backend>,
    /// Backend endpoints that may send replies, with how many backends share the triple.
    pub endpoints: BTreeMap<EndpointKey, u32>,
    /// Backend endpoints whose replies are translated without an entry (`plan::replies`).
    pub reply_frontends: BTreeMap<EndpointKey, ReplyFrontend>,
    /// What was planned, for logs and the CLI.
    pub services: Vec<PlannedService>,
    /// Which identity holds which kernel id, so the next plan keeps them.
    pub ids: Ids,
    /// The mesh tunnel's addresses (`TUNNEL_PEERS`).
    pub tunnel: TunnelPlan,
    /// What this plan was made from, so the next one replans only the services that changed
    /// (`replan`); `None` when only the ids are known.
    basis: Option<Basis>,
}

/// The inputs of a plan: what it knew of the node and every service's spec, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Basis {
    node: NodeFacts,
    specs: BTreeMap<String, ServiceSpec>,
}

/// This node's underlay address and its peers' by `TUNNEL_PEERS` index (1..), IPv4 in
/// network byte order as the kernel compares them; empty without a swarm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelPlan {
    pub own: Option<std::net::Ipv4Addr>,
    pub peers: BTreeMap<u8, std::net::Ipv4Addr>,
    /// Where the search for a new peer's index starts: after the last one given (0: at 1).
    pub next: u8,
}

impl TunnelPlan {
    /// The peers of `mesh` by index: a peer `previous` indexed keeps its index (tracked flows
    /// name their peer by it, so a node joining or leaving must not move the others'); new
    /// ones, in address order, take the free indexes after the last one given, wrapping at
    /// 254: a departed peer's index goes to a new node only after every other has been given,
    /// so the replies of flows that still name it (their entries outlive the peer) do not go
    /// to the new node. At most 254 peers (the rest are left out, said by the caller).
    pub(crate) fn of(
        mesh: Option<&crate::source::file::MeshNodes>,
        previous: Option<&TunnelPlan>,
    ) -> TunnelPlan {
        let Some(mesh) = mesh else {
            return TunnelPlan::default();
        };
        let wanted = || mesh.peers.iter().filter(|p| **p != mesh.own);
        let mut peers: BTreeMap<u8, std::net::Ipv4Addr> = previous
            .into_iter()
            .flat_map(|p| &p.peers)
            .filter(|(_, addr)| wanted().any(|w| w == *addr))
            .map(|(i, addr)| (*i, *addr))
            .collect();
        let start = previous.map_or(1, |p| p.next.max(1));
        let mut free = (start..=254u8)
            .chain(1..start)
            .filter(|i| !peers.contains_key(i))
            .collect::<Vec<_>>();
        free.reverse();
        let mut next = start;
        for addr in wanted() {
            if peers.values().any(|p| p == addr) {
                continue;
            }
            let Some(i) = free.pop() else { break };
            peers.insert(i, *addr);
            next = Self::after(i);
        }
        TunnelPlan {
            own: Some(mesh.own),
            peers,
            next,
        }
    }

    /// The index after `index`, wrapping from 254 to 1.
    pub(crate) fn after(index: u8) -> u8 {
        if index >= 254 { 1 } else { index + 1 }
    }

    /// The index of `node`, if it is a peer.
    pub fn index(&self, node: IpAddr) -> Option<u8> {
        self.peers
            .iter()
            .find(|(_, p)| IpAddr::V4(**p) == node)
            .map(|(i, _)| *i)
    }
}

impl DesiredState {
    /// An empty state that only carries `ids`, to plan from when only the ids are known.
    pub fn with_ids(ids: Ids) -> Self {
        Self {
            ids,
            ..Self::default()
        }
    }
}

/// A plan's backends, endpoints and backend ids, gathered as lists and made into maps once:
/// a sort and a bulk build instead of 160,000 inserts each at a random place.
#[derive(Default)]
struct Pending {
    backends: Vec<(u32, Backend)>,
    /// One per backend that uses the endpoint.
    endpoints: Vec<EndpointKey>,
    backend_ids: Vec<(BackendIdentity, u32)>,
}

impl Pending {
    fn finish(mut self, state: &mut DesiredState, previous: Option<&DesiredState>) {
        self.backends.sort_unstable_by_key(|(id, _)| *id);
        state.backends = self.backends.into_iter().collect();
        self.backend_ids.sort_unstable();
        state.ids.backends = self.backend_ids.into_iter().collect();
        self.endpoints.sort_unstable();
        let mut counted: Vec<(EndpointKey, u32)> = Vec::with_capacity(self.endpoints.len());
        for key in self.endpoints {
            match counted.last_mut() {
                Some((last, count)) if *last == key => *count += 1,
                _ => counted.push((key, 1)),
            }
        }
        // Endpoints of backends that left keep letting replies through to the connection
        // table: flows kept on a removed backend (`keep`), and late replies of moved ones, are
        // still translated, across restarts too (an adopting start plans with the kernel's
        // endpoints that reply entries name as the previous ones). They are dropped when room
        // is needed.
        let room = (MAX_BACKEND_ENDPOINTS as usize).saturating_sub(counted.len());
        // Both in key order: one walk finds the previous keys this plan lacks.
        let mut current = counted.iter().map(|(k, _)| k).peekable();
        let lingering: Vec<(EndpointKey, u32)> = previous
            .into_iter()
            .flat_map(|p| p.endpoints.keys())
            .filter(|key| {
                while current.next_if(|k| k < key).is_some() {}
                current.peek() != Some(key)
            })
            .take(room)
            .map(|key| (*key, 0))
            .collect();
        if lingering.is_empty() {
            state.endpoints = counted.into_iter().collect();
        } else {
            counted.extend(lingering);
            counted.sort_unstable_by_key(|(key, _)| *key);
            state.endpoints = counted.into_iter().collect();
        }
    }
}

/// One kernel service: a (service, published port) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    pub name: String,
    pub id: u32,
    pub mapping: PortMapping,
    /// How the table is built (scheduler, Maglev size): with the same backends and weights,
    /// the same table, which the next plan reuses instead of building it again.
    pub table_kind: (Scheduler, u32),
    pub frontends: Vec<SocketAddr>,
    /// The service's VIP, if it has one (else its frontends are node addresses).
    pub vip: Option<IpAddr>,
    /// Whether a router may send the VIP's traffic here (`announced_vips`): not a swarm
    /// overlay VIP, which only containers' sockets reach, nor a local task's delivery
    /// address, which only peers' tunnels reach.
    pub routable: bool,
    pub backends: Vec<PlannedBackend>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBackend {
    pub id: u32,
    pub target: SocketAddr,
    pub weight: u32,
    /// What Maglev hashes: the target, or a swarm task's ingress address and port, which is
    /// the same on every node whichever address this node reaches the task at.
    pub identity: SocketAddr,
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
        "service \"{service}\" publishes ports on every node address, but this node has no address of its backends' family: give the service a vip, or backends of a family the node has an address of"
    )]
    NoNodeAddress { service: String },
    #[error(
        "{frontend} is claimed by services \"{}\" and \"{}\" (a VIP that is also an address of this node, next to a service published on every node address); give one of them another port or VIP",
        services[0],
        services[1]
    )]
    FrontendConflict {
        frontend: String,
        services: [String; 2],
    },
    #[error("service \"{service}\": building its selection table failed: {error}")]
    Table { service: String, error: TableError },
    #[error(
        "service \"{service}\": backend {backend} is itself a frontend of service \"{frontend_of}\": its flows would come back to this node and loop; give the backend's own address, not a VIP or a published port"
    )]
    BackendIsFrontend {
        service: String,
        backend: String,
        frontend_of: String,
    },
}

impl PlanError {
    /// The services whose leaving would clear this error, the likelier cause first: of a
    /// conflict, the service planned later; of a loop, the service whose frontend the
    /// backend is. Empty for an error of the whole plan (a capacity).
    pub fn blamed(&self) -> Vec<&str> {
        match self {
            Self::Unsupported { service, .. }
            | Self::NoNodeAddress { service }
            | Self::Table { service, .. } => vec![service.as_str()],
            Self::FrontendConflict { services, .. } => {
                vec![services[1].as_str(), services[0].as_str()]
            }
            Self::BackendIsFrontend {
                service,
                frontend_of,
                ..
            } => vec![frontend_of.as_str(), service.as_str()],
            Self::Capacity { .. } => Vec::new(),
        }
    }
}

/// Plans the kernel state for `file` on `node`.
///
/// A kernel service is one (service, port mapping, address family): meshlb translates
/// addresses but not families, so IPv4 frontends use the IPv4 backends and IPv6 frontends
/// the IPv6 ones. A VIP-less service is published on the node addresses of each family it
/// has backends for (both families when it has no backends at all).
pub fn plan(file: &ServiceFile, node: &NodeFacts) -> Result<DesiredState, PlanError> {
    plan_from(file, node, None)
}

/// Like `plan`, keeping the ids `previous` gave to the same services and backends.
pub fn plan_from(
    file: &ServiceFile,
    node: &NodeFacts,
    previous: Option<&DesiredState>,
) -> Result<DesiredState, PlanError> {
    let mut state = DesiredState {
        tunnel: TunnelPlan::of(file.mesh.as_ref(), previous.map(|p| &p.tunnel)),
        ..Default::default()
    };
    let mut service_ids = IdAllocator::new(previous.map(|p| &p.ids.services), 0);
    // Backend id 0 means "no backend" in the kernel.
    let mut backend_ids = IdAllocator::new(previous.map(|p| &p.ids.backends), 1);
    let mut pending = Pending::default();
    for spec in file.services.values() {
        plan_spec(
            &mut state,
            &mut pending,
            spec,
            node,
            (&mut service_ids, &mut backend_ids),
        )?;
    }
    pending.finish(&mut state, previous);
    check_no_loops(&state)?;
    state.reply_frontends = state.plan_reply_frontends();
    for planned in &state.services {
        let spec = TableSpec {
            scheduler: planned.table_kind.0,
            maglev_table_size: planned.table_kind.1,
            backends: planned.backends.clone(),
        };
        // The previous plan's, when equal (checked then): comparing the plans then compares
        // pointers.
        let table = match previous.and_then(|p| p.tables.get(&planned.id)) {
            Some(before) if **before == spec => std::sync::Arc::clone(before),
            _ => {
                spec.check().map_err(|error| PlanError::Table {
                    service: planned.name.clone(),
                    error,
                })?;
                std::sync::Arc::new(spec)
            }
        };
        state.tables.insert(planned.id, table);
    }
    check_fullnat_ports(file)?;
    check_capacity("services", state.services.len(), MAX_SERVICES)?;
    check_capacity("frontends", state.frontends.len(), MAX_FRONTENDS)?;
    // Backend ids run from 1, so one slot is reserved.
    check_capacity("backends", state.backends.len(), MAX_BACKENDS - 1)?;
    check_capacity(
        "backend endpoints",
        state.endpoints.len(),
        MAX_BACKEND_ENDPOINTS,
    )?;
    state.basis = Some(Basis {
        node: node.clone(),
        specs: file.services.clone(),
    });
    Ok(state)
}

/// One service spec's kernel services: one per port mapping and address family it serves.
fn plan_spec(
    state: &mut DesiredState,
    pending: &mut Pending,
    spec: &ServiceSpec,
    node: &NodeFacts,
    (service_ids, backend_ids): (
        &mut IdAllocator<'_, ServiceIdentity>,
        &mut IdAllocator<'_, BackendIdentity>,
    ),
) -> Result<(), PlanError> {
    check_supported(spec)?;
    let mut families = 0;
    for v6 in [false, true] {
        let mut frontend_addrs: Vec<IpAddr> = match spec.vip {
            Some(vip) if vip.is_ipv6() == v6 => vec![vip],
            Some(_) => continue,
            None => {
                let has_backends = spec.backends.iter().any(|b| b.address.is_ipv6() == v6);
                if !has_backends && !spec.backends.is_empty() {
                    continue;
                }
                node.addresses
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv6() == v6)
                    .collect()
            }
        };
        if frontend_addrs.is_empty() {
            continue;
        }
        if spec.vip.is_none() {
            // A published port answers on loopback too, for the node's own processes:
            // only the socket-level programs see those connections (XDP never does).
            frontend_addrs.push(if v6 {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            });
        }
        families += 1;
        for mapping in &spec.ports {
            plan_service(
                state,
                pending,
                spec,
                mapping,
                &frontend_addrs,
                (v6, node),
                (&mut *service_ids, &mut *backend_ids),
            )?;
        }
    }
    if families == 0 {
        return Err(PlanError::NoNodeAddress {
            service: spec.name.clone(),
        });
    }
    Ok(())
}

/// The `backend_flags::ON_LINK_SHIFT` bits of a backend this node reaches on a subnet it
/// knows: its clients inside that subnet speak through the node. A local swarm task's
/// subnet is the one its provider names (`docker_gwbridge`'s); a file or API backend's is the
/// node's connected subnet holding it. A task on another node is reached through the tunnel,
/// on no subnet of this node's.
fn on_link_flags(backend: &BackendSpec, node: &NodeFacts) -> u16 {
    let prefix = match backend.mesh {
        Some(m) if m.via.is_none() => m.on_link_prefix,
        Some(_) => None,
        None => node.on_link_prefix(backend.address),
    };
    let longest = if backend.address.is_ipv4() {
        32
    } else {
        backend_flags::ON_LINK_MAX_PREFIX
    };
    prefix
        .filter(|p| (1..=longest).contains(p))
        .map_or(0, |p| u16::from(p) << backend_flags::ON_LINK_SHIFT)
}

/// One kernel service: its backends of one family, its table and its frontends.
fn plan_service(
    state: &mut DesiredState,
    pending: &mut Pending,
    spec: &ServiceSpec,
    mapping: &PortMapping,
    frontend_addrs: &[IpAddr],
    (v6, node): (bool, &NodeFacts),
    (service_ids, backend_ids): (
        &mut IdAllocator<'_, ServiceIdentity>,
        &mut IdAllocator<'_, BackendIdentity>,
    ),
) -> Result<(), PlanError> {
    let identity = (spec.name.clone(), *mapping, v6);
    let id = service_ids.id(&identity);
    state.ids.services.insert(identity, id);
    let mut planned = PlannedService {
        name: spec.name.clone(),
        id,
        mapping: *mapping,
        table_kind: (spec.scheduler, spec.maglev_table_size),
        frontends: Vec::new(),
        vip: spec.vip,
        routable: spec.socket_scope == 0 && !spec.tunnel_only,
        backends: Vec::new(),
    };
    for backend in spec.backends.iter().filter(|b| b.address.is_ipv6() == v6) {
        let target = SocketAddr::new(backend.address, backend.target_port(mapping));
        let mut flags = backend_flags::IN_USE;
        if let Some(node) = backend.mesh.and_then(|m| m.via) {
            // A task on a node that is not (or no longer) a peer is reached by no one here.
            let Some(index) = state.tunnel.index(node) else {
                continue;
            };
            flags |= u16::from(index) << backend_flags::PEER_SHIFT;
        }
        flags |= on_link_flags(backend, node);
        let backend_id = backend_ids.id(&(id, target));
        pending.backend_ids.push(((id, target), backend_id));
        pending.backends.push((
            backend_id,
            Backend {
                addr: Addr::from(target.ip()),
                port_be: target.port().to_be(),
                flags,
                service_id: id,
            },
        ));
        pending.endpoints.push(endpoint(target, mapping));
        planned.backends.push(PlannedBackend {
            id: backend_id,
            target,
            weight: backend.weight,
            identity: backend
                .mesh
                .map_or(target, |m| SocketAddr::new(m.identity, target.port())),
        });
    }
    let service = service_value(spec, id);
    if let Some(vip) = spec.vip {
        // Echo requests to the VIP are answered by the dataplane (nothing else owns it).
        let icmp = if vip.is_ipv6() {
            proto::ICMPV6
        } else {
            proto::ICMP
        };
        state
            .frontends
            .entry(EndpointKey {
                addr: Addr::from(vip),
                port_be: 0,
                proto: icmp,
                _pad: 0,
            })
            .or_insert(service);
    }
    for frontend_addr in frontend_addrs {
        let frontend = SocketAddr::new(*frontend_addr, mapping.frontend);
        if let Some(other) = state.frontends.insert(endpoint(frontend, mapping), service)
            && other.id != service.id
        {
            // A VIP that is also one of this node's addresses, claimed by a VIP-less service.
            let other = state
                .services
                .iter()
                .find(|s| s.id == other.id)
                .map_or_else(String::new, |s| s.name.clone());
            return Err(PlanError::FrontendConflict {
                frontend: format!("{frontend}/{}", mapping.protocol),
                services: [other, spec.name.clone()],
            });
        }
        planned.frontends.push(frontend);
    }
    state.services.push(planned);
    Ok(())
}

/// Replies to full NAT come back to node addresses on ports 61000-65535; a port published on
/// every node address in that range would take them for new flows.
/// Refuses a backend that is one of this node's frontends (a VIP or a published port, in
/// the backend's protocol): its packets would be balanced again, never reaching a server.
/// Swarm tasks behind the mesh are reached through frontends of their own and are left out.
fn check_no_loops(state: &DesiredState) -> Result<(), PlanError> {
    for planned in &state.services {
        for backend in &planned.backends {
            if backend.identity != backend.target {
                continue; // a swarm task: its delivery frontend is meant to take it
            }
            let key = endpoint(backend.target, &planned.mapping);
            let Some(frontend) = state.frontends.get(&key) else {
                continue;
            };
            if frontend.flags & service_flags::TUNNEL_ONLY != 0 {
                continue;
            }
            let frontend_of = state
                .services
                .iter()
                .find(|s| s.id == frontend.id)
                .map_or_else(String::new, |s| s.name.clone());
            return Err(PlanError::BackendIsFrontend {
                service: planned.name.clone(),
                backend: format!("{}/{}", backend.target, planned.mapping.protocol),
                frontend_of,
            });
        }
    }
    Ok(())
}

fn check_fullnat_ports(file: &ServiceFile) -> Result<(), PlanError> {
    if !file
        .services
        .values()
        .any(|s| s.forwarding == Forwarding::FullNat)
    {
        return Ok(());
    }
    let range = FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX;
    for spec in file.services.values().filter(|s| s.vip.is_none()) {
        if let Some(mapping) = spec.ports.iter().find(|m| range.contains(&m.frontend)) {
            return Err(PlanError::Unsupported {
                service: spec.name.clone(),
                field: "ports",
                message: format!(
                    "port {} is in {FULLNAT_PORT_MIN}-{FULLNAT_PORT_MAX}, where full NAT receives its replies on the node's addresses; publish it on another port, or give the service a VIP",
                    mapping.frontend
                ),
            });
        }
    }
    Ok(())
}

fn check_capacity(what: &'static str, count: usize, max: u32) -> Result<(), PlanError> {
    if count > max as usize {
        return Err(PlanError::Capacity { what, count, max });
    }
    Ok(())
}

/// What the dataplane cannot do, refused up front rather than accepted and ignored.
fn check_supported(spec: &ServiceSpec) -> Result<(), PlanError> {
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
                "backends[{i}] ({}) is not of the vip's address family ({vip}); meshlb translates addresses, not families: use backends of the vip's family, put the others in a service of their own with a vip of theirs, or drop the vip to publish on every node address",
                spec.backends[i].address
            ),
        });
    }
    Ok(())
}

fn service_value(spec: &ServiceSpec, id: u32) -> Service {
    let mut flags = 0;
    if spec.scheduler == Scheduler::RoundRobin {
        flags |= service_flags::ROUND_ROBIN;
    }
    match spec.affinity {
        Affinity::None => {}
        Affinity::ClientIp => flags |= service_flags::AFFINITY_CLIENT_IP,
        Affinity::AnyNode => flags |= service_flags::AFFINITY_ANY_NODE,
    }
    if spec.forwarding == Forwarding::FullNat {
        flags |= service_flags::FULLNAT;
    }
    flags |= match spec.on_backend_removal {
        RemovalPolicy::Keep => 0,
        RemovalPolicy::Move => service_flags::MOVE_ON_REMOVAL,
        // UDP flows move; TCP flows are answered with a RST.
        RemovalPolicy::Reset => service_flags::MOVE_ON_REMOVAL | service_flags::RESET_ON_REMOVAL,
    };
    flags |= u32::from(spec.socket_scope) << service_flags::SOCKET_SCOPE_SHIFT;
    if spec.tunnel_only {
        flags |= service_flags::TUNNEL_ONLY;
    }
    Service {
        id,
        flags,
        tcp_timeout_s: spec.timeouts.tcp_s,
        udp_timeout_s: spec.timeouts.udp_s,
    }
}

fn endpoint(socket: SocketAddr, mapping: &PortMapping) -> EndpointKey {
    EndpointKey {
        addr: Addr::from(socket.ip()),
        port_be: socket.port().to_be(),
        proto: mapping.protocol.number(),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn plan_of(yaml: &str, node: &[&str]) -> Result<DesiredState, PlanError> {
        let file = ServiceFile::parse(yaml, Path::new("t.yaml")).expect("valid file");
        let node: Vec<IpAddr> = node.iter().map(|a| a.parse().unwrap()).collect();
        plan(&file, &NodeFacts::with_addresses(&node))
    }

    fn key(socket: &str, protocol: u8) -> EndpointKey {
        let socket: SocketAddr = socket.parse().unwrap();
        EndpointKey {
            addr: Addr::from(socket.ip()),
            port_be: socket.port().to_be(),
            proto: protocol,
            _pad: 0,
        }
    }

    const NODE: [&str; 3] = ["198.18.1.1", "198.18.2.1", "fd00:1::1"];

    fn node_facts() -> NodeFacts {
        NodeFacts::with_addresses(&NODE.map(|a| a.parse().unwrap()))
    }

    /// Only a task this node reaches on a subnet of known length the flags hold gets the
    /// hairpin bits; a task on another node or a file's backend outside the node's connected
    /// subnets does not.
    #[test]
    fn on_link_prefix_marks_tasks_on_a_known_subnet_only() {
        use crate::source::file::MeshBackend;
        let backend = |address: &str, via: Option<&str>, prefix: Option<u8>| BackendSpec {
            address: address.parse().unwrap(),
            port: None,
            weight: 1,
            mesh: Some(MeshBackend {
                identity: "198.19.0.6".parse().unwrap(),
                via: via.map(|v| v.parse().unwrap()),
                on_link_prefix: prefix,
            }),
        };
        let bits = |b: &BackendSpec| {
            (on_link_flags(b, &NodeFacts::default()) & backend_flags::ON_LINK_MASK)
                >> backend_flags::ON_LINK_SHIFT
        };
        assert_eq!(bits(&backend("198.18.61.3", None, Some(24))), 24);
        assert_eq!(bits(&backend("198.18.61.3", None, Some(32))), 32);
        assert_eq!(
            on_link_flags(
                &backend("198.18.61.3", None, Some(24)),
                &NodeFacts::default()
            ) & !backend_flags::ON_LINK_MASK,
            0
        );
        assert_eq!(bits(&backend("198.18.61.3", None, None)), 0);
        assert_eq!(bits(&backend("198.18.61.3", None, Some(33))), 0);
        assert_eq!(
            bits(&backend("198.19.0.6", Some("198.18.50.2"), Some(24))),
            0
        );
        assert_eq!(bits(&backend("fd00:61::3", None, Some(64))), 64);
        assert_eq!(bits(&backend("fd00:61::3", None, Some(127))), 127);
        assert_eq!(bits(&backend("fd00:61::3", None, Some(128))), 0, "too long");
        let file_backend = BackendSpec {
            mesh: None,
            ..backend("198.18.61.3", None, Some(24))
        };
        assert_eq!(bits(&file_backend), 0);
        // And the plan writes them into the backend's kernel entry.
        let mut file = ServiceFile::parse(
            "services:\n  who:\n    ports: [\"8081:80/tcp\"]\n    backends: [\"198.18.61.3\"]\n",
            Path::new("t.yaml"),
        )
        .expect("valid file");
        file.services.get_mut("who").unwrap().backends[0] = backend("198.18.61.3", None, Some(24));
        let state = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.50.1".parse().unwrap()]),
        )
        .expect("plan");
        let written: Vec<u16> = state.backends.values().map(|b| b.flags).collect();
        assert_eq!(
            written,
            [backend_flags::IN_USE | 24 << backend_flags::ON_LINK_SHIFT]
        );
        // And explain says which clients it speaks for.
        let hairpin = |client: &str| match state.explain(
            proto::TCP,
            client.parse().unwrap(),
            "198.18.50.1:8081".parse().unwrap(),
        ) {
            Explanation::Maglev { hairpin, .. } => hairpin,
            other => panic!("{other}"),
        };
        assert!(hairpin("198.18.61.9:40000"));
        assert!(hairpin("198.18.61.3:40000"), "the task itself");
        assert!(!hairpin("198.18.62.9:40000"));
        assert!(!hairpin("198.18.1.2:40000"));
    }

    /// A file or API backend inside one of the node's connected IPv4 subnets gets that
    /// subnet's prefix in its flags, and explain calls its neighbours' flows (and its own)
    /// hairpins; one outside them or at the node's own address does not, a task keeps its
    /// provider's word, and a replan follows the node's subnets.
    #[test]
    fn a_file_backend_in_a_connected_subnet_gets_its_prefix() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let subnet = |network: &str, prefix| ConnectedSubnet {
            network: network.parse().unwrap(),
            prefix,
        };
        let node = NodeFacts {
            addresses: vec![ip("198.18.2.1"), ip("198.18.1.1"), ip("fd00:2::1")],
            connected: vec![
                subnet("198.18.1.0", 24),
                subnet("198.18.2.0", 24),
                subnet("fd00:2::", 64),
            ],
        };
        let yaml = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
  others:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: ["198.18.3.10", "198.18.2.1", "198.18.2.11"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    backends: ["fd00:2::a"]
  others6:
    vip: "fd00:100::2"
    ports: ["80:8080/tcp"]
    backends: ["fd00:3::a"]
"#;
        let mut file = ServiceFile::parse(yaml, Path::new("t.yaml")).expect("valid file");
        file.services.get_mut("others").unwrap().backends[2].mesh =
            Some(crate::source::file::MeshBackend {
                identity: ip("198.19.0.6"),
                via: None,
                on_link_prefix: Some(28),
            });
        let prefixes = |state: &DesiredState| -> BTreeMap<IpAddr, u8> {
            state
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .map(|b| {
                    let flags = state.backends[&b.id].flags;
                    (b.target.ip(), backend_flags::on_link_prefix(flags))
                })
                .collect()
        };
        let state = plan(&file, &node).expect("plan");
        assert_eq!(
            prefixes(&state),
            BTreeMap::from([
                (ip("198.18.2.1"), 0),
                (ip("198.18.2.10"), 24),
                (ip("198.18.2.11"), 28),
                (ip("198.18.3.10"), 0),
                (ip("fd00:2::a"), 64),
                (ip("fd00:3::a"), 0),
            ])
        );
        let hairpin = |state: &DesiredState, client: &str| match state.explain(
            proto::TCP,
            client.parse().unwrap(),
            "198.18.100.1:80".parse().unwrap(),
        ) {
            Explanation::Maglev { hairpin, .. } => hairpin,
            other => panic!("{other}"),
        };
        assert!(hairpin(&state, "198.18.2.11:40000"), "a neighbour");
        assert!(hairpin(&state, "198.18.2.10:40000"), "the backend itself");
        assert!(
            !hairpin(&state, "198.18.1.2:40000"),
            "a client of another subnet"
        );
        // The same for IPv6: the backend is fd00:2::a alone, so any client of its /64 is
        // answered through the node.
        let hairpin6 = |client: &str| match state.explain(
            proto::TCP,
            client.parse().unwrap(),
            "[fd00:100::1]:80".parse().unwrap(),
        ) {
            Explanation::Maglev {
                hairpin, backend, ..
            } => {
                assert_eq!(backend.ip(), ip("fd00:2::a"), "{client}");
                hairpin
            }
            other => panic!("{other}"),
        };
        assert!(hairpin6("[fd00:2::b]:40000"), "an IPv6 neighbour");
        assert!(hairpin6("[fd00:2::a]:40000"), "the IPv6 backend itself");
        assert!(!hairpin6("[fd00:1::2]:40000"), "a client of another subnet");
        assert!(!hairpin6("[fd00:3::b]:40000"), "a client of another subnet");
        // The subnet narrows to a /25 the backend is in but the neighbour is not, then goes.
        let mut narrowed = node.clone();
        narrowed.connected[1] = subnet("198.18.2.0", 25);
        let Replan::Full(state) = replan(&file, &narrowed, &state).expect("replan") else {
            panic!("a change of the node's subnets is a whole replan");
        };
        assert_eq!(prefixes(&state)[&ip("198.18.2.10")], 25);
        assert!(!hairpin(&state, "198.18.2.200:40000"));
        assert!(hairpin(&state, "198.18.2.11:40000"));
        narrowed.connected.remove(1);
        let Replan::Full(state) = replan(&file, &narrowed, &state).expect("replan") else {
            panic!("a change of the node's subnets is a whole replan");
        };
        assert_eq!(prefixes(&state)[&ip("198.18.2.10")], 0);
        assert!(!hairpin(&state, "198.18.2.11:40000"));
    }

    #[test]
    fn mesh_peers_keep_their_index_when_others_join_or_leave() {
        use crate::source::file::MeshNodes;
        let ip = |s: &str| -> std::net::Ipv4Addr { s.parse().unwrap() };
        let mesh = |peers: &[&str]| MeshNodes {
            own: ip("198.18.50.9"),
            peers: peers
                .iter()
                .map(|p| ip(p))
                .chain([ip("198.18.50.9")])
                .collect(),
        };
        let indexed = |plan: &TunnelPlan| -> Vec<(u8, String)> {
            plan.peers
                .iter()
                .map(|(i, a)| (*i, a.to_string()))
                .collect()
        };
        let first = TunnelPlan::of(
            Some(&mesh(&["198.18.50.1", "198.18.50.2", "198.18.50.3"])),
            None,
        );
        assert_eq!(first.own, Some(ip("198.18.50.9")));
        assert_eq!(
            indexed(&first),
            [
                (1, "198.18.50.1".into()),
                (2, "198.18.50.2".into()),
                (3, "198.18.50.3".into())
            ]
        );
        // .1 leaves: .2 and .3 keep 2 and 3 (not 1 and 2, which their flows do not name).
        let left = TunnelPlan::of(Some(&mesh(&["198.18.50.2", "198.18.50.3"])), Some(&first));
        assert_eq!(
            indexed(&left),
            [(2, "198.18.50.2".into()), (3, "198.18.50.3".into())]
        );
        // Nodes join: they take the indexes after the last one given, not .1's, which the
        // replies of its flows still name.
        let joined = TunnelPlan::of(
            Some(&mesh(&[
                "198.18.50.0",
                "198.18.50.2",
                "198.18.50.3",
                "198.18.50.4",
            ])),
            Some(&left),
        );
        assert_eq!(
            indexed(&joined),
            [
                (2, "198.18.50.2".into()),
                (3, "198.18.50.3".into()),
                (4, "198.18.50.0".into()),
                (5, "198.18.50.4".into())
            ]
        );
        assert_eq!(joined.index("198.18.50.3".parse().unwrap()), Some(3));
        // Nothing new: the same plan, the search where it was.
        assert_eq!(
            TunnelPlan::of(
                Some(&mesh(&[
                    "198.18.50.0",
                    "198.18.50.2",
                    "198.18.50.3",
                    "198.18.50.4"
                ])),
                Some(&joined)
            ),
            joined
        );
        // Past 254 the search wraps, and skips indexes in use.
        let high = TunnelPlan {
            own: Some(ip("198.18.50.9")),
            peers: BTreeMap::from([(254, ip("198.18.50.2")), (1, ip("198.18.50.3"))]),
            next: 254,
        };
        let wrapped = TunnelPlan::of(
            Some(&mesh(&["198.18.50.2", "198.18.50.3", "198.18.50.7"])),
            Some(&high),
        );
        assert_eq!(wrapped.index("198.18.50.7".parse().unwrap()), Some(2));
        assert_eq!(wrapped.next, 3);
        assert_eq!(TunnelPlan::of(None, Some(&joined)), TunnelPlan::default());
    }

    #[test]
    fn vip_service_gets_one_kernel_service_per_port_with_resolved_backend_ports() {
        let state = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53/udp"]
    backends: ["198.18.2.10", "198.18.2.11:9000"]
"#,
            &NODE,
        )
        .unwrap();
        assert_eq!(state.services.len(), 2);
        // Two ports, and the VIP itself for echo requests.
        assert_eq!(state.frontends.len(), 3);
        assert_eq!(state.frontends[&key("198.18.100.1:0", proto::ICMP)].id, 0);
        let web80 = state.frontends[&key("198.18.100.1:80", proto::TCP)];
        let web53 = state.frontends[&key("198.18.100.1:53", proto::UDP)];
        assert_ne!(web80.id, web53.id);
        let targets: Vec<String> = state.services[0]
            .backends
            .iter()
            .map(|b| b.target.to_string())
            .collect();
        assert_eq!(targets, ["198.18.2.10:8080", "198.18.2.11:9000"]);
        // Replies are recognised by backend endpoint, per port mapping.
        assert!(
            state
                .endpoints
                .contains_key(&key("198.18.2.10:8080", proto::TCP))
        );
        assert!(
            state
                .endpoints
                .contains_key(&key("198.18.2.10:53", proto::UDP))
        );
        assert!(
            state
                .endpoints
                .contains_key(&key("198.18.2.11:9000", proto::UDP))
        );
        // Backend ids start at 1 (0 means none) and tables hold only them.
        assert!(!state.backends.contains_key(&0));
        for table in state.tables.values() {
            let table = table.build().unwrap();
            assert_eq!(table.len(), 16381);
            assert!(table.iter().all(|id| state.backends.contains_key(id)));
        }
    }

    #[test]
    fn published_ports_answer_on_every_node_address_of_the_backends_family() {
        let state = plan_of(
            r#"
services:
  v4only:
    ports: ["8000:80/tcp"]
    backends: ["198.18.2.10"]
  dual:
    ports: ["9000:80/tcp"]
    backends: ["198.18.2.10", "fd00:2::a"]
"#,
            &NODE,
        )
        .unwrap();
        for frontend in [
            "198.18.1.1:8000",
            "198.18.2.1:8000",
            "198.18.1.1:9000",
            "[fd00:1::1]:9000",
        ] {
            assert!(
                state.frontends.contains_key(&key(frontend, proto::TCP)),
                "{frontend}"
            );
        }
        assert!(
            !state
                .frontends
                .contains_key(&key("[fd00:1::1]:8000", proto::TCP))
        );
        // Loopback of the family too, for the node's own processes (socket-level path).
        let v4 = state.frontends[&key("198.18.1.1:8000", proto::TCP)];
        assert_eq!(state.frontends[&key("127.0.0.1:8000", proto::TCP)], v4);
        assert!(!state.frontends.contains_key(&key("[::1]:8000", proto::TCP)));
        assert!(state.frontends.contains_key(&key("[::1]:9000", proto::TCP)));
        // dual: one kernel service per family, each with that family's backend only.
        let v6 = state.frontends[&key("[fd00:1::1]:9000", proto::TCP)];
        let v4 = state.frontends[&key("198.18.1.1:9000", proto::TCP)];
        assert_ne!(v4.id, v6.id);
        let v6_backends = &state.services[v6.id as usize].backends;
        assert_eq!(v6_backends.len(), 1);
        assert!(v6_backends[0].target.is_ipv6());
    }

    #[test]
    fn mixed_families_behind_a_vip_are_refused_with_the_field() {
        let err = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    backends: ["198.18.2.10", "fd00:2::a"]
"#,
            &NODE,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("service \"web\""), "{text}");
        assert!(text.contains("backends[1]"), "{text}");
    }

    #[test]
    fn fullnat_sets_the_service_flag() {
        let state = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    forwarding: fullnat
    backends: ["198.18.2.10"]
"#,
            &NODE,
        )
        .unwrap();
        let web = state.frontends[&key("198.18.100.1:80", proto::TCP)];
        assert_eq!(
            web.flags,
            service_flags::FULLNAT | service_flags::MOVE_ON_REMOVAL
        );
    }

    #[test]
    fn drained_or_missing_backends_give_an_empty_table_but_keep_reply_translation() {
        let state = plan_of(
            r#"
services:
  drained:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    backends: [{ address: 198.18.2.10, weight: 0 }]
  empty:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    backends: []
"#,
            &NODE,
        )
        .unwrap();
        assert!(state.tables.values().all(|t| t.build().unwrap().is_empty()));
        // The drained backend still exists, so its established flows keep being translated.
        assert_eq!(state.backends.len(), 1);
        assert_eq!(state.endpoints.len(), 1);
    }

    #[test]
    fn flags_and_timeouts_reach_the_kernel_value() {
        let state = plan_of(
            r#"
services:
  rr:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    scheduler: round-robin
    timeouts: { tcp: 2h, udp: 30s }
    backends: ["198.18.2.10", { address: 198.18.2.11, weight: 2 }]
  sticky:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    affinity: client-ip
    backends: ["198.18.2.10"]
  strict:
    vip: 198.18.100.3
    ports: ["80/tcp"]
    on_backend_removal: reset
    backends: ["198.18.2.10"]
  lenient:
    vip: 198.18.100.4
    ports: ["80/tcp"]
    on_backend_removal: keep
    backends: ["198.18.2.10"]
"#,
            &NODE,
        )
        .unwrap();
        let rr = state.frontends[&key("198.18.100.1:80", proto::TCP)];
        assert_eq!(
            rr.flags,
            service_flags::ROUND_ROBIN | service_flags::MOVE_ON_REMOVAL
        );
        assert_eq!((rr.tcp_timeout_s, rr.udp_timeout_s), (7200, 30));
        // Weighted round-robin: 1 + 2 entries, the heavier backend twice.
        assert_eq!(state.tables[&rr.id].build().unwrap().len(), 3);
        let sticky = state.frontends[&key("198.18.100.2:80", proto::TCP)];
        assert_eq!(
            sticky.flags,
            service_flags::AFFINITY_CLIENT_IP | service_flags::MOVE_ON_REMOVAL
        );
        let strict = state.frontends[&key("198.18.100.3:80", proto::TCP)];
        assert_eq!(
            strict.flags,
            service_flags::MOVE_ON_REMOVAL | service_flags::RESET_ON_REMOVAL
        );
        let lenient = state.frontends[&key("198.18.100.4:80", proto::TCP)];
        assert_eq!(lenient.flags, 0);
    }

    #[test]
    fn no_node_address_of_the_family_is_an_error() {
        let err = plan_of(
            r#"
services:
  web:
    ports: ["80/tcp"]
    backends: ["fd00:2::a"]
"#,
            &["198.18.1.1"],
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::NoNodeAddress {
                service: "web".into()
            }
        );
    }

    #[test]
    fn explain_names_the_backend_and_the_reason() {
        let state = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
  rr:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10"]
"#,
            &NODE,
        )
        .unwrap();
        let client: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let web: SocketAddr = "198.18.100.1:80".parse().unwrap();
        match state.explain(proto::TCP, client, web) {
            Explanation::Maglev {
                backend,
                slot,
                table_len,
                ..
            } => {
                assert!(slot < table_len);
                assert!(backend.port() == 8080, "{backend}");
            }
            other => panic!("{other}"),
        }
        let rr = state.explain(proto::TCP, client, "198.18.100.2:80".parse().unwrap());
        assert!(
            matches!(rr, Explanation::RoundRobin { ref sequence, .. } if sequence.len() == 1),
            "{rr}"
        );
        assert_eq!(
            state.explain(proto::UDP, client, web),
            Explanation::NotAFrontend,
            "wrong protocol"
        );
    }

    #[test]
    fn explain_a_socket_level_vip_on_any_port() {
        // A swarm VIP: every port, served by the socket-level programs for its network.
        let mut file = ServiceFile::parse(
            "services:\n  api:\n    vip: 198.19.10.2\n    ports: [\"1/tcp\"]\n    \
             backends: [\"198.19.10.5\", \"198.19.10.6\"]\n",
            Path::new("swarm"),
        )
        .unwrap();
        // Swarm VIP services are named SERVICE@NETWORK, a name no file may use.
        let mut spec = file.services.remove("api").unwrap();
        spec.name = "api@appnet".into();
        spec.ports[0].frontend = lb_common::maps::ANY_PORT;
        spec.ports[0].backend = lb_common::maps::ANY_PORT;
        spec.socket_scope = 1;
        file.services.insert(spec.name.clone(), spec);
        let node = node_facts();
        let state = plan(&file, &node).unwrap();
        let client: SocketAddr = "198.19.10.9:40000".parse().unwrap();
        let vip: SocketAddr = "198.19.10.2:8081".parse().unwrap();
        let explained = state.explain(proto::TCP, client, vip);
        assert_eq!(
            explained,
            Explanation::SocketLevel {
                service: "api@appnet 0/tcp".into(),
                per_namespace: false,
                backends: vec![
                    "198.19.10.5:8081".parse().unwrap(),
                    "198.19.10.6:8081".parse().unwrap()
                ],
            },
            "{explained}"
        );
        assert!(
            explained.to_string().contains("socket-level"),
            "{explained}"
        );
        assert_eq!(
            state.explain(proto::UDP, client, "198.19.10.3:8081".parse().unwrap()),
            Explanation::NotAFrontend
        );
    }

    #[test]
    fn a_backend_that_is_a_frontend_is_refused() {
        let looped = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
  front:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    backends: ["198.18.100.1"]
"#;
        let err = plan_of(looped, &NODE).unwrap_err();
        assert_eq!(
            err,
            PlanError::BackendIsFrontend {
                service: "front".into(),
                backend: "198.18.100.1:80/tcp".into(),
                frontend_of: "web".into(),
            }
        );
        // A published port of this node, as a backend.
        let published = r#"
services:
  api:
    ports: ["8000:8080/tcp"]
    backends: ["198.18.2.10"]
  again:
    vip: 198.18.100.3
    ports: ["80:8000/tcp"]
    backends: ["198.18.1.1"]
"#;
        assert!(matches!(
            plan_of(published, &NODE),
            Err(PlanError::BackendIsFrontend { .. })
        ));
        // The same address on another port, or in the other protocol, is no loop.
        let fine = looped.replace(
            "backends: [\"198.18.100.1\"]",
            "backends: [\"198.18.100.1:81\"]",
        );
        assert!(plan_of(&fine, &NODE).is_ok());
    }

    #[test]
    fn replanning_keeps_ids_and_changes_only_what_changed() {
        let v1 = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  api:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    backends: ["198.18.2.10"]
"#,
            &NODE,
        )
        .unwrap();
        let file = ServiceFile::parse(
            r#"
services:
  api:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    backends: ["198.18.2.10"]
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.12", "198.18.2.13"]
  new:
    vip: 198.18.100.3
    ports: ["80/tcp"]
    backends: ["198.18.2.14"]
"#,
            Path::new("t.yaml"),
        )
        .unwrap();
        let node = node_facts();
        let v2 = plan_from(&file, &node, Some(&v1)).unwrap();
        let id_of = |state: &DesiredState, vip: &str| state.frontends[&key(vip, proto::TCP)].id;
        assert_eq!(id_of(&v1, "198.18.100.1:80"), id_of(&v2, "198.18.100.1:80"));
        assert_eq!(id_of(&v1, "198.18.100.2:80"), id_of(&v2, "198.18.100.2:80"));
        // api is untouched: same frontend value, same table, same backend entry.
        let api = id_of(&v2, "198.18.100.2:80");
        assert_eq!(v1.tables[&api], v2.tables[&api]);
        let backend_id = |state: &DesiredState, service: u32, target: &str| {
            state.ids.backends[&(service, target.parse().unwrap())]
        };
        let web = id_of(&v2, "198.18.100.1:80");
        for kept in ["198.18.2.10:8080", "198.18.2.12:8080"] {
            assert_eq!(
                backend_id(&v1, web, kept),
                backend_id(&v2, web, kept),
                "{kept}"
            );
        }
        // Ids just freed are not handed out again at once.
        let removed = backend_id(&v1, web, "198.18.2.11:8080");
        assert!(!v2.backends.contains_key(&removed));
        let added = backend_id(&v2, web, "198.18.2.13:8080");
        assert!(!v1.backends.contains_key(&added));
        let new = id_of(&v2, "198.18.100.3:80");
        assert!(!v1.tables.contains_key(&new));
        // The same file again plans exactly the same state.
        assert_eq!(plan_from(&file, &node, Some(&v2)).unwrap(), v2);
    }

    #[test]
    fn a_vip_that_is_a_node_address_cannot_share_a_published_port() {
        let err = plan_of(
            r#"
services:
  a:
    vip: 198.18.1.1
    ports: ["80/tcp"]
    backends: ["198.18.2.10"]
  b:
    ports: ["80/tcp"]
    backends: ["198.18.2.11"]
"#,
            &NODE,
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::FrontendConflict { .. }), "{err}");
        assert!(err.to_string().contains("198.18.1.1:80/tcp"), "{err}");
    }

    #[test]
    fn published_ports_in_the_fullnat_range_are_refused_when_fullnat_is_used() {
        let err = plan_of(
            r#"
services:
  full:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    forwarding: fullnat
    backends: ["198.18.2.10"]
  high:
    ports: ["62000/tcp"]
    backends: ["198.18.2.11"]
"#,
            &NODE,
        )
        .unwrap_err();
        assert!(
            matches!(err, PlanError::Unsupported { field: "ports", .. }),
            "{err}"
        );
    }

    #[test]
    fn endpoints_of_removed_backends_linger_so_their_replies_are_still_translated() {
        let yaml = |backends: &str| {
            format!(
                "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [{backends}]\n"
            )
        };
        let v1 = plan_of(&yaml(r#""198.18.2.10", "198.18.2.11""#), &NODE).unwrap();
        let file = ServiceFile::parse(&yaml(r#""198.18.2.10""#), Path::new("t.yaml")).unwrap();
        let node = node_facts();
        let v2 = plan_from(&file, &node, Some(&v1)).unwrap();
        assert_eq!(
            v2.endpoints.get(&key("198.18.2.11:80", proto::TCP)),
            Some(&0)
        );
        assert_eq!(v2.backends.len(), 1, "the backend itself is gone");
    }

    #[test]
    fn a_new_service_on_a_vip_never_recovers_the_id_of_another_by_the_vips_echo_key() {
        let before = plan_of(
            "services:\n  x:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [\"198.18.2.10\"]\n",
            &NODE,
        )
        .unwrap();
        let kernel_backends: Vec<(u32, Backend)> =
            before.backends.iter().map(|(id, b)| (*id, *b)).collect();
        // `a` sorts first: in a fresh plan it owns the VIP's echo key, whose kernel entry is x's.
        let text = "services:\n  a:\n    vip: 198.18.100.1\n    ports: [\"443/tcp\"]\n    backends: [\"198.18.2.11\"]\n  x:\n    vip: 198.18.100.1\n    ports: [\"80/tcp\"]\n    backends: [\"198.18.2.10\"]\n";
        let fresh = plan_of(text, &NODE).unwrap();
        let ids = Ids::recover(&fresh, &before.frontends, &kernel_backends);
        let file = ServiceFile::parse(text, Path::new("s.yaml")).unwrap();
        let node = node_facts();
        let recovered = plan_from(&file, &node, Some(&DesiredState::with_ids(ids))).unwrap();
        let id_of = |name: &str| {
            recovered
                .services
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .id
        };
        assert_eq!(id_of("x"), before.services[0].id, "x keeps its id");
        assert_ne!(id_of("a"), id_of("x"), "two services, two ids");
        assert_eq!(recovered.tables.len(), 2);
    }

    #[test]
    fn ids_are_recovered_from_the_kernel_entries() {
        let before = plan_of(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
  dns:
    vip: 198.18.100.2
    ports: ["53/udp"]
    backends: ["198.18.2.12"]
  zzz:
    vip: 198.18.100.9
    ports: ["82/tcp"]
    backends: ["198.18.2.14", "198.18.2.15"]
"#,
            &NODE,
        )
        .unwrap();
        let kernel_backends: Vec<(u32, Backend)> =
            before.backends.iter().map(|(id, b)| (*id, *b)).collect();
        // The same services plus one that sorts first: a fresh plan numbers them otherwise.
        let text = r#"
services:
  aaa:
    vip: 198.18.100.3
    ports: ["81/tcp"]
    backends: ["198.18.2.13"]
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11"]
  dns:
    vip: 198.18.100.2
    ports: ["53/udp"]
    backends: ["198.18.2.12"]
"#;
        let fresh = plan_of(text, &NODE).unwrap();
        let id_of = |state: &DesiredState, name: &str| {
            state.services.iter().find(|s| s.name == name).unwrap().id
        };
        assert_ne!(
            id_of(&fresh, "web"),
            id_of(&before, "web"),
            "the test needs a renumbering"
        );
        let ids = Ids::recover(&fresh, &before.frontends, &kernel_backends);
        let file = ServiceFile::parse(text, Path::new("s.yaml")).unwrap();
        let node = node_facts();
        let recovered = plan_from(&file, &node, Some(&DesiredState::with_ids(ids))).unwrap();
        for name in ["web", "dns"] {
            assert_eq!(id_of(&recovered, name), id_of(&before, name), "{name}");
        }
        let kept = [id_of(&before, "web"), id_of(&before, "dns")];
        for (id, backend) in before
            .backends
            .iter()
            .filter(|(_, b)| kept.contains(&b.service_id))
        {
            assert_eq!(recovered.backends.get(id), Some(backend), "backend {id}");
        }
        // The new service took ids nobody held: not those of `zzz`, removed while no lbd ran,
        // whose frontend and table the previous program still uses until they are pruned.
        let aaa = id_of(&recovered, "aaa");
        assert!(!before.services.iter().any(|s| s.id == aaa), "{aaa}");
        for id in recovered.backends.keys() {
            let was = before.backends.get(id);
            assert!(
                was.is_none_or(|b| recovered.backends[id] == *b),
                "backend {id}"
            );
        }
        assert!(!recovered.services.iter().any(|s| s.name.starts_with('\0')));
        // Held for this plan only: the next gives them out again.
        assert!(
            !recovered
                .ids
                .services
                .keys()
                .any(|(name, _, _)| name.starts_with('\0'))
        );
        assert!(!recovered.ids.backends.keys().any(|(s, _)| *s == u32::MAX));
    }
}
