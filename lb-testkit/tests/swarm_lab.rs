//! The two-node swarm lab itself (`lb_testkit::swarm`), with real dockerd: it comes up, a
//! replicated service runs on both nodes, each task answers on its `docker_gwbridge` address
//! (HTTP, and TCP and UDP name server) from its node and sees the caller's own address, and
//! the ingress-published port does not answer without meshlb (this kernel has no IP_VS).
//! Dropping the lab removes its namespaces, mounts, processes and directories.
//! Run: `MESHLB_E2E=1 cargo test -p lb-testkit --test swarm_lab` (root).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_testkit::{
    Proto, e2e_enabled,
    swarm::{CLIENT_ADDR, HTTP_PORT, Publish, SwarmLab, WHO_PORT, http_who},
    tcp_request, udp_request,
};

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection to an unserved published port is given to (wrongly) answer.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

#[test]
fn two_node_lab_runs_tasks_on_both_nodes_and_cleans_up() {
    if !e2e_enabled() {
        return;
    }
    let started = Instant::now();
    let lab = SwarmLab::start().expect("swarm lab");
    println!("lab up in {:?}", started.elapsed());
    let nodes = lab
        .manager()
        .docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
    let nodes = nodes.expect("node ls");
    assert_eq!(
        nodes.lines().filter(|l| l.starts_with("Ready")).count(),
        2,
        "{nodes}"
    );

    let ports = [
        Publish::ingress(HTTP_PORT, HTTP_PORT, Proto::Tcp),
        Publish::ingress(WHO_PORT, WHO_PORT, Proto::Tcp),
        Publish::ingress(WHO_PORT, WHO_PORT, Proto::Udp),
    ];
    lab.create_published("who", 2, &ports, &["--replicas-max-per-node", "1"])
        .expect("service");
    let tasks = lab
        .wait_tasks("who", 2, Duration::from_secs(60))
        .expect("tasks");
    println!("2 tasks running at {:?}", started.elapsed());
    lab.wait_running("who", 2, Duration::from_secs(10))
        .expect("the manager agrees");
    let on: BTreeSet<u8> = tasks.iter().map(|t| t.node).collect();
    assert_eq!(on, BTreeSet::from([1, 2]), "one task per node: {tasks:?}");

    for task in &tasks {
        let node = &lab.nodes[usize::from(task.node) - 1];
        let gw = task
            .gwbridge
            .expect("a task with ingress ports is on docker_gwbridge");
        let (net, len) = node.gwbridge_subnet();
        assert_eq!(
            u32::from(gw) >> (32 - len),
            u32::from(net) >> (32 - len),
            "{gw} in node {}'s docker_gwbridge subnet",
            node.index
        );
        let ingress = task.ingress_addr().expect("an ingress address");
        assert!(
            ingress.octets()[..2] == [198, 19],
            "overlay pool: {ingress}"
        );
        let caller = IpAddr::V4(node.gwbridge_gateway());

        let who = http_who(&node.ns, SocketAddr::new(gw.into(), HTTP_PORT), TIMEOUT)
            .expect("httpd on the task's docker_gwbridge address");
        assert_eq!(who.host, task.container);
        assert_eq!(who.seen, caller.to_string());
        for proto in [Proto::Tcp, Proto::Udp] {
            let target = SocketAddr::new(gw.into(), WHO_PORT);
            let reply = match proto {
                Proto::Tcp => tcp_request(&node.ns, target, TIMEOUT),
                Proto::Udp => udp_request(&node.ns, target, TIMEOUT),
            }
            .unwrap_or_else(|e| panic!("{proto} name server of {task:?}: {e:#}"));
            assert_eq!(reply.backend, task.container, "{proto}");
            assert_eq!(reply.seen_ip, caller, "{proto}: the task sees its caller");
            assert!(
                reply.saw(reply.local),
                "{proto}: not even the port is translated"
            );
        }
    }

    // Without IP_VS, Docker's routing mesh programs nothing: the published ports of a node
    // do not answer from outside (what meshlb fixes).
    for node in &lab.nodes {
        let http = SocketAddr::new(node.addr.into(), HTTP_PORT);
        let t0 = Instant::now();
        let answer = http_who(&lab.client, http, REFUSAL_WAIT);
        assert!(
            answer.is_err(),
            "{http} answered without meshlb: {answer:?}"
        );
        assert!(t0.elapsed() < REFUSAL_WAIT * 3, "bounded");
        let udp = SocketAddr::new(node.addr.into(), WHO_PORT);
        let answer = udp_request(&lab.client, udp, REFUSAL_WAIT);
        assert!(
            answer.is_err(),
            "udp {udp} answered without meshlb: {answer:?}"
        );
    }
    assert_eq!(CLIENT_ADDR.octets()[..2], [198, 18]);

    let namespaces: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| n.ns.name().to_owned())
        .chain([lab.client.name().to_owned()])
        .collect();
    let dirs: Vec<PathBuf> = lab
        .nodes
        .iter()
        .flat_map(|n| n.state_dirs().map(PathBuf::from))
        .collect();
    let t0 = Instant::now();
    drop(lab);
    println!(
        "lab down in {:?}, total {:?}",
        t0.elapsed(),
        started.elapsed()
    );
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for ns in &namespaces {
        assert!(!netns.contains(ns), "namespace {ns} left behind");
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
        let dir = dir.to_string_lossy();
        assert!(
            !mounts.lines().any(|l| l.contains(dir.as_ref())),
            "mounts under {dir} left behind"
        );
        assert!(
            lb_testkit::swarm::processes_mentioning(std::path::Path::new(dir.as_ref())).is_empty(),
            "processes of {dir} left behind"
        );
        assert!(
            lb_testkit::swarm::processes_inside(std::path::Path::new(dir.as_ref())).is_empty(),
            "containers of {dir} left behind"
        );
    }
}
