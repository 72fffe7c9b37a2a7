//! A swarm service's policy VIP behind ECMP (issue 15 with the mesh): each node's `lbd`
//! announces the VIP through its own BIRD to a router (a BIRD in the client's namespace, its
//! kernel spreading connections over both nodes by their ports). Connections to the VIP
//! enter both nodes and reach tasks on both; when one node's BIRD dies, the router sends
//! every connection to the other node, and when it comes back, some back again: each
//! connection answers from its task, which sees the client's port as before. From inside node
//! 1, a task and containers on its other bridge networks reach every task by the VIP and the
//! published port.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_testkit::{
    ChildGuard, Lbd, ScratchPath, TcpSession,
    routing::{kill_bird, node_conf, start_bird, wait_hops},
    swarm::{CLIENT_ADDR, IMAGE, SwarmLab, SwarmNode, start_lbd_with},
};

use super::{
    EVERY_TASK, FOLLOW, TASKS, backends, container_answers,
    held::{Held, ask_all, open_to},
    local_tasks, swarm_tasks, within,
};

/// The service held to, its published port (the name server), and its policy VIP.
pub const SERVICE: &str = "anycast";
pub const PORT: u16 = 82;
const VIP: &str = "198.18.100.50";
const CONNECTIONS: usize = 40;
/// The BGP hold time the nodes and the router agree on: how long the router takes at most
/// to drop a node that went silent (a killed BIRD's session is closed by its kernel at once).
const HOLD_S: u64 = 3;
/// How long the router may take to learn a route (sessions set up, BIRD reconfigured).
const CONVERGE: Duration = Duration::from_secs(30);

/// One node's BIRD and what lbd writes for it.
struct Speaker {
    dir: ScratchPath,
    bird: Option<ChildGuard>,
}

