//! `replan` against the full plan over random edit sequences: every step must give the same
//! state (kernel entries, services, ids, what it was planned from) or the same error.

use std::path::Path;

use lb_testkit::rng::SplitMix64;

use super::*;
use crate::source::file::{BackendSpec, MeshBackend, MeshNodes, ServiceFile, ServiceSpec};

struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
const VIPS: [Option<&str>; 5] = [
    None,
    Some("198.18.100.1"),
    Some("198.18.100.2"),
    Some("198.18.1.1"), // also a node address
    Some("fd00:100::1"),
];
const PORTS: [&str; 5] = [
    "80:8080/tcp",
    "81:8080/tcp",
    "53:5353/udp",
    "8080/tcp",
    "62000/tcp",
];
const BACKENDS: [&str; 9] = [
    "198.18.2.10",
    "198.18.2.11",
    "198.18.2.12",
    "198.18.2.13",
    "198.18.100.1", // a VIP: a loop when the ports meet
    "198.18.1.1",   // a node address
    "fd00:2::a",
    "fd00:2::b",
    "fd00:2::c",
];
const PEERS: [&str; 3] = ["198.18.50.1", "198.18.50.2", "198.18.50.3"];

fn template() -> ServiceSpec {
    let file = ServiceFile::parse(
        "services:\n  t:\n    ports: [\"80/tcp\"]\n    backends: []\n",
        Path::new("t.yaml"),
    )
    .expect("valid");
    file.services["t"].clone()
}

fn random_backend(rng: &mut Rng) -> BackendSpec {
    BackendSpec {
        address: rng.pick(&BACKENDS).parse().unwrap(),
        port: if rng.chance(20) { Some(9000) } else { None },
        weight: rng.pick(&[0, 1, 1, 1, 2, 3]),
        mesh: None,
    }
}

fn random_spec(rng: &mut Rng, name: &str) -> ServiceSpec {
    let mut spec = template();
    spec.name = name.to_owned();
    spec.vip = rng.pick(&VIPS).map(|v| v.parse().unwrap());
    spec.ports = (0..1 + rng.below(2))
        .map(|_| rng.pick(&PORTS).parse().unwrap())
        .collect();
    spec.ports.dedup();
    spec.backends = (0..rng.below(5)).map(|_| random_backend(rng)).collect();
    // Of the VIP's family, mostly (else the plan refuses it, which is tested too).
    if let Some(vip) = spec.vip
        && rng.chance(90)
    {
        spec.backends
            .retain(|b| b.address.is_ipv6() == vip.is_ipv6());
    }
    dedup_targets(&mut spec);
    spec.scheduler = rng.pick(&[Scheduler::Maglev, Scheduler::RoundRobin]);
    spec.forwarding = rng.pick(&[Forwarding::Nat, Forwarding::Nat, Forwarding::FullNat]);
    spec.maglev_table_size = rng.pick(&[251, 1021]);
    spec.tunnel_only = rng.chance(5);
    spec
}

/// Files refuse two backends with one target.
fn dedup_targets(spec: &mut ServiceSpec) {
    let mut seen = Vec::new();
    spec.backends.retain(|b| {
        let target = (b.address, b.port);
        let new = !seen.contains(&target);
        seen.push(target);
        new
    });
}

