//! `lbd --swarm` on a real two-node Docker Swarm (`lb_testkit::swarm`): one `lbd` per node,
//! in the node's namespace, following that node's Engine. Published ports answer on both
//! node addresses from the node's own tasks, which see the client's address; service VIPs
//! answer containers on their network and no others; the swarm's changes are followed; an
//! Engine that stops answering leaves forwarding as it was; long-lived connections through the
//! mesh keep their task, also when the address they connected to moves to the other node
//! (`held`); large transfers cross it at underlay MTUs 1500 and 1400
//! (`bulk`). A service's policy VIP announced by both nodes through BGP keeps its
//! connections when a node leaves the ECMP route, and the node's containers, tasks or not, reach
//! it and the node's published port (`anycast`).

#[path = "swarm/anycast.rs"]
mod anycast;
#[path = "swarm/bulk.rs"]
mod bulk;
#[path = "swarm/held.rs"]
mod held;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use lb_testkit::{
    Lbd, Proto, e2e_enabled,
    swarm::{
        CLIENT_ADDR, ECHO_PORT, Publish, SwarmLab, SwarmNode, WHO_PORT, Who, http_who, parse_who,
    },
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// The swarm's changes must reach new connections within this (issue 12).
const FOLLOW: Duration = Duration::from_secs(2);
/// Tasks may take this long to start or stop (image already local).
const TASKS: Duration = Duration::from_secs(60);
/// Requests a check makes that every one of 4 tasks must answer: each request picks a task
/// at random (by its client port or socket), and 4 × (3/4)^64 ≈ 4e-8 is the chance that one
/// task is missed (at 40 it was 4e-5, for each of the six such checks).
const EVERY_TASK: usize = 64;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

/// Two labs at once would share two cores between four dockerds.
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// With the systemd unit's capabilities only: this test exercises every part of `--swarm`
/// (published ports, the mesh, VIPs for containers), so it finds one the unit lacks.
fn start_lbd(node: &SwarmNode) -> Lbd {
    let unit = Path::new(lb_testkit::capabilities::UNIT);
    let bounding = lb_testkit::capabilities::BoundingSet::of_unit(unit).expect("the unit");
    Lbd::start_bounded(
        lbd(),
        &node.ns,
        "services: {}\n",
        &["eth0", "docker_gwbridge"],
        &[
            "--swarm",
            "--docker-host",
            &node.docker_host,
            // The cgroup v2 root: only sockets of the namespaces lbd lists (its own and the
            // containers on overlay networks) are ever translated.
            "--socket-lb",
            "on",
        ],
        Some(bounding),
    )
    .expect("lbd --swarm")
}

/// Container ids (as hostnames: 12 characters) of `service`'s running tasks on `node`.
fn local_tasks(node: &SwarmNode, service: &str) -> BTreeSet<String> {
    node.docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
        "--format",
        "{{.ID}}",
    ])
    .expect("docker ps")
    .lines()
    .map(|l| l.trim().chars().take(12).collect())
    .collect()
}

/// Container ids of `service`'s running tasks on every node.
fn swarm_tasks(lab: &SwarmLab, service: &str) -> BTreeSet<String> {
    lab.nodes
        .iter()
        .flat_map(|node| local_tasks(node, service))
        .collect()
}

/// `n` requests from the client to `addr`; every answer. A request that times out is made
/// once more (said on stdout): on a loaded 2-core machine running two dockerds, a connection
/// attempt now and then takes longer than `TIMEOUT`; a second failure fails the test.
fn ask(lab: &SwarmLab, addr: SocketAddr, n: usize) -> Vec<Who> {
    (0..n)
        .map(|i| {
            http_who(&lab.client, addr, TIMEOUT)
                .or_else(|e| {
                    println!("request {i} to {addr}: {e:#}; once more");
                    http_who(&lab.client, addr, TIMEOUT)
                })
                .unwrap_or_else(|e| panic!("request {i} to {addr}: {e:#}"))
        })
        .collect()
}

