//! End to end: the real `lbd` in a node namespace between a client and three backends on a
//! bridge (like docker_gwbridge), real TCP and UDP sockets. Backends run nothing of meshlb.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_testkit::{
    EchoServer, Lbd, NameServer, Topology, e2e_enabled, echo_transfer, tcp_request, udp_request,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const FLOWS: usize = 60;

const SERVICES: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: ["fd00:2::a", "fd00:2::b", "fd00:2::c"]
  api:
    ports: ["8000:8080/tcp", "8053:5353/udp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12", "fd00:2::a", "fd00:2::b", "fd00:2::c"]
"#;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

/// A topology with a name server on every backend (TCP 8080, UDP 5353).
fn setup(backends: usize) -> (Topology, Vec<NameServer>) {
    let topo = Topology::new(backends).expect("topology");
    let servers = topo.serve_on_backends(&[8080], &[5353]).expect("servers");
    (topo, servers)
}

fn start_lbd(topo: &Topology, services: &str) -> Lbd {
    topo.start_lbd(lbd(), services, &[]).expect("lbd")
}

fn counter(counters: &serde_json::Value, name: &str) -> u64 {
    counters["global"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {counters}"))
}

#[test]
fn tcp_and_udp_through_vip_and_published_port_reach_every_backend_from_the_client_address() {
    if !e2e_enabled() {
        return;
    }
    let (topo, servers) = setup(3);
    let lb = start_lbd(&topo, SERVICES);
    let clients = [IpAddr::V4(topo.client_addr4), IpAddr::V6(topo.client_addr6)];
    let vip4: IpAddr = "198.18.100.1".parse().unwrap();
    let vip6: IpAddr = "fd00:100::1".parse().unwrap();
    let node4 = IpAddr::V4(topo.node_client_addr4);
    let node6 = IpAddr::V6(topo.node_client_addr6);
    let mut exchanges = 0u64;
    let mut tcp_exchanges = 0u64;
    // Both families, through a VIP and through a port published on the node's addresses.
    for (proto, target) in [
        ("tcp", SocketAddr::new(vip4, 80)),
        ("tcp", SocketAddr::new(node4, 8000)),
        ("udp", SocketAddr::new(vip4, 53)),
        ("udp", SocketAddr::new(node4, 8053)),
        ("tcp", SocketAddr::new(vip6, 80)),
        ("tcp", SocketAddr::new(node6, 8000)),
        ("udp", SocketAddr::new(vip6, 53)),
        ("udp", SocketAddr::new(node6, 8053)),
    ] {
        let mut seen = BTreeSet::new();
        for i in 0..FLOWS {
            let reply = match proto {
                "tcp" => tcp_request(&topo.client, target, TIMEOUT),
                _ => udp_request(&topo.client, target, TIMEOUT),
            }
            .unwrap_or_else(|e| panic!("{proto} {target} exchange {i}: {e:#}\n{}", lb.output()));
            // The client talks to the frontend only, and the backend sees the client itself:
            // its address, and its port unless that clashed with a live flow toward the same
            // backend (then NAT gives it another, as netfilter does).
            assert_eq!(
                reply.from, target,
                "{proto}: reply must come from the frontend"
            );
            assert!(
                reply.seen_ip == reply.local.ip()
                    && (reply.seen_port == reply.local.port()
                        || (lb_common::limits::FULLNAT_PORT_MIN
                            ..=lb_common::limits::FULLNAT_PORT_MAX)
                            .contains(&reply.seen_port)),
                "{proto} {target}: backend saw {}:{}, client is {}",
                reply.seen_ip,
                reply.seen_port,
                reply.local
            );
            seen.insert(reply.backend);
            exchanges += 1;
            tcp_exchanges += u64::from(proto == "tcp");
        }
        assert_eq!(
            seen.len(),
            3,
            "{proto} {target}: every backend answers: {seen:?}"
        );
    }
    for server in &servers {
        let peers = server.peers();
        assert!(!peers.is_empty(), "{} saw no traffic", server.name());
        assert!(
            peers.iter().all(|(_, ip)| clients.contains(ip)),
            "{} saw a translated source: {peers:?}",
            server.name()
        );
    }
    let counters = lb.stop().expect("stop lbd");
    // Every confirmed flow is still in the connection table (well inside its timeout): two
    // entries each. Every TCP connection is confirmed (its client's ACK); a one-datagram UDP
    // flow stays in the table of unconfirmed flows.
    let tracked = counters["conntrack"]["entries"]
        .as_u64()
        .expect("occupancy");
    assert_eq!(
        tracked,
        2 * counter(&counters, "flow_confirmed"),
        "{counters}"
    );
    assert!(
        counter(&counters, "flow_confirmed") >= tcp_exchanges,
        "{counters}"
    );
    // One entry over the power of two asked for: twice the hash buckets.
    assert_eq!(counters["conntrack"]["capacity"], 65_537, "{counters}");
    // TCP exchanges are several packets each way; UDP exactly one.
    assert!(counter(&counters, "nat_forward") >= exchanges, "{counters}");
    assert!(counter(&counters, "nat_reply") >= exchanges, "{counters}");
    // Every TCP connection is a new flow; a UDP exchange that happens to reuse a client port
    // within the UDP timeout continues the earlier flow (same 5-tuple), as it should.
    let new_flows = counter(&counters, "new_flow");
    assert!(
        new_flows <= exchanges && new_flows >= tcp_exchanges,
        "{counters}"
    );
    // Backends run no XDP program, so every rewritten packet went through the TC program.
    assert_eq!(
        counter(&counters, "tx_via_tc"),
        counter(&counters, "tc_redirect_neigh"),
        "{counters}"
    );
    for zero in [
        "tx_xdp_redirect",
        "tc_redirect_failed",
        "drop_no_backend",
        "refused_no_backend",
        "drop_fib_failed",
        "drop_conntrack_full",
        "flow_lost",
        "drop_forged_handoff",
    ] {
        assert_eq!(counter(&counters, zero), 0, "{zero}: {counters}");
    }
}

#[test]
fn unrelated_traffic_still_flows_through_and_to_the_node() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let node_server = NameServer::start(&topo.node, "node", &[7000], &[7000]).expect("node server");
    let lb = start_lbd(&topo, SERVICES);
    let backend0 = &topo.backends[0];
    let node4 = IpAddr::V4(topo.node_client_addr4);
    let node6 = IpAddr::V6(topo.node_client_addr6);
    // Straight to a backend (routed by the node's kernel), over IPv4 and IPv6, and to a
    // service of the node itself on a port that is not published.
    for (tcp_target, udp_target) in [
        (backend0.socket_addr4(8080), backend0.socket_addr4(5353)),
        (backend0.socket_addr6(8080), backend0.socket_addr6(5353)),
        (SocketAddr::new(node4, 7000), SocketAddr::new(node4, 7000)),
        (SocketAddr::new(node6, 7000), SocketAddr::new(node6, 7000)),
    ] {
        let tcp = tcp_request(&topo.client, tcp_target, TIMEOUT)
            .unwrap_or_else(|e| panic!("tcp {tcp_target}: {e:#}\n{}", lb.output()));
        let udp = udp_request(&topo.client, udp_target, TIMEOUT)
            .unwrap_or_else(|e| panic!("udp {udp_target}: {e:#}\n{}", lb.output()));
        for (target, reply) in [(tcp_target, tcp), (udp_target, udp)] {
            assert_eq!(reply.from, target);
            assert!(reply.saw(reply.local), "{target}: {reply:?}");
        }
    }
    assert_eq!(node_server.requests(), 4);
    let counters = lb.stop().expect("stop lbd");
    assert!(counter(&counters, "pass_not_frontend") > 0, "{counters}");
    assert_eq!(counter(&counters, "nat_forward"), 0, "{counters}");
    assert_eq!(counter(&counters, "nat_reply"), 0, "{counters}");
}

