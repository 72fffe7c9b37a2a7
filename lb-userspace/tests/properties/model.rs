//! What the maps hold, as the generators and the checks need it.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddrV4,
    pub(crate) proto: u8,
}

pub(crate) struct ServiceModel {
    pub(crate) round_robin: bool,
    /// Full NAT: the source is translated too.
    pub(crate) fullnat: bool,
    /// Has a backend with a non-zero weight.
    pub(crate) usable: bool,
    pub(crate) frontends: Vec<SocketAddrV4>,
    pub(crate) backends: Vec<SocketAddrV4>,
}

/// An IPv6 service: its frontends and backends.
pub(crate) struct ServiceModel6 {
    pub(crate) fullnat: bool,
    pub(crate) frontends: Vec<SocketAddrV6>,
    pub(crate) backends: Vec<SocketAddrV6>,
}

/// The IPv6 part of what the maps hold (VIP services only).
#[derive(Default)]
pub(crate) struct Model6 {
    /// TCP and UDP frontends: (VIP and port, protocol, service).
    pub(crate) frontends: Vec<(SocketAddrV6, u8, u32)>,
    pub(crate) services: HashMap<u32, ServiceModel6>,
    pub(crate) backend_endpoints: HashSet<(SocketAddrV6, u8)>,
}

impl Model6 {
    pub(crate) fn service_of_frontend(&self, addr: SocketAddrV6, protocol: u8) -> Option<u32> {
        self.frontends
            .iter()
            .find(|(a, p, _)| *a == addr && *p == protocol)
            .map(|f| f.2)
    }

    pub(crate) fn service_of_backend(&self, addr: SocketAddrV6) -> Option<u32> {
        self.services
            .iter()
            .find(|(_, s)| s.backends.contains(&addr))
            .map(|(id, _)| *id)
    }
}

pub(crate) struct Model {
    pub(crate) v6: Model6,
    /// TCP and UDP frontends.
    pub(crate) frontends: Vec<(Endpoint, u32)>,
    pub(crate) service_of: HashMap<Endpoint, u32>,
    pub(crate) services: HashMap<u32, ServiceModel>,
    pub(crate) backend_endpoints: HashSet<Endpoint>,
    /// The service of each backend endpoint (each belongs to one).
    pub(crate) service_of_backend: HashMap<Endpoint, u32>,
    /// VIPs that answer echo requests.
    pub(crate) icmp_vips: Vec<Ipv4Addr>,
}

pub(crate) fn v4(addr: &lb_common::Addr) -> Ipv4Addr {
    match std::net::IpAddr::from(*addr) {
        IpAddr::V4(ip) => ip,
        other => panic!("an IPv4 address expected, got {other}"),
    }
}

impl Model {
    pub(crate) fn new(desired: &DesiredState) -> Self {
        let mut model = Self {
            v6: Model6::default(),
            frontends: Vec::new(),
            service_of: HashMap::new(),
            services: HashMap::new(),
            backend_endpoints: HashSet::new(),
            service_of_backend: HashMap::new(),
            icmp_vips: Vec::new(),
        };
        for (key, svc) in &desired.frontends {
            if let IpAddr::V6(vip) = std::net::IpAddr::from(key.addr) {
                if key.proto != proto::ICMPV6 {
                    let addr = SocketAddrV6::new(vip, u16::from_be(key.port_be), 0, 0);
                    model.v6.frontends.push((addr, key.proto, svc.id));
                    model
                        .v6
                        .services
                        .entry(svc.id)
                        .or_insert_with(|| ServiceModel6 {
                            fullnat: svc.flags & service_flags::FULLNAT != 0,
                            frontends: Vec::new(),
                            backends: Vec::new(),
                        })
                        .frontends
                        .push(addr);
                }
                continue;
            }
            if key.proto == proto::ICMP {
                model.icmp_vips.push(v4(&key.addr));
                continue;
            }
            let ep = Endpoint {
                addr: SocketAddrV4::new(v4(&key.addr), u16::from_be(key.port_be)),
                proto: key.proto,
            };
            model.frontends.push((ep, svc.id));
            model.service_of.insert(ep, svc.id);
            model
                .services
                .entry(svc.id)
                .or_insert_with(|| ServiceModel {
                    round_robin: svc.flags & service_flags::ROUND_ROBIN != 0,
                    fullnat: svc.flags & service_flags::FULLNAT != 0,
                    usable: false,
                    frontends: Vec::new(),
                    backends: Vec::new(),
                })
                .frontends
                .push(ep.addr);
        }
        for planned in &desired.services {
            if let Some(s6) = model.v6.services.get_mut(&planned.id) {
                for b in &planned.backends {
                    let SocketAddr::V6(a) = b.target else {
                        panic!("an IPv6 service with an IPv4 backend");
                    };
                    s6.backends.push(a);
                    model
                        .v6
                        .backend_endpoints
                        .insert((a, planned.mapping.protocol.number()));
                }
                continue;
            }
            let s = model
                .services
                .get_mut(&planned.id)
                .expect("planned service");
            s.usable = planned.backends.iter().any(|b| b.weight > 0);
            for b in &planned.backends {
                if let SocketAddr::V4(a) = b.target {
                    let ep = Endpoint {
                        addr: a,
                        proto: planned.mapping.protocol.number(),
                    };
                    let previous = model.service_of_backend.insert(ep, planned.id);
                    assert!(previous.is_none(), "{a} serves two services");
                }
            }
            s.backends = planned
                .backends
                .iter()
                .map(|b| match b.target {
                    SocketAddr::V4(a) => a,
                    other => panic!("IPv4 backends only, got {other}"),
                })
                .collect();
        }
        for key in desired.endpoints.keys() {
            if !key.addr.is_v4() {
                continue;
            }
            model.backend_endpoints.insert(Endpoint {
                addr: SocketAddrV4::new(v4(&key.addr), u16::from_be(key.port_be)),
                proto: key.proto,
            });
        }
        assert!(model.services.values().any(|s| s.round_robin && s.usable));
        assert!(model.services.values().any(|s| !s.round_robin && s.usable));
        assert!(model.services.values().any(|s| !s.usable));
        assert!(model.services.values().any(|s| s.fullnat && s.usable));
        assert!(model.icmp_vips.contains(&VIP));
        assert!(model.v6.services.values().any(|s| s.fullnat));
        assert!(model.v6.services.values().any(|s| !s.fullnat));
        model
    }

    pub(crate) fn is_endpoint(&self, ep: Endpoint) -> bool {
        self.service_of.contains_key(&ep) || self.backend_endpoints.contains(&ep)
    }

    /// Whether the service a frontend (or else a backend endpoint) belongs to uses full NAT.
    pub(crate) fn fullnat(&self, ep: Endpoint) -> bool {
        let service = self
            .service_of
            .get(&ep)
            .or_else(|| self.service_of_backend.get(&ep));
        service.is_some_and(|id| self.services[id].fullnat)
    }
}
