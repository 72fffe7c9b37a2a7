//! What a swarm service becomes: services in the service file's own terms.
//!
//! Rules (also in the README's Swarm section):
//! - Each port published in ingress mode is a frontend on every node address; host-mode ports
//!   are Docker's and never appear here (the ingress network does not list them).
//! - The Engine gives no protocol for ingress ports on workers. A port listed once is TCP,
//!   unless the service's policy (the service file's `swarm:` section, the same file on every
//!   node) names it in `udp_ports`; a port listed twice with one target is TCP and UDP. A port
//!   listed twice with two targets cannot be told apart and is refused for that service.
//! - Backends are all the service's running tasks, at the target port, in the order of their
//!   ingress addresses, each known to Maglev by that address: every node builds the same
//!   table, so a flow gets the same task whichever node it enters. A local task is reached
//!   through `docker_gwbridge`; a task on another node through the mesh tunnel to that node
//!   (see lb-ebpf's `tunnel`), where its *delivery frontend* (its ingress address and target
//!   port, taking only tunnel packets) hands it to the task. With `local_first`, a node with a
//!   running local task uses only its local tasks.
//! - A task the swarm is stopping (known on managers: see the snapshot's `stopping`) is a
//!   backend of weight 0: its established flows go on, new ones go to the other tasks. A local
//!   task whose health check has not passed takes no new flows here; the flows other nodes
//!   (which cannot see its health) send it go to the healthy local tasks (`delivery_backends`).
//! - Everything else (scheduler, affinity, timeouts, removal policy, table size) is the
//!   service's policy, or the defaults.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::snapshot::{INGRESS_NETWORK, LocalTask, PortListing, Snapshot, SwarmService, Task};
use crate::source::file::{
    Affinity, BackendSpec, Forwarding, MeshBackend, POLICY_VIP_SUFFIX, PortMapping, Protocol,
    Scheduler, ServiceSpec, SwarmPolicy,
};
use lb_common::limits::DEFAULT_MAGLEV_TABLE_SIZE;

/// The swarm's services for this node, and what could not be made of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmServices {
    /// Services with at least one ingress-published port.
    pub specs: Vec<ServiceSpec>,
    /// A service's VIP on an overlay network, named `SERVICE@NETWORK`: every port, TCP and
    /// UDP, for sockets of containers on that network only (the socket-level path), its
    /// backends the tasks' addresses on that network (local or not: the overlay reaches them).
    pub vip_specs: Vec<ServiceSpec>,
    /// The socket scope of each overlay network with a VIP (1-31, in name order).
    pub scopes: BTreeMap<String, u8>,
    /// Per local container on overlay networks: its pid and the scopes its sockets get.
    pub container_scopes: BTreeMap<String, (u32, u32)>,
    /// Per local task and published target port: its delivery frontend (named after the
    /// task), which peers' tunnel packets reach it by.
    pub delivery_specs: Vec<ServiceSpec>,
    /// This node and its peers, for the tunnel; `None` before the node's address is known.
    pub mesh: Option<crate::source::file::MeshNodes>,
    /// Per service: what `lbctl list` shows beyond the spec.
    pub details: BTreeMap<String, SwarmDetails>,
}

/// Facts about a swarm service that are not part of what is programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmDetails {
    /// VIP per overlay network (served by the socket-level path).
    pub vips: BTreeMap<String, IpAddr>,
    /// Running tasks this node reaches: task name to its `docker_gwbridge` address.
    pub local_tasks: BTreeMap<String, IpAddr>,
    /// Running tasks on other nodes, reached through the tunnel: task name to the node's
    /// data-path address.
    pub remote_tasks: BTreeMap<String, IpAddr>,
    /// Running tasks this node cannot reach (its node's address is unknown, or `local_first`
    /// leaves them out).
    pub unused_tasks: BTreeMap<String, Option<IpAddr>>,
    /// Tasks the swarm is stopping: they keep their flows and take no new ones.
    #[serde(default)]
    pub stopping_tasks: std::collections::BTreeSet<String>,
    /// Local tasks whose health check has not passed (or failed): no new flows from here;
    /// other nodes' flows for them go to the healthy local tasks.
    #[serde(default)]
    pub unhealthy_tasks: std::collections::BTreeSet<String>,
    /// Why a published port (or the whole service) is not served.
    pub problems: Vec<String>,
}

impl SwarmServices {
    /// Published services, then VIP services.
    pub fn all_specs(&self) -> Vec<ServiceSpec> {
        self.specs
            .iter()
            .chain(&self.vip_specs)
            .chain(&self.delivery_specs)
            .cloned()
            .collect()
    }
}

/// Overlay networks beyond this many get no VIP service (one bit each in a namespace's
/// scope mask; bit 0 is the node's).
const MAX_VIP_NETWORKS: usize = lb_common::maps::sock_netns::MAX_SCOPE as usize;

/// Turns `snapshot` into services; `policies` by swarm service name; `scopes`: the socket
/// scopes the running services give the overlay networks, which keep their numbers (see
/// `add_vips`).
pub fn services(
    snapshot: &Snapshot,
    policies: &BTreeMap<String, SwarmPolicy>,
    scopes: &BTreeMap<String, u8>,
) -> SwarmServices {
    let default = SwarmPolicy::default();
    let mut out = SwarmServices::default();
    let mut problems: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut listed: BTreeMap<&str, Vec<PortMapping>> = BTreeMap::new();
    for (name, service) in &snapshot.services {
        let policy = policies.get(name).unwrap_or(&default);
        let ports = port_mappings(service, policy, problems.entry(name).or_default());
        listed.insert(name, ports);
    }
    let served = give_each_port_one_service(snapshot, &listed, &mut problems);
    for (name, service) in &snapshot.services {
        let policy = policies.get(name).unwrap_or(&default);
        let mut details = SwarmDetails {
            vips: service.vips.clone(),
            problems: problems.remove(name.as_str()).unwrap_or_default(),
            ..Default::default()
        };
        let backends = backends(service, policy, &mut details);
        // A port given to another service keeps its delivery frontends too: a peer whose
        // read is older may still send this service's flows for it.
        let targets = &listed[name.as_str()];
        if !targets.is_empty() {
            add_delivery(name, service, policy, targets, &mut out.delivery_specs);
        }
        let ports = served.get(name.as_str()).cloned().unwrap_or_default();
        if !ports.is_empty() {
            let published = ServiceSpec {
                name: name.clone(),
                vip: None,
                ports,
                scheduler: policy.scheduler,
                forwarding: policy.forwarding,
                affinity: policy.affinity,
                timeouts: policy.timeouts,
                on_backend_removal: policy.on_backend_removal,
                maglev_table_size: policy.maglev_table_size,
                backends,
                health: None,
                socket_scope: 0,
                tunnel_only: false,
            };
            // The policy's VIP: the same ports and tasks at one more address, the same on
            // every node (announced through BIRD like any VIP with a usable backend).
            let on_vip = policy.vip.map(|vip| ServiceSpec {
                name: format!("{name}{POLICY_VIP_SUFFIX}"),
                vip: Some(vip),
                ..published.clone()
            });
            out.specs.push(published);
            out.specs.extend(on_vip);
        }
        out.details.insert(name.clone(), details);
    }
    add_vips(snapshot, policies, scopes, &mut out);
    out.mesh = mesh_nodes(snapshot);
    out
}

