//! Services and tasks of the lab: typed `--publish` arguments, scaling, and where each
//! running task is (node, container, addresses).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{SwarmLab, SwarmNode};
use crate::Proto;

/// How a port is published (`docker service create --publish mode=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// The routing mesh: every node's address, whichever node runs the tasks.
    Ingress,
    /// Only on the nodes running a task, straight to that task (Docker's own port mapping).
    Host,
}

/// One published port of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
    pub mode: PublishMode,
}

impl Publish {
    /// An ingress-published port.
    pub fn ingress(published: u16, target: u16, proto: Proto) -> Publish {
        Publish {
            published,
            target,
            proto,
            mode: PublishMode::Ingress,
        }
    }

    /// A port published in ingress mode for TCP and for UDP (the Engine lists it twice with
    /// one target: the rule that makes it both).
    pub fn ingress_tcp_and_udp(published: u16, target: u16) -> [Publish; 2] {
        [
            Publish::ingress(published, target, Proto::Tcp),
            Publish::ingress(published, target, Proto::Udp),
        ]
    }

    /// The value of `--publish`.
    pub fn arg(&self) -> String {
        let mode = match self.mode {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        };
        format!(
            "published={},target={},protocol={},mode={mode}",
            self.published, self.target, self.proto
        )
    }
}

/// A running task, as its node's Engine shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The node's index (1-based).
    pub node: u8,
    /// The container id, 12 characters: also the container's hostname, which the image's
    /// servers answer with.
    pub container: String,
    /// The task's name (`SERVICE.SLOT.TASK_ID`), its container's name.
    pub name: String,
    /// Its address on each network the container is attached to (`ingress`, overlays).
    pub networks: BTreeMap<String, Ipv4Addr>,
    /// Its address on its node's `docker_gwbridge`, if it has one (tasks with ingress ports).
    pub gwbridge: Option<Ipv4Addr>,
}

impl Task {
    /// Its address on the `ingress` network.
    pub fn ingress_addr(&self) -> Option<Ipv4Addr> {
        self.networks.get("ingress").copied()
    }
}

impl SwarmLab {
    /// Creates `name` with `replicas` tasks publishing `ports`, with more `docker service
    /// create` arguments in `extra`.
    pub fn create_published(
        &self,
        name: &str,
        replicas: u32,
        ports: &[Publish],
        extra: &[&str],
    ) -> Result<()> {
        let mut args: Vec<String> = ports
            .iter()
            .flat_map(|p| ["--publish".to_owned(), p.arg()])
            .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.create_service(name, replicas, &args)
    }

    /// `docker service scale -d NAME=N` (returns at once; see [`SwarmLab::wait_running`]).
    pub fn scale(&self, service: &str, replicas: u32) -> Result<()> {
        self.manager()
            .docker(&["service", "scale", "-d", &format!("{service}={replicas}")])?;
        Ok(())
    }