/// One random edit of `file` (and sometimes of the node's addresses or connected subnets);
/// says what it did.
fn edit(rng: &mut Rng, file: &mut ServiceFile, node: &mut NodeFacts) -> String {
    let name = rng.pick(&NAMES);
    let what = rng.below(100);
    let Some(spec) = file.services.get_mut(name) else {
        let spec = random_spec(rng, name);
        file.services.insert(name.to_owned(), spec);
        return format!("add {name}");
    };
    match what {
        0..15 => {
            *spec = random_spec(rng, name);
            format!("replace {name}")
        }
        15..25 => {
            file.services.remove(name);
            format!("remove {name}")
        }
        25..45 => {
            spec.backends.push(random_backend(rng));
            dedup_targets(spec);
            format!("add a backend to {name}")
        }
        45..60 if !spec.backends.is_empty() => {
            // A removal, or a health check saying it is down: the plan sees it gone.
            let i = rng.below(spec.backends.len());
            spec.backends.remove(i);
            format!("remove a backend of {name}")
        }
        60..72 if !spec.backends.is_empty() => {
            let i = rng.below(spec.backends.len());
            spec.backends[i].weight = rng.pick(&[0, 1, 2, 5]);
            format!("weigh (or drain) a backend of {name}")
        }
        72..82 if !spec.backends.is_empty() => {
            // A swarm task: reached here, or through a peer (that may not be one).
            let i = rng.below(spec.backends.len());
            let via = if rng.chance(50) {
                Some(rng.pick(&PEERS).parse().unwrap())
            } else {
                None
            };
            spec.backends[i].mesh = Some(MeshBackend {
                identity: rng.pick(&["198.19.0.5", "198.19.0.6"]).parse().unwrap(),
                via,
                on_link_prefix: via.is_none().then_some(24).filter(|_| rng.chance(50)),
            });
            format!("make a backend of {name} a swarm task")
        }
        82..90 => {
            file.mesh = if rng.chance(20) {
                None
            } else {
                Some(MeshNodes {
                    own: PEERS[0].parse().unwrap(),
                    peers: PEERS[..1 + rng.below(PEERS.len())]
                        .iter()
                        .map(|p| p.parse().unwrap())
                        .collect(),
                })
            };
            "change the swarm's nodes".into()
        }
        90..92 => {
            node.connected = if rng.chance(50) {
                Vec::new()
            } else {
                let prefix = rng.pick(&[16, 24, 30]);
                vec![ConnectedSubnet {
                    network: "198.18.2.0".parse().unwrap(),
                    prefix,
                }]
            };
            "change the node's connected subnets".into()
        }
        92..94 => {
            node.addresses = if rng.chance(50) {
                vec!["198.18.1.1".parse().unwrap(), "fd00:1::1".parse().unwrap()]
            } else {
                vec!["198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap()]
            };
            "change the node's addresses".into()
        }
        _ => {
            spec.health = None;
            spec.timeouts.udp_s = rng.pick(&[30, 60]);
            spec.affinity = rng.pick(&[Affinity::None, Affinity::ClientIp]);
            format!("change {name}'s timeouts or affinity")
        }
    }
}

/// Field by field, so a failure names what differs.
fn assert_same(incremental: &DesiredState, full: &DesiredState, context: &str) {
    assert_eq!(
        incremental.frontends, full.frontends,
        "frontends: {context}"
    );
    assert_eq!(incremental.tables, full.tables, "tables: {context}");
    assert_eq!(incremental.backends, full.backends, "backends: {context}");
    assert_eq!(
        incremental.endpoints, full.endpoints,
        "endpoints: {context}"
    );
    assert_eq!(
        incremental.reply_frontends, full.reply_frontends,
        "reply frontends: {context}"
    );
    assert_eq!(incremental.services, full.services, "services: {context}");
    assert_eq!(incremental.ids, full.ids, "ids: {context}");
    assert_eq!(incremental, full, "{context}");
}

#[test]
fn replanning_the_changed_services_equals_the_full_plan() {
    let (mut deltas, mut fulls, mut errors) = (0, 0, 0);
    for seed in 0..40u64 {
        let mut rng = Rng(SplitMix64(seed));
        let mut node = NodeFacts::with_addresses(&[
            "198.18.1.1".parse().unwrap(),
            "fd00:1::1".parse().unwrap(),
        ]);
        let mut file = ServiceFile::default();
        let mut full = plan(&file, &node).unwrap();
        let mut running = full.clone();
        let mut history = Vec::new();
        for step in 0..250 {
            let (file_before, node_before) = (file.clone(), node.clone());
            for _ in 0..1 + usize::from(rng.chance(15)) {
                history.push(edit(&mut rng, &mut file, &mut node));
            }
            let context = format!("seed {seed} step {step}, after: {}", history.join("; "));
            let expected = plan_from(&file, &node, Some(&full));
            let got = replan(&file, &node, &running);
            // Told which services may differ (those edited, and one more that may not have
            // been), the replan is the same.
            let mut may_differ = BTreeSet::from([NAMES[step % NAMES.len()].to_owned()]);
            each_difference(&file_before.services, &file.services, |name, _| {
                may_differ.insert(name.clone());
            });
            let among = replan_among(&file, &node, &running, Some(&may_differ));
            assert_eq!(among, got, "{context}, said to differ: {may_differ:?}");
            match (got, expected) {
                (Err(a), Err(b)) => {
                    assert_eq!(a, b, "{context}");
                    errors += 1;
                    // Refused: the running plan stays, and so does the file.
                    (file, node) = (file_before, node_before);
                    history.push("(refused, undone)".into());
                }
                (Ok(Replan::Delta(delta)), Ok(expected)) => {
                    deltas += 1;
                    // The ids it gives out fresh are the full plan's.
                    assert_eq!(
                        delta.fresh_ids(&running.ids),
                        expected.ids.fresh_since(&running.ids),
                        "fresh ids: {context}"
                    );
                    let undo = running.undo_of(&delta);
                    let mut next = running.clone();
                    next.patch(delta);
                    assert_same(&next, &expected, &context);
                    let mut back = next.clone();
                    back.patch(undo);
                    assert_same(&back, &running, &format!("undone: {context}"));
                    (running, full) = (next, expected);
                }
                (Ok(Replan::Full(next)), Ok(expected)) => {
                    fulls += 1;
                    assert_same(&next, &expected, &context);
                    (running, full) = (next, expected);
                }
                (got, expected) => panic!("{context}: got {got:?}, the full plan {expected:?}"),
            }
            history.truncate(history.len().saturating_sub(12));
        }
    }
    println!("{deltas} deltas, {fulls} full plans, {errors} errors");
    // Most steps took the incremental path, and every kind of outcome happened.
    assert!(deltas > 4 * fulls, "{deltas} deltas, {fulls} full plans");
    assert!(
        fulls > 0 && errors > 0,
        "{fulls} full plans, {errors} errors"
    );
}

#[test]
fn one_changed_service_among_many_touches_only_its_entries() {
    let mut text = String::from("services:\n");
    for i in 0..50 {
        text.push_str(&format!(
            "  s{i}:\n    vip: 198.18.100.{}\n    ports: [\"80:8080/tcp\"]\n    backends: [\"198.18.2.{}\", \"198.18.3.{}\"]\n",
            i + 1,
            i + 1,
            i + 1
        ));
    }
    let node = NodeFacts::with_addresses(&["198.18.1.1".parse().unwrap()]);
    let file = ServiceFile::parse(&text, Path::new("t.yaml")).unwrap();
    let running = plan(&file, &node).unwrap();
    let mut changed = file.clone();
    changed
        .services
        .get_mut("s7")
        .unwrap()
        .backends
        .push(BackendSpec {
            address: "198.18.4.1".parse().unwrap(),
            port: None,
            weight: 1,
            mesh: None,
        });
    let Replan::Delta(delta) = replan(&changed, &node, &running).unwrap() else {
        panic!("one service changed: a delta");
    };
    // Its table, the new backend, its endpoint and reply entry, its id: nothing of the others.
    assert_eq!(delta.tables.len(), 1);
    assert_eq!(delta.backends.len(), 1);
    assert_eq!(delta.endpoints.len(), 1);
    assert_eq!(delta.reply_frontends.len(), 1);
    assert!(delta.frontends.is_empty());
    assert_eq!(delta.backend_ids.len(), 1);
    let Replan::Delta(none) = replan(&file, &node, &running).unwrap() else {
        panic!("the same file: a delta");
    };
    assert_eq!(none, PlanDelta::default());
}
