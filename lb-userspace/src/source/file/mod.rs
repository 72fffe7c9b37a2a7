//! The service file `lbd` loads: which frontends to publish and where their traffic goes.
//!
//! Parsing has two steps. Serde reads the YAML into loose raw structs that reject unknown
//! fields (its message names the path and the valid fields, with line and column). Each raw
//! value is then converted here, so a bad value is reported with its service, its field path
//! and what to write instead.
//!
//! Frontend ownership: a service with a `vip` owns (vip, port, protocol); a service without one
//! owns (port, protocol) on every node address. A VIP is not a node address, so a VIP service
//! and a VIP-less service may publish the same port and protocol. Whether a VIP is also
//! assigned to the node is only known at run time, so that clash is the daemon's to check.

mod parse;
mod read;
#[cfg(test)]
mod tests;
mod value;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use lb_common::{limits, maps::proto};

use self::parse::*;
pub(crate) use self::read::quoted_short;
pub use crate::source::error::{ConfigError, ParseValueError};

/// Most backends one service may list.
pub const MAX_BACKENDS_PER_SERVICE: usize = 65_535;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 65_535;
/// Longest idle timeout (30 days): longer ones would keep abandoned flows in the table.
pub const MAX_TIMEOUT_S: u32 = 30 * 86_400;
/// Longest service name: a DNS label's length, so a name can serve as one.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

// ---------------------------------------------------------------------------------------------
// Validated types

/// A parsed and validated service file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFile {
    pub services: BTreeMap<String, ServiceSpec>,
    /// The `lbd:` section: daemon settings, each overridable on the command line.
    pub lbd: crate::source::settings::DaemonSettings,
    /// The `swarm:` section: policies of swarm services, by swarm service name.
    pub swarm: BTreeMap<String, SwarmPolicy>,
    /// The swarm's nodes, for the mesh tunnel (set by the swarm source, never by a file).
    pub mesh: Option<MeshNodes>,
}

/// This node's and its peers' underlay addresses (IPv4: the tunnel's outer header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshNodes {
    pub own: std::net::Ipv4Addr,
    pub peers: std::collections::BTreeSet<std::net::Ipv4Addr>,
}

/// One service, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// `None`: the ports are published on every node address.
    pub vip: Option<IpAddr>,
    pub ports: Vec<PortMapping>,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub affinity: Affinity,
    pub timeouts: Timeouts,
    pub on_backend_removal: RemovalPolicy,
    pub maglev_table_size: u32,
    /// May be empty: the service then drops (and counts) its packets.
    pub backends: Vec<BackendSpec>,
    /// How its backends are checked; `None`: they are not (every listed backend is up).
    pub health: Option<HealthSpec>,
    /// 0: a service of the node (files and the API). 1-31: a swarm VIP that only sockets of
    /// containers on one overlay network reach (see `service_flags::SOCKET_SCOPE_SHIFT`);
    /// never written in a file.
    pub socket_scope: u8,
    /// A local task's delivery frontend: only packets from peer nodes' tunnels reach it
    /// (`service_flags::TUNNEL_ONLY`); never written in a file.
    pub tunnel_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number used in map keys.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
        }
    }
}

/// A published port: `FRONTEND[:BACKEND][/tcp|udp]`, as in compose files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub frontend: u16,
    /// The port backends listen on, unless a backend names its own.
    pub backend: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Consistent hashing: flows stick to their backend across daemons and restarts.
    #[default]
    Maglev,
    /// Weighted round-robin over new flows.
    RoundRobin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// Rewrite the destination only; backends see the client address and must route replies
    /// back through the balancer.
    #[default]
    Nat,
    /// Rewrite source and destination; replies return to the balancer by themselves.
    FullNat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Hash the whole 5-tuple.
    #[default]
    None,
    /// Hash the client address: one client always reaches one backend.
    ClientIp,
    /// Hash the 5-tuple less the frontend address: a connection reaches the same backend
    /// whichever node address it enters by (swarm published ports behind ECMP or failover).
    AnyNode,
}

