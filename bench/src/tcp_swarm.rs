//! `lb-bench bench tcp --swarm`: bench tcp's swarm case (issue 12). On the two-node swarm lab
//! (`lb_testkit::swarm`), a service with one task on node 1 publishes port 80 (ingress); the
//! client measures short connections per second and keep-alive requests per second through
//! node 1's published port (one `lbd --swarm` on node 1) and straight to the task (its
//! `docker_gwbridge` address, routed by node 1), in turns: each published measurement is held
//! against the mean of the direct ones right before and after it. Target: at least 0.9 of
//! direct in every round, for both figures.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use lb_testkit::{
    Proto,
    swarm::{Publish, SwarmLab, WHO_PORT, programmed_backends, request, start_lbd, wait_until},
};

use crate::{
    micro::machine,
    pps::Target,
    tcp::{
        Clients, ContenderResult, TcpArgs, TcpReport, WARMUP_SECONDS, connections, keepalive,
        render_markdown,
    },
};

const PORT: u16 = 80;
const TARGET: f64 = 0.9;
/// The client's address for direct connections (the published ones use `CLIENT_ADDR`).
const DIRECT_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 50, 101);

/// (connections/s, keep-alive requests/s, errors) of one measurement.
fn measure(clients: &Clients<'_>, target: SocketAddr, seconds: f64) -> Result<(f64, f64, u64)> {
    connections(clients, target, WARMUP_SECONDS)?;
    let c = connections(clients, target, seconds)?;
    let k = keepalive(clients, target, seconds)?;
    if c.ok == 0 || k.ok == 0 {
        bail!(
            "{target}: no exchange succeeded ({} and {} errors)",
            c.errors,
            k.errors
        );
    }
    Ok((c.rate(), k.rate(), c.errors + k.errors))
}

pub fn run(args: &TcpArgs) -> Result<()> {
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
    let mut direct_result = ContenderResult::empty("direct to the task");
    let mut meshlb = ContenderResult::empty("published port via lbd --swarm");
    for round in 0..args.rounds {
        let before = measure(&clients, direct, args.seconds)?;
        let through = measure(&clients, published, args.seconds)?;
        let after = measure(&clients, direct, args.seconds)?;
        println!(
            "tcp --swarm: round {round}: direct {:.0}/{:.0}, published {:.0}/{:.0}, direct {:.0}/{:.0} (connections/s / keep-alive requests/s)",
            before.0, before.1, through.0, through.1, after.0, after.1
        );
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        direct_result
            .connections_per_s
            .push(mean(before.0, after.0));
        direct_result.requests_per_s.push(mean(before.1, after.1));
        direct_result.errors += before.2 + after.2;
        meshlb.connections_per_s.push(through.0);
        meshlb.requests_per_s.push(through.1);
        meshlb
            .direct_connections_per_s
            .push(mean(before.0, after.0));
        meshlb.direct_requests_per_s.push(mean(before.1, after.1));
        meshlb.errors += through.2;
    }
    drop(lbd);
    drop(lab);
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let targets: Vec<Target> = [
        (
            "published / direct, connections/s",
            ratio(&meshlb.connections_per_s, &meshlb.direct_connections_per_s),
        ),
        (
            "published / direct, keep-alive requests/s",
            ratio(&meshlb.requests_per_s, &meshlb.direct_requests_per_s),
        ),
    ]
    .into_iter()
    .filter_map(|(what, ratios)| Target::new(what, ratios, TARGET, true))
    .collect();
    let report = TcpReport {
        date: machine::today(),
        machine,
        rounds: args.rounds,
        seconds: args.seconds,
        clients: args.clients,
        pinned: false,
        contenders: vec![direct_result, meshlb],
        targets,
    };
    // The shared table, under a heading that says how this case was measured.
    let md = render_markdown(&report);
    let md = match md.split_once('\n') {
        Some((heading, rest)) if heading.starts_with("###") => format!(
            "### bench tcp, swarm case: a one-task service's published port through lbd --swarm vs direct to the task ({} client threads; {} s per measurement after a 1 s warm-up; direct right before and after each published measurement)\n{rest}",
            args.clients, args.seconds
        ),
        _ => md,
    };
    println!("\n{md}");
    if !args.no_write {
        std::fs::create_dir_all(&args.out_dir)?;
        let base = args.out_dir.join(format!("tcp-swarm-{}", report.date));
        std::fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(base.with_extension("md"), &md)?;
        println!("tcp --swarm: wrote {}.{{json,md}}", base.display());
    }
    if report.targets.iter().any(|t| !t.met_min) {
        bail!("tcp --swarm: below {TARGET} of direct in some round (see the table)");
    }
    Ok(())
}
