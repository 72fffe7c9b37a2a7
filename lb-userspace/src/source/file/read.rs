//! From YAML to a validated [`ServiceFile`]: serde reads loose raw structs (unknown fields
//! refused with the valid ones listed), then each value is checked with its service and field.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use lb_common::limits;
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

use super::{parse::*, value::*, *};

// ---------------------------------------------------------------------------------------------
// Raw, as serde reads it

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    services: Option<Named<RawService>>,
    lbd: Option<crate::source::settings::RawSettings>,
    swarm: Option<Named<RawSwarmPolicy>>,
}

/// A swarm service's policy: a service's fields less those the swarm gives (ports,
/// backends), plus which published ports are UDP (the Engine does not say on workers); its
/// `vip` is one more address its ports answer on.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarmPolicy {
    vip: Option<Scalar>,
    scheduler: Option<Scalar>,
    forwarding: Option<Scalar>,
    affinity: Option<Scalar>,
    timeouts: Option<RawTimeouts>,
    on_backend_removal: Option<Scalar>,
    maglev_table_size: Option<Scalar>,
    udp_ports: Option<Vec<Scalar>>,
    local_first: Option<Scalar>,
}

/// Entries of a mapping by name (services, swarm policies), in file order. A plain map would
/// let a repeated name silently replace the first.
pub(super) struct Named<T>(Vec<(String, T)>);

/// What an entry of a [`Named`] mapping is called in an error.
pub(super) trait EntryKind {
    const WHAT: &'static str;
}

impl EntryKind for RawService {
    const WHAT: &'static str = "service";
}

impl EntryKind for RawSwarmPolicy {
    const WHAT: &'static str = "swarm policy";
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    vip: Option<Scalar>,
    ports: Option<Vec<Scalar>>,
    scheduler: Option<Scalar>,
    forwarding: Option<Scalar>,
    affinity: Option<Scalar>,
    timeouts: Option<RawTimeouts>,
    on_backend_removal: Option<Scalar>,
    maglev_table_size: Option<Scalar>,
    backends: Option<Vec<RawBackend>>,
    health: Option<super::health::RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    tcp: Option<Scalar>,
    udp: Option<Scalar>,
}

pub(super) enum RawBackend {
    Short(String),
    Long(RawBackendLong),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendLong {
    address: Scalar,
    port: Option<Scalar>,
    weight: Option<Scalar>,
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

impl<'de, T: Deserialize<'de> + Default + EntryKind> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default + EntryKind> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a mapping of {0} names to {0} fields", T::WHAT)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut entries: Vec<(String, T)> = Vec::new();
                let mut names = HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !names.insert(name.clone()) {
                        return Err(de::Error::custom(format_args!(
                            "{what} {name:?} is defined twice; give each {what} one entry",
                            what = T::WHAT
                        )));
                    }
                    // `web:` with nothing under it is an entry with no fields.
                    let entry = map.next_value::<Option<T>>()?.unwrap_or_default();
                    entries.push((name, entry));
                }
                Ok(Named(entries))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
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

    /// Refuses what the admin API cannot change (`lbctl apply`, `POST /v1/apply`): an `lbd:`
    /// or `swarm:` section, named in `origin` (the operator's file, or lbd's request body).
    pub fn only_services(&self, origin: &str) -> Result<(), String> {
        if self.lbd != Default::default() {
            return Err(format!(
                "{origin}: field lbd: daemon settings cannot be changed through the API; set \
                 them in lbd's service file or on its command line, and apply a file of \
                 services only"
            ));
        }
        if !self.swarm.is_empty() {
            return Err(format!(
                "{origin}: field swarm: swarm policies cannot be changed through the API; set \
                 them in lbd's service file's swarm section and reload"
            ));
        }
        Ok(())
    }

