//! End to end, bounded: a flood of SYNs from random spoofed sources (four tables' worth)
//! against a small connection table (65,536 entries) evicts no established flow of either
//! scheduler, and new clients still connect during and after it (issue 16's flood guard);
//! under full NAT, a flood of more SYNs than the node has ports for a backend leaves new
//! clients ports.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_testkit::{
    Netns, TcpSession, Topology, e2e_enabled,
    frame_socket::FrameSocket,
    packet::{Ipv4Frame, TCP_SYN},
    progtest::read_mac,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const SERVICES: &str = r#"
services:
  maglev:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
  rr:
    vip: 198.18.100.1
    ports: ["81:8080/tcp"]
    scheduler: round-robin
    backends: ["198.18.2.10", "198.18.2.11", "198.18.2.12"]
"#;
const TIMEOUT: Duration = Duration::from_secs(5);
/// SYNs the flood sends at least: four connection tables' worth (sixteen of `PENDING`, a
/// quarter of the table), each from its own spoofed source.
const FLOOD_SYNS: u64 = 4 * 65_536;
/// A bound only (the flood takes seconds): past it the flood stops, sent or not.
const FLOOD_DEADLINE: Duration = Duration::from_secs(120);
/// Long-lived connections per service.
const SESSIONS: usize = 20;

/// What a flood sends: SYNs to the VIP's `ports` in turn, at least `syns` of them, in batches
/// of `batch`, each followed by a 10 ms pause if `paced` (a rate of `batch` per 10 ms at most).
struct Plan {
    ports: &'static [u16],
    syns: u64,
    batch: u64,
    paced: bool,
}

/// As fast as the interface takes them, to both services.
const UNPACED: Plan = Plan {
    ports: &[80, 81],
    syns: FLOOD_SYNS,
    batch: 256,
    paced: false,
};

/// Sends SYNs from random sources in 198.19.0.0/16 to the VIP (as `plan` says) out of the
/// client's interface with an AF_PACKET socket, counting those the interface took in `sent`,
/// until at least `plan.syns` went out and `clients_done` is set (so the clients of the
/// middle of the flood meet it), within `FLOOD_DEADLINE`.
fn flood(
    client: &Netns,
    interface: &str,
    macs: ([u8; 6], [u8; 6]),
    plan: &Plan,
    sent: &AtomicU64,
    clients_done: &AtomicBool,
) {
    client
        .run(|| {
            let socket = FrameSocket::open(interface).expect("a packet socket");
            let mut state = 0x2545_f491u32;
            let mut count = 0u64;
            let deadline = Instant::now() + FLOOD_DEADLINE;
            // Bounded in count too: a send the interface refuses (full) is tried again,
            // 64 times a SYN at most.
            for _ in 0..64 * plan.syns / plan.batch {
                let enough = count >= plan.syns && clients_done.load(Ordering::Relaxed);
                if enough || Instant::now() >= deadline {
                    break;
                }
                for _ in 0..plan.batch {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let source = SocketAddrV4::new(
                        Ipv4Addr::from(0xc613_0000 | (state & 0xffff)),
                        1024 + (state >> 16) as u16 % 60000,
                    );
                    let port = plan.ports[(count % plan.ports.len() as u64) as usize];
                    let frame = Ipv4Frame::tcp(source, SocketAddrV4::new(VIP, port), TCP_SYN)
                        .with_macs(macs.0, macs.1)
                        .build();
                    if socket.send(&frame).is_ok() {
                        count += 1;
                    }
                }
                sent.store(count, Ordering::Relaxed);
                if plan.paced {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
        .expect("flood in the client namespace")
}

/// The flood's frames' MACs: the client's interface's and the node's across from it.
fn flood_macs(topo: &Topology) -> ([u8; 6], [u8; 6]) {
    (
        read_mac(&topo.client, &topo.client_if).expect("client MAC"),
        read_mac(&topo.node, &topo.node_client_if).expect("node MAC"),
    )
}

/// Whether `done` came true within `timeout` (looking every 10 ms).
fn wait_for(done: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..timeout.as_millis() / 10 + 1 {
        if done() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn a_syn_flood_evicts_no_established_flow_and_new_clients_still_connect() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new(3).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let lb = topo
        .start_lbd(
            Path::new(env!("CARGO_BIN_EXE_lbd")),
            SERVICES,
            &["--conntrack-entries", "65536"],
        )
        .expect("lbd");
    let maglev = SocketAddr::from((VIP, 80));
    let rr = SocketAddr::from((VIP, 81));
    let mut sessions: Vec<(TcpSession, String)> = [maglev, rr]
        .iter()
        .flat_map(|target| std::iter::repeat_n(*target, SESSIONS))
        .map(|target| {
            let mut s = TcpSession::connect(&topo.client, target, TIMEOUT).expect("connect");
            let backend = s.request().expect("first request").backend;
            (s, backend)
        })
        .collect();

    let macs = flood_macs(&topo);
    let sent = AtomicU64::new(0);
    let clients_done = AtomicBool::new(false);
    let started = Instant::now();
    let (halfway, during) = std::thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            flood(
                &topo.client,
                &topo.client_if,
                macs,
                &UNPACED,
                &sent,
                &clients_done,
            )
        });
        // A new client connects (and is answered) to each service in the middle of the
        // flood: past two tables' worth of SYNs, while the flood goes on until it is done.
        let halfway = wait_for(
            || sent.load(Ordering::Relaxed) >= FLOOD_SYNS / 2 || flooding.is_finished(),
            FLOOD_DEADLINE,
        ) && !flooding.is_finished();
        let during = halfway.then(|| {
            [maglev, rr].map(|target| {
                TcpSession::connect(&topo.client, target, TIMEOUT)
                    .and_then(|mut s| s.request())
                    .map_err(|e| format!("a new client to {target} during the flood: {e:#}"))
            })
        });
        clients_done.store(true, Ordering::Relaxed);
        flooding.join().expect("the flood thread");
        (halfway, during)
    });
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        halfway && sent >= FLOOD_SYNS,
        "the flood sent {sent} of {FLOOD_SYNS} SYNs within {FLOOD_DEADLINE:?}"
    );
    for result in during.expect("clients during the flood") {
        result.expect("new client during the flood");
    }

    // Every long-lived connection still works, on its backend.
    for (s, backend) in &mut sessions {
        let target = s.target();
        let reply = s
            .request()
            .unwrap_or_else(|e| panic!("long-lived connection to {target} after the flood: {e:#}"));
        assert_eq!(&reply.backend, backend, "{target}: same backend");
    }
    // And a new client connects after it.
    for target in [maglev, rr] {
        let mut s = TcpSession::connect(&topo.client, target, TIMEOUT).expect("connect after");
        s.request().expect("request after the flood");
    }
    drop(sessions);
    let counters = lb.stop().expect("stop lbd");
    let global = &counters["global"];
    let new_flows = global["new_flow"].as_u64().unwrap();
    eprintln!(
        "flood: {sent} SYNs in {:.1} s, {new_flows} new flows, {} confirmed, {} lost",
        started.elapsed().as_secs_f64(),
        global["flow_confirmed"],
        global["flow_lost"]
    );
    // The flood reached the program, each SYN a new flow (but for the odd repeated source):
    // far more than the table holds.
    assert!(new_flows > 3 * 65_536, "{counters}");
    assert_eq!(global["flow_lost"], 0, "{counters}");
}

