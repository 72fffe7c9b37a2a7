//! What one node's Docker Engine says about the swarm, reduced to what meshlb needs.
//!
//! Built from answers every node gives, managers and workers alike (workers refuse
//! `/services`, `/tasks` and `/nodes`):
//! - each overlay network inspected with `verbose=true`: per service its VIP on that network,
//!   its published ports (only on `ingress`, as `"Target: 8080, Publish: 8080"` strings, with
//!   no protocol) and its tasks with their address on the network and their node's address
//!   (`Info."Host IP"`), kept current by the swarm's gossip;
//! - the local containers with their `com.docker.swarm.*` labels and state;
//! - `docker_gwbridge` inspected: the address of each local container there, which is how this
//!   node reaches its own tasks.
//!
//! Pure: the answers in, a [`Snapshot`] out, so recorded answers test it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use bollard::models::{ContainerSummary, Network, NetworkInspect, SystemInfo};
use serde::{Deserialize, Serialize};

/// The network every ingress-published port belongs to, by the name a snapshot gives it
/// whatever the swarm calls it (an operator may replace `ingress` with a network of another
/// name, `docker network create --ingress`): the one the Engine marks `Ingress`.
pub const INGRESS_NETWORK: &str = "ingress";
/// The ingress network's entry for this node's own endpoint (the ingress sandbox).
const INGRESS_SANDBOX: &str = "ingress-sbox";
pub use super::bridges::GWBRIDGE_NETWORK;
/// Label Docker puts on a task's container.
pub const TASK_NAME_LABEL: &str = "com.docker.swarm.task.name";
/// Label Docker puts on a task's container.
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// The Engine's answers one read is made of.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    pub info: SystemInfo,
    /// Every overlay network this node knows, inspected verbosely.
    pub overlays: Vec<NetworkInspect>,
    /// The local bridge networks, as listed (see `bridges`).
    pub bridges: Vec<Network>,
    /// `None` when the node has no `docker_gwbridge` (yet): no task is reachable locally.
    pub gwbridge: Option<NetworkInspect>,
    /// Running containers (tasks and others).
    pub containers: Vec<ContainerSummary>,
    /// The process id of each running container attached to an overlay network other than
    /// `ingress`, by container id: the socket-level path serves its VIPs to that container's
    /// network namespace.
    pub pids: BTreeMap<String, u32>,
    /// On a manager, the ids of the tasks the swarm wants running (`/tasks`); `None` on a
    /// worker, or when the manager could not say.
    pub tasks_running: Option<std::collections::BTreeSet<String>>,
    /// Local task containers sent their stop signal (their `kill` events), by id.
    pub stopping_containers: std::collections::BTreeSet<String>,
}

/// The swarm as this node sees it. Equal snapshots program equal tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Whether the Engine is part of a swarm (`Swarm.LocalNodeState` is `active`).
    pub active: bool,
    /// This node's address in the swarm (`Swarm.NodeAddr`, its `--advertise-addr`: the
    /// control plane's).
    pub node_addr: Option<IpAddr>,
    /// This node's data-path address: the `Host IP` of its own ingress endpoint, which is the
    /// address of `--data-path-addr` when the node joined with one and `NodeAddr` otherwise.
    /// Tasks on this node are listed with it, and the mesh tunnel runs between these.
    #[serde(default)]
    pub data_addr: Option<IpAddr>,
    /// By swarm service name.
    pub services: BTreeMap<String, SwarmService>,
    /// Local containers on overlay networks (other than `ingress`), by container id.
    #[serde(default)]
    pub containers: BTreeMap<String, OverlayContainer>,
    /// Every node's data-path address, as the ingress network lists its endpoints (each node
    /// has one). Not the network's `Peers`: those are the gossip (advertise) addresses.
    #[serde(default)]
    pub peers: std::collections::BTreeSet<IpAddr>,
    /// Whether this node's Engine said which tasks the swarm wants running (only a manager
    /// can): then a task it does not want running is marked `stopping`.
    #[serde(default)]
    pub desired_states_known: bool,
    /// The interfaces of this node's local bridge networks whose containers may call its
    /// published ports (see `bridges`): `lbd` attaches to them.
    #[serde(default)]
    pub bridges: std::collections::BTreeSet<String>,
}

/// A local container attached to overlay networks: its sockets may call those networks' VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayContainer {
    /// Its main process, whose network namespace its sockets live in.
    pub pid: u32,
    /// The overlay networks it is attached to, by name.
    pub networks: std::collections::BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmService {
    /// Ports published in ingress mode, as the ingress network lists them (a port published
    /// for TCP and UDP is listed twice).
    pub published: Vec<PublishedPort>,
    /// The service's VIP on each network it is attached to (the socket-level path serves them).
    pub vips: BTreeMap<String, IpAddr>,
    /// By task name (`web.1.<task id>`), which is the same on every node.
    pub tasks: BTreeMap<String, Task>,
    /// By published port: how this node's reads have listed it for this service (set by the
    /// port memory; which of two services listing one port serves it).
    #[serde(default)]
    pub port_listings: BTreeMap<u16, PortListing>,
}

