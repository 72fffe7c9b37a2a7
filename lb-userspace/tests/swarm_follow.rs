//! `lbd --swarm` following a real two-node swarm through its changes (issue 12's tests), on
//! `lb_testkit::swarm`, one `lbd` per node in the node's namespace:
//! - TCP and UDP published ports answer on both node addresses, every task a node reaches
//!   gets requests and sees the client's own address and port;
//! - scale up, `docker kill` of a task, a rolling update and `service rm` are followed within
//!   2 s (of the test seeing the change in `docker ps`), while established connections to
//!   surviving tasks keep their task.
//!
//! The labs run one after another (the 2 s checks must not compete with another lab's start).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lb_testkit::{
    Lbd, Proto, TcpSession, e2e_enabled,
    swarm::{
        CLIENT_ADDR, Publish, SwarmLab, SwarmNode, WHO_PORT, programmed_backends, request,
        start_lbd, wait_until,
    },
};

/// The swarm's changes must reach new connections within this (issue 12).
const FOLLOW: Duration = Duration::from_secs(2);
/// Tasks may take this long to start or stop (image already local).
const TASKS: Duration = Duration::from_secs(60);
/// Per request; the tasks are one veth away.
const REQUEST: Duration = Duration::from_millis(500);
/// Requests a check may make to meet every task of a node (selection spreads them).
const MAX_REQUESTS: usize = 64;
/// A new lbd reads the Engine and programs what it found within this.
const STARTUP: Duration = Duration::from_secs(10);

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_lab() -> MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

fn lbds(lab: &SwarmLab) -> Vec<Lbd> {
    lab.nodes
        .iter()
        .map(|node| start_lbd(lbd(), node, &[]).expect("lbd --swarm"))
        .collect()
}

fn published(node: &SwarmNode, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.addr), port)
}

/// Requests from the client to `target` until every one of `expected` answered (at most
/// [`MAX_REQUESTS`]). A task that saw another address or port than the client's fails the
/// test; a failed request or a task not in `expected` is an `Err` (not followed yet).
fn meets_exactly(
    lab: &SwarmLab,
    target: SocketAddr,
    proto: Proto,
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for _ in 0..MAX_REQUESTS {
        let reply = request(&lab.client, target, proto, REQUEST)
            .map_err(|e| format!("{proto} request to {target}: {e:#}"))?;
        assert!(
            reply.seen_ip == IpAddr::V4(CLIENT_ADDR) && reply.saw(reply.local),
            "{proto} {target}: task {} saw {}:{}, not the client {}",
            reply.backend,
            reply.seen_ip,
            reply.seen_port,
            reply.local
        );
        if !expected.contains(&reply.backend) {
            return Err(format!(
                "{proto} {target} answered by {}, not one of {expected:?}",
                reply.backend
            ));
        }
        seen.insert(reply.backend);
        if &seen == expected {
            return Ok(());
        }
    }
    Err(format!(
        "{proto} {target}: {MAX_REQUESTS} requests met {seen:?} of {expected:?}"
    ))
}

