//! Large transfers through the mesh (issue 13): 1 MiB each way to a task's echo server, by
//! the node without the task (across the tunnel, both directions) and by the task's own node,
//! with the underlay's MTU at 1500 and at 1400. Each completes with every byte as sent: the
//! tunnel's overhead must not black-hole full-sized segments.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_testkit::swarm::{SwarmLab, echo_transfer};

use super::metric;

/// The service with the echo server: one task, on node 2 (the worker).
pub const SERVICE: &str = "bulk";
pub const PORT: u16 = 82;
/// Bytes each way.
const BYTES: usize = 1 << 20;
/// A transfer that takes longer has stalled (it takes well under a second when it works).
const LIMIT: Duration = Duration::from_secs(30);
const TUNNEL_SENT: &str = "meshlb_events_total{event=\"tunnel_sent\"}";

/// `docker service create` arguments that place the task on node 2.
pub const PLACEMENT: &[&str] = &["--constraint", "node.role==worker"];

/// The transfers at each MTU; the underlay's MTU is 1500 again afterwards.
pub fn complete_at_both_mtus(lab: &SwarmLab) {
    for mtu in [1500, 1400] {
        lab.set_underlay_mtu(mtu).expect("underlay MTU");
        for (node, seed) in lab.nodes.iter().zip(1u64..) {
            let target = SocketAddr::new(IpAddr::V4(node.addr), PORT);
            let across = node.index != 2;
            let sent_before: Vec<u64> = lab.nodes.iter().map(|n| metric(n, TUNNEL_SENT)).collect();
            let transfer = echo_transfer(&lab.client, target, BYTES, seed, LIMIT)
                .unwrap_or_else(|e| panic!("underlay MTU {mtu}, by node {}: {e:#}", node.index));
            let sent_after: Vec<u64> = lab.nodes.iter().map(|n| metric(n, TUNNEL_SENT)).collect();
            let tunneled: Vec<u64> = sent_after
                .iter()
                .zip(&sent_before)
                .map(|(a, b)| a - b)
                .collect();
            if across {
                // Both directions crossed: client to task by node 1, replies by node 2.
                assert!(
                    tunneled.iter().all(|&n| n > 0),
                    "MTU {mtu}: the transfer by node 1 went through the tunnel both ways: {tunneled:?}"
                );
            }
            println!(
                "bulk: underlay MTU {mtu}, by node {} ({}): {} bytes each way in {:?}, client \
                 MSS {}, tunnel packets sent by node 1/2: {tunneled:?}",
                node.index,
                if across {
                    "across the tunnel"
                } else {
                    "task local"
                },
                transfer.bytes,
                transfer.elapsed,
                transfer.client_mss,
            );
        }
    }
    lab.set_underlay_mtu(1500)
        .expect("underlay MTU back to 1500");
}
