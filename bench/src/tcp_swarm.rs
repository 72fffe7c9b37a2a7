//! `lb-bench bench tcp --swarm`: bench tcp's swarm case (issue 12). On the two-node swarm lab
//! (`lb_testkit::swarm`), a service with one task on node 1 publishes port 80 (ingress); the
//! client measures short connections per second and keep-alive requests per second through
//! node 1's published port (one `lbd --swarm` on node 1) and straight to the task (its
//! `docker_gwbridge` address, routed by node 1), in turns: each published measurement is held
//! against the mean of the direct ones right before and after it. Target: at least 0.9 of
//! direct in every round, for both figures.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_testkit::{
    Proto,
    swarm::{Publish, SwarmLab, WHO_PORT, programmed_backends, request, start_lbd, wait_until},
};

use crate::{
    micro::machine,
    tcp::{Clients, TcpArgs},
    tcp_pairs::{self, Case},
};

const PORT: u16 = 80;
/// The client's address for direct connections (the published ones use `CLIENT_ADDR`).
const DIRECT_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 50, 101);

const CASE: Case = Case {
    tag: "tcp --swarm",
    file_stem: "tcp-swarm",
    heading: "bench tcp, swarm case: a one-task service's published port through lbd --swarm vs direct to the task ({clients} client threads; {seconds} s per measurement after a 1 s warm-up; direct right before and after each published measurement)",
    direct_name: "direct to the task",
    through_name: "published port via lbd --swarm",
    through_short: "published",
    target: 0.9,
};

pub fn run(args: &TcpArgs) -> Result<()> {
    crate::tcp::check_args(args)?;
    let machine = machine::facts();
    println!(
        "tcp --swarm: {} ({} CPUs); {} rounds of direct / published / direct, {} s connections + {} s keep-alive each, {} client threads",
        machine.cpu_model, machine.cpus, args.rounds, args.seconds, args.seconds, args.clients
    );
    let lab = SwarmLab::start().context("starting the two-node swarm")?;
    lab.create_published(
        "bench",
        1,
        &[Publish::ingress(PORT, WHO_PORT, Proto::Tcp)],
        &["--constraint", "node.role==manager"],
    )?;
    let tasks = lab.wait_tasks("bench", 1, Duration::from_secs(60))?;
    let node = lab.manager();
    let task = tasks[0]
        .gwbridge
        .context("the task has no docker_gwbridge address")?;
    // The client reaches the task straight through node 1, as a host on its network would,
    // from a second address: lbd's reply entries of the published flows (task:port ->
    // client:port) would otherwise take the replies of direct flows that reuse a port.
    let (net, len) = node.gwbridge_subnet();
    lab.client.ip_batch(&[
        format!("addr add {DIRECT_CLIENT}/24 dev eth0"),
        format!(
            "route add {net}/{len} via {} src {DIRECT_CLIENT}",
            node.addr
        ),
    ])?;
    lab.client.set_sysctls(&[("net.ipv4.tcp_tw_reuse", "1")])?;
    let direct = SocketAddr::new(task.into(), WHO_PORT);
    let published = SocketAddr::new(node.addr.into(), PORT);
    request(&lab.client, direct, Proto::Tcp, Duration::from_secs(3))
        .with_context(|| format!("the client cannot reach the task at {direct} through node 1"))?;
    let lbd = start_lbd(&args.lbd, node, &[])?;
    wait_until(Duration::from_secs(10), "lbd programs the task", || {
        Ok(programmed_backends(&lbd, "bench")?.is_some_and(|b| b.len() == 1))
    })
    .with_context(|| lbd.output())?;
    request(&lab.client, published, Proto::Tcp, Duration::from_secs(3))
        .with_context(|| format!("{published} does not answer\n{}", lbd.output()))?;
    let clients = Clients {
        ns: &lab.client,
        threads: args.clients,
        pinned: false,
    };
    let result = tcp_pairs::run(&CASE, args, &clients, direct, published);
    drop(lbd);
    drop(lab);
    result
}
