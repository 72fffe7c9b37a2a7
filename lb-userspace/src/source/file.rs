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

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::source::swarm::SwarmPolicy;
use lb_common::{limits, maps::proto};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

/// Most backends one service may list.
pub const MAX_BACKENDS_PER_SERVICE: usize = 65_535;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 65_535;
/// Longest idle timeout (30 days): longer ones would keep abandoned flows in the table.
pub const MAX_TIMEOUT_S: u32 = 30 * 86_400;
/// Longest service name: a DNS label's length, so a name can serve as one.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a service file was refused. The `Display` text is meant for operators as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io error is part of the message, not a `source`: error chains would print it twice.
    #[error("{}: cannot read the service file: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not YAML, or not shaped like a service file (unknown field, wrong kind of value). The
    /// message is serde_yaml's: field path, what was expected, line and column.
    #[error("{}: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    /// A value that parses but is not allowed.
    #[error("{}: {}field {field}: {message}", .path.display(), service_prefix(.service.as_deref()))]
    Invalid {
        path: PathBuf,
        service: Option<String>,
        field: String,
        message: String,
    },
}

fn service_prefix(service: Option<&str>) -> String {
    service.map_or_else(String::new, |s| format!("service {s:?}, "))
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Syntax { path, .. } | Self::Invalid { path, .. } => {
                path
            }
        }
    }

    /// The service the error is about, when it is about one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Invalid { service, .. } => service.as_deref(),
            _ => None,
        }
    }

    /// The field path (`ports[1]`, `backends[0].weight`), when the error is about a value.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A short-form value (`80:8080/tcp`, `10.0.0.1:8080`, `maglev`) that does not parse. Shared
/// by the service file and the CLI; the message quotes the value and says what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseValueError(String);

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

/// Where a swarm task is, for the selection every node makes alike and for the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshBackend {
    /// Its address on the ingress network, the same on every node: Maglev hashes it, so every
    /// node builds the same table.
    pub identity: IpAddr,
    /// The node it runs on, when that is another node: packets go there through the tunnel
    /// (to `identity`); `None` when this node reaches it (at `address`).
    pub via: Option<IpAddr>,
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

// ---------------------------------------------------------------------------------------------
// Raw, as serde reads it

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    services: Option<RawServices>,
    lbd: Option<crate::source::settings::RawSettings>,
    swarm: Option<BTreeMap<String, Option<RawSwarmPolicy>>>,
}

/// A swarm service's policy: a service's fields less those the swarm gives (vip, ports,
/// backends), plus which published ports are UDP (the Engine does not say on workers).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwarmPolicy {
    scheduler: Option<Scalar>,
    forwarding: Option<Scalar>,
    affinity: Option<Scalar>,
    timeouts: Option<RawTimeouts>,
    on_backend_removal: Option<Scalar>,
    maglev_table_size: Option<Scalar>,
    udp_ports: Option<Vec<Scalar>>,
    local_first: Option<Scalar>,
}

/// Services in file order. A plain map would let a repeated name silently replace the first.
struct RawServices(Vec<(String, RawService)>);

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Option<Scalar>,
    ports: Option<Vec<Scalar>>,
    scheduler: Option<Scalar>,
    forwarding: Option<Scalar>,
    affinity: Option<Scalar>,
    timeouts: Option<RawTimeouts>,
    on_backend_removal: Option<Scalar>,
    maglev_table_size: Option<Scalar>,
    backends: Option<Vec<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp: Option<Scalar>,
    udp: Option<Scalar>,
}

enum RawBackend {
    Short(String),
    Long(RawBackendLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendLong {
    address: Scalar,
    port: Option<Scalar>,
    weight: Option<Scalar>,
}

/// Any scalar, as text: `port: 80` and `port: "80"` are the same, and a wrong value gets this
/// module's message rather than serde's "invalid type".
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let unexpected = match serde_yaml::Value::deserialize(deserializer)? {
            serde_yaml::Value::String(s) => return Ok(Scalar(s)),
            serde_yaml::Value::Number(n) => return Ok(Scalar(n.to_string())),
            serde_yaml::Value::Bool(b) => return Ok(Scalar(b.to_string())),
            serde_yaml::Value::Null => de::Unexpected::Unit,
            serde_yaml::Value::Sequence(_) => de::Unexpected::Seq,
            serde_yaml::Value::Mapping(_) => de::Unexpected::Map,
            serde_yaml::Value::Tagged(_) => de::Unexpected::Other("tagged value"),
        };
        Err(de::Error::invalid_type(unexpected, &"a string or a number"))
    }
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backend like \"10.0.0.1:8080\" or { address, port, weight }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Short(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                RawBackendLong::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Long)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawServices {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawServices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of service names to services")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServices, A::Error> {
                let mut services: Vec<(String, RawService)> = Vec::new();
                let mut names = HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !names.insert(name.clone()) {
                        return Err(de::Error::custom(format_args!(
                            "service {name:?} is defined twice; give each service one entry"
                        )));
                    }
                    // `web:` with nothing under it is a service with no fields.
                    let service = map.next_value::<Option<RawService>>()?.unwrap_or_default();
                    services.push((name, service));
                }
                Ok(RawServices(services))
            }
        }
        deserializer.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw to validated

impl ServiceFile {
    /// Reads, parses and validates a service file.
    pub fn load(path: &Path) -> Result<ServiceFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates service-file text; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<ServiceFile, ConfigError> {
        let raw: Option<RawFile> = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        let (raw, lbd, swarm) = raw.map_or((None, None, None), |file| {
            (file.services, file.lbd, file.swarm)
        });
        let swarm = swarm
            .unwrap_or_default()
            .into_iter()
            .map(|(name, raw)| {
                let policy = swarm_policy_from_raw(&name, raw.unwrap_or_default(), origin)?;
                Ok((name, policy))
            })
            .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
        let lbd = lbd
            .map(|raw| raw.validate(origin))
            .transpose()?
            .unwrap_or_default();
        let raw = raw.ok_or_else(|| ConfigError::Invalid {
            path: origin.to_owned(),
            service: None,
            field: "services".into(),
            message: "missing or empty; the file needs a `services:` mapping (write \
                          `services: {}` for none)"
                .into(),
        })?;

        let specs = raw
            .0
            .into_iter()
            .map(|(name, raw)| service_from_raw(name, raw, origin))
            .collect::<Result<Vec<_>, _>>()?;
        let mut file = Self::from_specs(specs, origin)?;
        file.lbd = lbd;
        file.swarm = swarm;
        Ok(file)
    }