/// This node and every other node the swarm shows (tasks' nodes, the ingress network's
/// endpoints), by their data-path addresses: IPv4 underlay addresses.
fn mesh_nodes(snapshot: &Snapshot) -> Option<crate::source::file::MeshNodes> {
    let Some(IpAddr::V4(own)) = snapshot.mesh_addr() else {
        return None;
    };
    let peers = snapshot
        .nodes_shown()
        .filter_map(|a| match a {
            IpAddr::V4(a) if a != own => Some(a),
            _ => None,
        })
        .collect();
    Some(crate::source::file::MeshNodes { own, peers })
}

/// The delivery frontends of a service's local tasks: each task's ingress address at each
/// target port and protocol, to its `docker_gwbridge` address; only tunnel packets use them.
fn add_delivery(
    name: &str,
    service: &SwarmService,
    policy: &SwarmPolicy,
    ports: &[PortMapping],
    out: &mut Vec<ServiceSpec>,
) {
    let mut targets: Vec<PortMapping> = ports
        .iter()
        .map(|p| PortMapping {
            frontend: p.backend,
            backend: p.backend,
            protocol: p.protocol,
        })
        .collect();
    targets.sort();
    targets.dedup();
    // The local tasks that can take flows: those not being stopped take new ones.
    let usable: Vec<(&String, IpAddr, bool)> = service
        .tasks
        .iter()
        .filter_map(|(name, t)| {
            let local = t.local.as_ref().filter(|l| l.usable)?;
            Some((name, local.gwbridge, t.takes_new_flows()))
        })
        .collect();
    for (task_name, task) in &service.tasks {
        let (Some(local), Some(ingress)) = (&task.local, task.addresses.get(INGRESS_NETWORK))
        else {
            continue;
        };
        let mut spec_name = delivery_name(task_name);
        if spec_name == name {
            spec_name.push('_');
        }
        out.push(ServiceSpec {
            name: spec_name,
            vip: Some(*ingress),
            ports: targets.clone(),
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Nat,
            affinity: Affinity::None,
            timeouts: policy.timeouts,
            on_backend_removal: policy.on_backend_removal,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            backends: delivery_backends(task_name, task, local, &usable),
            health: None,
            socket_scope: 0,
            tunnel_only: true,
        });
    }
}

/// Where a local task's delivery frontend sends the flows other nodes chose it for: to the
/// task while it takes new flows here. Otherwise (unhealthy, or being stopped) new flows go to
/// the local tasks of the service that take them (`usable`: name, address, takes new flows)
/// and every usable one stays listed, a stopping one at weight 0 with its flows: the other
/// nodes cannot see a task's health, nor (workers) that it is being stopped, and their flows
/// would otherwise be refused, and a neighbour that starts stopping later keeps what it was
/// handed. An unhealthy task's own flows follow the service's `on_backend_removal`, as on this
/// node's own frontends. With no other local task taking new flows, to the task anyway.
fn delivery_backends(
    name: &str,
    task: &Task,
    local: &LocalTask,
    usable: &[(&String, IpAddr, bool)],
) -> Vec<BackendSpec> {
    let gwbridge = local.gwbridge;
    // All on this node's one `docker_gwbridge`: a client inside its subnet (Docker gives every
    // node the same one by default, so another node's container can be) is answered through
    // this node (hairpin, see `MeshBackend::on_link_prefix`).
    let backend = |address, weight| BackendSpec {
        address,
        port: None,
        weight,
        mesh: Some(MeshBackend {
            identity: address,
            via: None,
            on_link_prefix: local.gwbridge_prefix,
        }),
    };
    if task.serving_here().is_some() {
        return vec![backend(gwbridge, 1)];
    }
    let mut backends: Vec<BackendSpec> = usable
        .iter()
        .map(|&(n, address, serves)| backend(address, u32::from(serves && n != name)))
        .collect();
    if backends.iter().all(|b| b.weight == 0) {
        match backends.iter_mut().find(|b| b.address == gwbridge) {
            Some(own) => own.weight = 1,
            None => backends.push(backend(gwbridge, 1)),
        }
    }
    backends
}

/// A service none of whose backends takes new flows (every task being stopped, or not healthy
/// here) would drop them all: they go to every backend instead, as likely to be answered as
/// not.
fn all_take_flows_if_none_does(backends: &mut [BackendSpec]) {
    if backends.iter().all(|b| b.weight == 0) {
        for backend in backends {
            backend.weight = 1;
        }
    }
}

/// Characters of a task id, the end of every task name (`SERVICE.SLOT.ID`, or
/// `SERVICE.NODE_ID.ID` for a global service).
const TASK_ID_LEN: usize = 25;

/// The name of a task's delivery frontend: the task's name, or, over a service name's limit,
/// its start and its end (the task id, unique in the swarm) around a dot. Cutting the end
/// instead would give a global service's old and new task on one node (an update) the same
/// name, and only one of them a frontend.
fn delivery_name(task_name: &str) -> String {
    use crate::source::file::MAX_SERVICE_NAME_LEN;
    let chars: Vec<char> = task_name.chars().collect();
    if chars.len() <= MAX_SERVICE_NAME_LEN {
        return task_name.to_owned();
    }
    let head = &chars[..MAX_SERVICE_NAME_LEN - TASK_ID_LEN - 1];
    let tail = &chars[chars.len() - TASK_ID_LEN..];
    head.iter().chain(&['.']).chain(tail).collect()
}

