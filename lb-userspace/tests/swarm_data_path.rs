//! `lbd --swarm` on a real two-node swarm whose nodes joined with `--data-path-addr`
//! (`SwarmLab::start_with_data_path`: control plane on 198.18.50.N, data on 198.18.51.N). The
//! Engine then lists every task by its node's data-path address while `NodeAddr` stays the
//! advertise address; the mesh tunnel must run between the data-path addresses, or a node
//! tunnels to a peer that does not take it and every task on the other node is lost.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_testkit::{
    Lbd, e2e_enabled,
    swarm::{CLIENT_ADDR, SwarmLab, SwarmNode, http_who, start_lbd, wait_until},
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Tasks may take this long to start (image already local).
const TASKS: Duration = Duration::from_secs(60);
/// Requests to one node's published port: each picks one of 4 tasks at random (by its client
/// port), so 4 × (3/4)^64 ≈ 4e-8 is the chance one task is missed.
const EVERY_TASK: usize = 64;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

/// A counter of `node`'s lbd from its metrics endpoint; `None` when the series is absent.
fn metric(node: &SwarmNode, series: &str) -> Option<u64> {
    let text = lb_testkit::metrics(&node.ns).expect("metrics");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_mesh_runs_between_the_nodes_data_path_addresses() {
    if !e2e_enabled() {
        return;
    }
    let lab = SwarmLab::start_with_data_path().expect("swarm lab");
    lab.create_service(
        "web",
        4,
        &[
            "--publish",
            "published=80,target=8080",
            "--placement-pref",
            "spread=node.id",
        ],
    )
    .expect("web");
    lab.wait_running("web", 4, TASKS).expect("web tasks");
    lab.wait_listed("ingress", "web", 4, TASKS)
        .expect("the Engines' view");
    // Each node's tasks by container hostname, which the image's servers answer with.
    let per_node: Vec<BTreeSet<String>> = lab
        .nodes
        .iter()
        .map(|n| {
            n.tasks("web")
                .expect("the node's tasks")
                .into_iter()
                .map(|t| t.container)
                .collect()
        })
        .collect();
    assert!(
        per_node.iter().all(|t| !t.is_empty()),
        "tasks on both nodes: {per_node:?}"
    );
    let all_web: BTreeSet<String> = per_node.into_iter().flatten().collect();
    assert_eq!(all_web.len(), 4);

    let lbs: Vec<Lbd> = lab
        .nodes
        .iter()
        .map(|n| start_lbd(lbd(), n, &[]).expect("lbd"))
        .collect();
    // Both before any traffic: a node whose lbd has not yet read its Engine knows no peers,
    // and the first node's requests cross to it (counted below as refused tunnel packets).
    for lb in &lbs {
        wait_until(Duration::from_secs(5), "lbd programs every task", || {
            Ok(lb_testkit::swarm::programmed_backends(lb, "web")?.map(|b| b.len()) == Some(4))
        })
        .expect("every task programmed");
    }
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        let other = lab.nodes.iter().find(|o| o.index != node.index).unwrap();
        let (ok, status, err) = lb.lbctl(&["status"]).expect("lbctl status");
        assert!(ok, "{err}");
        let addresses = format!("node {} (data path {})", node.addr, node.data_addr);
        assert!(status.contains(&addresses), "{status}");
        // The other node's tasks are reached through its data-path address.
        let (ok, list, err) = lb.lbctl(&["list"]).expect("lbctl list");
        assert!(ok, "{err}");
        let through = format!("on node {}, through the mesh tunnel", other.data_addr);
        assert!(list.contains(&through), "node {}: {list}", node.index);

        let addr = SocketAddr::new(IpAddr::V4(node.addr), 80);
        let mut hosts = BTreeSet::new();
        for i in 0..EVERY_TASK {
            let who = http_who(&lab.client, addr, TIMEOUT)
                .or_else(|e| {
                    println!("request {i} to {addr}: {e:#}; once more");
                    http_who(&lab.client, addr, TIMEOUT)
                })
                .unwrap_or_else(|e| panic!("request {i} to {addr}: {e:#}"));
            assert_eq!(who.seen, CLIENT_ADDR.to_string(), "{who:?}");
            hosts.insert(who.host);
        }
        assert_eq!(
            hosts, all_web,
            "node {}: answered by every task",
            node.index
        );
    }
    for node in &lab.nodes {
        let sent = metric(node, "meshlb_events_total{event=\"tunnel_sent\"}");
        let received = metric(node, "meshlb_events_total{event=\"tunnel_received\"}");
        assert!(sent.is_some_and(|n| n > 0), "node {}: {sent:?}", node.index);
        assert!(
            received.is_some_and(|n| n > 0),
            "node {}: {received:?}",
            node.index
        );
        let refused = metric(
            node,
            "meshlb_dropped_packets_total{reason=\"tunnel_not_peer\"}",
        );
        assert!(
            refused.is_none_or(|n| n == 0),
            "node {}: {refused:?}",
            node.index
        );
    }
}