#[test]
fn a_bad_service_file_gives_a_clear_error_and_changes_nothing() {
    if !e2e_enabled() {
        return;
    }
    let (topo, _servers) = setup(3);
    let interfaces = [topo.node_client_if.as_str(), topo.node_bridge.as_str()];
    let bad = SERVICES.replace("\"80:8080/tcp\"", "\"80:http/tcp\"");
    let xdp_attached = || {
        topo.node
            .xdp_attached(&topo.node_client_if)
            .expect("ip link")
    };

    // Nothing running yet: the file is refused before anything is loaded or attached.
    let (code, output) = Lbd::run_expecting_failure(lbd(), &topo.node, &bad, &interfaces).unwrap();
    assert_ne!(code, 0);
    for part in ["mlb-bad-", "service \"web\"", "ports[0]", "80:http/tcp"] {
        assert!(
            output.contains(part),
            "error must mention {part:?}:\n{output}"
        );
    }
    assert!(!xdp_attached(), "a refused file must not attach anything");

    // With a good lbd running, a second one with a bad file leaves it serving.
    let lb = start_lbd(&topo, SERVICES);
    let vip = SocketAddr::new("198.18.100.1".parse().unwrap(), 80);
    tcp_request(&topo.client, vip, TIMEOUT).expect("before");
    let (code, _) = Lbd::run_expecting_failure(lbd(), &topo.node, &bad, &interfaces).unwrap();
    assert_ne!(code, 0);
    assert!(xdp_attached());
    // 45 random client ports miss one of 3 backends with a chance of 3 × (2/3)^45 ≈ 4e-8
    // (30: 2e-5).
    let mut seen = BTreeSet::new();
    for _ in 0..45 {
        seen.insert(
            tcp_request(&topo.client, vip, TIMEOUT)
                .expect("after")
                .backend,
        );
    }
    assert_eq!(seen.len(), 3, "still balanced over every backend: {seen:?}");
    lb.stop().expect("stop lbd");
    // The link goes when its pin does; the kernel may release it a moment later (deferred
    // work, slower on a loaded machine): bounded wait.
    let mut attached = xdp_attached();
    for _ in 0..40 {
        if !attached {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        attached = xdp_attached();
    }
    assert!(!attached, "lbd detaches when it stops");
}

/// Sends one ICMP echo request to `target` from `ns` on a raw socket and waits for the reply;
/// returns the reply's source address.
fn ping(ns: &lb_testkit::Netns, target: IpAddr) -> Option<IpAddr> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    ns.run(move || {
        let (family, protocol, echo_type, reply_type) = match target {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
        };
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, protocol) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor.
        let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = vec![echo_type, 0, 0, 0, 0x12, 0x34, 0, 1];
        request.extend_from_slice(b"meshlb ping");
        if target.is_ipv4() {
            // The kernel fills in ICMPv6 checksums, not ICMPv4 ones.
            let csum = lb_testkit::packet::checksum(&request, 0);
            request[2..4].copy_from_slice(&csum.to_be_bytes());
        }
        socket
            .send_to(&request, &SocketAddr::new(target, 0).into())
            .expect("send echo request");
        for _ in 0..16 {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return None;
            };
            // SAFETY: recv_from initialised the first n bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // IPv4 raw sockets deliver the IP header too.
            let icmp = if target.is_ipv4() {
                &data[usize::from(data[0] & 0x0f) * 4..]
            } else {
                &data[..]
            };
            if icmp[0] == reply_type && icmp[4..6] == [0x12, 0x34] {
                return from.as_socket().map(|s| s.ip());
            }
        }
        None
    })
    .expect("run in client namespace")
}

