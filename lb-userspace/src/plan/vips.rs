//! Which VIPs this node should announce to its router (see `crate::announce`).

use std::{collections::BTreeSet, net::IpAddr};

use super::{DesiredState, PlannedService};

impl DesiredState {
    /// The VIPs of services with at least one usable backend: one that takes new flows
    /// (weight above 0) and that the plan kept (a swarm task on a node that is not a peer is
    /// left out). A VIP several services share is announced while any of them is usable.
    /// A swarm's overlay VIPs and tasks' ingress addresses are never announced: they are
    /// Docker's private addresses, served to containers and peers only (`routable`).
    ///
    /// This is the one place that decides which VIPs are announced (the announcer adds the
    /// reply anchor, `announce::BirdSettings::reply_anchor`, which is no VIP). Backends their health checks say are
    /// down are not in the plan at all (`HealthBook::serving`), so they count for nothing here.
    pub fn announced_vips(&self) -> BTreeSet<IpAddr> {
        self.announced_vips_of(|_| true)
    }

    /// The services whose VIP is `address`.
    pub fn services_with_vip(&self, address: IpAddr) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.vip == Some(address))
            .map(|s| s.name.clone())
            .collect()
    }

    /// `announced_vips`, counting only the services `counts` accepts (see
    /// `Daemon::vips_to_announce`).
    pub fn announced_vips_of(&self, counts: impl Fn(&PlannedService) -> bool) -> BTreeSet<IpAddr> {
        self.services
            .iter()
            .filter(|s| s.routable && s.backends.iter().any(|b| b.weight > 0))
            .filter(|s| counts(s))
            .filter_map(|s| s.vip)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        plan::{NodeFacts, plan},
        source::file::ServiceFile,
    };

    fn vips(yaml: &str) -> Vec<String> {
        let file = ServiceFile::parse(yaml, Path::new("t.yaml")).expect("valid file");
        let desired = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.0.1".parse().unwrap()]),
        )
        .expect("plan");
        desired
            .announced_vips()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_vip_is_announced_while_one_of_its_services_has_a_usable_backend() {
        let yaml = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", { address: "198.18.2.11", weight: 0 }]
  drained:
    vip: 198.18.100.2
    ports: ["80/tcp"]
    backends: [{ address: "198.18.2.10", weight: 0 }]
  empty:
    vip: 198.18.100.3
    ports: ["80/tcp"]
    backends: []
  shared_empty:
    vip: 198.18.100.1
    ports: ["81/tcp"]
    backends: []
  published:
    ports: ["8000/tcp"]
    backends: ["198.18.2.12"]
  web6:
    vip: "fd00:100::1"
    ports: ["80/tcp"]
    backends: ["fd00:2::a"]
"#;
        // Published ports live on node addresses, which are not ours to announce.
        assert_eq!(vips(yaml), ["198.18.100.1", "fd00:100::1"]);
        // Which services a VIP belongs to (the reply anchor's check), announced or not.
        let file = ServiceFile::parse(yaml, Path::new("t.yaml")).expect("valid file");
        let desired = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.0.1".parse().unwrap()]),
        )
        .expect("plan");
        let mut names = desired.services_with_vip("198.18.100.1".parse().unwrap());
        names.sort();
        assert_eq!(names, ["shared_empty", "web"]);
        assert!(
            desired
                .services_with_vip("198.18.99.1".parse().unwrap())
                .is_empty()
        );
    }

    #[test]
    fn a_swarms_overlay_vips_and_task_delivery_addresses_are_never_announced() {
        let yaml = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80/tcp"]
    backends: ["198.18.2.10"]
  web-appnet:
    vip: 198.19.10.2
    ports: ["80/tcp"]
    backends: ["198.19.10.5"]
  web.1.task:
    vip: 198.19.0.5
    ports: ["80/tcp"]
    backends: ["198.19.20.5"]
"#;
        let mut file = ServiceFile::parse(yaml, Path::new("t.yaml")).expect("valid file");
        file.services.get_mut("web-appnet").unwrap().socket_scope = 1;
        file.services.get_mut("web.1.task").unwrap().tunnel_only = true;
        let desired = plan(
            &file,
            &NodeFacts::with_addresses(&["198.18.0.1".parse().unwrap()]),
        )
        .expect("plan");
        let announced: Vec<String> = desired
            .announced_vips()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(announced, ["198.18.100.1"]);
    }
}
