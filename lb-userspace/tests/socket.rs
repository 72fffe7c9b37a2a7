//! Socket-level balancing end to end: the real `lbd` in a node namespace, its socket programs
//! attached to a cgroup made for the test (this test process alone is moved into it, so no
//! other process of the machine is affected), and clients that are sockets of the node
//! namespace itself: VIPs, published ports on a node address and on loopback, TCP and UDP,
//! both families.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_testkit::{
    Lbd, NameServer, Netns, TestCgroup, Topology, client::parse_reply_line, e2e_enabled,
    tcp_request,
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The tests move this whole process between cgroups: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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
  idle:
    vip: 198.18.100.9
    ports: ["80:8080/tcp"]
    backends: []
  api:
    ports: ["8000:8080/tcp", "8053:5353/udp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12", "fd00:2::a", "fd00:2::b", "fd00:2::c"]
"#;

fn lbd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lbd"))
}

struct Lab {
    // Field order is drop order: lbd (and its links) before the cgroup they attach to.
    lb: Lbd,
    _servers: Vec<NameServer>,
    topo: Topology,
    cgroup: TestCgroup,
}

fn setup(services: &str) -> Lab {
    let cgroup = TestCgroup::enter().expect("test cgroup");
    let topo = Topology::new(3).expect("topology");
    let servers = topo.serve_on_backends(&[8080], &[5353]).expect("servers");
    let cgroup_path = cgroup.path().to_str().expect("utf-8 path").to_owned();
    let lb = topo
        .start_lbd(
            lbd(),
            services,
            &["--socket-lb", "on", "--cgroup", &cgroup_path],
        )
        .expect("lbd");
    Lab {
        lb,
        _servers: servers,
        topo,
        cgroup,
    }
}

/// What a client socket saw of one exchange.
#[derive(Debug)]
struct Seen {
    backend: String,
    /// The backend saw exactly the client socket's address and port.
    saw_client: bool,
    /// `getpeername` (TCP, connected UDP) or the datagram's source (unconnected UDP).
    peer: SocketAddr,
}

fn tcp_exchange(ns: &Netns, target: SocketAddr) -> std::io::Result<Seen> {
    ns.run(|| {
        let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        stream.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        seen(&line, peer, local)
    })
    .map_err(std::io::Error::other)?
}

fn udp_exchange(ns: &Netns, target: SocketAddr, connected: bool) -> std::io::Result<Seen> {
    ns.run(|| {
        let wildcard: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(wildcard)?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        let mut buf = [0u8; 512];
        let (len, peer) = if connected {
            socket.connect(target)?;
            socket.send(b"hello\n")?;
            let len = socket.recv(&mut buf)?;
            (len, socket.peer_addr()?)
        } else {
            socket.send_to(b"hello\n", target)?;
            socket.recv_from(&mut buf)?
        };
        // The source the backend saw is the address the kernel picked at send time.
        let local = socket.local_addr()?;
        let line = String::from_utf8_lossy(&buf[..len]).into_owned();
        seen(&line, peer, local)
    })
    .map_err(std::io::Error::other)?
}

/// 30 connected UDP sockets of `node` to `target`, each with the backend its connect()
/// chose; (2/3)^30 ≈ 5e-6 is the chance that none is on backend-2 of three.
fn connected_udp(node: &Netns, target: SocketAddr) -> Vec<(UdpSocket, String)> {
    let connected = node
        .run(|| -> std::io::Result<Vec<(UdpSocket, String)>> {
            (0..30)
                .map(|_| {
                    let socket = UdpSocket::bind("0.0.0.0:0")?;
                    socket.set_read_timeout(Some(TIMEOUT))?;
                    socket.connect(target)?;
                    let backend = udp_ask(&socket)?;
                    Ok((socket, backend))
                })
                .collect()
        })
        .expect("setns")
        .expect("connected UDP sockets");
    assert!(
        connected.iter().any(|(_, b)| b == "backend-2"),
        "no socket on backend-2: {connected:?}"
    );
    connected
}

