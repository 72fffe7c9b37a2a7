//! End to end, bounded: a flood of SYNs from random spoofed sources against a small
//! connection table (65,536 entries) evicts no established flow of either scheduler, and new
//! clients still connect during and after it (issue 16's flood guard).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_testkit::{
    Netns, TcpSession, Topology, e2e_enabled,
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
const FLOOD: Duration = Duration::from_secs(10);
/// Long-lived connections per service.
const SESSIONS: usize = 20;

/// Sends SYNs from random sources in 198.19.0.0/16 to the VIP (ports 80 and 81 in turn) out
/// of the client's interface with an AF_PACKET socket, as fast as one thread can, until
/// `stop`; answers the frames sent.
fn flood(client: &Netns, interface: &str, macs: ([u8; 6], [u8; 6]), stop: &AtomicBool) -> u64 {
    client
        .run(|| {
            // SAFETY: plain socket calls on a socket this function owns and closes.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let name = std::ffi::CString::new(interface).unwrap();
                let ifindex = libc::if_nametoindex(name.as_ptr());
                assert!(ifindex > 0, "no interface {interface}");
                let mut to: libc::sockaddr_ll = std::mem::zeroed();
                to.sll_family = libc::AF_PACKET as u16;
                to.sll_ifindex = ifindex as i32;
                to.sll_halen = 6;
                to.sll_addr[..6].copy_from_slice(&macs.1);
                let mut state = 0x2545_f491u32;
                let mut sent = 0u64;
                // Bounded in time whatever `stop` does.
                let deadline = Instant::now() + FLOOD + Duration::from_secs(5);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for _ in 0..256 {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        let source = SocketAddrV4::new(
                            Ipv4Addr::from(0xc613_0000 | (state & 0xffff)),
                            1024 + (state >> 16) as u16 % 60000,
                        );
                        let frame = Ipv4Frame::tcp(
                            source,
                            SocketAddrV4::new(VIP, 80 + (sent % 2) as u16),
                            TCP_SYN,
                        )
                        .with_macs(macs.0, macs.1)
                        .build();
                        let n = libc::sendto(
                            fd,
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&raw const to).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        );
                        if n > 0 {
                            sent += 1;
                        }
                    }
                }
                libc::close(fd);
                sent
            }
        })
        .expect("flood in the client namespace")
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

    let macs = (
        read_mac(&topo.client, &topo.client_if).expect("client MAC"),
        read_mac(&topo.node, &topo.node_client_if).expect("node MAC"),
    );
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            sent.store(
                flood(&topo.client, &topo.client_if, macs, &stop),
                Ordering::Relaxed,
            );
        });
        // A new client connects (and is answered) in the middle of the flood, to each
        // service.
        std::thread::sleep(FLOOD / 2);
        let during = [maglev, rr].map(|target| {
            TcpSession::connect(&topo.client, target, TIMEOUT)
                .and_then(|mut s| s.request())
                .map_err(|e| format!("a new client to {target} during the flood: {e:#}"))
        });
        std::thread::sleep(FLOOD.saturating_sub(started.elapsed()));
        stop.store(true, Ordering::Relaxed);
        for result in during {
            result.expect("new client during the flood");
        }
    });
    let sent = sent.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();

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
        "flood: {sent} SYNs in {seconds:.1} s ({:.0}/s sent), {new_flows} new flows, {} confirmed, \
         {} lost",
        sent as f64 / seconds,
        global["flow_confirmed"],
        global["flow_lost"]
    );
    // The flood reached the program and was far larger than the table.
    assert!(new_flows > 3 * 65_536, "{counters}");
    assert_eq!(global["flow_lost"], 0, "{counters}");
}