/// Full NAT gives a backend's flows 4,536 node ports. A flood of more SYNs than that from
/// spoofed sources, paced at 800 a second at most, used to hold them all (each for the 30 s
/// SYN timeout, and longer as the backend sent its SYN-ACK again): new clients got no port.
/// An unconfirmed flow now yields its port 2 s after its client's last packet, so new
/// clients connect in the middle of the flood, and established connections keep working.
#[test]
fn a_syn_flood_beyond_full_nats_ports_leaves_ports_for_new_clients() {
    if !e2e_enabled() {
        return;
    }
    use lb_common::limits::{FULLNAT_PORT_MAX, FULLNAT_PORT_MIN};
    const FULLNAT: &str = r#"
services:
  web:
    vip: 198.18.100.1
    ports: ["80:8080/tcp"]
    forwarding: fullnat
    backends: ["198.18.2.10"]
"#;
    let ports = u64::from(FULLNAT_PORT_MAX - FULLNAT_PORT_MIN) + 1;
    // 8 SYNs per 10 ms: 800 a second at most, each port held 2 s, about a third of them.
    let plan = Plan {
        ports: &[80],
        syns: ports + 1_500,
        batch: 8,
        paced: true,
    };
    let topo = Topology::new(1).expect("topology");
    let _servers = topo.serve_on_backends(&[8080], &[]).expect("servers");
    let lb = topo
        .start_lbd(Path::new(env!("CARGO_BIN_EXE_lbd")), FULLNAT, &[])
        .expect("lbd");
    let web = SocketAddr::from((VIP, 80));
    let mut sessions: Vec<TcpSession> = (0..5)
        .map(|_| {
            let mut s = TcpSession::connect(&topo.client, web, TIMEOUT).expect("connect");
            s.request().expect("first request");
            s
        })
        .collect();
    let macs = flood_macs(&topo);
    let sent = AtomicU64::new(0);
    let clients_done = AtomicBool::new(false);
    let (beyond, during) = std::thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            flood(
                &topo.client,
                &topo.client_if,
                macs,
                &plan,
                &sent,
                &clients_done,
            )
        });
        // Once more SYNs than ports went out (within 30 s: every one would still hold its
        // port), new clients connect while the flood goes on.
        let beyond = wait_for(
            || sent.load(Ordering::Relaxed) > ports || flooding.is_finished(),
            FLOOD_DEADLINE,
        ) && !flooding.is_finished();
        let during: Vec<Result<(), String>> = (0..5)
            .map(|i| {
                TcpSession::connect(&topo.client, web, TIMEOUT)
                    .and_then(|mut s| s.request())
                    .map(drop)
                    .map_err(|e| format!("new client {i} during the flood: {e:#}"))
            })
            .collect();
        clients_done.store(true, Ordering::Relaxed);
        flooding.join().expect("the flood thread");
        (beyond, during)
    });
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        beyond && sent >= plan.syns,
        "the flood sent {sent} of {} SYNs within {FLOOD_DEADLINE:?}",
        plan.syns
    );
    let counters = || lb.lbctl_json(&["stats"]).expect("lbctl stats");
    for result in during {
        result.unwrap_or_else(|e| panic!("{e}\n{}", counters()["global"]));
    }
    for s in &mut sessions {
        s.request()
            .expect("a long-lived connection after the flood");
    }
    drop(sessions);
    let counters = lb.stop().expect("stop lbd");
    let global = &counters["global"];
    eprintln!(
        "full-NAT flood: {sent} SYNs, {} new flows, {} without a port",
        global["new_flow"], global["drop_no_snat_port"]
    );
    assert!(
        global["new_flow"].as_u64().unwrap() > ports,
        "the flood reached the program: {counters}"
    );
}