    /// Services already validated one by one (from a file, or from the file and the API
    /// together): checks that no two of them publish the same frontend.
    pub fn from_specs(
        specs: impl IntoIterator<Item = ServiceSpec>,
        origin: &Path,
    ) -> Result<ServiceFile, ConfigError> {
        let mut services = BTreeMap::new();
        let mut owners = HashMap::new();
        for spec in specs {
            claim_frontends(&spec, &mut owners, origin)?;
            services.insert(spec.name.clone(), spec);
        }
        Ok(ServiceFile {
            services,
            lbd: Default::default(),
            swarm: Default::default(),
            mesh: None,
        })
    }

    /// The `services:` mapping in the file's own format, every default written out, so
    /// [`ServiceFile::parse`] reads back the same services. Used to persist what the API was
    /// told and what is programmed.
    pub fn services_value(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.services
                .iter()
                .map(|(name, spec)| (name.clone(), spec.to_value()))
                .collect(),
        )
    }
}

impl ServiceSpec {
    /// This service in the file's format (see [`ServiceFile::services_value`]).
    pub fn to_value(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "ports": self.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "scheduler": self.scheduler.as_str(),
            "forwarding": self.forwarding.as_str(),
            "affinity": self.affinity.as_str(),
            "timeouts": {
                "tcp": format!("{}s", self.timeouts.tcp_s),
                "udp": format!("{}s", self.timeouts.udp_s),
            },
            "on_backend_removal": self.on_backend_removal.as_str(),
            "maglev_table_size": self.maglev_table_size,
            "backends": self.backends.iter().map(|b| {
                let mut long = serde_json::json!({
                    "address": b.address.to_string(),
                    "weight": b.weight,
                });
                if let Some(port) = b.port {
                    long["port"] = port.into();
                }
                long
            }).collect::<Vec<_>>(),
        });
        if let Some(vip) = self.vip {
            value["vip"] = vip.to_string().into();
        }
        value
    }
}

/// Records `spec` as the owner of its frontends, or names the service that already owns one.
/// The key's address is the vip, or `None` for "every node address" (see the module docs).
fn claim_frontends(
    spec: &ServiceSpec,
    owners: &mut HashMap<(Option<IpAddr>, u16, Protocol), String>,
    origin: &Path,
) -> Result<(), ConfigError> {
    for (i, mapping) in spec.ports.iter().enumerate() {
        let key = (spec.vip, mapping.frontend, mapping.protocol);
        if let Some(owner) = owners.insert(key, spec.name.clone()) {
            let (port, protocol) = (mapping.frontend, mapping.protocol);
            let frontend = match spec.vip {
                Some(vip) => format!("vip {vip} port {port}/{protocol}"),
                None => format!("port {port}/{protocol} on every node address"),
            };
            let cx = Ctx {
                path: origin,
                service: &spec.name,
            };
            return Err(cx.invalid(
                format!("ports[{i}]"),
                format!(
                    "{frontend} is already published by service {owner:?}; a frontend belongs \
                     to one service, so change the port or the vip of one of them"
                ),
            ));
        }
    }
    Ok(())
}

/// Where a value came from, for error messages.
struct Ctx<'a> {
    path: &'a Path,
    service: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            service: Some(self.service.to_owned()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A keyword field (`scheduler` and the like): absent means the default.
    fn keyword<T: FromStr<Err = ParseValueError> + Default>(
        &self,
        field: &str,
        raw: Option<Scalar>,
    ) -> Result<T, ConfigError> {
        raw.map_or(Ok(T::default()), |s| {
            s.0.parse()
                .map_err(|e: ParseValueError| self.invalid(field, e.0))
        })
    }

    /// A whole number in `range`; `what` describes the range for the message.
    fn number(
        &self,
        field: &str,
        text: &str,
        range: RangeInclusive<u64>,
        what: &str,
    ) -> Result<u64, ConfigError> {
        parse_number(text, range).map_err(|e| {
            let message = match e {
                NumberError::NotANumber => format!("{text:?} is not a whole number; {what}"),
                NumberError::OutOfRange => format!("{text} is out of range; {what}"),
            };
            self.invalid(field, message)
        })
    }
}

