//! Long-lived connections through the mesh (issue 13): 200 TCP connections to the image's
//! name server, half entering by each node, to a service with tasks on both nodes, held
//! while that service is scaled up and down and another service is rolled; after each step
//! every connection still answers, from the task it had, which still sees the client's own
//! address and the port it saw first. A connection whose task the scale-down removed must
//! end (the new task refuses the mid-flow packet), never be answered by another task.
//! Then connections to an address that moves from node to node (as a floating address
//! does when its node fails or drains) keep their task and their client port each way.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::limits::{FULLNAT_PORT_MAX, FULLNAT_PORT_MIN};
use lb_testkit::{
    Lbd, TcpSession,
    swarm::{CLIENT_ADDR, SwarmLab},
};

use super::{TASKS, backends, engines_list, local_tasks, swarm_tasks, within};

/// The service the connections are held to, published on `PORT` (the name server).
pub const SERVICE: &str = "held";
pub const PORT: u16 = 81;
/// Connections per node address.
const PER_NODE: usize = 100;
/// Each round of requests (all connections at once) must finish within this.
const ROUND: Duration = Duration::from_secs(5);
/// lbd must program a change within this of the containers changing (and its Engine showing
/// it).
const PROGRAMMED: Duration = Duration::from_secs(6);

/// One held connection, the task it reached first and the client port that task sees.
pub struct Held {
    session: TcpSession,
    pub task: String,
    seen_port: u16,
}

/// What one round of requests over the held connections found.
pub struct Round {
    /// Connections answered by their own task.
    pub kept: usize,
    /// Connections that failed (index, error); checked by the caller.
    pub failed: Vec<(usize, String)>,
}

