//! Where a new flow would go under a plan, and why (`lbctl explain`), computed with the
//! kernel's own hash and tables.

use std::net::SocketAddr;

use lb_common::{
    Addr,
    hash::{client_hash, flow_hash},
    maps::{EndpointKey, FlowKey, backend_flags, service_flags},
};

use super::DesiredState;

/// Where a new flow would go, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explanation {
    /// No frontend matches the destination: the packet passes to the kernel untouched.
    NotAFrontend,
    /// The service has no backend that takes new flows: the packet is refused (a TCP SYN with
    /// a RST, a datagram with ICMP port unreachable) or dropped, and counted.
    NoBackend { service: String },
    /// Maglev: the flow's hash picks a slot of the service's table.
    Maglev {
        service: String,
        hash: u32,
        slot: u32,
        table_len: u32,
        backend: SocketAddr,
        /// The client shares the subnet the node reaches the backend on: the flow speaks
        /// from the node's address (see `backend_flags::ON_LINK_SHIFT`).
        hairpin: bool,
    },
    /// Round-robin: the backend depends on each CPU's position in the sequence.
    RoundRobin {
        service: String,
        sequence: Vec<SocketAddr>,
    },
    /// A frontend only the socket-level programs serve (a swarm VIP on an overlay network):
    /// a container's `connect` picks by its socket and network namespace, which no packet
    /// address tells; packets to it are not balanced.
    SocketLevel {
        service: String,
        /// The socket's network namespace alone decides (client-ip affinity).
        per_namespace: bool,
        backends: Vec<SocketAddr>,
    },
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAFrontend => write!(f, "not a frontend: passed to the kernel untouched"),
            Self::NoBackend { service } => {
                write!(
                    f,
                    "service {service}: no backend takes new flows: a client's TCP SYN is \
                     refused with a RST from the frontend, a UDP datagram with ICMP port \
                     unreachable (refused_no_backend), anything else dropped (drop_no_backend)"
                )
            }
            Self::Maglev {
                service,
                hash,
                slot,
                table_len,
                backend,
                hairpin,
            } => {
                write!(
                    f,
                    "service {service}: new flow -> {backend} (maglev: hash {hash:#010x}, slot {slot} of {table_len})"
                )?;
                if *hairpin {
                    write!(
                        f,
                        "; from the node's address and a node port: the client shares the \
                         backend's subnet, where the backend would answer it straight (hairpin)"
                    )?;
                }
                Ok(())
            }
            Self::SocketLevel {
                service,
                per_namespace,
                backends,
            } => {
                let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
                let key = if *per_namespace {
                    "the client's network namespace"
                } else {
                    "the connecting socket and its network namespace"
                };
                write!(
                    f,
                    "service {service}: a socket-level frontend (containers on its network, at \
                     connect or sendmsg): the backend is picked by a hash of {key}, which no \
                     packet address tells, over: {}; packets to it are not balanced",
                    list.join(", ")
                )
            }
            Self::RoundRobin { service, sequence } => {
                let order: Vec<String> = sequence.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "service {service}: new flow -> next in the round-robin sequence of each CPU: {}",
                    order.join(", ")
                )
            }
        }
    }
}

impl DesiredState {
    /// Which backend a new flow `src` -> `dst` gets under this plan, computed with the
    /// kernel's own hash and tables. (An established flow keeps the backend it has.)
    pub fn explain(&self, protocol: u8, src: SocketAddr, dst: SocketAddr) -> Explanation {
        let key = EndpointKey {
            addr: Addr::from(dst.ip()),
            port_be: dst.port().to_be(),
            proto: protocol,
            _pad: 0,
        };
        // A VIP that takes every port has one entry for all (port `ANY_PORT`).
        let any_port = EndpointKey {
            port_be: lb_common::maps::ANY_PORT,
            ..key
        };
        let Some(service) = self
            .frontends
            .get(&key)
            .or_else(|| self.frontends.get(&any_port))
        else {
            return Explanation::NotAFrontend;
        };
        let Some(planned) = self.services.iter().find(|s| s.id == service.id) else {
            return Explanation::NotAFrontend;
        };
        let name = format!("{} {}", planned.name, planned.mapping);
        let table = self.tables[&service.id]
            .build()
            .expect("the plan checked the table");
        let target = |id: u32| {
            planned
                .backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.target)
                .expect("tables hold the service's own backends")
        };
        if table.is_empty() {
            return Explanation::NoBackend { service: name };
        }
        if service.flags & service_flags::SOCKET_SCOPE_MASK != 0 {
            let mut backends: Vec<SocketAddr> = planned
                .backends
                .iter()
                .map(|b| match b.target.port() {
                    lb_common::maps::ANY_PORT => SocketAddr::new(b.target.ip(), dst.port()),
                    _ => b.target,
                })
                .collect();
            backends.dedup();
            return Explanation::SocketLevel {
                service: name,
                per_namespace: service.flags & service_flags::AFFINITY_CLIENT_IP != 0,
                backends,
            };
        }
        if service.flags & service_flags::ROUND_ROBIN != 0 {
            return Explanation::RoundRobin {
                service: name,
                sequence: table.iter().map(|id| target(*id)).collect(),
            };
        }
        let flow = FlowKey {
            src: Addr::from(src.ip()),
            dst: Addr::from(dst.ip()),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto: protocol,
            _pad: [0; 3],
        };
        let hash = if service.flags & service_flags::AFFINITY_CLIENT_IP != 0 {
            client_hash(&flow)
        } else if service.flags & service_flags::AFFINITY_ANY_NODE != 0 {
            lb_common::hash::any_node_hash(&flow)
        } else {
            flow_hash(&flow)
        };
        let slot = hash % table.len() as u32;
        let id = table[slot as usize];
        let hairpin = self.backends.get(&id).is_some_and(|b| {
            let client = Addr::from(src.ip());
            client.same_subnet(&b.addr, backend_flags::on_link_prefix(b.flags))
        });
        Explanation::Maglev {
            service: name,
            hash,
            slot,
            table_len: table.len() as u32,
            backend: target(id),
            hairpin,
        }
    }
}