fn service_from_raw(
    name: String,
    raw: RawService,
    origin: &Path,
) -> Result<ServiceSpec, ConfigError> {
    let name_ok = (1..=MAX_SERVICE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(ConfigError::Invalid {
            path: origin.to_owned(),
            service: None,
            field: "services".into(),
            message: format!(
                "{name:?} is not a valid service name; use 1-{MAX_SERVICE_NAME_LEN} characters \
                 of A-Z a-z 0-9 _ . -"
            ),
        });
    }
    let cx = Ctx {
        path: origin,
        service: &name,
    };

    let vip = raw
        .vip
        .map(|Scalar(text)| parse_address(&text, "vip").map_err(|m| cx.invalid("vip", m)))
        .transpose()?;

    let ports = raw.ports.unwrap_or_default();
    if ports.is_empty() {
        return Err(cx.invalid(
            "ports",
            "no ports; publish at least one, e.g. ports: [\"80:8080/tcp\"]",
        ));
    }
    let mut seen_ports: HashMap<(u16, Protocol), usize> = HashMap::new();
    let ports = ports
        .into_iter()
        .enumerate()
        .map(|(i, Scalar(text))| {
            let field = format!("ports[{i}]");
            let mapping: PortMapping = text
                .parse()
                .map_err(|e: ParseValueError| cx.invalid(&field, e.0))?;
            if let Some(first) = seen_ports.insert((mapping.frontend, mapping.protocol), i) {
                return Err(cx.invalid(
                    field,
                    format!(
                        "{text:?} publishes port {}/{} again (see ports[{first}]); each port and \
                         protocol may appear once per service",
                        mapping.frontend, mapping.protocol
                    ),
                ));
            }
            Ok(mapping)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let scheduler: Scheduler = cx.keyword("scheduler", raw.scheduler)?;
    let forwarding = cx.keyword("forwarding", raw.forwarding)?;
    let affinity = cx.keyword("affinity", raw.affinity)?;
    let on_backend_removal = cx.keyword("on_backend_removal", raw.on_backend_removal)?;

    let mut timeouts = Timeouts::default();
    if let Some(raw) = raw.timeouts {
        for (field, value, slot) in [
            ("timeouts.tcp", raw.tcp, &mut timeouts.tcp_s),
            ("timeouts.udp", raw.udp, &mut timeouts.udp_s),
        ] {
            if let Some(Scalar(text)) = value {
                *slot = parse_duration(&text).map_err(|m| cx.invalid(field, m))?;
            }
        }
    }

    let raw_backends = raw.backends.unwrap_or_default();
    if raw_backends.len() > MAX_BACKENDS_PER_SERVICE {
        return Err(cx.invalid(
            "backends",
            format!(
                "{} backends; a service may have at most {MAX_BACKENDS_PER_SERVICE}, so split it",
                raw_backends.len()
            ),
        ));
    }
    let backends = raw_backends
        .into_iter()
        .enumerate()
        .map(|(i, raw)| backend_from_raw(raw, &format!("backends[{i}]"), &cx))
        .collect::<Result<Vec<_>, _>>()?;
    check_duplicate_backends(&backends, &ports, &cx)?;

    let maglev_table_size =
        maglev_table_size(raw.maglev_table_size, scheduler, backends.len(), &cx)?;

    Ok(ServiceSpec {
        name,
        vip,
        ports,
        scheduler,
        forwarding,
        affinity,
        timeouts,
        on_backend_removal,
        maglev_table_size,
        backends,
        socket_scope: 0,
        tunnel_only: false,
    })
}

fn swarm_policy_from_raw(
    name: &str,
    raw: RawSwarmPolicy,
    origin: &Path,
) -> Result<SwarmPolicy, ConfigError> {
    let cx = Ctx {
        path: origin,
        service: name,
    };
    let scheduler: Scheduler = cx.keyword("swarm.scheduler", raw.scheduler)?;
    let mut timeouts = Timeouts::default();
    if let Some(raw) = raw.timeouts {
        for (field, value, slot) in [
            ("swarm.timeouts.tcp", raw.tcp, &mut timeouts.tcp_s),
            ("swarm.timeouts.udp", raw.udp, &mut timeouts.udp_s),
        ] {
            if let Some(Scalar(text)) = value {
                *slot = parse_duration(&text).map_err(|m| cx.invalid(field, m))?;
            }
        }
    }
    let udp_ports = raw
        .udp_ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, Scalar(text))| {
            let port = cx.number(
                &format!("swarm.udp_ports[{i}]"),
                &text,
                1..=65_535,
                "list published ports (1-65535) that are UDP",
            )?;
            Ok(port as u16)
        })
        .collect::<Result<_, ConfigError>>()?;
    let local_first = match raw.local_first.as_ref().map(|Scalar(t)| t.as_str()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(cx.invalid(
                "swarm.local_first",
                format!("{other:?} is not true or false"),
            ));
        }
    };
    Ok(SwarmPolicy {
        local_first,
        scheduler,
        forwarding: cx.keyword("swarm.forwarding", raw.forwarding)?,
        // Unlike a file service's, a swarm service's default: its port answers on every node.
        affinity: match raw.affinity {
            None => Affinity::AnyNode,
            some => cx.keyword("swarm.affinity", some)?,
        },
        timeouts,
        on_backend_removal: cx.keyword("swarm.on_backend_removal", raw.on_backend_removal)?,
        // The task count is only known at run time, where the size is checked against it.
        maglev_table_size: maglev_table_size(raw.maglev_table_size, scheduler, 0, &cx)?,
        udp_ports,
    })
}

fn backend_from_raw(
    raw: RawBackend,
    field: &str,
    cx: &Ctx<'_>,
) -> Result<BackendSpec, ConfigError> {
    let long = match raw {
        RawBackend::Short(text) => {
            return text
                .parse()
                .map_err(|e: ParseValueError| cx.invalid(field, e.0));
        }
        RawBackend::Long(long) => long,
    };
    let address = parse_address(&long.address.0, "backend")
        .map_err(|m| cx.invalid(format!("{field}.address"), m))?;
    let port = match long.port {
        None => None,
        Some(Scalar(p)) => {
            let port = cx.number(
                &format!("{field}.port"),
                &p,
                1..=65_535,
                "ports are 1-65535",
            )?;
            Some(port as u16)
        }
    };
    let weight = match long.weight {
        None => 1,
        Some(Scalar(w)) => cx.number(
            &format!("{field}.weight"),
            &w,
            0..=u64::from(MAX_WEIGHT),
            "weights are 0-65535 (0 drains the backend)",
        )? as u32,
    };
    Ok(BackendSpec {
        address,
        port,
        weight,
        mesh: None,
    })
}