/// What a connected UDP socket in `ns` sees after sending to `target`: the error of its next
/// receive (`TimedOut`/`WouldBlock` when nothing came back within TIMEOUT).
fn connected_udp_error(ns: &lb_testkit::Netns, target: SocketAddr) -> std::io::ErrorKind {
    ns.run(move || {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .unwrap();
        let socket = std::net::UdpSocket::bind(bind).unwrap();
        socket.connect(target).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket.send(b"anyone?").unwrap();
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).unwrap_err().kind()
    })
    .unwrap()
}

#[test]
fn echo_requests_to_a_vip_are_answered_and_port_unreachable_reaches_the_client() {
    if !e2e_enabled() {
        return;
    }
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "54:5454/udp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  web6:
    vip: "fd00:100::1"
    ports: ["54:5454/udp"]
    backends: ["fd00:2::a", "fd00:2::b", "fd00:2::c"]
  empty:
    vip: 198.18.100.2
    ports: ["55/udp"]
    backends: []
  empty6:
    vip: "fd00:100::2"
    ports: ["55/udp"]
    backends: []
"#;
    let (topo, _servers) = setup(3);
    let lb = start_lbd(&topo, services);
    for vip in ["198.18.100.1", "fd00:100::1"] {
        let vip: IpAddr = vip.parse().unwrap();
        assert_eq!(
            ping(&topo.client, vip),
            Some(vip),
            "echo reply from {vip}\n{}",
            lb.output()
        );
        // Nothing listens on the backends' UDP port 5454: the backend's port-unreachable
        // must reach the client translated, so its connected socket sees a refusal.
        let target = SocketAddr::new(vip, 54);
        assert_eq!(
            connected_udp_error(&topo.client, target),
            std::io::ErrorKind::ConnectionRefused,
            "{target}\n{}",
            lb.output()
        );
    }
    // A service without a backend refuses the datagram itself, as a closed port would.
    for empty in ["198.18.100.2", "fd00:100::2"] {
        let target = SocketAddr::new(empty.parse().unwrap(), 55);
        assert_eq!(
            connected_udp_error(&topo.client, target),
            std::io::ErrorKind::ConnectionRefused,
            "{target}\n{}",
            lb.output()
        );
    }
    let counters = lb.stop().expect("stop lbd");
    assert_eq!(counter(&counters, "icmp_echo_reply"), 2, "{counters}");
    assert_eq!(counter(&counters, "icmp_error_to_client"), 2, "{counters}");
    assert_eq!(counter(&counters, "refused_no_backend"), 2, "{counters}");
    assert_eq!(counter(&counters, "drop_no_backend"), 0, "{counters}");
}