/// The VIP services: one per service and overlay network it has a VIP on. Each network has a
/// socket scope (a bit of a namespace's mask): one it had in `previous` it keeps, a new one
/// takes the lowest free. Numbered afresh in name order, a network created with a name that
/// sorts first would renumber every other, and between the frontends' write and the
/// namespaces' a container would meet another network's VIPs.
fn add_vips(
    snapshot: &Snapshot,
    policies: &BTreeMap<String, SwarmPolicy>,
    previous: &BTreeMap<String, u8>,
    out: &mut SwarmServices,
) {
    let networks: std::collections::BTreeSet<&String> = snapshot
        .services
        .values()
        .flat_map(|s| s.vips.keys())
        .filter(|n| *n != INGRESS_NETWORK)
        .collect();
    let mut taken: std::collections::BTreeSet<u8> = networks
        .iter()
        .filter_map(|n| previous.get(*n))
        .copied()
        .filter(|&s| (1..=MAX_VIP_NETWORKS as u8).contains(&s))
        .collect();
    for network in networks {
        let kept = previous.get(network).copied().filter(|s| taken.contains(s));
        let scope = kept.or_else(|| {
            let free = (1..=MAX_VIP_NETWORKS as u8).find(|s| !taken.contains(s))?;
            taken.insert(free);
            Some(free)
        });
        let Some(scope) = scope else {
            for (name, service) in &snapshot.services {
                if service.vips.contains_key(network) {
                    out.details
                        .entry(name.clone())
                        .or_default()
                        .problems
                        .push(format!(
                            "VIP on {network} not served: meshlb serves VIPs on at most \
                         {MAX_VIP_NETWORKS} overlay networks per node"
                        ));
                }
            }
            continue;
        };
        out.scopes.insert(network.clone(), scope);
    }
    let default = SwarmPolicy::default();
    for (name, service) in &snapshot.services {
        let policy = policies.get(name).unwrap_or(&default);
        for (network, vip) in &service.vips {
            let Some(&scope) = out.scopes.get(network) else {
                continue;
            };
            // Same order on every node: by address on the network. A task being stopped, or
            // a local one not healthy, keeps its flows and takes no new ones (weight 0).
            let mut addresses: Vec<(IpAddr, u32)> = service
                .tasks
                .values()
                .filter_map(|t| Some((*t.addresses.get(network)?, u32::from(t.takes_new_flows()))))
                .filter(|(a, _)| a.is_ipv6() == vip.is_ipv6())
                .collect();
            addresses.sort();
            let mut backends: Vec<BackendSpec> = addresses
                .into_iter()
                .map(|(address, weight)| BackendSpec {
                    address,
                    port: None,
                    weight,
                    mesh: None,
                })
                .collect();
            all_take_flows_if_none_does(&mut backends);
            let any_port = lb_common::maps::ANY_PORT;
            out.vip_specs.push(ServiceSpec {
                name: format!("{name}@{network}"),
                vip: Some(*vip),
                ports: [Protocol::Tcp, Protocol::Udp]
                    .map(|protocol| PortMapping {
                        frontend: any_port,
                        backend: any_port,
                        protocol,
                    })
                    .to_vec(),
                scheduler: policy.scheduler,
                forwarding: Forwarding::Nat,
                affinity: policy.affinity,
                timeouts: policy.timeouts,
                on_backend_removal: policy.on_backend_removal,
                maglev_table_size: policy.maglev_table_size,
                backends,
                health: None,
                socket_scope: scope,
                tunnel_only: false,
            });
        }
    }
    for (id, container) in &snapshot.containers {
        let mask = container
            .networks
            .iter()
            .filter_map(|n| out.scopes.get(n))
            .fold(0u32, |mask, scope| mask | (1 << scope));
        if mask != 0 {
            out.container_scopes
                .insert(id.clone(), (container.pid, mask));
        }
    }
}

/// Each published port and protocol served for one service: a port two services list is
/// moving from one to the other (the swarm gives a port to one service at a time:
/// `--publish-rm` on one, then `--publish-add` on the other, while the first one's old tasks
/// still list it). Left to the merge, the later-named service would be refused whole, its
/// other ports too. Of the services that list it, those that kept listing it since the
/// others did (`PortListing::yields`) keep it, the one that listed it first (a service that
/// publishes a port for UDP only without naming it in `udp_ports` reads as TCP, and must not
/// take the port from the service that has it); if all let it go now and then (both rolling
/// out), the one that listed it last has it. Equal, the first named. The others serve the
/// rest of their ports, and say why not this one.
fn give_each_port_one_service<'a>(
    snapshot: &Snapshot,
    listed: &BTreeMap<&'a str, Vec<PortMapping>>,
    problems: &mut BTreeMap<&'a str, Vec<String>>,
) -> BTreeMap<&'a str, Vec<PortMapping>> {
    let mut claims: BTreeMap<(u16, Protocol), Vec<(&str, PortListing)>> = BTreeMap::new();
    for (&name, ports) in listed {
        let listings = &snapshot.services[name].port_listings;
        for port in ports {
            let listing = listings.get(&port.frontend).copied().unwrap_or_default();
            claims
                .entry((port.frontend, port.protocol))
                .or_default()
                .push((name, listing));
        }
    }
    let mut served = listed.clone();
    for ((port, protocol), claimants) in claims {
        if claimants.len() < 2 {
            continue;
        }
        let steady = claimants.iter().filter(|(_, l)| !l.yields);
        let (owner, _) = steady
            .min_by_key(|(name, l)| (l.first, *name))
            // None steady: the one that listed it last, the first named of equals.
            .or_else(|| {
                claimants
                    .iter()
                    .max_by_key(|(name, l)| (l.first, std::cmp::Reverse(*name)))
            })
            .copied()
            .expect("two claimants");
        for &(name, listing) in claimants.iter().filter(|(name, _)| *name != owner) {
            if let Some(ports) = served.get_mut(name) {
                ports.retain(|p| (p.frontend, p.protocol) != (port, protocol));
            }
            let why = if listing.yields {
                format!(
                    "its tasks stopped listing it while `{owner}`'s list it (moved with \
                     `--publish-rm` here and `--publish-add` there): served for `{owner}`"
                )
            } else {
                format!(
                    "`{owner}` publishes it too and had it first: served for `{owner}` until it \
                     stops publishing it (published for UDP only here? name it in this \
                     service's `udp_ports`)"
                )
            };
            problems
                .entry(name)
                .or_default()
                .push(format!("port {port}/{protocol} is not served here: {why}"));
        }
    }
    served
}

