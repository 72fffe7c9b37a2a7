//! Which backend endpoints have their replies translated without a connection-table entry
//! (`REPLY_FRONTENDS`), and why the others do not.
//!
//! Behind an ECMP router, a reply may cross a balancer node that never saw its flow: the
//! backends' route to the clients is their own, and after a node dies its flows' replies
//! reach the others. The kernel can still give such a reply its frontend as source when the
//! backend endpoint (address, port, protocol) leads to exactly one frontend, and that
//! frontend is the same on every node: a VIP under `nat` (a reply goes to the client itself).
//! Anywhere else the reply passes untouched, as it always did, for one of the reasons of
//! [`ReplyTranslation`].

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use lb_common::{
    Addr,
    maps::{EndpointKey, ReplyFrontend, Service, service_flags},
};

use super::{DesiredState, PlannedService, endpoint};

/// How a reply from a backend endpoint is translated when no entry covers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTranslation {
    /// Given this frontend as source on any node (`REPLY_FRONTENDS`).
    Stateless { frontend: SocketAddr },
    /// No service has this backend.
    NotABackend,
    /// The endpoint is reached through several frontends (of one service or several): only a
    /// flow's own entry knows which one a reply answers.
    Shared { frontends: Vec<String> },
    /// Its one service publishes on node addresses, which differ from node to node.
    NodeAddress { service: String },
    /// Its one service uses full NAT: replies come to a node address, and only the flow's
    /// entry knows the client.
    FullNat { service: String },
    /// A swarm task reached through the mesh tunnel, or a socket-level frontend: replies
    /// come back as those paths send them.
    Mesh { service: String },
}

impl fmt::Display for ReplyTranslation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let untouched = "a reply no entry covers (its flow entered by another balancer \
                         node, or this node lost it) passes untouched, with the backend's \
                         address as source";
        match self {
            Self::Stateless { frontend } => write!(
                f,
                "replies: from {frontend} on any node, even without an entry (the backend has \
                 this one frontend)"
            ),
            Self::NotABackend => write!(f, "replies: not a backend of any service"),
            Self::Shared { frontends } => write!(
                f,
                "replies: the backend is reached through {} frontends ({}): only a flow's \
                 entry tells which one a reply answers; {untouched}",
                frontends.len(),
                frontends.join(", ")
            ),
            Self::NodeAddress { service } => write!(
                f,
                "replies: service {service} is published on node addresses, which differ \
                 from node to node; {untouched}"
            ),
            Self::FullNat { service } => write!(
                f,
                "replies: service {service} uses full NAT (replies come to a node address, \
                 and only the flow's entry knows the client); {untouched}"
            ),
            Self::Mesh { service } => write!(
                f,
                "replies: service {service} is a swarm service (mesh tunnel or socket-level): \
                 replies return the way those paths send them"
            ),
        }
    }
}

/// The frontends each backend endpoint (of those `wanted`) is reached through: (kernel
/// service, frontend), in the plan's order.
pub(super) fn reached<'a>(
    services: impl IntoIterator<Item = &'a PlannedService>,
    wanted: impl Fn(&EndpointKey) -> bool,
) -> Reached<'a> {
    let mut keys = Vec::new();
    let mut via = Vec::new();
    for planned in services {
        for backend in &planned.backends {
            let key = endpoint(backend.target, &planned.mapping);
            if !wanted(&key) {
                continue;
            }
            for f in &planned.frontends {
                keys.push(key);
                via.push((planned, *f));
            }
        }
    }
    // Grouped by endpoint, each group in the plan's order (a stable sort): one allocation
    // for a node's 160,000 endpoints, not one each.
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_by_key(|&i| keys[i as usize]);
    Reached {
        keys: order.iter().map(|&i| keys[i as usize]).collect(),
        via: order.iter().map(|&i| via[i as usize]).collect(),
    }
}