/// How one service's reads have listed one of its published ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortListing {
    /// The read (numbered from 1 by this process) that first listed it for the service,
    /// through target changes, until its hold lapsed.
    pub first: u64,
    /// Whether a read of the service left it out since another service first listed it: the
    /// service is letting it go (its tasks are being updated without it).
    pub yields: bool,
}

/// One `"Target: T, Publish: P"` entry of the ingress network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub publish: u16,
    pub target: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The data-path address of the node the task runs on (`Host IP`).
    pub node: Option<IpAddr>,
    /// The task's address on each network it is attached to.
    pub addresses: BTreeMap<String, IpAddr>,
    /// Set when the task's container runs on this node and can be reached.
    pub local: Option<LocalTask>,
    /// The swarm is stopping it (a scale-down, an update, a drained node): its container runs
    /// on for its stop grace period and keeps its flows, but takes no new ones. Known on a
    /// manager for every task (its `/tasks`), and on every node for its own tasks once they
    /// were sent their stop signal (two seconds after the manager knows: Swarm gives the
    /// load balancers that long first).
    #[serde(default)]
    pub stopping: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTask {
    /// Short container id, for `lbctl list` and logs.
    pub container: String,
    /// Its address on `docker_gwbridge`.
    pub gwbridge: IpAddr,
    /// The prefix length of that address's subnet (`None` in a state saved before it was
    /// kept: the next read of the Engine gives it).
    #[serde(default)]
    pub gwbridge_prefix: Option<u8>,
    /// Healthy, or without a health check: worth new flows. One whose check has not passed
    /// yet or failed (Docker's `(health: starting)`, `(unhealthy)`) is not, though other
    /// nodes, which cannot see its health, may still send it theirs.
    #[serde(default = "usable_by_default")]
    pub usable: bool,
}

/// A saved state from before `usable` listed only usable containers.
fn usable_by_default() -> bool {
    true
}

impl Task {
    /// Whether it takes new flows as far as this node knows: not being stopped, and healthy
    /// if it runs here (another node's health is not seen).
    pub fn takes_new_flows(&self) -> bool {
        !self.stopping && self.local.as_ref().is_none_or(|local| local.usable)
    }

    /// Its `docker_gwbridge` address, when it runs here and takes new flows.
    pub fn serving_here(&self) -> Option<IpAddr> {
        let local = self.local.as_ref()?;
        self.takes_new_flows().then_some(local.gwbridge)
    }
}

/// An answer that does not have the shape the Engine documents.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct SnapshotError {
    pub what: String,
    pub message: String,
}

impl Snapshot {
    /// This node's address in the mesh tunnel: its data-path address, or `NodeAddr` until the
    /// Engine lists the node's ingress endpoint (the two are one unless the node joined with
    /// `--data-path-addr`).
    pub fn mesh_addr(&self) -> Option<IpAddr> {
        self.data_addr.or(self.node_addr)
    }

    /// The tasks marked stopping, by name.
    pub fn stopping_names(&self) -> std::collections::BTreeSet<String> {
        self.services
            .values()
            .flat_map(|s| &s.tasks)
            .filter(|(_, t)| t.stopping)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Tasks known to be stopping.
    pub fn tasks_stopping(&self) -> usize {
        self.tasks().filter(|t| t.stopping).count()
    }

    /// Local tasks whose health check has not passed.
    pub fn tasks_unhealthy(&self) -> usize {
        self.tasks()
            .filter(|t| t.local.as_ref().is_some_and(|l| !l.usable))
            .count()
    }

    fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.services.values().flat_map(|s| s.tasks.values())
    }

    /// Every node this snapshot shows by its data-path address (its tasks' nodes, the ingress
    /// network's endpoints), this node's own among them; a node may come more than once.
    pub fn nodes_shown(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.services
            .values()
            .flat_map(|s| s.tasks.values().filter_map(|t| t.node))
            .chain(self.peers.iter().copied())
    }