#[test]
fn fullnat_backends_see_the_node_and_concurrent_flows_of_one_client_never_collide() {
    if !e2e_enabled() {
        return;
    }
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp", "54:5454/udp"]
    forwarding: fullnat
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    forwarding: fullnat
    backends: ["fd00:2::a", "fd00:2::b", "fd00:2::c"]
"#;
    let (topo, servers) = setup(3);
    let lb = start_lbd(&topo, services);
    let node_side = [
        IpAddr::V4(topo.node_bridge_addr4),
        IpAddr::V6(topo.node_bridge_addr6),
    ];
    for (vip, node_addr) in [
        ("198.18.100.1", node_side[0]),
        ("fd00:100::1", node_side[1]),
    ] {
        let target = SocketAddr::new(vip.parse().unwrap(), 80);
        // Many connections open at once from one client: each needs its own node port.
        let mut sessions: Vec<lb_testkit::TcpSession> = (0..200)
            .map(|i| {
                lb_testkit::TcpSession::connect(&topo.client, target, TIMEOUT).unwrap_or_else(|e| {
                    panic!("connection {i} to {target}: {e:#}\n{}", lb.output())
                })
            })
            .collect();
        let mut node_ports = BTreeSet::new();
        for round in 0..2 {
            for session in &mut sessions {
                let reply = session
                    .request()
                    .unwrap_or_else(|e| panic!("{target} round {round}: {e:#}"));
                assert_eq!(reply.from, target, "the client talks to the VIP only");
                assert_eq!(
                    reply.seen_ip, node_addr,
                    "full NAT: the backend sees the node"
                );
                assert!(
                    (lb_common::limits::FULLNAT_PORT_MIN..=lb_common::limits::FULLNAT_PORT_MAX)
                        .contains(&reply.seen_port),
                    "node port {} outside the full-NAT range",
                    reply.seen_port
                );
                node_ports.insert((reply.backend.clone(), reply.seen_port));
            }
        }
        assert_eq!(
            node_ports.len(),
            sessions.len(),
            "{target}: one node port per connection, stable"
        );
    }
    // UDP and ICMP errors through full NAT.
    let vip4: IpAddr = "198.18.100.1".parse().unwrap();
    let reply = udp_request(&topo.client, SocketAddr::new(vip4, 53), TIMEOUT).expect("udp");
    assert_eq!(reply.seen_ip, node_side[0]);
    let target = SocketAddr::new(vip4, 54);
    let error = topo
        .client
        .run(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(target).unwrap();
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            socket.send(b"anyone?").unwrap();
            let mut buf = [0u8; 64];
            socket.recv(&mut buf).unwrap_err().kind()
        })
        .unwrap();
    assert_eq!(
        error,
        std::io::ErrorKind::ConnectionRefused,
        "{}",
        lb.output()
    );
    for server in &servers {
        assert!(
            server.peers().iter().all(|(_, ip)| node_side.contains(ip)),
            "{}: {:?}",
            server.name(),
            server.peers()
        );
    }
    let counters = lb.stop().expect("stop lbd");
    assert_eq!(counter(&counters, "drop_no_snat_port"), 0, "{counters}");
    assert_eq!(counter(&counters, "icmp_error_to_client"), 1, "{counters}");
}