/// What `reached` found: `keys[i]` is reached through `via[i]`, sorted by key.
pub(super) struct Reached<'a> {
    keys: Vec<EndpointKey>,
    via: Vec<(&'a PlannedService, SocketAddr)>,
}

impl<'a> Reached<'a> {
    /// The frontends `key` is reached through (none if it is not a backend endpoint).
    pub(super) fn get(&self, key: &EndpointKey) -> &[(&'a PlannedService, SocketAddr)] {
        let start = self.keys.partition_point(|k| k < key);
        let end = start + self.keys[start..].partition_point(|k| k == key);
        &self.via[start..end]
    }

    /// Every endpoint, in order, with the frontends it is reached through.
    fn iter(&self) -> impl Iterator<Item = (&EndpointKey, &[(&'a PlannedService, SocketAddr)])> {
        let mut start = 0;
        std::iter::from_fn(move || {
            let key = self.keys.get(start)?;
            let end = start + self.keys[start..].partition_point(|k| k == key);
            let group = (key, &self.via[start..end]);
            start = end;
            Some(group)
        })
    }
}

/// The translation of one endpoint, reached through `via`; `frontend` is the plan's
/// frontend entry of a key.
fn classify(
    frontend: &impl Fn(&EndpointKey) -> Option<Service>,
    via: &[(&PlannedService, SocketAddr)],
) -> ReplyTranslation {
    let Some((planned, first)) = via.first() else {
        return ReplyTranslation::NotABackend;
    };
    let flags = |planned: &PlannedService, f: &SocketAddr| {
        frontend(&endpoint(*f, &planned.mapping)).map_or(0, |s| s.flags)
    };
    // A swarm task, whichever node it is on and however many frontends reach it here (a
    // local task also has its delivery frontend): every node says the same.
    let mesh = via.iter().find(|(s, f)| {
        s.backends.iter().any(|b| b.identity != b.target)
            || flags(s, f) & (service_flags::TUNNEL_ONLY | service_flags::SOCKET_SCOPE_MASK) != 0
    });
    if let Some((s, _)) = mesh {
        return ReplyTranslation::Mesh {
            service: s.name.clone(),
        };
    }
    // One kernel service (a published port has one frontend per node address, loopback
    // included): its kind decides.
    if via.iter().all(|(s, _)| s.id == planned.id) {
        let service = || planned.name.clone();
        if planned.vip.is_none() {
            return ReplyTranslation::NodeAddress { service: service() };
        }
        if flags(planned, first) & service_flags::FULLNAT != 0 {
            return ReplyTranslation::FullNat { service: service() };
        }
    }
    if via.len() > 1 {
        let mut frontends: Vec<String> = via
            .iter()
            .map(|(s, f)| format!("{f} of {}", s.name))
            .collect();
        frontends.dedup();
        return ReplyTranslation::Shared { frontends };
    }
    ReplyTranslation::Stateless { frontend: *first }
}

/// The `REPLY_FRONTENDS` entry of backend endpoint `key`, reached through `via`, if its
/// replies are translated without a connection-table entry.
pub(super) fn reply_frontend(
    frontend: &impl Fn(&EndpointKey) -> Option<Service>,
    key: &EndpointKey,
    via: &[(&PlannedService, SocketAddr)],
) -> Option<ReplyFrontend> {
    let ReplyTranslation::Stateless { frontend } = classify(frontend, via) else {
        return None;
    };
    let (planned, _) = via[0];
    let backend = planned
        .backends
        .iter()
        .find(|b| endpoint(b.target, &planned.mapping) == *key)?;
    Some(ReplyFrontend {
        addr: Addr::from(frontend.ip()),
        port_be: frontend.port().to_be(),
        _pad: 0,
        service_id: planned.id,
        backend_id: backend.id,
    })
}

impl DesiredState {
    /// `REPLY_FRONTENDS`: every backend endpoint whose replies are translated without an
    /// entry, with its one frontend.
    pub(super) fn plan_reply_frontends(&self) -> BTreeMap<EndpointKey, ReplyFrontend> {
        let frontend = |key: &EndpointKey| self.frontends.get(key).copied();
        reached(&self.services, |_| true)
            .iter()
            .filter_map(|(key, via)| Some((*key, reply_frontend(&frontend, key, via)?)))
            .collect()
    }

    /// How replies from `backend` (in `protocol`) are translated when no entry covers them.
    pub fn reply_translation(&self, protocol: u8, backend: SocketAddr) -> ReplyTranslation {
        let key = EndpointKey {
            addr: Addr::from(backend.ip()),
            port_be: backend.port().to_be(),
            proto: protocol,
            _pad: 0,
        };
        let reached = reached(&self.services, |k| *k == key);
        let frontend = |key: &EndpointKey| self.frontends.get(key).copied();
        classify(&frontend, reached.get(&key))
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, path::Path};

    use lb_common::maps::proto;

    use super::ReplyTranslation;
    use crate::{
        plan::{NodeFacts, plan},
        source::file::ServiceFile,
    };

    const FILE: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10", "198.18.2.11"]
  two_ports:
    vip: 198.18.100.2
    ports: ["80:9000/tcp", "8080:9000/tcp"]
    backends: ["198.18.2.12"]
  shared_a:
    vip: 198.18.100.3
    ports: ["80:7000/tcp"]
    backends: ["198.18.2.13"]
  shared_b:
    vip: 198.18.100.4
    ports: ["80:7000/tcp"]
    backends: ["198.18.2.13"]
  full:
    vip: 198.18.100.5
    ports: ["80:6000/tcp"]
    forwarding: fullnat
    backends: ["198.18.2.14"]
  published:
    ports: ["8000:9100/tcp"]
    backends: ["198.18.2.15"]
"#;

    fn translation(backend: &str, protocol: u8) -> ReplyTranslation {
        let file = ServiceFile::parse(FILE, Path::new("t.yaml")).expect("valid file");
        let node: IpAddr = "198.18.0.1".parse().unwrap();
        plan(&file, &NodeFacts::with_addresses(&[node]))
            .expect("plan")
            .reply_translation(protocol, backend.parse().unwrap())
    }

    #[test]
    fn only_a_backend_with_one_vip_frontend_under_nat_is_translated_without_an_entry() {
        let file = ServiceFile::parse(FILE, Path::new("t.yaml")).expect("valid file");
        let state = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.0.1".parse().unwrap()]),
        )
        .expect("plan");
        let mut got: Vec<(String, String)> = state
            .plan_reply_frontends()
            .iter()
            .map(|(k, v)| {
                let backend =
                    std::net::SocketAddr::new(IpAddr::from(k.addr), u16::from_be(k.port_be));
                let frontend =
                    std::net::SocketAddr::new(IpAddr::from(v.addr), u16::from_be(v.port_be));
                // The ids are the backend's own and its service's.
                let b = &state.backends[&v.backend_id];
                assert_eq!(
                    (b.addr, b.port_be, b.service_id),
                    (k.addr, k.port_be, v.service_id)
                );
                (format!("{backend}/{}", k.proto), frontend.to_string())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("198.18.2.10:5353/17", "198.18.100.1:53"),
                ("198.18.2.10:8080/6", "198.18.100.1:80"),
                ("198.18.2.11:5353/17", "198.18.100.1:53"),
                ("198.18.2.11:8080/6", "198.18.100.1:80"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(
            state.reply_translation(proto::TCP, "198.18.2.10:8080".parse().unwrap()),
            ReplyTranslation::Stateless {
                frontend: "198.18.100.1:80".parse().unwrap()
            }
        );
    }

    /// Each endpoint once, with every (service, frontend) that reaches it in the plan's
    /// order: the first is the one a translation names.
    #[test]
    fn reached_groups_each_endpoint_with_its_frontends_in_plan_order() {
        let file = ServiceFile::parse(FILE, Path::new("t.yaml")).expect("valid file");
        let state = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.0.1".parse().unwrap()]),
        )
        .expect("plan");
        let found = super::reached(&state.services, |_| true);
        let mut expected: Vec<(
            lb_common::maps::EndpointKey,
            Vec<(u32, std::net::SocketAddr)>,
        )> = Vec::new();
        for planned in &state.services {
            for backend in &planned.backends {
                let key = super::endpoint(backend.target, &planned.mapping);
                let via: Vec<_> = planned.frontends.iter().map(|f| (planned.id, *f)).collect();
                match expected.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.extend(via),
                    None => expected.push((key, via)),
                }
            }
        }
        expected.sort_by_key(|(k, _)| *k);
        let ids = |via: &[(&super::PlannedService, std::net::SocketAddr)]| -> Vec<_> {
            via.iter().map(|(s, f)| (s.id, *f)).collect()
        };
        let got: Vec<_> = found.iter().map(|(k, via)| (*k, ids(via))).collect();
        assert_eq!(got, expected);
        // Shared by two kernel services, and reached through two frontends of one.
        assert!(
            expected
                .iter()
                .any(|(_, v)| v.len() == 2 && v[0].0 != v[1].0)
        );
        assert!(
            expected
                .iter()
                .any(|(_, v)| v.len() == 2 && v[0].0 == v[1].0)
        );
        for (key, via) in &expected {
            assert_eq!(&ids(found.get(key)), via);
        }
        let mut absent = expected[0].0;
        absent.port_be = 1u16.to_be();
        assert!(found.get(&absent).is_empty());
    }

    #[test]
    fn every_other_backend_says_why_its_replies_need_an_entry() {
        let shared = translation("198.18.2.12:9000", proto::TCP);
        assert!(
            matches!(&shared, ReplyTranslation::Shared { frontends } if frontends.len() == 2),
            "{shared:?}"
        );
        assert!(
            shared.to_string().contains("198.18.100.2:80 of two_ports"),
            "{shared}"
        );
        let shared = translation("198.18.2.13:7000", proto::TCP);
        assert!(
            shared.to_string().contains("198.18.100.3:80 of shared_a")
                && shared.to_string().contains("198.18.100.4:80 of shared_b"),
            "{shared}"
        );
        assert!(matches!(
            translation("198.18.2.14:6000", proto::TCP),
            ReplyTranslation::FullNat { .. }
        ));
        assert!(matches!(
            translation("198.18.2.15:9100", proto::TCP),
            ReplyTranslation::NodeAddress { .. }
        ));
        assert_eq!(
            translation("198.18.2.10:8080", proto::UDP),
            ReplyTranslation::NotABackend
        );
        assert!(
            translation("198.18.2.14:6000", proto::TCP)
                .to_string()
                .contains("passes untouched")
        );
    }

    /// A local task is reached by its service's published port and by its own delivery
    /// frontend; a remote one only by the published port: both nodes must say the same.
    #[test]
    fn a_swarm_task_is_one_whatever_else_reaches_it() {
        use crate::source::file::MeshBackend;
        let mut file = ServiceFile::parse(
            "services:\n  who:\n    ports: [\"8081:80/tcp\"]\n    backends: [\"198.18.61.3\"]\n  who.1.task:\n    vip: 198.19.0.6\n    ports: [\"80/tcp\"]\n    backends: [\"198.18.61.3\"]\n",
            Path::new("t.yaml"),
        )
        .expect("valid file");
        file.services.get_mut("who").unwrap().backends[0].mesh = Some(MeshBackend {
            identity: "198.19.0.6".parse().unwrap(),
            via: None,
            on_link_prefix: None,
        });
        file.services.get_mut("who.1.task").unwrap().tunnel_only = true;
        let state = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.50.1".parse().unwrap()]),
        )
        .expect("plan");
        assert_eq!(
            state.reply_translation(proto::TCP, "198.18.61.3:80".parse().unwrap()),
            ReplyTranslation::Mesh {
                service: "who".into()
            }
        );
    }
}