/// Within `limit` of `since`: `lb` programs exactly the service's running tasks (those on
/// `node` at their `docker_gwbridge` address, the others at their ingress address, reached
/// through the mesh tunnel), and new TCP and UDP requests to `node`'s published port reach
/// exactly those tasks. Returns how long after
/// `since` a check that held began.
fn follows(
    lab: &SwarmLab,
    node: &SwarmNode,
    lb: &Lbd,
    (service, port): (&str, u16),
    since: Instant,
    limit: Duration,
    what: &str,
) -> Duration {
    let mut last = String::new();
    // Bounded by time; each round takes at least the 50 ms pause.
    for _ in 0..limit.as_millis() / 50 + 2 {
        let at = since.elapsed();
        // Every running task of the service, on either node: this node's at their
        // docker_gwbridge address, the other node's at their ingress address (through the
        // mesh tunnel).
        let tasks = lab.tasks(service).expect("tasks");
        let want: BTreeSet<IpAddr> = tasks
            .iter()
            .map(|t| {
                IpAddr::V4(if t.node == node.index {
                    t.gwbridge.expect("an ingress task on docker_gwbridge")
                } else {
                    t.ingress_addr()
                        .expect("an ingress task on the ingress network")
                })
            })
            .collect();
        let hosts: BTreeSet<String> = tasks.iter().map(|t| t.container.clone()).collect();
        let programmed = programmed_backends(lb, service)
            .expect("lbctl list")
            .unwrap_or_default();
        let result = if programmed != want {
            Err(format!(
                "lbd programs {programmed:?}, the swarm runs {want:?}"
            ))
        } else {
            meets_exactly(lab, published(node, port), Proto::Tcp, &hosts)
                .and_then(|()| meets_exactly(lab, published(node, port), Proto::Udp, &hosts))
        };
        match result {
            Ok(()) => {
                println!("node {}: {service} {what}: followed in {at:?}", node.index);
                return at;
            }
            Err(e) => last = e,
        }
        if since.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "node {}: {service} {what}: not followed within {limit:?}: {last}\n{}\n{}",
        node.index,
        lb.output(),
        lab.dump_logs()
    )
}

/// Established connections, with the task each first reached.
struct Sessions(Vec<(TcpSession, String)>);

impl Sessions {
    fn open(lab: &SwarmLab, target: SocketAddr, n: usize) -> Sessions {
        Sessions(
            (0..n)
                .map(|i| {
                    let mut s = TcpSession::connect(&lab.client, target, REQUEST * 4)
                        .unwrap_or_else(|e| panic!("session {i} to {target}: {e:#}"));
                    let first = s.request().expect("first request").backend;
                    (s, first)
                })
                .collect(),
        )
    }

    /// Every session whose task is still in `alive` answers, from the same task; sessions to
    /// other tasks are dropped.
    fn check_kept(&mut self, alive: &BTreeSet<String>, what: &str) {
        self.0.retain(|(_, task)| alive.contains(task));
        for (session, task) in &mut self.0 {
            let reply = session
                .request()
                .unwrap_or_else(|e| panic!("{what}: session to surviving {task}: {e:#}"));
            assert_eq!(&reply.backend, task, "{what}: a session changed task");
        }
    }
}

/// The name-server port published TCP and UDP (the Engine lists it twice with one target:
/// the rule that makes it both).
fn who_ports(published: u16) -> [Publish; 2] {
    [
        Publish::ingress(published, WHO_PORT, Proto::Tcp),
        Publish::ingress(published, WHO_PORT, Proto::Udp),
    ]
}

