//! `lb-bench demo`: a client, a node running lbd and three backends in namespaces; a few
//! hundred real TCP connections and UDP exchanges; a table of where they went.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_testkit::{Lbd, NameServer, Topology, tcp_request, udp_request};

const SERVICES: &str = include_str!("../demo/services.yaml");
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The lbd binary to run.
    #[arg(long)]
    lbd: PathBuf,
    /// TCP connections per frontend.
    #[arg(long, default_value_t = 200)]
    tcp: usize,
    /// UDP exchanges.
    #[arg(long, default_value_t = 200)]
    udp: usize,
    /// Demo on a real two-node Docker Swarm (dockerd per node) instead: the published port
    /// without and with `lbd --swarm`; --tcp and --udp count per node address.
    #[arg(long)]
    swarm: bool,
}

#[derive(Default)]
struct Row {
    counts: BTreeMap<&'static str, usize>,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    ensure!(
        args.lbd.exists(),
        "{} does not exist: run `cargo xtask build`",
        args.lbd.display()
    );
    if args.swarm {
        return crate::demo_swarm::run(&args.lbd, args.tcp, args.udp);
    }
    println!("demo: building client, node and 3 backends in network namespaces (198.18.0.0/15)");
    let topo = Topology::new(3)?;
    let servers: Vec<NameServer> = topo.serve_on_backends(&[8080], &[5353])?;
    println!(
        "demo: starting lbd on {} and {}",
        topo.node_client_if, topo.node_bridge
    );
    let lbd = Lbd::start(
        &args.lbd,
        &topo.node,
        SERVICES,
        &[&topo.node_client_if, &topo.node_bridge],
        &[],
    )?;
    let vip: IpAddr = "198.18.100.1".parse()?;
    let node = IpAddr::V4(topo.node_client_addr4);
    let frontends: [(&'static str, SocketAddr, usize); 3] = [
        (
            "web tcp 198.18.100.1:80",
            SocketAddr::new(vip, 80),
            args.tcp,
        ),
        (
            "web udp 198.18.100.1:53",
            SocketAddr::new(vip, 53),
            args.udp,
        ),
        (
            "api tcp <node>:8000 (rr 1:1:2)",
            SocketAddr::new(node, 8000),
            args.tcp,
        ),
    ];
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut problems = Vec::new();
    for (label, target, count) in frontends {
        println!("demo: {count} exchanges with {label}");
        for i in 0..count {
            let reply = if label.contains("udp") {
                udp_request(&topo.client, target, TIMEOUT)
            } else {
                tcp_request(&topo.client, target, TIMEOUT)
            }
            .with_context(|| format!("{label}, exchange {i}\nlbd output:\n{}", lbd.output()))?;
            if reply.from != target {
                problems.push(format!(
                    "{label}: reply came from {} not {target}",
                    reply.from
                ));
            }
            // The client's address must arrive; its port may be remapped on a clash.
            if reply.seen_ip != reply.local.ip() {
                problems.push(format!(
                    "{label}: {} saw {}:{}, the client is {}",
                    reply.backend, reply.seen_ip, reply.seen_port, reply.local
                ));
            }
            *rows
                .entry(reply.backend)
                .or_default()
                .counts
                .entry(label)
                .or_default() += 1;
        }
    }
    println!();
    println!(
        "{:<12} {:>26} {:>26} {:>32}  client address seen",
        "backend", frontends[0].0, frontends[1].0, frontends[2].0
    );
    let client = IpAddr::V4(topo.client_addr4);
    for server in &servers {
        let row = rows.remove(server.name()).unwrap_or_default();
        let peers = server.peers();
        let real = !peers.is_empty() && peers.iter().all(|(_, ip)| *ip == client);
        if !real {
            problems.push(format!(
                "{} did not see only the client's address: {peers:?}",
                server.name()
            ));
        }
        println!(
            "{:<12} {:>26} {:>26} {:>32}  {}",
            server.name(),
            row.counts.get(frontends[0].0).unwrap_or(&0),
            row.counts.get(frontends[1].0).unwrap_or(&0),
            row.counts.get(frontends[2].0).unwrap_or(&0),
            if real {
                format!("yes, only {client}")
            } else {
                "NO".to_owned()
            }
        );
    }
    let counters = lbd.stop()?;
    println!();
    println!("lbd counters (non-zero):");
    if let Some(global) = counters["global"].as_object() {
        for (name, value) in global {
            if value.as_u64().unwrap_or(0) > 0 {
                println!("  {name:<22} {value}");
            }
        }
    }
    drop(servers);
    drop(topo);
    println!("\ndemo: namespaces removed");
    if !problems.is_empty() {
        bail!("demo found problems:\n  {}", problems.join("\n  "));
    }
    println!("demo: ok — every backend answered and saw the client's real address");
    Ok(())
}
