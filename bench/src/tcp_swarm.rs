//! `lb-bench bench tcp --swarm`: bench tcp's swarm case (issue 12). On the two-node swarm lab
//! (`lb_testkit::swarm`), a service with one task on node 1 publishes port 80 (ingress); the
//! client measures short connections per second and keep-alive requests per second through
//! node 1's published port (one `lbd --swarm` on node 1) and straight to the task (its
//! `docker_gwbridge` address, routed by node 1), the two interleaved in quarter-second slices
//! (`tcp_pairs`). Target: at least 0.9 of direct in every round, for both figures.
//!
//! `--cross-node` (issue 13): the task runs on node 2 and the client enters by node 1, whose
//! lbd sends every packet through the mesh tunnel to node 2's lbd, which delivers it (and the
//! replies come back the same way); direct is the client talking to the task routed by node 2.
//! Target: at least 0.85 of direct in every round.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_testkit::{
    Proto,
    swarm::{Publish, SwarmLab, WHO_PORT, programmed_backends, request, start_lbd, wait_until},
};

use crate::{
    tcp::{Clients, TcpArgs},
    tcp_pairs::{self, Case},
};

const PORT: u16 = 80;
/// The client's address for direct connections (the published ones use `CLIENT_ADDR`).
const DIRECT_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 50, 101);

const CASE: Case = Case {
    tag: "tcp --swarm",
    file_stem: "tcp-swarm",
    heading: "bench tcp, swarm case: a one-task service's published port through lbd --swarm vs direct to the task ({clients} client threads; {seconds} s of each way per measurement after a 1 s warm-up, the two ways interleaved in 0.25 s slices, connections closed by a reset)",
    direct_name: "direct to the task",
    through_name: "published port via lbd --swarm",
    through_short: "published",
    target: 0.9,
};

const CROSS_CASE: Case = Case {
    tag: "tcp --swarm --cross-node",
    file_stem: "tcp-swarm-cross",
    heading: "bench tcp, swarm cross-node case: a one-task service on node 2 through node 1's published port (lbd --swarm on both, the mesh tunnel between them) vs direct to the task ({clients} client threads; {seconds} s of each way per measurement after a 1 s warm-up, the two ways interleaved in 0.25 s slices, connections closed by a reset)",
    direct_name: "direct to the task (routed by its node)",
    through_name: "node 1's published port, task on node 2",
    through_short: "cross-node",
    target: 0.85,
};

pub fn run(args: &TcpArgs) -> Result<()> {
    crate::tcp::check_args(args)?;
    let (case, task_role) = if args.cross_node {
        (&CROSS_CASE, "node.role==worker")
    } else {
        (&CASE, "node.role==manager")
    };
    tcp_pairs::announce(case, args);
    let lab = SwarmLab::start().context("starting the two-node swarm")?;
    lab.create_published(
        "bench",
        1,
        &[Publish::ingress(PORT, WHO_PORT, Proto::Tcp)],
        &["--constraint", task_role],
    )?;
    let tasks = lab.wait_tasks("bench", 1, Duration::from_secs(60))?;
    let entry = lab.manager();
    let task_node = &lab.nodes[usize::from(tasks[0].node) - 1];
    let task = tasks[0]
        .gwbridge
        .context("the task has no docker_gwbridge address")?;
    // The client reaches the task straight through its node, as a host on its network would,
    // from a second address: lbd's reply entries of the published flows (task:port ->
    // client:port) would otherwise take the replies of direct flows that reuse a port.
    let (net, len) = task_node.gwbridge_subnet();
    lab.client.ip_batch(&[
        format!("addr add {DIRECT_CLIENT}/24 dev eth0"),
        format!(
            "route add {net}/{len} via {} src {DIRECT_CLIENT}",
            task_node.addr
        ),
    ])?;
    lab.client.set_sysctls(&[("net.ipv4.tcp_tw_reuse", "1")])?;
    let direct = SocketAddr::new(task.into(), WHO_PORT);
    let published = SocketAddr::new(entry.addr.into(), PORT);
    request(&lab.client, direct, Proto::Tcp, Duration::from_secs(3)).with_context(|| {
        format!(
            "the client cannot reach the task at {direct} through node {}",
            task_node.index
        )
    })?;
    // The entry node's lbd, and for the cross-node case the task node's, which delivers
    // what comes through the tunnel.
    let mut lbds = vec![start_lbd(&args.lbd, entry, &[])?];
    if task_node.index != entry.index {
        lbds.push(start_lbd(&args.lbd, task_node, &[])?);
    }
    wait_until(Duration::from_secs(10), "lbd programs the task", || {
        Ok(programmed_backends(&lbds[0], "bench")?.is_some_and(|b| b.len() == 1))
    })
    .with_context(|| lbds[0].output())?;
    request(&lab.client, published, Proto::Tcp, Duration::from_secs(3))
        .with_context(|| format!("{published} does not answer\n{}", lbds[0].output()))?;
    let clients = Clients {
        ns: &lab.client,
        threads: args.clients,
        pinned: false,
    };
    let result = tcp_pairs::run(case, args, &clients, direct, published);
    drop(lbds);
    drop(lab);
    result
}