fn port_mappings(
    service: &SwarmService,
    policy: &SwarmPolicy,
    problems: &mut Vec<String>,
) -> Vec<PortMapping> {
    let mut targets: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for port in &service.published {
        targets.entry(port.publish).or_default().push(port.target);
    }
    let mut mappings = Vec::new();
    for (publish, targets) in targets {
        let mapping = |protocol| PortMapping {
            frontend: publish,
            backend: targets[0],
            protocol,
        };
        // The kernel takes every datagram to this port of the node's data address as the
        // mesh tunnel's: served, the port would drop its clients there.
        let udp = |mappings: &mut Vec<PortMapping>, problems: &mut Vec<String>| {
            if publish == lb_common::maps::tunnel::PORT {
                problems.push(format!(
                    "port {publish}/udp is meshlb's tunnel port between swarm nodes, so it is \
                     not served: publish another"
                ));
            } else {
                mappings.push(mapping(Protocol::Udp));
            }
        };
        match targets.as_slice() {
            [_] if policy.udp_ports.contains(&publish) => udp(&mut mappings, problems),
            [_] => mappings.push(mapping(Protocol::Tcp)),
            [a, b] if a == b => {
                mappings.push(mapping(Protocol::Tcp));
                udp(&mut mappings, problems);
            }
            _ => problems.push(format!(
                "port {publish} is published {} times with targets {targets:?}; the Engine does \
                 not say which protocol each is, so the port is not served: publish TCP and UDP \
                 to one target port",
                targets.len()
            )),
        }
    }
    mappings
}