/// Opens the connections, then: `held` 4 -> 6 tasks, 6 -> 4, a rolling update of `rolled`
/// (one task at a time), with a round of requests over every connection after each step.
pub fn survive_scaling_and_a_rollout(lab: &SwarmLab, lbs: &[Lbd], rolled: &str) {
    // The step before froze node 2's Engine, and the swarm may still be settling the tasks
    // it moved meanwhile: first every Engine's view (the one lbd follows) lists exactly the
    // running containers, and the tasks are read after that and after lbd holds still. Read
    // before, they once missed the container that then answered a connection (a full-suite
    // run of 2026-12-04).
    engines_list(lab, "ingress", SERVICE, 4);
    // Every node's lbd serves all four: the step before froze node 2's Engine, and the
    // swarm's gossip takes a moment to give each node the other back as a peer (until then a
    // node's plan leaves the other's tasks out: reached by no one here).
    // And holds still: after the thaw the gossip may drop and return the other node once
    // more (then flows opened meanwhile move, the known transient of an Engine freeze), and
    // what this step tests is scaling and a rollout.
    for lb in lbs {
        let mut last = (generation(lb), Instant::now());
        within(
            TASKS,
            "lbd's plan has the 4 tasks, unchanged for 2 s",
            || {
                let now = generation(lb);
                if now != last.0 {
                    last = (now, Instant::now());
                }
                planned(lb, SERVICE) == 4 && last.1.elapsed() >= Duration::from_secs(2)
            },
        );
    }
    let tasks: BTreeSet<String> = swarm_tasks(lab, SERVICE);
    assert_eq!(tasks.len(), 4, "{SERVICE}: four tasks to start with");
    let started = Instant::now();
    let mut held = open(lab, &tasks);
    let remapped = held
        .iter()
        .filter(|h| h.seen_port != h.session.local_addr().port())
        .count();
    println!(
        "held: {} connections open in {:?} ({remapped} with a client port remapped on a clash)",
        held.len(),
        started.elapsed()
    );
    let round = ask_all(&mut held);
    assert!(
        round.failed.is_empty(),
        "fresh connections: {:?}",
        round.failed
    );

    let step = Instant::now();
    lab.scale(SERVICE, 6).expect("scale up");
    let scaled_up = within(TASKS, "held scaled up to 6 containers", || {
        swarm_tasks(lab, SERVICE).len() == 6
    });
    engines_list(lab, "ingress", SERVICE, 6);
    for lb in lbs {
        within(PROGRAMMED, "lbd programs the 6 tasks", || {
            backends(lb, SERVICE) == Some(6)
        });
    }
    let round = ask_all(&mut held);
    assert!(
        round.failed.is_empty(),
        "after the scale-up, every connection answers from its task: {:?}",
        round.failed
    );
    println!(
        "held: scale-up to 6: tasks up in {scaled_up:?}, {} of {} connections kept, step {:?}",
        round.kept,
        held.len(),
        step.elapsed()
    );

    // Docker chooses which tasks the scale-down stops; connections on them must end.
    let step = Instant::now();
    lab.scale(SERVICE, 4).expect("scale down");
    let scaled_down = within(TASKS, "held scaled down to 4 containers", || {
        swarm_tasks(lab, SERVICE).len() == 4
    });
    let survivors = swarm_tasks(lab, SERVICE);
    engines_list(lab, "ingress", SERVICE, 4);
    for lb in lbs {
        within(PROGRAMMED, "lbd programs the 4 tasks", || {
            backends(lb, SERVICE) == Some(4)
        });
    }
    let round = ask_all(&mut held);
    let (ended, lost): (Vec<_>, Vec<_>) = round
        .failed
        .iter()
        .partition(|(i, _)| !survivors.contains(&held[*i].task));
    assert!(
        lost.is_empty(),
        "after the scale-down, connections to surviving tasks answer from them: {lost:?}"
    );
    let on_removed = held.iter().filter(|h| !survivors.contains(&h.task)).count();
    assert_eq!(
        ended.len(),
        on_removed,
        "every connection to a removed task ends (none is answered by another task)"
    );
    println!(
        "held: scale-down to 4: tasks gone in {scaled_down:?}, {} connections kept, {} on the \
         {} removed tasks ended, step {:?}",
        round.kept,
        ended.len(),
        6 - survivors.len(),
        step.elapsed()
    );
    let ended: BTreeSet<usize> = ended.iter().map(|(i, _)| *i).collect();
    held = held
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !ended.contains(i))
        .map(|(_, h)| h)
        .collect();
    assert!(
        held.len() >= PER_NODE,
        "most connections survive a scale-down by 2 of 6: {} left",
        held.len()
    );

    let step = Instant::now();
    let before: BTreeSet<String> = swarm_tasks(lab, rolled);
    lab.manager()
        .docker(&[
            "service",
            "update",
            "-d",
            "--force",
            "--update-parallelism",
            "1",
            "--update-delay",
            "0s",
            rolled,
        ])
        .expect("rolling update");
    let rolled_in = within(
        TASKS * 2,
        "every task of the rolled service replaced",
        || {
            let now: BTreeSet<String> = swarm_tasks(lab, rolled);
            now.len() == before.len() && now.is_disjoint(&before)
        },
    );
    let round = ask_all(&mut held);
    assert!(
        round.failed.is_empty(),
        "after rolling {rolled}, every connection answers from its task: {:?}",
        round.failed
    );
    println!(
        "held: rolling update of {rolled} ({} tasks) in {rolled_in:?}: {} of {} connections \
         kept, step {:?}",
        before.len(),
        round.kept,
        held.len(),
        step.elapsed()
    );
}

/// The address that moves between the nodes' underlay ports, and connections to it.
const FLOATING: &str = "198.18.50.50";
const ON_FLOATING: usize = 40;
/// The client ports of the connections to `FLOATING`: above Linux's ephemeral range
/// (32768-60999).
const FLOATING_PORTS: u16 = 61_000;