#[test]
fn reloads_drain_add_and_remove_backends_while_established_connections_keep_working() {
    if !e2e_enabled() {
        return;
    }
    let services = |backends: &str| {
        format!(
            r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp", "53:5353/udp"]
    backends: [{backends}]
"#
        )
    };
    let (topo, _servers) = setup(3);
    let mut lb = start_lbd(&topo, &services(r#""198.18.2.10", "198.18.2.11""#));
    let vip: IpAddr = "198.18.100.1".parse().unwrap();
    let web = SocketAddr::new(vip, 80);
    let new_backends = |n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|_| {
                tcp_request(&topo.client, web, TIMEOUT)
                    .expect("new connection")
                    .backend
            })
            .collect()
    };
    assert_eq!(
        new_backends(30),
        BTreeSet::from(["backend-0".into(), "backend-1".into()])
    );

    // Long-lived connections and UDP sessions, each pinned to a backend.
    let mut sessions: Vec<(lb_testkit::TcpSession, String)> = (0..24)
        .map(|_| {
            let mut s = lb_testkit::TcpSession::connect(&topo.client, web, TIMEOUT).unwrap();
            let backend = s.request().unwrap().backend;
            (s, backend)
        })
        .collect();
    let mut udp: Vec<(lb_testkit::UdpSession, String)> = (0..24)
        .map(|_| {
            let mut s =
                lb_testkit::UdpSession::bind(&topo.client, SocketAddr::new(vip, 53), TIMEOUT)
                    .unwrap();
            let backend = s.request().unwrap().backend;
            (s, backend)
        })
        .collect();
    for backend in ["backend-0", "backend-1"] {
        assert!(
            sessions.iter().any(|(_, b)| b == backend),
            "no session on {backend}"
        );
        assert!(
            udp.iter().any(|(_, b)| b == backend),
            "no UDP session on {backend}"
        );
    }

    // Drain backend-0, add backend-2: new flows avoid backend-0 at once; nobody moves.
    let answer = lb
        .reload(&services(
            r#"{ address: 198.18.2.10, weight: 0 }, "198.18.2.11", "198.18.2.12""#,
        ))
        .unwrap();
    assert!(answer.contains("reloaded"), "{answer}");
    assert_eq!(
        new_backends(40),
        BTreeSet::from(["backend-1".into(), "backend-2".into()])
    );
    for (session, backend) in &mut sessions {
        assert_eq!(
            &session
                .request()
                .expect("established connection after drain")
                .backend,
            backend
        );
    }
    for (session, backend) in &mut udp {
        assert_eq!(
            &session.request().expect("UDP session after drain").backend,
            backend
        );
    }

    // The same file again changes nothing.
    let answer = lb
        .reload(&services(
            r#"{ address: 198.18.2.10, weight: 0 }, "198.18.2.11", "198.18.2.12""#,
        ))
        .unwrap();
    assert!(answer.contains("no change"), "{answer}");

    // A bad file is refused and changes nothing.
    let answer = lb
        .reload("services:\n  web:\n    ports: [\"80:x/tcp\"]\n")
        .unwrap();
    assert!(
        answer.contains("refused") && answer.contains("ports[0]"),
        "{answer}"
    );
    assert_eq!(
        new_backends(20),
        BTreeSet::from(["backend-1".into(), "backend-2".into()])
    );

    // Remove backend-1 (on_backend_removal: move, the default): its UDP sessions move to a
    // backend still in the service; its TCP connections are moved too, and the new backend
    // refuses them, so the client learns at once instead of waiting on a dead peer.
    let answer = lb
        .reload(&services(
            r#"{ address: 198.18.2.10, weight: 0 }, "198.18.2.12""#,
        ))
        .unwrap();
    assert!(answer.contains("reloaded"), "{answer}");
    for (session, backend) in &mut udp {
        let now = session
            .request()
            .expect("UDP session after removal")
            .backend;
        if backend == "backend-1" {
            assert_eq!(
                now, "backend-2",
                "moved to the backend that takes new flows"
            );
        } else {
            assert_eq!(&now, backend, "untouched");
        }
    }
    for (session, backend) in &mut sessions {
        let started = std::time::Instant::now();
        let result = session.request();
        if backend == "backend-1" {
            // Refused by the backend it moved to: an error well before the 3 s timeout.
            assert!(
                result.is_err() && started.elapsed() < Duration::from_millis(1500),
                "a connection to a removed backend must fail fast: {result:?} after {:?}",
                started.elapsed()
            );
        } else {
            assert_eq!(
                &result.expect("connection on a remaining backend").backend,
                backend
            );
        }
    }
    let counters = lb.stop().expect("stop lbd");
    assert!(counter(&counters, "flow_moved") > 0, "{counters}");
}

