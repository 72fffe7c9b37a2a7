//! Tests of the test kit itself: topologies build and vanish, traffic routes through the node,
//! servers answer with what they saw. They need root: run with
//! `MESHLB_E2E=1 cargo test -p lb-testkit --test testkit`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use lb_testkit::{
    EnterMode, NameServer, Netns, Proto, TcpSession, Topology, UdpSession, tcp_request, udp_request,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const PORT: u16 = 8080;

/// Whether to run: false (after saying so) without `MESHLB_E2E`; panics if set but not root.
fn e2e() -> bool {
    if std::env::var_os("MESHLB_E2E").is_none() {
        println!("skipped: set MESHLB_E2E=1 (root) to run");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "MESHLB_E2E is set but these tests need root"
    );
    true
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

#[test]
fn topology_builds_and_tears_down() {
    if !e2e() {
        return;
    }
    let topo = Topology::new(2).expect("topology");
    let names = topo.namespace_names();
    assert_eq!(names.len(), 4);
    let list = netns_list();
    for name in &names {
        assert!(name.starts_with("mlb-"), "{name}");
        assert!(listed(&list, name), "{name} missing from:\n{list}");
    }
    assert_eq!(topo.backends.len(), 2);
    assert_eq!(topo.backends[0].name, "backend-0");
    assert_eq!(topo.backends[1].addr4.to_string(), "198.18.2.11");
    assert_eq!(topo.backends[1].addr6.to_string(), "fd00:2::b");
    assert_eq!(topo.node_bridge_ports.len(), 2);

    // The node really is a router with the planned interfaces.
    assert_eq!(topo.node.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        topo.node.sysctl("net.ipv6.conf.all.forwarding").unwrap(),
        "1"
    );
    assert_eq!(
        topo.node.sysctl("net.ipv4.conf.all.rp_filter").unwrap(),
        "0"
    );
    let links = topo.node.ip(&["-o", "link", "show"]).unwrap();
    for port in &topo.node_bridge_ports {
        let line = links
            .lines()
            .find(|l| l.contains(&format!(" {port}@")))
            .unwrap_or_else(|| panic!("{port} missing:\n{links}"));
        assert!(
            line.contains(&format!("master {}", topo.node_bridge)),
            "{line}"
        );
    }
    let addrs = topo
        .node
        .ip(&["-o", "addr", "show", "dev", &topo.node_client_if])
        .unwrap();
    assert!(
        addrs.contains("198.18.1.1/24") && addrs.contains("fd00:1::1/64"),
        "{addrs}"
    );
    assert!(!addrs.contains("tentative"), "{addrs}");

    topo.verify_direct_routing(TIMEOUT).expect("direct routing");

    drop(topo);
    let list = netns_list();
    for name in &names {
        assert!(!listed(&list, name), "{name} still listed:\n{list}");
    }
}

#[test]
fn name_server_answers_routed_requests() {
    if !e2e() {
        return;
    }
    let topo = Topology::new(2).expect("topology");
    let b0 = &topo.backends[0];
    let server = NameServer::start(&b0.ns, &b0.name, &[PORT], &[PORT]).expect("server");
    assert_eq!(server.tcp_ports(), [PORT]);

    for v6 in [false, true] {
        let target = SocketAddr::new(b0.addr(v6), PORT);
        let client_ip = topo.client_addr(v6);

        let reply = tcp_request(&topo.client, target, TIMEOUT).expect("tcp request");
        assert_eq!(reply.backend, "backend-0");
        assert_eq!(reply.seen_ip, client_ip);
        assert_eq!(reply.from, target);
        assert!(reply.saw(reply.local), "{reply:?}");

        let reply = udp_request(&topo.client, target, TIMEOUT).expect("udp request");
        assert_eq!(reply.backend, "backend-0");
        assert_eq!(reply.seen_ip, client_ip);
        assert_eq!(reply.from, target);
        assert!(reply.saw(reply.local), "{reply:?}");
    }
    assert_eq!(server.tcp_requests(), 2);
    assert_eq!(server.udp_requests(), 2);
    let client4 = IpAddr::V4(topo.client_addr4);
    let client6 = IpAddr::V6(topo.client_addr6);
    let mut peers = server.peers();
    peers.sort();
    assert_eq!(
        peers,
        vec![
            (Proto::Tcp, client4),
            (Proto::Tcp, client6),
            (Proto::Udp, client4),
            (Proto::Udp, client6),
        ]
    );

    // One connection carries many requests, all from the same client port.
    let target = b0.socket_addr6(PORT);
    let mut session = TcpSession::connect(&topo.client, target, TIMEOUT).expect("session");
    for _ in 0..5 {
        let reply = session.request().expect("session request");
        assert_eq!(reply.backend, "backend-0");
        assert!(reply.saw(session.local_addr()), "{reply:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.tcp_open_connections(), 1);
    drop(session);

    // UDP requests from one fixed socket keep their source port.
    let mut udp = UdpSession::bind(&topo.client, b0.socket_addr4(PORT), TIMEOUT).expect("udp");
    for _ in 0..3 {
        let reply = udp.request().expect("udp session request");
        assert!(reply.saw(udp.local_addr()), "{reply:?}");
    }

    // Nothing listens on backend-1: the request fails within the timeout.
    let other = topo.backends[1].socket_addr4(PORT);
    assert!(tcp_request(&topo.client, other, TIMEOUT).is_err());
    assert!(udp_request(&topo.client, other, Duration::from_millis(300)).is_err());

    // The server stops with its drop: the port is free again at once.
    drop(server);
    assert!(tcp_request(&topo.client, b0.socket_addr4(PORT), TIMEOUT).is_err());
    let again = NameServer::start(&b0.ns, "again", &[PORT], &[]).expect("rebind");
    let reply = tcp_request(&topo.client, b0.socket_addr4(PORT), TIMEOUT).unwrap();
    assert_eq!(reply.backend, "again");
    drop(again);
}

#[test]
fn backends_can_be_added_live() {
    if !e2e() {
        return;
    }
    let mut topo = Topology::new(1).expect("topology");
    let bridge_mac = |topo: &Topology| {
        let link = topo
            .node
            .ip(&["-o", "link", "show", "dev", &topo.node_bridge])
            .unwrap();
        link.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {link}"))
            .to_owned()
    };
    let mac = bridge_mac(&topo);
    let added = topo.add_backend().expect("add backend");
    assert_eq!(added.name, "backend-1");
    assert_eq!(added.addr4.to_string(), "198.18.2.11");
    let (ns_name, target) = (added.ns.name().to_owned(), added.socket_addr6(PORT));
    let host = &topo.backends[1];
    let server = NameServer::start(&host.ns, &host.name, &[PORT], &[]).unwrap();
    let reply = tcp_request(&topo.client, target, TIMEOUT).unwrap();
    assert_eq!(reply.backend, "backend-1");
    assert_eq!(reply.seen_ip, topo.client_addr(true));
    drop(server);

    assert!(topo.remove_backend("backend-1"));
    assert!(!listed(&netns_list(), &ns_name));
    assert_eq!(topo.node_bridge_ports, ["mlb-b0"]);
    let next = topo.add_backend().unwrap();
    assert_eq!(next.name, "backend-2");
    // Backends keep their gateway MAC while ports come and go.
    assert_eq!(bridge_mac(&topo), mac);
    topo.verify_direct_routing(TIMEOUT).unwrap();
}

#[test]
fn parallel_topologies_do_not_collide() {
    if !e2e() {
        return;
    }
    let results: Vec<(Vec<String>, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                scope.spawn(move || {
                    let topo = Topology::new(2).expect("topology");
                    let label = format!("topo{t}-backend-0");
                    let b0 = &topo.backends[0];
                    let server = NameServer::start(&b0.ns, &label, &[PORT], &[PORT]).unwrap();
                    let mut seen = String::new();
                    for _ in 0..10 {
                        for v6 in [false, true] {
                            let target = SocketAddr::new(b0.addr(v6), PORT);
                            let tcp = tcp_request(&topo.client, target, TIMEOUT).unwrap();
                            let udp = udp_request(&topo.client, target, TIMEOUT).unwrap();
                            assert_eq!(tcp.backend, label);
                            assert_eq!(udp.backend, label);
                            assert_eq!(tcp.seen_ip, topo.client_addr(v6));
                            seen.clone_from(&tcp.backend);
                        }
                    }
                    assert_eq!(server.requests(), 40);
                    drop(server);
                    (topo.namespace_names(), seen)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(results[0].1, "topo0-backend-0");
    assert_eq!(results[1].1, "topo1-backend-0");
    let list = netns_list();
    for (names, _) in &results {
        for name in names {
            assert!(!results[0].0.contains(name) || !results[1].0.contains(name));
            assert!(!listed(&list, name), "{name} still listed");
        }
    }
}

#[test]
fn spawned_process_is_in_namespace_and_killed_on_drop() {
    if !e2e() {
        return;
    }
    let ns = Netns::new("spawn").unwrap();
    assert!(ns.name().starts_with("mlb-spawn-"));
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["addr", "add", "198.18.3.1/32", "dev", "lo"])
        .unwrap();

    // `ip netns exec`: the process sees the namespace's interfaces and addresses.
    let out = ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"]).unwrap();
    assert!(out.contains("198.18.3.1/32"), "{out}");
    let err = ns
        .exec(&["ip", "link", "show", "dev", "nonexistent0"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("nonexistent0"), "{err:#}");

    let mut child = ns
        .spawn(
            "sh",
            &[
                "-c",
                "echo starting; ip -o addr show dev lo; echo \"ready $GREETING\"; exec sleep 60",
            ],
            &[("GREETING", "hi")],
        )
        .unwrap();
    let line = child.wait_for_line("ready", TIMEOUT).unwrap();
    assert_eq!(line, "ready hi");
    assert!(child.output_so_far().contains("198.18.3.1/32"));
    let pid = child.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let log = child.log_path().to_owned();
    assert!(
        child
            .wait_for_line("never printed", Duration::from_millis(100))
            .is_err()
    );
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived"
    );
    assert!(!log.exists());

    // setns-only mode: same mounts, namespace's network.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ip -o addr show dev lo; echo done"]);
    let mut child = ns.spawn_command(cmd, EnterMode::SetnsOnly).unwrap();
    child.wait_for_line("done", TIMEOUT).unwrap();
    assert!(child.output_so_far().contains("198.18.3.1/32"));
    let status = child.wait_timeout(TIMEOUT).unwrap().expect("exited");
    assert!(status.success());

    // A process exiting early makes wait_for_line fail at once with its output.
    let mut child = ns
        .spawn("sh", &["-c", "echo oops >&2; exit 3"], &[])
        .unwrap();
    let err = child
        .wait_for_line("ready", Duration::from_secs(10))
        .unwrap_err();
    assert!(format!("{err:#}").contains("oops"), "{err:#}");

    // Graceful stop.
    let mut child = ns.spawn("sleep", &["60"], &[]).unwrap();
    let status = child.stop(TIMEOUT).unwrap();
    assert!(!status.success());

    let name = ns.name().to_owned();
    drop(ns);
    assert!(!listed(&netns_list(), &name));
}

#[test]
fn topology_is_removed_on_panic() {
    if !e2e() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let topo = Topology::new(1).expect("topology");
        tx.send(topo.namespace_names()).unwrap();
        panic!("deliberate panic with a live topology");
    });
    assert!(result.is_err());
    let names = rx.recv().unwrap();
    let list = netns_list();
    for name in &names {
        assert!(!listed(&list, name), "{name} survived the panic");
    }
}

#[test]
fn udp_answers_come_from_the_address_asked() {
    if !e2e() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let b0 = &topo.backends[0];
    // A second address on backend-0 (like a VIP held by a backend), routed to it by the node.
    let extra4 = "198.18.2.200";
    let extra6 = "fd00:2::c8";
    b0.ns
        .ip(&["addr", "add", &format!("{extra4}/32"), "dev", "lo"])
        .unwrap();
    b0.ns
        .ip(&["addr", "add", &format!("{extra6}/128"), "dev", "lo"])
        .unwrap();
    topo.node
        .ip(&[
            "route",
            "add",
            &format!("{extra4}/32"),
            "via",
            &b0.addr4.to_string(),
        ])
        .unwrap();
    topo.node
        .ip(&[
            "route",
            "add",
            &format!("{extra6}/128"),
            "via",
            &b0.addr6.to_string(),
        ])
        .unwrap();
    let server = NameServer::start(&b0.ns, &b0.name, &[], &[PORT]).unwrap();
    for extra in [extra4, extra6] {
        let target = SocketAddr::new(extra.parse().unwrap(), PORT);
        // Without IPV6_PKTINFO the answer would leave from eth0's address and be rejected.
        let reply = udp_request(&topo.client, target, TIMEOUT).expect("udp to extra address");
        assert_eq!(reply.from, target);
        assert_eq!(reply.backend, "backend-0");
    }
    assert_eq!(server.udp_requests(), 2);
}

#[test]
fn stale_namespaces_of_dead_processes_are_cleaned() {
    if !e2e() {
        return;
    }
    let live = Netns::new("live").unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("mlb-stale-{dead_pid}-0");
    let out = Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let removed = Netns::cleanup_stale().unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    let list = netns_list();
    assert!(!listed(&list, &stale));
    assert!(
        listed(&list, live.name()),
        "a live process's namespace was removed"
    );
}