/// Connections to an address on node 1 (a floating address: every node serves the
/// published port on its own addresses), half of them to node 2's tasks through the mesh
/// tunnel; the address moves to node 2 and back. After each move every connection answers
/// from its task, which sees the client's port as before: the connections entering by the
/// tunnel now come straight to their task's node, and the others take the tunnel from there.
pub fn survive_an_address_moving_between_nodes(lab: &SwarmLab, lbs: &[Lbd]) {
    let target: SocketAddr = format!("{FLOATING}:{PORT}").parse().unwrap();
    move_floating(lab, lbs, None, 0);
    // From ports outside the client's ephemeral range: a port the connections above used may
    // still be held for a task's TIME_WAIT, and a connection opened on it gets another port
    // (a clash), which only the node that opened it knows, so it could not move.
    let mut held = open_to(lab, SERVICE, target, ON_FLOATING, Some(FLOATING_PORTS));
    let remote = local_tasks(&lab.nodes[1], SERVICE);
    let through_tunnel = held.iter().filter(|h| remote.contains(&h.task)).count();
    assert!(
        (1..ON_FLOATING).contains(&through_tunnel),
        "connections reach the tasks of both nodes: {through_tunnel} of {ON_FLOATING} node 2's"
    );
    for (from, to) in [(0, 1), (1, 0)] {
        let step = Instant::now();
        move_floating(lab, lbs, Some(from), to);
        let round = ask_all(&mut held);
        assert!(
            round.failed.is_empty(),
            "{FLOATING} moved to node {}: every connection answers from its task, which sees \
             its port as before: {:?}",
            to + 1,
            round.failed
        );
        println!(
            "held: {FLOATING} moved to node {}: {} connections kept ({through_tunnel} of them \
             to node 2's tasks), step {:?}",
            to + 1,
            round.kept,
            step.elapsed()
        );
    }
    lab.nodes[0]
        .ns
        .ip(&["addr", "del", &format!("{FLOATING}/32"), "dev", "eth0"])
        .expect("the floating address removed");
    lab.client
        .ip(&["neigh", "del", FLOATING, "dev", "eth0"])
        .expect("the client's neighbour entry removed");
}

/// `n` connections from the client to `target`, each asked once: the task of `service` it
/// reached and the port that task sees. From client ports `first_port` and up if given (then
/// the task must see each one's own port), else ephemeral ones.
pub fn open_to(
    lab: &SwarmLab,
    service: &str,
    target: SocketAddr,
    n: usize,
    first_port: Option<u16>,
) -> Vec<Held> {
    let tasks: BTreeSet<String> = swarm_tasks(lab, service);
    (0..n)
        .map(|i| {
            let local = first_port.map(|p| SocketAddr::new(CLIENT_ADDR.into(), p + i as u16));
            let mut session = TcpSession::connect_from(&lab.client, local, target, ROUND)
                .unwrap_or_else(|e| panic!("connection {i} to {target}: {e:#}"));
            let reply = session
                .request()
                .unwrap_or_else(|e| panic!("connection {i} to {target}: {e:#}"));
            assert!(tasks.contains(&reply.backend), "{reply:?} not in {tasks:?}");
            if local.is_some() {
                assert_eq!(reply.seen_port, session.local_addr().port(), "{reply:?}");
            }
            Held {
                task: reply.backend,
                seen_port: reply.seen_port,
                session,
            }
        })
        .collect()
}