/// The node's client-side interface as `lbctl status` shows it: (ifindex, state, reattached).
fn client_link_status(lb: &Lbd, topo: &Topology) -> (u64, String, u64) {
    let all = lb.attachments().expect("lbctl status");
    let a = all
        .iter()
        .find(|a| a.interface == topo.node_client_if)
        .unwrap_or_else(|| panic!("no attachment of {} in {all:?}", topo.node_client_if));
    (u64::from(a.ifindex), a.state.clone(), a.reattached)
}

/// The interface indexes in `TX_PORTS` (the devices the XDP program redirects to itself).
fn tx_ports(lb: &Lbd) -> BTreeSet<u32> {
    use aya::maps::{Map, MapData, xdp::DevMapHash};
    let data = lb.pinned_map("TX_PORTS");
    let ports: DevMapHash<MapData> = DevMapHash::try_from(Map::DevMapHash(data)).expect("devmap");
    ports.keys().map(|k| k.expect("key")).collect()
}

/// An `--xdp-redirect` interface made again is redirected to again under its new index (the
/// kernel took the old one out of `TX_PORTS` with the device; without it every packet there
/// would silently take the slower TC path). No traffic: the client's side runs no XDP, so
/// frames redirected to it would be dropped.
#[test]
fn an_xdp_redirect_interface_made_again_is_redirected_to_again() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let lb = topo
        .start_lbd(lbd(), SERVICES, &["--xdp-redirect", &topo.node_client_if])
        .expect("lbd");
    let (before, _, _) = client_link_status(&lb, &topo);
    assert_eq!(tx_ports(&lb), BTreeSet::from([before as u32]));
    topo.recreate_client_link().expect("recreate the link");
    // Bounded: 40 looks, 50 ms apart.
    let mut now = client_link_status(&lb, &topo);
    for _ in 0..40 {
        if now.0 != before && now.1 == "attached" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = client_link_status(&lb, &topo);
    }
    assert!(
        now.0 != before && now.1 == "attached",
        "{now:?}\n{}",
        lb.output()
    );
    assert_eq!(
        tx_ports(&lb),
        BTreeSet::from([now.0 as u32]),
        "{}",
        lb.output()
    );
}

/// `lbctl status` exits 3 while lbd answers but is not healthy (here an interface is
/// deleted), naming what is wrong on stderr, in text and in JSON; 0 again once attached.
#[test]
fn lbctl_status_exits_3_while_an_interface_is_missing() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let lb = start_lbd(&topo, SERVICES);
    let code = |args: &[&str]| lb.lbctl_exit(args).expect("lbctl status");
    assert_eq!(code(&["status"]).0, Some(0), "healthy");
    topo.node
        .ip(&["link", "del", &topo.node_client_if])
        .expect("delete the link");
    // Bounded: 40 looks, 50 ms apart.
    let mut seen = client_link_status(&lb, &topo).1;
    for _ in 0..40 {
        if seen == "missing" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        seen = client_link_status(&lb, &topo).1;
    }
    assert_eq!(seen, "missing", "{}", lb.output());
    let problem = format!(
        "lbctl: not healthy: interface {} is missing",
        topo.node_client_if
    );
    let (exit, out, err) = code(&["status"]);
    assert_eq!(exit, Some(3), "{out}{err}");
    assert!(out.contains("MISSING"), "{out}");
    assert_eq!(err.trim(), problem);
    let (exit, out, err) = code(&["-o", "json", "status"]);
    assert_eq!(exit, Some(3), "{out}{err}");
    serde_json::from_str::<serde_json::Value>(&out).expect("the status in JSON");
    assert_eq!(err.trim(), problem);

    topo.make_client_link().expect("make the link again");
    let mut exit = code(&["status"]).0;
    for _ in 0..40 {
        if exit == Some(0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        exit = code(&["status"]).0;
    }
    assert_eq!(exit, Some(0), "attached again\n{}", lb.output());
}