fn backends(
    service: &SwarmService,
    policy: &SwarmPolicy,
    details: &mut SwarmDetails,
) -> Vec<BackendSpec> {
    // Node-independent order: the task's ingress address, then its name.
    let mut ordered: Vec<_> = service
        .tasks
        .iter()
        .map(|(name, task)| (task.addresses.get(INGRESS_NETWORK).copied(), name, task))
        .collect();
    ordered.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let local_only =
        policy.local_first && service.tasks.values().any(|t| t.serving_here().is_some());
    let mut backends = Vec::new();
    // Whether each backend is an unhealthy local task: no backend here while another task
    // takes new flows.
    let mut unhealthy = Vec::new();
    for (ingress, name, task) in ordered {
        if task.stopping {
            details.stopping_tasks.insert(name.clone());
        }
        let weight = u32::from(task.takes_new_flows());
        match (&task.local, ingress, task.node) {
            (Some(local), ingress, _) => {
                if local.usable {
                    details.local_tasks.insert(name.clone(), local.gwbridge);
                } else {
                    details.unhealthy_tasks.insert(name.clone());
                }
                unhealthy.push(!local.usable);
                backends.push(BackendSpec {
                    address: local.gwbridge,
                    port: None,
                    weight,
                    mesh: ingress.map(|identity| MeshBackend {
                        identity,
                        via: None,
                        on_link_prefix: local.gwbridge_prefix,
                    }),
                });
            }
            (None, Some(identity), Some(node)) if !local_only => {
                details.remote_tasks.insert(name.clone(), node);
                unhealthy.push(false);
                backends.push(BackendSpec {
                    address: identity,
                    port: None,
                    weight,
                    mesh: Some(MeshBackend {
                        identity,
                        via: Some(node),
                        on_link_prefix: None,
                    }),
                });
            }
            (None, _, node) => {
                details.unused_tasks.insert(name.clone(), node);
            }
        }
    }
    // Unless none of the others takes new flows: then every task takes them (an unhealthy
    // one is as likely to answer as a stopping one).
    if backends
        .iter()
        .zip(&unhealthy)
        .any(|(b, sick)| !sick && b.weight > 0)
    {
        let mut sick = unhealthy.iter();
        backends.retain(|_| !sick.next().copied().unwrap_or(false));
    }
    all_take_flows_if_none_does(&mut backends);
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::{PublishedPort, Task};
    use std::collections::BTreeSet;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn task(ingress: &str, node: &str, gwbridge: Option<&str>) -> Task {
        Task {
            node: Some(ip(node)),
            addresses: [(INGRESS_NETWORK.to_owned(), ip(ingress))].into(),
            local: gwbridge.map(|g| LocalTask {
                container: "c".into(),
                gwbridge: ip(g),
                gwbridge_prefix: Some(24),
                usable: true,
            }),
            stopping: false,
        }
    }

    /// The delivery frontends of a node's tasks: each to its task while it takes new flows;
    /// one that does not (unhealthy, being stopped) to the local tasks that do, every usable
    /// one listed (a stopping one at weight 0, keeping its flows), so that a neighbour that
    /// starts stopping later keeps what it was handed; to itself when no other takes new flows.
    /// An unhealthy task is no backend of the published service here (and a VIP's at weight 0).
    /// A service none of whose tasks takes new flows gives them to every task.
    #[test]
    fn delivery_frontends_send_other_nodes_flows_to_local_tasks_that_take_them() {
        let mut healthy = task("198.19.0.3", "198.18.50.1", Some("198.18.61.3"));
        healthy.addresses.insert("appnet".into(), ip("198.19.1.3"));
        let mut sick = task("198.19.0.4", "198.18.50.1", Some("198.18.61.4"));
        sick.local.as_mut().unwrap().usable = false;
        sick.addresses.insert("appnet".into(), ip("198.19.1.4"));
        let mut stopping = task("198.19.0.5", "198.18.50.1", Some("198.18.61.5"));
        stopping.stopping = true;
        let remote = task("198.19.0.6", "198.18.50.2", None);
        let tasks = |healthy_stops: bool| {
            let mut healthy = healthy.clone();
            healthy.stopping = healthy_stops;
            let mut web = service(
                &[(80, 8080)],
                vec![
                    ("web.1.a", healthy),
                    ("web.2.b", sick.clone()),
                    ("web.3.c", stopping.clone()),
                    ("web.4.d", remote.clone()),
                ],
            );
            web.vips.insert("appnet".into(), ip("198.19.1.2"));
            services(
                &snapshot(vec![("web", web)]),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
        };
        let weights = |backends: &[BackendSpec]| -> Vec<(IpAddr, u32)> {
            backends.iter().map(|b| (b.address, b.weight)).collect()
        };
        let delivery = |out: &SwarmServices, name: &str| {
            weights(
                &out.delivery_specs
                    .iter()
                    .find(|s| s.name == name)
                    .unwrap()
                    .backends,
            )
        };
        let (a, c) = (ip("198.18.61.3"), ip("198.18.61.5"));
        let out = tasks(false);
        assert_eq!(delivery(&out, "web.1.a"), [(a, 1)]);
        assert_eq!(delivery(&out, "web.2.b"), [(a, 1), (c, 0)]);
        assert_eq!(delivery(&out, "web.3.c"), [(a, 1), (c, 0)]);
        assert_eq!(
            weights(&out.specs[0].backends),
            [(a, 1), (c, 0), (ip("198.19.0.6"), 1)]
        );
        assert_eq!(
            out.details["web"].unhealthy_tasks,
            ["web.2.b".to_owned()].into()
        );
        let vip = out
            .vip_specs
            .iter()
            .find(|s| s.name == "web@appnet")
            .unwrap();
        assert_eq!(
            weights(&vip.backends),
            [(ip("198.19.1.3"), 1), (ip("198.19.1.4"), 0)]
        );
        // `a` starts stopping too: no local task takes new flows; every delivery frontend
        // keeps its members, and a stopping task's own takes them. The remote task still does.
        let out = tasks(true);
        assert_eq!(delivery(&out, "web.1.a"), [(a, 1), (c, 0)]);
        assert_eq!(
            delivery(&out, "web.2.b"),
            [(a, 0), (c, 0), (ip("198.18.61.4"), 1)]
        );
        assert_eq!(delivery(&out, "web.3.c"), [(a, 0), (c, 1)]);
        assert_eq!(
            weights(&out.specs[0].backends),
            [(a, 0), (c, 0), (ip("198.19.0.6"), 1)]
        );
        // Every task stopping: new flows go to all of them rather than nowhere.
        let mut last = remote.clone();
        last.stopping = true;
        let only_stopping = service(
            &[(80, 8080)],
            vec![("web.3.c", stopping), ("web.4.d", last)],
        );
        let out = services(
            &snapshot(vec![("web", only_stopping)]),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(
            weights(&out.specs[0].backends),
            [(c, 1), (ip("198.19.0.6"), 1)]
        );
        assert_eq!(out.details["web"].stopping_tasks.len(), 2);
    }

    /// A task the swarm is stopping keeps its place (and its flows) at weight 0, in the
    /// published service and on its VIPs, and is listed as such; with `local_first`, a node
    /// whose only local task is stopping uses the other nodes' tasks.
    #[test]
    fn a_stopping_task_takes_no_new_flows_and_keeps_its_place() {
        let mut stopping = task("198.19.0.4", "198.18.50.1", Some("198.18.61.4"));
        stopping.stopping = true;
        stopping.addresses.insert("appnet".into(), ip("198.19.1.4"));
        let mut remote = task("198.19.0.5", "198.18.50.2", None);
        remote.addresses.insert("appnet".into(), ip("198.19.1.5"));
        let mut web = service(
            &[(80, 8080)],
            vec![("web.1.a", stopping), ("web.2.b", remote)],
        );
        web.vips.insert("appnet".into(), ip("198.19.1.2"));
        let snap = snapshot(vec![("web", web)]);
        let weights = |out: &SwarmServices, name: &str| -> Vec<(IpAddr, u32)> {
            out.specs
                .iter()
                .chain(&out.vip_specs)
                .find(|s| s.name == name)
                .unwrap()
                .backends
                .iter()
                .map(|b| (b.address, b.weight))
                .collect()
        };
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(
            weights(&out, "web"),
            [(ip("198.18.61.4"), 0), (ip("198.19.0.5"), 1)]
        );
        assert_eq!(
            weights(&out, "web@appnet"),
            [(ip("198.19.1.4"), 0), (ip("198.19.1.5"), 1)]
        );
        assert_eq!(
            out.details["web"].stopping_tasks,
            ["web.1.a".to_owned()].into()
        );
        // Its delivery frontend stays: the other nodes' flows on it go on.
        assert_eq!(out.delivery_specs.len(), 1);
        let local_first = [(
            "web".to_owned(),
            SwarmPolicy {
                local_first: true,
                ..Default::default()
            },
        )]
        .into();
        let out = services(&snap, &local_first, &BTreeMap::new());
        assert_eq!(
            weights(&out, "web"),
            [(ip("198.18.61.4"), 0), (ip("198.19.0.5"), 1)]
        );
    }

    /// Two tasks of a global service with a long name on one node (an update starts the new
    /// one first): their names share everything but the task id, past the limit.
    #[test]
    fn tasks_with_long_names_get_delivery_frontends_of_their_own() {
        let service_name = "a-global-service-whose-name-is-forty-two-c";
        let node_id = "u9gllw2j1x7hqz1a2b3c4d5e6";
        let old = format!("{service_name}.{node_id}.k1o1c2vk0bqgx3sydu5v8y3rq");
        let new = format!("{service_name}.{node_id}.wb7hl6a3x0c9l2m4n5p6q7r8s");
        let snap = snapshot(vec![(
            service_name,
            service(
                &[(80, 8080)],
                vec![
                    (&old, task("198.19.0.9", "198.18.50.1", Some("198.18.61.5"))),
                    (&new, task("198.19.0.3", "198.18.50.1", Some("198.18.61.7"))),
                ],
            ),
        )]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        let names: BTreeSet<&str> = out.delivery_specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a-global-service-whose-name-is-forty-.k1o1c2vk0bqgx3sydu5v8y3rq",
                "a-global-service-whose-name-is-forty-.wb7hl6a3x0c9l2m4n5p6q7r8s",
            ]
            .into()
        );
        assert!(
            names
                .iter()
                .all(|n| n.len() == crate::source::file::MAX_SERVICE_NAME_LEN)
        );
        // Both are served: no name hides the other once the specs are keyed by name.
        let file = crate::source::file::ServiceFile::from_specs(
            out.all_specs(),
            std::path::Path::new("swarm"),
        )
        .unwrap();
        let vips: BTreeSet<IpAddr> = file
            .services
            .values()
            .filter(|s| s.tunnel_only)
            .filter_map(|s| s.vip)
            .collect();
        assert_eq!(vips, [ip("198.19.0.3"), ip("198.19.0.9")].into());
        // Names within the limit stay as they are.
        assert_eq!(delivery_name("web.1.abc"), "web.1.abc");
    }

    fn service(published: &[(u16, u16)], tasks: Vec<(&str, Task)>) -> SwarmService {
        SwarmService {
            published: published
                .iter()
                .map(|&(publish, target)| PublishedPort { publish, target })
                .collect(),
            vips: [(INGRESS_NETWORK.to_owned(), ip("198.19.0.2"))].into(),
            tasks: tasks.into_iter().map(|(n, t)| (n.to_owned(), t)).collect(),
            port_listings: BTreeMap::new(),
        }
    }

    fn snapshot(services: Vec<(&str, SwarmService)>) -> Snapshot {
        Snapshot {
            active: true,
            node_addr: Some(ip("198.18.50.1")),
            data_addr: Some(ip("198.18.50.1")),
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_owned(), s))
                .collect(),
            containers: BTreeMap::new(),
            peers: Default::default(),
            desired_states_known: true,
            bridges: Default::default(),
        }
    }

    /// A service whose tasks here are all unhealthy (and has none elsewhere) gives its new
    /// flows to all of them, as README says, rather than having no backend; with a task that
    /// takes flows elsewhere, the unhealthy one is no backend here.
    #[test]
    fn a_service_whose_tasks_are_all_unhealthy_gives_flows_to_all_of_them() {
        let mut sick = task("198.19.0.4", "198.18.50.1", Some("198.18.61.4"));
        sick.local.as_mut().unwrap().usable = false;
        let alone = snapshot(vec![(
            "web",
            service(&[(80, 8080)], vec![("web.1.a", sick.clone())]),
        )]);
        let out = services(&alone, &BTreeMap::new(), &BTreeMap::new());
        let backends: Vec<(IpAddr, u32)> = out.specs[0]
            .backends
            .iter()
            .map(|b| (b.address, b.weight))
            .collect();
        assert_eq!(backends, [(ip("198.18.61.4"), 1)]);
        assert!(out.details["web"].unhealthy_tasks.contains("web.1.a"));
        // Another task takes flows (elsewhere): only it.
        let remote = task("198.19.0.6", "198.18.50.2", None);
        let beside = snapshot(vec![(
            "web",
            service(&[(80, 8080)], vec![("web.1.a", sick), ("web.2.b", remote)]),
        )]);
        let out = services(&beside, &BTreeMap::new(), &BTreeMap::new());
        let backends: Vec<(IpAddr, u32)> = out.specs[0]
            .backends
            .iter()
            .map(|b| (b.address, b.weight))
            .collect();
        assert_eq!(backends, [(ip("198.19.0.6"), 1)]);
    }

    #[test]
    fn protocols_follow_the_listing_rule_and_the_policy() {
        let snap = snapshot(vec![
            ("both", service(&[(53, 5353), (53, 5353)], vec![])),
            ("tcp", service(&[(80, 8080)], vec![])),
            ("udp", service(&[(514, 514)], vec![])),
            ("odd", service(&[(81, 8080), (81, 9090)], vec![])),
            ("tunnel", service(&[(4790, 80), (4790, 80)], vec![])),
            ("tunnel-udp", service(&[(4790, 80)], vec![])),
        ]);
        let udp_only = |port| SwarmPolicy {
            udp_ports: [port].into(),
            ..Default::default()
        };
        let policies = [
            ("udp".to_owned(), udp_only(514)),
            ("tunnel-udp".to_owned(), udp_only(4790)),
        ]
        .into();
        let out = services(&snap, &policies, &BTreeMap::new());
        let protocols = |name: &str| -> Vec<(u16, u16, Protocol)> {
            out.specs
                .iter()
                .find(|s| s.name == name)
                .map(|s| {
                    s.ports
                        .iter()
                        .map(|p| (p.frontend, p.backend, p.protocol))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            protocols("both"),
            [(53, 5353, Protocol::Tcp), (53, 5353, Protocol::Udp)]
        );
        assert_eq!(protocols("tcp"), [(80, 8080, Protocol::Tcp)]);
        assert_eq!(protocols("udp"), [(514, 514, Protocol::Udp)]);
        // Ambiguous: not served, and said why.
        assert!(out.specs.iter().all(|s| s.name != "odd"));
        assert!(out.details["odd"].problems[0].contains("port 81"));
        // The tunnel's port: UDP not served, TCP as any other.
        assert_eq!(protocols("tunnel"), [(4790, 80, Protocol::Tcp)]);
        assert!(out.specs.iter().all(|s| s.name != "tunnel-udp"));
        for name in ["tunnel", "tunnel-udp"] {
            assert!(
                out.details[name].problems[0].contains("4790/udp is meshlb's tunnel port"),
                "{name}: {:?}",
                out.details[name].problems
            );
        }
    }

    #[test]
    fn backends_are_every_task_in_ingress_address_order_known_by_that_address() {
        // Names and Engine order disagree with the address order on purpose.
        let snap = snapshot(vec![(
            "web",
            service(
                &[(8080, 80)],
                vec![
                    (
                        "web.1.a",
                        task("198.19.0.9", "198.18.50.1", Some("198.18.61.5")),
                    ),
                    (
                        "web.2.b",
                        task("198.19.0.3", "198.18.50.1", Some("198.18.61.7")),
                    ),
                    ("web.3.c", task("198.19.0.4", "198.18.50.2", None)),
                ],
            ),
        )]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        let spec = &out.specs[0];
        // Local tasks carry their bridge subnet's length (a caller inside it is a hairpin).
        let seen: Vec<(IpAddr, IpAddr, Option<IpAddr>, Option<u8>)> = spec
            .backends
            .iter()
            .map(|b| {
                let mesh = b.mesh.unwrap();
                (b.address, mesh.identity, mesh.via, mesh.on_link_prefix)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (ip("198.18.61.7"), ip("198.19.0.3"), None, Some(24)),
                (
                    ip("198.19.0.4"),
                    ip("198.19.0.4"),
                    Some(ip("198.18.50.2")),
                    None
                ),
                (ip("198.18.61.5"), ip("198.19.0.9"), None, Some(24)),
            ]
        );
        assert!(
            spec.backends
                .iter()
                .all(|b| b.port.is_none() && b.weight == 1)
        );
        assert_eq!(spec.vip, None);
        let details = &out.details["web"];
        assert_eq!(
            details.remote_tasks,
            [("web.3.c".to_owned(), ip("198.18.50.2"))].into()
        );
        assert_eq!(details.local_tasks.len(), 2);
        // The local tasks' delivery frontends: ingress address and target port, tunnel only.
        let delivery: Vec<(Option<IpAddr>, u16, IpAddr, bool)> = out
            .delivery_specs
            .iter()
            .map(|s| {
                (
                    s.vip,
                    s.ports[0].frontend,
                    s.backends[0].address,
                    s.tunnel_only,
                )
            })
            .collect();
        assert_eq!(
            delivery,
            [
                (Some(ip("198.19.0.9")), 80, ip("198.18.61.5"), true),
                (Some(ip("198.19.0.3")), 80, ip("198.18.61.7"), true),
            ]
        );
        // Their backends too: a caller inside the subnet may come through the tunnel.
        assert!(
            out.delivery_specs
                .iter()
                .flat_map(|s| &s.backends)
                .all(|b| b.mesh.and_then(|m| m.on_link_prefix) == Some(24))
        );
        let mesh = out.mesh.unwrap();
        assert_eq!(mesh.own.to_string(), "198.18.50.1");
        assert_eq!(
            mesh.peers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.18.50.2"]
        );

        // local_first: only the local tasks, the other listed as unused here.
        let policies = [(
            "web".to_owned(),
            SwarmPolicy {
                local_first: true,
                ..Default::default()
            },
        )]
        .into();
        let out = services(&snap, &policies, &BTreeMap::new());
        assert_eq!(out.specs[0].backends.len(), 2);
        assert!(out.details["web"].unused_tasks.contains_key("web.3.c"));

        // The policy's VIP: the same ports and tasks at that address too, a routable
        // service (announced while a task takes flows).
        let policies = [(
            "web".to_owned(),
            SwarmPolicy {
                vip: Some(ip("198.18.100.50")),
                ..Default::default()
            },
        )]
        .into();
        let out = services(&snap, &policies, &BTreeMap::new());
        let [published, on_vip] = &out.specs[..] else {
            panic!("two services: {:?}", out.specs);
        };
        assert_eq!(on_vip.name, "web.vip");
        assert_eq!(
            (published.vip, on_vip.vip),
            (None, Some(ip("198.18.100.50")))
        );
        assert_eq!(on_vip.ports, published.ports);
        assert_eq!(on_vip.backends, published.backends);
        assert_eq!(on_vip.affinity, Affinity::AnyNode);
        assert_eq!((on_vip.socket_scope, on_vip.tunnel_only), (0, false));
        // Merged as lbd merges the swarm's services (which checks them in the file's terms).
        let merged = crate::source::api_state::ApiState::default()
            .merge_with_swarm(&Default::default(), &out.specs)
            .expect("merged");
        assert!(
            merged.swarm_refused.is_empty(),
            "{:?}",
            merged.swarm_refused
        );
        let planned = crate::plan::plan(
            &merged.file,
            &crate::plan::NodeFacts::with_addresses(&[ip("198.18.50.1")]),
        )
        .expect("planned");
        assert_eq!(
            planned.announced_vips(),
            [ip("198.18.100.50")].into(),
            "announced"
        );
    }

    #[test]
    fn overlay_vips_serve_every_task_on_their_network_to_its_containers_only() {
        let mut db = service(&[], vec![]);
        db.vips = [("appnet".to_owned(), ip("198.19.10.5"))].into();
        db.tasks = [(
            "db.1.x".to_owned(),
            Task {
                node: Some(ip("198.18.50.2")),
                addresses: [("appnet".to_owned(), ip("198.19.10.6"))].into(),
                ..Default::default()
            },
        )]
        .into();
        let mut api = service(&[(8080, 8080)], vec![]);
        api.vips = [
            (INGRESS_NETWORK.to_owned(), ip("198.19.0.11")),
            ("appnet".to_owned(), ip("198.19.10.2")),
            ("other".to_owned(), ip("198.19.11.2")),
        ]
        .into();
        for (name, addr, node) in [
            ("api.1.a", "198.19.10.9", "198.18.50.2"),
            ("api.2.b", "198.19.10.3", "198.18.50.1"),
        ] {
            api.tasks.insert(
                name.to_owned(),
                Task {
                    node: Some(ip(node)),
                    addresses: [("appnet".to_owned(), ip(addr))].into(),
                    ..Default::default()
                },
            );
        }
        let mut snap = snapshot(vec![("api", api), ("db", db)]);
        snap.containers = [
            (
                "c1".to_owned(),
                crate::source::swarm::snapshot::OverlayContainer {
                    pid: 41,
                    networks: ["appnet".to_owned()].into(),
                },
            ),
            (
                "c2".to_owned(),
                crate::source::swarm::snapshot::OverlayContainer {
                    pid: 42,
                    networks: ["appnet".to_owned(), "other".to_owned()].into(),
                },
            ),
        ]
        .into();
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        // Scopes by network name; ingress has none.
        assert_eq!(
            out.scopes,
            [("appnet".to_owned(), 1), ("other".to_owned(), 2)].into()
        );
        let api_appnet = out
            .vip_specs
            .iter()
            .find(|s| s.name == "api@appnet")
            .unwrap();
        assert_eq!(api_appnet.vip, Some(ip("198.19.10.2")));
        assert_eq!(api_appnet.socket_scope, 1);
        // Every task on the network, local or not, in address order; any port, both protocols.
        let addresses: Vec<IpAddr> = api_appnet.backends.iter().map(|b| b.address).collect();
        assert_eq!(addresses, [ip("198.19.10.3"), ip("198.19.10.9")]);
        assert!(
            api_appnet
                .ports
                .iter()
                .all(|p| p.frontend == 0 && p.backend == 0)
        );
        assert_eq!(api_appnet.ports.len(), 2);
        assert!(out.vip_specs.iter().any(|s| s.name == "db@appnet"));
        assert!(out.vip_specs.iter().all(|s| s.name != "api@ingress"));
        assert_eq!(out.container_scopes["c1"], (41, 1 << 1));
        assert_eq!(out.container_scopes["c2"], (42, (1 << 1) | (1 << 2)));
    }

    /// A network keeps its scope while it exists: one created with a name that sorts first
    /// takes the lowest free scope, not another network's.
    #[test]
    fn networks_keep_their_socket_scopes() {
        let on = |networks: &[(&str, &str)]| {
            let mut service = service(&[], vec![]);
            service.vips = networks
                .iter()
                .map(|(n, vip)| ((*n).to_owned(), ip(vip)))
                .collect();
            snapshot(vec![("api", service)])
        };
        let first = services(
            &on(&[("mid", "198.19.10.2"), ("zed", "198.19.11.2")]),
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(
            first.scopes,
            [("mid".to_owned(), 1), ("zed".to_owned(), 2)].into()
        );
        let grown = on(&[
            ("aaa", "198.19.12.2"),
            ("mid", "198.19.10.2"),
            ("zed", "198.19.11.2"),
        ]);
        let next = services(&grown, &BTreeMap::new(), &first.scopes);
        assert_eq!(
            next.scopes,
            [
                ("aaa".to_owned(), 3),
                ("mid".to_owned(), 1),
                ("zed".to_owned(), 2)
            ]
            .into()
        );
        // A network gone frees its scope for the next new one.
        let shrunk = on(&[
            ("aaa", "198.19.12.2"),
            ("zed", "198.19.11.2"),
            ("new", "198.19.13.2"),
        ]);
        let after = services(&shrunk, &BTreeMap::new(), &next.scopes);
        assert_eq!(
            after.scopes,
            [
                ("aaa".to_owned(), 3),
                ("new".to_owned(), 1),
                ("zed".to_owned(), 2)
            ]
            .into()
        );
        // Without a record (a start), by name.
        let fresh = services(&grown, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(fresh.scopes["aaa"], 1);
    }

    #[test]
    fn a_service_without_published_ports_is_only_recorded() {
        let snap = snapshot(vec![(
            "db",
            service(
                &[],
                vec![(
                    "db.1.x",
                    task("198.19.0.5", "198.18.50.1", Some("198.18.61.3")),
                )],
            ),
        )]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        assert!(out.specs.is_empty());
        assert_eq!(out.details["db"].vips.len(), 1);
    }

    /// Which service serves each (port, protocol), by name: `(port, protocol) -> service`.
    fn owners(out: &SwarmServices) -> BTreeMap<(u16, Protocol), Vec<String>> {
        let mut owners: BTreeMap<(u16, Protocol), Vec<String>> = BTreeMap::new();
        for spec in out.specs.iter().filter(|s| s.vip.is_none()) {
            for port in &spec.ports {
                owners
                    .entry((port.frontend, port.protocol))
                    .or_default()
                    .push(spec.name.clone());
            }
        }
        owners
    }

    /// `docker service update a --publish-rm 80`, then `docker service update b --publish-add
    /// 80`, read by the port memory as a node would: at every read each (port, protocol) is
    /// served for one service, neither is refused whole (the other ports stay), the port goes
    /// to `b` once `a`'s reads leave it out, and `a`'s old tasks listing it again do not take
    /// it back.
    #[test]
    fn a_port_moving_between_services_is_served_for_one_at_a_time() {
        use crate::source::swarm::ports::PortMemory;
        let t0 = std::time::Instant::now();
        let mut memory = PortMemory::default();
        let a_task = task("198.19.0.3", "198.18.50.1", Some("198.18.61.3"));
        let b_task = task("198.19.0.4", "198.18.50.1", Some("198.18.61.4"));
        // (a's listing, b's listing, who serves 80/tcp).
        let reads: [(&[u16], &[u16], &str); 6] = [
            (&[80, 81], &[90], "a"),
            (&[80, 81], &[80, 90], "a"),
            (&[81], &[80, 90], "b"),
            (&[80, 81], &[80, 90], "b"),
            (&[80, 81], &[90], "b"),
            (&[81], &[80, 90], "b"),
        ];
        for (i, (a, b)) in reads.iter().map(|(a, b, _)| (a, b)).enumerate() {
            let ports = |list: &[u16]| list.iter().map(|&p| (p, 8000 + p)).collect::<Vec<_>>();
            let mut snap = snapshot(vec![
                ("a", service(&ports(a), vec![("a.1.x", a_task.clone())])),
                ("b", service(&ports(b), vec![("b.1.y", b_task.clone())])),
            ]);
            memory.keep_recent(
                &mut snap,
                t0 + std::time::Duration::from_millis(500 * i as u64),
            );
            let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
            let served = owners(&out);
            assert_eq!(served[&(80, Protocol::Tcp)], [reads[i].2], "read {i}");
            assert_eq!(served[&(81, Protocol::Tcp)], ["a"], "read {i}");
            assert_eq!(served[&(90, Protocol::Tcp)], ["b"], "read {i}");
            if reads[i].2 == "b" {
                let said = &out.details["a"].problems;
                assert!(
                    said.iter()
                        .any(|p| p.contains("port 80/tcp") && p.contains("stopped listing")),
                    "read {i}: {said:?}"
                );
                // `a`'s task keeps its delivery frontend for 80's target: a peer whose read
                // is older may still hand it `a`'s flows.
                let delivery = out
                    .delivery_specs
                    .iter()
                    .find(|s| s.name.starts_with("a.1"));
                let targets: Vec<u16> =
                    delivery.unwrap().ports.iter().map(|p| p.frontend).collect();
                assert_eq!(targets, [8080, 8081], "read {i}");
            }
        }
    }

    /// A service that publishes a port for UDP only without naming it in `udp_ports` reads as
    /// TCP: it does not take the port from the service that has it for TCP, and says how to
    /// fix it; named in `udp_ports`, both are served.
    #[test]
    fn a_port_listed_steadily_by_two_services_stays_with_the_first() {
        let listed = |first: u64| PortListing {
            first,
            yields: false,
        };
        let mut dns = service(&[(53, 53)], vec![]);
        dns.port_listings = [(53, listed(1))].into();
        let mut logs = service(&[(53, 5353), (514, 514)], vec![]);
        logs.port_listings = [(53, listed(2)), (514, listed(2))].into();
        let snap = snapshot(vec![("zdns", dns), ("logs", logs)]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        let served = owners(&out);
        assert_eq!(served[&(53, Protocol::Tcp)], ["zdns"]);
        assert_eq!(served[&(514, Protocol::Tcp)], ["logs"]);
        let said = &out.details["logs"].problems;
        assert!(
            said.iter()
                .any(|p| p.contains("port 53/tcp") && p.contains("udp_ports")),
            "{said:?}"
        );
        let policies = [(
            "logs".to_owned(),
            SwarmPolicy {
                udp_ports: [53].into(),
                ..Default::default()
            },
        )]
        .into();
        let out = services(&snap, &policies, &BTreeMap::new());
        let served = owners(&out);
        assert_eq!(served[&(53, Protocol::Tcp)], ["zdns"]);
        assert_eq!(served[&(53, Protocol::Udp)], ["logs"]);
        assert!(out.details["logs"].problems.is_empty());
    }

    /// Both letting a port go now and then (both rolling out): the one that listed it last
    /// has it; equal (a start amid the move, no record), the first named.
    #[test]
    fn a_port_both_services_let_go_goes_to_the_latest_then_to_the_first_named() {
        let with = |other: u16, first: u64, yields: bool| {
            let mut s = service(&[(80, 8080), (other, 8080)], vec![]);
            s.port_listings = [(80, PortListing { first, yields })].into();
            s
        };
        let snap = snapshot(vec![("a", with(81, 1, true)), ("b", with(90, 3, true))]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(owners(&out)[&(80, Protocol::Tcp)], ["b"]);
        let snap = snapshot(vec![("b", with(90, 1, false)), ("a", with(81, 1, false))]);
        let out = services(&snap, &BTreeMap::new(), &BTreeMap::new());
        let served = owners(&out);
        assert_eq!(served[&(80, Protocol::Tcp)], ["a"]);
        assert_eq!(served[&(81, Protocol::Tcp)], ["a"]);
        assert_eq!(served[&(90, Protocol::Tcp)], ["b"]);
    }
}