/// Puts `FLOATING` on node `to`'s underlay port (off node `from`'s), waits until `to`'s lbd
/// serves the published port there, then points the client at `to`: a packet that reached
/// the node's own stack first would be answered with a RST.
fn move_floating(lab: &SwarmLab, lbs: &[Lbd], from: Option<usize>, to: usize) {
    let addr = format!("{FLOATING}/32");
    let node = &lab.nodes[to];
    node.ns
        .ip(&["addr", "add", &addr, "dev", "eth0"])
        .expect("the floating address added");
    let dst = format!("{FLOATING}:{PORT}");
    within(
        PROGRAMMED,
        "lbd serves the published port on the new address",
        || {
            lbs[to]
                .lbctl(&["explain", "tcp", "198.18.50.100:40000", &dst])
                .is_ok_and(|(ok, out, _)| ok && out.contains("slot "))
        },
    );
    if let Some(from) = from {
        lab.nodes[from]
            .ns
            .ip(&["addr", "del", &addr, "dev", "eth0"])
            .expect("the floating address removed");
    }
    let link = node.ns.ip(&["link", "show", "dev", "eth0"]).expect("eth0");
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no MAC in {link:?}"));
    lab.client
        .ip(&[
            "neigh",
            "replace",
            FLOATING,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("the client's neighbour entry");
}

/// `PER_NODE` connections by each node's address; each asked once, so it knows its task.
/// Every task gets connections by each node, and sees the client's own address and port.
fn open(lab: &SwarmLab, tasks: &BTreeSet<String>) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for node in &lab.nodes {
        let target = SocketAddr::new(IpAddr::V4(node.addr), PORT);
        let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..PER_NODE {
            let mut session = TcpSession::connect(&lab.client, target, ROUND)
                .unwrap_or_else(|e| panic!("connection {i} to {target}: {e:#}"));
            let reply = session
                .request()
                .unwrap_or_else(|e| panic!("connection {i} to {target}: {e:#}"));
            let local = session.local_addr();
            assert_eq!(
                reply.seen_ip,
                local.ip(),
                "the task sees the client's own address: {reply:?}"
            );
            // Linux may give this connection the local port of one held through the other
            // node; if both reach the same task, this one is remapped (README, "two nodes at
            // once"). Otherwise the task sees the client's own port.
            let clashes = held
                .iter()
                .any(|h| h.session.local_addr().port() == local.port() && h.task == reply.backend);
            assert!(
                reply.seen_port == local.port()
                    || (clashes
                        && (FULLNAT_PORT_MIN..=FULLNAT_PORT_MAX).contains(&reply.seen_port)),
                "the task sees the client's own port (or, on a clash with a held connection, a \
                 remapped one): {reply:?}"
            );
            assert!(tasks.contains(&reply.backend), "{reply:?} not in {tasks:?}");
            *per_task.entry(reply.backend.clone()).or_default() += 1;
            held.push(Held {
                session,
                task: reply.backend,
                seen_port: reply.seen_port,
            });
        }
        assert_eq!(
            per_task.len(),
            tasks.len(),
            "node {}: connections reach every task (local and remote): {per_task:?}",
            node.index
        );
    }
    held
}

/// One request over every held connection, all at once (a connection that no longer answers
/// costs one `ROUND`, not one each).
pub fn ask_all(held: &mut [Held]) -> Round {
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let asks: Vec<_> = held
            .iter_mut()
            .map(|h| {
                scope.spawn(move || {
                    let session = &mut h.session;
                    session.set_timeout(ROUND).map_err(|e| format!("{e:#}"))?;
                    let reply = session.request().map_err(|e| format!("{e:#}"))?;
                    let seen = SocketAddr::new(session.local_addr().ip(), h.seen_port);
                    if !reply.saw(seen) {
                        return Err(format!("the task saw another client: {reply:?}"));
                    }
                    Ok(reply.backend)
                })
            })
            .collect();
        asks.into_iter()
            .map(|a| a.join().expect("request thread"))
            .collect()
    });
    let mut round = Round {
        kept: 0,
        failed: Vec::new(),
    };
    for (i, (h, result)) in held.iter().zip(results).enumerate() {
        match result {
            Ok(task) if task == h.task => round.kept += 1,
            Ok(task) => panic!(
                "connection {i} ({}) moved from task {} to task {task}",
                h.session.local_addr(),
                h.task
            ),
            Err(e) => round.failed.push((i, e)),
        }
    }
    round
}

/// The generation of `lb`'s running configuration (one more per change applied).
fn generation(lb: &Lbd) -> u64 {
    lb.lbctl_json(&["status"]).expect("lbctl status")["generation"]
        .as_u64()
        .expect("generation")
}

/// Backends in the running plan of `service` (what `lbctl stats` counts), which leaves out
/// tasks on nodes that are not peers yet; `lbctl list` shows the swarm's view.
fn planned(lb: &Lbd, service: &str) -> usize {
    let report = lb.lbctl_json(&["stats"]).expect("lbctl stats");
    let targets: BTreeSet<String> = report["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .filter_map(|b| b["target"].as_str().map(str::to_owned))
        .collect();
    targets.len()
}
