//! Large transfers through the mesh (issue 13): 1 MiB each way to a task's echo server, by
//! the node without the task (across the tunnel, both directions) and by the task's own node,
//! with the underlay's MTU at 1500 and at 1400. Each completes with every byte as sent: the
//! tunnel's overhead must not black-hole full-sized segments. The task also answers by UDP
//! segmentation offload (one aggregate of datagrams, as a QUIC server sends): every datagram
//! reaches the client, through the tunnel too where the link cuts it into tunnel packets, and
//! an aggregate the tunnel cannot carry is dropped and counted.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_testkit::{
    segmented_echo,
    swarm::{SwarmLab, echo_transfer},
};

use super::metric;

/// The service with the echo server: one task, on node 2 (the worker).
pub const SERVICE: &str = "bulk";
pub const PORT: u16 = 82;
/// Bytes each way.
const BYTES: usize = 1 << 20;
/// A transfer that takes longer has stalled (it takes well under a second when it works).
const LIMIT: Duration = Duration::from_secs(30);
const TUNNEL_SENT: &str = "meshlb_events_total{event=\"tunnel_sent\"}";
const AGGREGATE: &str = "meshlb_events_total{event=\"aggregate\"}";
const TC_TUNNEL_FAILED: &str = "meshlb_tc_packets_total{outcome=\"tunnel_failed\"}";
const TUNNEL_FAILED: &str = "meshlb_dropped_packets_total{reason=\"tunnel_failed\"}";
/// How many datagrams a UDP aggregate holds.
const DATAGRAMS: u8 = 8;

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
            segmented_datagrams_arrive(lab, target, across, mtu);
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

/// The task's answer of `DATAGRAMS` datagrams in one aggregate, asked by `target` (the task
/// on node 2, whose generic XDP sees the aggregate whole), the largest datagrams the tunnel
/// carries at the underlay's `mtu`: each reaches the client. Across the tunnel the link
/// between the nodes must cut the wrapped aggregate into tunnel packets, as a NIC does: a veth
/// passes it whole unless its UDP tunnel segmentation offload is off, and node 1 then drops it,
/// counted. An aggregate of datagrams one byte too big for the tunnel is dropped at node 2,
/// counted.
fn segmented_datagrams_arrive(lab: &SwarmLab, target: SocketAddr, across: bool, mtu: u16) {
    let (entry, task_node) = (&lab.nodes[0], &lab.nodes[1]);
    // Inner and outer IPv4 and UDP headers.
    let largest = mtu - 56;
    // Each answer arrives within milliseconds when it arrives at all.
    let ask = |size| {
        segmented_echo(&lab.client, target, size, DATAGRAMS, Duration::from_secs(1))
            .expect("segmented echo")
    };
    if !across {
        let aggregates = metric(task_node, AGGREGATE);
        assert_eq!(ask(largest), usize::from(DATAGRAMS), "by {target}");
        assert!(
            metric(task_node, AGGREGATE) > aggregates,
            "sent as one aggregate"
        );
        return;
    }
    let dropped = metric(entry, TUNNEL_FAILED);
    assert_eq!(ask(largest), 0, "crossed the veth whole, by {target}");
    assert_eq!(
        metric(entry, TUNNEL_FAILED),
        dropped + 1,
        "the whole aggregate, dropped by node 1"
    );

    let _cutting = CuttingLinks::new(lab);
    let (aggregates, sent) = (metric(task_node, AGGREGATE), metric(task_node, TUNNEL_SENT));
    assert_eq!(
        ask(largest),
        usize::from(DATAGRAMS),
        "through the tunnel, by {target}"
    );
    assert!(
        metric(task_node, AGGREGATE) > aggregates,
        "sent as one aggregate"
    );
    assert!(metric(task_node, TUNNEL_SENT) > sent, "wrapped by node 2");
    let failed = metric(task_node, TC_TUNNEL_FAILED);
    assert_eq!(
        ask(largest + 1),
        0,
        "datagrams a byte too big for the tunnel"
    );
    assert_eq!(
        metric(task_node, TC_TUNNEL_FAILED),
        failed + 1,
        "the aggregate of datagrams too big for the tunnel, dropped by node 2"
    );
}

/// The nodes' links cut wrapped aggregates into tunnel packets while this lives (their UDP
/// tunnel segmentation offload off), and pass them whole again after, whatever happened.
struct CuttingLinks<'a>(&'a SwarmLab);

impl<'a> CuttingLinks<'a> {
    fn new(lab: &'a SwarmLab) -> CuttingLinks<'a> {
        lab.set_node_tunnel_segmentation_offload(false)
            .expect("tunnel segmentation offload off");
        CuttingLinks(lab)
    }
}

impl Drop for CuttingLinks<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.set_node_tunnel_segmentation_offload(true) {
            eprintln!("tunnel segmentation offload back on: {e:#}");
        }
    }
}