    /// Reduces the Engine's answers; an answer out of shape is an error (the caller keeps its
    /// previous snapshot) rather than a silently smaller swarm.
    pub fn from_answers(answers: &Answers) -> Result<Snapshot, SnapshotError> {
        let swarm = answers.info.swarm.as_ref();
        let state = swarm
            .and_then(|s| s.local_node_state.as_ref())
            .map(|state| state.to_string())
            .unwrap_or_default();
        // Only a node that left the swarm (or never joined) has no swarm: one that is still
        // joining or reconnecting (`pending`), `locked` after a restart, or in `error` still
        // has its swarm, whose tasks run on; its Engine just cannot say so now.
        let active = state == "active";
        if !active && !matches!(state.as_str(), "inactive" | "") {
            return Err(SnapshotError {
                what: "info".into(),
                message: format!(
                    "the swarm is {state:?} on this node, not active or inactive (still joining, \
                     locked, or in error): the last swarm state is kept until it is active"
                ),
            });
        }
        let node_addr = swarm
            .and_then(|s| s.node_addr.as_deref())
            .filter(|a| !a.is_empty())
            .map(|a| parse_ip(a, "info Swarm.NodeAddr"))
            .transpose()?;
        let mut snapshot = Snapshot {
            active,
            node_addr,
            data_addr: None,
            services: BTreeMap::new(),
            containers: BTreeMap::new(),
            peers: Default::default(),
            desired_states_known: false,
            bridges: Default::default(),
        };
        if !active {
            return Ok(snapshot);
        }
        snapshot.bridges = super::bridges::bridge_interfaces(&answers.bridges);
        // Every swarm node has the ingress network; an Engine that is starting lists it (and
        // the services on it) a moment after it says the swarm is active. Until then its view
        // is not the swarm's.
        if !answers.overlays.iter().any(is_ingress) {
            return Err(SnapshotError {
                what: "networks".into(),
                message: "the swarm is active but lists no ingress network: the Engine is \
                          starting, or the ingress network was removed (meshlb serves the swarm \
                          through it: make one with `docker network create --driver overlay \
                          --ingress NAME`)"
                    .into(),
            });
        }
        for network in &answers.overlays {
            add_network(&mut snapshot, network)?;
        }
        // Only services with a task or a published port are kept: a network lists a service
        // whose last task just left until gossip catches up.
        snapshot
            .services
            .retain(|_, s| !s.tasks.is_empty() || !s.published.is_empty());
        mark_local(&mut snapshot, answers)?;
        mark_stopped_here(&mut snapshot, answers);
        add_containers(&mut snapshot, answers);
        if let Some(running) = &answers.tasks_running {
            mark_stopping(&mut snapshot, running);
        }
        Ok(snapshot)
    }
}

/// A task's id: the end of its name (`SERVICE.SLOT.ID`, or `SERVICE.NODE_ID.ID` for a global
/// service).
fn task_id(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The ids of the tasks `overlays` list, read straight from their JSON (entries out of shape
/// are left out: reading the snapshot says what is wrong with them).
pub(super) fn listed_task_ids(overlays: &[NetworkInspect]) -> std::collections::BTreeSet<String> {
    overlays
        .iter()
        .filter_map(|n| n.services.as_ref())
        .flat_map(|services| services.values())
        .filter_map(|service| service.get("Tasks")?.as_array())
        .flatten()
        .filter_map(|task| task.get("Name")?.as_str())
        .filter(|name| !name.is_empty())
        .map(|name| task_id(name).to_owned())
        .collect()
}

/// Marks every task whose id (its name's end) is not among the tasks the swarm wants
/// `running`. The networks are read before the tasks, so a task new enough to be listed is
/// already wanted running by then.
fn mark_stopping(snapshot: &mut Snapshot, running: &std::collections::BTreeSet<String>) {
    snapshot.desired_states_known = true;
    for (name, task) in snapshot
        .services
        .values_mut()
        .flat_map(|s| s.tasks.iter_mut())
    {
        task.stopping |= !running.contains(task_id(name));
    }
}

/// Whether `network` is the swarm's ingress network (whatever its name).
fn is_ingress(network: &NetworkInspect) -> bool {
    network.ingress == Some(true)
}

/// Names of the overlay networks (other than the ingress network) a container is attached to.
pub fn overlay_networks_of<'a>(
    container: &'a ContainerSummary,
    overlays: &'a [NetworkInspect],
) -> impl Iterator<Item = &'a str> + 'a {
    container
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .into_iter()
        .flat_map(|networks| networks.keys())
        .map(String::as_str)
        .filter(move |name| {
            overlays
                .iter()
                .any(|o| o.name.as_deref() == Some(*name) && !is_ingress(o))
        })
}

fn add_containers(snapshot: &mut Snapshot, answers: &Answers) {
    for container in &answers.containers {
        let Some(id) = container.id.as_deref() else {
            continue;
        };
        let Some(&pid) = answers.pids.get(id) else {
            continue;
        };
        let networks: std::collections::BTreeSet<String> =
            overlay_networks_of(container, &answers.overlays)
                .map(str::to_owned)
                .collect();
        // A client needs no health to reach VIPs (its health check may need them): running
        // is enough.
        if !networks.is_empty() && container_running(container) {
            snapshot
                .containers
                .insert(id.to_owned(), OverlayContainer { pid, networks });
        }
    }
}

fn add_network(snapshot: &mut Snapshot, network: &NetworkInspect) -> Result<(), SnapshotError> {
    let ingress = is_ingress(network);
    let real_name = network.name.as_deref().unwrap_or_default();
    // Keyed by the name every node gives it; an error names it as the Engine does.
    let name = if ingress { INGRESS_NETWORK } else { real_name };
    let Some(services) = network.services.as_ref() else {
        return Ok(());
    };
    for (service_name, value) in services {
        let what = || format!("network {real_name:?} service {service_name:?}");
        let info: bollard::models::ServiceInfo =
            serde_json::from_value(value.clone()).map_err(|e| SnapshotError {
                what: what(),
                message: format!("not a service entry: {e}"),
            })?;
        // The ingress network lists every node's own endpoint under an empty name.
        if service_name.is_empty() {
            if ingress {
                add_nodes(snapshot, network, &info)?;
            }
            continue;
        }
        let service = snapshot.services.entry(service_name.clone()).or_default();
        // The ingress network's own entry says "<nil>".
        if let Some(vip) = info
            .vip
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "<nil>")
        {
            service
                .vips
                .insert(name.to_owned(), parse_ip(vip, &format!("{} VIP", what()))?);
        }
        if ingress {
            for port in info.ports.iter().flatten() {
                service
                    .published
                    .push(parse_port(port).ok_or_else(|| SnapshotError {
                    what: what(),
                    message: format!(
                        "port {port:?} is not \"Target: N, Publish: N\" (a newer Engine format?)"
                    ),
                })?);
            }
            service.published.sort();
        }
        for task in info.tasks.iter().flatten() {
            let Some(task_name) = task.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let entry = service.tasks.entry(task_name.to_owned()).or_default();
            if let Some(ip) = task.endpoint_ip.as_deref().filter(|a| !a.is_empty()) {
                let ip = parse_ip(ip, &format!("{} task {task_name} EndpointIP", what()))?;
                entry.addresses.insert(name.to_owned(), ip);
            }
            if let Some(host) = task
                .info
                .as_ref()
                .and_then(|i| i.get("Host IP"))
                .filter(|h| !h.is_empty())
            {
                entry.node = Some(parse_ip(
                    host,
                    &format!("{} task {task_name} Host IP", what()),
                )?);
            }
        }
    }
    Ok(())
}