/// The node's ephemeral ports widened over meshlb's node ports is a problem `lbctl status`
/// names with the fix, while it lasts: read from the node's settings at each status, so a
/// reserved range (or the default again) makes lbd healthy without a restart.
#[test]
fn lbctl_status_names_ephemeral_ports_over_the_node_ports() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(1).expect("topology");
    let lb = start_lbd(&topo, SERVICES);
    let code = |args: &[&str]| lb.lbctl_exit(args).expect("lbctl status");
    assert_eq!(code(&["status"]).0, Some(0), "healthy");
    let range = "net.ipv4.ip_local_port_range";
    topo.node.set_sysctl(range, "1024 65535").expect("widen");
    let (exit, out, err) = code(&["status"]);
    assert_eq!(exit, Some(3), "{out}{err}");
    assert!(
        err.contains("ports 61000-65535") && err.contains("ip_local_reserved_ports=61000-65535"),
        "{err}"
    );
    topo.node
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "61000-65535")
        .expect("reserve");
    assert_eq!(code(&["status"]).0, Some(0), "reserved: healthy");
    topo.node
        .set_sysctl("net.ipv4.ip_local_reserved_ports", "")
        .expect("unreserve");
    topo.node
        .set_sysctl(range, "32768 60999")
        .expect("the default");
    assert_eq!(code(&["status"]).0, Some(0), "the default: healthy");
}

#[test]
fn an_interface_deleted_and_made_again_is_attached_again_within_a_second() {
    if !e2e_enabled() {
        return;
    }
    // Every backend SERVICES lists exists: any connection's pick answers.
    let (topo, _servers) = setup(3);
    let lb = start_lbd(&topo, SERVICES);
    let vip = SocketAddr::new("198.18.100.1".parse().unwrap(), 80);
    tcp_request(&topo.client, vip, TIMEOUT).expect("the VIP answers before");
    let (before, state, reattached) = client_link_status(&lb, &topo);
    assert_eq!((state.as_str(), reattached), ("attached", 0));

    topo.recreate_client_link().expect("recreate the link");
    let start = std::time::Instant::now();
    let mut now = client_link_status(&lb, &topo);
    // Bounded: 40 looks, 50 ms apart.
    for _ in 0..40 {
        if now.0 != before && now.1 == "attached" && now.2 == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = client_link_status(&lb, &topo);
    }
    assert!(
        now.0 != before && now.1 == "attached" && now.2 == 1,
        "lbctl status after the link was made again: {now:?} (ifindex before {before})\n{}",
        lb.output()
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "re-attached after {:?}",
        start.elapsed()
    );
    // Traffic through the new interface is balanced again (the client's neighbour entries
    // are new: a few tries).
    let answered = (0..10).any(|_| tcp_request(&topo.client, vip, Duration::from_secs(1)).is_ok());
    assert!(
        answered,
        "the VIP answers through the new interface\n{}",
        lb.output()
    );
    assert!(lb.output().contains("attached again"), "{}", lb.output());
    let metrics = lb_testkit::metrics(&topo.node).expect("/metrics");
    assert!(
        metrics.contains(&format!(
            "meshlb_interface_reattached_total{{interface=\"{}\"}} 1",
            topo.node_client_if
        )),
        "{metrics}"
    );
}