/// The sockets on `gone` are aborted within 2 s of `changed` (a receive fails with
/// ECONNABORTED, a send with EDESTADDRREQ); the others still talk to their backend.
fn check_aborted(connected: &[(UdpSocket, String)], gone: &str, changed: Instant) {
    for (socket, _) in connected {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    let aborted = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::ConnectionAborted
            || e.raw_os_error() == Some(libc::EDESTADDRREQ)
    };
    check_ended(connected, gone, changed, udp_ask, aborted);
}

/// The connections (or sockets) of `connected` on `gone` end within 2 s of `changed`: a
/// request (`ask`) fails with an error `aborted` accepts; the others still get an answer
/// from their backend.
fn check_ended<S>(
    connected: &[(S, String)],
    gone: &str,
    changed: Instant,
    ask: impl Fn(&S) -> std::io::Result<String>,
    aborted: impl Fn(&std::io::Error) -> bool,
) {
    for (socket, backend) in connected {
        if backend != gone {
            assert_eq!(&ask(socket).expect("still connected"), backend);
            continue;
        }
        // Bounded by time and count; the abort runs beside the change, a moment after it.
        let mut last = None;
        let mut ended = false;
        for _ in 0..100 {
            match ask(socket) {
                Err(e) if aborted(&e) => {
                    ended = true;
                    break;
                }
                other => last = Some(other),
            }
            if changed.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            ended,
            "a socket connected to {backend} was not aborted within 2 s of the change: {last:?}"
        );
    }
}

/// 30 TCP connections of `node` to `target`, each with the backend its connect() chose and
/// answered one request on; as `connected_udp`, one at least on backend-2.
fn connected_tcp(node: &Netns, target: SocketAddr) -> Vec<(TcpStream, String)> {
    let connected = node
        .run(|| -> std::io::Result<Vec<(TcpStream, String)>> {
            (0..30)
                .map(|_| {
                    let stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
                    stream.set_read_timeout(Some(TIMEOUT))?;
                    let backend = tcp_ask(&stream)?;
                    Ok((stream, backend))
                })
                .collect()
        })
        .expect("setns")
        .expect("TCP connections");
    assert!(
        connected.iter().any(|(_, b)| b == "backend-2"),
        "no connection on backend-2: {connected:?}"
    );
    connected
}

/// One request on a TCP connection: the backend that answered.
fn tcp_ask(stream: &TcpStream) -> std::io::Result<String> {
    (&*stream).write_all(b"hello\n")?;
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(parse_reply_line(&line)
        .map_err(std::io::Error::other)?
        .backend)
}

/// The connections on `gone` are aborted within 2 s of `changed`: the next request fails with
/// ECONNABORTED (or, the error taken by an earlier call, EPIPE); the others still talk to
/// their backend.
fn check_tcp_aborted(connected: &[(TcpStream, String)], gone: &str, changed: Instant) {
    let aborted = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::ConnectionAborted
            || e.kind() == std::io::ErrorKind::BrokenPipe
    };
    check_ended(connected, gone, changed, tcp_ask, aborted);
}

