//! `lb-bench demo --swarm` (`cargo xtask demo --swarm`): a real two-node Docker Swarm on this
//! machine (`lb_testkit::swarm`), a service published in ingress mode, its port tried without
//! meshlb (Docker's routing mesh needs IP_VS) and then with one `lbd --swarm` per node; a
//! table per task: its node, the TCP and UDP exchanges it got through each node's address,
//! and the client address it saw.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_testkit::{
    Lbd, Proto,
    swarm::{
        CLIENT_ADDR, Publish, SwarmLab, WHO_PORT, programmed_backends, request, start_lbd,
        wait_until,
    },
};

/// The published port of the demo's service.
const PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of the port without meshlb, per node, each bounded by this.
const BARE_TRIES: usize = 5;
const BARE_TIMEOUT: Duration = Duration::from_secs(1);

/// Exchanges per task: (node index, protocol) to count.
type Counts = BTreeMap<(u8, Proto), usize>;

pub fn run(lbd: &Path, tcp: usize, udp: usize) -> Result<()> {
    println!(
        "demo --swarm: two swarm nodes in network namespaces, each with its own dockerd \
         (manager 198.18.50.1, worker 198.18.50.2), a client at {CLIENT_ADDR}; overlay pool \
         198.19.0.0/16"
    );
    let started = Instant::now();
    let lab = SwarmLab::start().context("starting the two-node swarm")?;
    println!("demo: swarm up in {:.1?}", started.elapsed());
    lab.create_published("web", 4, &Publish::ingress_tcp_and_udp(PORT, WHO_PORT), &[])?;
    let tasks = lab.wait_tasks("web", 4, Duration::from_secs(60))?;
    println!("demo: service web, 4 tasks, port {PORT} published (ingress) for TCP and UDP:");
    for t in &tasks {
        println!(
            "  task {}  node {}  ingress {}  docker_gwbridge {}",
            t.container,
            t.node,
            t.ingress_addr().map_or("-".into(), |a| a.to_string()),
            t.gwbridge.map_or("-".into(), |a| a.to_string())
        );
    }

    // Docker's own routing mesh on a kernel without IP_VS: nothing answers.
    println!(
        "\ndemo: without meshlb ({BARE_TRIES} TCP connections per node address, {BARE_TIMEOUT:?} each):"
    );
    for node in &lab.nodes {
        let target = SocketAddr::new(IpAddr::V4(node.addr), PORT);
        let answered = (0..BARE_TRIES)
            .filter(|_| request(&lab.client, target, Proto::Tcp, BARE_TIMEOUT).is_ok())
            .count();
        println!(
            "  {target}: {answered} of {BARE_TRIES} answered{}",
            if answered == 0 {
                " (Docker programs IPVS for the routing mesh; this kernel has no IP_VS)"
            } else {
                ""
            }
        );
    }

    println!("\ndemo: starting lbd --swarm on each node (eth0 and docker_gwbridge)");
    let lbds: Vec<Lbd> = lab
        .nodes
        .iter()
        .map(|node| start_lbd(lbd, node, &[]))
        .collect::<Result<_>>()?;
    for lb in &lbds {
        wait_until(Duration::from_secs(10), "lbd programs every task", || {
            Ok(programmed_backends(lb, "web")?.is_some_and(|b| b.len() == tasks.len()))
        })
        .with_context(|| lb.output())?;
    }
    let mut rows: BTreeMap<String, (Counts, Vec<IpAddr>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for node in &lab.nodes {
        let target = SocketAddr::new(IpAddr::V4(node.addr), PORT);
        for (proto, count) in [(Proto::Tcp, tcp), (Proto::Udp, udp)] {
            println!("demo: {count} {proto} exchanges with {target}");
            for i in 0..count {
                let reply = request(&lab.client, target, proto, TIMEOUT)
                    .with_context(|| format!("{proto} {target}, exchange {i}"))?;
                let row = rows.entry(reply.backend.clone()).or_default();
                *row.0.entry((node.index, proto)).or_default() += 1;
                if !row.1.contains(&reply.seen_ip) {
                    row.1.push(reply.seen_ip);
                }
                if reply.seen_ip != IpAddr::V4(CLIENT_ADDR) {
                    problems.push(format!(
                        "{} saw {} through {target}, the client is {CLIENT_ADDR}",
                        reply.backend, reply.seen_ip
                    ));
                }
            }
        }
    }
    println!();
    println!(
        "{:<13} {:>4} {:>18} {:>18} {:>18} {:>18}  client address seen",
        "task", "node", "via .50.1 tcp", "via .50.1 udp", "via .50.2 tcp", "via .50.2 udp"
    );
    for t in &tasks {
        let (counts, seen) = rows.remove(&t.container).unwrap_or_default();
        let n = |node: u8, proto| counts.get(&(node, proto)).copied().unwrap_or(0);
        if counts.is_empty() {
            problems.push(format!("task {} got no exchange", t.container));
        }
        let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
        println!(
            "{:<13} {:>4} {:>18} {:>18} {:>18} {:>18}  {}",
            t.container,
            t.node,
            n(1, Proto::Tcp),
            n(1, Proto::Udp),
            n(2, Proto::Tcp),
            n(2, Proto::Udp),
            seen.join(", ")
        );
    }
    for (host, _) in rows {
        problems.push(format!("an answer from {host}, which is no running task"));
    }
    drop(lbds);
    drop(lab);
    println!("\ndemo: swarm, namespaces and dockerd state removed");
    if !problems.is_empty() {
        bail!("demo found problems:\n  {}", problems.join("\n  "));
    }
    println!(
        "demo: ok — both node addresses serve the published port from every task, which sees \
         the client's real address"
    );
    Ok(())
}