impl Speaker {
    fn include(&self) -> PathBuf {
        self.dir.join("vips.conf")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// Starts the node's BIRD: one session to the router, exporting lbd's VIPs.
    fn start(&mut self, node: &SwarmNode) {
        let own = node.addr.to_string();
        let conf = node_conf(&own, &CLIENT_ADDR.to_string(), &self.include(), HOLD_S);
        self.bird = Some(start_bird(&node.ns, &self.dir, &conf));
    }

    /// Kills its BIRD (its kernel closes the session: the router drops the node at once).
    fn kill(&mut self) {
        kill_bird(self.bird.take().expect("bird"));
    }
}

/// The router in the client's namespace: a session to each node, both next hops installed,
/// connections spread over them by their ports.
fn start_router(lab: &SwarmLab, dir: &Path) -> ChildGuard {
    lab.client
        .set_sysctl("net.ipv4.fib_multipath_hash_policy", "1")
        .expect("ECMP by ports");
    let sessions: String = lab
        .nodes
        .iter()
        .map(|n| {
            format!(
                "protocol bgp node_{i} from node {{ neighbor {addr} as 65010; }}\n",
                i = n.index,
                addr = n.addr
            )
        })
        .collect();
    let conf = format!(
        "router id {CLIENT_ADDR};
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
template bgp node {{
  local {CLIENT_ADDR} as 65000;
  hold time {HOLD_S}; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
{sessions}"
    );
    start_bird(&lab.client, dir, &conf)
}

/// `lbd` on `node`, serving `SERVICE` on `VIP` too and announcing it through `speaker`'s
/// BIRD (started once lbd wrote the include file it reads).
fn start_node(lbd: &Path, node: &SwarmNode, speaker: &mut Speaker) -> Lbd {
    let services = format!(
        "swarm:\n  {SERVICE}: {{ vip: {VIP} }}\nservices: {{}}\nlbd:\n  bgp:\n    bird_include: \
         {}\n    birdc_socket: {}\n",
        speaker.include().display(),
        speaker.socket().display()
    );
    // Socket-level balancing on (at the cgroup root: only the sockets of lbd's own namespace
    // and of the swarm's containers on overlay networks are translated), as a node runs it.
    let lb =
        start_lbd_with(lbd, node, &services, &["--socket-lb", "on"]).expect("lbd --swarm with BGP");
    within(
        Duration::from_secs(5),
        "lbd writes BIRD's include file",
        || speaker.include().exists(),
    );
    speaker.start(node);
    lb
}

/// New flows `lb` counted for `SERVICE`'s VIP.
fn new_flows_on_vip(lb: &Lbd) -> u64 {
    let stats = lb.lbctl_json(&["stats"]).expect("lbctl stats");
    stats["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == format!("{SERVICE}.vip"))
        .filter_map(|s| s["totals"]["new_flows"].as_u64())
        .sum()
}

pub fn connections_survive_a_node_leaving_the_ecmp_route(lab: &SwarmLab, lbd: &Path) {
    let mut speakers: Vec<Speaker> = lab
        .nodes
        .iter()
        .map(|n| {
            let dir = ScratchPath::temp(&format!("anycast-bird{}", n.index), "");
            std::fs::create_dir_all(&*dir).expect("BIRD's directory");
            Speaker { dir, bird: None }
        })
        .collect();
    let mut lbs: Vec<Lbd> = lab
        .nodes
        .iter()
        .zip(&mut speakers)
        .map(|(node, speaker)| start_node(lbd, node, speaker))
        .collect();
    for lb in &lbs {
        within(TASKS, "lbd programs the 4 tasks on the VIP", || {
            backends(lb, &format!("{SERVICE}.vip")) == Some(4)
        });
    }
    let (ok, list, _) = lbs[0].lbctl(&["list"]).expect("lbctl list");
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("swarm {SERVICE}:")))
        .unwrap_or_default();
    assert!(
        ok && line.ends_with(&format!("; policy VIP: {VIP} (service {SERVICE}.vip)")),
        "lbctl list names the policy VIP on the swarm service's line: {list}"
    );
    let router_dir = ScratchPath::temp("anycast-router", "");
    std::fs::create_dir_all(&*router_dir).expect("the router's directory");
    let _router = start_router(lab, &router_dir);
    let [one, two] = [lab.nodes[0].addr, lab.nodes[1].addr].map(|a| a.to_string());
    let took = wait_hops(&lab.client, VIP, &[&one, &two], CONVERGE);
    println!("anycast: {VIP} via both nodes after {took:?}");

    let target: SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
    let mut held: Vec<Held> = open_to(lab, SERVICE, target, CONNECTIONS, None);
    let entered: Vec<u64> = lbs.iter().map(new_flows_on_vip).collect();
    assert!(
        entered.iter().all(|&n| n > 0),
        "the router spreads the connections over both nodes: {entered:?}"
    );
    let remote = local_tasks(&lab.nodes[1], SERVICE);
    let on_two = held.iter().filter(|h| remote.contains(&h.task)).count();
    assert!(
        (1..CONNECTIONS).contains(&on_two),
        "connections reach the tasks of both nodes: {on_two} of {CONNECTIONS} node 2's"
    );

    a_task_reaches_the_vip_and_its_nodes_port(lab, target);

    // Node 1's BIRD dies: the router drops it within the hold time, and every connection
    // now enters node 2, which reaches node 1's tasks through the tunnel.
    speakers[0].kill();
    let took = wait_hops(&lab.client, VIP, &[&two], Duration::from_secs(HOLD_S + 3));
    let round = ask_all(&mut held);
    assert!(
        round.failed.is_empty(),
        "node 1 left the route ({took:?}): every connection answers from its task, which sees \
         its port as before: {:?}",
        round.failed
    );
    println!(
        "anycast: node 1 left the route after {took:?}: {} connections kept ({on_two} to node \
         2's tasks)",
        round.kept
    );

    // Back: the router spreads the connections over both nodes again, so some move back to
    // node 1 (new flows there, placed mid-flow).
    let entered_one = new_flows_on_vip(&lbs[0]);
    speakers[0].start(&lab.nodes[0]);
    let took = wait_hops(&lab.client, VIP, &[&one, &two], CONVERGE);
    let round = ask_all(&mut held);
    assert!(
        round.failed.is_empty(),
        "node 1 back in the route: every connection answers from its task: {:?}",
        round.failed
    );
    assert!(
        new_flows_on_vip(&lbs[0]) > entered_one,
        "some connections moved back to node 1"
    );
    println!(
        "anycast: node 1 back after {took:?}: {} connections kept",
        round.kept
    );

    the_nodes_other_containers_reach_its_port_and_the_vip(lab, &mut lbs[0], target);
}

/// From inside the swarm: a task on node 1 (a container on its `docker_gwbridge`) calls the
/// VIP and node 1's published port, over TCP and UDP. Every task answers: node 1's own, the caller included,
/// through node 1 (hairpin: they see node 1's address on the bridge, and the caller gets their
/// answers from the address it called, not straight from theirs), node 2's through the
/// tunnel, seeing the caller's own address.
fn a_task_reaches_the_vip_and_its_nodes_port(lab: &SwarmLab, vip: SocketAddr) {
    let node = &lab.nodes[0];
    let here = local_tasks(node, SERVICE);
    let every: BTreeSet<String> = swarm_tasks(lab, SERVICE);
    let caller = here.first().expect("a task on node 1").clone();
    let gateway = node.gwbridge_gateway().to_string();
    let caller_addr = node
        .gwbridge_addresses()
        .expect("docker_gwbridge inspected")
        .into_iter()
        .find(|(id, _)| id.starts_with(&caller))
        .map(|(_, a)| a.to_string())
        .expect("the caller's address on docker_gwbridge");
    for (proto, to) in ["tcp", "udp"]
        .into_iter()
        .flat_map(|p| [(p, vip), (p, SocketAddr::new(node.addr.into(), PORT))])
    {
        let answers = container_answers(node, &caller, proto, &to.to_string(), EVERY_TASK);
        assert_eq!(
            answers.len(),
            EVERY_TASK,
            "{proto} {to}: every request answered"
        );
        let hosts: BTreeSet<String> = answers.iter().map(|w| w.host.clone()).collect();
        assert_eq!(hosts, every, "{proto} {to}: every task answers");
        for who in &answers {
            let seen = if here.contains(&who.host) {
                &gateway
            } else {
                &caller_addr
            };
            assert_eq!(&who.seen, seen, "{proto} {to}: what {} sees", who.host);
        }
    }
    // The node's own processes: their sockets go straight to a task, or to the other node's
    // published port for its tasks (the socket-level path).
    let answered: BTreeSet<String> = (0..EVERY_TASK)
        .map(|i| {
            let mut session = TcpSession::connect_from(&node.ns, None, vip, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("node 1's connection {i} to {vip}: {e:#}"));
            session
                .request()
                .unwrap_or_else(|e| panic!("node 1's connection {i} to {vip}: {e:#}"))
                .backend
        })
        .collect();
    assert_eq!(answered, every, "node 1's own connections reach every task");
    println!(
        "anycast: a task on node 1 reached every task by the VIP and node 1's port, and node 1 \
         by the VIP"
    );
}

/// A user bridge network on node 1, made while lbd runs, and its subnet.
const USERS: &str = "mlb-users";
const USERS_SUBNET: &str = "198.18.90.0/24";
/// Another, without containers, removed while lbd is down.
const GONE: &str = "mlb-gone";
const GONE_SUBNET: &str = "198.18.91.0/24";

/// The node's other containers, on its local bridge networks: one on `docker0` (a plain
/// `docker run`) and one on a user bridge network made while lbd runs. They call node 1's
/// published port and the VIP through their bridge, which lbd attached to as the Engine listed
/// it (Docker's own mesh catches these packets in iptables; without lbd on the bridge they
/// reach the node's stack, where nothing listens): every task answers, over TCP and UDP, and
/// sees the container's own address. A restarted lbd adopts both bridges' links and serves
/// them as before. Once the network is removed, lbd takes its programs off the bridge and
/// forgets it; so does an lbd started after a network was removed while none ran.
fn the_nodes_other_containers_reach_its_port_and_the_vip(
    lab: &SwarmLab,
    lb: &mut Lbd,
    vip: SocketAddr,
) {
    let node = &lab.nodes[0];
    let every: BTreeSet<String> = swarm_tasks(lab, SERVICE);
    let [bridge, gone] = [(USERS, USERS_SUBNET), (GONE, GONE_SUBNET)].map(|(name, subnet)| {
        node.docker(&[
            "network", "create", "--driver", "bridge", "--subnet", subnet, name,
        ])
        .expect("a user bridge network");
        let id = node
            .docker(&["network", "inspect", "--format", "{{.Id}}", name])
            .expect("its id");
        format!("br-{}", &id.trim()[..12])
    });
    let callers = [("mlb-plain", None), ("mlb-user", Some(USERS))];
    for (name, network) in callers {
        let mut run = vec!["run", "-d", "--name", name];
        run.extend(network.iter().flat_map(|n| ["--network", *n]));
        run.push(IMAGE);
        node.docker(&run).expect("a container beside the swarm's");
    }
    within(FOLLOW, "lbd attaches to the new networks' bridges", || {
        let now = attached(lb);
        now.contains_key(&bridge) && now.contains_key(&gone)
    });
    assert!(attached(lb).contains_key("docker0"), "{:?}", attached(lb));
    for (name, _) in callers {
        every_task_answers(node, name, vip, &every);
    }
    // A restart swaps the new programs into the bridges' pinned links, as for any interface.
    lb.restart(&node.ns).expect("lbd restarted");
    within(TASKS, "the restarted lbd programs the 4 tasks", || {
        backends(lb, &format!("{SERVICE}.vip")) == Some(4)
    });
    let after = attached(lb);
    assert_eq!(
        (after.get("docker0"), after.get(&bridge)),
        (Some(&true), Some(&true)),
        "the restarted lbd adopts both bridges' links: {after:?}"
    );
    for (name, _) in callers {
        every_task_answers(node, name, vip, &every);
    }
    // Removed while no lbd runs: the next one, which kept its links at the start, lets them go
    // once the Engine no longer lists the network.
    lb.stop_keeping_pins().expect("lbd stopped");
    node.docker(&["network", "rm", GONE])
        .expect("rm the network");
    lb.restart(&node.ns).expect("lbd started again");
    within(
        FOLLOW,
        "the new lbd lets the removed network's bridge go",
        || !attached(lb).contains_key(&gone) && !pinned(lb, &gone),
    );
    node.docker(&["rm", "-f", "mlb-user", "mlb-plain"])
        .expect("rm the containers");
    node.docker(&["network", "rm", USERS])
        .expect("rm the network");
    within(FOLLOW, "lbd forgets the removed network's bridge", || {
        !attached(lb).contains_key(&bridge)
    });
    assert!(!pinned(lb, &bridge), "{bridge} unpinned");
    let (healthy, status, _) = lb.lbctl(&["status"]).expect("lbctl status");
    assert!(
        healthy,
        "no interface missing once the bridge is forgotten: {status}"
    );
    println!(
        "anycast: containers on docker0 and on a user bridge reached every task by the VIP and \
         node 1's port, TCP and UDP, before and after lbd restarted; the bridges of networks \
         removed while lbd ran ({bridge}) and while it did not ({gone}) were released"
    );
}

/// Container `name` on `node` calls the VIP and the node's published port, over TCP and UDP:
/// every task answers, and sees the container's own address.
fn every_task_answers(node: &SwarmNode, name: &str, vip: SocketAddr, every: &BTreeSet<String>) {
    let own = node
        .docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
        .expect("the container's address");
    let own = own.trim();
    for proto in ["tcp", "udp"] {
        for to in [vip, SocketAddr::new(node.addr.into(), PORT)] {
            let answers = container_answers(node, name, proto, &to.to_string(), EVERY_TASK);
            assert_eq!(
                answers.len(),
                EVERY_TASK,
                "{name}, {proto} {to}: every request answered"
            );
            let hosts: BTreeSet<String> = answers.iter().map(|w| w.host.clone()).collect();
            assert_eq!(&hosts, every, "{name}, {proto} {to}: every task answers");
            assert!(
                answers.iter().all(|w| w.seen == own),
                "{name}, {proto} {to}: every task sees the container's own address {own}: \
                 {answers:?}"
            );
        }
    }
}

/// The interfaces `lb` is attached to, and whether each link was adopted from an earlier lbd.
fn attached(lb: &Lbd) -> std::collections::BTreeMap<String, bool> {
    lb.attachments()
        .expect("lbctl status")
        .into_iter()
        .map(|a| (a.interface, a.adopted))
        .collect()
}

/// Whether `lb` holds a pinned XDP or TC link for `interface`.
fn pinned(lb: &Lbd, interface: &str) -> bool {
    ["xdp", "tc"].iter().any(|kind| {
        lb.pin_dir()
            .join("links")
            .join(kind)
            .join(interface)
            .exists()
    })
}