/// Two backends are duplicates when, for some port mapping, they send traffic to the same
/// address and port: the kernel would hold one endpoint twice. Listing a backend twice to give
/// it more traffic is what `weight` is for.
fn check_duplicate_backends(
    backends: &[BackendSpec],
    ports: &[PortMapping],
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    let mut checked = HashSet::new();
    for mapping in ports {
        if !checked.insert(mapping.backend) {
            continue; // Same backend port as an earlier mapping: same endpoints.
        }
        let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (i, backend) in backends.iter().enumerate() {
            let port = backend.target_port(mapping);
            if let Some(first) = seen.insert((backend.address, port), i) {
                let endpoint = BackendSpec {
                    port: Some(port),
                    ..*backend
                };
                return Err(cx.invalid(
                    format!("backends[{i}]"),
                    format!(
                        "{:?} and backends[{first}] ({:?}) both receive port {mapping} at \
                         {endpoint}; list each backend once and use weight to give it more traffic",
                        backend.to_string(),
                        backends[first].to_string()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn maglev_table_size(
    raw: Option<Scalar>,
    scheduler: Scheduler,
    backend_count: usize,
    cx: &Ctx<'_>,
) -> Result<u32, ConfigError> {
    let field = "maglev_table_size";
    let max = limits::MAX_TABLE_SIZE - 1; // Slot 0 of the kernel table holds its length.
    let (size, which) = match raw {
        None => (limits::DEFAULT_MAGLEV_TABLE_SIZE, "the default table size"),
        Some(Scalar(text)) => {
            let what = format!("the table size must be a prime of at most {max}");
            let size = cx.number(field, &text, 1..=u64::from(max), &what)?;
            (size as u32, "the table size")
        }
    };
    if !is_prime(size) {
        return Err(cx.invalid(
            field,
            format!(
                "{size} is not prime; Maglev needs a prime table size, e.g. {}",
                prime_at_least(size)
            ),
        ));
    }
    // Round-robin tables are built from the weights instead; the size only matters to Maglev.
    if scheduler == Scheduler::Maglev && (size as usize) < backend_count {
        let wanted = u32::try_from(backend_count * 100).unwrap_or(u32::MAX);
        let suggestion = prime_at_least(wanted);
        let largest = if suggestion < wanted {
            " (the largest allowed)"
        } else {
            ""
        };
        return Err(cx.invalid(
            field,
            format!(
                "{which} {size} is smaller than the {backend_count} backends; pick a prime at \
                 least 100x the backend count, e.g. maglev_table_size: {suggestion}{largest}; \
                 a larger table moves fewer flows when backends change"
            ),
        ));
    }
    Ok(size)
}

// ---------------------------------------------------------------------------------------------
// Leaf parsers

enum NumberError {
    NotANumber,
    OutOfRange,
}

/// ASCII digits only: `u64::from_str` would also take `+80`.
fn parse_number(text: &str, range: RangeInclusive<u64>) -> Result<u64, NumberError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotANumber);
    }
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(NumberError::OutOfRange),
    }
}

/// `30s`, `15m`, `24h`, `1d`, or plain seconds, within 1s..=30d.
fn parse_duration(text: &str) -> Result<u32, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_s: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let out_of_range = || format!("{text:?} is out of range; timeouts are 1s to 30d");
    match parse_number(digits, 0..=u64::MAX) {
        Ok(n) if unit_s != 0 => {
            let seconds = n.checked_mul(unit_s).ok_or_else(out_of_range)?;
            match u32::try_from(seconds) {
                Ok(s) if (1..=MAX_TIMEOUT_S).contains(&s) => Ok(s),
                _ => Err(out_of_range()),
            }
        }
        Err(NumberError::OutOfRange) => Err(out_of_range()),
        _ => Err(format!(
            "{text:?} is not a duration; write e.g. 30s, 15m, 24h, 1d or a number of seconds"
        )),
    }
}

/// A bare address (no port, no brackets) usable as a `role`. IPv4-mapped IPv6 addresses become
/// IPv4 ones, as the kernel stores both alike and duplicates must be caught.
fn parse_address(text: &str, role: &str) -> Result<IpAddr, String> {
    let address = text.parse::<IpAddr>().map_err(|_| {
        format!(
            "{text:?} is not an IPv4 or IPv6 address; write e.g. \"198.18.0.10\" or \"fd00::10\" \
             (without port or brackets)"
        )
    })?;
    let address = address.to_canonical();
    check_usable(address, text, role)?;
    Ok(address)
}

/// Why `address` cannot be a vip or a backend, as an error message.
fn check_usable(address: IpAddr, text: &str, role: &str) -> Result<(), String> {
    let reason = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if matches!(address, IpAddr::V4(v4) if v4.is_broadcast()) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(format!(
        "{text:?} is {reason}; a {role} must be a unicast address reachable over the network"
    ))
}

fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// A table size to suggest: the smallest prime `>= n`, or the largest one allowed.
fn prime_at_least(n: u32) -> u32 {
    let max = limits::MAX_TABLE_SIZE - 1;
    (n.max(2)..=max)
        .find(|&p| is_prime(p))
        .or_else(|| (2..=max).rev().find(|&p| is_prime(p)))
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const EXAMPLE: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53/udp"]
    scheduler: maglev
    forwarding: nat
    affinity: client-ip
    timeouts: { tcp: 24h, udp: 60s }
    on_backend_removal: move
    maglev_table_size: 16381
    backends:
      - "198.18.2.10"
      - { address: "fd00:3::10", port: 9000, weight: 3 }
"#;

    fn parse(text: &str) -> Result<ServiceFile, ConfigError> {
        ServiceFile::parse(text, Path::new("services.yaml"))
    }

    /// A file with one service `web` whose body is `body` (indented by the caller's 4 spaces).
    fn web(body: &str) -> String {
        format!("services:\n  web:\n{body}")
    }

    fn web_spec(body: &str) -> ServiceSpec {
        let file = parse(&web(body)).unwrap_or_else(|e| panic!("{e}"));
        file.services["web"].clone()
    }

    /// The error for `text`, checked to name the file, the service and the field.
    fn error(text: &str, service: Option<&str>, field: &str) -> String {
        let err = parse(text).expect_err("should be refused");
        let message = err.to_string();
        assert!(message.starts_with("services.yaml: "), "{message}");
        assert_eq!(err.path(), Path::new("services.yaml"));
        assert_eq!(err.service(), service, "{message}");
        assert_eq!(err.field(), Some(field), "{message}");
        if let Some(service) = service {
            assert!(
                message.contains(&format!("service \"{service}\"")),
                "{message}"
            );
        }
        assert!(message.contains(&format!("field {field}: ")), "{message}");
        message
    }

    /// The error for a `web` service with `body`.
    fn web_error(body: &str, field: &str) -> String {
        error(&web(body), Some("web"), field)
    }

    #[test]
    fn swarm_policies_are_read_and_checked() {
        let file = parse(
            "services: {}\nswarm:\n  web:\n    scheduler: round-robin\n    udp_ports: [53, \"514\"]\n    timeouts: { tcp: 1h }\n  dns:\n",
        )
        .unwrap();
        let web = &file.swarm["web"];
        assert_eq!(web.scheduler, Scheduler::RoundRobin);
        assert_eq!(web.udp_ports, [53, 514].into());
        assert_eq!(web.timeouts.tcp_s, 3600);
        assert_eq!(file.swarm["dns"], SwarmPolicy::default());

        let message = error(
            "services: {}\nswarm:\n  web:\n    udp_ports: [0]\n",
            Some("web"),
            "swarm.udp_ports[0]",
        );
        assert!(message.contains("1-65535"), "{message}");
        error(
            "services: {}\nswarm:\n  web:\n    scheduler: random\n",
            Some("web"),
            "swarm.scheduler",
        );
        // What the swarm gives is not the file's to say.
        let message = syntax_error("services: {}\nswarm:\n  web:\n    backends: [198.18.2.1]\n");
        assert!(message.contains("unknown field `backends`"), "{message}");
    }

    fn syntax_error(text: &str) -> String {
        let err = parse(text).expect_err("should be refused");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("services.yaml: "), "{message}");
        message
    }

    const PORTS: &str = "    ports: [80]\n";

    #[test]
    fn example_parses_to_expected_structs() {
        let file = parse(EXAMPLE).unwrap();
        let expected = ServiceSpec {
            name: "web".into(),
            vip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1))),
            ports: vec![
                PortMapping {
                    frontend: 80,
                    backend: 8080,
                    protocol: Protocol::Tcp,
                },
                PortMapping {
                    frontend: 53,
                    backend: 53,
                    protocol: Protocol::Udp,
                },
            ],
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Nat,
            affinity: Affinity::ClientIp,
            timeouts: Timeouts {
                tcp_s: 86_400,
                udp_s: 60,
            },
            on_backend_removal: RemovalPolicy::Move,
            maglev_table_size: 16_381,
            backends: vec![
                BackendSpec {
                    address: IpAddr::V4(Ipv4Addr::new(198, 18, 2, 10)),
                    port: None,
                    weight: 1,
                    mesh: None,
                },
                BackendSpec {
                    address: IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, 0x10)),
                    port: Some(9000),
                    weight: 3,
                    mesh: None,
                },
            ],
            socket_scope: 0,
            tunnel_only: false,
        };
        assert_eq!(file.services.len(), 1);
        assert_eq!(file.services["web"], expected);
        let [plain, long] = [expected.backends[0], expected.backends[1]];
        assert_eq!(plain.target_port(&expected.ports[0]), 8080);
        assert_eq!(plain.target_port(&expected.ports[1]), 53);
        assert_eq!(long.target_port(&expected.ports[0]), 9000);
    }

    #[test]
    fn defaults() {
        let spec = web_spec(PORTS);
        assert_eq!(spec.vip, None);
        assert_eq!(spec.scheduler, Scheduler::Maglev);
        assert_eq!(spec.forwarding, Forwarding::Nat);
        assert_eq!(spec.affinity, Affinity::None);
        assert_eq!(spec.on_backend_removal, RemovalPolicy::Move);
        assert_eq!(
            spec.timeouts,
            Timeouts {
                tcp_s: limits::DEFAULT_TCP_TIMEOUT_S,
                udp_s: limits::DEFAULT_UDP_TIMEOUT_S
            }
        );
        assert_eq!(spec.maglev_table_size, limits::DEFAULT_MAGLEV_TABLE_SIZE);
        assert!(spec.backends.is_empty());
        let port = spec.ports[0];
        assert_eq!(
            (port.frontend, port.backend, port.protocol),
            (80, 80, Protocol::Tcp)
        );
        assert_eq!(Protocol::Tcp.number(), proto::TCP);
        assert_eq!(Protocol::Udp.number(), proto::UDP);
    }

    #[test]
    fn every_value_spelled_out() {
        let spec = web_spec(
            "    ports: [80]\n    scheduler: round-robin\n    forwarding: fullnat\n    \
             affinity: none\n    on_backend_removal: reset\n",
        );
        assert_eq!(spec.scheduler, Scheduler::RoundRobin);
        assert_eq!(spec.forwarding, Forwarding::FullNat);
        assert_eq!(spec.affinity, Affinity::None);
        assert_eq!(spec.on_backend_removal, RemovalPolicy::Reset);
        let keep = web_spec("    ports: [80]\n    on_backend_removal: keep\n");
        assert_eq!(keep.on_backend_removal, RemovalPolicy::Keep);
        for (text, value) in Scheduler::VALUES {
            assert_eq!(value.to_string(), *text);
            assert_eq!(text.parse::<Scheduler>().unwrap(), *value);
        }
    }

    #[test]
    fn services_mapping_is_required() {
        for text in ["", "# nothing\n", "services:\n"] {
            let message = error(text, None, "services");
            assert!(message.contains("services: {}"), "{message}");
        }
        assert_eq!(parse("services: {}\n").unwrap(), ServiceFile::default());
        let message = syntax_error("servces: {}\n");
        assert!(message.contains("servces"), "{message}");
        syntax_error("services: [web]\n");
        syntax_error("services: {web: {ports: [80]}\n");
    }

    #[test]
    fn service_names() {
        let ok = format!("services:\n  {}:\n{PORTS}", "a".repeat(63));
        parse(&ok).unwrap();
        parse(&format!("services:\n  web-1_v2.internal:\n{PORTS}")).unwrap();
        for name in [
            "a".repeat(64),
            "\"my web\"".into(),
            "web/1".into(),
            "\"\"".into(),
        ] {
            let message = error(&format!("services:\n  {name}:\n{PORTS}"), None, "services");
            assert!(message.contains("not a valid service name"), "{message}");
        }
        let message = syntax_error(&format!("services:\n  web:\n{PORTS}  web:\n{PORTS}"));
        assert!(message.contains("\"web\" is defined twice"), "{message}");
    }

    #[test]
    fn unknown_fields_are_named_with_the_valid_ones() {
        let message = syntax_error(&web("    ports: [80]\n    schedulr: maglev\n"));
        assert!(message.contains("services.web"), "{message}");
        assert!(message.contains("unknown field `schedulr`"), "{message}");
        assert!(message.contains("`scheduler`"), "{message}");
        assert!(message.contains("line 4"), "{message}");
        let message = syntax_error(&web("    ports: [80]\n    timeouts: { tcpp: 1 }\n"));
        assert!(message.contains("services.web.timeouts"), "{message}");
        assert!(
            message.contains("`tcpp`, expected `tcp` or `udp`"),
            "{message}"
        );
        let message = syntax_error(&web(
            "    ports: [80]\n    backends: [{ address: 10.0.0.1, wieght: 2 }]\n",
        ));
        assert!(message.contains("services.web.backends[0]"), "{message}");
        assert!(message.contains("`wieght`"), "{message}");
        let message = syntax_error(&web("    ports: [80]\n    backends: [{ port: 80 }]\n"));
        assert!(message.contains("missing field `address`"), "{message}");
        let message = syntax_error(&web("    ports: 80\n"));
        assert!(message.contains("services.web.ports"), "{message}");
    }

    #[test]
    fn port_forms() {
        let cases = [
            ("80", 80, 80, Protocol::Tcp),
            ("80/tcp", 80, 80, Protocol::Tcp),
            ("80:8080", 80, 8080, Protocol::Tcp),
            ("53/udp", 53, 53, Protocol::Udp),
            ("65535:1/udp", 65535, 1, Protocol::Udp),
        ];
        for (text, frontend, backend, protocol) in cases {
            let mapping: PortMapping = text.parse().unwrap();
            assert_eq!(
                mapping,
                PortMapping {
                    frontend,
                    backend,
                    protocol
                }
            );
            assert_eq!(mapping.to_string().parse::<PortMapping>().unwrap(), mapping);
        }
        assert_eq!(
            "80:8080".parse::<PortMapping>().unwrap().to_string(),
            "80:8080/tcp"
        );
        assert_eq!(
            "53/udp".parse::<PortMapping>().unwrap().to_string(),
            "53/udp"
        );
        let spec = web_spec("    ports: [80, \"443\", 8080:80, 53/udp]\n");
        assert_eq!(spec.ports.len(), 4);
    }

    #[test]
    fn bad_ports() {
        let message = web_error("    ports: [\"80\", \"80:x/tcp\"]\n", "ports[1]");
        assert_eq!(
            message,
            "services.yaml: service \"web\", field ports[1]: \"80:x/tcp\" is not \
             FRONTEND[:BACKEND][/tcp|udp]; write e.g. \"80:8080/tcp\""
        );
        for bad in [
            "80/sctp",
            "80/TCP",
            "+80",
            "80:",
            ":80",
            "80:90:100",
            "1.2.3.4:80:80",
            "",
            "8 0",
        ] {
            let message = web_error(&format!("    ports: [\"{bad}\"]\n"), "ports[0]");
            assert!(
                message.contains("is not FRONTEND[:BACKEND][/tcp|udp]"),
                "{message}"
            );
        }
        for bad in ["0", "65536", "80:0", "99999999999999999999999/udp"] {
            let message = web_error(&format!("    ports: [\"{bad}\"]\n"), "ports[0]");
            assert!(
                message.contains("out of range; ports are 1-65535"),
                "{message}"
            );
        }
        for body in ["", "    ports: []\n", "    vip: 198.18.0.1\n"] {
            let message = web_error(body, "ports");
            assert!(message.contains("publish at least one"), "{message}");
        }
        let message = error("services:\n  web:\n", Some("web"), "ports");
        assert!(message.contains("no ports"), "{message}");
    }

    #[test]
    fn duplicate_ports_within_a_service() {
        let message = web_error("    ports: [80, 53/udp, \"80:8080/tcp\"]\n", "ports[2]");
        assert!(message.contains("again (see ports[0])"), "{message}");
        // The same port on the other protocol is another frontend.
        web_spec("    ports: [53/tcp, 53/udp]\n");
    }

    #[test]
    fn frontends_belong_to_one_service() {
        let two = |a: &str, b: &str| format!("services:\n  a:\n{a}  b:\n{b}");
        let vip = "    vip: 198.18.0.1\n    ports: [80]\n";
        let message = error(&two(vip, vip), Some("b"), "ports[0]");
        assert!(message.contains("vip 198.18.0.1 port 80/tcp"), "{message}");
        assert!(
            message.contains("already published by service \"a\""),
            "{message}"
        );
        let message = error(
            &two(PORTS, "    ports: [443, 80:8080]\n"),
            Some("b"),
            "ports[1]",
        );
        assert!(
            message.contains("port 80/tcp on every node address"),
            "{message}"
        );
        assert!(message.contains("service \"a\""), "{message}");
        // An IPv4-mapped IPv6 vip is the same frontend as the IPv4 one.
        let mapped = "    vip: \"::ffff:198.18.0.1\"\n    ports: [80]\n";
        error(&two(vip, mapped), Some("b"), "ports[0]");

        // No conflict: a vip is not a node address; other vip, port or protocol.
        let file = parse(&two(vip, PORTS)).unwrap();
        assert_eq!(file.services.len(), 2);
        parse(&two(vip, "    vip: 198.18.0.2\n    ports: [80]\n")).unwrap();
        parse(&two(vip, "    vip: 198.18.0.1\n    ports: [80/udp, 81]\n")).unwrap();
        parse(&two(PORTS, "    ports: [80/udp]\n")).unwrap();
    }

    #[test]
    fn vips() {
        let v6 = web_spec("    vip: fd00:100::1\n    ports: [80]\n");
        assert_eq!(v6.vip, Some("fd00:100::1".parse().unwrap()));
        let mapped = web_spec("    vip: \"::ffff:198.18.0.1\"\n    ports: [80]\n");
        assert_eq!(mapped.vip, Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))));
        let cases = [
            ("198.18.100", "not an IPv4 or IPv6 address"),
            ("\"[fd00::1]\"", "not an IPv4 or IPv6 address"),
            ("198.18.0.1:80", "not an IPv4 or IPv6 address"),
            ("0.0.0.0", "unspecified"),
            ("\"::\"", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("127.0.0.1", "loopback"),
            ("\"::1\"", "loopback"),
            ("255.255.255.255", "broadcast"),
        ];
        for (vip, reason) in cases {
            let message = web_error(&format!("    vip: {vip}\n{PORTS}"), "vip");
            assert!(message.contains(reason), "{vip}: {message}");
        }
    }

    #[test]
    fn backend_forms() {
        let cases = [
            ("10.0.0.1", "10.0.0.1", None),
            ("10.0.0.1:8080", "10.0.0.1", Some(8080)),
            ("fd00::10", "fd00::10", None),
            ("[fd00::10]:9000", "fd00::10", Some(9000)),
            ("[fd00::10]", "fd00::10", None),
            ("::ffff:10.0.0.1", "10.0.0.1", None),
            ("[::ffff:10.0.0.1]:80", "10.0.0.1", Some(80)),
        ];
        for (text, address, port) in cases {
            let backend: BackendSpec = text.parse().unwrap();
            let expected = BackendSpec {
                address: address.parse().unwrap(),
                port,
                weight: 1,
                mesh: None,
            };
            assert_eq!(backend, expected, "{text}");
            assert_eq!(backend.to_string().parse::<BackendSpec>().unwrap(), backend);
        }
        assert_eq!(
            "[fd00::10]:9000"
                .parse::<BackendSpec>()
                .unwrap()
                .to_string(),
            "[fd00::10]:9000"
        );
        assert_eq!(
            "fd00::10".parse::<BackendSpec>().unwrap().to_string(),
            "fd00::10"
        );
        assert_eq!(
            "10.0.0.1:80".parse::<BackendSpec>().unwrap().to_string(),
            "10.0.0.1:80"
        );

        let spec = web_spec(
            "    ports: [80]\n    backends:\n      - fd00:3::10\n      - \"[fd00:3::11]:81\"\n      \
             - { address: \"fd00:3::12\" }\n      - { address: 10.0.0.1, port: \"82\", weight: 0 }\n",
        );
        let ports: Vec<_> = spec
            .backends
            .iter()
            .map(|b| b.target_port(&spec.ports[0]))
            .collect();
        assert_eq!(ports, [80, 81, 80, 82]);
        assert_eq!(spec.backends[3].weight, 0);
        assert_eq!(spec.backends[2].weight, 1);
        assert!(spec.backends[..3].iter().all(|b| b.address.is_ipv6()));
    }

    #[test]
    fn bad_backends() {
        let backend = |b: &str| format!("{PORTS}    backends: [{b}]\n");
        for bad in [
            "10.0.0",
            "10.0.0.1:",
            "10.0.0.1:x",
            "[10.0.0.1]:80",
            "[fd00::1]80",
            "fd00::1]:80",
            "host:80",
        ] {
            let message = web_error(&backend(&format!("\"{bad}\"")), "backends[0]");
            assert!(
                message.contains("is not ADDR, ADDR:PORT, [IPV6]:PORT or IPV6"),
                "{message}"
            );
        }
        for bad in ["10.0.0.1:0", "[fd00::1]:65536"] {
            let message = web_error(&backend(&format!("\"{bad}\"")), "backends[0]");
            assert!(
                message.contains("out of range; ports are 1-65535"),
                "{message}"
            );
        }
        for (bad, reason) in [
            ("0.0.0.0", "unspecified"),
            ("\"[::]:80\"", "unspecified"),
            ("239.1.1.1:80", "multicast"),
            ("127.0.0.1", "loopback"),
            ("\"::1\"", "loopback"),
        ] {
            let message = web_error(&backend(bad), "backends[0]");
            assert!(message.contains(reason), "{bad}: {message}");
        }
        let message = web_error(
            &backend("10.0.0.1, { address: \"::1\" }"),
            "backends[1].address",
        );
        assert!(message.contains("loopback"), "{message}");
        let message = web_error(
            &backend("{ address: \"10.0.0.1:80\" }"),
            "backends[0].address",
        );
        assert!(message.contains("without port or brackets"), "{message}");
        for port in ["0", "65536", "http"] {
            let body = backend(&format!("{{ address: 10.0.0.1, port: {port} }}"));
            let message = web_error(&body, "backends[0].port");
            assert!(message.contains("ports are 1-65535"), "{message}");
        }
        for weight in ["65536", "-1", "1.5", "heavy"] {
            let body = backend(&format!("{{ address: 10.0.0.1, weight: {weight} }}"));
            let message = web_error(&body, "backends[0].weight");
            assert!(message.contains("weights are 0-65535"), "{message}");
        }
        let max = web_spec(&backend("{ address: 10.0.0.1, weight: 65535 }"));
        assert_eq!(max.backends[0].weight, MAX_WEIGHT);
    }

    #[test]
    fn duplicate_backends() {
        let body = |ports: &str, backends: &str| {
            format!("    ports: [{ports}]\n    backends: [{backends}]\n")
        };
        let message = web_error(&body("80", "10.0.0.1, 10.0.0.2, 10.0.0.1"), "backends[2]");
        assert!(message.contains("backends[0]"), "{message}");
        assert!(message.contains("use weight"), "{message}");
        // Same endpoint once the mapping's backend port is filled in.
        let message = web_error(
            &body("\"80:8080\"", "\"10.0.0.1:8080\", 10.0.0.1"),
            "backends[1]",
        );
        assert!(message.contains("10.0.0.1:8080"), "{message}");
        let message = web_error(
            &body("80", "\"[fd00::1]:80\", { address: \"fd00::1\" }"),
            "backends[1]",
        );
        assert!(message.contains("[fd00::1]:80"), "{message}");
        web_error(&body("80", "\"::ffff:10.0.0.1\", 10.0.0.1"), "backends[1]");
        // Collides only for the second mapping: still one endpoint listed twice.
        web_error(&body("80, 81", "10.0.0.1, \"10.0.0.1:81\""), "backends[1]");

        // Different ports on one address are different backends.
        let spec = web_spec(&body(
            "80",
            "\"10.0.0.1:8080\", \"10.0.0.1:8081\", 10.0.0.1",
        ));
        assert_eq!(spec.backends.len(), 3);
    }

    #[test]
    fn backend_count_limit() {
        let mut body = String::from("    ports: [80]\n    scheduler: round-robin\n    backends:\n");
        for i in 0..=MAX_BACKENDS_PER_SERVICE {
            let ip = Ipv4Addr::from(0x0a00_0001 + i as u32);
            body.push_str(&format!("      - {ip}\n"));
        }
        let message = web_error(&body, "backends");
        assert!(message.contains("65536 backends"), "{message}");
        assert!(message.contains("at most 65535"), "{message}");
    }

    #[test]
    fn maglev_table_size() {
        let size = |s: &str| format!("{PORTS}    maglev_table_size: {s}\n");
        assert_eq!(web_spec(&size("2")).maglev_table_size, 2);
        assert_eq!(web_spec(&size("65537")).maglev_table_size, 65_537);
        let message = web_error(&size("16380"), "maglev_table_size");
        assert!(message.contains("16380 is not prime"), "{message}");
        assert!(message.contains("e.g. 16381"), "{message}");
        for bad in ["0", "1048573", "99999999999", "big", "-7"] {
            let message = web_error(&size(bad), "maglev_table_size");
            assert!(
                message.contains("prime of at most 1048572"),
                "{bad}: {message}"
            );
        }
        web_error(&size("1"), "maglev_table_size");

        let backends = |n: usize| {
            let list: Vec<String> = (1..=n)
                .map(|i| format!("\"10.0.{}.{}\"", i / 250, i % 250 + 1))
                .collect();
            format!("    backends: [{}]\n", list.join(", "))
        };
        let message = web_error(
            &format!("{}{}", size("3"), backends(4)),
            "maglev_table_size",
        );
        assert!(
            message.contains("3 is smaller than the 4 backends"),
            "{message}"
        );
        assert!(
            message.contains("at least 100x the backend count"),
            "{message}"
        );
        assert!(message.contains("e.g. maglev_table_size: 401"), "{message}");
        web_spec(&format!("{}{}", size("5"), backends(5)));
        // The default is checked too.
        let message = web_error(&format!("{PORTS}{}", backends(16_382)), "maglev_table_size");
        assert!(
            message.contains("the default table size 16381"),
            "{message}"
        );
        assert!(
            message.contains("e.g. maglev_table_size: 1048571 (the largest"),
            "{message}"
        );
        let message = web_error(
            &format!("{}{}", size("199"), backends(200)),
            "maglev_table_size",
        );
        assert!(
            message.contains("e.g. maglev_table_size: 20011;"),
            "{message}"
        );
        // Round-robin does not use the Maglev table.
        let rr = format!("{}    scheduler: round-robin\n{}", size("3"), backends(4));
        assert_eq!(web_spec(&rr).backends.len(), 4);
    }

    #[test]
    fn prime_helpers() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(limits::DEFAULT_MAGLEV_TABLE_SIZE));
        assert!(is_prime(65_537) && !is_prime(65_535) && !is_prime(1_046_529));
        assert_eq!(prime_at_least(400), 401);
        assert_eq!(prime_at_least(0), 2);
        let largest = prime_at_least(u32::MAX);
        assert!(largest < limits::MAX_TABLE_SIZE && is_prime(largest));
        assert_eq!(prime_at_least(largest), largest);
    }

    #[test]
    fn timeouts() {
        let t = |tcp: &str, udp: &str| {
            web_spec(&format!(
                "{PORTS}    timeouts: {{ tcp: {tcp}, udp: {udp} }}\n"
            ))
            .timeouts
        };
        assert_eq!(
            t("30s", "15m"),
            Timeouts {
                tcp_s: 30,
                udp_s: 900
            }
        );
        assert_eq!(
            t("24h", "1d"),
            Timeouts {
                tcp_s: 86_400,
                udp_s: 86_400
            }
        );
        assert_eq!(
            t("45", "\"1\""),
            Timeouts {
                tcp_s: 45,
                udp_s: 1
            }
        );
        assert_eq!(
            t("30d", "2592000"),
            Timeouts {
                tcp_s: MAX_TIMEOUT_S,
                udp_s: MAX_TIMEOUT_S
            }
        );
        let only_udp = web_spec(&format!("{PORTS}    timeouts: {{ udp: 5s }}\n")).timeouts;
        assert_eq!(only_udp.tcp_s, limits::DEFAULT_TCP_TIMEOUT_S);
        assert_eq!(only_udp.udp_s, 5);

        for bad in [
            "0",
            "0s",
            "31d",
            "2592001",
            "721h",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            let message = web_error(
                &format!("{PORTS}    timeouts: {{ tcp: {bad} }}\n"),
                "timeouts.tcp",
            );
            assert!(
                message.contains("out of range; timeouts are 1s to 30d"),
                "{bad}: {message}"
            );
        }
        for bad in ["1h30m", "720h1s", "5x", "s", "1.5h", "-5s", "1 h", "10S"] {
            let message = web_error(
                &format!("{PORTS}    timeouts: {{ udp: \"{bad}\" }}\n"),
                "timeouts.udp",
            );
            assert!(
                message.contains("is not a duration; write e.g. 30s"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn keywords_are_exact_and_errors_list_valid_values() {
        let cases = [
            ("scheduler", "Maglev", "maglev, round-robin"),
            ("scheduler", "roundrobin", "maglev, round-robin"),
            ("forwarding", "full-nat", "nat, fullnat"),
            ("affinity", "source-ip", "none, client-ip"),
            ("on_backend_removal", "drop", "keep, move, reset"),
            ("scheduler", "3", "maglev, round-robin"),
        ];
        for (field, value, valid) in cases {
            let message = web_error(&format!("{PORTS}    {field}: {value}\n"), field);
            assert!(
                message.contains(&format!("\"{value}\" is not a valid")),
                "{message}"
            );
            assert!(
                message.contains(&format!("valid values: {valid}")),
                "{message}"
            );
        }
    }

    #[test]
    fn services_keep_their_names_and_empty_backends_are_valid() {
        let text = format!("services:\n  b:\n{PORTS}  a:\n    ports: [81]\n    backends: []\n");
        let file = parse(&text).unwrap();
        let names: Vec<_> = file.services.keys().cloned().collect();
        assert_eq!(names, ["a", "b"]);
        assert!(file.services.values().all(|s| s.backends.is_empty()));
        assert_eq!(file.services["a"].name, "a");
    }

    #[test]
    fn load_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("meshlb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.yaml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let loaded = ServiceFile::load(&path).unwrap();
        assert_eq!(loaded, parse(EXAMPLE).unwrap());

        std::fs::write(&path, "services:\n  web: { ports: [0] }\n").unwrap();
        let err = ServiceFile::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: service \"web\"", path.display()))
        );

        let missing = dir.join("missing.yaml");
        let err = ServiceFile::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert_eq!(err.path(), missing);
        assert!(
            err.to_string().contains("cannot read the service file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