#[test]
fn published_ports_follow_scale_kill_update_and_rm() {
    if !e2e_enabled() {
        return;
    }
    let _one = one_lab();
    let lab = SwarmLab::start().expect("swarm lab");
    // A short grace: the image's httpd ignores SIGTERM as pid 1.
    let quick = ["--stop-grace-period", "1s"];
    lab.create_published("who", 4, &who_ports(WHO_PORT), &quick)
        .expect("who");
    let mut keep_args = vec!["--replicas-max-per-node", "1"];
    keep_args.extend(quick);
    lab.create_published("keep", 2, &who_ports(9081), &keep_args)
        .expect("keep");
    lab.wait_tasks("who", 4, TASKS).expect("who tasks");
    let keep = lab.wait_tasks("keep", 2, TASKS).expect("keep tasks");
    let keep_hosts: BTreeSet<String> = keep.iter().map(|t| t.container.clone()).collect();
    let lbs = lbds(&lab);

    // Both node addresses answer, TCP and UDP, from every task of the node.
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        let start = Instant::now();
        follows(&lab, node, lb, ("who", WHO_PORT), start, STARTUP, "start");
        follows(&lab, node, lb, ("keep", 9081), start, STARTUP, "start");
    }
    let mut who_sessions: Vec<Sessions> = lab
        .nodes
        .iter()
        .map(|n| Sessions::open(&lab, published(n, WHO_PORT), 6))
        .collect();
    let mut keep_sessions: Vec<Sessions> = lab
        .nodes
        .iter()
        .map(|n| Sessions::open(&lab, published(n, 9081), 2))
        .collect();

    // Scale up: the new tasks get connections, the old ones keep theirs.
    lab.scale("who", 6).expect("scale up");
    let mut tasks = lab.wait_tasks("who", 6, TASKS).expect("scaled up");
    let since = Instant::now();
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        follows(&lab, node, lb, ("who", WHO_PORT), since, FOLLOW, "scale up");
    }
    let alive: BTreeSet<String> = tasks.iter().map(|t| t.container.clone()).collect();
    for s in &mut who_sessions {
        s.check_kept(&alive, "scale up");
    }

    // A task killed: within FOLLOW new connections go to the running tasks only; sessions to
    // the others keep their task. Then its replacement is served.
    let node2 = &lab.nodes[1];
    let victim = tasks
        .iter()
        .find(|t| t.node == 2)
        .expect("a task on node 2")
        .clone();
    node2
        .docker(&["kill", &victim.container])
        .expect("docker kill");
    let since = Instant::now();
    // The survivors (and, if the swarm is quick, the replacement) are served.
    follows(
        &lab,
        node2,
        &lbs[1],
        ("who", WHO_PORT),
        since,
        FOLLOW,
        "docker kill",
    );
    let alive: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t.container != victim.container)
        .map(|t| t.container.clone())
        .collect();
    for s in &mut who_sessions {
        s.check_kept(&alive, "docker kill");
    }
    tasks = lab.wait_tasks("who", 6, TASKS).expect("replacement");
    let since = Instant::now();
    follows(
        &lab,
        node2,
        &lbs[1],
        ("who", WHO_PORT),
        since,
        FOLLOW,
        "replacement",
    );

    // A rolling update replaces every task; once done, only the new ones are served.
    let old: BTreeSet<String> = tasks.iter().map(|t| t.container.clone()).collect();
    lab.manager()
        .docker(&[
            "service",
            "update",
            "-d",
            "--force",
            "--update-parallelism",
            "2",
            "--update-delay",
            "0s",
            "who",
        ])
        .expect("rolling update");
    let deadline = Instant::now() + TASKS;
    loop {
        let now = lab.tasks("who").expect("tasks");
        if now.len() == 6 && now.iter().all(|t| !old.contains(&t.container)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rolling update not done within {TASKS:?}: {now:?}\n{}",
            lab.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let since = Instant::now();
    for (node, lb) in lab.nodes.iter().zip(&lbs) {
        follows(
            &lab,
            node,
            lb,
            ("who", WHO_PORT),
            since,
            FOLLOW,
            "rolling update",
        );
    }
    for s in &mut keep_sessions {
        s.check_kept(&keep_hosts, "rolling update of another service");
    }

    // Service rm: gone from every lbd within FOLLOW of its tasks being gone; the other
    // service's established connections keep their task.
    lab.manager().docker(&["service", "rm", "who"]).expect("rm");
    lab.wait_tasks("who", 0, TASKS).expect("who's tasks gone");
    for lb in &lbs {
        let took = wait_until(FOLLOW, "service rm followed", || {
            Ok(programmed_backends(lb, "who")?.is_none())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lb.output()));
        println!("service rm followed in {took:?}");
    }
    for s in &mut keep_sessions {
        s.check_kept(&keep_hosts, "service rm of another service");
    }
    for node in &lab.nodes {
        let refused = request(&lab.client, published(node, WHO_PORT), Proto::Tcp, REQUEST);
        assert!(refused.is_err(), "a removed service answers: {refused:?}");
    }
    drop(lbs);
}