    /// Parses and validates service-file text; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<ServiceFile, ConfigError> {
        let raw: Option<RawFile> =
            serde_norway::from_str(text).map_err(|e| ConfigError::Syntax {
                path: origin.to_owned(),
                message: shorten_quoted_values(&e.to_string()),
            })?;
        let (raw, lbd, swarm) = raw.map_or((None, None, None), |file| {
            (file.services, file.lbd, file.swarm)
        });
        let swarm = swarm
            .map_or_else(Vec::new, |named| named.0)
            .into_iter()
            .map(|(name, raw)| {
                let policy = swarm_policy_from_raw(&name, raw, origin)?;
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
        if let Some(health) = &self.health {
            value["health"] = health.to_value();
        }
        value
    }
}

/// Records `spec` as the owner of its frontends, or names the service that already owns one.
/// The key's address is the vip, or `None` for "every node address" (see the module docs).
pub(super) fn claim_frontends(
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

pub(super) fn service_from_raw(
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
                "{} is not a valid service name; use 1-{MAX_SERVICE_NAME_LEN} characters of \
                 A-Z a-z 0-9 _ . - (safe in metric labels, file names and URLs)",
                quoted_short(&name)
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
    check_affinity(&cx, "affinity", scheduler, affinity)?;
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

    let maglev_table_size = maglev_table_size(
        "maglev_table_size",
        raw.maglev_table_size,
        scheduler,
        backends.len(),
        &cx,
    )?;
    let health = raw
        .health
        .map(|raw| super::health::health_from_raw(raw, &cx))
        .transpose()?;

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
        health,
        socket_scope: 0,
        tunnel_only: false,
    })
}

pub(super) fn swarm_policy_from_raw(
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
    let vip = raw
        .vip
        .map(|Scalar(text)| {
            let vip = parse_address(&text, "vip").map_err(|m| cx.invalid("swarm.vip", m))?;
            if vip.is_ipv6() {
                return Err(cx.invalid(
                    "swarm.vip",
                    format!(
                        "{text} is IPv6, and the swarm's tasks are reached at their IPv4 \
                         addresses; give an IPv4 address"
                    ),
                ));
            }
            Ok(vip)
        })
        .transpose()?;
    if vip.is_some() && local_first {
        return Err(cx.invalid(
            "swarm.vip",
            "a vip is the same on every node, and a connection ECMP moves to another node must \
             find the same task there; local_first gives each node its own tasks: drop one of \
             them"
                .to_owned(),
        ));
    }
    Ok(SwarmPolicy {
        vip,
        local_first,
        scheduler,
        forwarding: cx.keyword("swarm.forwarding", raw.forwarding)?,
        // Unlike a file service's, a swarm service's default: its port answers on every node.
        affinity: match raw.affinity {
            None => Affinity::AnyNode,
            some => {
                let affinity = cx.keyword("swarm.affinity", some)?;
                check_affinity(&cx, "swarm.affinity", scheduler, affinity)?;
                affinity
            }
        },
        timeouts,
        on_backend_removal: cx.keyword("swarm.on_backend_removal", raw.on_backend_removal)?,
        // The task count is only known at run time, where the size is checked against it.
        maglev_table_size: maglev_table_size(
            "swarm.maglev_table_size",
            raw.maglev_table_size,
            scheduler,
            0,
            &cx,
        )?,
        udp_ports,
    })
}

pub(super) fn backend_from_raw(
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
pub(super) fn check_duplicate_backends(
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

/// `raw` of `field` (`maglev_table_size`, or `swarm.maglev_table_size` in a swarm policy).
pub(super) fn maglev_table_size(
    field: &str,
    raw: Option<Scalar>,
    scheduler: Scheduler,
    backend_count: usize,
    cx: &Ctx<'_>,
) -> Result<u32, ConfigError> {
    let max = limits::MAX_SELECTION_SLOTS;
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

/// Client-IP affinity is a Maglev key: round-robin picks the next backend for every new flow
/// and would ignore it without a word.
fn check_affinity(
    cx: &Ctx<'_>,
    field: &str,
    scheduler: Scheduler,
    affinity: Affinity,
) -> Result<(), ConfigError> {
    if scheduler == Scheduler::RoundRobin && affinity == Affinity::ClientIp {
        return Err(cx.invalid(
            field,
            "client-ip affinity needs scheduler: maglev (round-robin gives every new flow the \
             next backend and would ignore it); choose one of the two",
        ));
    }
    Ok(())
}

/// `value` quoted, shortened to its first 40 characters when longer (with its length), so an
/// error about a huge value stays readable.
pub(crate) fn quoted_short(value: &str) -> String {
    const KEEP: usize = 40;
    match value.char_indices().nth(KEEP) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// The YAML reader's message with every long quoted value in it shortened (it quotes the
/// value it could not take, whatever its size).
fn shorten_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('"') {
            Some(end) => {
                out.push_str(&quoted_short(&after[..end]));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}