/// Idle timeouts of established flows, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_s: u32,
    pub udp_s: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_s: limits::DEFAULT_TCP_TIMEOUT_S,
            udp_s: limits::DEFAULT_UDP_TIMEOUT_S,
        }
    }
}

/// What happens to a removed backend's established flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RemovalPolicy {
    /// They keep going to the old backend until idle.
    Keep,
    /// Their next packet picks a new backend.
    #[default]
    Move,
    /// TCP flows are ended: the client's next packet is answered with a RST from the
    /// frontend. UDP flows move.
    Reset,
}

/// A backend: `ADDR`, `ADDR:PORT`, `[V6ADDR]:PORT` or `V6ADDR`, or the long form with a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub address: IpAddr,
    /// `None`: the mapping's backend port.
    pub port: Option<u16>,
    /// Share of new flows; 0 drains the backend (no new flows, existing ones continue).
    pub weight: u32,
    /// A swarm task's place in the mesh; `None` for backends of files and the API.
    pub mesh: Option<MeshBackend>,
}

/// The name of the service a swarm service's policy `vip` makes (its published ports on that
/// address): the swarm service's name and this. No swarm service is named so (Docker's names
/// are DNS labels, without dots), nor a task's delivery frontend (`SERVICE.SLOT.ID`); an
/// operator's service that is wins, as any name it takes.
pub const POLICY_VIP_SUFFIX: &str = ".vip";

/// Where a swarm task is, for the selection every node makes alike and for the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshBackend {
    /// Its address on the ingress network, the same on every node: Maglev hashes it, so every
    /// node builds the same table.
    pub identity: IpAddr,
    /// The node it runs on, when that is another node: packets go there through the tunnel
    /// (to `identity`); `None` when this node reaches it (at `address`).
    pub via: Option<IpAddr>,
    /// For a task this node reaches: the prefix length of its IPv4 subnet there
    /// (`docker_gwbridge`'s). A client inside it is answered through the node's address (see
    /// `backend_flags::ON_LINK_SHIFT`).
    pub on_link_prefix: Option<u8>,
}

impl BackendSpec {
    /// The port this backend receives `mapping`'s traffic on.
    pub fn target_port(&self, mapping: &PortMapping) -> u16 {
        self.port.unwrap_or(mapping.backend)
    }
}

// ---------------------------------------------------------------------------------------------
// Short forms, shared with the CLI

/// `as_str`, `Display` and `FromStr` from one table, so the file and the CLI spell values the
/// same way and errors can list every valid value.
macro_rules! keywords {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value with its spelling.
            pub const VALUES: &[(&str, $ty)] = &[$(($text, $ty::$variant)),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// The same spellings on command lines (`lbctl add-service --scheduler ...`).
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }

        impl FromStr for $ty {
            type Err = ParseValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::VALUES.iter().find(|(text, _)| *text == s).map(|&(_, v)| v).ok_or_else(|| {
                    let valid: Vec<&str> = Self::VALUES.iter().map(|(text, _)| *text).collect();
                    ParseValueError(format!(
                        "{s:?} is not a valid {}; valid values: {}",
                        $what,
                        valid.join(", ")
                    ))
                })
            }
        }
    };
}

keywords!(Protocol, "protocol", { Tcp => "tcp", Udp => "udp" });
keywords!(Scheduler, "scheduler", { Maglev => "maglev", RoundRobin => "round-robin" });
keywords!(Forwarding, "forwarding mode", { Nat => "nat", FullNat => "fullnat" });
keywords!(Affinity, "affinity", { None => "none", ClientIp => "client-ip", AnyNode => "any-node" });
keywords!(RemovalPolicy, "removal policy", { Keep => "keep", Move => "move", Reset => "reset" });

// After `keywords!`, which it uses.
mod health;
pub use health::{
    HealthSpec, MAX_HEALTH_INTERVAL, MIN_HEALTH_INTERVAL, Probe, WhenAllDown, format_interval,
};