    /// The running tasks of `service` on every node, node by node.
    pub fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            all.extend(node.tasks(service)?);
        }
        Ok(all)
    }

    /// Waits until `service` has exactly `n` running containers over all nodes, each with its
    /// addresses, and returns them (at most `timeout`). Stricter than
    /// [`SwarmLab::wait_running`], which counts what the manager reports.
    pub fn wait_tasks(&self, service: &str, n: usize, timeout: Duration) -> Result<Vec<Task>> {
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = self.tasks(service)?;
            if tasks.len() == n {
                return Ok(tasks);
            }
            if Instant::now() > deadline {
                bail!(
                    "{service}: {} running containers after {timeout:?}, want {n}: {tasks:?}\n{}",
                    tasks.len(),
                    self.dump_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits, at most `timeout`, until `service` has `n` running containers and every node's
    /// Engine lists on `network` (see [`SwarmNode::listed_tasks`]) exactly their addresses
    /// there. `lbd --swarm` follows that view, which may lag the containers: a test holds lbd
    /// to its own delay from when the view agrees. How long that took, or `None` when it did
    /// not agree in time (the caller's own check decides then: this wait only delays it).
    pub fn wait_listed(
        &self,
        network: &str,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        let start = Instant::now();
        loop {
            let running: BTreeSet<Ipv4Addr> = self
                .tasks(service)?
                .iter()
                .filter_map(|t| t.networks.get(network).copied())
                .collect();
            // A node that cannot say (no such network there yet) does not agree.
            let agree = running.len() == n
                && self.nodes.iter().all(|node| {
                    node.listed_tasks(network, service)
                        .is_ok_and(|listed| listed == running)
                });
            if agree {
                return Ok(Some(start.elapsed()));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every node's dockerd log, for failure messages.
    pub fn dump_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} dockerd:\n{}\n", n.index, n.dockerd_log_tail()))
            .collect()
    }
}

impl SwarmNode {
    /// Whether this node's Engine still lists `service` on the ingress network (its verbose
    /// view, the one `lbd --swarm` reads): it may lag the service's containers being gone.
    pub fn ingress_lists(&self, service: &str) -> Result<bool> {
        Ok(self
            .network_services("ingress")?
            .as_object()
            .is_some_and(|s| s.contains_key(service)))
    }

    /// The services this node's Engine lists on `network`, with their tasks (`network
    /// inspect --verbose`: the view `lbd --swarm` reads).
    fn network_services(&self, network: &str) -> Result<serde_json::Value> {
        let text = self.docker(&[
            "network",
            "inspect",
            "--verbose",
            "--format",
            "{{json .Services}}",
            network,
        ])?;
        serde_json::from_str(text.trim())
            .with_context(|| format!("{network} network's services (json)"))
    }

    /// The addresses of `service`'s tasks on `network` as this node's Engine lists them (its
    /// verbose view, the one `lbd --swarm` reads; kept by the swarm's gossip for other nodes'
    /// tasks, so it may lag the containers); empty when it does not list the service.
    pub fn listed_tasks(&self, network: &str, service: &str) -> Result<BTreeSet<Ipv4Addr>> {
        Ok(self.network_services(network)?[service]["Tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|task| task["EndpointIP"].as_str()?.parse().ok())
            .collect())
    }

    /// The running containers of `service` on this node, with their addresses.
    pub fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        let ids = self.docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let gwbridge = self.gwbridge_addresses()?;
        let mut args = vec!["inspect", "--type", "container"];
        args.extend(&ids);
        let text = self.docker(&args)?;
        let inspected: serde_json::Value =
            serde_json::from_str(&text).context("docker inspect output")?;
        let mut tasks = Vec::new();
        for container in inspected.as_array().context("docker inspect: not a list")? {
            if container["State"]["Running"] != true {
                continue;
            }
            let id = container["Id"].as_str().context("container without Id")?;
            let mut networks = BTreeMap::new();
            if let Some(nets) = container["NetworkSettings"]["Networks"].as_object() {
                for (name, net) in nets {
                    if let Some(addr) = net["IPAddress"].as_str().and_then(|a| a.parse().ok()) {
                        networks.insert(name.clone(), addr);
                    }
                }
            }
            let name = container["Name"].as_str().unwrap_or_default();
            tasks.push(Task {
                node: self.index,
                container: id.chars().take(12).collect(),
                name: name.trim_start_matches('/').to_owned(),
                networks,
                gwbridge: gwbridge.get(id).copied(),
            });
        }
        Ok(tasks)
    }

    /// Container id to its `docker_gwbridge` address: `docker inspect` of a task does not
    /// show that network; the network's own view does.
    pub fn gwbridge_addresses(&self) -> Result<BTreeMap<String, Ipv4Addr>> {
        let text = self.docker(&[
            "network",
            "inspect",
            "--format",
            "{{json .Containers}}",
            "docker_gwbridge",
        ])?;
        let containers: serde_json::Value =
            serde_json::from_str(&text).context("docker_gwbridge containers")?;
        let mut addrs = BTreeMap::new();
        for (id, c) in containers.as_object().into_iter().flatten() {
            let addr = c["IPv4Address"].as_str().unwrap_or_default();
            if let Some(Ok(addr)) = addr.split('/').next().map(str::parse) {
                addrs.insert(id.clone(), addr);
            }
        }
        Ok(addrs)
    }
}