#[test]
fn a_large_transfer_through_a_vip_completes_both_ways_over_ipv4_and_ipv6() {
    if !e2e_enabled() {
        return;
    }
    // Generic XDP on these veths sees the client's and the backend's TCP segmentation
    // offload as packets of up to 64 KiB: they must be forwarded whole (the kernel segments
    // them), not answered "fragmentation needed", which would stall the transfer.
    let topo = Topology::new(1).expect("topology");
    let _echo = EchoServer::start(&topo.backends[0].ns, 9000).expect("echo server");
    let services = r#"
services:
  bulk:
    vip: 198.18.100.1
    ports: ["80:9000/tcp"]
    backends: ["198.18.2.10"]
  bulk6:
    vip: "fd00:100::1"
    ports: ["80:9000/tcp"]
    backends: ["fd00:2::a"]
"#;
    let lb = start_lbd(&topo, services);
    for (seed, vip) in [(1, "198.18.100.1:80"), (2, "[fd00:100::1]:80")] {
        let vip: SocketAddr = vip.parse().unwrap();
        let transfer = echo_transfer(&topo.client, vip, 1 << 20, seed, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\n{}", lb.output()));
        println!(
            "{vip}: {} bytes each way in {:?}, client MSS {}",
            transfer.bytes, transfer.elapsed, transfer.client_mss
        );
    }
    let counters = lb.stop().expect("stop lbd");
    println!(
        "aggregates forwarded whole: {}, answered too big: {}",
        counter(&counters, "aggregate"),
        counter(&counters, "icmp_too_big")
    );
    assert_eq!(counter(&counters, "drop_too_big"), 0, "{counters}");
}

/// Whether `lbctl explain` calls a TCP flow from `client` to `frontend` a hairpin.
fn explained_as_hairpin(lb: &Lbd, client: &str, frontend: &str) -> bool {
    let (ok, text, error) = lb
        .lbctl(&["explain", "tcp", client, frontend])
        .expect("lbctl explain");
    assert!(ok, "lbctl explain tcp {client} {frontend}: {error}");
    text.contains("(hairpin)")
}

#[test]
fn clients_in_the_backends_subnet_reach_a_file_services_vip_through_the_node() {
    if !e2e_enabled() {
        return;
    }
    // Under NAT the backend answers its client directly. A client on the backends' own bridge
    // (another host there, or the backend itself), whose route to the VIP is the node, would
    // get that answer straight over the bridge from an address it did not call, or (the
    // backend itself) a packet from its own address: such flows speak from the node's address
    // on the bridge, and the connection works. `late`'s backend is in a subnet the node
    // reaches only once a link route to it is added while lbd runs.
    let services = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10"]
  late:
    vip: 198.18.100.2
    ports: ["80:8080/tcp"]
    backends: ["198.18.3.10"]
  web6:
    vip: "fd00:100::1"
    ports: ["80:8080/tcp"]
    backends: ["fd00:2::a"]
  late6:
    vip: "fd00:100::2"
    ports: ["80:8080/tcp"]
    backends: ["fd00:3::a"]
"#;
    let topo = Topology::new(2).expect("topology");
    let backend = &topo.backends[0];
    let _server = NameServer::start(&backend.ns, &backend.name, &[8080], &[]).expect("server");
    let lb = start_lbd(&topo, services);
    // IPv4 and IPv6 alike: the node's link route to the backends' subnet makes it one.
    for (vip, node_on_bridge) in [
        ("198.18.100.1:80", IpAddr::V4(topo.node_bridge_addr4)),
        ("[fd00:100::1]:80", IpAddr::V6(topo.node_bridge_addr6)),
    ] {
        let vip: SocketAddr = vip.parse().unwrap();
        for (who, ns) in [
            ("a host on the backends' bridge", &topo.backends[1].ns),
            ("the backend itself", &backend.ns),
        ] {
            let reply = tcp_request(ns, vip, TIMEOUT)
                .unwrap_or_else(|e| panic!("{who} to {vip}: {e:#}\n{}", lb.output()));
            assert_eq!(reply.from, vip, "{who}: answered by the VIP");
            assert_eq!(reply.backend, backend.name);
            assert_eq!(
                reply.seen_ip, node_on_bridge,
                "{who} to {vip}: the backend sees the node"
            );
        }
    }
    let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
    assert!(explained_as_hairpin(
        &lb,
        "198.18.2.11:40000",
        "198.18.100.1:80"
    ));
    // A client of another subnet keeps its own address.
    let reply = tcp_request(&topo.client, vip, TIMEOUT).expect("the client to the VIP");
    assert_eq!(reply.seen_ip, IpAddr::V4(topo.client_addr4));
    assert!(!explained_as_hairpin(
        &lb,
        "198.18.1.2:40000",
        "198.18.100.1:80"
    ));
    let vip6: SocketAddr = "[fd00:100::1]:80".parse().unwrap();
    let reply = tcp_request(&topo.client, vip6, TIMEOUT).expect("the client to the IPv6 VIP");
    assert_eq!(reply.seen_ip, IpAddr::V6(topo.client_addr6));
    assert!(explained_as_hairpin(
        &lb,
        "[fd00:2::b]:40000",
        "[fd00:100::1]:80"
    ));

    // A link route added while lbd runs (no address changes): the next plan has it.
    for (client, vip, route) in [
        ("198.18.3.20:40000", "198.18.100.2:80", "198.18.3.0/24"),
        ("[fd00:3::20]:40000", "[fd00:100::2]:80", "fd00:3::/64"),
    ] {
        assert!(!explained_as_hairpin(&lb, client, vip));
        topo.node
            .ip(&["route", "add", route, "dev", &topo.node_bridge])
            .expect("a link route");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !explained_as_hairpin(&lb, client, vip) {
            assert!(
                std::time::Instant::now() < deadline,
                "the new link route to {vip}'s backend was not planned within 5 s\n{}",
                lb.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        lb.output().contains("the node's connected subnets changed"),
        "replanned at the route's event:\n{}",
        lb.output()
    );
    let counters = lb.stop().expect("stop lbd");
    assert_eq!(counter(&counters, "drop_no_snat_addr"), 0, "{counters}");
}