impl FromStr for PortMapping {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ParseValueError(format!(
                "{s:?} is not FRONTEND[:BACKEND][/tcp|udp]; write e.g. \"80:8080/tcp\""
            ))
        };
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, protocol)) => (ports, protocol.parse().map_err(|_| bad())?),
            None => (s, Protocol::Tcp),
        };
        let (frontend, backend) = ports.split_once(':').unwrap_or((ports, ports));
        Ok(Self {
            frontend: short_form_port(frontend, s, bad)?,
            backend: short_form_port(backend, s, bad)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frontend == self.backend {
            write!(f, "{}/{}", self.frontend, self.protocol)
        } else {
            write!(f, "{}:{}/{}", self.frontend, self.backend, self.protocol)
        }
    }
}

/// The short form; the weight is 1.
impl FromStr for BackendSpec {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ParseValueError(format!(
                "{s:?} is not ADDR, ADDR:PORT, [IPV6]:PORT or IPV6; write e.g. \"10.0.0.1:8080\" \
                 or \"[fd00::1]:8080\""
            ))
        };
        let (address, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
            let address = inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (IpAddr::V6(address).to_canonical(), port)
        } else if let Ok(address) = s.parse::<IpAddr>() {
            (address.to_canonical(), None)
        } else {
            // An IPv6 address has two colons or more, so with a port it needs brackets.
            let (address, port) = s.split_once(':').ok_or_else(bad)?;
            let address = address.parse::<Ipv4Addr>().map_err(|_| bad())?;
            (IpAddr::V4(address), Some(port))
        };
        let port = port.map(|p| short_form_port(p, s, bad)).transpose()?;
        check_usable(address, s, "backend").map_err(ParseValueError)?;
        Ok(Self {
            address,
            port,
            weight: 1,
            mesh: None,
        })
    }
}

/// A port number inside the short form `whole`; `bad` describes the form.
fn short_form_port(
    text: &str,
    whole: &str,
    bad: impl Fn() -> ParseValueError,
) -> Result<u16, ParseValueError> {
    match parse_number(text, 1..=65_535) {
        Ok(port) => Ok(port as u16),
        Err(NumberError::NotANumber) => Err(bad()),
        Err(NumberError::OutOfRange) => Err(ParseValueError(format!(
            "port {text} in {whole:?} is out of range; ports are 1-65535"
        ))),
    }
}

/// The short form (the weight is not part of it).
impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.address, self.port) {
            (address, None) => write!(f, "{address}"),
            (IpAddr::V4(address), Some(port)) => write!(f, "{address}:{port}"),
            (IpAddr::V6(address), Some(port)) => write!(f, "[{address}]:{port}"),
        }
    }
}

/// What the service file says about one swarm service; every node reads the same file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmPolicy {
    /// An address the service's published ports also answer on, beside the node addresses:
    /// the same on every node, so it can be announced (`lbd.bgp`) and routed by ECMP.
    pub vip: Option<IpAddr>,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub affinity: Affinity,
    pub timeouts: Timeouts,
    pub on_backend_removal: RemovalPolicy,
    pub maglev_table_size: u32,
    /// Published ports that are UDP only.
    pub udp_ports: std::collections::BTreeSet<u16>,
    /// A node with a running task of the service serves it from its own tasks only (no hop
    /// between nodes; the spread follows where clients enter).
    pub local_first: bool,
}

impl Default for SwarmPolicy {
    fn default() -> Self {
        Self {
            vip: None,
            scheduler: Scheduler::default(),
            forwarding: Forwarding::default(),
            // A published port answers on every node address: a connection gets the same
            // task whichever node it enters by.
            affinity: Affinity::AnyNode,
            timeouts: Timeouts::default(),
            on_backend_removal: RemovalPolicy::default(),
            maglev_table_size: limits::DEFAULT_MAGLEV_TABLE_SIZE,
            udp_ports: std::collections::BTreeSet::new(),
            local_first: false,
        }
    }
}