/// The nodes, from the ingress network's own endpoints (`info`, its entry without a name):
/// each node's `Host IP` is its data-path address, and the one whose endpoint is this node's
/// ingress sandbox is this node's.
fn add_nodes(
    snapshot: &mut Snapshot,
    ingress: &NetworkInspect,
    info: &bollard::models::ServiceInfo,
) -> Result<(), SnapshotError> {
    let own_endpoint = ingress
        .containers
        .as_ref()
        .and_then(|c| c.get(INGRESS_SANDBOX))
        .and_then(|e| e.endpoint_id.as_deref());
    for endpoint in info.tasks.iter().flatten() {
        let Some(host) = endpoint
            .info
            .as_ref()
            .and_then(|i| i.get("Host IP"))
            .filter(|h| !h.is_empty())
        else {
            continue;
        };
        let host = parse_ip(host, "network \"ingress\" endpoint Host IP")?;
        snapshot.peers.insert(host);
        if own_endpoint.is_some() && endpoint.endpoint_id.as_deref() == own_endpoint {
            snapshot.data_addr = Some(host);
        }
    }
    Ok(())
}

/// Marks the tasks whose container runs here, with their `docker_gwbridge` address.
fn mark_local(snapshot: &mut Snapshot, answers: &Answers) -> Result<(), SnapshotError> {
    let Some(gwbridge) = answers.gwbridge.as_ref() else {
        return Ok(());
    };
    let mut by_container: HashMap<&str, (IpAddr, Option<u8>)> = HashMap::new();
    for (id, endpoint) in gwbridge.containers.iter().flatten() {
        if let Some(cidr) = endpoint.ipv4_address.as_deref().filter(|a| !a.is_empty()) {
            let (address, prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
            // The Engine writes `ADDR/LEN`; a length it leaves out, or an odd one, only
            // costs containers on the bridge their hairpin (see `MeshBackend`).
            let prefix = prefix.parse::<u8>().ok().filter(|p| (1..=32).contains(p));
            by_container.insert(
                id.as_str(),
                (
                    parse_ip(address, &format!("docker_gwbridge container {id}"))?,
                    prefix,
                ),
            );
        }
    }
    for container in &answers.containers {
        let Some((service, task, id)) = task_container(container) else {
            continue;
        };
        if !container_running(container) {
            continue;
        }
        let Some(&(address, gwbridge_prefix)) = by_container.get(id) else {
            continue;
        };
        if let Some(entry) = snapshot
            .services
            .get_mut(service)
            .and_then(|s| s.tasks.get_mut(task))
        {
            entry.local = Some(LocalTask {
                container: id.chars().take(12).collect(),
                gwbridge: address,
                gwbridge_prefix,
                usable: container_usable(container),
            });
        }
    }
    Ok(())
}

/// A task's container: its service's name, its task's name and its id, from Docker's labels.
fn task_container(container: &ContainerSummary) -> Option<(&str, &str, &str)> {
    let label = |key: &str| container.labels.as_ref()?.get(key).map(String::as_str);
    Some((
        label(SERVICE_NAME_LABEL)?,
        label(TASK_NAME_LABEL)?,
        container.id.as_deref()?,
    ))
}

/// Marks the tasks whose container here was sent its stop signal (`stopping_containers`),
/// reached through `docker_gwbridge` or not (a task only on internal overlays has none).
fn mark_stopped_here(snapshot: &mut Snapshot, answers: &Answers) {
    for container in &answers.containers {
        let Some((service, task, id)) = task_container(container) else {
            continue;
        };
        if answers.stopping_containers.contains(id)
            && let Some(entry) = snapshot
                .services
                .get_mut(service)
                .and_then(|s| s.tasks.get_mut(task))
        {
            entry.stopping = true;
        }
    }
}

/// A backend worth flows: running, and healthy if the image has a health check (Docker's
/// `Status` says "(health: starting)" or "(unhealthy)" until it passes).
fn container_usable(container: &ContainerSummary) -> bool {
    let status = container.status.as_deref().unwrap_or_default();
    container_running(container)
        && !status.contains("unhealthy")
        && !status.contains("health: starting")
}

fn container_running(container: &ContainerSummary) -> bool {
    container
        .state
        .as_ref()
        .is_some_and(|s| s.to_string() == "running")
}

/// `"Target: 8080, Publish: 80"`.
fn parse_port(text: &str) -> Option<PublishedPort> {
    let mut target = None;
    let mut publish = None;
    for part in text.split(',') {
        let (key, value) = part.split_once(':')?;
        let value = value.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
        match key.trim() {
            "Target" => target = Some(value),
            "Publish" => publish = Some(value),
            _ => return None,
        }
    }
    Some(PublishedPort {
        publish: publish?,
        target: target?,
    })
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, SnapshotError> {
    text.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| SnapshotError {
            what: what.to_owned(),
            message: format!("{text:?} is not an IP address"),
        })
}

/// A snapshot of one service `web` with the tasks `listed`, those in `stopping` marked, for
/// the tests of what reads and peers mark.
#[cfg(test)]
pub(crate) fn with_web_tasks(listed: &[&str], stopping: &[&str]) -> Snapshot {
    let tasks = listed
        .iter()
        .map(|name| {
            let task = Task {
                stopping: stopping.contains(name),
                ..Default::default()
            };
            (name.to_string(), task)
        })
        .collect();
    Snapshot {
        services: [(
            "web".to_owned(),
            SwarmService {
                tasks,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::Protocol;

    /// The recorded answers of one node (see tests/fixtures/swarm/README.md).
    fn recorded(role: &str) -> Answers {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/swarm")
            .join(role);
        let read = |name: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let networks: Vec<serde_json::Value> =
            serde_json::from_value(read("networks.json")).unwrap();
        let overlays = networks
            .iter()
            .map(|n| {
                let name = n["Name"].as_str().unwrap();
                serde_json::from_value(read(&format!("overlay-{name}.json"))).unwrap()
            })
            .collect();
        let containers: Vec<ContainerSummary> =
            serde_json::from_value(read("containers.json")).unwrap();
        // Pids come from inspecting each container (not recorded): made up here.
        let pids = containers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone().unwrap(), 1000 + i as u32))
            .collect();
        Answers {
            info: serde_json::from_value(read("info.json")).unwrap(),
            overlays,
            bridges: Vec::new(),
            gwbridge: Some(serde_json::from_value(read("docker_gwbridge.json")).unwrap()),
            containers,
            pids,
            tasks_running: None,
            stopping_containers: Default::default(),
        }
    }

    /// The task ids read straight from the networks' JSON are those of the snapshot's tasks.
    #[test]
    fn listed_task_ids_are_the_snapshots_tasks() {
        let answers = recorded("manager");
        let snapshot = Snapshot::from_answers(&answers).unwrap();
        let ids: std::collections::BTreeSet<String> = snapshot
            .services
            .values()
            .flat_map(|s| s.tasks.keys())
            .map(|name| task_id(name).to_owned())
            .collect();
        assert!(ids.len() > 4);
        let mut listed = listed_task_ids(&answers.overlays);
        // The ingress network's own endpoints (one per node) are no task.
        listed.remove("ingress-endpoint");
        assert_eq!(listed, ids);
    }

    /// A local task container sent its stop signal is stopping, on any node.
    #[test]
    fn a_local_task_sent_its_stop_signal_is_stopping() {
        let mut answers = recorded("worker");
        let before = Snapshot::from_answers(&answers).unwrap();
        let (stopped_service, name, container) = before
            .services
            .iter()
            .flat_map(|(s, service)| service.tasks.iter().map(move |(n, t)| (s, n, t)))
            .find_map(|(s, n, t)| Some((s.clone(), n.clone(), t.local.clone()?.container)))
            .expect("a local task");
        let id = answers
            .containers
            .iter()
            .filter_map(|c| c.id.clone())
            .find(|id| id.starts_with(&container))
            .unwrap();
        answers.stopping_containers = [id].into();
        let after = Snapshot::from_answers(&answers).unwrap();
        for (s, service) in &after.services {
            for (n, task) in &service.tasks {
                assert_eq!(task.stopping, *s == stopped_service && *n == name, "{n}");
            }
        }
    }

    /// A manager's `/tasks` of the tasks wanted running, as dockerd 20.10 answers it during a
    /// scale-down, parses; a listed task it leaves out is stopping, the others are not, and
    /// without that answer (a worker) no task is.
    #[test]
    fn a_task_the_manager_does_not_want_running_is_stopping() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/swarm/manager/tasks-running-during-scale-down.json");
        let tasks: Vec<bollard::models::Task> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ids: std::collections::BTreeSet<String> =
            tasks.into_iter().filter_map(|t| t.id).collect();
        assert_eq!(ids, ["qjd7usincn02p66l1jclex9kw".to_owned()].into());

        let mut answers = recorded("manager");
        let worker_view = Snapshot::from_answers(&answers).unwrap();
        assert!(!worker_view.desired_states_known);
        let names: Vec<String> = worker_view
            .services
            .values()
            .flat_map(|s| s.tasks.keys().cloned())
            .collect();
        assert!(names.len() > 4);
        let gone = &worker_view.services["web"]
            .tasks
            .keys()
            .next()
            .unwrap()
            .clone();
        let id = |name: &String| name.rsplit('.').next().unwrap().to_owned();
        answers.tasks_running = Some(names.iter().filter(|n| *n != gone).map(id).collect());
        let snapshot = Snapshot::from_answers(&answers).unwrap();
        assert!(snapshot.desired_states_known);
        for (name, task) in snapshot.services.values().flat_map(|s| &s.tasks) {
            assert_eq!(task.stopping, name == gone, "{name}");
        }
        assert!(
            worker_view
                .services
                .values()
                .flat_map(|s| s.tasks.values())
                .all(|t| !t.stopping)
        );
    }

    fn without_local(mut snapshot: Snapshot) -> Snapshot {
        snapshot.node_addr = None;
        snapshot.data_addr = None;
        snapshot.containers.clear();
        for service in snapshot.services.values_mut() {
            for task in service.tasks.values_mut() {
                task.local = None;
            }
        }
        snapshot
    }

    #[test]
    fn a_swarm_not_active_yet_is_a_failed_read_and_only_inactive_is_no_swarm() {
        for (state, kept) in [
            ("pending", true),
            ("locked", true),
            ("error", true),
            ("inactive", false),
        ] {
            let mut answers = recorded("worker");
            let mut info = serde_json::to_value(&answers.info).unwrap();
            info["Swarm"]["LocalNodeState"] = state.into();
            answers.info = serde_json::from_value(info).unwrap();
            match Snapshot::from_answers(&answers) {
                Err(e) => {
                    assert!(kept, "{state}: {e:?}");
                    assert!(e.message.contains(state), "{state}: {e:?}");
                }
                Ok(snapshot) => {
                    assert!(!kept, "{state}: read as {snapshot:?}");
                    assert!(!snapshot.active && snapshot.services.is_empty());
                }
            }
        }
    }

    /// `answers` as a node that joined with `--data-path-addr 198.18.51.N` (N its number in
    /// the lab) gives them: dockerd 20.10 in the lab lists every task and ingress endpoint
    /// with that `Host IP`, while `NodeAddr` and the ingress network's `Peers` keep the
    /// advertise addresses.
    fn on_a_data_path(answers: &mut Answers) {
        fn rewrite(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, v) in map.iter_mut() {
                        match (key.as_str(), v.as_str()) {
                            ("Host IP", Some(host)) => {
                                *v = host.replace("198.18.50.", "198.18.51.").into();
                            }
                            _ => rewrite(v),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite),
                _ => {}
            }
        }
        for overlay in &mut answers.overlays {
            let mut value = serde_json::to_value(&*overlay).unwrap();
            rewrite(&mut value);
            *overlay = serde_json::from_value(value).unwrap();
        }
    }

    #[test]
    fn the_mesh_runs_between_data_path_addresses() {
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        for (role, own, other) in [("manager", 1, 2), ("worker", 2, 1)] {
            let plain = Snapshot::from_answers(&recorded(role)).unwrap();
            assert_eq!(plain.data_addr, plain.node_addr, "{role}");
            assert_eq!(plain.peers, [ip("198.18.50.1"), ip("198.18.50.2")].into());

            let mut answers = recorded(role);
            on_a_data_path(&mut answers);
            let snapshot = Snapshot::from_answers(&answers).unwrap();
            let data = |n: u8| ip(&format!("198.18.51.{n}"));
            assert_eq!(snapshot.node_addr, Some(ip(&format!("198.18.50.{own}"))));
            assert_eq!(snapshot.data_addr, Some(data(own)), "{role}");
            assert_eq!(snapshot.mesh_addr(), Some(data(own)));
            assert_eq!(snapshot.peers, [data(1), data(2)].into(), "{role}");
            // The same services, each task local where it was, the others through the peer's
            // data-path address.
            let out =
                crate::source::swarm::services(&snapshot, &Default::default(), &Default::default());
            let mesh = out.mesh.clone().unwrap();
            assert_eq!(IpAddr::V4(mesh.own), data(own));
            assert_eq!(
                mesh.peers
                    .iter()
                    .map(|&p| IpAddr::V4(p))
                    .collect::<Vec<_>>(),
                [data(other)]
            );
            let web = &out.details["web"];
            assert!(!web.local_tasks.is_empty() && !web.remote_tasks.is_empty());
            assert!(
                web.remote_tasks.values().all(|&n| n == data(other)),
                "{web:?}"
            );
            let before =
                crate::source::swarm::services(&plain, &Default::default(), &Default::default());
            assert_eq!(out.specs.len(), before.specs.len());
            assert_eq!(
                out.details["web"].local_tasks,
                before.details["web"].local_tasks
            );
        }
    }

    /// An Engine that lists no endpoint of this node on ingress yet (its sandbox is being
    /// made): the mesh uses `NodeAddr` meanwhile.
    #[test]
    fn without_its_ingress_endpoint_a_node_meshes_by_its_node_address() {
        let mut answers = recorded("worker");
        for overlay in &mut answers.overlays {
            if let Some(containers) = overlay.containers.as_mut() {
                containers.remove(INGRESS_SANDBOX);
            }
        }
        let snapshot = Snapshot::from_answers(&answers).unwrap();
        assert_eq!(snapshot.data_addr, None);
        assert_eq!(snapshot.mesh_addr(), snapshot.node_addr);
    }

    /// An operator may replace the ingress network with one of another name (`docker network
    /// create --ingress`, e.g. for another subnet): the Engine's `Ingress` flag finds it, and
    /// the swarm reads the same.
    #[test]
    fn an_ingress_network_of_another_name_is_the_ingress_network() {
        for role in ["manager", "worker"] {
            let mut answers = recorded(role);
            let before = Snapshot::from_answers(&answers).unwrap();
            assert!(before.services.values().any(|s| !s.published.is_empty()));
            for overlay in &mut answers.overlays {
                if overlay.name.as_deref() == Some("ingress") {
                    overlay.name = Some("mesh-ingress".into());
                }
            }
            for container in &mut answers.containers {
                let networks = container
                    .network_settings
                    .as_mut()
                    .and_then(|s| s.networks.as_mut());
                if let Some(endpoint) = networks.as_ref().and_then(|n| n.get("ingress")).cloned() {
                    let networks = networks.unwrap();
                    networks.remove("ingress");
                    networks.insert("mesh-ingress".into(), endpoint);
                }
            }
            assert_eq!(Snapshot::from_answers(&answers).unwrap(), before, "{role}");
            // Without the flag it is an overlay like another: no ingress network, no read.
            for overlay in &mut answers.overlays {
                overlay.ingress = None;
            }
            let e = Snapshot::from_answers(&answers).unwrap_err();
            assert!(e.message.contains("--ingress NAME"), "{e:?}");
        }
    }

    #[test]
    fn a_client_container_reaches_vips_whatever_its_health() {
        let mut answers = recorded("worker");
        let before = Snapshot::from_answers(&answers).unwrap().containers;
        assert!(!before.is_empty());
        for (i, container) in answers.containers.iter_mut().enumerate() {
            let health = ["(health: starting)", "(unhealthy)"][i % 2];
            container.status = Some(format!("Up 3 seconds {health}"));
        }
        let after = Snapshot::from_answers(&answers).unwrap().containers;
        assert_eq!(after, before);
    }

    #[test]
    fn manager_and_worker_see_the_same_swarm_apart_from_their_own_tasks() {
        let manager = Snapshot::from_answers(&recorded("manager")).unwrap();
        let worker = Snapshot::from_answers(&recorded("worker")).unwrap();
        assert!(manager.active && worker.active);
        assert_eq!(manager.node_addr, Some("198.18.50.1".parse().unwrap()));
        assert_eq!(worker.node_addr, Some("198.18.50.2".parse().unwrap()));
        let names: Vec<&str> = manager.services.keys().map(String::as_str).collect();
        assert_eq!(names, ["api", "db", "dns", "web"]);
        assert_eq!(
            without_local(manager.clone()),
            without_local(worker.clone())
        );

        let web = &manager.services["web"];
        assert_eq!(
            web.published,
            [PublishedPort {
                publish: 80,
                target: 8080
            }]
        );
        assert_eq!(web.tasks.len(), 4);
        // api is on ingress and appnet; db only on appnet, published nowhere.
        assert_eq!(manager.services["api"].vips.len(), 2);
        // The local containers on appnet (ingress does not count), with their pids.
        let on_appnet = |s: &Snapshot| {
            s.containers
                .values()
                .filter(|c| c.networks.iter().eq(["appnet"]) && c.pid >= 1000)
                .count()
        };
        assert_eq!(on_appnet(&manager), 1, "{:?}", manager.containers);
        assert_eq!(on_appnet(&worker), 2, "{:?}", worker.containers);
        assert!(manager.services["db"].published.is_empty());
        assert_eq!(manager.services["db"].vips.len(), 1);

        // Each task is local on exactly the node the swarm put it on, with a gwbridge address
        // in that node's docker_gwbridge subnet (198.18.6N.0/24 in the lab), and its length.
        for (snapshot, other) in [(&manager, &worker), (&worker, &manager)] {
            for (name, service) in &snapshot.services {
                for (task_name, task) in &service.tasks {
                    let here = task.node == snapshot.data_addr;
                    assert_eq!(task.local.is_some(), here, "{name} {task_name}");
                    assert_eq!(
                        other.services[name].tasks[task_name].local.is_some(),
                        !here,
                        "{name} {task_name}"
                    );
                    if let Some(local) = &task.local {
                        let IpAddr::V4(gw) = local.gwbridge else {
                            panic!("{local:?}")
                        };
                        let node = snapshot.node_addr.unwrap().to_string();
                        let n = node.rsplit('.').next().unwrap();
                        assert_eq!(gw.octets()[..3], [198, 18, 60 + n.parse::<u8>().unwrap()]);
                        assert_eq!(local.gwbridge_prefix, Some(24), "{local:?}");
                    }
                }
            }
        }
    }

    /// Every node builds the same selection table for a published service: the manager's and
    /// the worker's plans, from their own recorded answers, pick the same task in every slot
    /// (by its ingress address), though each reaches half of them locally and half through
    /// the tunnel.
    #[test]
    fn manager_and_worker_build_the_same_tables() {
        let table_of = |role: &str, service: &str| -> Vec<std::net::SocketAddr> {
            let snapshot = Snapshot::from_answers(&recorded(role)).unwrap();
            let out =
                crate::source::swarm::services(&snapshot, &Default::default(), &Default::default());
            let mut file = crate::source::file::ServiceFile::from_specs(
                out.all_specs(),
                std::path::Path::new("swarm"),
            )
            .unwrap();
            file.mesh = out.mesh.clone();
            let node = snapshot.node_addr.unwrap();
            let state =
                crate::plan::plan(&file, &crate::plan::NodeFacts::with_addresses(&[node])).unwrap();
            let planned = state
                .services
                .iter()
                .find(|s| s.name == service && s.mapping.protocol == Protocol::Tcp)
                .unwrap();
            let identity: BTreeMap<u32, std::net::SocketAddr> = planned
                .backends
                .iter()
                .map(|b| (b.id, b.identity))
                .collect();
            state.tables[&planned.id]
                .build()
                .unwrap()
                .iter()
                .map(|id| identity[id])
                .collect()
        };
        for service in ["web", "api", "dns"] {
            let manager = table_of("manager", service);
            let worker = table_of("worker", service);
            assert_eq!(manager.len(), 16_381, "{service}");
            assert!(manager == worker, "{service}: the tables differ");
        }
    }

    /// The rule for ports the Engine lists without protocol, checked against what the manager
    /// alone knows (its `/services`).
    #[test]
    fn the_protocol_rule_matches_the_managers_service_specs() {
        let snapshot = Snapshot::from_answers(&recorded("worker")).unwrap();
        let derived =
            crate::source::swarm::services(&snapshot, &Default::default(), &Default::default());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/swarm/manager/services.json");
        let specs: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir).unwrap()).unwrap();
        for spec in specs {
            let name = spec["Spec"]["Name"].as_str().unwrap();
            let mut truth: Vec<(u16, u16, Protocol)> = spec["Endpoint"]["Ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["PublishMode"] == "ingress")
                .map(|p| {
                    let protocol = match p["Protocol"].as_str().unwrap() {
                        "udp" => Protocol::Udp,
                        _ => Protocol::Tcp,
                    };
                    let port = |k: &str| p[k].as_u64().unwrap() as u16;
                    (port("PublishedPort"), port("TargetPort"), protocol)
                })
                .collect();
            truth.sort();
            let mut ours: Vec<(u16, u16, Protocol)> = derived
                .specs
                .iter()
                .filter(|s| s.name == name)
                .flat_map(|s| s.ports.iter().map(|p| (p.frontend, p.backend, p.protocol)))
                .collect();
            ours.sort();
            assert_eq!(ours, truth, "{name}");
        }
    }

    #[test]
    fn published_ports_parse_both_orders_and_refuse_the_rest() {
        assert_eq!(
            parse_port("Target: 8080, Publish: 80"),
            Some(PublishedPort {
                publish: 80,
                target: 8080
            })
        );
        assert_eq!(
            parse_port("Publish: 80,Target: 8080"),
            Some(PublishedPort {
                publish: 80,
                target: 8080
            })
        );
        assert_eq!(parse_port("Target: 8080"), None);
        assert_eq!(parse_port("Target: 8080, Publish: 0"), None);
        assert_eq!(parse_port("Target: 8080, Publish: 80, Protocol: tcp"), None);
        assert_eq!(parse_port("8080/tcp"), None);
    }
}