/// The number of backends `lbd` programs for `service`.
fn backends(lb: &Lbd, service: &str) -> Option<usize> {
    let list = lb.lbctl_json(&["list"]).expect("lbctl list");
    list["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)
        .map(|s| s["backends"].as_array().map_or(0, Vec::len))
}

/// Waits (bounded) until `check` holds; the time it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded by TASKS) until `service` has its `n` containers and every node's Engine
/// lists them on `network`: lbd follows that view, which may lag the containers (once by over
/// 2 s, Docker's lag, not lbd's), so FOLLOW counts from there. Past TASKS, from then.
fn engines_list(lab: &SwarmLab, network: &str, service: &str, n: usize) {
    match lab
        .wait_listed(network, service, n, TASKS)
        .expect("the Engines' view")
    {
        Some(took) => println!("{service}: every Engine lists its {n} tasks after {took:?}"),
        None => println!("{service}: the Engines' view still differs after {TASKS:?}"),
    }
}

/// A counter or gauge of `node`'s lbd, from its metrics endpoint (0 when absent).
fn metric(node: &SwarmNode, name: &str) -> u64 {
    let text = lb_testkit::metrics(&node.ns).expect("metrics");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `count` requests (TCP connections or UDP datagrams, each from a new port) from container
/// `name` on `node` to `target` (`ADDR:PORT`, the image's name server behind it); the answers
/// (a request that failed is left out: the callers check who answered).
fn container_answers(
    node: &SwarmNode,
    name: &str,
    proto: &str,
    target: &str,
    count: usize,
) -> Vec<Who> {
    let script = format!("/bin/who-server ask {proto} {target} {count}");
    in_container(node, name, &script)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("error"))
        .filter_map(parse_who)
        // The name server says "HOST IP PORT": keep the address.
        .map(|w| Who {
            seen: w.seen.split(' ').next().unwrap_or_default().to_owned(),
            ..w
        })
        .collect()
}

/// Runs `sh -c SCRIPT` in container `name` on `node`; its output, or None when it failed.
fn in_container(node: &SwarmNode, name: &str, script: &str) -> Option<String> {
    node.docker(&["exec", name, "sh", "-c", script]).ok()
}

#[test]
fn published_ports_vips_and_changes_on_a_real_swarm() {
    if !e2e_enabled() {
        return;
    }
    let _one = one_lab();
    let mut lab = SwarmLab::start().expect("swarm lab");
    // A second's grace to stop (httpd ignores SIGTERM): scale-downs and updates go faster.
    lab.create_service(
        "web",
        4,
        &[
            "--publish",
            "published=80,target=8080",
            "--stop-grace-period",
            "1s",
        ],
    )
    .expect("web");
    lab.manager()
        .docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "198.19.10.0/24",
            "appnet",
        ])
        .expect("appnet");
    lab.create_service(
        "api",
        4,
        &["--network", "appnet", "--placement-pref", "spread=node.id"],
    )
    .expect("api");
    lab.create_published(
        held::SERVICE,
        4,
        &[Publish::ingress(held::PORT, WHO_PORT, Proto::Tcp)],
        &["--stop-grace-period", "1s"],
    )
    .expect("held");
    lab.create_published(
        bulk::SERVICE,
        1,
        &Publish::ingress_tcp_and_udp(bulk::PORT, ECHO_PORT),
        bulk::PLACEMENT,
    )
    .expect("bulk");
    lab.wait_running("web", 4, TASKS).expect("web tasks");
    lab.wait_running("api", 4, TASKS).expect("api tasks");
    lab.wait_running(held::SERVICE, 4, TASKS)
        .expect("held tasks");
    lab.wait_running(bulk::SERVICE, 1, TASKS)
        .expect("bulk task");

    let lbs: Vec<Lbd> = lab.nodes.iter().map(start_lbd).collect();

    // Published port: each node answers from every task, its own and (through the mesh
    // tunnel) the other node's, and each task sees the client's own address.
    let all_web: BTreeSet<String> = swarm_tasks(&lab, "web");
    assert_eq!(all_web.len(), 4);
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        within(Duration::from_secs(5), "lbd programs every task", || {
            backends(lb, "web") == Some(4)
        });
        let addr = SocketAddr::new(IpAddr::V4(node.addr), 80);
        let answers = ask(&lab, addr, EVERY_TASK);
        let hosts: BTreeSet<String> = answers.iter().map(|w| w.host.clone()).collect();
        assert_eq!(
            hosts, all_web,
            "node {}: answered by every task",
            node.index
        );
        assert!(
            answers.iter().all(|w| w.seen == CLIENT_ADDR.to_string()),
            "{answers:?}"
        );
        let (_, list, _) = lb.lbctl(&["list"]).expect("lbctl list");
        assert!(list.contains("swarm"), "{list}");
        assert!(list.contains("through the mesh tunnel"), "{list}");
        // Its backends are the swarm's: the API says so rather than "no service".
        let (ok, _, err) = lb
            .lbctl(&["drain", "web", "198.19.0.250"])
            .expect("lbctl drain");
        assert!(!ok && err.contains("comes from the swarm"), "{err}");
    }
    // Nodes whose egress completes checksums itself, as NICs do: the tasks' replies (their
    // checksums left partial by the containers' sockets, then translated by generic XDP on
    // docker_gwbridge) still reach the client from every task, local and across the tunnel.
    lab.set_node_checksum_offload(false)
        .expect("checksum offload off");
    for node in &lab.nodes {
        let answers = ask(&lab, SocketAddr::new(IpAddr::V4(node.addr), 80), EVERY_TASK);
        let hosts: BTreeSet<String> = answers.iter().map(|w| w.host.clone()).collect();
        assert_eq!(
            hosts, all_web,
            "node {} with checksums completed in software: answered by every task",
            node.index
        );
    }
    lab.set_node_checksum_offload(true)
        .expect("checksum offload on");

    // A connection gets the same task whichever node it enters by (the swarm's default
    // affinity hashes it without the node address; both tables are alike): same slot.
    let slots: Vec<String> = lab
        .nodes
        .iter()
        .zip(&lbs)
        .map(|(node, lb)| {
            let dst = format!("{}:80", node.addr);
            let (ok, out, err) = lb
                .lbctl(&["explain", "tcp", "198.18.50.100:40000", &dst])
                .expect("lbctl explain");
            assert!(ok, "explain: {err}");
            out.split("slot ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| panic!("no slot in {out:?}"))
                .to_owned()
        })
        .collect();
    assert_eq!(slots[0], slots[1], "the same slot from either node");
    assert!(metric(&lab.nodes[0], "meshlb_events_total{event=\"tunnel_sent\"}") > 0);
    assert!(
        metric(
            &lab.nodes[1],
            "meshlb_events_total{event=\"tunnel_received\"}"
        ) > 0
    );

    // Nobody but a peer node uses the tunnel or a task's delivery frontend: the client aims
    // at a task's ingress address through node 1, then sends node 1 a forged tunnel packet.
    lab.client
        .ip(&[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &lab.nodes[0].addr.to_string(),
        ])
        .expect("route to the ingress network");
    // A web task's: its delivery frontend is on the port it serves (8080).
    let task_ingress = lab.nodes[0]
        .tasks("web")
        .expect("node 1's web tasks")
        .iter()
        .find_map(|t| t.ingress_addr())
        .expect("a local web task's ingress address");
    let direct: SocketAddr = format!("{task_ingress}:8080").parse().unwrap();
    assert!(
        http_who(&lab.client, direct, Duration::from_secs(1)).is_err(),
        "a task's delivery frontend must refuse what did not come through the tunnel"
    );
    // Nor do the node's own sockets reach the task by it: the socket-level path leaves the
    // address alone (the node has no route into the ingress network).
    assert!(
        http_who(&lab.nodes[0].ns, direct, Duration::from_secs(1)).is_err(),
        "a node's socket must not be sent to a task by its delivery frontend"
    );
    assert!(
        metric(
            &lab.nodes[0],
            "meshlb_dropped_packets_total{reason=\"tunnel_only\"}"
        ) > 0
    );
    let tunnel = SocketAddr::new(IpAddr::V4(lab.nodes[0].addr), lb_common::maps::tunnel::PORT);
    lab.client
        .run(move || -> std::io::Result<()> {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            // A forged inner IPv4 packet.
            socket.send_to(&[0x45; 40], tunnel)?;
            Ok(())
        })
        .expect("setns")
        .expect("send");
    within(
        Duration::from_secs(3),
        "the forged tunnel packet is dropped and counted",
        || {
            metric(
                &lab.nodes[0],
                "meshlb_dropped_packets_total{reason=\"tunnel_not_peer\"}",
            ) > 0
        },
    );

    // Scale up under held connections (10 per node, opened before): each still reaches the
    // task it had; then the new tasks get connections too.
    let mut held = Vec::new();
    for node in &lab.nodes {
        let addr = SocketAddr::new(IpAddr::V4(node.addr), 80);
        for _ in 0..10 {
            let stream = lab
                .client
                .run(move || std::net::TcpStream::connect_timeout(&addr, TIMEOUT))
                .expect("setns")
                .expect("connect");
            held.push(stream);
        }
    }
    lab.manager()
        .docker(&["service", "scale", "-d", "web=6"])
        .expect("scale up");
    lab.wait_running("web", 6, TASKS).expect("scaled up");
    for lb in &lbs {
        within(FOLLOW * 3, "scale up followed", || {
            backends(lb, "web") == Some(6)
        });
    }
    for (i, mut stream) in held.into_iter().enumerate() {
        use std::io::{Read as _, Write as _};
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
            .write_all(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n")
            .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        let who = parse_who(&text).unwrap_or_else(|| panic!("held connection {i}: {text:?}"));
        assert!(
            all_web.contains(&who.host),
            "held connection {i} went to a new task"
        );
    }

    // A service VIP, from a container on its network, by name (Docker's DNS answers the
    // VIP) and by address, TCP and UDP: every task (two per node, across the overlay)
    // answers and sees the container.
    let node1 = &lab.nodes[0];
    let starts = |lb: &Lbd| {
        let status = lb.lbctl_json(&["status"]).expect("status");
        status["swarm"]["container_starts"]
            .as_u64()
            .expect("container_starts")
    };
    let starts_before = starts(&lbs[0]);
    node1
        .docker(&[
            "run",
            "-d",
            "--name",
            "cli",
            "--network",
            "appnet",
            lb_testkit::swarm::IMAGE,
        ])
        .expect("client container");
    node1
        .docker(&["run", "-d", "--name", "outsider", lb_testkit::swarm::IMAGE])
        .expect("outsider container");
    let cli_addr = node1
        .docker(&[
            "inspect",
            "--format",
            "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}",
            "cli",
        ])
        .expect("cli address")
        .trim()
        .to_owned();
    let get = "printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc api 8080";
    // lbd heard the containers start (and read the Engine at once, so their namespaces are
    // served before the next poll).
    within(FOLLOW, "lbd hears the containers start", || {
        starts(&lbs[0]) >= starts_before + 2
    });
    within(
        Duration::from_secs(5),
        "the VIP answers the container",
        || in_container(node1, "cli", get).is_some_and(|out| parse_who(&out).is_some()),
    );
    let all_api: BTreeSet<String> = swarm_tasks(&lab, "api");
    assert_eq!(all_api.len(), 4, "{all_api:?}");
    for _ in 0..4 {
        let out = in_container(node1, "cli", get).expect("VIP request by name");
        let who = parse_who(&out).unwrap_or_else(|| panic!("answer {out:?}"));
        assert_eq!(
            who.seen, cli_addr,
            "the task sees the container's own address"
        );
        assert!(all_api.contains(&who.host), "{who:?}");
    }
    let vip = lab
        .manager()
        .docker(&[
            "service",
            "inspect",
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
            "api",
        ])
        .expect("api VIP");
    let vip = vip
        .split_whitespace()
        .find(|a| a.starts_with("198.19.10."))
        .expect("a VIP on appnet")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let vip_who = format!("{vip}:{WHO_PORT}");
    // explain names the VIP's service, says the socket path decides, and lists the tasks.
    let (ok, out, err) = lbs[0]
        .lbctl(&["explain", "udp", &format!("{cli_addr}:40000"), &vip_who])
        .expect("lbctl explain");
    assert!(ok, "explain: {err}");
    assert!(
        out.contains("api@appnet") && out.contains("socket-level"),
        "{out}"
    );
    for proto in ["tcp", "udp"] {
        let answers = container_answers(node1, "cli", proto, &vip_who, EVERY_TASK);
        let hosts: BTreeSet<String> = answers.iter().map(|w| w.host.clone()).collect();
        assert_eq!(
            hosts, all_api,
            "{proto}: every task of the VIP, on both nodes"
        );
        assert!(
            answers.iter().all(|w| w.seen == cli_addr),
            "{proto}: every task sees the container's own address: {answers:?}"
        );
    }
    let outsider =
        format!("printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc {vip} 8080");
    assert!(
        in_container(node1, "outsider", &outsider).is_none_or(|out| parse_who(&out).is_none()),
        "a container on another network must not reach the VIP"
    );
    assert!(
        in_container(
            node1,
            "outsider",
            &format!("/bin/who-server ask udp {vip_who} 3")
        )
        .is_none_or(|out| out.lines().all(|l| l.starts_with("error"))),
        "a container on another network must not reach the VIP over UDP"
    );

    // The VIP follows the swarm: scaled down to two tasks, new connections and datagrams
    // reach only the survivors within FOLLOW of the others stopping (and the Engines showing
    // it).
    lab.manager()
        .docker(&["service", "scale", "-d", "api=2"])
        .expect("scale api");
    within(TASKS, "api scaled down", || {
        swarm_tasks(&lab, "api").len() == 2
    });
    let api_survivors: BTreeSet<String> = swarm_tasks(&lab, "api");
    engines_list(&lab, "appnet", "api", 2);
    for lb in &lbs {
        within(FOLLOW, "the VIP follows the scale-down", || {
            backends(lb, "api@appnet") == Some(2)
        });
    }
    for proto in ["tcp", "udp"] {
        let answers = container_answers(node1, "cli", proto, &vip_who, 8);
        assert_eq!(
            answers.len(),
            8,
            "{proto}: every request answered: {answers:?}"
        );
        assert!(
            answers.iter().all(|w| api_survivors.contains(&w.host)),
            "{proto}: only the surviving tasks: {answers:?} (survivors {api_survivors:?})"
        );
    }

    // Scale down: within FOLLOW of the tasks stopping (and the Engines showing it), only the
    // survivors get connections.
    lab.manager()
        .docker(&["service", "scale", "-d", "web=2"])
        .expect("scale");
    lab.wait_running("web", 2, TASKS).expect("scaled down");
    within(TASKS, "scaled-down containers gone", || {
        swarm_tasks(&lab, "web").len() == 2
    });
    let survivors: BTreeSet<String> = swarm_tasks(&lab, "web");
    engines_list(&lab, "ingress", "web", 2);
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        within(FOLLOW, "scale down followed", || {
            backends(lb, "web") == Some(2)
        });
        let addr = SocketAddr::new(IpAddr::V4(node.addr), 80);
        let hosts: BTreeSet<String> = ask(&lab, addr, 8).into_iter().map(|w| w.host).collect();
        assert!(
            hosts.is_subset(&survivors),
            "{hosts:?} not within {survivors:?}"
        );
    }

    // An Engine that stops answering (frozen) changes nothing; lbd says so and follows again
    // once it answers.
    let node2_addr = SocketAddr::new(IpAddr::V4(lab.nodes[1].addr), 80);
    let before = survivors.clone();
    lab.nodes[1]
        .signal_engine(libc::SIGSTOP)
        .expect("freeze dockerd");
    let frozen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(
            Duration::from_secs(15),
            "lbd notices the Engine is away",
            || {
                let (_, status, _) = lbs[1].lbctl(&["status"]).expect("status");
                status.contains("DOES NOT ANSWER")
            },
        );
        let (code, _, err) = lbs[1].lbctl_exit(&["status"]).expect("status");
        assert_eq!(
            code,
            Some(i32::from(lb_userspace::api::Unhealthy::EXIT_CODE)),
            "lbctl status while the Engine is away: {err}"
        );
        if !before.is_empty() {
            let hosts: BTreeSet<String> = ask(&lab, node2_addr, 6)
                .into_iter()
                .map(|w| w.host)
                .collect();
            assert!(hosts.is_subset(&before), "forwarding kept its last state");
        }
    }));
    lab.nodes[1]
        .signal_engine(libc::SIGCONT)
        .expect("thaw dockerd");
    if let Err(panic) = frozen {
        std::panic::resume_unwind(panic);
    }
    within(
        Duration::from_secs(15),
        "lbd follows the Engine again",
        || {
            let (_, status, _) = lbs[1].lbctl(&["status"]).expect("status");
            status.contains("swarm: Engine") && status.contains(" answers ")
        },
    );
    assert!(
        lbs[1].output().contains("forwarding stays as it was"),
        "log line"
    );

    held::survive_scaling_and_a_rollout(&lab, &lbs, "web");
    held::survive_an_address_moving_between_nodes(&lab, &lbs);
    bulk::complete_at_both_mtus(&lab);

    // Removal: the published port stops being served.
    lab.manager().docker(&["service", "rm", "web"]).expect("rm");
    within(TASKS, "web's containers gone", || {
        lab.nodes.iter().all(|n| local_tasks(n, "web").is_empty())
    });
    // What lbd follows is the Engine's view of the ingress network, which can list a removed
    // service a moment after its containers are gone: FOLLOW counts from when it stops.
    within(TASKS, "the Engines' ingress view drops web", || {
        lab.nodes
            .iter()
            .all(|n| n.ingress_lists("web").is_ok_and(|listed| !listed))
    });
    for lb in &lbs {
        within(FOLLOW, "service rm followed", || {
            backends(lb, "web").is_none()
        });
    }
    drop(lbs);
    lab.remove_services().expect("cleanup services");
}

/// A swarm service's policy VIP, announced by both nodes through BGP to a router that
/// spreads connections over them (`anycast`): connections survive a node leaving the route
/// and coming back.
#[test]
fn a_swarm_vip_behind_ecmp_keeps_connections_when_a_node_leaves_the_route() {
    if !e2e_enabled() {
        return;
    }
    let _one = one_lab();
    let lab = SwarmLab::start().expect("swarm lab");
    lab.create_published(
        anycast::SERVICE,
        4,
        &Publish::ingress_tcp_and_udp(anycast::PORT, WHO_PORT),
        &["--placement-pref", "spread=node.id"],
    )
    .expect("anycast");
    lab.wait_running(anycast::SERVICE, 4, TASKS)
        .expect("anycast tasks");
    engines_list(&lab, "ingress", anycast::SERVICE, 4);
    anycast::connections_survive_a_node_leaving_the_ecmp_route(&lab, lbd());
}