/// One request on a connected UDP socket: the backend that answered.
fn udp_ask(socket: &UdpSocket) -> std::io::Result<String> {
    socket.send(b"hello\n")?;
    let mut buf = [0u8; 512];
    let len = socket.recv(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(parse_reply_line(&line)
        .map_err(std::io::Error::other)?
        .backend)
}

fn seen(line: &str, peer: SocketAddr, local: SocketAddr) -> std::io::Result<Seen> {
    let reply = parse_reply_line(line).map_err(std::io::Error::other)?;
    // An unconnected socket bound to the wildcard: only the port is known locally.
    let saw_client = reply.seen_port == local.port()
        && (local.ip().is_unspecified() || reply.seen_ip == local.ip());
    Ok(Seen {
        backend: reply.backend,
        saw_client,
        peer,
    })
}

/// Ports a scan tries on each address; `SCAN_LISTENER` among them has a listener of its own.
const SCANNED: std::ops::RangeInclusive<u16> = 1..=1100;
const SCAN_LISTENER: u16 = 1000;

/// TCP to every `SCANNED` port of `addr` from `node`'s own namespace (no frontend among
/// them): refused where nothing listens, and the one listener there answers with both ends'
/// addresses as the sockets gave them.
fn scan_is_untouched(node: &Netns, addr: IpAddr) {
    node.run(|| {
        let listener = std::net::TcpListener::bind(SocketAddr::new(addr, SCAN_LISTENER))
            .unwrap_or_else(|e| panic!("listen on {addr} port {SCAN_LISTENER}: {e}"));
        for port in SCANNED {
            let target = SocketAddr::new(addr, port);
            match TcpStream::connect_timeout(&target, TIMEOUT) {
                Ok(stream) => {
                    assert_eq!(
                        port, SCAN_LISTENER,
                        "{target} answered; nothing listens there"
                    );
                    let (_accepted, client) = listener.accept().expect("accept");
                    assert_eq!(client, stream.local_addr().unwrap(), "{target}: client");
                    assert_eq!(stream.peer_addr().unwrap(), target, "{target}: getpeername");
                }
                Err(e) => assert!(
                    port != SCAN_LISTENER && e.kind() == std::io::ErrorKind::ConnectionRefused,
                    "{target}: {e}"
                ),
            }
        }
    })
    .expect("scan in the node namespace");
}

fn sock_counters(lb: &Lbd) -> serde_json::Value {
    lb.lbctl_json(&["stats"]).expect("lbctl stats")
}

#[test]
fn node_processes_reach_vips_and_published_ports_through_their_sockets() {
    if !e2e_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = setup(SERVICES);
    let node = &lab.topo.node;
    let vip4: IpAddr = "198.18.100.1".parse().unwrap();
    let vip6: IpAddr = "fd00:100::1".parse().unwrap();
    let node4 = IpAddr::V4(lab.topo.node_client_addr4);
    let node6 = IpAddr::V6(lab.topo.node_client_addr6);
    let lo4: IpAddr = "127.0.0.1".parse().unwrap();
    let lo6: IpAddr = "::1".parse().unwrap();
    for (tcp, target) in [
        (true, SocketAddr::new(vip4, 80)),
        (true, SocketAddr::new(vip6, 80)),
        (true, SocketAddr::new(node4, 8000)),
        (true, SocketAddr::new(node6, 8000)),
        (true, SocketAddr::new(lo4, 8000)),
        (true, SocketAddr::new(lo6, 8000)),
        (false, SocketAddr::new(vip4, 53)),
        (false, SocketAddr::new(vip6, 53)),
        (false, SocketAddr::new(node4, 8053)),
        (false, SocketAddr::new(lo4, 8053)),
        (false, SocketAddr::new(lo6, 8053)),
    ] {
        let mut backends = BTreeSet::new();
        // Round-robin reaches all three in three; the flow hash in a few dozen.
        for i in 0..60 {
            let connected = i % 2 == 0;
            let result = if tcp {
                tcp_exchange(node, target)
            } else {
                udp_exchange(node, target, connected)
            };
            let seen = result.unwrap_or_else(|e| panic!("{target} tcp={tcp}: {e}"));
            assert!(
                seen.saw_client,
                "{target}: the backend did not see the client: {seen:?}"
            );
            assert_eq!(
                seen.peer, target,
                "{target}: getpeername / the reply's source is not the frontend"
            );
            backends.insert(seen.backend);
            if backends.len() == 3 && i >= 4 {
                break;
            }
        }
        assert_eq!(
            backends.len(),
            3,
            "{target} tcp={tcp}: reached only {backends:?}"
        );
    }

    // One unconnected socket's datagrams stay on one backend (a UDP flow's do through XDP),
    // also under round-robin: the choice hashes the socket rather than turning the cursor.
    for target in [SocketAddr::new(node4, 8053), SocketAddr::new(vip4, 53)] {
        let answered = node
            .run(|| -> std::io::Result<BTreeSet<String>> {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(TIMEOUT))?;
                let mut backends = BTreeSet::new();
                let mut buf = [0u8; 512];
                for _ in 0..6 {
                    socket.send_to(b"hello\n", target)?;
                    let (len, peer) = socket.recv_from(&mut buf)?;
                    assert_eq!(peer, target, "the reply's source");
                    let line = String::from_utf8_lossy(&buf[..len]).into_owned();
                    backends.insert(
                        parse_reply_line(&line)
                            .map_err(std::io::Error::other)?
                            .backend,
                    );
                }
                Ok(backends)
            })
            .expect("setns")
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(
            answered.len(),
            1,
            "{target}: one socket reached {answered:?}"
        );
    }

    // Sockets aimed elsewhere are untouched: a port scan of the node's own addresses meets
    // the node's stack, as without meshlb.
    let counted = sock_counters(&lab.lb);
    for addr in [node4, lo4, node6, lo6] {
        scan_is_untouched(node, addr);
    }
    assert_eq!(
        sock_counters(&lab.lb)["services"],
        counted["services"],
        "the scan went through the socket path"
    );

    // A frontend without a backend refuses at once, as a host with nothing listening does
    // (not EPERM, the kernel's error for a refusing program), as XDP drops.
    let idle = SocketAddr::new("198.18.100.9".parse().unwrap(), 80);
    let e = tcp_exchange(node, idle).expect_err("no backend");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{idle}: {e}"
    );

    // Sockets of another namespace (the client's) are the XDP path's: not counted here.
    let before = sock_counters(&lab.lb);
    tcp_request(&lab.topo.client, SocketAddr::new(vip4, 80), TIMEOUT).expect("client through XDP");
    let after = sock_counters(&lab.lb);
    let socket_counts = |report: &serde_json::Value| -> Vec<serde_json::Value> {
        report["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| s["socket"].clone())
            .collect()
    };
    assert_eq!(
        socket_counts(&before),
        socket_counts(&after),
        "a socket of another namespace went through the socket path"
    );
    // Per service and family: TCP connections (30 at most per target above, both families
    // of `api` share the name), UDP split between connected sockets and datagrams.
    let service = |name: &str, frontend: &str, family: &str| -> serde_json::Value {
        after["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name && s["frontend"] == frontend && s["family"] == family)
            .unwrap_or_else(|| panic!("no {name} {frontend} {family} in {after}"))["socket"]
            .clone()
    };
    let web_tcp = service("web", "80:8080/tcp", "ipv4");
    assert!(web_tcp["connections"].as_u64().unwrap() >= 3, "{web_tcp}");
    assert_eq!(web_tcp["datagrams"], 0, "{web_tcp}");
    let web_udp = service("web", "53:5353/udp", "ipv4");
    assert!(web_udp["connections"].as_u64().unwrap() >= 1, "{web_udp}");
    assert!(web_udp["datagrams"].as_u64().unwrap() >= 1, "{web_udp}");
    let api_udp6 = service("api", "8053:5353/udp", "ipv6");
    assert!(api_udp6["datagrams"].as_u64().unwrap() >= 1, "{api_udp6}");
    assert_eq!(web_tcp["no_backend"], 0, "{web_tcp}");
    assert_eq!(service("idle", "80:8080/tcp", "ipv4")["no_backend"], 1);
}

#[test]
fn the_socket_path_follows_scale_down_and_removal_within_two_seconds() {
    if !e2e_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = setup(SERVICES);
    let published = SocketAddr::new("127.0.0.1".parse().unwrap(), 8000);
    let vip = SocketAddr::new("198.18.100.1".parse().unwrap(), 80);
    let scaled = SERVICES
        .replace(
            r#"backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]"#,
            r#"backends: ["198.18.2.10"]"#,
        )
        .replace(
            r#"backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12", "fd00:2::a""#,
            r#"backends: ["198.18.2.11", "fd00:2::a""#,
        );
    assert_ne!(scaled, SERVICES);
    let connected = connected_udp(&lab.topo.node, SocketAddr::new(vip.ip(), 53));
    let streams = connected_tcp(&lab.topo.node, vip);
    lab.lb.reload(&scaled).expect("reload");
    let changed = Instant::now();
    // Those on backend-2, which left every service, are aborted within 2 s, so their clients
    // connect again (a TCP connection would otherwise retransmit into nothing); those on
    // backend-0 (still web's) and backend-1 (left web, but still api's at the same address
    // and port: the endpoint is still planned) still talk to it.
    check_aborted(&connected, "backend-2", changed);
    check_tcp_aborted(&streams, "backend-2", changed);
    let changed = Instant::now();
    // From within 2 s of the change, every new connection reaches the remaining backend.
    for (target, only) in [(vip, "backend-0"), (published, "backend-1")] {
        let mut streak_start = None;
        let mut streak = 0;
        for _ in 0..200 {
            let seen = tcp_exchange(&lab.topo.node, target).expect("exchange");
            if seen.backend == only {
                streak_start.get_or_insert_with(Instant::now);
                streak += 1;
            } else {
                (streak_start, streak) = (None, 0);
            }
            if streak == 12 {
                break;
            }
        }
        let since = streak_start
            .map(|start| start.duration_since(changed))
            .unwrap_or_else(|| panic!("{target}: never settled on {only}"));
        assert_eq!(streak, 12, "{target}: never settled on {only}");
        assert!(
            since < Duration::from_secs(2),
            "{target}: settled on {only} only {since:?} after the change"
        );
    }
    let removed = SERVICES.split("  api:").next().unwrap().to_owned();
    lab.lb.reload(&removed).expect("reload");
    let changed = Instant::now();
    for _ in 0..100 {
        match tcp_exchange(&lab.topo.node, published) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => assert!(
                changed.elapsed() < Duration::from_secs(2),
                "{published} still translated 2 s after the service was removed: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{published}: never refused after the service was removed");
}

#[test]
fn pinned_socket_links_outlive_lbd_are_adopted_on_restart_and_removed_by_cleanup() {
    if !e2e_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = setup(SERVICES);
    let published = SocketAddr::new("127.0.0.1".parse().unwrap(), 8000);
    let status = |lb: &Lbd| lb.lbctl_json(&["status"]).expect("lbctl status");
    let first = status(&lab.lb);
    assert_eq!(first["sockets"]["adopted"], false, "{first}");
    assert_eq!(
        first["sockets"]["cgroup"],
        lab.cgroup.path().display().to_string(),
        "{first}"
    );
    tcp_exchange(&lab.topo.node, published).expect("lbd running");
    lab.lb.kill().expect("kill -9");
    tcp_exchange(&lab.topo.node, published).expect("lbd dead: the pinned links still translate");
    lab.lb.restart(&lab.topo.node).expect("restart");
    let again = status(&lab.lb);
    assert_eq!(again["sockets"]["adopted"], true, "{again}");
    tcp_exchange(&lab.topo.node, published).expect("after restart");
    lab.lb.kill().expect("kill -9");
    let out = std::process::Command::new(lbd())
        .args(["cleanup", "--pin-dir"])
        .arg(lab.lb.pin_dir())
        .output()
        .expect("lbd cleanup");
    assert!(out.status.success(), "{out:?}");
    // The kernel frees an unpinned link a moment later (deferred work), not at the unlink.
    let removed = Instant::now();
    for _ in 0..100 {
        match tcp_exchange(&lab.topo.node, published) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => assert!(
                removed.elapsed() < Duration::from_secs(2),
                "{published} still translated 2 s after `lbd cleanup`: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{published}: never refused after `lbd cleanup`");
}

/// A backend removed while lbd was down: the restarted lbd aborts the connected UDP sockets
/// still on it, as a live change does.
#[test]
fn sockets_left_on_a_backend_removed_while_lbd_was_down_are_aborted_at_the_restart() {
    if !e2e_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = setup(SERVICES);
    let connected = connected_udp(
        &lab.topo.node,
        SocketAddr::new("198.18.100.1".parse().unwrap(), 53),
    );
    lab.lb.kill().expect("kill -9");
    let without_backend_2 = SERVICES
        .replace(
            r#"backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]"#,
            r#"backends: ["198.18.2.10", "198.18.2.11"]"#,
        )
        .replace(
            r#"backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12", "fd00:2::a""#,
            r#"backends: ["198.18.2.10", "198.18.2.11", "fd00:2::a""#,
        );
    std::fs::write(lab.lb.config_path(), without_backend_2).unwrap();
    lab.lb.restart(&lab.topo.node).expect("restart");
    check_aborted(&connected, "backend-2", Instant::now());
}

/// An abort reaches a container's namespace through its process only while that process's
/// namespace is the one the daemon knew (by its cookie): a pid since taken by a process of
/// another namespace gets nothing aborted, and a process gone is no error.
#[test]
fn an_abort_goes_only_to_the_namespace_it_was_meant_for() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::maps::proto::UDP;
    use lb_userspace::dataplane::{abort_connected, netns_cookie};
    let ns = Netns::new("abort").expect("namespace");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let peer: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let socket = ns
        .run(|| -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(peer)?;
            Ok(socket)
        })
        .expect("setns")
        .expect("a connected socket");
    let cookie = ns.run(netns_cookie).expect("setns").expect("cookie");
    let mut holder = ns.spawn("sleep", &["30"], &[]).expect("a process there");
    let pid = holder.id();
    // `ip netns exec` enters the namespace a moment after it starts (bounded wait).
    let inode =
        |path: &Path| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let entered = Instant::now();
    while inode(Path::new(&format!("/proc/{pid}/ns/net"))).ok() != inode(&ns.path()).ok() {
        assert!(
            entered.elapsed() < Duration::from_secs(5),
            "sleep never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = |socket: &UdpSocket| socket.send(b"x").map(drop);

    let other = abort_connected(Some((pid, cookie ^ 1)), &[(UDP, peer)]).expect("abort");
    assert_eq!(other, 0, "another namespace's cookie: nothing aborted");
    sent(&socket).expect("still connected");
    let aborted = abort_connected(Some((pid, cookie)), &[(UDP, peer)]).expect("abort");
    assert_eq!(aborted, 1, "its own namespace: the socket aborted");
    let after = sent(&socket).expect_err("aborted");
    assert_eq!(after.raw_os_error(), Some(libc::EDESTADDRREQ), "{after}");

    holder.stop(Duration::from_secs(5)).expect("stopped");
    let gone = abort_connected(Some((pid, cookie)), &[(UDP, peer)]).expect("a process gone");
    assert_eq!(gone, 0);
}

/// 30 unconnected UDP sockets of `node`, each with the backend its first datagram to
/// `target` reached.
fn unconnected_udp(node: &Netns, target: SocketAddr) -> Vec<(UdpSocket, String)> {
    node.run(|| -> std::io::Result<Vec<(UdpSocket, String)>> {
        (0..30)
            .map(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(TIMEOUT))?;
                let backend = udp_ask_unconnected(&socket, target)?;
                Ok((socket, backend))
            })
            .collect()
    })
    .expect("setns")
    .expect("unconnected UDP sockets")
}

/// One datagram to `target` and its answer, which must come from `target` (`recvmsg`'s
/// translation); the backend that answered.
fn udp_ask_unconnected(socket: &UdpSocket, target: SocketAddr) -> std::io::Result<String> {
    socket.send_to(b"hello\n", target)?;
    let mut buf = [0u8; 512];
    let (len, from) = socket.recv_from(&mut buf)?;
    if from != target {
        return Err(std::io::Error::other(format!("answered from {from}")));
    }
    let line = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(parse_reply_line(&line)
        .map_err(std::io::Error::other)?
        .backend)
}

/// An unconnected UDP socket is a flow too: its datagrams stay on their backend while it is
/// the service's, drained included (new sockets get none there), and move only when it
/// leaves the service.
#[test]
fn unconnected_udp_sockets_keep_their_backend_until_it_leaves() {
    if !e2e_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = setup(SERVICES);
    let vip = SocketAddr::new("198.18.100.1".parse().unwrap(), 53);
    let web = r#"backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]"#;
    let sockets = unconnected_udp(&lab.topo.node, vip);
    assert!(
        sockets.iter().any(|(_, b)| b == "backend-2"),
        "(2/3)^30: no socket on backend-2: {sockets:?}"
    );
    let ask_all = |sockets: &[(UdpSocket, String)]| -> Vec<String> {
        sockets
            .iter()
            .map(|(socket, _)| udp_ask_unconnected(socket, vip).expect("answered"))
            .collect()
    };
    let before: Vec<String> = sockets.iter().map(|(_, b)| b.clone()).collect();

    let drained = SERVICES.replace(
        web,
        r#"backends: ["198.18.2.10", "198.18.2.11", { address: "198.18.2.12", weight: 0 }]"#,
    );
    assert_ne!(drained, SERVICES);
    lab.lb.reload(&drained).expect("reload");
    assert_eq!(
        ask_all(&sockets),
        before,
        "a drained backend keeps its sockets"
    );
    let fresh = unconnected_udp(&lab.topo.node, vip);
    assert!(
        fresh.iter().all(|(_, b)| b != "backend-2"),
        "a new socket on the drained backend: {fresh:?}"
    );
    let removed = SERVICES.replace(web, r#"backends: ["198.18.2.10", "198.18.2.11"]"#);
    lab.lb.reload(&removed).expect("reload");
    for ((_, was), now) in sockets.iter().zip(ask_all(&sockets)) {
        if was == "backend-2" {
            assert_ne!(now, "backend-2", "a removed backend keeps a socket");
        } else {
            assert_eq!(&now, was, "a socket moved off a backend that stayed");
        }
    }

    // A socket idle past the service's UDP timeout picks again, as an expired flow does: a
    // drain ends for it too.
    lab.lb.reload(SERVICES).expect("reload");
    let sockets = unconnected_udp(&lab.topo.node, vip);
    assert!(
        sockets.iter().any(|(_, b)| b == "backend-2"),
        "(2/3)^30: no socket on backend-2: {sockets:?}"
    );
    let short = drained.replace(r#"weight: 0 }]"#, "weight: 0 }]\n    timeouts: { udp: 1s }");
    assert_ne!(short, drained);
    lab.lb.reload(&short).expect("reload");
    // Whole seconds of the clock: 2.5 s is at least 2 apart, past a 1 s timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let after_idle = ask_all(&sockets);
    assert!(
        after_idle.iter().all(|b| b != "backend-2"),
        "a socket idle past the timeout kept the drained backend: {after_idle:?}"
    );

    // A datagram received from the backend keeps a socket on it, as a reply keeps a flow: of
    // the sockets on the drained backend, those that hear from it (sending nothing) stay
    // past the timeout; the others pick again.
    lab.lb.reload(SERVICES).expect("reload");
    let sockets = unconnected_udp(&lab.topo.node, vip);
    let on_drained: Vec<&UdpSocket> = sockets
        .iter()
        .filter(|(_, b)| b == "backend-2")
        .map(|(socket, _)| socket)
        .collect();
    assert!(
        on_drained.len() >= 2,
        "two sockets on backend-2 among 30: {sockets:?}"
    );
    let (heard, silent) = on_drained.split_at(on_drained.len() / 2);
    let three = drained.replace(r#"weight: 0 }]"#, "weight: 0 }]\n    timeouts: { udp: 3s }");
    assert_ne!(three, drained);
    lab.lb.reload(&three).expect("reload");
    std::thread::sleep(Duration::from_secs(2));
    let node = lab.topo.node_bridge_addr4;
    let targets: Vec<SocketAddr> = heard
        .iter()
        .map(|s| SocketAddr::new(node.into(), s.local_addr().unwrap().port()))
        .collect();
    let backend = &lab.topo.backends[2];
    let from = SocketAddr::new(backend.addr4.into(), 5353);
    backend
        .ns
        .run(move || -> std::io::Result<()> {
            // Beside its server (which binds with SO_REUSEADDR too), from its service port.
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&from.into())?;
            for target in targets {
                s.send_to(b"pushed\n", &target.into())?;
            }
            Ok(())
        })
        .expect("setns")
        .expect("the backend pushes a datagram");
    for socket in heard {
        let mut buf = [0u8; 64];
        let (_, seen_from) = socket.recv_from(&mut buf).expect("the pushed datagram");
        assert_eq!(seen_from, vip, "shown as from the frontend");
    }
    // Past 3 s since the sockets last sent (whole seconds of the clock: at least 4 apart),
    // within 3 of the datagram received.
    std::thread::sleep(Duration::from_millis(2500));
    for socket in heard {
        let now = udp_ask_unconnected(socket, vip).expect("answered");
        assert_eq!(
            now, "backend-2",
            "a socket that heard from its backend moved"
        );
    }
    for socket in silent {
        let now = udp_ask_unconnected(socket, vip).expect("answered");
        assert_ne!(now, "backend-2", "a silent socket kept the drained backend");
    }

    // A time written after this `sendmsg` read the clock (another CPU's `recvmsg`, a second
    // later) is no idle time: a socket stamped ahead stays on its drained backend.
    let socket = heard[0];
    lb_testkit::sock_seen::stamp_socket_ahead(socket, 5).expect("SOCK_SEEN stamped");
    let now = udp_ask_unconnected(socket, vip).expect("answered");
    assert_eq!(now, "backend-2", "a socket stamped ahead moved");
}
